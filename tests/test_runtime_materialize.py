"""Streaming materialize against PEFT's own merge_and_unload.

Tolerance: in fp32 we compute ``W + s·(B@A)`` as PEFT does, but fused
(``addmm_``), so merged weights agree to 1e-6 absolute (observed: at most
1.2e-7); with a bf16 base they may differ by one bf16 rounding step, since
PEFT rounds the delta to bf16 before adding and we round once at the end.
"""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_runtime_helpers import FakeHub, cuda
from tiny_models import make_lora, tiny_gpt2, tiny_llama

from peft_hub.errors import (
    IncompatibleAdaptersError,
    InvalidInputError,
    UnsupportedAdapterError,
)
from peft_hub.gpu_runtime.materializer import INFO_NAME, materialize

ATOL_FP32 = 1e-6

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _peft_merged(base, adapter_dir: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel

    return PeftModel.from_pretrained(copy.deepcopy(base), adapter_dir).merge_and_unload().state_dict()


def _load_dir(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def _assert_close_to(ours: dict, ref: dict, atol: float = ATOL_FP32) -> None:
    assert set(ours) == set(ref)
    for key, value in ref.items():
        torch.testing.assert_close(ours[key], value, atol=atol, rtol=0, msg=key)


ARCHS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
VARIANTS = {
    "plain": {},
    "dora": {"use_dora": True},
    "patterns+rslora": {"use_rslora": True},
}
PATTERNS = {"llama": ({"q_proj": 2}, {"v_proj": 3}), "gpt2": ({"c_attn": 2}, {"c_fc": 3})}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_matches_peft_merge_and_unload(arch, variant, tmp_path):
    base = ARCHS[arch]()
    base.save_pretrained(tmp_path / "base")
    kwargs = dict(VARIANTS[variant])
    if variant == "patterns+rslora":
        kwargs["rank_pattern"], kwargs["alpha_pattern"] = PATTERNS[arch]
    make_lora(base, tmp_path / "lora", **kwargs)
    report = materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "out", device="cpu")
    ours, ref = _load_dir(tmp_path / "out"), _peft_merged(base, tmp_path / "lora")
    _assert_close_to(ours, ref)
    changed = {k for k in ref if not torch.equal(ref[k], base.state_dict()[k])}
    assert report.merged == len(changed) > 0  # every merged tensor really moved


def test_embedding_dora_bias_and_modules_to_save_match_peft(tmp_path):
    llama, gpt2 = tiny_llama(), tiny_gpt2()
    llama.save_pretrained(tmp_path / "llama")
    gpt2.save_pretrained(tmp_path / "gpt2")
    make_lora(llama, tmp_path / "emb", use_dora=True, target_modules=["embed_tokens", "q_proj"],
              modules_to_save=["lm_head"])
    make_lora(gpt2, tmp_path / "bias", target_modules=["c_attn", "c_proj"], lora_bias=True)
    materialize(tmp_path / "llama", str(tmp_path / "emb"), tmp_path / "out1", device="cpu")
    materialize(tmp_path / "gpt2", str(tmp_path / "bias"), tmp_path / "out2", device="cpu")
    _assert_close_to(_load_dir(tmp_path / "out1"), _peft_merged(llama, tmp_path / "emb"))
    _assert_close_to(_load_dir(tmp_path / "out2"), _peft_merged(gpt2, tmp_path / "bias"))


def test_sharded_base_keeps_its_sharding_and_untouched_tensors_are_byte_identical(tmp_path):
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base", max_shard_size="20KB")
    make_lora(base, tmp_path / "lora", target_modules=["q_proj", "down_proj"])
    materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "out", device="cpu")

    index = json.loads((tmp_path / "base" / "model.safetensors.index.json").read_text())
    out_index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    assert out_index["weight_map"] == index["weight_map"]
    shards = sorted(set(index["weight_map"].values()))
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == shards
    assert out_index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for s in shards for t in load_file(tmp_path / "out" / s).values()
    )

    untouched = [k for k in index["weight_map"] if "q_proj" not in k and "down_proj" not in k]
    assert untouched
    for key in untouched:
        shard = index["weight_map"][key]
        assert _raw_bytes(tmp_path / "base" / shard, key) == _raw_bytes(tmp_path / "out" / shard, key), key
    _assert_close_to(_load_dir(tmp_path / "out"), _peft_merged(base, tmp_path / "lora"))


def _raw_bytes(path: Path, key: str) -> bytes:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    start, end = json.loads(data[8:8 + n])[key]["data_offsets"]
    return data[8 + n + start:8 + n + end]


