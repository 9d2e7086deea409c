#!/usr/bin/env bash
# The test command: the default (fast) suite under a virtual X display.
# Slow tests: add `-m slow` (or `-m ""` for everything).
set -euo pipefail
cd "$(dirname "$0")/.."
exec xvfb-run -a -s "-screen 0 1280x1024x24" python3 -m pytest -ra "$@"
