#!/usr/bin/env bash
# Quick start 2: set up (with the test extras), then run the test suite.
source "$(dirname "$0")/setup_env.sh" "test"
python -m pytest "$@"