def test_bf16_base_and_dtype_conversion(tmp_path):
    base = tiny_llama().to(torch.bfloat16)
    base.save_pretrained(tmp_path / "base")
    make_lora(base, tmp_path / "lora")
    materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "bf16", device="cpu")
    materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "fp32", device="cpu", dtype="fp32")
    ref = _peft_merged(base, tmp_path / "lora")
    ours = load_file(tmp_path / "bf16" / "model.safetensors")
    for key, value in ref.items():
        assert ours[key].dtype == torch.bfloat16
        # one bf16 rounding step of the merged value at most
        torch.testing.assert_close(ours[key].float(), value.float(), atol=0, rtol=2**-7, msg=key)
    as_fp32 = load_file(tmp_path / "fp32" / "model.safetensors")
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["dtype"] == "float32"
    assert as_fp32["model.norm.weight"].dtype == torch.float32
    assert torch.equal(as_fp32["model.norm.weight"], base.state_dict()["model.norm.weight"].float())


def test_checkpoint_without_the_model_prefix_is_matched(tmp_path):
    """Checkpoints saved from the bare backbone name tensors ``layers.0...``."""
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    make_lora(base, tmp_path / "lora", target_modules=["q_proj"])
    tensors = load_file(tmp_path / "base" / "model.safetensors")
    renamed = {k.removeprefix("model."): v for k, v in tensors.items()}
    save_file(renamed, tmp_path / "base" / "model.safetensors", metadata={"format": "pt"})
    report = materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "out", device="cpu")
    out = load_file(tmp_path / "out" / "model.safetensors")
    ref = _peft_merged(base, tmp_path / "lora")
    assert report.merged == 2 and set(out) == set(renamed)
    torch.testing.assert_close(out["layers.0.self_attn.q_proj.weight"], ref["model.layers.0.self_attn.q_proj.weight"],
                               atol=ATOL_FP32, rtol=0)


def test_side_files_config_and_provenance(tmp_path):
    from peft_hub.gpu_runtime.tokenizer import save_char_tokenizer

    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    save_char_tokenizer(tmp_path / "base")
    (tmp_path / "base" / "pytorch_model.bin").write_bytes(b"not copied")
    make_lora(base, tmp_path / "lora")
    report = materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "out", device="cpu")
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json", INFO_NAME} <= names
    assert "pytorch_model.bin" not in names and not (tmp_path / "out.incomplete").exists()
    info = json.loads((tmp_path / "out" / INFO_NAME).read_text())
    assert info["adapters"][0]["path"] == str(tmp_path / "lora") and info["merged"] == report.merged == 14
    assert info["quantization"] == "none" and info["dtype"] == "fp32"


def test_composed_adapters_equal_the_sum_of_both_merges(tmp_path):
    from peft import PeftModel

    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    make_lora(base, tmp_path / "a", seed=1)
    make_lora(base, tmp_path / "b", seed=2, target_modules=["q_proj", "up_proj"], r=2)
    report = materialize(tmp_path / "base", f"{tmp_path / 'a'}+{tmp_path / 'b'}", tmp_path / "out",
                         weights="1,0.5", device="cpu")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "a", adapter_name="a")
    peft_model.load_adapter(tmp_path / "b", adapter_name="b")
    for module in peft_model.modules():
        if isinstance(getattr(module, "scaling", None), dict) and "b" in module.scaling:
            module.scaling["b"] *= 0.5
    ref = peft_model.merge_and_unload(adapter_names=["a", "b"]).state_dict()
    _assert_close_to(_load_dir(tmp_path / "out"), ref, atol=1e-5)
    assert [a["path"] for a in report.adapters] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert report.weights == [1.0, 0.5]

    # options reach compose: TIES at density 0.5, truncated to rank 2
    ties = materialize(tmp_path / "base", f"{tmp_path / 'a'}+{tmp_path / 'b'}", tmp_path / "ties", device="cpu",
                       method="ties", density=0.5, rank=2)
    merged = load_file(tmp_path / "ties" / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    delta = merged[key] - base.state_dict()[key]
    assert ties.merged == report.merged and torch.linalg.matrix_rank(delta).item() == 2


def test_single_adapter_weight_scales_the_delta(tmp_path):
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    make_lora(base, tmp_path / "lora")
    materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "full", device="cpu")
    materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "half", device="cpu", weights=[0.5])
    full, half, w = (load_file(tmp_path / n / "model.safetensors") for n in ("full", "half", "base"))
    key = "model.layers.1.mlp.up_proj.weight"
    torch.testing.assert_close(half[key] - w[key], 0.5 * (full[key] - w[key]), atol=1e-6, rtol=0)


