"""Hostile adapter files against the hub's publish checks and compose.

Every byte of a safetensors header and every field of adapter_config.json is
the attacker's. Each case is built byte by byte and must end in one
peft-hub error (never a traceback, a hang or an allocation the size of an
attacker's number), with nothing written; what is valid must still compose.
The hub's checks are the first line, compose the second: it reads local
directories that may never have passed them.
"""

from __future__ import annotations

import io
import json
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from peft_hub.adapter import parse_config
from peft_hub.compose import compose_dirs
from peft_hub.errors import (
    ComposeError,
    IncompatibleAdaptersError,
    InvalidAdapterError,
    PeftHubError,
    UnsafeFormatError,
    UnsupportedAdapterError,
)
from peft_hub.safetensors_header import MAX_HEADER_BYTES, read_header

P = "base_model.model."
A, B = f"{P}m.q_proj.lora_A.weight", f"{P}m.q_proj.lora_B.weight"


def st(tensors: dict[str, Any], *, metadata: Any = None, raw_header: bytes | None = None, data: bytes = b"") -> bytes:
    """A safetensors file: arrays become F32 (or their dtype) entries; raw entries are written as given."""
    header: dict[str, Any] = {} if metadata is None else {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, value in tensors.items():
        if isinstance(value, np.ndarray):
            raw = np.ascontiguousarray(value).tobytes()
            code = {"float32": "F32", "float16": "F16", "bool": "BOOL", "int64": "I64"}[str(value.dtype)]
            header[name] = {"dtype": code, "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
            blobs.append(raw)
            offset += len(raw)
        else:
            header[name] = value
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(blobs) + data


def factors(r: int = 2, d: int = 4, k: int = 4, seed: int = 0, module: str = "m.q_proj") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"{P}{module}.lora_A.weight": rng.standard_normal((r, k)).astype(np.float32),
            f"{P}{module}.lora_B.weight": rng.standard_normal((d, r)).astype(np.float32)}


def lora(path: Path, weights: bytes | None = None, **config: Any) -> Path:
    """An adapter directory: a rank-2 LoRA config (fields replaced by ``config``; None removes one)."""
    path.mkdir(parents=True)
    body = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
            "base_model_name_or_path": "tiny", **config}
    body = {k: v for k, v in body.items() if v is not None}
    (path / "adapter_config.json").write_text(json.dumps(body))
    (path / "adapter_model.safetensors").write_bytes(st(factors()) if weights is None else weights)
    return path


def refused(tmp_path: Path, inputs: list[Path], error: type[PeftHubError] = PeftHubError, **options: Any) -> str:
    """Compose ``inputs``; it must raise ``error`` fast and write nothing. Returns the message."""
    out = tmp_path / "out"
    start = time.perf_counter()
    with pytest.raises(error) as caught:
        compose_dirs(inputs, None, out, force=True, **options)
    assert time.perf_counter() - start < 5
    assert not out.exists() and not list(tmp_path.glob(".out.*"))  # no output, no staging left
    assert "\n" not in caught.value.message
    return caught.value.message


# --- 1. safetensors headers -----------------------------------------------------------------

E = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
DEEP = 100_000
HOSTILE_HEADERS: dict[str, bytes] = {
    "seven bytes": b"\x10\x00\x00\x00\x00\x00\x00",
    "length 2^63": struct.pack("<Q", 1 << 63) + b"{}",
    "length just above the cap": struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{" + b" " * 64,
    "length beyond the file": struct.pack("<Q", 4096) + b'{"a": 1}',
    "length zero": struct.pack("<Q", 0) + b"\0" * 8,
    "not UTF-8 name": st({}, raw_header=b'{"\xff\xfe": ' + json.dumps(E).encode() + b"}", data=b"\0" * 8),
    "unpaired surrogate name": st({}, raw_header=b'{"a\\ud800": ' + json.dumps(E).encode() + b"}", data=b"\0" * 8),
    "unpaired surrogate metadata": st({"a": E}, metadata={"k": "\udc00"}, data=b"\0" * 8),
    "duplicate keys": st({}, raw_header=b'{"a": ' + json.dumps(E).encode() + b', "a": '
                         + json.dumps(E).encode() + b"}", data=b"\0" * 8),
    "offsets past the data": st({"a": {**E, "data_offsets": [0, 8]}}, data=b"\0" * 4),
    "overlapping tensors": st({"a": E, "b": E}, data=b"\0" * 8),
    "a gap": st({"a": {**E, "data_offsets": [8, 16]}}, data=b"\0" * 16),
    "trailing bytes": st({"a": E}, data=b"\0" * 12),
    "size not shape x dtype": st({"a": {**E, "shape": [3]}}, data=b"\0" * 8),
    "reversed offsets": st({"a": {**E, "data_offsets": [8, 0]}}, data=b"\0" * 8),
    "negative offset": st({"a": {**E, "data_offsets": [-8, 0]}}, data=b"\0" * 8),
    "float offsets": st({"a": {**E, "data_offsets": [0.0, 8.0]}}, data=b"\0" * 8),
    "F8 (not a dtype)": st({"a": {**E, "dtype": "F8"}}, data=b"\0" * 8),
    "complex": st({"a": {**E, "dtype": "C64", "shape": [1]}}, data=b"\0" * 8),
    "lower-case dtype": st({"a": {**E, "dtype": "f32"}}, data=b"\0" * 8),
    "dtype as a number": st({"a": {**E, "dtype": 7}}, data=b"\0" * 8),
    "shape product overflows int64": st({"a": {**E, "shape": [1 << 48, 1 << 48, 1 << 48]}}, data=b"\0" * 8),
    "negative dim": st({"a": {**E, "shape": [-2, -1]}}, data=b"\0" * 8),
    "bool dim": st({"a": {**E, "shape": [True, 2]}}, data=b"\0" * 8),
    "17 dims": st({"a": {**E, "shape": [1] * 17}}, data=b"\0" * 4),
    "an extra field": st({"a": {**E, "x": 1}}, data=b"\0" * 8),
    "metadata is a list": st({"a": E}, metadata=[], data=b"\0" * 8),
    "metadata is an empty string": st({"a": E}, metadata="", data=b"\0" * 8),
    "metadata is zero": st({"a": E}, metadata=0, data=b"\0" * 8),
    "metadata is false": st({"a": E}, metadata=False, data=b"\0" * 8),
    "metadata value not a string": st({"a": E}, metadata={"k": 1}, data=b"\0" * 8),
    "deep JSON": st({}, raw_header=b'{"__metadata__": {"a": ' + b"[" * DEEP + b"]" * DEEP + b"}}"),
    "a header that is a list": st({}, raw_header=b"[1]"),
    "a pickle": b"\x80\x04\x95" + b"\0" * 64,
}


@pytest.mark.parametrize("case", list(HOSTILE_HEADERS))
def test_hostile_headers_are_refused_at_publish_and_by_compose(tmp_path, case):
    raw = HOSTILE_HEADERS[case]
    start = time.perf_counter()
    with pytest.raises(InvalidAdapterError) as caught:  # UnsafeFormatError is one too
        read_header(io.BytesIO(raw), len(raw), name="adapter_model.safetensors")
    assert time.perf_counter() - start < 1
    assert "\n" not in caught.value.message and len(caught.value.message) < 400
    assert case != "a pickle" or isinstance(caught.value, UnsafeFormatError)
    refused(tmp_path, [lora(tmp_path / "a", raw)], InvalidAdapterError)


@pytest.mark.parametrize("case", ["unpaired surrogate name", "unpaired surrogate metadata", "metadata is a list",
                                  "metadata is an empty string", "metadata is zero", "metadata is false"])
def test_what_the_hub_stores_the_safetensors_library_can_open(tmp_path, case):
    """These headers passed the hub's checks, yet no safetensors loader opens them: the hub
    stored files that every client's compose or PEFT load then failed on with a traceback."""
    path = tmp_path / "w.safetensors"
    path.write_bytes(HOSTILE_HEADERS[case])
    with pytest.raises(Exception, match="deserializing header"):
        safe_open(str(path), framework="pt")
    with pytest.raises(InvalidAdapterError, match="surrogate|__metadata__"):
        read_header(io.BytesIO(HOSTILE_HEADERS[case]), path.stat().st_size)


def test_valid_odd_headers_still_pass(tmp_path):
    """Null metadata, zero-size and 0-d tensors, and names outside the BMP are valid safetensors."""
    head = json.dumps({"__metadata__": None, "\U0001f600": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
                       "empty": {"dtype": "F16", "shape": [0, 1 << 40], "data_offsets": [4, 4]}}).encode()
    raw = st({}, raw_header=head, data=b"\0" * 4)
    header = read_header(io.BytesIO(raw), len(raw))
    assert set(header.tensors) == {"\U0001f600", "empty"} and header.metadata == {}
    path = tmp_path / "x.safetensors"
    path.write_bytes(raw)
    assert set(load_file(path)) == {"\U0001f600", "empty"}


# --- 2. LoRA shape lies -----------------------------------------------------------------------

Z = np.zeros


SHAPE_LIES: dict[str, tuple[Any, dict[str, Any], type[PeftHubError]]] = {
    "A's rank is not r": ({A: Z((3, 4), np.float32), B: Z((4, 2), np.float32)}, {}, InvalidAdapterError),
    "B's rank is not r": ({A: Z((2, 4), np.float32), B: Z((4, 3), np.float32)}, {}, InvalidAdapterError),
    "A and B agree, r does not": ({A: Z((8, 4), np.float32), B: Z((4, 8), np.float32)}, {}, InvalidAdapterError),
    "A without B": ({A: Z((2, 4), np.float32)}, {}, InvalidAdapterError),
    "B without A": ({B: Z((4, 2), np.float32)}, {}, InvalidAdapterError),
    "0-d A": ({A: Z((), np.float32), B: Z((4, 2), np.float32)}, {}, InvalidAdapterError),
    "1-d A": ({A: Z((2,), np.float32), B: Z((4, 2), np.float32)}, {}, InvalidAdapterError),
    "B with a 3x3 kernel": ({A: Z((2, 4, 3, 3), np.float32), B: Z((4, 2, 3, 3), np.float32)}, {},
                            UnsupportedAdapterError),
    "not a LoRA tensor": ({**factors(), f"{P}m.q_proj.weight": Z((4, 4), np.float32)}, {}, UnsupportedAdapterError),
    "r = 0": ({A: Z((0, 4), np.float32), B: Z((4, 0), np.float32)}, {"r": 0}, InvalidAdapterError),
    "r negative": (factors(), {"r": -2}, InvalidAdapterError),
    "r = 10^9": (factors(), {"r": 10**9}, InvalidAdapterError),
    "r = true": ({A: Z((1, 4), np.float32), B: Z((4, 1), np.float32)}, {"r": True}, InvalidAdapterError),
    "r missing": (factors(), {"r": None}, InvalidAdapterError),
    "lora_alpha missing": (factors(), {"lora_alpha": None}, InvalidAdapterError),
    "a rank_pattern rank of 0": ({A: Z((0, 4), np.float32), B: Z((4, 0), np.float32)},
                                 {"rank_pattern": {"q_proj": 0}}, InvalidAdapterError),
    "BOOL factors": ({A: Z((2, 4), bool), B: Z((4, 2), bool)}, {}, UnsupportedAdapterError),
    "I64 factors": ({A: Z((2, 4), np.int64), B: Z((4, 2), np.int64)}, {}, UnsupportedAdapterError),
    "F4 factors": ({A: {"dtype": "F4", "shape": [2, 4], "data_offsets": [0, 4]},
                    B: {"dtype": "F4", "shape": [4, 2], "data_offsets": [4, 8]}}, {}, UnsupportedAdapterError),
    "F8_E8M0 factors": ({A: {"dtype": "F8_E8M0", "shape": [2, 4], "data_offsets": [0, 8]},
                         B: {"dtype": "F8_E8M0", "shape": [4, 2], "data_offsets": [8, 16]}}, {},
                        UnsupportedAdapterError),
}


@pytest.mark.parametrize("case", list(SHAPE_LIES))
def test_lora_shape_lies_are_one_clear_error(tmp_path, case):
    tensors, config, error = SHAPE_LIES[case]
    nbytes = max((t["data_offsets"][1] for t in tensors.values() if isinstance(t, dict)), default=0)
    refused(tmp_path, [lora(tmp_path / "a", st(tensors, data=b"\0" * nbytes), **config)], error)


def test_two_adapters_that_disagree_on_a_modules_shape_are_refused(tmp_path):
    message = refused(tmp_path, [lora(tmp_path / "a"), lora(tmp_path / "b", st(factors(k=8)))],
                      IncompatibleAdaptersError)
    assert "m.q_proj" in message and "do not match" in message


def test_a_claimed_module_of_2_20_squared_is_refused_before_a_dense_merge_allocates_it(tmp_path):
    """16 MB of factors claim a (2^20, 2^20) delta: TIES would ask for 4 TiB per adapter."""
    n = 1 << 20
    huge = st({A: np.zeros((2, n), np.float16), B: np.zeros((n, 2), np.float16)})
    message = refused(tmp_path, [lora(tmp_path / "a", huge)], ComposeError, method="ties", density=0.5, rank=2)
    assert "1048576 x 1048576" in message and "GiB" in message
    compose_dirs([tmp_path / "a"], None, tmp_path / "exact")  # stack works from the factors at any size
    assert load_file(tmp_path / "exact" / "adapter_model.safetensors")[A].shape == (2, n)


def test_conv_factors_of_five_dims_compose_exactly(tmp_path):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 4, 1, 1, 1)).astype(np.float32), rng.standard_normal((4, 2, 1, 1, 1)).astype(
        np.float32)
    compose_dirs([lora(tmp_path / "a", st({A: a, B: b}))], [3.0], tmp_path / "out")
    out = load_file(tmp_path / "out" / "adapter_model.safetensors")
    got = out[B].reshape(4, -1).double() @ out[A].reshape(out[A].shape[0], -1).double()
    want = 3.0 * 2 * torch.from_numpy(b.reshape(4, 2)).double() @ torch.from_numpy(a.reshape(2, 4)).double()
    assert torch.allclose(got, want, atol=1e-5)


