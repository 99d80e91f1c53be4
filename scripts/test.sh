#!/usr/bin/env bash
# Quick start 2: set up (with the test extras), then check the style (flake8, setup.cfg) and run the test suite.
source "$(dirname "$0")/setup_env.sh" "test"
(cd "$ROOT" && python -m flake8)
bash "$ROOT/scripts/install_browser.sh" || true  # the browser test's Chromium; without it that test skips
python -m pytest "$@"
