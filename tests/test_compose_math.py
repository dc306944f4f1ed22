"""The pure tensor math of peft_hub.compose, against dense references."""

from __future__ import annotations

import pytest
import torch
from peft.utils import merge_utils
from test_compose_support import best_rank, rel_err

from peft_hub.compose import lowrank, merge_methods
from peft_hub.compose.engine import module_generator
from peft_hub.compose.threads import intra_op_threads


def _factors(d: int, k: int, ranks: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(d, r, generator=g), torch.randn(r, k, generator=g)) for r in ranks]


def test_stack_is_the_exact_sum():
    factors = _factors(24, 40, [3, 5, 2])
    coeffs = [0.7, -1.3, 2.0]
    b, a = lowrank.stack_factors(factors, coeffs)
    assert b.shape == (24, 10) and a.shape == (10, 40) and b.dtype == torch.float32
    want = sum(c * bi.double() @ ai.double() for (bi, ai), c in zip(factors, coeffs, strict=True))
    assert rel_err(b @ a, want) < 1e-6
    b64, a64 = lowrank.stack_factors(factors, coeffs, torch.float64)
    assert rel_err(b64 @ a64, want) < 1e-14
    assert torch.equal(a64[3:8], factors[1][1].double())  # A's are copied, never rounded


@pytest.mark.parametrize(("d", "k", "ranks", "rank"),
                         [(64, 96, [4, 8, 4], 6), (20, 16, [8, 8, 8], 5), (50, 30, [2, 3], 9)])
def test_lowrank_truncation_equals_dense_svd(d, k, ranks, rank):
    """Eckart–Young from factors equals dense SVD, also when R > d, k and when rank > R."""
    b, a = lowrank.stack_factors(_factors(d, k, ranks, seed=d), [1.0, -0.5, 2.0][: len(ranks)])
    dense = b.double() @ a.double()
    b2, a2, kept, total = lowrank.truncate_factors(b, a, rank)
    r = min(rank, d, k, sum(ranks))
    assert b2.shape == (d, r) and a2.shape == (r, k)
    assert rel_err(b2 @ a2, best_rank(dense, r)) < 1e-5
    s = torch.linalg.svdvals(dense)
    assert kept / total == pytest.approx(float(s[:r].square().sum() / s.square().sum()), rel=1e-9)
    assert total == pytest.approx(float(dense.square().sum()), rel=1e-9)


def test_lowrank_svd_reconstructs_the_product():
    b, a = lowrank.stack_factors(_factors(30, 50, [4, 4]), [1.0, 1.0])
    u, s, vh = lowrank.lowrank_svd(b, a)
    assert torch.all(s[:-1] >= s[1:])
    assert rel_err((u * s) @ vh, b.double() @ a.double()) < 1e-10
    assert torch.allclose(u.T @ u, torch.eye(8, dtype=torch.float64), atol=1e-10)


def test_dense_truncate_equals_best_rank():
    g = torch.Generator().manual_seed(0)
    # A clear gap after the 7th singular value, as trained deltas have; fp32 SVD
    # of a matrix with nearly equal σ₇ and σ₈ has an ill-conditioned truncation.
    m = torch.randn(40, 7, generator=g) @ torch.randn(7, 70, generator=g) + 0.1 * torch.randn(40, 70, generator=g)
    b, a, kept, total, how = lowrank.dense_truncate(m, 7)
    assert how == "exact"  # auto on a small matrix, so no generator is needed
    assert rel_err(b @ a, best_rank(m, 7)) < 1e-5
    s = torch.linalg.svdvals(m.double())
    assert kept == pytest.approx(float(s[:7].square().sum()), rel=1e-6)
    assert total == pytest.approx(float(m.double().square().sum()), rel=1e-12)


# --- randomized truncation ---------------------------------------------------


def _merged(kind: str, d: int = 512, k: int = 768, r: int = 8) -> torch.Tensor:
    return _merged_with_rows(kind, d, k, r)[0]


