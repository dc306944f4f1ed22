"""Independent references for the compose tests, and checks that they are right.

The references use PEFT itself (``get_delta_weight``, ``merge_and_unload``)
and dense ``torch.linalg.svd``, never peft_hub.compose, so a bug in compose
cannot hide in its own reference.
"""

from __future__ import annotations

import copy
import functools
import json
import tempfile
from pathlib import Path

import tiny_models
import torch
from safetensors import safe_open


@functools.cache
def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="compose-tests-"))


@functools.cache
def base(kind: str = "llama", hidden: int = 32):
    """A tiny base model, built once per process."""
    return tiny_models.tiny_gpt2() if kind == "gpt2" else tiny_models.tiny_llama(hidden=hidden)


@functools.cache
def _adapter(kind: str, hidden: int, key: str) -> Path:
    kwargs = json.loads(key)
    path = workdir() / f"{kind}-{hidden}-{abs(hash(key))}"
    base_name = kwargs.pop("base_name", f"tiny-{kind}")
    return tiny_models.make_lora(base(kind, hidden), path, base_name=base_name, **kwargs)


def adapter(kind: str = "llama", *, hidden: int = 32, **kwargs) -> Path:
    """A LoRA adapter directory for ``base(kind)``, built once per distinct set of settings."""
    return _adapter(kind, hidden, json.dumps(kwargs, sort_keys=True))


def peft_deltas(model, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """ΔW per adapted module, in the base weight's layout, as PEFT computes it."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), adapter_dir)
    return {
        name: module.get_delta_weight("default").detach().double()
        for name, module in peft_model.base_model.model.named_modules()
        if isinstance(module, LoraLayer) and "default" in module.scaling
    }


def weighted_sum(model, dirs: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """Σ wᵢ·ΔWᵢ over the union of modules (a module missing from a parent adds nothing)."""
    total: dict[str, torch.Tensor] = {}
    for d, w in zip(dirs, weights, strict=True):
        for name, delta in peft_deltas(model, d).items():
            total[name] = total.get(name, torch.zeros_like(delta)) + w * delta
    return total


def best_rank(delta: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation by dense SVD (Eckart–Young), as a product."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| relative to max |want|."""
    scale = want.abs().max().clamp(min=1e-30)
    return float((got.double() - want.double()).abs().max() / scale)


def assert_deltas_close(got: dict, want: dict, tol: float = 1e-5) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert rel_err(got[name], want[name]) < tol, (name, rel_err(got[name], want[name]))


def merged_reference(model, dirs: list[Path], weights: list[float]):
    """A copy of ``model`` whose weights are W + Σ wᵢ·ΔWᵢ, from each parent merged alone by PEFT."""
    from peft import PeftModel

    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    for d, w in zip(dirs, weights, strict=True):
        merged = PeftModel.from_pretrained(copy.deepcopy(model), d).merge_and_unload()
        for name, p in merged.named_parameters():
            with torch.no_grad():
                params[name] += w * (p - dict(model.named_parameters())[name])
    return ref


def logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


def composed_logits(model, adapter_dir: Path) -> torch.Tensor:
    from peft import PeftModel

    return logits(PeftModel.from_pretrained(copy.deepcopy(model), adapter_dir))


def lineage_of(adapter_dir: Path) -> dict:
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as fh:
        return json.loads(fh.metadata()["peft_hub.lineage"])


# --- the references themselves ---------------------------------------------


def test_peft_deltas_is_scale_times_b_a():
    d = adapter(r=4, alpha=8, seed=3)
    deltas = peft_deltas(base(), d)
    with safe_open(str(d / "adapter_model.safetensors"), framework="pt") as fh:
        a = fh.get_tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").double()
        b = fh.get_tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").double()
    assert rel_err(deltas["model.layers.0.self_attn.q_proj"], 2.0 * b @ a) < 1e-6
    assert len(deltas) == 14


def test_merged_reference_matches_peft_on_one_adapter():
    from peft import PeftModel

    d = adapter(r=4, seed=5)
    peft_out = logits(PeftModel.from_pretrained(copy.deepcopy(base()), d))
    ref_out = logits(merged_reference(base(), [d], [1.0]))
    assert not torch.allclose(logits(base()), ref_out, atol=1e-3)
    assert torch.allclose(peft_out, ref_out, atol=1e-5)


def test_best_rank_is_optimal():
    m = torch.randn(20, 30, dtype=torch.float64)
    approx = best_rank(m, 3)
    assert torch.linalg.matrix_rank(approx) == 3
    other = best_rank(m + 0.1 * torch.randn_like(m), 3)
    assert torch.linalg.norm(m - approx) < torch.linalg.norm(m - other)
