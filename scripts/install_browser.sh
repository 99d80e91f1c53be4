#!/usr/bin/env bash
# The browser of tests/test_serving_page.py (Debian's chromium and chromedriver): installs them with apt-get when
# they are missing and this runs as root; otherwise says in one line that the browser test will be skipped.
# Silent when they are installed; always exits 0 (the test skips itself without them).
CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver
installed() { [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ]; }
installed && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null; then
  echo "[setup] installing chromium and chromium-driver (apt-get) for the browser test"
  log="$(mktemp)"
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
      > "$log" 2>&1 && installed; then
    rm -f "$log"
    exit 0
  fi
  echo "[setup] installing chromium failed (apt-get output in $log): the browser test will be skipped"
  exit 0
fi
echo "[setup] $CHROMIUM or $CHROMEDRIVER missing: the browser test will be skipped (as root:" \
     "apt-get install -y chromium chromium-driver)"
exit 0