def _merged_with_rows(kind: str, d: int = 512, k: int = 768, r: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A merged dense ΔW as the engine builds it: three weighted rank-``r`` task deltas, merged at density 0.2;
    and the tasks' A factors stacked and transposed, (k, 3r), the start the engine gives the sketch.

    ``ties`` with weights 0.5, 0.3, 0.2 has a gap after σ_r; ``dare`` (DARE-TIES
    of three equal tasks) has σ₁…σ₃ᵣ nearly equal over a noise floor, the
    hardest spectrum for a randomized range finder among those measured.
    """
    g = torch.Generator().manual_seed(0)
    weights = (0.5, 0.3, 0.2) if kind == "ties" else (0.5, 0.5, 0.5)
    pairs = [(torch.randn(d, r, generator=g), torch.randn(r, k, generator=g)) for _ in weights]
    tasks = [w * (b @ a) for w, (b, a) in zip(weights, pairs, strict=True)]
    rows = torch.cat([a for _, a in pairs]).T
    if kind == "ties":
        return merge_methods.ties(tasks, 0.2, "total"), rows
    return merge_methods.dare_ties(tasks, 0.2, g, "total"), rows


def _optimum(m: torch.Tensor, r: int) -> tuple[torch.Tensor, float, float]:
    """The best rank-r product, its energy and ‖m‖²_F, by dense float64 SVD."""
    with intra_op_threads(1):  # 0.1 s; with 2 threads on a loaded 2-core machine, up to 10 s
        u, s, vh = torch.linalg.svd(m.double(), full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r], float(s[:r].square().sum()), float(s.square().sum())


def _check_near_optimal(m, b, a, kept, total, opt_kept, opt_total):
    """Energy within 1e-3 of the optimum's, Frobenius error within 1 % of Eckart–Young's, energy exact for (B, A)."""
    product = b.double() @ a.double()
    assert abs(kept - opt_kept) <= 1e-3 * opt_kept
    assert torch.linalg.norm(m.double() - product) <= 1.01 * (opt_total - opt_kept) ** 0.5
    assert kept == pytest.approx(float(product.square().sum()), rel=1e-6)  # reported = what the factors hold
    assert total == pytest.approx(opt_total, rel=1e-9)


def test_randomized_truncation_matches_exact_svd():
    m = _merged("ties")
    best, opt_kept, opt_total = _optimum(m, 8)
    b, a, kept, total, how = lowrank.dense_truncate(
        m, 8, svd="randomized", signal_rank=24, generator=torch.Generator().manual_seed(0)
    )
    assert how == "randomized" and b.shape == (512, 8) and a.shape == (8, 768) and b.dtype == torch.float32
    assert rel_err(b @ a, best) < 1e-4
    _check_near_optimal(m, b, a, kept, total, opt_kept, opt_total)
    again = lowrank.dense_truncate(m, 8, svd="randomized", signal_rank=24, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], b) and torch.equal(again[1], a) and again[2] == kept
    other = lowrank.dense_truncate(m, 8, svd="randomized", signal_rank=24, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other[0], b)
    assert rel_err(other[0] @ other[1], best) < 1e-4
    _check_near_optimal(m, *other[:4], opt_kept, opt_total)


def test_randomized_truncation_on_a_flat_spectrum():
    """With σ₈ ≈ σ₉ the best rank-8 product is ill-determined, but its energy and error are not."""
    m = _merged("dare")
    _, opt_kept, opt_total = _optimum(m, 8)
    for seed in (0, 1):
        b, a, kept, total, _ = lowrank.dense_truncate(
            m, 8, svd="randomized", signal_rank=24, generator=torch.Generator().manual_seed(seed)
        )
        _check_near_optimal(m, b, a, kept, total, opt_kept, opt_total)
    # The same sketch without subspace iterations keeps far less: they are what makes it accurate.
    _, s, _ = lowrank.randomized_svd(m, 8, sketch=24 + lowrank.OVERSAMPLE, power_iters=0,
                                     generator=torch.Generator().manual_seed(0))
    assert float(s.square().sum()) < 0.9 * opt_kept


@pytest.mark.parametrize("kind", ["ties", "dare"])
def test_a_sketch_started_in_the_adapters_row_space_needs_half_the_iterations(kind):
    """The engine starts the sketch from the tasks' stacked A factors: with 2 subspace iterations
    (6 large products, not 10) the kept energy is as close to the optimum as 4 Gaussian rounds get,
    where 2 Gaussian rounds fall short on the flat spectrum."""
    m, rows = _merged_with_rows(kind)
    _, opt_kept, opt_total = _optimum(m, 8)
    sketch = 24 + lowrank.OVERSAMPLE

    def shortfall(**kw) -> float:
        _, s, _ = lowrank.randomized_svd(m, 8, sketch=sketch, generator=torch.Generator().manual_seed(0), **kw)
        return (opt_kept - float(s.square().sum())) / opt_kept

    started, gaussian = shortfall(start=rows), shortfall(power_iters=lowrank.POWER_ITERS)
    assert lowrank.POWER_ITERS_STARTED == 2 < lowrank.POWER_ITERS
    assert abs(started) <= max(2 * abs(gaussian), 1e-6)
    if kind == "dare":
        assert shortfall(power_iters=lowrank.POWER_ITERS_STARTED) > 10 * max(abs(started), 1e-7)
    b, a, kept, total, _ = lowrank.dense_truncate(m, 8, svd="randomized", signal_rank=24,
                                                  generator=torch.Generator().manual_seed(0), start=rows)
    _check_near_optimal(m, b, a, kept, total, opt_kept, opt_total)
    with pytest.raises(ValueError, match="a start of 512 rows for a matrix of 768 columns"):
        lowrank.randomized_svd(m, 8, sketch=sketch, generator=torch.Generator(), start=torch.zeros(512, 24))


def test_auto_truncation_is_exact_up_to_1024():
    assert lowrank.resolve_truncation("auto", 1024, 11008) == "exact"
    assert lowrank.resolve_truncation("auto", 11008, 1024) == "exact"
    assert lowrank.resolve_truncation("auto", 1025, 1025) == "randomized"
    assert lowrank.resolve_truncation("exact", 4096, 4096) == "exact"
    assert lowrank.resolve_truncation("randomized", 8, 8) == "randomized"
    with pytest.raises(ValueError, match="unknown truncation"):
        lowrank.resolve_truncation("fast", 8, 8)  # type: ignore[arg-type]  # the bad value under test
    big = torch.randn(1025, 1030, generator=torch.Generator().manual_seed(0))
    assert lowrank.dense_truncate(big, 4, generator=torch.Generator().manual_seed(0))[4] == "randomized"
    with pytest.raises(ValueError, match="generator"):
        lowrank.dense_truncate(big, 4)


def test_factor_energy_is_the_products_norm():
    b, a = _factors(30, 50, [5])[0]
    assert lowrank.factor_energy(b, a) == pytest.approx(float((b.double() @ a.double()).square().sum()), rel=1e-12)
    m = torch.randn(1000, 3)
    assert lowrank.frobenius_sq(m, block=7) == pytest.approx(float(m.double().square().sum()), rel=1e-12)


# --- merge methods ---------------------------------------------------------


def _tasks(n: int = 3, shape=(16, 24), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def _ties_reference(tasks, weights, density, method):
    """TIES written entry by entry from the paper, on weighted task vectors."""
    weighted = [w * t for t, w in zip(tasks, weights, strict=True)]
    trimmed = []
    for t in weighted:
        k = int(density * t.numel())
        thresh = t.abs().flatten().sort(descending=True).values[k - 1]
        trimmed.append(torch.where(t.abs() >= thresh, t, torch.zeros_like(t)))
    out = torch.zeros_like(tasks[0])
    for idx in range(out.numel()):
        vals = [float(t.flatten()[idx]) for t in trimmed]
        vote = sum(vals) if method == "total" else sum((v > 0) - (v < 0) for v in vals)
        sign = 1.0 if vote >= 0 else -1.0
        agree = [v for v in vals if v != 0 and (v > 0) == (sign > 0)]
        out.view(-1)[idx] = sum(agree) / len(agree) if agree else 0.0
    return out


@pytest.mark.parametrize("method", ["total", "frequency"])
def test_ties_matches_peft_for_equal_weights(method):
    tasks = _tasks()
    weights = torch.tensor([0.5, 0.5, 0.5])
    ours = merge_methods.ties([0.5 * t for t in tasks], 0.3, method)
    theirs = merge_utils.ties(tasks, weights, 0.3, method)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert (ours == 0).any() and (ours != 0).any()


@pytest.mark.parametrize("method", ["total", "frequency"])
def test_ties_matches_the_paper_with_unequal_and_negative_weights(method):
    tasks = _tasks(shape=(6, 7), seed=1)
    weights = [1.0, -0.7, 0.4]
    ours = merge_methods.ties([w * t for t, w in zip(tasks, weights, strict=True)], 0.5, method)
    assert torch.allclose(ours, _ties_reference(tasks, weights, 0.5, method), atol=1e-6)


def test_magnitude_prune_matches_peft():
    tasks = _tasks()
    weights = [0.7, -0.2, 1.1]
    ours = merge_methods.magnitude_prune([w * t for t, w in zip(tasks, weights, strict=True)], 0.25)
    theirs = merge_utils.magnitude_prune(tasks, torch.tensor(weights), 0.25)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert (ours == 0).sum() >= ours.numel() * (1 - 3 * 0.25) - 1


def test_dare_keeps_density_and_rescales():
    t = torch.ones(200, 200)
    out = merge_methods.prune_random(t, 0.3, torch.Generator().manual_seed(0))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.3))
    # Unbiased: averaged over many draws it recovers the input.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 8)
    mean = torch.stack([merge_methods.prune_random(x, 0.5, g) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, x, atol=0.15)


def test_dare_is_deterministic_per_seed_and_module():
    tasks = _tasks()
    one = merge_methods.dare_linear(tasks, 0.5, module_generator(0, "m"))
    assert torch.equal(one, merge_methods.dare_linear(tasks, 0.5, module_generator(0, "m")))
    assert not torch.equal(one, merge_methods.dare_linear(tasks, 0.5, module_generator(1, "m")))
    assert not torch.equal(one, merge_methods.dare_linear(tasks, 0.5, module_generator(0, "n")))


def test_density_one_reduces_to_plain_sums():
    tasks = _tasks()
    total = sum(tasks)
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(merge_methods.dare_linear(tasks, 1.0, g), total, atol=1e-6)
    assert torch.allclose(merge_methods.magnitude_prune(tasks, 1.0), total, atol=1e-6)
    dare_ties = merge_methods.dare_ties(tasks, 1.0, g, "total")
    assert torch.allclose(dare_ties, merge_methods.ties(tasks, 1.0, "total"), atol=1e-6)


def test_merge_dense_dispatch_refuses_unknown():
    with pytest.raises(ValueError, match="unknown merge method"):
        merge_methods.merge_dense("nope", _tasks(), density=0.5, generator=torch.Generator())  # type: ignore[arg-type]  # bad on purpose
    with pytest.raises(ValueError, match="generator"):
        merge_methods.merge_dense("dare_ties", _tasks(), density=0.5)
