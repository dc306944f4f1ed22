"""Compose benchmarks, each against its peer or its limit in the same run.

1. SVD merge of three rank-16 adapters to rank 16 on one 4096x4096 and one
   4096x11008 module: peft_hub's factor-space SVD against PEFT's
   ``add_weighted_adapter(combination_type="svd")`` (dense ΔW, dense SVD).
   Prints the speed-up and how far apart the two products are, relative to
   max|ΔW|.
2. The dense truncation of one merged module (TIES of three rank-16
   adapters, density 0.2; and DARE-TIES of three equal ones, the hardest
   spectrum measured): exact ``torch.linalg.svd`` against the randomized SVD,
   time and accuracy (kept energy, Frobenius error against Eckart–Young's,
   products).
2a. TIES and DARE-TIES (three rank-16 adapters, density 0.2) on one 4096x4096
   module as the engine computes it (deltas, merge, randomized SVD), against
   PEFT's ``ties``/``dare_ties`` on the same dense deltas, interleaved, medians
   of 3; target 0.8 s for our whole module.
3. Three 7B-shaped adapters (32 layers x q,k,v,o,gate,up,down; hidden 4096,
   intermediate 11008; rank 16; bf16) composed from files to a file, in a
   subprocess that reports its own wall time and peak RSS, against the
   targets of 15 s and 1.5 x inputs + 300 MB; then TIES (density 0.2) to
   rank 16 with ``svd="auto"``, against the time the exact dense SVDs alone
   would have taken (per module as measured in 2) and the targets of 200 s
   and 1.5 GB peak RSS.

    python bench/bench_compose.py [--repeats 5] [--skip-peft-11008] [--skip-7b-ties] [--only-merge]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the benchmarks import compose late, to time the import
    from peft_hub.compose.spec import MergeMethod

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PEFT_HUB_DISABLE_PROGRESS_BARS", "1")

RANK, ALPHA, WEIGHTS = 16, 32, (0.5, 0.3, 0.2)
LAYERS, HIDDEN, INTER = 32, 4096, 11008
SHAPES = {  # module -> (out, in)
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN), "mlp.down_proj": (HIDDEN, INTER),
}


def random_factors(d: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A trained-looking LoRA pair: B (d, r), A (r, k)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, RANK, generator=g) * 0.02, torch.randn(RANK, k, generator=g) / k**0.5


# --- 1. one module against PEFT ---------------------------------------------


def peft_svd(d: int, k: int, factors, dtype: torch.dtype = torch.float32) -> tuple[float, torch.Tensor]:
    """PEFT's add_weighted_adapter(svd) on a one-Linear model in ``dtype``; returns (seconds, ΔW).

    In float32 (what PEFT users run) it is the timing peer; in float64 its
    dense SVD is exact enough to check our products to 1e-5 and beyond.
    """
    from peft import LoraConfig, get_peft_model

    class One(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(k, d, bias=False)

    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["lin"])
    model = get_peft_model(One(), copy.deepcopy(config), adapter_name="p0")
    for i in (1, 2):
        model.add_adapter(f"p{i}", copy.deepcopy(config))
    model.to(dtype)
    with torch.no_grad():
        for i, (b, a) in enumerate(factors):
            model.base_model.model.lin.lora_A[f"p{i}"].weight.copy_(a)
            model.base_model.model.lin.lora_B[f"p{i}"].weight.copy_(b)
    start = time.perf_counter()
    model.add_weighted_adapter(["p0", "p1", "p2"], list(WEIGHTS), "merged", combination_type="svd", svd_rank=RANK)
    seconds = time.perf_counter() - start
    return seconds, model.base_model.model.lin.get_delta_weight("merged").detach()


def ours_svd(factors, repeats: int) -> tuple[float, torch.Tensor]:
    """peft_hub's exact factor-space truncation, as the engine runs it; returns (median seconds, ΔW)."""
    from peft_hub.compose.lowrank import stack_factors, truncate_factors
    from peft_hub.compose.threads import intra_op_threads

    coeffs = [w * ALPHA / RANK for w in WEIGHTS]
    times = []
    with intra_op_threads(1):
        for _ in range(repeats):
            start = time.perf_counter()
            b, a = stack_factors(factors, coeffs, torch.float64)  # (d, 48), (48, k)
            b, a, _, _ = truncate_factors(b, a, RANK)  # (d, 16), (16, k)
            b, a = b.float(), a.float()  # what is written for fp32 inputs
            times.append(time.perf_counter() - start)
    return statistics.median(times), b @ a


