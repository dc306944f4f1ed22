#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against real SeaweedFS
# and PostgreSQL, and browser tests in headless Chromium.
#
# With no arguments the suite runs on every core (pytest-xdist; at most 8
# workers, since each starts its own SeaweedFS and PostgreSQL), one test file
# per worker so a module's fixtures start once, and prints the 30 slowest
# steps. Arguments go to pytest as they are, in this one process:
#   ./scripts/test.sh tests/test_cli.py -x
# PEFT_HUB_TEST_WORKERS=N runs on N workers either way (0 or 1: in this one process).
set -euo pipefail
cd "$(dirname "$0")/.."
export PEFT_HUB_DISABLE_PROGRESS_BARS=1

cores=$(nproc 2>/dev/null || echo 1)
workers=${PEFT_HUB_TEST_WORKERS:-}
if [ -z "$workers" ]; then
    workers=0
    [ $# -eq 0 ] && workers=$((cores < 8 ? cores : 8))
fi
case "$workers" in
    '' | *[!0-9]*) echo "PEFT_HUB_TEST_WORKERS must be a number of workers, not '$workers'" >&2; exit 2 ;;
esac

options=()
[ $# -eq 0 ] && options+=(--durations=30)
# One worker is still a second process: with one core, stay in this one.
[ "$workers" -gt 1 ] && options+=(-n "$workers" --dist loadfile)
exec python -m pytest -q -p no:cacheprovider ${options[@]+"${options[@]}"} "$@"
