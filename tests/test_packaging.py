"""Import boundaries, the compose file, and the Dockerfile."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _modules_after_import(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print('\\n'.join(sys.modules))"],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("code", [
    "import peft_hub.client",
    "import peft_hub.hub; peft_hub.hub.create_app",
    "from peft_hub.cli import cli",
    "import peft_hub.hub.app as a; a.create_app(a.Settings(db_url='sqlite://', storage='/tmp/x'))",
])
def test_client_hub_and_cli_import_without_torch(code):
    loaded = _modules_after_import(code)
    assert not {"torch", "transformers", "peft", "safetensors.torch"} & loaded


def test_cli_starts_without_fastapi_or_torch():
    loaded = _modules_after_import("from peft_hub.cli import cli")
    assert not {"fastapi", "sqlmodel", "torch", "uvicorn"} & loaded


def test_client_never_imports_the_hub():
    loaded = _modules_after_import(_import_all("peft_hub.client"))
    assert "torch" not in loaded
    assert not any(m.startswith("peft_hub.hub") for m in loaded)
    assert "fastapi" not in loaded and "sqlmodel" not in loaded


def _import_all(package: str) -> str:
    return (
        f"import importlib, pkgutil, {package} as p\n"
        f"for m in pkgutil.walk_packages(p.__path__, '{package}.'): importlib.import_module(m.name)"
    )


def test_compose_imports_torch_not_transformers():
    loaded = _modules_after_import(_import_all("peft_hub.compose"))
    assert "torch" in loaded
    assert "transformers" not in loaded and "peft" not in loaded


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_parses_and_sets_only_real_settings():
    from peft_hub.hub import Settings

    compose = _compose()
    services = compose["services"]
    assert set(services) == {"proxy", "hub-1", "hub-2", "postgres", "seaweedfs"}
    for name, service in services.items():
        assert "healthcheck" in service, name
    mounts = services["postgres"]["volumes"] + services["seaweedfs"]["volumes"]
    assert {v.split(":")[0] for v in mounts} <= set(compose["volumes"])
    fields = set(Settings.model_fields)
    for name in ("hub-1", "hub-2"):
        hub = services[name]
        assert hub["build"] == "."
        assert hub["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                     "seaweedfs": {"condition": "service_healthy"}}
        assert "/api/health/ready" in " ".join(hub["healthcheck"]["test"])  # database and store checked
        assert "ports" not in hub, "replicas are reached through the proxy only"
        for key in hub["environment"]:
            if key.startswith("PEFT_HUB_"):
                assert key.removeprefix("PEFT_HUB_").lower() in fields, f"{key} is not a Settings field"
            else:
                assert key.startswith("AWS_"), key
        # The storage URI names a bucket the S3 backend accepts.
        assert hub["environment"]["PEFT_HUB_STORAGE"].startswith("s3://")
    # One database, one bucket, one LFS signing secret: the replicas are interchangeable.
    assert services["hub-1"]["environment"] == services["hub-2"]["environment"]
    assert services["hub-1"]["environment"]["PEFT_HUB_SESSION_SECRET"].startswith("${PEFT_HUB_SESSION_SECRET:?")


def test_compose_proxy_fronts_both_replicas_and_is_their_only_trusted_proxy():
    import ipaddress

    compose = _compose()
    services = compose["services"]
    proxy = services["proxy"]
    assert proxy["image"].split(":")[0] in {"caddy", "nginx"}  # an official image
    assert proxy["depends_on"] == {"hub-1": {"condition": "service_healthy"}, "hub-2": {"condition": "service_healthy"}}
    assert proxy["ports"] == ["8000:80"]
    assert "/api/health" in " ".join(proxy["healthcheck"]["test"])
    address = proxy["networks"]["edge"]["ipv4_address"]
    (subnet,) = compose["networks"]["edge"]["ipam"]["config"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet["subnet"])
    for name in ("hub-1", "hub-2"):
        assert "edge" in services[name]["networks"]
        assert services[name]["environment"]["PEFT_HUB_TRUSTED_PROXIES"] == address
    for name in ("postgres", "seaweedfs"):  # nothing else on the proxy's network
        assert "edge" not in services[name]["networks"]
    # The config file the proxy mounts is shipped, and proxies to both replicas' port with health checks.
    source, target = proxy["volumes"][0].split(":")[:2]
    assert target == "/etc/caddy/Caddyfile"
    caddyfile = (ROOT / source).read_text()
    port = services["hub-1"]["environment"]["PEFT_HUB_PORT"]
    assert re.search(rf"^\s*reverse_proxy hub-1:{port} hub-2:{port} {{", caddyfile, re.MULTILINE)
    # Readiness: the proxy routes around a sick replica.
    assert re.search(r"^\s*health_uri /api/health/ready$", caddyfile, re.MULTILINE)
    assert re.search(r"^:80 {", caddyfile, re.MULTILINE) and proxy["ports"][0].endswith(":80")
    # Caddy replaces a client's X-Forwarded-For unless told to trust it: it must not be.
    assert not re.search(r"^\s*trusted_proxies", caddyfile, re.MULTILINE)
    assert caddyfile.count("{") == caddyfile.count("}")


def test_dockerfile_health_check_and_entrypoint_match_the_cli():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r'CMD \["peft-hub", "serve"\]', text)
    assert "/api/health" in text
    from click.testing import CliRunner

    from peft_hub.cli import cli

    assert CliRunner().invoke(cli, ["serve", "--help"]).exit_code == 0


# --- the base install: client and CLI only ------------------------------------

SERVER_DISTS = {"fastapi", "sqlmodel", "sqlalchemy", "boto3", "uvicorn", "psycopg", "alembic", "starlette",
                "pydantic", "pydantic-settings", "jinja2", "python-multipart", "torch"}

# A meta-path finder that makes the server's packages (and torch) unimportable, as in a base install.
_BLOCKER = """
import sys
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Blocker())
"""


def _dist_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_base_dependencies_have_no_server_or_torch():
    project = _pyproject()
    base = {_dist_name(r) for r in project["dependencies"]}
    assert {"click", "httpx", "tqdm"} <= base
    assert not base & SERVER_DISTS, f"the base install pulls in {sorted(base & SERVER_DISTS)}"
    extras = project["optional-dependencies"]
    hub = {_dist_name(r) for r in extras["hub"]}
    assert {"fastapi", "sqlmodel", "boto3", "uvicorn", "psycopg", "alembic"} <= hub
    assert "torch" not in hub
    assert any(r.startswith("peft-hub[") and {"hub", "gpu"} <= set(r[9:-1].split(",")) for r in extras["test"])


def test_hub_modules_name_every_hub_extra():
    """``peft-hub serve`` names the extra whenever a module of the hub extra is missing."""
    from importlib.metadata import packages_distributions

    from peft_hub.hub.cli import HUB_MODULES

    hub = {_dist_name(r) for r in _pyproject()["optional-dependencies"]["hub"]}
    for module, dists in packages_distributions().items():
        if {d.lower().replace("_", "-") for d in dists} & hub and not module.startswith("_"):
            assert module in HUB_MODULES, f"{module} (from {dists}) is missing from HUB_MODULES"


def _run_blocked(code: str) -> subprocess.CompletedProcess:
    blocked = sorted({"fastapi", "sqlmodel", "sqlalchemy", "boto3", "botocore", "uvicorn", "psycopg", "alembic",
                      "starlette", "pydantic", "pydantic_settings", "jinja2", "torch"})
    return subprocess.run([sys.executable, "-c", _BLOCKER.format(blocked=blocked) + code],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_and_client_work_without_the_server_dependencies(tmp_path):
    code = f"""
import peft_hub.client, peft_hub.adapter, peft_hub.client.commands
from click.testing import CliRunner
from peft_hub.cli import cli
runner = CliRunner()
r = runner.invoke(cli, ["--help"]); assert r.exit_code == 0 and "serve" in r.output, r.output
r = runner.invoke(cli, ["serve", "--help"]); assert r.exit_code == 0, r.output
# A pull runs the client's whole request path up to the (absent) hub.
r = runner.invoke(cli, ["--url", "http://127.0.0.1:9", "pull", "a/b", "-o", {str(tmp_path / "out")!r}])
assert r.exit_code == 1 and "cannot reach" in r.output, r.output
print("ok")
"""
    out = _run_blocked(code)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.parametrize("args", [["serve"], ["db", "current"]])
def test_server_commands_without_the_hub_extra_name_it_in_one_line(args):
    out = _run_blocked(f"import sys; sys.argv = ['peft-hub', *{args!r}]\nfrom peft_hub.cli import main\nmain()")
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stderr.count("\n") == 1 and "pip install 'peft-hub[hub]'" in out.stderr, out.stderr