def exact_reference(factors, dense: bool) -> torch.Tensor:
    """The best rank-16 approximation in float64: by dense SVD of the (d, k) ΔW
    (slow, independent of peft_hub), or by the factor path with every step in
    float64 (fast; the tests check it against dense float64 SVD)."""
    from peft_hub.compose.lowrank import stack_factors, truncate_factors

    coeffs = [w * ALPHA / RANK for w in WEIGHTS]
    if dense:
        delta = sum(c * (b.double() @ a.double()) for (b, a), c in zip(factors, coeffs, strict=True))  # (d, k)
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        return (u[:, :RANK] * s[:RANK]) @ vh[:RANK]
    b, a = stack_factors(factors, coeffs, torch.float64)
    b, a, _, _ = truncate_factors(b, a, RANK)
    return b @ a


def bench_module(d: int, k: int, repeats: int, dense_reference: bool) -> dict:
    factors = [random_factors(d, k, seed) for seed in range(3)]
    ours_s, ours = ours_svd(factors, repeats)
    peft_s, theirs = peft_svd(d, k, factors)
    ref = exact_reference(factors, dense_reference)

    def err(x: torch.Tensor, y: torch.Tensor) -> float:
        return float((x.double() - y.double()).abs().max() / y.double().abs().max())

    return {"shape": f"{d}x{k}", "ours_s": ours_s, "peft_s": peft_s, "speedup": peft_s / ours_s,
            "rel_err": err(ours, theirs), "ours_exact": err(ours, ref), "peft_exact": err(theirs, ref)}


# --- 3. 7B-shaped adapters from files ---------------------------------------


def write_7b_adapter(path: Path, seed: int) -> int:
    """A 7B-shaped rank-16 bf16 LoRA adapter directory; returns its weights' size in bytes."""
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    tensors = {}
    for layer in range(LAYERS):
        for j, (name, (d, k)) in enumerate(SHAPES.items()):
            b, a = random_factors(d, k, seed * 10_000 + layer * 10 + j)
            prefix = f"base_model.model.model.layers.{layer}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16)
    save_file(tensors, path / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA,
              "target_modules": [n.split(".")[1] for n in SHAPES], "base_model_name_or_path": "bench/llama-7b"}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return (path / "adapter_model.safetensors").stat().st_size


_CHILD = """
import json, sys, time
from pathlib import Path
start = time.perf_counter()
from peft_hub.compose import compose_dirs
imported = time.perf_counter()
paths, out, kwargs = json.loads(sys.argv[1])
report = compose_dirs([Path(p) for p in paths], [0.5, 0.3, 0.2], Path(out), **kwargs)
done = time.perf_counter()
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"compose_s": done - imported, "total_s": done - start, "rank": report.rank,
                  "energy": report.energy_kept, "truncation": report.truncation,
                  "maxrss_mb": int(hwm.split()[1]) / 1024}))
"""
# Peak RSS is this process's VmHWM, not getrusage's ru_maxrss: Linux carries
# ru_maxrss across fork+exec, so a child of this (large) process would report
# at least the parent's size.
_BASELINE = (
    "import peft_hub.compose.api\n"
    "print(int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024)"
)


RUNS_7B = {  # label -> compose_dirs keyword arguments
    "stack": {"method": "stack"},
    "svd": {"method": "svd", "rank": RANK},
    "ties": {"method": "ties", "density": 0.2, "rank": RANK, "svd": "auto"},
}