def test_hub_refs_are_pulled_through_the_client(tmp_path):
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    make_lora(base, tmp_path / "lora")
    hub = FakeHub(tmp_path / "hub")
    hub.add("team/support", tmp_path / "lora", revision="abc123")
    report = materialize(tmp_path / "base", "team/support@abc123", tmp_path / "out", device="cpu", client=hub)
    assert hub.pulls == ["team/support@abc123"]
    assert report.adapters[0]["repo_id"] == "team/support" and report.adapters[0]["revision"] == "abc123"
    with pytest.raises(InvalidInputError, match="no hub client"):
        materialize(tmp_path / "base", "team/support", tmp_path / "out2", device="cpu")


def test_refusals(tmp_path):
    from peft import IA3Config, get_peft_model

    llama, gpt2 = tiny_llama(), tiny_gpt2()
    llama.save_pretrained(tmp_path / "base")
    make_lora(gpt2, tmp_path / "gpt2_lora")
    with pytest.raises(IncompatibleAdaptersError, match="does not have: transformer.h.0"):
        materialize(tmp_path / "base", str(tmp_path / "gpt2_lora"), tmp_path / "o1", device="cpu")

    ia3 = get_peft_model(copy.deepcopy(llama), IA3Config(target_modules=["k_proj", "down_proj"],
                                                         feedforward_modules=["down_proj"], task_type="CAUSAL_LM"))
    ia3.save_pretrained(tmp_path / "ia3")
    with pytest.raises(UnsupportedAdapterError, match="only LoRA"):
        materialize(tmp_path / "base", str(tmp_path / "ia3"), tmp_path / "o2", device="cpu")

    make_lora(llama, tmp_path / "lora")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    config["layer_replication"] = [[0, 2], [1, 2]]
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedAdapterError, match="layer_replication"):
        materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "o3", device="cpu")
    assert not any(p.name.startswith("o") for p in tmp_path.iterdir())  # nothing left behind


def test_existing_output_needs_force_and_keeps_the_users_files(tmp_path):
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    make_lora(base, tmp_path / "lora")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="already exists"):
        materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "out", device="cpu")
    materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "out", device="cpu", force=True)
    # --force writes the model beside what is there; it never deletes a file it did not write
    assert (tmp_path / "out" / "keep.txt").read_text() == "x" and (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.cuda
@cuda
def test_cuda_merge_matches_cpu(tmp_path):
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    make_lora(base, tmp_path / "lora", use_dora=True)
    materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "cpu", device="cpu")
    report = materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "gpu", device="cuda")
    assert report.device.startswith("cuda")
    cpu, gpu = load_file(tmp_path / "cpu" / "model.safetensors"), load_file(tmp_path / "gpu" / "model.safetensors")
    for key in cpu:
        torch.testing.assert_close(gpu[key], cpu[key], atol=1e-5, rtol=1e-5, msg=key)


def test_safetensors_metadata_says_pt(tmp_path):
    """transformers refuses shards whose metadata lacks format=pt."""
    base = tiny_gpt2()
    base.save_pretrained(tmp_path / "base")
    make_lora(base, tmp_path / "lora")
    materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "out", device="cpu")
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as fh:
        assert fh.metadata()["format"] == "pt"


def _scale_tensors(adapter_dir: Path, part: str, factor: float) -> None:
    path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(path)
    save_file({k: v * factor if part in k else v for k, v in tensors.items()}, path)


@pytest.mark.parametrize("how", ["merged by blocks", "merged whole (DoRA)", "cast"])
def test_a_weight_that_leaves_float16s_range_is_refused_and_nothing_is_written(how, tmp_path):
    base = tiny_llama()
    dtype = None
    if how == "cast":  # an fp32 base with one value past 65504, cast to fp16
        with torch.no_grad():
            base.model.layers[0].mlp.up_proj.weight[0, 0] = 1e5
        dtype = "fp16"
    else:
        base = base.to(torch.float16)
    base.save_pretrained(tmp_path / "base")
    make_lora(base, tmp_path / "lora", target_modules=["q_proj"], use_dora=how.endswith("(DoRA)"))
    if how != "cast":  # finite in the adapter, beyond fp16 once merged (DoRA rescales to its magnitudes)
        _scale_tensors(tmp_path / "lora", "magnitude" if how.endswith("(DoRA)") else "q_proj.lora_B", 1e7)
    with pytest.raises(IncompatibleAdaptersError, match=r"beyond fp16's range \(±65504\)"):
        materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "out", device="cpu", dtype=dtype)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "lora"]  # no output, no staging

    # The same inputs in a wider dtype are merged as ever.
    materialize(tmp_path / "base", str(tmp_path / "lora"), tmp_path / "wide", device="cpu", dtype="fp32")
    merged = load_file(tmp_path / "wide" / "model.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in merged.values())
    assert max(float(t.abs().max()) for t in merged.values()) > 65504
