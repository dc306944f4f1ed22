"""The block kernels of TIES, DARE and magnitude pruning against the implementation they replaced.

``_old_*`` below is the previous code, kept verbatim as the reference: a top-k
over a copy per task, then whole-tensor sign election and disjoint mean. The
new kernels must give the same bits, except where ``topk`` had to choose
among entries tied in magnitude at the threshold (its choice is its
selection algorithm's; ours is the lowest flat index): there the kept count
and every other entry must still be the same.
"""

from __future__ import annotations

import pytest
import torch

from peft_hub.compose import fused, merge_methods


def _old_prune_magnitude(tensor, density):
    if density >= 1:
        return tensor.clone()
    flat = tensor.reshape(-1)
    k = int(density * flat.numel())
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat.abs(), k=k, largest=True, sorted=False).indices] = True
    return (flat * mask).reshape(tensor.shape)


def _old_prune_random(tensor, density, generator):
    if density >= 1:
        return tensor.clone()
    keep = torch.rand(tensor.shape, generator=generator, dtype=torch.float32) < density
    return tensor * keep / density


def _old_elect_sign(tensors, method):
    vote = torch.zeros_like(tensors[0])
    for t in tensors:
        vote += t if method == "total" else t.sign()
    return torch.where(vote >= 0, 1.0, -1.0).to(tensors[0].dtype)


def _old_disjoint_mean(tensors, sign):
    total = torch.zeros_like(tensors[0])
    count = torch.zeros_like(tensors[0])
    for t in tensors:
        agree = t.sign() == sign
        total += t * agree
        count += agree
    return total / count.clamp(min=1.0)


def _old_ties(tensors, density, method):
    trimmed = [_old_prune_magnitude(t, density) for t in tensors]
    return _old_disjoint_mean(trimmed, _old_elect_sign(trimmed, method))


def _old_dare_ties(tensors, density, generator, method):
    dropped = [_old_prune_random(t, density, generator) for t in tensors]
    return _old_disjoint_mean(dropped, _old_elect_sign(dropped, method))


def _old_dare_linear(tensors, density, generator):
    out = torch.zeros_like(tensors[0])
    for t in tensors:
        out += _old_prune_random(t, density, generator)
    return out