def bench_7b(tmp: Path, labels: list[str]) -> dict:
    sizes = [write_7b_adapter(tmp / f"a{i}", i) for i in range(3)]
    inputs_mb = sum(sizes) / 2**20
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    baseline = subprocess.run([sys.executable, "-c", _BASELINE], capture_output=True, text=True, env=env, check=True)
    baseline = float(baseline.stdout)
    runs = {}
    for label in labels:
        arg = json.dumps([[str(tmp / f"a{i}") for i in range(3)], str(tmp / f"out-{label}"), RUNS_7B[label]])
        out = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True, env=env, check=True)
        runs[label] = json.loads(out.stdout.strip().splitlines()[-1])
        runs[label]["output_mb"] = (tmp / f"out-{label}" / "adapter_model.safetensors").stat().st_size / 2**20
    return {"inputs_mb": inputs_mb, "limit_mb": 1.5 * inputs_mb + 300, "import_rss_mb": baseline, "runs": runs}


# --- 2. dense truncation: exact against randomized --------------------------


def merged_module(d: int, k: int, kind: MergeMethod) -> tuple[torch.Tensor, float, torch.Tensor]:
    """A merged dense ΔW as the engine builds it; returns it, the merge's seconds, and the adapters' stacked
    A factors transposed, (k, 48), which the engine gives the randomized SVD as its sketch's start.

    ``ties``: the bench adapters with weights 0.5, 0.3, 0.2, TIES at density
    0.2. ``dare_ties``: equal weights 0.5, DARE-TIES at density 0.2, whose 48
    leading singular values are nearly equal over a noise floor half as high.
    """
    from peft_hub.compose.engine import module_generator
    from peft_hub.compose.merge_methods import merge_dense

    weights = WEIGHTS if kind == "ties" else (0.5, 0.5, 0.5)
    start = time.perf_counter()
    factors = [random_factors(d, k, s) for s in range(3)]
    tasks = [w * ALPHA / RANK * (b @ a) for (b, a), w in zip(factors, weights, strict=True)]
    merged = merge_dense(kind, tasks, density=0.2, generator=module_generator(0, "bench"))
    return merged, time.perf_counter() - start, torch.cat([a for _, a in factors]).T


def bench_merge_module(d: int, k: int, kind: MergeMethod, repeats: int) -> dict:
    """One module as the engine computes it (deltas, merge in place, randomized SVD to rank 16) against PEFT's
    ``ties``/``dare_ties`` on the same dense deltas (the merge alone), interleaved, medians of ``repeats``."""
    from peft.utils import merge_utils

    from peft_hub.compose.engine import DeltaBuffers, module_generator
    from peft_hub.compose.lowrank import dense_truncate
    from peft_hub.compose.merge_methods import merge_dense

    factors = [random_factors(d, k, s) for s in range(3)]
    coeffs = [w * ALPHA / RANK for w in WEIGHTS]
    ours, merge, peft = [], [], []
    buffers = DeltaBuffers()  # as the engine keeps them from module to module
    for _ in range(repeats):
        start = time.perf_counter()
        tasks = [torch.mm(b, a, out=buf).mul_(c)
                 for (b, a), c, buf in zip(factors, coeffs, buffers.take((d, k), 3), strict=True)]
        t1 = time.perf_counter()
        merged = merge_dense(kind, tasks, density=0.2, generator=module_generator(0, "m"), inplace=True)
        t2 = time.perf_counter()
        rows = torch.cat([a.float() for _, a in factors]).T  # (k, 48), as the engine starts the sketch
        dense_truncate(merged, RANK, svd="auto", signal_rank=3 * RANK, generator=module_generator(0, "m/svd"),
                       start=rows)
        ours.append(time.perf_counter() - start)
        merge.append(t2 - t1)
        del tasks, merged
        deltas = torch.stack([ALPHA / RANK * (b @ a) for b, a in factors])  # (3, d, k), PEFT weighs them itself
        start = time.perf_counter()
        if kind == "ties":
            merge_utils.ties(deltas, torch.tensor(WEIGHTS), 0.2, "total")
        else:
            merge_utils.dare_ties(deltas, torch.tensor(WEIGHTS), 0.2, "total")
        peft.append(time.perf_counter() - start)
        del deltas
    return {"ours_s": statistics.median(ours), "merge_s": statistics.median(merge), "peft_s": statistics.median(peft)}