# --- 3. adapter_config.json --------------------------------------------------------------------

#: Regexes PEFT runs with Python's re (fullmatch for target_modules, re.match for the pattern keys).
REDOS = ["(.*.*)*z", "(a|aa)+$", "(q|q_)+x", ".*.*.*.*.*.*z", "a?" * 40 + "a" * 40]


@pytest.mark.parametrize("pattern", REDOS)
@pytest.mark.parametrize("field", ["target_modules", "exclude_modules", "modules_to_save"])
def test_a_catastrophic_regex_for_peft_is_refused_at_publish(field, pattern):
    value = [pattern] if field == "modules_to_save" else pattern
    body = json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, field: value}).encode()
    start = time.perf_counter()
    with pytest.raises(InvalidAdapterError, match=field):
        parse_config(body)
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize("pattern", [r".*\.(q_proj|v_proj)", r"^(?!.*vision_tower).*(q_proj|v_proj)$",
                                     r".*decoder.*(SelfAttention|EncDecAttention).*(q|k|v|o)$",
                                     r"model\.layers\.\d+\.self_attn\.[qkv]_proj", "all-linear"])
def test_ordinary_regex_targets_are_still_accepted(pattern):
    assert parse_config(json.dumps({"peft_type": "LORA", "r": 2, "target_modules": pattern}).encode())


