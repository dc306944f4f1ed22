"""An adapter pushed against a base model in the hub must fit it: its LoRA
shapes are checked against the base's safetensors headers, a misfit is
refused naming the module and both shapes and leaves nothing stored, and a
base the hub does not hold is not checked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hub_state import snapshot

from peft_hub.client import HubClient
from peft_hub.errors import InvalidAdapterError
from peft_hub.hub.base_compat import candidates, check_shapes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = "admin/llama-tiny"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny Llama (hidden 32, vocab 128, 2 layers) in several shards with an index."""
    from tiny_models import tiny_llama

    path = tmp_path_factory.mktemp("models") / "llama-tiny"
    tiny_llama().save_pretrained(path, max_shard_size="20KB")
    assert (path / "model.safetensors.index.json").is_file()
    return path


def _lora(path: Path, *, base_name: str = BASE, **model_kw) -> Path:
    from tiny_models import make_lora, tiny_llama

    return make_lora(tiny_llama(**model_kw), path, r=4, base_name=base_name,
                     target_modules=["q_proj", "v_proj", "embed_tokens"])


def _rename(adapter: Path, old: str, new: str) -> Path:
    """Move every tensor of module ``old`` onto ``new`` (a LoRA saved for the wrong module)."""
    from safetensors.torch import load_file, save_file

    weights = adapter / "adapter_model.safetensors"
    tensors = {k.replace(old, new): v for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    return adapter


def _set_config(adapter: Path, **fields) -> Path:
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return adapter


SHA12 = "[0-9a-f]{12}"
MISFITS = {
    "wrong hidden size": (
        lambda p: _lora(p, hidden=64),
        re.escape("module model.embed_tokens: the adapter's embedding LoRA needs a base weight of shape (128, 64), "
                  f"but base {BASE}@") + SHA12 + re.escape(" has model.embed_tokens.weight of shape (128, 32)"),
    ),
    "wrong module": (
        lambda p: _rename(_lora(p), ".layers.0.self_attn.q_proj.", ".layers.0.self_attn.k_proj."),
        re.escape("module model.layers.0.self_attn.k_proj: the adapter's LoRA needs a base weight of shape (32, 32), "
                  f"but base {BASE}@") + SHA12
        + re.escape(" has model.layers.0.self_attn.k_proj.weight of shape (16, 32)"),
    ),
    "missing module": (
        lambda p: _lora(p, layers=3),
        re.escape("the adapter changes module model.layers.2.self_attn.q_proj, which base "
                  f"{BASE}@") + SHA12 + re.escape(" does not have (was it trained on a different base model?)"),
    ),
    "wrong vocabulary": (
        lambda p: _lora(p, vocab_size=256),
        re.escape("module model.embed_tokens: the adapter's embedding LoRA needs a base weight of shape (256, 32), "
                  f"but base {BASE}@") + SHA12 + re.escape(" has model.embed_tokens.weight of shape (128, 32)"),
    ),
}


def test_adapters_are_checked_against_a_base_in_the_hub(hub, base_dir, tmp_path):
    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache") as client:
        base = client.push(base_dir, name=BASE, kind="model")
        fits = client.push(_lora(tmp_path / "fits"), name="admin/support")
        assert fits.created
        # At an explicit revision of the base, too.
        pinned = _set_config(_lora(tmp_path / "pinned", hidden=64), revision=base.revision)
        for case in sorted(MISFITS):
            make, message = MISFITS[case]
            adapter = make(tmp_path / case.replace(" ", "-"))
            before = snapshot(hub)
            with pytest.raises(InvalidAdapterError, match=message):
                client.push(adapter, name="admin/misfit")
            assert snapshot(hub) == before, case
        with pytest.raises(InvalidAdapterError, match=f"but base {BASE}@{base.revision[:12]} has"):
            client.push(pinned, name="admin/misfit")
        # A base the hub does not hold is not checked: an HF id, a local path, an adapter repo.
        for i, name in enumerate(["meta-llama/Llama-3.2-1B", "/tmp/llama", "admin/support"]):
            assert client.push(_lora(tmp_path / f"free{i}", base_name=name, hidden=64), name=f"admin/free{i}").created


def test_an_unknown_base_revision_is_not_checked(embedded_hub, base_dir, tmp_path):
    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "cache") as client:
        client.push(base_dir, name=BASE, kind="model")
        adapter = _set_config(_lora(tmp_path / "elsewhere", hidden=64), revision="f" * 40)
        assert client.push(adapter, name="admin/elsewhere").created


def test_check_shapes_fan_in_fan_out_and_prefixes():
    base = {"transformer.h.0.attn.c_attn.weight": (32, 96), "model.embed_tokens.weight": (128, 32)}
    gpt2 = {"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight": (4, 32),
            "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight": (96, 4)}
    check_shapes(gpt2, base, base="b", fan_in_fan_out=True)
    with pytest.raises(InvalidAdapterError, match=re.escape("needs a base weight of shape (96, 32)")):
        check_shapes(gpt2, base, base="b")
    # A checkpoint saved from the bare backbone drops the first component.
    assert "h.0.attn.c_attn.weight" in candidates("transformer.h.0.attn.c_attn")
    check_shapes({"base_model.model.embed_tokens.lora_embedding_A": (4, 128),
                  "base_model.model.embed_tokens.lora_embedding_B": (32, 4)}, base, base="b")


def test_materialize_from_a_hub_base_matches_the_local_base(embedded_hub, base_dir, tmp_path):
    from peft_hub.gpu_runtime.materializer import materialize

    adapter = _lora(tmp_path / "support")
    local = materialize(base_dir, str(adapter), tmp_path / "from-local", device="cpu")
    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "cache") as client:
        pushed = client.push(base_dir, name=BASE, kind="model")
        remote = materialize(BASE, str(adapter), tmp_path / "from-hub", device="cpu", client=client)
    weights = sorted(p.name for p in (tmp_path / "from-local").glob("*.safetensors"))
    assert weights and weights == sorted(p.name for p in (tmp_path / "from-hub").glob("*.safetensors"))
    for name in weights:
        assert (tmp_path / "from-local" / name).read_bytes() == (tmp_path / "from-hub" / name).read_bytes(), name
    assert local.merged == remote.merged > 0
    assert remote.base == f"{BASE}@{pushed.revision}"
