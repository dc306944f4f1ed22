"""A real vLLM (CPU build, its own environment) serving hub adapters by ref
through the peft-hub plugin: resolution, private adapters, refusals, outputs
equal to PEFT's, and a rollout while requests run. One vLLM per module."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import make_settings
from services import free_port, live_hub, missing
from tiny_models import make_lora, save_base, tiny_llama

from peft_hub.client import HubClient
from peft_hub.client.events import add_webhook, list_deployments
from peft_hub.signing import signature

pytestmark = pytest.mark.integration  # a real vLLM in .venv-vllm

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [1, 40, 41, 42, 43, 44]
SECRET = "rollout-secret-0123456789"


def vllm_python() -> str:
    python = os.environ.get("PEFT_HUB_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
    if not Path(python).exists():
        missing(f"no vLLM environment at {python} (run scripts/install-test-deps.sh)")
    return python


def peft_tokens(base_dir: Path, adapter_dir: Path, n: int = 6) -> list[int]:
    """PEFT's greedy continuation of PROMPT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32),
                                      adapter_dir).eval()
    ids = torch.tensor([PROMPT])
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


class Stack:
    """The hub, the adapters in it, and one vLLM server using the plugin."""

    def __init__(self, root: Path, hub) -> None:
        self.root, self.hub = root, hub
        self.admin = HubClient(hub.url, hub.admin_token, cache_dir=root / "admin-cache")
        self.base = root / "tiny-llama"
        self.adapters: dict[str, Path] = {}
        self.revisions: dict[str, str] = {}

    def build(self) -> None:
        from peft import IA3Config, get_peft_model

        from peft_hub.gpu_runtime.tokenizer import save_char_tokenizer

        model = tiny_llama(hidden=256)
        save_base(model, self.base)
        save_char_tokenizer(self.base)
        a = self.root / "adapters"
        specs = {
            "support-a": {"seed": 1}, "support-b": {"seed": 2}, "support-c": {"seed": 3},
            "composed": {"seed": 4, "rank_pattern": {"q_proj": 12, "down_proj": 2}, "alpha_pattern": {"v_proj": 3.0}},
            "big": {"seed": 5, "r": 64}, "dora": {"seed": 6, "use_dora": True},
            "mts": {"seed": 7, "modules_to_save": ["lm_head"]}, "elsewhere": {"seed": 8, "base_name": "gpt-9"},
            "secret": {"seed": 9}, "hidden": {"seed": 10},
        }
        for name, kw in specs.items():
            self.adapters[name] = make_lora(model, a / name, r=kw.pop("r", 8), alpha=16, **kw)
        ia3 = get_peft_model(tiny_llama(hidden=256), IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                                               feedforward_modules=["down_proj"]))
        ia3.peft_config["default"].base_model_name_or_path = "tiny-llama"
        ia3.save_pretrained(a / "ia3")
        for tag, name in (("a", "support-a"), ("b", "support-b"), ("c", "support-c")):
            self.revisions[tag] = self.admin.push(self.adapters[name], name="admin/support").revision
        self.admin.set_tag(f"admin/support@{self.revisions['a']}", "prod")
        for name in ("composed", "big", "dora", "mts", "elsewhere"):
            self.admin.push(self.adapters[name], name=f"admin/{name}")
        self.admin.push(a / "ia3", name="admin/ia3")
        self.admin.push(self.adapters["hidden"], name="admin/hidden", private=True)
        alice = self.admin.create_token(scope="write", namespace="alice")["token"]
        self.alice_token = alice
        with HubClient(self.hub.url, alice, cache_dir=self.root / "alice-cache") as hub:
            hub.push(self.adapters["secret"], name="alice/secret", private=True)

    def start_vllm(self, *extra: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "HF_"))}
        env.update(
            VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind", VLLM_HOST_IP="127.0.0.1",
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", VLLM_PLUGINS="peft_hub,peft_hub_rollout",
            PEFT_HUB_URL=self.hub.url, PEFT_HUB_TOKEN=self.alice_token, PEFT_HUB_CACHE=str(self.root / "vllm-cache"),
            PEFT_HUB_HOME=str(self.root / "vllm-home"), PEFT_HUB_WEBHOOK_SECRET=SECRET,
            PEFT_HUB_SERVER_ID="vllm-test", PEFT_HUB_REPORT_SECONDS="2", HF_HUB_OFFLINE="1",
        )
        self.log = open(self.root / "vllm.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.base),
             "--dtype", "float32", "--enforce-eager", "--max-model-len", "128", "--max-lora-rank", "32",
             "--enable-lora", "--max-loras", "2", "--host", "127.0.0.1", "--port", str(port), *extra],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.root,
        )
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"vLLM did not start within 420s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return (self.root / "vllm.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        self.admin.close()

    def complete(self, model: str, timeout: float = 60) -> httpx.Response:
        body = {"model": model, "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "ignore_eos": True,
                "return_token_ids": True}
        return httpx.post(f"{self.url}/v1/completions", json=body, timeout=timeout)

    def tokens(self, model: str) -> list[int]:
        r = self.complete(model)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["token_ids"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request):
    python = vllm_python()
    root = tmp_path_factory.mktemp("serving")
    # Loopback webhooks are refused unless allowed; retry fast so a slow switch costs little.
    settings = make_settings("embedded", root, request).model_copy(update={
        "webhook_allow_private": True, "webhook_retry_base_seconds": 0.5, "webhook_poll_seconds": 0.2})
    with live_hub(settings) as hub:
        s = Stack(root, hub)
        s.build()
        s.python = python
        s.start_vllm()
        try:
            yield s
        finally:
            s.stop()