def test_a_catastrophic_rank_pattern_key_for_peft_is_refused_at_publish():
    with pytest.raises(InvalidAdapterError):
        parse_config(json.dumps({"peft_type": "LORA", "r": 2, "rank_pattern": {"(a|aa)+$": 4}}).encode())


@pytest.mark.parametrize("fields", [
    {"lora_alpha": float("nan")}, {"lora_alpha": float("inf")}, {"lora_alpha": 1e13}, {"lora_alpha": "16"},
    {"lora_alpha": [16]}, {"alpha_pattern": {"q_proj": float("-inf")}}, {"peft_type": "LORA2"},
    {"peft_type": None}, {"x": json.loads("[" * 100 + "]" * 100)}, {"r": 2**40},
])
def test_hostile_config_fields_are_refused_by_compose(tmp_path, fields):
    refused(tmp_path, [lora(tmp_path / "a", **fields)], InvalidAdapterError)


def test_huge_lists_and_strings_in_a_config_cost_little_and_do_not_reach_the_output(tmp_path):
    blob = "x" * (4 << 20)
    adapter = lora(tmp_path / "a", layers_to_transform=list(range(1_000_000)), notes=blob)
    start = time.perf_counter()
    compose_dirs([adapter], None, tmp_path / "out")
    assert time.perf_counter() - start < 5
    config = (tmp_path / "out" / "adapter_config.json").read_text()
    assert blob not in config and len(config) < 4096
    assert json.loads(config)["target_modules"] == ["m.q_proj"]  # narrowed inputs list their modules


# --- 4. NaN and infinity ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", [{}, {"method": "svd", "rank": 1}, {"method": "ties", "density": 0.5, "rank": 1}],
                         ids=["stack", "svd", "ties"])
def test_non_finite_factors_are_refused_naming_the_adapter(tmp_path, value, method):
    bad = factors(seed=1)
    bad[B][1, 1] = value
    message = refused(tmp_path, [lora(tmp_path / "good"), lora(tmp_path / "bad", st(bad))], InvalidAdapterError,
                      **method)
    assert str(tmp_path / "bad") in message and "NaN or infinite" in message


def test_a_sum_that_overflows_fp16_is_refused_not_written_as_infinity(tmp_path):
    big = factors()
    big[B][:] = 60000.0  # times the scale lora_alpha / r = 2: above fp16's 65504
    adapter = lora(tmp_path / "a", st({k: v.astype(np.float16) for k, v in big.items()}))
    message = refused(tmp_path, [adapter], ComposeError)
    assert "overflow fp16" in message and "--dtype fp32" in message
    compose_dirs([adapter], None, tmp_path / "wide", dtype="fp32")
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "wide" / "adapter_model.safetensors").values())


def test_a_failure_at_the_last_module_leaves_no_half_written_output(tmp_path):
    """The first modules were already written into the staging file when the last one fails."""
    tensors = {**factors(module="a.q_proj"), **factors(module="b.q_proj"), **factors(module="z.q_proj")}
    tensors[f"{P}z.q_proj.lora_A.weight"][0, 0] = np.nan
    refused(tmp_path, [lora(tmp_path / "a", st(tensors))], InvalidAdapterError)
