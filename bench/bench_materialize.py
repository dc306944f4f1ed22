"""Materialize benchmarks, each against its peer in the same run.

A ~1 GB bf16 Llama (hidden 2048, intermediate 5632, 8 layers, vocab 32000,
~490M parameters) is built from a config and saved in ~250 MB shards, with a
rank-16 LoRA on all seven projections. Each measurement runs in its own
subprocess, which reports the wall time of the operation (imports excluded)
and its own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``):

- ``peft``: transformers load, ``PeftModel.from_pretrained``,
  ``merge_and_unload``, ``save_pretrained`` (the usual way);
- ``stream``: ``peft_hub.gpu_runtime.materialize`` (no model instantiated);
  targets: >= 2x faster than ``peft``, <= 0.5x its peak RSS;
- ``load``: a plain ``AutoModelForCausalLM.from_pretrained`` of the base;
- ``load-nf4`` / ``load-int8``: the same with a ``BitsAndBytesConfig``
  (transformers quantizing while it loads);
- ``stream-nf4`` / ``stream-int8``: quantized materialize;
  target: <= 2x the time of a plain load;
- ``copy``: ``cp`` of the same files materialize reads (shards, index,
  config, side files) into a fresh directory, timed around the ``cp`` process;
  target: ``stream`` >= 0.6x its speed (issue #15);
- ``memcpy``: one in-memory copy of as many bytes as the shards hold (the
  bandwidth limit);
- ``stages``: ``stream`` with a timer around each stage (fault-in, merge,
  ``pwrite``, ``copy_file_range``, commit), printing each stage's wall time
  (threads overlap, so they add up to more than the run; the merge includes
  the ``pwrite`` of its blocks) and CPU time.

Every run of every mode starts from the same page-cache state of the inputs
(``--cache``): ``warm`` reads them all first, ``cold`` drops them
(``POSIX_FADV_DONTNEED``; the base's pages are clean, so the kernel drops
them). Each mode writes into a directory it empties first, outside the timing.

Modes run interleaved (round-robin, ``--repeats`` rounds) so a busy machine
disturbs every mode alike; ratios use the median of each mode's runs, RSS the
worst. Prints every figure and the ratios, and each run's CPU seconds (every
thread of the child; for ``copy``, the ``cp`` process's user + system time),
which a shared machine disturbs less than wall time. Not a test.

    python bench/bench_materialize.py [--workdir DIR] [--repeats 3] [--modes stream,copy,memcpy,...]
        [--cache warm|cold] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PEFT_HUB_DISABLE_PROGRESS_BARS", "1")

HIDDEN, INTER, LAYERS, VOCAB, RANK = 2048, 5632, 8, 32000, 16
SHARD = "250MB"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODES = ["load", "peft", "stream", "copy", "memcpy", "load-nf4", "stream-nf4", "load-int8", "stream-int8"]
#: (owner, attribute, stage) timed by the ``stages`` mode
STAGES = [
    ("peft_hub.gpu_runtime.shards.MappedShard", "read_ahead", "read ahead (reader)"),
    ("peft_hub.gpu_runtime.shards.MappedShard", "prefetch", "fault in (reader)"),
    ("peft_hub.gpu_runtime.lora_merge.TensorUpdate", "apply", "merge+pwrite (CPU: the caller only)"),
    ("peft_hub.gpu_runtime.shard_writer.ShardWriter", "write_at", "pwrite (merging threads, writer)"),
    ("peft_hub.gpu_runtime.shard_writer.ShardWriter", "write", "write whole tensors (writer)"),
    ("peft_hub.gpu_runtime.shard_writer.ShardWriter", "copy_raw", "copy_file_range (writer)"),
    ("peft_hub.gpu_runtime.shards.MappedShard", "release", "unmap merged pages"),
    ("peft_hub.outdir.OutputDir", "commit", "rename into place"),
]


def build(work: Path) -> None:
    """The base model (bf16 shards) and a random rank-16 LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False,
    )
    torch.set_default_dtype(torch.bfloat16)
    model = LlamaForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(work / "base", max_shard_size=SHARD)
    lora = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS, init_lora_weights=False,
                      task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(work / "lora", save_embedding_layers=False)