def _tasks(kind: str, d: int = 300, k: int = 700, seed: int = 0) -> list[torch.Tensor]:
    """Three weighted task deltas as the engine builds them; ``bf16`` rounds each one to bfloat16 (many ties)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for w in (0.5, -0.3, 0.2):
        t = (torch.randn(d, 8, generator=g) @ torch.randn(8, k, generator=g)).mul_(w)
        out.append(t.bfloat16().float() if kind == "bf16" else t)
    return out


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int32)


@pytest.mark.parametrize("method", ["total", "frequency"])
@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_is_bit_for_bit_the_old_on_random_data(method, density):
    tasks = _tasks("random")
    for t in tasks:
        assert torch.equal(_bits(merge_methods.prune_magnitude(t, density)), _bits(_old_prune_magnitude(t, density)))
    assert torch.equal(_bits(merge_methods.ties(tasks, density, method)), _bits(_old_ties(tasks, density, method)))
    assert torch.equal(merge_methods.magnitude_prune(tasks, density), sum(_old_prune_magnitude(t, density)
                                                                          for t in tasks))


def _tied_positions(t: torch.Tensor, density: float) -> torch.Tensor:
    flat = t.reshape(-1).abs()
    k = int(density * flat.numel())
    value = flat.sort(descending=True).values[k - 1]
    return (flat == value).reshape(t.shape)


@pytest.mark.parametrize("density", [0.2, 0.37])
def test_trim_on_bf16_ties_differs_only_in_which_tied_entries(density):
    tasks = _tasks("bf16")
    for t in tasks:
        new, old = merge_methods.prune_magnitude(t, density), _old_prune_magnitude(t, density)
        tied = _tied_positions(t, density)
        assert torch.equal(_bits(new)[~tied], _bits(old)[~tied])  # zeros keep their sign, too
        assert tied.sum() > 1  # the data really has ties at the threshold
        k = int(density * t.numel())
        assert int((new != 0).sum()) == int((old != 0).sum()) == k
        assert torch.equal(new[~tied], old[~tied])
        kept = tied & (new != 0)  # the lowest flat indices of the tied entries
        assert torch.equal(kept.reshape(-1).nonzero().flatten(),
                           tied.reshape(-1).nonzero().flatten()[: int(kept.sum())])
    # The merge differs from the old only where a task's trim did.
    changed = torch.zeros_like(tasks[0], dtype=torch.bool)
    for t in tasks:
        changed |= merge_methods.prune_magnitude(t, density) != _old_prune_magnitude(t, density)
    new, old = merge_methods.ties(tasks, density, "total"), _old_ties(tasks, density, "total")
    assert torch.equal(_bits(new)[~changed], _bits(old)[~changed])


def test_trim_with_every_entry_tied_keeps_the_first_k():
    t = torch.full((50, 40), -0.25)
    out = merge_methods.prune_magnitude(t, 0.3)
    assert torch.equal(out.reshape(-1)[:600], t.reshape(-1)[:600]) and not out.reshape(-1)[600:].any()


@pytest.mark.parametrize("kind", ["random", "bf16"])
@pytest.mark.parametrize("method", ["total", "frequency"])
def test_dare_is_bit_for_bit_the_old_for_the_same_seed(kind, method):
    tasks = _tasks(kind)
    new = merge_methods.dare_ties(tasks, 0.3, torch.Generator().manual_seed(7), method)
    old = _old_dare_ties(tasks, 0.3, torch.Generator().manual_seed(7), method)
    assert torch.equal(_bits(new), _bits(old))
    new = merge_methods.dare_linear(tasks, 0.3, torch.Generator().manual_seed(7))
    assert torch.equal(_bits(new), _bits(_old_dare_linear(tasks, 0.3, torch.Generator().manual_seed(7))))
    # In place (as the engine calls it): the same result, and the generator ends where the old left it.
    g_new, g_old = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    scratch = [t.clone() for t in tasks]
    inplace = merge_methods.merge_dense("dare_ties", scratch, density=0.3, majority_sign=method, generator=g_new,
                                        inplace=True)
    assert torch.equal(_bits(inplace), _bits(_old_dare_ties(tasks, 0.3, g_old, method)))
    assert torch.equal(g_new.get_state(), g_old.get_state())


def test_pure_calls_leave_their_inputs_alone():
    tasks = _tasks("random")
    before = [t.clone() for t in tasks]
    merge_methods.ties(tasks, 0.2, "total")
    merge_methods.dare_ties(tasks, 0.2, torch.Generator().manual_seed(0), "total")
    assert all(torch.equal(a, b) for a, b in zip(tasks, before, strict=True))


def test_block_edges_and_the_tie_cut_inside_a_block(monkeypatch):
    """Small blocks, so that the tied cut falls inside a block and the last block is partial."""
    monkeypatch.setattr(fused, "BLOCK", 1000)
    monkeypatch.setattr(fused, "SAMPLE", 64)
    tasks = _tasks("bf16", d=97, k=131)
    for method in ("total", "frequency"):
        assert torch.equal(merge_methods.ties(tasks, 1.0, method), _old_ties(tasks, 1.0, method))
        new, old = merge_methods.ties(tasks, 0.25, method), _old_ties(tasks, 0.25, method)
        assert (new != old).sum() <= sum(int(_tied_positions(t, 0.25).sum()) for t in tasks)
    flat = torch.arange(5000, dtype=torch.float32) % 7  # 714 or 715 of each value
    cut = fused.magnitude_cut(flat, 1000)  # all 714 sixes, then the first 286 fives
    assert cut is not None and cut.value == 5.0 and cut.last == int((flat == 5).nonzero()[285])


def test_nan_keeps_topk_choice():
    t = torch.randn(40, 50)
    t[3, 4] = float("nan")
    new, old = merge_methods.prune_magnitude(t, 0.1), _old_prune_magnitude(t, 0.1)
    assert torch.equal(new.isnan(), old.isnan()) and torch.equal(new.nan_to_num(), old.nan_to_num())


def test_extreme_densities():
    t = torch.randn(30, 30)
    assert not merge_methods.prune_magnitude(t, 0.0).any()
    assert not merge_methods.prune_magnitude(t, 0.0005).any()  # int(0.45) = 0 entries
    assert torch.equal(merge_methods.prune_magnitude(t, 1.0), t)
    assert int((merge_methods.prune_magnitude(t, 1 / 900) != 0).sum()) == 1


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_engine_with_reused_buffers_is_the_old_merge(method):
    """compute_module with buffers kept across modules (two shapes of one size) gives the old merge's factors."""
    from peft_hub.compose.engine import DeltaBuffers, compute_module, module_generator
    from peft_hub.compose.lowrank import dense_truncate
    from peft_hub.compose.plan import ModulePlan, Term
    from peft_hub.compose.spec import ComposeOptions

    options = ComposeOptions(method=method, rank=4, density=0.3, seed=3)
    buffers = DeltaBuffers()
    g = torch.Generator().manual_seed(0)
    for name, d, k in [("a", 60, 90), ("b", 90, 60), ("c", 60, 90)]:
        terms = [Term(i, "A", "B", 8, 2.0, w) for i, w in enumerate((0.5, -0.3, 0.2))]
        plan = ModulePlan(name, name, False, (8, k), (d, 8), terms)
        factors = [(torch.randn(d, 8, generator=g).bfloat16(), torch.randn(8, k, generator=g).bfloat16())
                   for _ in terms]
        b, a, result = compute_module(plan, factors, options, rank=4, buffers=buffers)
        tasks = [t.weight * t.scale * (fb.float() @ fa.float()) for t, (fb, fa) in zip(terms, factors, strict=True)]
        if method == "ties":
            merged = _old_ties(tasks, 0.3, "total")
        else:
            merged = _old_dare_ties(tasks, 0.3, module_generator(3, name), "total")
        ob, oa, kept, total, how = dense_truncate(merged, 4, svd="auto", signal_rank=24,
                                                  generator=module_generator(3, f"{name}/svd"))
        assert torch.equal(b, ob) and torch.equal(a, oa)
        assert (result.energy_kept, result.energy_total, result.truncation) == (kept, total, how)
