#!/usr/bin/env bash
# Quick start 1: set up, then run the end-to-end demo on the bundled CamVid sample
# (prepare -> train briefly -> evaluate -> export -> predict an image and write a picture).
source "$(dirname "$0")/setup_env.sh" ""
deeplab demo --out demo_output "$@"