def child(mode: str, work: Path) -> dict:
    """Run one measurement in this process; return seconds and peak RSS."""
    import torch

    if mode == "memcpy":
        size = sum(p.stat().st_size for p in (work / "base").glob("*.safetensors"))
        src = torch.ones(size, dtype=torch.uint8)
        dst = torch.zeros(size, dtype=torch.uint8)  # both touched first: no page faults in the timing
        started = time.perf_counter()
        dst.copy_(src)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"mode": mode, "seconds": seconds, "peak_rss_mb": peak / 1024, "baseline_rss_mb": peak / 1024}
    # Each side imports only what it needs: the streaming path never imports transformers
    # unless it quantizes, and that is part of what it saves.
    stages: dict[str, list[float]] = {}
    if mode == "stages":
        _time_stages(stages)
    if mode.startswith("stream") or mode == "stages":
        from peft_hub.gpu_runtime.materializer import materialize

        if mode != "stream":  # quantizing needs transformers and bnb: import them untimed, as for load-*
            import bitsandbytes  # noqa: F401 - imported only so its import time is not measured
            from transformers import AutoModelForCausalLM
    else:
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        bnb = {
            "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.bfloat16),
            "int8": BitsAndBytesConfig(load_in_8bit=True),
        }
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = work / f"out-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    if mode == "load":
        AutoModelForCausalLM.from_pretrained(work / "base", dtype=torch.bfloat16)
    elif mode.startswith("load-"):
        AutoModelForCausalLM.from_pretrained(work / "base", dtype=torch.bfloat16, device_map="cpu",
                                             quantization_config=bnb[mode.split("-")[1]])
    elif mode == "peft":
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(work / "base", dtype=torch.bfloat16)
        model = PeftModel.from_pretrained(model, work / "lora").merge_and_unload()
        model.save_pretrained(out, max_shard_size=SHARD)
    elif mode in ("stream", "stages"):
        materialize(work / "base", str(work / "lora"), out, device="cpu")
    elif mode.startswith("stream-"):
        materialize(work / "base", str(work / "lora"), out, device="cpu", quantize=mode.split("-")[1])
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started  # CPU: every thread's
    if mode == "stages":
        stages["whole process"] = [seconds, cpu]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "seconds": seconds, "cpu": cpu, "peak_rss_mb": peak / 1024,
            "baseline_rss_mb": baseline / 1024, "stages": stages}


def _time_stages(stages: dict[str, list[float]]) -> None:
    """Wrap each of :data:`STAGES` to add its wall and thread CPU seconds into ``stages``."""
    import importlib
    import threading

    lock = threading.Lock()
    for owner, attr, label in STAGES:
        module, cls = owner.rsplit(".", 1)
        target = getattr(importlib.import_module(module), cls)
        inner = getattr(target, attr)
        stages[label] = [0.0, 0.0]

        def timed(*args, _inner=inner, _label=label, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return _inner(*args, **kwargs)
            finally:
                with lock:
                    stages[_label][0] += time.perf_counter() - wall
                    stages[_label][1] += time.thread_time() - cpu

        setattr(target, attr, timed)


def set_cache(work: Path, state: str) -> None:
    """Put every input file (base and adapter) in the page cache, or out of it."""
    for path in sorted(p for d in ("base", "lora") for p in (work / d).iterdir() if p.is_file()):
        with open(path, "rb") as fh:
            if state == "cold":
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while fh.read(64 << 20):
                    pass


def copy_files(work: Path) -> dict:
    """``cp`` of every file of the base into a fresh directory (what materialize reads)."""
    out = work / "out-copy"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    files = sorted(str(p) for p in (work / "base").iterdir() if p.is_file())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["cp", *files, str(out)], check=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"mode": "copy", "seconds": seconds, "cpu": cpu, "peak_rss_mb": float("nan"),
            "baseline_rss_mb": float("nan")}


