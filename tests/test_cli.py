"""The peft-hub CLI against a live hub: every registry command, and errors as
one line on stderr with a non-zero exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from tiny_models import dir_bytes

from peft_hub.cli import cli

pytestmark = pytest.mark.integration


@pytest.fixture
def run(embedded_hub, client_env):
    env = {"PEFT_HUB_URL": embedded_hub.url, "PEFT_HUB_TOKEN": embedded_hub.admin_token}

    def invoke(*args: str, ok: bool = True, **extra_env: str):
        result = CliRunner().invoke(cli, list(args), env={**env, **extra_env}, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    invoke.url, invoke.token = embedded_hub.url, embedded_hub.admin_token
    return invoke


def test_push_pull_search_show_tag_eval(run, llama_adapter, tmp_path):
    out = run("push", str(llama_adapter), "--tag", "v1", "-m", "first").output
    assert out.startswith("admin/support@") and "new revision" in out
    revision = out.split("@")[1].split()[0]
    assert "unchanged, same revision; uploaded 0 file(s), 0 B" in run("push", str(llama_adapter)).output

    out = run("pull", "admin/support", "-o", str(tmp_path / "pulled")).output
    assert f"admin/support@{revision} -> {tmp_path / 'pulled'}" in out
    assert dir_bytes(tmp_path / "pulled") == dir_bytes(llama_adapter)

    found = json.loads(run("ls", "--base-model", "tiny-llama", "--min-rank", "8", "--json").output)
    assert [a["id"] for a in found["items"]] == ["admin/support"]
    assert "No adapters found." in run("search", "legal").output
    table = run("search", "supp").output
    assert "admin/support" in table and "tiny-llama" in table and "1 adapter(s)" in table

    shown = run("show", "support").output
    assert f"admin/support@{revision}" in shown and "rank       8" in shown and "sha256:" in shown
    assert json.loads(run("show", "admin/support@v1", "--json").output)["revision"] == revision

    assert run("tag", f"admin/support@{revision}", "prod").output.strip() == f"prod -> {revision}"
    added = run("eval", "add", "support", "--metric", "accuracy=0.5", "--dataset", "support-qa", "--base")
    assert "added 1 eval(s)" in added.output
    assert "added 2 eval(s)" in run("eval", "add", "support@prod", "--metric", "accuracy=0.9",
                                    "--metric", "f1=0.8", "--dataset", "support-qa").output
    assert "accuracy" in run("eval", "ls", "support").output
    from peft_hub.client import HubClient

    evals = HubClient(os.environ.get("PEFT_HUB_URL") or run.url, run.token).evals("admin/support")
    assert [e["extra"] for e in evals] == [{"variant": "base"}, {}, {}]


def test_tokens_whoami_login_rm_gc(run, llama_adapter, tmp_path):
    token = run("token", "create", "--namespace", "alice", "--scope", "write").output.strip()
    assert token.startswith("phub_")
    assert run("whoami", PEFT_HUB_TOKEN=token).output.startswith("alice (scope: write)")
    out = run("login", "--token", token, PEFT_HUB_TOKEN="").output
    assert "Logged in" in out and "as alice" in out
    # The saved token is used when no other is given.
    assert run("whoami", PEFT_HUB_TOKEN="").output.startswith("alice")
    run("push", str(llama_adapter), "--name", "legal", PEFT_HUB_TOKEN="")
    assert "deleted alice/legal" in run("rm", "legal", "--yes", PEFT_HUB_TOKEN="").output
    assert "deleted" in run("gc", "--grace", "0").output


def test_errors_are_one_line_without_traceback(embedded_hub, client_env, llama_adapter, tmp_path):
    env = {**os.environ, "PEFT_HUB_URL": embedded_hub.url, "PEFT_HUB_TOKEN": embedded_hub.admin_token}
    exe = [sys.executable, "-m", "peft_hub"]

    def fails(*args: str, **extra: str) -> str:
        proc = subprocess.run([*exe, *args], capture_output=True, text=True, env={**env, **extra}, timeout=120)
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, proc.stderr
        return lines[0]

    assert "not found" in fails("show", "admin/nope")
    assert "invalid" in fails("pull", "../../etc/passwd")
    evil = tmp_path / "evil"
    evil.mkdir()
    for f in llama_adapter.iterdir():
        (evil / f.name).write_bytes(f.read_bytes())
    (evil / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    assert "safe_serialization=True" in fails("push", str(evil))
    reader = subprocess.run([*exe, "token", "create", "--scope", "read", "--namespace", "r"],
                            capture_output=True, text=True, env=env)
    assert "scope" in fails("push", str(llama_adapter), PEFT_HUB_TOKEN=reader.stdout.strip())
    assert "cannot reach" in fails("ls", PEFT_HUB_URL="http://127.0.0.1:9")
