#!/usr/bin/env bash
# The version floors in pyproject.toml hold: install the lowest versions it
# allows for the client and the [hub] extra into a throwaway venv, import every
# torch-free module of peft_hub, check the library features the code relies on,
# and run the torch-free unit tests there. A floor the code has outgrown fails
# loudly here instead of on a user's machine.
#
# The compose and gpu extras (torch, transformers, peft, ...) are out of scope:
# their floors are not checked here (the main suite runs the pinned torch).
set -euo pipefail
cd "$(dirname "$0")/.."

python -m uv --version >/dev/null 2>&1 || python -m pip install -q uv
venv="$(mktemp -d)/floors"
trap 'rm -rf "$(dirname "$venv")"' EXIT

python -m uv venv -q --python "$(python -c 'import sys; print(sys.executable)')" "$venv"
python -m uv pip install -q --python "$venv/bin/python" --resolution lowest-direct -e ".[hub]" "pytest>=8"
echo "check-floors: installed the lowest direct versions:"
python -m uv pip freeze --python "$venv/bin/python" \
  | grep -i -E '^(click|httpx|tqdm|tenacity|pyyaml|google-re2|pydantic|pydantic-settings|fastapi|anyio|uvicorn|sqlmodel|alembic|boto3|psycopg|python-multipart|jinja2|markdown-it-py|nh3|limits)==' \
  | sed 's/^/  /'

"$venv/bin/python" - <<'PY'
"""Import every module that needs no torch, and check the features we use."""
import importlib
import pkgutil
import sys

import peft_hub

NEEDS_TORCH = ("peft_hub.compose", "peft_hub.gpu_runtime", "peft_hub.serving")
ALEMBIC_SCRIPTS = ("peft_hub.hub.alembic.env", "peft_hub.hub.alembic.versions.")  # run by alembic, not imported
failed = []
for info in pkgutil.walk_packages(peft_hub.__path__, "peft_hub."):
    if info.name.startswith(NEEDS_TORCH + ALEMBIC_SCRIPTS) or info.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(info.name)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - every failure is reported below
        failed.append(f"{info.name}: {type(exc).__name__}: {exc}")

# Features that an import alone does not prove.
import botocore.session  # noqa: E402

s3 = botocore.session.get_session().get_service_model("s3")
for op in ("PutObject", "CompleteMultipartUpload"):
    if "IfNoneMatch" not in s3.operation_model(op).input_shape.members:
        failed.append(f"botocore: {op} has no IfNoneMatch (conditional writes)")

if failed:
    print("check-floors: FAILED at the declared minimum versions:", *failed, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print("check-floors: every torch-free module imports")
PY

# Torch-free tests that use the ASGI app on SQLite, the client and the CLI.
"$venv/bin/python" -m pytest -q -p no:cacheprovider -W "ignore::DeprecationWarning" \
  tests/test_client_errors_unit.py tests/test_routes_errors_unit.py
echo "check-floors: OK"
