"""The hub's hot read paths against a bare FastAPI app under the same uvicorn
settings (one worker, same launcher), in the same run, interleaved, medians
of 3: metadata JSON (native ``show``, HF ``model_info`` and a pinned tree),
resolve answered by a 302 (PostgreSQL + SeaweedFS) and a file served from
the local store (SQLite + local files). Prints req/s, p50, p99 and the ratio
per route, and the SQL statements each request runs, cold and warm, and the
event loop and HTTP parser each server ran (``protocol.server_options``:
uvloop with the hub's own listener, ``hub/eventloop.py``, and httptools when
installed, as the ``hub`` extra installs them).

Loads with ``wrk`` when it is on PATH, else with a bounded asyncio httpx client.

    python bench/bench_api.py [--seconds 2] [--repeats 3] [--backends sqlite,pg] [--ttl 2] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PEFT_HUB_DISABLE_PROGRESS_BARS", "1")
CONCURRENCY = 32
#: What each server ran: {"hub" | "bare": {"loop": "peft_hub.hub.eventloop.EagerLoop" | ..., "http": ...}}.
STACKS: dict[str, dict[str, str]] = {}

#: Both servers start through this: the hub as ``peft-hub serve`` builds it, or the bare app.
LAUNCH = r'''
import json, socket, sys, uvicorn
kind, port, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if kind == "hub":
    from peft_hub.hub import Settings, create_app
    app = create_app(Settings())
else:
    from fastapi import FastAPI
    from fastapi.responses import FileResponse, RedirectResponse
    spec = json.loads(arg)
    app = FastAPI()
    @app.get("/json")
    def answer() -> dict:
        return spec["json"]
    @app.get("/redirect")
    def redirect():
        return RedirectResponse(spec["url"], status_code=302)
    @app.get("/file")
    def file():
        return FileResponse(spec["file"], media_type="application/octet-stream", filename="f.safetensors")
sock = socket.socket(); sock.bind(("127.0.0.1", port))
from peft_hub.hub.protocol import server_options
config = uvicorn.Config(app, log_level="warning", **server_options())  # as `peft-hub serve` has them, for both
config.load()
factory = config.get_loop_factory()
probe = factory() if factory is not None else None
loop_name = "asyncio" if probe is None else f"{type(probe).__module__}.{type(probe).__name__}"
if probe is not None:
    probe.close()
print(json.dumps({"loop": loop_name, "http": config.http_protocol_class.__name__}), flush=True)
uvicorn.Server(config).run(sockets=[sock])
'''


@contextmanager
def server(kind: str, arg: str, env: dict[str, str]):
    """A server process on a free port; yields its URL."""
    import httpx
    from services import free_port, stop, wait_until

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, kind, str(port), arg], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    stack = proc.stdout.readline().strip()  # the one line LAUNCH prints: which loop and HTTP parser
    STACKS[kind] = json.loads(stack) if stack.startswith("{") else {"loop": "?", "http": "?"}

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited: {proc.stderr.read()[-2000:]}")
        try:
            return httpx.get(url + ("/api/health" if kind == "hub" else "/docs"), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 60, f"{kind} server")
        yield url
    finally:
        stop(proc)


def load(url: str, seconds: float, headers: dict[str, str]) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) at CONCURRENCY connections for ``seconds``."""
    if shutil.which("wrk"):
        cmd = ["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{max(1, round(seconds))}s", "--latency", url]
        for key, value in headers.items():
            cmd += ["-H", f"{key}: {value}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        return rate, _wrk_ms(out, "50%"), _wrk_ms(out, "99%")
    return asyncio.run(_load_httpx(url, seconds, headers))


def _wrk_ms(out: str, pct: str) -> float:
    value, unit = re.search(rf"{pct}\s+([\d.]+)(us|ms|s)", out).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


async def _load_httpx(url: str, seconds: float, headers: dict[str, str]) -> tuple[float, float, float]:
    import httpx

    latencies: list[float] = []
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        end = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < end:
                start = time.perf_counter()
                response = await client.get(url)
                if response.status_code >= 400:
                    response.raise_for_status()
                latencies.append(time.perf_counter() - start)

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - begin
    latencies.sort()
    return len(latencies) / elapsed, 1000 * latencies[len(latencies) // 2], 1000 * latencies[int(len(latencies) * .99)]


def statements(settings, token: str, paths: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Statements per request (cold, warm) for each route, counted in a hub in this process."""
    import httpx
    from services import live_hub
    from sqlalchemy import event

    from peft_hub.hub import cache

    out = {}
    with live_hub(settings) as hub, httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}) as c:
        engine, seen = hub.app.state.engine, []
        event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
        for label, path in paths.items():
            c.get(path, follow_redirects=False)  # any one-off bookkeeping (last_used_at) done first
            cache.of(engine).bump({"auth", "repo"})
            counts = []
            for _ in range(2):
                seen.clear()
                if c.get(path, follow_redirects=False).status_code >= 400:
                    raise RuntimeError(f"{label}: {path} failed")
                counts.append(len(seen))
            out[label] = (counts[0], counts[1])
    return out


def bench_backend(backend: str, args: argparse.Namespace, stack: ExitStack) -> None:
    import httpx
    from raw_adapters import tiny_lora_dir, zero_safetensors
    from services import postgres, seaweedfs

    from peft_hub.client import HubClient
    from peft_hub.hub import Settings

    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="peft-hub-bench-api-")))
    token = "phub_" + secrets.token_hex(6) + secrets.token_urlsafe(32)
    env = {"PEFT_HUB_ADMIN_TOKEN": token, "PEFT_HUB_HOME": str(work / "home"), "PEFT_HUB_CACHE_TTL": str(args.ttl)}
    if backend == "sqlite":
        env |= {"PEFT_HUB_DB_URL": f"sqlite:///{work / 'hub.db'}", "PEFT_HUB_STORAGE": str(work / "blobs")}
    else:
        s3 = stack.enter_context(seaweedfs())
        os.environ.update(s3.env())
        env |= {"PEFT_HUB_DB_URL": stack.enter_context(postgres()), "PEFT_HUB_STORAGE": "s3://bench/hub"}
    ours = stack.enter_context(server("hub", "", env))
    adapter = tiny_lora_dir(work / "a" / "lora", "bench")
    (adapter / "adapter_model.safetensors").write_bytes(zero_safetensors({  # the file served: 256 KiB
        "base_model.model.layers.0.q_proj.lora_A.weight": [2, 16384],
        "base_model.model.layers.0.q_proj.lora_B.weight": [16384, 2],
    }))
    with HubClient(ours, token, cache_dir=work / "client") as client:
        sha = client.push(adapter, name="admin/bench", message="bench").revision
    auth = {"Authorization": f"Bearer {token}"}
    show = httpx.get(f"{ours}/api/adapters/admin/bench", headers=auth).json()
    routes = {
        "show": ("/api/adapters/admin/bench", "/json"),
        "model_info": ("/api/models/admin/bench", "/json"),
        "tree@sha": (f"/api/models/admin/bench/tree/{sha}", "/json"),
    }
    blob = f"/admin/bench/resolve/{sha}/adapter_model.safetensors"
    first = httpx.get(ours + blob, headers=auth)
    if backend == "sqlite":
        routes["resolve file (HF)"] = (blob, "/file")
        routes["resolve file (native)"] = (f"/api/adapters/admin/bench/resolve/{sha}/adapter_model.safetensors",
                                           "/file")
        sha256 = first.headers["etag"].strip('"')
        peer_spec = {"json": show, "url": "", "file": str(next((work / "blobs").rglob(f"*{sha256}*")))}
    else:
        redirect = httpx.get(ours + blob, headers=auth, follow_redirects=False)
        routes["resolve 302 (HF)"] = (blob, "/redirect")
        routes["resolve 302 (native)"] = (f"/api/adapters/admin/bench/resolve/{sha}/adapter_model.safetensors",
                                          "/redirect")
        peer_spec = {"json": show, "url": redirect.headers["location"], "file": ""}
    bare = stack.enter_context(server("bare", json.dumps(peer_spec), {}))
    results: dict[str, dict[str, list[tuple[float, float, float]]]] = {r: {"ours": [], "bare": []} for r in routes}
    for _ in range(args.repeats):  # interleaved: each route, ours then the peer, then again
        for label, (path, peer) in routes.items():
            results[label]["ours"].append(load(ours + path, args.seconds, auth))
            results[label]["bare"].append(load(bare + peer, args.seconds, auth))
    settings = Settings(db_url=env["PEFT_HUB_DB_URL"], storage=env["PEFT_HUB_STORAGE"], admin_token=token,
                        token_file=work / "token")
    counts = statements(settings, token, {label: path for label, (path, _) in routes.items()})
    print(f"\n{backend}: {CONCURRENCY} concurrent, {args.seconds:g} s per run, median of {args.repeats}, "
          f"load by {'wrk' if shutil.which('wrk') else 'httpx'}")
    for kind in ("hub", "bare"):
        print(f"  {kind} server: loop {STACKS[kind]['loop']}, http {STACKS[kind]['http']}")
    print(f"{'route':24} {'ours req/s':>10} {'p50':>7} {'p99':>7} | {'bare req/s':>10} {'p50':>7} {'p99':>7} | "
          f"{'ratio':>5} | statements cold/warm")
    for label, sides in results.items():
        o = [statistics.median(x) for x in zip(*sides["ours"], strict=True)]
        b = [statistics.median(x) for x in zip(*sides["bare"], strict=True)]
        cold, warm = counts[label]
        print(f"{label:24} {o[0]:10.0f} {o[1]:6.1f}ms {o[2]:6.1f}ms | {b[0]:10.0f} {b[1]:6.1f}ms {b[2]:6.1f}ms | "
              f"{o[0] / b[0]:5.2f} | {cold}/{warm}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,pg")
    parser.add_argument("--ttl", type=float, default=2.0, help="the hub's PEFT_HUB_CACHE_TTL")
    parser.add_argument("--quick", action="store_true", help="1 s runs, 1 repeat, SQLite only")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats, args.backends = 1.0, 1, "sqlite"
    for backend in args.backends.split(","):
        with ExitStack() as stack:
            bench_backend(backend.strip(), args, stack)


if __name__ == "__main__":
    main()
