"""Files over the inline limit from huggingface_hub >= 1.0 with hf_xet installed
and Xet left on: the hub answers ``regular`` and streams the base64 line
into the store in bounded memory. The parser's strictness is unit-tested
against a directory store; the pushes run against a hub in its own process,
so its peak RSS during the commit can be read from /proc."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from peft_hub.errors import InvalidAdapterError, InvalidInputError, UnsafeFormatError
from peft_hub.hub.hf import commit
from peft_hub.hub.hf.commit import read_commit
from peft_hub.hub.hf.lfs import takes_xet
from peft_hub.hub.storage import open_store

ROOT = Path(__file__).resolve().parents[1]
VENV_030 = ROOT / ".venv-hf030" / "bin" / "python"
MiB = 1024 * 1024


def _chunks(raw: bytes, size: int):
    async def gen():
        for start in range(0, len(raw), size):
            yield raw[start: start + size]

    return gen()


def _line(data: bytes, path: str = "notes.txt", *, head: str | None = None, tail: str | None = None) -> bytes:
    """A ``file`` line as huggingface_hub's json.dumps writes it (pieces replaceable)."""
    b64 = base64.b64encode(data).decode()
    head = head if head is not None else '{"key": "file", "value": {"content": "'
    tail = tail if tail is not None else f'", "path": "{path}", "encoding": "base64"}}}}'
    return (head + b64 + tail).encode() + b"\n"


def _raw(content: str) -> bytes:
    tail = '", "path": "a.txt", "encoding": "base64"}}\n'
    return ('{"key": "file", "value": {"content": "' + content + tail).encode()


HEADER = json.dumps({"key": "header", "value": {"summary": "big"}}).encode() + b"\n"


@pytest.fixture
def long_lines(monkeypatch):
    """Stream every line over 1 KiB, so small payloads take the streamed path."""
    monkeypatch.setattr(commit, "WHOLE_LINE_MAX", 1024)


@pytest.mark.parametrize("chunk", [1, 3, 4096, 10**7])
def test_a_long_file_line_streams_into_the_store_whatever_the_chunking(tmp_path, long_lines, chunk):
    store = open_store(str(tmp_path / "blobs"))
    data = os.urandom(5000 + 1)  # 1 byte over a multiple of 3: base64 padding "=="
    deleted = json.dumps({"key": "deletedFile", "value": {"path": "old.txt"}}).encode() + b"\n"
    body = HEADER + _line(data) + _line(b"*.bin lfs\n", ".gitattributes") + deleted
    parsed = asyncio.run(read_commit(_chunks(body, chunk), store, stored := []))
    sha = hashlib.sha256(data).hexdigest()
    assert parsed.summary == "big" and stored == [sha]
    assert [(op.kind, op.path, op.inline) for op in parsed.operations] == [
        ("add", "notes.txt", True), ("delete", "old.txt", False)]
    assert (parsed.operations[0].added.size, parsed.operations[0].added.sha256) == (len(data), sha)
    with store.open(sha) as fh:
        assert fh.read() == data


_DATA = os.urandom(3000)
_B64 = base64.b64encode(_DATA).decode()