def measure(mode: str, work: Path) -> dict:
    if mode == "copy":
        return copy_files(work)
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--workdir", str(work)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(work: Path) -> float:
    """Max |stream - peft| over all merged tensors, in units of one bf16 ulp of the value."""
    import torch
    from safetensors import safe_open

    index = json.loads((work / "out-stream" / "model.safetensors.index.json").read_text())["weight_map"]
    peft_index = json.loads((work / "out-peft" / "model.safetensors.index.json").read_text())["weight_map"]
    worst = 0.0
    for key, shard in index.items():
        if not any(t in key for t in TARGETS):
            continue
        with (safe_open(work / "out-stream" / shard, "pt") as a,
              safe_open(work / "out-peft" / peft_index[key], "pt") as b):
            x, y = a.get_tensor(key).float(), b.get_tensor(key).float()
        ulp = torch.finfo(torch.bfloat16).eps * y.abs().clamp(min=1e-30)
        worst = max(worst, ((x - y).abs() / ulp).max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3,
                        help="Rounds: ratios use each mode's median run and its highest RSS.")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--cache", choices=["warm", "cold"], default="warm",
                        help="The inputs' page-cache state at the start of every run of every mode.")
    parser.add_argument("--keep", action="store_true", help="Keep the work directory.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workdir)))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-materialize-"))
    work.mkdir(parents=True, exist_ok=True)
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"cuda {'yes' if torch.cuda.is_available() else 'no'}")
    if not (work / "lora" / "adapter_config.json").exists():
        t = time.perf_counter()
        code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); "
                f"import bench_materialize as b; from pathlib import Path; b.build(Path({str(work)!r}))")
        proc = subprocess.run([sys.executable, "-c", code], check=False)
        if proc.returncode != 0:
            sys.exit("building the base model failed")
        print(f"built the base in {time.perf_counter() - t:.0f}s")
    size = sum(p.stat().st_size for p in (work / "base").glob("*.safetensors"))
    shards = len(list((work / "base").glob("*.safetensors")))
    print(f"base: {size / 1e9:.2f} GB bf16 in {shards} shards; "
          f"LoRA rank {RANK} on {len(TARGETS)} projections x {LAYERS} layers; page cache {args.cache} at each run")

    modes = args.modes.split(",")
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for _ in range(args.repeats):  # round-robin: each round runs every mode once
        for mode in modes:
            set_cache(work, args.cache)
            runs[mode].append(measure(mode, work))
    results: dict[str, dict] = {}
    for mode in modes:
        results[mode] = {
            "seconds": statistics.median(r["seconds"] for r in runs[mode]),
            "all": [r["seconds"] for r in runs[mode]],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[mode]),
            "baseline_rss_mb": max(r["baseline_rss_mb"] for r in runs[mode]),
        }
        r = results[mode]
        rate = (2 if mode in ("stream", "copy", "memcpy") else 1) * size / r["seconds"] / 1e9
        print(f"{mode:<12} median {r['seconds']:7.3f} s ({' '.join(f'{x:.3f}' for x in r['all'])})  "
              f"{rate:5.2f} GB/s   peak RSS {r['peak_rss_mb']:6.0f} MB (after imports {r['baseline_rss_mb']:.0f} MB)",
              flush=True)
        if all("cpu" in run for run in runs[mode]):
            cpus = " ".join(f"{run['cpu']:.3f}" for run in runs[mode])
            print(f"{'':<12} CPU (all threads) {cpus} s", flush=True)
        median_run = sorted(runs[mode], key=lambda r: r["seconds"])[len(runs[mode]) // 2]
        for label, (wall, cpu) in median_run.get("stages", {}).items():
            print(f"    {label:<34} {wall:6.3f} s wall  {cpu:6.3f} s CPU")

    def ratio(a: str, b: str, key: str) -> str:
        if a in results and b in results:
            return f"{results[a][key] / results[b][key]:.2f}"
        return "n/a"

    print()
    print(f"stream speed / cp speed:       {ratio('copy', 'stream', 'seconds')}x   (target >= 0.6)")
    if "stages" in results:
        print(f"stages speed / cp speed:       {ratio('copy', 'stages', 'seconds')}x   (with timers)")
    print(f"stream speed / memcpy speed:   {ratio('memcpy', 'stream', 'seconds')}x")
    print(f"peft / stream time:            {ratio('peft', 'stream', 'seconds')}x   (target >= 2)")
    print(f"stream / peft peak RSS:        {ratio('stream', 'peft', 'peak_rss_mb')}x   (target <= 0.5)")
    for q in ("nf4", "int8"):
        print(f"stream-{q} / load time:       {ratio(f'stream-{q}', 'load', 'seconds')}x   (target <= 2)")
        print(f"stream-{q} / load-{q} time:   {ratio(f'stream-{q}', f'load-{q}', 'seconds')}x")
    if "peft" in results and "stream" in results:
        print(f"stream vs peft merged weights: max {compare(work):.2f} bf16 ulp apart")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
