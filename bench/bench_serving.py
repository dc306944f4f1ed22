"""Serving through the vLLM plugin: how fast a tag move reaches requests, and
what the first request to an unloaded hub adapter costs.

Run: python bench/bench_serving.py (needs .venv-vllm, see scripts/install-test-deps.sh).

Measured in the same run, against the same vLLM:
- rollout: seconds from ``PUT /tags/prod`` to the first response computed by
  the new revision, while a client loops requests (target: under 5 s);
- first request to ``admin/support@<rev>`` (resolve + pull + load + generate)
  against the first request to an adapter named with ``--lora-modules`` and a
  local directory (already loaded at start: generate only) and against
  ``/v1/load_lora_adapter`` from a local directory plus a request.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the Stack helper lives with the test

from services import live_hub  # noqa: E402 - needs the sys.path line above
from test_serving_vllm import SECRET, Stack, peft_tokens  # noqa: E402 - needs the sys.path line above

from peft_hub.client.events import add_webhook  # noqa: E402 - needs the sys.path line above
from peft_hub.hub import Settings  # noqa: E402 - needs the sys.path line above


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rollout_seconds(stack: Stack, moves: int = 4) -> list[float]:
    want = {k: peft_tokens(stack.base, stack.adapters[f"support-{k}"]) for k in "ab"}
    add_webhook(stack.admin, f"{stack.url}/peft-hub/webhook", secret=SECRET, adapter="admin/support", events=["tag"])
    stack.tokens("admin/support@prod")
    answers: list[list[int]] = []
    failures: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            r = stack.complete("admin/support@prod")
            (answers.append(r.json()["choices"][0]["token_ids"]) if r.status_code == 200 else failures.append(r.text))

    worker = threading.Thread(target=loop)
    worker.start()
    out = []
    try:
        for i in range(moves):
            key = "b" if i % 2 == 0 else "a"
            moved = time.monotonic()
            stack.admin.set_tag(f"admin/support@{stack.revisions[key]}", "prod")
            while (not answers or answers[-1] != want[key]) and time.monotonic() < moved + 60:
                time.sleep(0.02)
            out.append(time.monotonic() - moved)
    finally:
        stop.set()
        worker.join(60)
    print(f"requests during the rollouts: {len(answers)} answered, {len(failures)} failed")
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(db_url=f"sqlite:///{root / 'hub.db'}", storage=str(root / "blobs"),
                            admin_token="phub_bench000000" + "x" * 32, token_file=root / "hub-token",
                            webhook_allow_private=True, webhook_retry_base_seconds=0.5, webhook_poll_seconds=0.2)
        with live_hub(settings) as hub:
            stack = Stack(root, hub)
            stack.build()
            local_b = stack.adapters["support-b"]
            stack.start_vllm("--lora-modules", f"local-b={local_b}")
            try:
                stack.tokens("local-b")  # warm the engine
                static = timed(lambda: stack.tokens("local-b"))
                hub_first = timed(lambda: stack.tokens(f"admin/support@{stack.revisions['b']}"))
                hub_again = timed(lambda: stack.tokens(f"admin/support@{stack.revisions['b']}"))

                def load_local() -> None:
                    r = httpx.post(f"{stack.url}/v1/load_lora_adapter", timeout=60,
                                   json={"lora_name": "local-c", "lora_path": str(stack.adapters["support-c"])})
                    assert r.status_code == 200, r.text
                    stack.tokens("local-c")

                dynamic_local = timed(load_local)
                moves = rollout_seconds(stack)
            finally:
                stack.stop()
    print(f"first request, hub ref (resolve+pull+load):      {hub_first * 1000:8.1f} ms")
    print(f"same ref, loaded:                                {hub_again * 1000:8.1f} ms")
    print(f"--lora-modules local directory (preloaded):      {static * 1000:8.1f} ms  "
          f"hub first/this = {hub_first / static:.2f}x")
    print(f"/v1/load_lora_adapter local directory + request: {dynamic_local * 1000:8.1f} ms  "
          f"hub first/this = {hub_first / dynamic_local:.2f}x")
    print(f"tag move -> first answer from the new revision: median {statistics.median(moves):.2f} s, "
          f"max {max(moves):.2f} s over {len(moves)} moves (target < 5 s: {max(moves) / 5:.2f}x of it)")


if __name__ == "__main__":
    main()