def bench_truncation(d: int, k: int, kind: MergeMethod, repeats: int) -> dict:
    from peft_hub.compose.lowrank import dense_truncate, frobenius_sq

    m, merge_s, rows = merged_module(d, k, kind)
    total = frobenius_sq(m)
    start = time.perf_counter()
    be, ae, kept_e, _, _ = dense_truncate(m, RANK, svd="exact")
    exact_s = time.perf_counter() - start
    times: dict[str, list[float]] = {"started": [], "gaussian": []}
    kept: dict[str, float] = {}
    for _ in range(repeats):  # the engine's sketch (started from the A rows), and a Gaussian one, interleaved
        for how, first in (("started", rows), ("gaussian", None)):
            start = time.perf_counter()
            br, ar, kept[how], _, _ = dense_truncate(m, RANK, svd="randomized", signal_rank=3 * RANK,
                                                     generator=torch.Generator().manual_seed(0), start=first)
            times[how].append(time.perf_counter() - start)
            if how == "started":
                pr = br @ ar
    pe = be @ ae
    # Errors summed in float64: they differ in the 7th digit, below float32's resolution.
    opt_err = frobenius_sq(m - pe) ** 0.5  # Eckart–Young's error, as the exact SVD reaches it
    return {
        "shape": f"{d}x{k}", "kind": kind, "merge_s": merge_s, "exact_s": exact_s,
        "rand_s": statistics.median(times["started"]), "gauss_s": statistics.median(times["gaussian"]),
        "kept_fraction": kept_e / total, "energy_rel": (kept_e - kept["started"]) / kept_e,
        "gauss_energy_rel": (kept_e - kept["gaussian"]) / kept_e,
        "err_ratio": frobenius_sq(m - pr) ** 0.5 / opt_err,
        "prod_rel": float((pr - pe).abs().max() / pe.abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-peft-11008", action="store_true", help="skip the slowest PEFT run")
    parser.add_argument("--skip-7b-ties", action="store_true", help="skip the 7B-shaped TIES run (minutes)")
    parser.add_argument("--peft-float64", action="store_true",
                        help="also run PEFT's svd merge in float64 on 4096x4096 and compare products with ours")
    parser.add_argument("--only-module", action="store_true", help="run part 1 only")
    parser.add_argument("--only-merge", action="store_true", help="stop after the per-module TIES/DARE figure")
    parser.add_argument("--dense-reference", action="store_true",
                        help="check against a dense float64 SVD (minutes) instead of the float64 factor path")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")

    shapes = [(4096, 4096)] if args.skip_peft_11008 else [(4096, 4096), (4096, 11008)]
    shapes = [] if args.only_merge else shapes
    for d, k in shapes:
        r = bench_module(d, k, args.repeats, args.dense_reference)
        print(f"[1] svd merge 3x r16 -> r16 on {r['shape']}: ours {r['ours_s'] * 1e3:.1f} ms, "
              f"PEFT {r['peft_s']:.2f} s, {r['speedup']:.0f}x faster (target >= 100x)\n"
              f"    max|ours - PEFT| / max|ΔW| = {r['rel_err']:.1e} (target <= 1e-5); against the "
              f"{'dense ' if args.dense_reference else ''}float64 truncation: "
              f"ours {r['ours_exact']:.1e}, PEFT {r['peft_exact']:.1e}")

    if args.peft_float64:
        factors = [random_factors(4096, 4096, seed) for seed in range(3)]
        _, ours = ours_svd(factors, 1)
        seconds, theirs = peft_svd(4096, 4096, factors, torch.float64)
        rel = float((ours.double() - theirs).abs().max() / theirs.abs().max())
        print(f"[1b] PEFT's svd merge in float64 on 4096x4096 ({seconds:.1f} s): "
              f"max|ours - PEFT| / max|ΔW| = {rel:.1e} (target <= 1e-5)")
    if args.only_module:
        return

    for kind in ("ties", "dare_ties"):
        r = bench_merge_module(4096, 4096, kind, 3)
        print(f"[2a] {kind} 3x r16, density 0.2, 4096x4096, whole module (deltas, merge, randomized SVD): "
              f"{r['ours_s']:.2f} s (target <= 0.8 s; merge alone {r['merge_s']:.2f} s); PEFT's {kind} on the "
              f"dense deltas, merge alone: {r['peft_s']:.2f} s, {r['peft_s'] / r['ours_s']:.1f}x our whole module")
    if args.only_merge:
        return
    dense = [bench_truncation(4096, 4096, "ties", args.repeats), bench_truncation(4096, 11008, "ties", args.repeats),
             bench_truncation(4096, 4096, "dare_ties", args.repeats)]
    from peft_hub.compose.lowrank import POWER_ITERS, POWER_ITERS_STARTED

    for r in dense:
        print(f"[2] {r['kind']} 3x r16, density 0.2, -> r16 on {r['shape']} (merge {r['merge_s']:.1f} s): "
              f"exact SVD {r['exact_s']:.1f} s, randomized {r['rand_s']:.2f} s "
              f"({r['exact_s'] / r['rand_s']:.0f}x faster)\n"
              f"    exact keeps {r['kept_fraction']:.4f} of the energy; randomized keeps {r['energy_rel']:.1e} less "
              f"(relative, target <= 1e-3); Frobenius error {r['err_ratio'] - 1:+.1e} relative to Eckart-Young's "
              f"(target <= 1e-2); max|product diff| / max|exact| = {r['prod_rel']:.1e}\n"
              f"    (the sketch starts from the adapters' A rows, {POWER_ITERS_STARTED} iterations; a Gaussian one "
              f"with {POWER_ITERS}: {r['gauss_s']:.2f} s, keeps {r['gauss_energy_rel']:.1e} less)")

    labels = ["stack", "svd"] if args.skip_7b_ties else ["stack", "svd", "ties"]
    with tempfile.TemporaryDirectory(prefix="bench-compose-") as tmp:
        r = bench_7b(Path(tmp), labels)
    print(f"[3] 7B-shaped: 3 adapters x {LAYERS * len(SHAPES)} modules, inputs {r['inputs_mb']:.0f} MB (bf16); "
          f"RSS after importing torch + compose: {r['import_rss_mb']:.0f} MB")
    for label, run in r["runs"].items():
        line = (f"    {label:5s} -> rank {run['rank']}: compose {run['compose_s']:.2f} s, "
                f"with imports {run['total_s']:.2f} s; peak RSS {run['maxrss_mb']:.0f} MB")
        if label == "ties":
            # The exact SVD alone, per module shape, as measured in [2]: 128 square and 96 4096 x 11008 modules.
            square, wide = dense[0]["exact_s"], dense[1]["exact_s"]
            exact_only = LAYERS * (4 * square + 3 * wide)
            line += (f" (dense float32 work, 180 MB per 4096x11008 tensor); output {run['output_mb']:.0f} MB; "
                     f"energy kept {run['energy']:.4f}; truncation {run['truncation']}; "
                     f"the exact SVDs alone would take about {exact_only / 60:.0f} min "
                     f"({exact_only / run['compose_s']:.1f}x this whole run); targets: <= 200 s "
                     f"({run['compose_s'] / 200:.2f} of it), peak RSS <= 1536 MB ({run['maxrss_mb'] / 1536:.2f} of it)")
        else:
            line += (f" = {run['maxrss_mb'] / r['limit_mb']:.2f} of the limit {r['limit_mb']:.0f} MB; output "
                     f"{run['output_mb']:.0f} MB; energy kept {run['energy']:.4f} (target <= 15 s, "
                     f"{15 / run['compose_s']:.1f}x under)")
        print(line)


if __name__ == "__main__":
    main()
