#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against real SeaweedFS
# and PostgreSQL, and browser tests in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
export PEFT_HUB_DISABLE_PROGRESS_BARS=1
exec python -m pytest -q -p no:cacheprovider "$@"
