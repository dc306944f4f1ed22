"""Push and pull throughput of a 100 MB adapter through the hub on S3, against
raw boto3 ``upload_file``/``download_file`` of the same bytes to the same
SeaweedFS, in the same run, interleaved (the order alternates each round,
so neither side always finds the page cache warm); medians of the rounds.
Also checks that re-pushing uploads 0 bytes and that pulled bytes are pushed bytes.
Each round's downloads are removed before the next (unless ``--keep``), so
every round writes into recycled page cache, as on a machine whose memory is
in use: on a fresh VM a page touched for the first time costs the host's
allocation (here about 0.3 GB/s, against 20 GB/s once touched), which then
dominates both sides and, with ``-o``, ours twice over.
Our pull is timed twice: into the cache (one copy of the bytes written, as
``download_file`` writes one), and with ``-o`` from an empty cache (two
copies: the cache's and the output directory's, written as the bytes arrive).
Each pull side also prints this process's CPU seconds (median): on shared
cores it is steadier than the wall clock. boto3 never ``fsync``s what it
downloads; a pull does, before the cache's rename: a reference line times
boto3's download with an ``fsync`` after it (the target stays boto3's plain
download).
With ``--large-mb``, one large file (pushed in parts) is timed too, each
side in a process of its own so that its peak RSS is its own.

    python bench/bench_transfer.py [--mb 100] [--repeats 3] [--large-mb 1024]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("PEFT_HUB_DISABLE_PROGRESS_BARS", "1")


def make_adapter(path: Path, mb: int, seed: int) -> Path:
    """A LoRA adapter directory whose weights file is ``mb`` megabytes."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    r, d = 16, 4096
    per_module = 2 * r * d * 2  # A and B in bf16-sized bytes (stored as f16)
    modules = max(1, mb * 1024 * 1024 // per_module)
    tensors = {}
    for i in range(modules):
        prefix = f"base_model.model.model.layers.{i // 4}.self_attn.{'qkvo'[i % 4]}_proj"
        tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((r, d), dtype=np.float32).astype(np.float16)
        tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((d, r), dtype=np.float32).astype(np.float16)
    save_file(tensors, path / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
              "base_model_name_or_path": "bench/base-7b", "task_type": "CAUSAL_LM"}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def _cpu() -> float:
    """This process's CPU seconds (user + system): the client's, and the in-process hub's."""
    times = os.times()
    return times.user + times.system


def _boto(raw, config, weights: Path, key: str, dest: Path, ups: list, downs: list, cpu: list,
          synced: list) -> None:
    """Upload, download; then ``fsync`` the download, timed apart (``synced``: the download and its
    ``fsync``), as a pull makes its cache's file durable before it renames it into place."""
    t = time.perf_counter()
    raw.upload_file(str(weights), "raw", key, Config=config)
    ups.append(time.perf_counter() - t)
    t, c = time.perf_counter(), _cpu()
    raw.download_file("raw", key, str(dest), Config=config)
    downs.append(time.perf_counter() - t)
    cpu.append(_cpu() - c)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    synced.append(time.perf_counter() - t)


def _ours(client, into, adapter: Path, name: str, dest: Path, size: int, ups: list, downs: list, cpu: list,
          downs_o: list, cpu_o: list) -> None:
    """Push, then pull twice: into ``client``'s cache (one copy written, as boto3 writes one), and with
    ``-o`` through ``into``, a client of an empty cache (two copies: the cache's, and ``dest``)."""
    t = time.perf_counter()
    pushed = client.push(adapter, name=name)
    ups.append(time.perf_counter() - t)
    for side, out, times, cpus in ((client, None, downs, cpu), (into, dest, downs_o, cpu_o)):
        t, c = time.perf_counter(), _cpu()
        pulled = side.pull(name, out)
        times.append(time.perf_counter() - t)
        cpus.append(_cpu() - c)
        assert pulled.bytes_downloaded >= size
    assert pushed.bytes_uploaded >= size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true",
                        help="keep every round's downloads: each round then writes into memory never used before")
    parser.add_argument("--large-mb", type=int, default=0, help="also push and pull one file this large, in parts")
    args = parser.parse_args()

    import boto3
    from boto3.s3.transfer import TransferConfig
    from services import live_hub, seaweedfs

    from peft_hub.client import HubClient
    from peft_hub.hub import Settings

    work = Path(tempfile.mkdtemp(prefix="peft-hub-bench-"))
    adapters = [make_adapter(work / f"a{i}", args.mb, i) for i in range(args.repeats)]
    size = (adapters[0] / "adapter_model.safetensors").stat().st_size
    with seaweedfs() as s3:
        os.environ.update(s3.env())
        token = "phub_" + secrets.token_hex(6) + secrets.token_urlsafe(32)
        settings = Settings(db_url=f"sqlite:///{work / 'hub.db'}", storage="s3://bench/hub", admin_token=token,
                            token_file=work / "token")
        raw = boto3.client("s3")
        raw.create_bucket(Bucket="raw")
        config = TransferConfig()  # boto3's defaults: 8 MB parts, 10 threads
        with live_hub(settings) as hub:
            boto_up, boto_down, hub_up, hub_down, boto_cpu, hub_cpu = [], [], [], [], [], []
            out_down, out_cpu, boto_synced = [], [], []
            for i, adapter in enumerate(adapters):
                weights = adapter / "adapter_model.safetensors"
                client = HubClient(hub.url, token, cache_dir=work / f"cache{i}")
                into = HubClient(hub.url, token, cache_dir=work / f"ocache{i}")

                sides = [(_boto, (raw, config, weights, f"obj{i}", work / f"raw{i}", boto_up, boto_down, boto_cpu,
                                  boto_synced)),
                         (_ours, (client, into, adapter, f"admin/bench{i}", work / f"pulled{i}", size, hub_up,
                                  hub_down, hub_cpu, out_down, out_cpu))]
                for side, side_args in sides if i % 2 == 0 else sides[::-1]:
                    side(*side_args)
                assert filecmp.cmp(weights, work / f"pulled{i}" / "adapter_model.safetensors", shallow=False)
                assert filecmp.cmp(weights, work / f"raw{i}", shallow=False)
                if not args.keep:  # the next round writes into recycled page cache, as a busy machine does
                    for leftover in (work / f"raw{i}", work / f"pulled{i}", work / f"cache{i}", work / f"ocache{i}"):
                        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            again = HubClient(hub.url, token, cache_dir=work / "cache0").push(adapters[0], name="admin/bench0")
            if args.large_mb:
                large(work, hub.url, token, args.large_mb)

    mb = size / 1e6
    med = statistics.median
    print(f"adapter weights: {mb:.1f} MB, {args.repeats} runs each, medians; "
          f"machine: {os.cpu_count()} cores, loopback SeaweedFS")
    print(f"  boto3 upload_file    {mb / med(boto_up):8.1f} MB/s")
    print(f"  peft-hub push        {mb / med(hub_up):8.1f} MB/s   "
          f"ratio {med(boto_up) / med(hub_up):.2f}x  (target >= 0.9x)")
    print(f"  boto3 download_file  {mb / med(boto_down):8.1f} MB/s   CPU {med(boto_cpu):.2f} s")
    print(f"  peft-hub pull        {mb / med(hub_down):8.1f} MB/s   "
          f"ratio {med(boto_down) / med(hub_down):.2f}x  (target >= 0.9x)   CPU {med(hub_cpu):.2f} s "
          f"(into the cache: one copy, sha256 as bytes arrive)")
    print(f"  boto3 + fsync        {mb / med(boto_synced):8.1f} MB/s   "
          f"ratio {med(boto_synced) / med(hub_down):.2f}x  (a reference: the download made durable, as a pull's "
          f"cache file is)")
    print(f"  peft-hub pull -o     {mb / med(out_down):8.1f} MB/s   "
          f"ratio {med(boto_down) / med(out_down):.2f}x                   CPU {med(out_cpu):.2f} s "
          f"(an empty cache: two copies, the cache's and -o's)")
    print(f"  re-push unchanged    {again.bytes_uploaded} bytes uploaded, same revision: {not again.created}")
    shutil.rmtree(work, ignore_errors=True)