@pytest.mark.parametrize(("line", "error", "words"), [
    (_line(_DATA)[:1500] + b"!" + _line(_DATA)[1501:], InvalidInputError, "not valid base64"),
    (_line(_DATA)[:1500] + b"\\/" + _line(_DATA)[1502:], InvalidInputError, "not valid base64"),
    (_raw("YWI=" + _B64), InvalidInputError, "not valid base64"),  # data after the padding
    (_raw(_B64[:-1]), InvalidInputError, "not valid base64"),  # not a multiple of 4
    (_raw(_B64[:-4] + "A==="), InvalidInputError, "not valid base64"),
    (_line(_DATA, tail='", "path": "a.txt", "content": "QUFB", "encoding": "base64"}}'), InvalidInputError,
     "repeats a key"),
    (_line(_DATA, tail='", "encoding": "base64"}}'), InvalidInputError, "'path'"),
    (_line(_DATA, tail='", "path": "a.txt", "encoding": "base64"}, "key": "lfsFile"}'), InvalidInputError,
     "repeats a key"),
    (_line(_DATA, tail='", "path": "a.txt", "encoding": "utf-8"}}'), InvalidInputError, "base64"),
    (_line(_DATA, tail='", "path": "a.txt", "mode": "x"}}'), InvalidInputError, "only"),
    (_line(_DATA, tail='", "path": "a.txt"}} trailing'), InvalidInputError, "an inline file's line"),
    (_line(_DATA, head='{"value": {"content": "', tail='", "path": "a.txt"}, "key": "file"}'), InvalidInputError,
     "as huggingface_hub writes it"),
    (json.dumps({"key": "file", "value": {"path": "a.txt", "content": _B64}}).encode() + b"\n", InvalidInputError,
     "as huggingface_hub writes it"),
    (json.dumps({"key": "header", "value": {"summary": "x" * 5000}}).encode() + b"\n", InvalidInputError,
     "as huggingface_hub writes it"),
    (_line(_DATA, "training_args.bin"), UnsafeFormatError, "pickle"),
    (_line(_DATA, "sub/notes.txt"), InvalidAdapterError, "flat"),
    (_line(b"x" * (1024**2 + 1), "README.md"), InvalidAdapterError, "byte cap"),
    (_line(_DATA)[:-60], InvalidInputError, "ended inside"),
], ids=["bang", "escaped-slash", "after-padding", "not-4k", "triple-padding", "second-content", "no-path",
        "second-key", "encoding", "odd-key", "trailing", "value-first", "path-first", "long-header", "pickle",
        "subfolder", "over-cap", "truncated"])
def test_malformed_long_lines_are_refused_and_nothing_is_stored(tmp_path, long_lines, line, error, words):
    store = open_store(str(tmp_path / "blobs"))
    with pytest.raises(error, match=words):
        asyncio.run(read_commit(_chunks(HEADER + line, 777), store, stored := []))
    assert list(store.iterate()) == [] and stored == []


def test_a_streamed_file_over_the_streamed_cap_stops_early(tmp_path, long_lines, monkeypatch):
    monkeypatch.setattr(commit, "XET_CLIENT_INLINE_MAX_BYTES", 4 * MiB)
    store = open_store(str(tmp_path / "blobs"))
    with pytest.raises(InvalidAdapterError, match="larger than"):
        asyncio.run(read_commit(_chunks(_line(b"\0" * (5 * MiB)), 64 * 1024), store, []))
    assert list(store.iterate()) == []


@pytest.mark.parametrize(("agent", "xet"), [
    ("unknown/None; hf_hub/2.4.0; python/3.11.7; torch/2.13.0+cpu", True),
    ("huggingface_hub/1.0.0", True),
    ("transformers/4.57; hf_hub/0.31.1; python/3.11.7", False),
    ("unknown/None; hf_hub/0.36.2; python/3.11", False),
    ("peft-hub/1.0", False), ("", False), ("hf_hub/9999999999.0", False),
])
def test_which_clients_take_xet(agent, xet):
    assert takes_xet(agent) is xet


# --- live hub in its own process -------------------------------------------

LARGE_R, LARGE_IN = 16, 327680  # two LoRA pairs of 20 MiB factors: an 80 MiB weights file


def _adapter(path: Path, width: int = LARGE_IN) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {}
    for module in ("q_proj", "v_proj"):
        key = f"base_model.model.model.layers.0.self_attn.{module}"
        tensors[f"{key}.lora_A.weight"] = rng.standard_normal((LARGE_R, width), dtype=np.float32)
        tensors[f"{key}.lora_B.weight"] = rng.standard_normal((width, LARGE_R), dtype=np.float32)
    path.mkdir()
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": LARGE_R, "lora_alpha": 32,
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "tiny-llama"}))
    (path / "README.md").write_text("---\nlibrary_name: peft\n---\n# big\n")
    return path


