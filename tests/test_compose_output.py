"""What compose writes: lineage, card, config, dtypes; the merge methods; conv and target edge cases."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import tiny_models
import torch
from peft.utils import merge_utils
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_compose_support import (
    adapter,
    assert_deltas_close,
    base,
    best_rank,
    lineage_of,
    peft_deltas,
    rel_err,
    weighted_sum,
)

from peft_hub.adapter import pattern_value, sha256_file, validate_dir
from peft_hub.compose import compose_dirs
from peft_hub.compose.card import vllm_max_lora_rank
from peft_hub.compose.plan import AdapterInput, ModulePlan, output_targets, rank_patterns


def test_lineage_metadata_and_card(tmp_path):
    parents = [adapter(r=8, seed=1), adapter(r=8, seed=2)]
    refs = [{"ref": "acme/support", "revision": "a" * 40}, {"ref": "acme/legal", "revision": None}]
    report = compose_dirs(parents, [0.7, 0.3], tmp_path / "out", parents=refs)
    record = lineage_of(tmp_path / "out")
    assert set(record) == {"method", "params", "parents", "peft_hub_version"}
    assert record == report.lineage and record["method"] == "stack"
    shas = [sha256_file(p / "adapter_model.safetensors") for p in parents]
    assert record["parents"] == [
        {"ref": "acme/support", "revision": "a" * 40, "sha256": shas[0], "weight": 0.7},
        {"ref": "acme/legal", "revision": None, "sha256": shas[1], "weight": 0.3},
    ]
    meta, _ = validate_dir(tmp_path / "out")  # the hub's own checks accept it, and read the lineage back
    assert meta.lineage == record and meta.max_rank == 16 and meta.method == "LORA" and not meta.use_dora
    card = (tmp_path / "out" / "README.md").read_text()
    assert "`--max-lora-rank 16`" in card and "acme/support" in card and '"peft_hub.lineage"' not in card
    assert json.dumps(record, indent=2) in card
    assert report.vllm_max_lora_rank == 16


def test_card_warns_above_vllm_default(tmp_path):
    compose_dirs([adapter(r=8, seed=1), adapter(r=16, seed=2)], None, tmp_path / "out")
    assert "`--max-lora-rank 32` (above vLLM's default of 16)" in (tmp_path / "out" / "README.md").read_text()


def test_vllm_rank_table():
    ranks = (1, 2, 8, 9, 64, 300, 321, 512, 513)
    assert [vllm_max_lora_rank(r) for r in ranks] == [1, 8, 8, 16, 64, 320, 512, 512, None]


def test_config_is_plain_lora_with_unit_scale(tmp_path):
    parents = [adapter(r=4, seed=1, use_rslora=True), adapter(r=8, seed=2, target_modules=["q_proj"])]
    compose_dirs(parents, None, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 4 and config["use_rslora"] is False
    assert config["rank_pattern"] == config["alpha_pattern"] == {
        "model.layers.0.self_attn.q_proj": 12, "model.layers.1.self_attn.q_proj": 12}
    assert config["modules_to_save"] is None and config["use_dora"] is False
    assert sorted(config["target_modules"]) == sorted(tiny_models.LLAMA_TARGETS)


def _retyped(tmp_path, parent, dtype):
    out = tmp_path / f"{parent.name}-{dtype}"
    shutil.copytree(parent, out)
    tensors = {k: v.to(dtype) for k, v in load_file(parent / "adapter_model.safetensors").items()}
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    return out


def test_dtypes(tmp_path):
    halves = [_retyped(tmp_path, adapter(r=4, seed=s), torch.float16) for s in (1, 2)]
    mixed = [halves[0], _retyped(tmp_path, adapter(r=4, seed=3), torch.bfloat16)]
    cases = {"fp16": (halves, None), "bf16": (halves, "bf16"), "mixed": (mixed, None)}
    want = {"fp16": "F16", "bf16": "BF16", "mixed": "F32"}
    for name, (dirs, dtype) in cases.items():
        report = compose_dirs(dirs, [1.0, -1.0], tmp_path / name, dtype=dtype)
        with safe_open(str(tmp_path / name / "adapter_model.safetensors"), framework="pt") as fh:
            codes = {fh.get_slice(k).get_dtype() for k in fh.keys()}
        assert codes == {want[name]}, name
        assert report.dtype == {"F16": "fp16", "BF16": "bf16", "F32": "fp32"}[want[name]]
    exact = weighted_sum(base(), halves, [1.0, -1.0])
    assert_deltas_close(peft_deltas(base(), tmp_path / "fp16"), exact, 2e-3)


def _dense_reference(method, parents, weights, density, rank, **kw):
    deltas = [peft_deltas(base(), p) for p in parents]
    out = {}
    for name in deltas[0]:
        tasks = [d[name].float() for d in deltas]
        merged = getattr(merge_utils, method)(tasks, torch.tensor(weights), density, **kw)
        out[name] = best_rank(merged, rank)
    return out


@pytest.mark.parametrize(("method", "kw"), [("ties", {"majority_sign_method": "total"}),
                                            ("ties", {"majority_sign_method": "frequency"}),
                                            ("magnitude_prune", {})])
def test_dense_methods_match_peft_then_truncate(tmp_path, method, kw):
    parents = [adapter(r=4, seed=1), adapter(r=4, seed=2), adapter(r=4, seed=3)]
    weights = [0.5, 0.5, 0.5] if method == "ties" else [0.9, -0.4, 0.6]
    sign = kw.get("majority_sign_method", "total")
    report = compose_dirs(parents, weights, tmp_path / "out", method=method, density=0.4, rank=32, majority_sign=sign)
    assert report.rank == 32  # min(d, k) of every module: the truncation keeps everything
    want = _dense_reference(method, parents, weights, 0.4, 32, **kw)
    assert_deltas_close(peft_deltas(base(), tmp_path / "out"), want, 1e-5)
    assert report.lineage["params"]["density"] == 0.4
    truncated = compose_dirs(parents, weights, tmp_path / "r4", method=method, density=0.4, rank=4, majority_sign=sign)
    got = peft_deltas(base(), tmp_path / "r4")
    assert truncated.energy_kept < 1.0
    assert all(rel_err(got[n], best_rank(want[n], 4)) < 1e-4 for n in want)


def test_dense_truncation_choice(tmp_path):
    """auto is exact on small modules; randomized runs through the engine and lands on the same adapter."""
    parents = [adapter(r=4, seed=1), adapter(r=4, seed=2), adapter(r=4, seed=3)]
    weights = [0.5, 0.3, 0.2]
    auto = compose_dirs(parents, weights, tmp_path / "auto", method="ties", density=0.4, rank=4)
    assert auto.truncation == {"exact": len(auto.module_ranks)}
    assert auto.lineage["params"]["svd"] == "auto"
    rand = compose_dirs(parents, weights, tmp_path / "rand", method="ties", density=0.4, rank=4, svd="randomized")
    assert rand.truncation == {"randomized": len(rand.module_ranks)}
    assert rand.lineage["params"]["svd"] == "randomized"
    assert_deltas_close(peft_deltas(base(), tmp_path / "rand"), peft_deltas(base(), tmp_path / "auto"), 1e-4)
    assert rand.energy_kept == pytest.approx(auto.energy_kept, rel=1e-3)


def test_dare_seeds(tmp_path):
    parents = [adapter(r=4, seed=1), adapter(r=4, seed=2)]
    for name, method, density, seed in [("a", "dare_linear", 0.5, 0), ("b", "dare_linear", 0.5, 0),
                                        ("c", "dare_linear", 0.5, 1), ("full", "dare_linear", 1.0, 0),
                                        ("ties", "dare_ties", 0.5, 0)]:
        compose_dirs(parents, [0.6, 0.4], tmp_path / name, method=method, density=density, rank=32, seed=seed)
    a, b, c = (load_file(tmp_path / n / "adapter_model.safetensors") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert_deltas_close(peft_deltas(base(), tmp_path / "full"), weighted_sum(base(), parents, [0.6, 0.4]), 1e-5)
    assert lineage_of(tmp_path / "ties")["params"]["majority_sign"] == "total"


def test_targets_as_regex_and_narrowed_layers(tmp_path):
    regex = adapter(r=4, seed=1, target_modules=r".*\.(q_proj|v_proj)")
    listed = adapter(r=2, seed=2, target_modules=["k_proj"])
    narrowed = adapter(r=2, seed=3, target_modules=["o_proj"], layers_to_transform=[1])
    compose_dirs([regex, listed], None, tmp_path / "rx")
    config = json.loads((tmp_path / "rx" / "adapter_config.json").read_text())
    assert isinstance(config["target_modules"], str)
    assert_deltas_close(peft_deltas(base(), tmp_path / "rx"), weighted_sum(base(), [regex, listed], [1.0, 1.0]))
    compose_dirs([listed, narrowed], None, tmp_path / "nar")
    config = json.loads((tmp_path / "nar" / "adapter_config.json").read_text())
    assert "model.layers.1.self_attn.o_proj" in config["target_modules"]
    assert_deltas_close(peft_deltas(base(), tmp_path / "nar"), weighted_sum(base(), [listed, narrowed], [1.0, 1.0]))


def test_rank_pattern_falls_back_when_a_key_is_ambiguous():
    modules = [ModulePlan("a.q", "p.a.q", False, (4, 8), (8, 4)), ModulePlan("x.a.q", "p.x.a.q", False, (8, 8), (8, 8))]
    ranks = {"a.q": 4, "x.a.q": 8}
    pattern = rank_patterns(modules, ranks, 8)
    assert len(pattern) == 2
    assert all(pattern_value(pattern, m.name, 8) == ranks[m.name] for m in modules)
    assert rank_patterns(modules, {"a.q": 8, "x.a.q": 4}, 8) == {"x.a.q": 4}


def test_conv2d_lora(tmp_path):
    from peft import LoraConfig, get_peft_model

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.lin = torch.nn.Linear(8, 5)

        def forward(self, x):
            return self.lin(self.conv(x).mean((2, 3)))

    torch.manual_seed(0)
    net = Net()
    dirs = []
    for seed, r in ((1, 2), (2, 3)):
        torch.manual_seed(seed)
        config = LoraConfig(r=r, lora_alpha=4, target_modules=["conv", "lin"], init_lora_weights=False)
        model = get_peft_model(copy.deepcopy(net), config)
        model.save_pretrained(tmp_path / f"c{seed}")
        dirs.append(tmp_path / f"c{seed}")
    compose_dirs(dirs, [1.0, 0.5], tmp_path / "stack")
    assert_deltas_close(peft_deltas(net, tmp_path / "stack"), weighted_sum(net, dirs, [1.0, 0.5]))
    compose_dirs(dirs, [1.0, 0.5], tmp_path / "svd", method="svd", rank=2)
    exact = weighted_sum(net, dirs, [1.0, 0.5])["conv"]
    got = peft_deltas(net, tmp_path / "svd")["conv"]
    assert got.shape == (8, 3, 3, 3)
    assert rel_err(got.flatten(1), best_rank(exact.flatten(1), 2)) < 1e-5


def test_all_linear_targets_become_module_names():
    modules = [ModulePlan("model.layers.0.mlp.up_proj", "base_model.model.model.layers.0.mlp.up_proj", False,
                          (4, 8), (8, 4))]
    inputs = [AdapterInput(Path("a"), {"target_modules": "all-linear"}, None, ""),  # type: ignore[arg-type]  # no reader
              AdapterInput(Path("b"), {"target_modules": ["up_proj"]}, None, "")]  # type: ignore[arg-type]  # no reader
    assert output_targets(inputs, modules) == ["model.layers.0.mlp.up_proj"]
    assert output_targets(inputs[1:], modules) == ["up_proj"]
