#!/usr/bin/env bash
# Everything the test suite needs: the CPU build of torch first (so nothing
# pulls a CUDA build), the package with its test extras, and Debian's
# Chromium and PostgreSQL for the browser and database tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
