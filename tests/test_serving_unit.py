"""The vLLM plugin's logic without vLLM: refs, refusals, deliveries, import boundary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from peft_hub.errors import (
    AuthenticationError,
    IncompatibleAdaptersError,
    InvalidInputError,
    InvalidNameError,
    RankLimitError,
    UnsupportedAdapterError,
)
from peft_hub.serving.receiver import Event, SeenDeliveries, parse_delivery, stale_names
from peft_hub.serving.resolve import (
    Served,
    ServeLimits,
    check_config_servable,
    check_servable,
    parse_model_name,
)
from peft_hub.signing import signature

LIMITS = ServeLimits(frozenset({"/models/tiny-llama", "tiny-llama"}), 32)
META = {"method": "LORA", "base_model": "tiny-llama", "max_rank": 8, "use_dora": False}


@pytest.mark.parametrize(("model", "want"), [
    ("acme/support", ("acme", "support", "main")),
    ("acme/support@prod", ("acme", "support", "prod")),
    ("acme/support@" + "a" * 40, ("acme", "support", "a" * 40)),
    ("acme/support@abc1234", ("acme", "support", "abc1234")),
])
def test_model_names_parse(model, want):
    ref = parse_model_name(model)
    assert (ref.owner, ref.name, ref.revision) == want


@pytest.mark.parametrize("model", [
    "support", "tiny-llama", "/models/tiny-llama", "acme/support@", "acme/../x", "a/b/c", "acme/support@pr od",
    "acme/support@" + "x" * 65, "x" * 400, "acme/support@a/b",
])
def test_other_names_are_not_refs(model):
    with pytest.raises(InvalidNameError):
        parse_model_name(model)


def test_servable_adapter_passes():
    check_servable(META, LIMITS, label="acme/x")
    check_servable({**META, "base_model": "/elsewhere/tiny-llama", "max_rank": 32}, LIMITS, label="acme/x")


@pytest.mark.parametrize(("meta", "error", "words"), [
    ({"method": "IA3"}, UnsupportedAdapterError, "LoRA adapters only"),
    ({"use_dora": True}, UnsupportedAdapterError, "DoRA"),
    ({"base_model": "meta-llama/Llama-3.1-8B"}, IncompatibleAdaptersError, "PEFT_HUB_BASE_MODEL"),
    ({"base_model": None}, IncompatibleAdaptersError, "trained on None"),
    ({"max_rank": 64}, RankLimitError, "--max-lora-rank 64"),
    ({"max_rank": 4096}, RankLimitError, "cannot serve a rank this large"),
])
def test_refusals_from_the_description(meta, error, words):
    with pytest.raises(error, match=words) as info:
        check_servable({**META, **meta}, LIMITS, label="acme/x@0123")
    assert isinstance(info.value, ValueError)  # vLLM renders ValueError as a 400 with the message
    assert "acme/x@0123" in str(info.value)


def test_refusals_from_the_config():
    check_config_servable({"peft_type": "LORA", "modules_to_save": None}, label="a/b")
    with pytest.raises(UnsupportedAdapterError, match="modules_to_save"):
        check_config_servable({"peft_type": "LORA", "modules_to_save": ["lm_head"]}, label="a/b")


def test_limits_from_env(monkeypatch):
    monkeypatch.setenv("PEFT_HUB_BASE_MODEL", "meta-llama/Llama-3.1-8B, other")
    monkeypatch.setenv("PEFT_HUB_MAX_LORA_RANK", "16")
    limits = ServeLimits.build(["/models/x"], None)
    assert limits.base_models == {"meta-llama/Llama-3.1-8B", "Llama-3.1-8B", "other"}
    assert limits.max_lora_rank == 16
    assert ServeLimits.build(["/models/x"], 64).max_lora_rank == 64


def _delivery(body: dict, secret: str = "s3cret", **headers: str) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    base = {"x-pefthub-signature-256": signature(secret, raw), "x-pefthub-event": body.get("event", ""),
            "x-pefthub-delivery": "d1"}
    return raw, {**base, **headers}


BODY = {"id": "d1", "event": "tag", "repo": "acme/support", "tag": "prod", "revision": "b" * 40, "previous": None}


def test_delivery_verifies():
    raw, headers = _delivery(BODY)
    assert parse_delivery("s3cret", raw, headers) == Event("d1", "tag", "acme/support", "prod")


@pytest.mark.parametrize(("secret", "mutate", "error"), [
    ("", lambda raw, h: (raw, h), AuthenticationError),
    ("other", lambda raw, h: (raw, h), AuthenticationError),
    ("s3cret", lambda raw, h: (raw + b" ", h), AuthenticationError),
    ("s3cret", lambda raw, h: (raw, {**h, "x-pefthub-signature-256": ""}), AuthenticationError),
    ("s3cret", lambda raw, h: (raw, {**h, "x-pefthub-event": "delete"}), InvalidInputError),
])
def test_bad_deliveries_are_refused(secret, mutate, error):
    raw, headers = mutate(*_delivery(BODY))
    with pytest.raises(error):
        parse_delivery(secret, raw, headers)


@pytest.mark.parametrize("body", [
    [1, 2], {**BODY, "repo": "../../etc"}, {**BODY, "event": "rename"}, {**BODY, "tag": 5}, {**BODY, "tag": "x" * 65},
])
def test_signed_but_malformed_deliveries_are_refused(body):
    raw = json.dumps(body).encode()
    headers = {"x-pefthub-signature-256": signature("s3cret", raw)}
    with pytest.raises(InvalidInputError):
        parse_delivery("s3cret", raw, headers)


def test_oversized_delivery_is_refused():
    raw = b" " * (64 * 1024 + 1)
    with pytest.raises(InvalidInputError, match="above"):
        parse_delivery("s3cret", raw, {"x-pefthub-signature-256": signature("s3cret", raw)})


def _served(name: str, ref_name: str, repo: str = "acme/support") -> Served:
    return Served(name, repo, ref_name, "a" * 40, None)  # type: ignore[arg-type]


def test_stale_names_follow_the_moved_tag_only():
    served = [_served("acme/support@prod", "prod"), _served("acme/support", "main"),
              _served("acme/support@" + "a" * 40, "a" * 40), _served("acme/other@prod", "prod", "acme/other")]
    assert stale_names(Event("", "tag", "acme/support", "prod"), served) == (["acme/support@prod"], [])
    assert stale_names(Event("", "tag", "acme/support", "main"), served) == (["acme/support"], [])
    assert stale_names(Event("", "delete", "acme/support", None), served)[1] == [s.name for s in served[:3]]


def test_seen_deliveries_are_bounded():
    seen = SeenDeliveries(size=2)
    for d in ("a", "b", "c"):
        seen.add(d)
    assert "a" not in seen and "b" in seen and "c" in seen and "" not in seen


def test_plugin_logic_imports_only_the_client():
    code = (
        "import sys, peft_hub.serving.resolve, peft_hub.serving.receiver\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fastapi', 'sqlmodel', 'sqlalchemy',"
        " 'transformers', 'vllm', 'boto3', 'uvicorn', 'safetensors')"
        " or (m.startswith('peft_hub.') and m.split('.')[1] in ('hub', 'compose', 'gpu_runtime', 'contract')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