_CHILD = """
import sys, time
kind, work, url, token = sys.argv[1:5]
t = time.perf_counter()
if kind == "boto3":
    import boto3
    boto3.client("s3").upload_file(work + "/large/adapter_model.safetensors", "raw", "large")
elif kind == "push":
    from peft_hub.client import HubClient
    HubClient(url, token, cache_dir=work + "/lcache").push(work + "/large", name="admin/large")
else:
    from peft_hub.client import HubClient
    HubClient(url, token, cache_dir=work + "/lcache2").pull("admin/large", work + "/lpulled")
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))  # ru_maxrss survives exec
print(time.perf_counter() - t, int(hwm.split()[1]) // 1024)
"""


def large(work: Path, url: str, token: str, mb: int) -> None:
    """Push and pull one ``mb`` MB weights file (in parts) against boto3's
    multipart ``upload_file``; each in its own process, for its peak RSS."""
    import subprocess

    import numpy as np

    path = work / "large"
    path.mkdir()
    shutil.copy(work / "a0" / "adapter_config.json", path)
    block = np.random.default_rng(0).standard_normal((16, 4096 * 1024), dtype=np.float32).astype(np.float16)
    rows = max(1, mb * 1024 * 1024 // block.nbytes)
    header = json.dumps({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": {
        "dtype": "F16", "shape": [16, 4096 * 1024 * rows], "data_offsets": [0, block.nbytes * rows]}}).encode()
    with open(path / "adapter_model.safetensors", "wb") as fh:  # written in blocks: the bench's memory stays small
        fh.write(len(header).to_bytes(8, "little") + header)
        for _ in range(rows):
            fh.write(block.tobytes())
    size = (path / "adapter_model.safetensors").stat().st_size / 1e6
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for kind in ("boto3", "push", "pull"):
        out = subprocess.run([sys.executable, "-c", _CHILD, kind, str(work), url, token], env=env,
                             capture_output=True, text=True, check=False)
        if out.returncode:
            print(f"  large {kind}: failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        seconds, rss = out.stdout.split()
        print(f"  large file {kind:6} {size:8.0f} MB  {size / float(seconds):8.1f} MB/s  peak RSS {rss} MB")


if __name__ == "__main__":
    main()
