"""compose_dirs / interpolate_dirs on real PEFT adapters, checked against PEFT and dense SVD."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from test_compose_support import (
    adapter,
    assert_deltas_close,
    base,
    best_rank,
    composed_logits,
    logits,
    merged_reference,
    peft_deltas,
    rel_err,
    weighted_sum,
)

from peft_hub.compose import compose_dirs, interpolate_dirs

VARIANTS = {
    "plain": {},
    "rslora": {"use_rslora": True},
    "rank_pattern": {"rank_pattern": {"q_proj": 2, "layers.1.mlp.down_proj": 6}},
    "alpha_pattern": {"alpha_pattern": {"v_proj": 32, "layers.0.self_attn.o_proj": 3}},
    "subset": {"target_modules": ["q_proj", "v_proj"]},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stack_is_the_exact_weighted_sum(tmp_path, variant):
    """ΔW of the output equals Σ wᵢ·ΔWᵢ as PEFT computes each parent's ΔW, module by module."""
    parents = [adapter(r=4, alpha=8, seed=11), adapter(r=8, alpha=4, seed=12, **VARIANTS[variant])]
    weights = [0.7, -0.3]
    report = compose_dirs(parents, weights, tmp_path / "out")
    assert report.method == "stack" and report.energy_kept == 1.0
    assert_deltas_close(peft_deltas(base(), tmp_path / "out"), weighted_sum(base(), parents, weights))
    assert max(report.module_ranks.values()) == report.rank


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_outputs_equal_the_independently_merged_model(tmp_path, kind):
    """The composed adapter, loaded by PEFT, gives the logits of W + Σ wᵢ·ΔWᵢ (each parent merged alone)."""
    parents = [adapter(kind, r=4, seed=21), adapter(kind, r=2, alpha=16, seed=22, use_rslora=True),
               adapter(kind, r=4, seed=23, rank_pattern={"c_attn" if kind == "gpt2" else "k_proj": 3})]
    weights = [0.5, 1.5, -0.8]
    compose_dirs(parents, weights, tmp_path / "out")
    want = logits(merged_reference(base(kind), parents, weights))
    assert not torch.allclose(logits(base(kind)), want, atol=1e-3)
    assert torch.allclose(composed_logits(base(kind), tmp_path / "out"), want, atol=1e-4)


def test_matches_peft_cat_where_peft_is_exact(tmp_path):
    from peft import PeftModel

    parents = [adapter(r=4, seed=31), adapter(r=6, alpha=3, seed=32)]
    weights = [0.6, 0.9]
    model = PeftModel.from_pretrained(copy.deepcopy(base()), parents[0], adapter_name="a")
    model.load_adapter(parents[1], adapter_name="b")
    model.add_weighted_adapter(["a", "b"], weights, "cat", combination_type="cat")
    model.save_pretrained(tmp_path / "peft", selected_adapters=["cat"])
    compose_dirs(parents, weights, tmp_path / "ours")
    assert_deltas_close(peft_deltas(base(), tmp_path / "ours"), peft_deltas(base(), tmp_path / "peft" / "cat"))


def test_exact_where_peft_linear_is_approximate(tmp_path):
    """PEFT's ``linear`` mixes A's and B's separately, adding cross terms; stack does not."""
    from peft import PeftModel

    parents = [adapter(r=4, seed=41), adapter(r=4, seed=42)]
    weights = [0.5, 0.5]
    model = PeftModel.from_pretrained(copy.deepcopy(base()), parents[0], adapter_name="a")
    model.load_adapter(parents[1], adapter_name="b")
    model.add_weighted_adapter(["a", "b"], weights, "lin", combination_type="linear")
    model.save_pretrained(tmp_path / "peft", selected_adapters=["lin"])
    compose_dirs(parents, weights, tmp_path / "ours")
    exact = weighted_sum(base(), parents, weights)
    theirs, ours = peft_deltas(base(), tmp_path / "peft" / "lin"), peft_deltas(base(), tmp_path / "ours")
    worst_theirs = max(rel_err(theirs[n], exact[n]) for n in exact)
    worst_ours = max(rel_err(ours[n], exact[n]) for n in exact)
    assert worst_theirs > 0.1
    assert worst_ours < 1e-5


def test_svd_equals_dense_best_rank(tmp_path):
    parents = [adapter(r=4, seed=51), adapter(r=8, seed=52, use_rslora=True), adapter(r=4, seed=53)]
    weights = [1.0, 0.5, -0.25]
    report = compose_dirs(parents, weights, tmp_path / "out", method="svd", rank=5)
    exact = weighted_sum(base(), parents, weights)
    got = peft_deltas(base(), tmp_path / "out")
    assert report.rank == 5 and sorted(got) == sorted(exact)
    kept = total = 0.0
    for name, delta in exact.items():
        assert rel_err(got[name], best_rank(delta, 5)) < 1e-5, name
        s = torch.linalg.svdvals(delta)
        assert report.module_energy[name] == pytest.approx(float(s[:5].square().sum() / s.square().sum()), rel=1e-6)
        kept, total = kept + float(s[:5].square().sum()), total + float(s.square().sum())
    assert report.energy_kept == pytest.approx(kept / total, rel=1e-6)
    assert report.energy_kept < 1.0


