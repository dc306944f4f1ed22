"""The CLI as a newcomer meets it (issue #13): the installed ``peft-hub``
console script, in a fresh HOME, against a live hub. Each test asserts the
exit code, the exact one-line message and the files on disk before and after."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from services import free_port, wait_until
from tiny_models import dir_bytes, make_lora, tiny_llama

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = shutil.which("peft-hub") or pytest.skip("the peft-hub console script is not installed",
                                                 allow_module_level=True)


def _env(home: Path, *, prepend: str | None = None, **extra: str) -> dict[str, str]:
    """A fresh user's environment: no PEFT_HUB_* or XDG_* variable, HOME=``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEFT_HUB_", "XDG_"))}
    # The console script is the installed one; PYTHONPATH makes it run this tree
    # (``prepend`` goes first: a directory that hides a module).
    env.update({"HOME": str(home), "PYTHONPATH": os.pathsep.join(p for p in (prepend, str(ROOT)) if p),
                "PEFT_HUB_DISABLE_PROGRESS_BARS": "1", **extra})
    return env


@pytest.fixture
def cli(embedded_hub, tmp_path):
    """Run ``peft-hub ARGS`` in ``tmp_path/work`` with HOME=``tmp_path/home``, logged in to the live hub."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()

    def run(*args: str, cwd: Path = work, stdin: str = "", prepend: str | None = None, **extra: str):
        given = {"PEFT_HUB_URL": embedded_hub.url, "PEFT_HUB_TOKEN": embedded_hub.admin_token}
        env = _env(home, prepend=prepend, **{**given, **extra})
        return subprocess.run([SCRIPT, *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                              timeout=180)

    run.hub, run.home, run.work = embedded_hub, home, work
    return run


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _push(cli, adapter: Path, name: str = "admin/support") -> str:
    out = cli("push", str(adapter), "--name", name, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["revision"]


# --- 1. pull -o never deletes what it did not write ---------------------------------


def test_pull_into_directories(cli, llama_adapter):
    _push(cli, llama_adapter)
    x = cli.work / "x"
    x.mkdir()
    (x / "keep.txt").write_text("hi")
    refused = cli("pull", "support", "-o", "x")
    assert refused.returncode == 1
    assert refused.stderr == ("Error: x already exists and is not an empty directory; choose a new or empty "
                              "directory, or pass --into-existing to write into it (other files are kept)\n")
    assert _tree(x) == {"keep.txt": b"hi"}

    merged = cli("pull", "support", "-o", "x", "--into-existing")
    assert merged.returncode == 0, merged.stderr
    assert _tree(x) == {"keep.txt": b"hi", **dir_bytes(llama_adapter)}

    fresh = cli("pull", "support", "-o", "new")
    assert fresh.returncode == 0 and dir_bytes(cli.work / "new") == dir_bytes(llama_adapter)
    (cli.work / "new" / "notes.txt").write_text("mine")
    again = cli("pull", "support", "-o", "new")  # an earlier pull of the same adapter: updated in place
    assert again.returncode == 0, again.stderr
    assert _tree(cli.work / "new") == {"notes.txt": b"mine", **dir_bytes(llama_adapter)}

    before = _tree(cli.work)
    for target in (".", "..", str(cli.work)):
        out = cli("pull", "support", "-o", target)
        assert out.returncode == 1 and out.stderr.startswith(f"Error: {target} already exists and is not an empty"), out
        assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert _tree(cli.work) == before

    empty = cli.work / "empty"
    empty.mkdir()
    here = cli("pull", "support", "-o", ".", cwd=empty)
    assert here.returncode == 0, here.stderr
    assert dir_bytes(empty) == dir_bytes(llama_adapter)


# --- 2. the extras' commands without torch ------------------------------------------


def test_commands_that_need_torch_say_what_to_install(cli, tmp_path, llama_adapter):
    shim = tmp_path / "no-torch"
    (shim / "torch").mkdir(parents=True)
    (shim / "torch" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "hi"}\n')
    commands = {
        "compose": ["compose", f"{llama_adapter}+{llama_adapter}", "-o", "out"],
        "materialize": ["materialize", str(llama_adapter), str(llama_adapter), "-o", "out"],
        "validate": ["validate", str(llama_adapter), "--data", str(data)],
        "demo": ["demo", "--offline", "-w", "out"],
    }
    for name, args in commands.items():
        out = cli(*args, prepend=str(shim))
        assert out.returncode == 1, (name, out)
        assert out.stderr == (f"Error: peft-hub {name} needs torch, which is not installed: "
                              "pip install torch==2.13.0 && pip install '.[gpu]'\n"), name
    assert not (cli.work / "out").exists()


# --- 3. a hub on another port ----------------------------------------------------------


def test_serve_on_any_port_saves_its_url_and_login_saves_the_url(tmp_path, llama_adapter):
    home = tmp_path / "fresh"
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([SCRIPT, "serve", "--port", str(port)], cwd=tmp_path, env=_env(home), stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/api/health").status_code == 200, 60, "peft-hub serve")
        wait_until(lambda: "The CLI on this machine" in (tmp_path / "serve.log").read_text(), 10, "the banner")
        lines = (tmp_path / "serve.log").read_text().splitlines()
        assert lines[0].startswith(f"peft-hub serving on {url} (db: ")
        assert f"The CLI on this machine will use {url} (saved to {home / '.peft-hub' / 'url'}); elsewhere set " \
               f"PEFT_HUB_URL={url}" in lines
        assert (home / ".peft-hub" / "url").read_text() == url + "\n"
        who = subprocess.run([SCRIPT, "whoami"], env=_env(home), capture_output=True, text=True, timeout=60)
        assert who.returncode == 0 and who.stdout == f"admin (scope: admin) at {url}\n", who

        busy = subprocess.run([SCRIPT, "serve", "--port", str(port)], env=_env(tmp_path / "other"),
                              capture_output=True, text=True, timeout=60)
        assert busy.returncode == 1 and "serving on" not in busy.stdout
        assert busy.stderr == (f"Error: cannot listen on 127.0.0.1:{port}: it is already in use (another "
                               "peft-hub serve?); choose another with --port\n")

        token = (home / ".peft-hub" / "token").read_text().strip()
        other = tmp_path / "laptop"
        login = subprocess.run([SCRIPT, "--url", url, "--token", token, "login"], env=_env(other), input="",
                               capture_output=True, text=True, timeout=60)
        assert login.returncode == 0, login.stderr
        assert login.stdout == f"Logged in to {url} as admin (admin); saved the token and the URL.\n"
        assert (other / ".peft-hub" / "url").read_text() == url + "\n"
        assert (other / ".peft-hub" / "token").read_text().strip() == token
        nothing = subprocess.run([SCRIPT, "--url", url, "login"], env=_env(tmp_path / "x"), input="",
                                 capture_output=True, text=True, timeout=60)
        assert nothing.returncode == 1 and "GetPassWarning" not in nothing.stderr
        assert nothing.stderr == ("Error: no token given: run `peft-hub login --token phub_…`, or pipe the token "
                                  "on stdin\n")
        assert not (tmp_path / "x" / ".peft-hub" / "token").exists()
    finally:
        proc.terminate()
        proc.wait(20)


# --- 4. a bare name means the hub --------------------------------------------------------


def test_bare_names_mean_the_hub_and_paths_are_local(cli, llama_adapter):
    revision = _push(cli, llama_adapter)
    shutil.copytree(llama_adapter, cli.work / "support")
    hub = cli("compose", "support+support", "-o", "from-hub", "--json")
    assert hub.returncode == 0, hub.stderr
    assert hub.stderr.splitlines() == ["using hub admin/support; for the local directory write ./support"] * 2
    parents = json.loads(hub.stdout)["lineage"]["parents"]
    assert [(p["ref"], p["revision"]) for p in parents] == [("admin/support", revision)] * 2

    local = cli("compose", "./support+./support", "-o", "from-disk", "--json")
    assert local.returncode == 0 and local.stderr == ""
    assert [p["ref"] for p in json.loads(local.stdout)["lineage"]["parents"]] == ["./support"] * 2
    assert "local directories when written as paths" in cli("compose", "--help").stdout


# --- 5. short revision ids ------------------------------------------------------------------


def test_short_revision_ids(cli, llama_adapter):
    revision = _push(cli, llama_adapter)
    for prefix in (revision[:7], revision[:12]):
        shown = cli("show", f"admin/support@{prefix}", "--json")
        assert shown.returncode == 0 and json.loads(shown.stdout)["revision"] == revision, shown.stderr
    pulled = cli("pull", f"support@{revision[:12]}", "-o", "short")
    assert pulled.returncode == 0 and dir_bytes(cli.work / "short") == dir_bytes(llama_adapter)
    assert cli("tag", f"support@{revision[:7]}", "prod").stdout == f"prod -> {revision}\n"

    from sqlmodel import Session, select

    from peft_hub.hub.models import Revision

    twin = revision[:7] + ("0" if revision[7] != "0" else "1") + revision[8:]
    with Session(cli.hub.app.state.engine) as session:  # a second revision sharing the first 7 digits
        row = session.exec(select(Revision).where(Revision.sha == revision)).one()
        session.add(Revision(adapter_id=row.adapter_id, sha=twin, author=row.author, message="", meta=row.meta))
        session.commit()
    ambiguous = cli("show", f"admin/support@{revision[:7]}")
    first, second = sorted([revision[:12], twin[:12]])
    assert ambiguous.returncode == 1
    assert ambiguous.stderr == (f"Error: revision '{revision[:7]}' is ambiguous in admin/support: it starts "
                                f"{first}, {second}; give more digits\n")
    assert json.loads(cli("show", f"admin/support@{revision[:8]}", "--json").stdout)["revision"] == revision


# --- 6. messages in the user's terms ------------------------------------------------------------


def test_messages_name_what_the_user_typed(cli, tmp_path, llama_adapter):
    revision = _push(cli, llama_adapter)
    base = tiny_llama()
    other = make_lora(base, tmp_path / "legal", r=4, base_name="other-llama")
    other_rev = _push(cli, other, "admin/legal")
    refused = cli("compose", "support+legal", "-o", "mixed")
    assert refused.returncode == 1
    assert refused.stderr == ("Error: the adapters were trained on different base models (admin/support@"
                              f"{revision[:12]} -> 'tiny-llama', admin/legal@{other_rev[:12]} -> 'other-llama'); "
                              "pass --force if they really share one\n")
    assert not (cli.work / "mixed").exists()

    base.save_pretrained(tmp_path / "model")
    model = cli("push", str(tmp_path / "model"))
    assert model.returncode == 1
    assert model.stderr == (f"Error: {tmp_path / 'model'} is a model, not an adapter (no adapter_config.json); "
                            "to host it as a base model, push it with --kind model\n")

    url = cli.hub.url
    api = cli("whoami", PEFT_HUB_URL=f"{url}/api")
    assert api.returncode == 1 and api.stderr.startswith(f"Error: {url}/api/api/whoami answered 404 (")
    assert api.stderr.endswith("set PEFT_HUB_URL (or --url) to the hub's root, e.g. http://127.0.0.1:8000, "
                               "without /api\n")
    tls = cli("whoami", PEFT_HUB_URL=url.replace("http://", "https://"))
    assert tls.returncode == 1 and "Traceback" not in tls.stderr
    assert tls.stderr == (f"Error: cannot reach {url.replace('http://', 'https://')}: the TLS handshake failed, "
                          f"so the hub probably speaks plain HTTP; use {url}\n")


# --- 7. units and ranges ------------------------------------------------------------------------


def test_sizes_in_iec_units_and_interpolate_range(cli, llama_adapter):
    pushed = cli("push", str(llama_adapter))
    assert pushed.returncode == 0 and " KiB)" in pushed.stdout and " KB" not in pushed.stdout
    assert " KiB" in cli("ls").stdout
    out = cli("interpolate", str(llama_adapter), str(llama_adapter), "--t", "1.5", "-o", "far")
    assert out.returncode == 1
    assert out.stderr == "Error: --t 1.5 is outside [0, 1]; pass --extrapolate to go beyond A or B\n"
    assert not (cli.work / "far").exists()
    default = cli("interpolate", str(llama_adapter), str(llama_adapter), "-o", "mid", "--json")
    assert default.returncode == 0, default.stderr
    assert json.loads(default.stdout)["lineage"]["params"]["t"] == 0.5
    assert cli("interpolate", str(llama_adapter), str(llama_adapter), "--t", "1.5", "--extrapolate",
               "-o", "far").returncode == 0


# --- also expected: doctor --------------------------------------------------------------------


def test_doctor(cli):
    ok = cli("doctor", "--json")
    assert ok.returncode == 0, ok.stdout
    checks = {c["name"]: c for c in json.loads(ok.stdout)}
    assert all(checks[n]["ok"] for n in ("url", "hub", "version", "token", "storage"))
    assert checks["torch"]["ok"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = cli("doctor", PEFT_HUB_URL=dead)
    assert down.returncode == 1
    assert f"FIX  hub          cannot reach {dead}: nothing answers there" in down.stdout
    assert "-> start the hub (`peft-hub serve`), or set PEFT_HUB_URL" in down.stdout


def test_progress_stays_out_of_pipes(cli, llama_adapter):
    out = cli("push", str(llama_adapter), PEFT_HUB_DISABLE_PROGRESS_BARS="")  # stderr is a pipe: no bar
    assert out.returncode == 0 and out.stderr == ""
    pulled = cli("pull", "support", "-o", "p", PEFT_HUB_DISABLE_PROGRESS_BARS="")
    assert pulled.returncode == 0 and pulled.stderr == ""