def test_resolves_by_name_tag_and_revision(stack):
    rev_a, rev_c = stack.revisions["a"], stack.revisions["c"]
    want_a = peft_tokens(stack.base, stack.adapters["support-a"])
    want_c = peft_tokens(stack.base, stack.adapters["support-c"])
    assert want_a != want_c
    assert stack.tokens("admin/support@prod") == want_a
    assert stack.tokens("admin/support") == want_c  # main: the last push
    assert stack.tokens(f"admin/support@{rev_a}") == want_a
    assert stack.tokens(f"admin/support@{rev_c[:10]}") == want_c
    models = {m["id"] for m in httpx.get(f"{stack.url}/v1/models").json()["data"]}
    assert {"admin/support@prod", "admin/support", f"admin/support@{rev_a}"} <= models


def test_composed_adapter_equals_peft(stack):
    assert stack.tokens("admin/composed") == peft_tokens(stack.base, stack.adapters["composed"])


def test_private_adapters_follow_the_token(stack):
    assert stack.tokens("alice/secret") == peft_tokens(stack.base, stack.adapters["secret"])
    r = stack.complete("admin/hidden")
    assert r.status_code == 404, r.text
    assert "does not exist" in r.json()["error"]["message"]
    assert stack.complete("admin/no-such-adapter").status_code == 404
    assert stack.complete("admin/support@no-such-tag").status_code == 404


@pytest.mark.parametrize(("model", "words"), [
    ("admin/big", "rank 64, above this server's --max-lora-rank 32"),
    ("admin/dora", "DoRA"),
    ("admin/mts", "modules_to_save"),
    ("admin/ia3", "vLLM serves LoRA adapters only"),
    ("admin/elsewhere", "trained on 'gpt-9'"),
])
def test_refusals_say_why(stack, model, words):
    r = stack.complete(model)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]


def test_webhook_refuses_bad_signatures(stack):
    raw = json.dumps({"id": "x", "event": "tag", "repo": "admin/support", "tag": "prod"}).encode()
    r = httpx.post(f"{stack.url}/peft-hub/webhook", content=raw,
                   headers={"X-PeftHub-Signature-256": signature("wrong", raw)})
    assert r.status_code == 401
    assert "X-PeftHub-Signature-256" in r.json()["detail"]


def test_rollout_while_requests_run(stack):
    add_webhook(stack.admin, f"{stack.url}/peft-hub/webhook", secret=SECRET, adapter="admin/support", events=["tag"])
    want = {k: peft_tokens(stack.base, stack.adapters[f"support-{k}"]) for k in "abc"}
    assert stack.tokens("admin/support@prod") == want["a"]
    failures, answers, stop = [], [], threading.Event()

    def loop() -> None:
        while not stop.is_set():
            r = stack.complete("admin/support@prod")
            if r.status_code != 200:
                failures.append(r.text)
            else:
                answers.append(r.json()["choices"][0]["token_ids"])

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        for key in "bc":
            moved = time.monotonic()
            stack.admin.set_tag(f"admin/support@{stack.revisions[key]}", "prod")
            seen = len(answers)
            while (not answers or answers[-1] != want[key]) and time.monotonic() < moved + 30:
                time.sleep(0.05)
            assert answers and answers[-1] == want[key], (
                f"prod -> {key} never answered ({len(answers) - seen} answers since)"
            )
            print(f"prod -> {key}: new revision answered {time.monotonic() - moved:.2f}s after the move")
    finally:
        stop.set()
        worker.join(60)
    assert failures == []
    assert all(a in want.values() for a in answers)
    assert stack.tokens("admin/support@prod") == want["c"]


def test_deployments_show_the_new_revision(stack):
    deadline, servers = time.monotonic() + 15, {}
    while time.monotonic() < deadline:
        servers = {d.get("server_id"): d for d in list_deployments(stack.admin)}
        adapters = {a["ref"]: a for a in (servers.get("vllm-test") or {}).get("adapters", [])}
        if adapters.get("admin/support@prod", {}).get("revision") == stack.revisions["c"]:
            return
        time.sleep(0.5)
    pytest.fail(f"deployments never showed prod at {stack.revisions['c']}: {servers}")
