"""The cheaper JSON guards decide exactly as the ones they replace.

``safeparse.json_depth`` strips strings with a split on quotes when the text
has no backslash, ``loads_json`` parses integers in C unless a run of more
than 32 digits appears, and the safetensors header's duplicate-key hook
builds its dict in C. Each is checked here against the former code (kept
below as the reference) on hand-picked and random inputs: the same depth,
the same value, the same refusal and message.
"""

from __future__ import annotations

import json
import operator
import random
import re
import struct
from itertools import accumulate

import pytest

from peft_hub.errors import InvalidAdapterError, InvalidInputError
from peft_hub.safeparse import MAX_DEPTH, json_depth, loads_json
from peft_hub.safetensors_header import read_header

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_WEIGHT = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def reference_depth(raw: bytes) -> int:
    """json_depth as it was: strings removed by the regex alone."""
    opened = raw.count(b"[") + raw.count(b"{")
    if opened <= 1:
        return opened
    weights = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET).translate(_WEIGHT)
    if not weights:
        return 0
    return max(0, max(map(operator.sub, accumulate(weights), range(1, len(weights) + 1))))


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 32:
        raise ValueError(f"an integer of {len(text)} digits is out of range")
    return int(text)


def reference_loads(data: bytes) -> object:
    """loads_json's parse as it was: every integer through the Python check."""
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and reference_depth(data) > MAX_DEPTH:
        raise InvalidInputError(f"the JSON is nested more than {MAX_DEPTH} levels deep")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError("the JSON is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_refuse, parse_float=_finite, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"the JSON is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"the JSON is not valid JSON: {exc}") from None


def _refuse(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:32]} is out of range")
    return value


def _outcome(parse, data: bytes) -> tuple[str, object]:
    try:
        return "ok", parse(data)
    except InvalidInputError as exc:
        return "refused", exc.message


ALPHABET = [b"[", b"]", b"{", b"}", b'"', b"\\", b"a", b":", b",", b" ", b"1", b'\\"', b"\\\\", b"0" * 20]

SAMPLES = [
    b"", b"[", b"[[", b'"', b'"[', b'["', b'"["[', b'[["]]"', b'["a"]["', b'{"a": "b" "[[[', b']["x"[',
    b'"\\"[[[["', b'["\\\\"[[', b'{"k": "[{", "v": [[[]]]}', b"[" * 70 + b"]" * 70,
    b'["' + b"[" * 70 + b'"]', b'[[["]]]', b'"""[[[', b'""[[[', b"[[[" + b'"' * 3 + b"]]]",
]


@pytest.mark.parametrize("raw", SAMPLES)
def test_depth_matches_the_regex_on_hand_picked_texts(raw):
    assert json_depth(raw) == reference_depth(raw)


def test_depth_matches_the_regex_on_random_texts():
    rng = random.Random(8)
    for _ in range(20_000):
        raw = b"".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 40)))
        assert json_depth(raw) == reference_depth(raw), raw


INTS = [
    b"[" + b"9" * 32 + b"]", b"[" + b"9" * 33 + b"]", b"[-" + b"9" * 32 + b"]", b"[-" + b"9" * 33 + b"]",
    b'["' + b"9" * 40 + b'"]', b'{"' + b"1" * 40 + b'": 5}', b"[0." + b"1" * 40 + b"]", b"[1e" + b"0" * 40 + b"1]",
    b"[" + b"9" * 5000 + b"]", b"[1, 2, " + b"3" * 33 + b", {bad]", b"[1, {bad, " + b"3" * 33 + b"]",
    b"[" + b"1" * 33 + b".5]", b"[NaN, 1]", b"[1e999]", b'{"a": 1, "a": 2}', b"[" + b"0" * 33 + b"]",
]


@pytest.mark.parametrize("raw", INTS)
def test_integers_are_refused_and_kept_as_before(raw):
    assert _outcome(loads_json, raw) == _outcome(reference_loads, raw)


def test_random_documents_parse_and_refuse_as_before():
    rng = random.Random(15)
    pieces = [b"1", b"-7", b"9" * 33, b"9" * 31, b"1.5", b"1e5", b'"s"', b'"' + b"8" * 40 + b'"', b"[", b"]",
              b"{", b"}", b'"k":', b",", b"null", b"NaN", b"2" * 12]
    for _ in range(5_000):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 16)))
        assert _outcome(loads_json, raw) == _outcome(reference_loads, raw), raw


def _header_file(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + b"\x00" * 4


def test_duplicate_header_keys_are_named_as_before():
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    raw = _header_file(f'{{"t": {entry}, "u": {entry}, "t": {entry}}}'.encode())
    with pytest.raises(InvalidAdapterError, match="duplicate key 't'"):
        read_header(_io(raw), len(raw))
    nested = _header_file(b'{"t": {"dtype": "F32", "shape": [1], "shape": [1], "data_offsets": [0, 4]}}')
    with pytest.raises(InvalidAdapterError, match="duplicate key 'shape'"):
        read_header(_io(nested), len(nested))
    header = read_header(_io(_header_file(f'{{"t": {entry}}}'.encode())), 8 + len(f'{{"t": {entry}}}') + 4)
    assert list(header.tensors) == ["t"] and header.tensors["t"].end == 4


def test_a_large_header_parses_to_the_same_tensors():
    tensors, offset = {}, 0
    for i in range(800):
        tensors[f"base_model.model.layers.{i}.lora_A.weight"] = {"dtype": "F16", "shape": [16, 4096],
                                                                 "data_offsets": [offset, offset + 16 * 4096 * 2]}
        offset += 16 * 4096 * 2
    text = json.dumps(tensors).encode()
    assert loads_json(text) == reference_loads(text) == tensors
    header = read_header(_io(struct.pack("<Q", len(text)) + text), 8 + len(text) + offset)
    assert [t.name for t in header.tensors.values()] == list(tensors)


def _io(data: bytes):
    import io

    return io.BytesIO(data)
