"""The fast materialize path (#15) writes the same bytes as the serial merge it replaced.

The reference here is the merge as it was: each base tensor read into a fresh
buffer, upcast a block of rows at a time into a fresh fp32 tensor, ``addmm_``,
downcast into a fresh output, written in file order. The pipeline (mapped
reads, pooled buffers, reader and writer threads) must reproduce it byte for
byte, whole files included, however small its memory budget.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_models import make_lora, tiny_llama

from peft_hub.compose.io import ST_DTYPES, header_layout, tensor_bytes
from peft_hub.errors import IncompatibleAdaptersError, InvalidInputError
from peft_hub.gpu_runtime import stream
from peft_hub.gpu_runtime.lora import load_updates, map_to_base
from peft_hub.gpu_runtime.lora_merge import LoraDelta
from peft_hub.gpu_runtime.materializer import materialize
from peft_hub.gpu_runtime.shard_writer import BufferPool
from peft_hub.gpu_runtime.shards import MappedShard, open_checkpoint
from peft_hub.safetensors_header import read_header_path


def _serial_merge(w: torch.Tensor, left: torch.Tensor, right: torch.Tensor, scale: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """The merge before #15, verbatim: a fresh fp32 block per step."""
    out = torch.empty(w.shape, dtype=dtype)
    step = max(1, (1 << 20) // max(1, w.shape[1]))
    for i in range(0, w.shape[0], step):
        block = w[i:i + step].to(torch.float32)
        block.addmm_(left[i:i + step], right, alpha=scale)
        out[i:i + step] = block
    return out


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A bf16 Llama wide enough that gate/up/down take several row blocks, in several shards."""
    root = tmp_path_factory.mktemp("wide")
    base = tiny_llama(hidden=1024, layers=1).to(torch.bfloat16)
    base.save_pretrained(root / "base", max_shard_size="6MB")
    make_lora(base, root / "lora", r=8, alpha=16)
    return root


def _expected_files(root: Path) -> dict[str, bytes]:
    """Every output shard as the serial merge wrote it."""
    ckpt = open_checkpoint(root / "base")
    _, updates = load_updates(root / "lora")
    mapped = map_to_base(updates, set(ckpt.weight_map))
    files = {}
    for shard, header in ckpt.headers.items():
        tensors = load_file(root / "base" / shard)
        names = [n for n, _ in sorted(header.tensors.items(), key=lambda kv: kv[1].start)]
        parts = []
        for name in names:
            t, upd = tensors[name], mapped.get(name)
            if upd is not None:
                assert upd.lora is not None and upd.replacement is None
                t = _serial_merge(t.clone(), upd.lora.B.float(), upd.lora.A.float(), upd.lora.scale, t.dtype)
            parts.append(bytes(tensor_bytes(t)))
        specs = [(n, ST_DTYPES[tensors[n].dtype], tuple(tensors[n].shape)) for n in names]
        prefix, _ = header_layout(specs, {**header.metadata, "format": "pt"})
        files[shard] = prefix + b"".join(parts)
    return files


@pytest.mark.parametrize("budget", [stream.BUDGET, 1])
def test_output_files_are_the_serial_merges_bytes(wide, tmp_path, monkeypatch, budget):
    monkeypatch.setattr(stream, "BUDGET", budget)  # 1 byte: every tensor waits for the one before
    report = materialize(wide / "base", str(wide / "lora"), tmp_path / "out", device="cpu")
    expected = _expected_files(wide)
    assert len(expected) > 1 and report.merged == 7
    for shard, data in expected.items():
        assert (tmp_path / "out" / shard).read_bytes() == data, shard
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for s in expected for t in load_file(tmp_path / "out" / s).values())


@pytest.mark.parametrize("src_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("transposed", [False, True])
def test_merge_rows_with_buffers_matches_the_serial_merge(src_dtype, out_dtype, transposed):
    torch.manual_seed(0)
    rows, cols, r = 700, 4096, 8  # 256 rows a block: two full blocks and a partial one
    w = torch.randn(rows, cols).to(src_dtype)
    a, b = torch.randn(r, cols if not transposed else rows), torch.randn(cols if transposed else rows, r)
    delta = LoraDelta("m", a, b, scale=0.37)
    left, right = (a.float().T, b.float().T) if transposed else (b.float(), a.float())
    want = _serial_merge(w.clone(), left, right, 0.37, out_dtype)  # it merged fp32 bases in place
    before = w.clone()
    with ThreadPoolExecutor(1) as helper:
        for scratch, lanes in itertools.product((None, torch.empty(10), torch.empty(2 << 20)), (None, helper)):
            out = torch.full(w.shape, 7.0, dtype=out_dtype)
            got = delta.merge_rows(w, transposed=transposed, base_key="k", dtype=out_dtype, out=out,
                                   scratch=scratch, helper=lanes)
            assert got is out and torch.equal(got, want)
            assert torch.equal(w, before)  # read only
            emitted = torch.full(w.shape, 7.0, dtype=out_dtype)
            seen: list[int] = []

            def emit(first: int, block: torch.Tensor, emitted: torch.Tensor = emitted,
                     seen: list[int] = seen) -> None:
                assert block.dtype == out_dtype and block.is_contiguous()
                seen.append(first)
                emitted[first:first + block.shape[0]] = block

            assert delta.merge_rows(w, transposed=transposed, base_key="k", dtype=out_dtype, scratch=scratch,
                                    helper=lanes, emit=emit) is None
            assert torch.equal(emitted, want) and sorted(seen) == [0, 256, 512]  # the same block height
        if src_dtype == out_dtype:
            in_place = w.clone()
            delta.merge_rows(in_place, transposed=transposed, base_key="k", dtype=out_dtype, out=in_place,
                             helper=helper)
            assert torch.equal(in_place, want)


def test_merge_rows_with_a_helper_refuses_bad_shapes_and_leaves_the_helper_free():
    delta = LoraDelta("m", torch.ones(2, 4096), torch.ones(1024, 2), scale=1.0)  # 256 rows a block: 4 blocks
    w = torch.ones(1024, 4096)
    with ThreadPoolExecutor(1) as helper:
        with pytest.raises(ValueError, match="out is"):
            delta.merge_rows(w, transposed=False, base_key="k", dtype=torch.float32, out=torch.empty(2, 2),
                             helper=helper)
        broken = torch.ones(1024, 4096, dtype=torch.float32)[:, :4095]  # shape mismatch inside addmm
        with pytest.raises(IncompatibleAdaptersError):
            delta.merge_rows(broken, transposed=False, base_key="k", dtype=torch.float32, helper=helper)
        assert helper.submit(lambda: 1).result() == 1  # the helper is free again


def test_merge_rows_refuses_an_output_of_another_shape():
    delta = LoraDelta("m", torch.ones(2, 3), torch.ones(4, 2), scale=1.0)
    with pytest.raises(ValueError, match="out is"):
        delta.merge_rows(torch.ones(4, 3), transposed=False, base_key="k", dtype=torch.float32,
                         out=torch.empty(3, 4))


def test_buffer_pool_holds_its_budget_and_wakes_waiters_on_close():
    pool = BufferPool(3 << 20)
    a = pool.take(1 << 20)
    b = pool.take(2 << 20)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(pool.take(1 << 20)))
    waiter.start()
    time.sleep(0.2)
    assert not got  # the budget is in use
    pool.give(a)
    waiter.join(5)
    assert got and got[0] is a  # the freed buffer is reused
    pool.give(b)
    pool.give(got[0])  # type: ignore[arg-type]
    huge = pool.take(64 << 20)  # larger than the budget: allowed, alone
    assert huge.numel() >= 64 << 20
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            pool.take(1)
        except RuntimeError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=blocked)
    waiter.start()
    time.sleep(0.2)
    pool.close()
    waiter.join(5)
    assert not waiter.is_alive() and errors


def test_mapped_shard_reads_views_and_misaligned_tensors(tmp_path):
    path = tmp_path / "odd.safetensors"
    odd = torch.arange(3, dtype=torch.uint8)
    w = torch.randn(5, 7).to(torch.bfloat16)
    prefix, _ = header_layout([("odd", "U8", (3,)), ("w", "BF16", (5, 7))], {})
    path.write_bytes(prefix + bytes(tensor_bytes(odd)) + bytes(tensor_bytes(w)))  # w starts at an odd offset
    header = read_header_path(path)
    with open(path, "rb") as fh:
        shard = MappedShard(fh, header)
        got = shard.tensor(header.tensors["w"])
        shard.prefetch(header.tensors["w"])
        shard.release(header.tensors["w"])
        assert torch.equal(got, w) and torch.equal(shard.tensor(header.tensors["odd"]), odd)
    with safe_open(path, "pt") as f:
        assert torch.equal(f.get_tensor("w"), w)


def test_a_shard_truncated_after_opening_fails_with_one_line_and_no_hang(wide, tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(wide / "base", base)
    ckpt = open_checkpoint(base)
    _, updates = load_updates(wide / "lora")
    mapped = map_to_base(updates, set(ckpt.weight_map))
    last = list(ckpt.headers)[-1]
    with open(base / last, "r+b") as fh:
        fh.truncate((base / last).stat().st_size // 2)
    (tmp_path / "out").mkdir()
    with pytest.raises(InvalidInputError, match="truncated|ended early"):
        stream.stream_merge(ckpt, mapped, tmp_path / "out", dtype=torch.bfloat16, device=torch.device("cpu"))
    assert threading.active_count() < 10


def test_read_ahead_asks_for_every_byte_once_in_chunks_and_stops_at_the_end(tmp_path, monkeypatch):
    from peft_hub.gpu_runtime import shards

    monkeypatch.setattr(shards, "_AHEAD_CHUNK", 4096)  # the kernel honours only read_ahead_kb per call
    w = torch.randn(3000, 7).to(torch.bfloat16)
    prefix, _ = header_layout([("w", "BF16", (3000, 7))], {})
    path = tmp_path / "w.safetensors"
    path.write_bytes(prefix + bytes(tensor_bytes(w)))
    size = path.stat().st_size
    calls: list[tuple[int, int]] = []
    real = shards.os.posix_fadvise

    def recording(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == shards.os.POSIX_FADV_WILLNEED
        calls.append((offset, length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(shards.os, "posix_fadvise", recording)
    header = read_header_path(path)
    with open(path, "rb") as fh:
        shard = MappedShard(fh, header)
        shard.read_ahead(10_000)
        shard.read_ahead(5_000)  # already asked for: nothing more
        shard.read_ahead(size * 10)
        assert torch.equal(shard.tensor(header.tensors["w"]), w)
    assert calls[0] == (0, 4096) and all(n <= 4096 for _, n in calls)
    assert [o for o, _ in calls] == [sum(n for _, n in calls[:i]) for i in range(len(calls))]  # contiguous, no repeats
    assert sum(n for _, n in calls) == size  # up to the end of the file, not beyond


def test_shard_writer_writes_in_any_order_once_each_and_checks_it_is_complete(tmp_path):
    from peft_hub.gpu_runtime.shard_writer import ShardWriter

    a, b = torch.arange(6, dtype=torch.int32).view(2, 3), torch.randn(4, 5).to(torch.bfloat16)
    specs = [("a", "I32", (2, 3)), ("b", "BF16", (4, 5))]
    with ShardWriter(tmp_path / "x.safetensors", specs, {}) as writer:
        offset, nbytes = writer.claim("b")  # the second tensor first, in two pieces
        data = tensor_bytes(b)
        writer.write_at(offset + nbytes // 2, data[nbytes // 2:])
        writer.write_at(offset, data[:nbytes // 2])
        with pytest.raises(RuntimeError, match="written twice"):
            writer.claim("b")
        writer.write("a", a)
    got = load_file(tmp_path / "x.safetensors")
    assert torch.equal(got["a"], a) and torch.equal(got["b"], b)
    with pytest.raises(RuntimeError, match="never written"):
        with ShardWriter(tmp_path / "y.safetensors", specs, {}) as writer:
            writer.write("b", b)
    with pytest.raises(RuntimeError, match="bytes written where"):
        with ShardWriter(tmp_path / "z.safetensors", specs, {}) as writer:
            writer.claim("b")  # claimed, never filled: the file is short
            writer.write("a", a)
    with pytest.raises(RuntimeError, match="bytes written where"):
        with ShardWriter(tmp_path / "w.safetensors", specs, {}) as writer:
            writer.write("a", a)
            offset, nbytes = writer.claim("b")  # its first half never written: the file has its full
            writer.write_at(offset + nbytes // 2, tensor_bytes(b)[nbytes // 2:])  # length, with a hole


def test_a_failing_block_write_leaves_no_output(wide, tmp_path, monkeypatch):
    from peft_hub.gpu_runtime.shard_writer import ShardWriter

    calls = []
    real = ShardWriter.write_at

    def failing(self, offset, data):
        calls.append(offset)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        real(self, offset, data)

    monkeypatch.setattr(ShardWriter, "write_at", failing)
    with pytest.raises(OSError):
        materialize(wide / "base", str(wide / "lora"), tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    assert threading.active_count() < 10


def test_shard_writer_reserves_the_files_blocks_before_writing(tmp_path):
    """The blocks are reserved up front (on ext4, writes then skip delayed allocation's per-page work)."""
    from peft_hub import disk
    from peft_hub.gpu_runtime import shard_writer

    if disk.FALLOCATE is None:
        pytest.skip("no fallocate(2) on this platform")
    probe = tmp_path / "probe"
    with open(probe, "wb") as fh:
        if disk.FALLOCATE(fh.fileno(), disk.FALLOC_FL_KEEP_SIZE, 0, 1 << 20) != 0:
            pytest.skip("this file system does not reserve blocks")
    b = torch.randn(512, 1024).to(torch.bfloat16)  # 1 MiB
    with shard_writer.ShardWriter(tmp_path / "x.safetensors", [("b", "BF16", (512, 1024))], {}) as writer:
        path = writer.path
        writer._reserving.join()  # it runs beside the first writes
        assert path.stat().st_blocks * 512 >= 1 << 20  # reserved, nothing of b written yet
        assert path.stat().st_size < 1 << 20  # the size is still only what was written (the header)
        writer.write("b", b)
    assert torch.equal(load_file(path)["b"], b)