@pytest.fixture(scope="module")
def large_adapter(tmp_path_factory) -> Path:
    return _adapter(tmp_path_factory.mktemp("large") / "adapter")


@contextmanager
def _hub_process(settings, tmp_path: Path):
    """``peft-hub serve`` with one worker, on ``settings``' database and storage."""
    from services import free_port, wait_until

    port = free_port()
    env = {**os.environ, "PEFT_HUB_DB_URL": settings.db_url, "PEFT_HUB_STORAGE": settings.storage,
           "PEFT_HUB_ADMIN_TOKEN": settings.admin_token, "PEFT_HUB_TOKEN_FILE": str(settings.token_file),
           "PEFT_HUB_WORKERS": "1"}
    log = open(tmp_path / "hub.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "peft_hub", "serve", "--port", str(port), "--workers", "1",
                             "--log-level", "warning"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/api/health").status_code == 200, 60, "hub")
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmHWM:"):
            return int(row.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def _client_env(url: str, token: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=url, HF_TOKEN=token, HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
    return env


PUSH = """
import hashlib, sys, huggingface_hub as h
from huggingface_hub.utils._runtime import is_xet_available
print("XET", is_xet_available())
if sys.argv[4] == "push":
    api = h.HfApi()
    api.create_repo(sys.argv[2], exist_ok=True)
    api.upload_folder(folder_path=sys.argv[1], repo_id=sys.argv[2])
else:
    got = h.hf_hub_download(sys.argv[2], "adapter_model.safetensors", cache_dir=sys.argv[3])
    print("SHA", hashlib.sha256(open(got, "rb").read()).hexdigest())
"""


def _push(python: str, adapter: Path, repo: str, url: str, token: str, tmp_path: Path, mode: str = "push") -> str:
    """Push ``adapter`` to ``repo`` with huggingface_hub (``mode="pull"``: download its weights)."""
    done = subprocess.run([python, "-c", PUSH, str(adapter), repo, str(tmp_path / "dl"), mode], check=False,
                          env=_client_env(url, token, tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _push_and_pull(python: str, adapter: Path, repo: str, url: str, token: str, tmp_path: Path) -> str:
    return (_push(python, adapter, repo, url, token, tmp_path)
            + _push(python, adapter, repo, url, token, tmp_path, mode="pull"))


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["embedded", "s3-postgres"])
def test_hf_hub_2_with_xet_pushes_a_large_file_inline_in_bounded_memory(
    backend, large_adapter, tmp_path, request,
):
    from conftest import make_settings

    settings = make_settings(backend, tmp_path, request)
    weights = (large_adapter / "adapter_model.safetensors").read_bytes()
    assert len(weights) > 80 * MiB
    sha = hashlib.sha256(weights).hexdigest()
    with _hub_process(settings, tmp_path) as (proc, url):
        auth = {"Authorization": f"Bearer {settings.admin_token}"}
        # The same flow with a small adapter first: what the hub imports and caches on a first push is not the file's.
        small = _adapter(tmp_path / "small", width=64)
        _push_and_pull(sys.executable, small, "admin/warm", url, settings.admin_token, tmp_path)
        before = _peak_rss(proc.pid)
        out = _push(sys.executable, large_adapter, "admin/big", url, settings.admin_token, tmp_path)
        growth = _peak_rss(proc.pid) - before
        out += _push(sys.executable, large_adapter, "admin/big", url, settings.admin_token, tmp_path, mode="pull")
        assert "XET True" in out and f"SHA {sha}" in out, out
        # Read whole, the 107 MiB line, its text and the 80 MiB decoding would be held at
        # once (~300 MiB). Streamed: the body's pieces, 1 MiB batches, and S3's 16 MiB part buffer.
        # Either limit is below the line alone; the local one has room for the
        # worker threads' malloc arenas (30-45 MiB measured).
        limit = 64 * MiB if backend == "embedded" else 80 * MiB
        assert growth < limit, f"the hub's peak RSS grew by {growth / MiB:.0f} MiB during the push"

        # A malformed large line is refused and leaves nothing behind.
        bad = bytearray(_line(weights[: 8 * MiB], "adapter_model.safetensors"))
        bad[len(bad) // 2] = ord("!")
        blobs_before = {b.sha256 for b in open_store(settings.storage).iterate()}
        refused = httpx.post(f"{url}/api/models/admin/big/commit/main", content=HEADER + bytes(bad),
                             headers={**auth, "Content-Type": "application/x-ndjson"}, timeout=120)
        assert refused.status_code == 422 and "base64" in refused.text, refused.text
        assert {b.sha256 for b in open_store(settings.storage).iterate()} == blobs_before


@pytest.mark.integration
@pytest.mark.skipif(not VENV_030.exists(), reason="no .venv-hf030 (scripts/install-test-deps.sh makes it)")
def test_hf_hub_0_3x_keeps_lfs_for_a_large_file(large_adapter, tmp_path, request):
    """0.31.1 asks ``xetEnabled`` (false here), so it takes Git LFS even with hf_xet installed."""
    from conftest import make_settings

    settings = make_settings("embedded", tmp_path, request)
    weights = (large_adapter / "adapter_model.safetensors").read_bytes()
    with _hub_process(settings, tmp_path) as (proc, url):
        auth = {"Authorization": f"Bearer {settings.admin_token}", "User-Agent": "unknown/None; hf_hub/0.31.1"}
        httpx.post(f"{url}/api/repos/create", headers=auth, json={"name": "big"}).raise_for_status()
        plan = httpx.post(f"{url}/api/models/admin/big/preupload/main", headers=auth, json={
            "files": [{"path": "adapter_model.safetensors", "size": len(weights)}]})
        assert plan.json()["files"][0]["uploadMode"] == "lfs", plan.text
        out = _push_and_pull(str(VENV_030), large_adapter, "admin/big", url, settings.admin_token, tmp_path)
        assert f"SHA {hashlib.sha256(weights).hexdigest()}" in out, out


@pytest.mark.integration
def test_past_the_xet_client_bound_lfs_is_offered_and_xet_off_is_the_fix(tmp_path, request, monkeypatch):
    """Past the bound the 2.x client is told LFS, so it asks for a Xet token:
    hf_xet shows only the 501 and its URL (the body names the fix, for curl);
    with HF_HUB_DISABLE_XET=1 the same upload goes through Git LFS."""
    from conftest import make_settings
    from services import live_hub

    monkeypatch.setattr(commit, "XET_CLIENT_INLINE_MAX_BYTES", 1024)
    monkeypatch.setattr(commit, "INLINE_MAX_BYTES", 1024)
    folder = _adapter(tmp_path / "a", width=64)  # 8 KiB of weights: over both bounds
    script = ("import sys, huggingface_hub as h\napi = h.HfApi()\napi.create_repo('admin/x', exist_ok=True)\n"
              "try:\n    api.upload_folder(folder_path=sys.argv[1], repo_id='admin/x')\n"
              "except Exception as exc:\n    print('REFUSED', exc)\nelse:\n    print('UPLOADED')\n")
    with live_hub(make_settings("embedded", tmp_path, request)) as hub:
        env = _client_env(hub.url, hub.admin_token, tmp_path)
        done = subprocess.run([sys.executable, "-c", script, str(folder)], check=False, timeout=120, env=env,
                              capture_output=True, text=True)
        assert "REFUSED" in done.stdout and "501" in done.stdout and "xet-write-token" in done.stdout, (
            done.stdout + done.stderr)
        token = httpx.get(f"{hub.url}/api/models/admin/x/xet-write-token/main")
        assert token.status_code == 501 and "HF_HUB_DISABLE_XET=1" in token.text
        done = subprocess.run([sys.executable, "-c", script, str(folder)], check=False, timeout=120,
                              env={**env, "HF_HUB_DISABLE_XET": "1"}, capture_output=True, text=True)
        assert "UPLOADED" in done.stdout, done.stdout + done.stderr