def test_svd_matches_peft_svd(tmp_path):
    from peft import PeftModel

    parents = [adapter(r=4, seed=61), adapter(r=4, seed=62)]
    model = PeftModel.from_pretrained(copy.deepcopy(base()), parents[0], adapter_name="a")
    model.load_adapter(parents[1], adapter_name="b")
    model.add_weighted_adapter(["a", "b"], [0.8, 0.4], "svd", combination_type="svd", svd_rank=4)
    model.save_pretrained(tmp_path / "peft", selected_adapters=["svd"])
    compose_dirs(parents, [0.8, 0.4], tmp_path / "ours", method="svd", rank=4)
    assert_deltas_close(peft_deltas(base(), tmp_path / "ours"), peft_deltas(base(), tmp_path / "peft" / "svd"), 1e-4)


def test_default_svd_rank_is_the_largest_input_rank(tmp_path):
    report = compose_dirs([adapter(r=4, seed=71), adapter(r=6, seed=72)], None, tmp_path / "out", method="svd")
    assert report.rank == 6
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["r"] == 6 and config["lora_alpha"] == 6 and config["use_rslora"] is False


def test_rank_given_without_method_truncates(tmp_path):
    report = compose_dirs([adapter(r=4, seed=71), adapter(r=6, seed=72)], None, tmp_path / "out", rank=3)
    assert report.method == "svd" and report.rank == 3 and report.energy_kept < 1.0


def test_one_adapter_with_weight_one_is_unchanged(tmp_path):
    parent = adapter(r=4, seed=81, use_rslora=True, alpha_pattern={"q_proj": 5})
    compose_dirs([parent], [1.0], tmp_path / "out")
    assert_deltas_close(peft_deltas(base(), tmp_path / "out"), peft_deltas(base(), parent), 1e-6)


def test_interpolate_endpoints_and_midpoint(tmp_path):
    a, b = adapter(r=4, seed=91), adapter(r=8, seed=92, target_modules=["q_proj", "o_proj"])
    interpolate_dirs(a, b, 0.0, tmp_path / "t0")
    interpolate_dirs(a, b, 1.0, tmp_path / "t1")
    report = interpolate_dirs(a, b, 0.3, tmp_path / "t03")
    assert_deltas_close(peft_deltas(base(), tmp_path / "t0"), peft_deltas(base(), a), 1e-6)
    assert_deltas_close(peft_deltas(base(), tmp_path / "t1"), peft_deltas(base(), b), 1e-6)
    assert_deltas_close(peft_deltas(base(), tmp_path / "t03"), weighted_sum(base(), [a, b], [0.7, 0.3]))
    assert report.lineage["method"] == "interpolate" and report.lineage["params"]["t"] == 0.3
    assert [p["weight"] for p in report.lineage["parents"]] == [0.7, 0.3]


def test_interpolate_with_rank_truncates_exactly(tmp_path):
    a, b = adapter(r=4, seed=93), adapter(r=4, seed=94)
    report = interpolate_dirs(a, b, 0.5, tmp_path / "out", rank=4)
    exact = weighted_sum(base(), [a, b], [0.5, 0.5])
    got = peft_deltas(base(), tmp_path / "out")
    assert report.method == "svd" and report.energy_kept < 1.0
    assert all(rel_err(got[n], best_rank(exact[n], 4)) < 1e-5 for n in exact)


def _with_saved_embedding(src, dst):
    """``src`` as PEFT saves it with ``save_embedding_layers=True``: a full copy of the embedding beside the factors."""
    from peft import PeftModel

    PeftModel.from_pretrained(copy.deepcopy(base()), src).save_pretrained(dst, save_embedding_layers=True)
    return dst


def test_embedding_lora(tmp_path):
    parents = [
        _with_saved_embedding(adapter(r=4, seed=101, target_modules=["embed_tokens", "q_proj"]), tmp_path / "p1"),
        _with_saved_embedding(adapter(r=2, seed=102, target_modules=["embed_tokens"]), tmp_path / "p2"),
    ]
    weights = [1.0, -2.0]
    compose_dirs(parents, weights, tmp_path / "stack")
    assert_deltas_close(peft_deltas(base(), tmp_path / "stack"), weighted_sum(base(), parents, weights))
    want = logits(merged_reference(base(), parents, weights))
    assert torch.allclose(composed_logits(base(), tmp_path / "stack"), want, atol=1e-4)
    with safe_open(str(tmp_path / "stack" / "adapter_model.safetensors"), framework="pt") as fh:
        a = fh.get_tensor("base_model.model.model.embed_tokens.lora_embedding_A")
        assert a.shape == (6, 128)
        assert "base_model.model.model.embed_tokens.base_layer.weight" in fh.keys()
    compose_dirs(parents, weights, tmp_path / "svd", method="svd", rank=3)
    exact = weighted_sum(base(), parents, weights)["model.embed_tokens"]
    got = peft_deltas(base(), tmp_path / "svd")["model.embed_tokens"]
    assert rel_err(got, best_rank(exact, 3)) < 1e-5


def test_gpt2_fan_in_fan_out_svd(tmp_path):
    parents = [adapter("gpt2", r=4, seed=111), adapter("gpt2", r=4, seed=112)]
    compose_dirs(parents, [1.0, 1.0], tmp_path / "out", method="svd", rank=4)
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True
    exact = weighted_sum(base("gpt2"), parents, [1.0, 1.0])
    got = peft_deltas(base("gpt2"), tmp_path / "out")
    assert all(rel_err(got[n], best_rank(exact[n], 4)) < 1e-5 for n in exact)
    assert "transformer.h.0.attn.c_attn" in got
