"""Bounded JSON and YAML loading for everything a user sends.

Python's parsers recurse once per nesting level, so a few kilobytes of ``[``
raise RecursionError (or, in a C extension, can exhaust the C stack), and a
YAML alias "bomb" expands a 1 KiB card into gigabytes. Here the nesting depth
is measured before parsing, in linear time, and YAML is scanned event by
event (aliases expanded by weight only, never built) before it is loaded.
Only the standard library and PyYAML: the client imports this too.
"""

from __future__ import annotations

import base64
import json
import math
import operator
import re
from collections.abc import Callable
from datetime import date, datetime
from itertools import accumulate
from typing import Any

from peft_hub.errors import InvalidInputError

MAX_DEPTH = 64
#: Digits accepted in one JSON integer (int64 needs 19; more is never a size or a rank).
MAX_INT_DIGITS = 32

# A JSON string token; the unrolled loop keeps Python's regex engine linear.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
# Openers weigh 2 and closers 0: the running sum minus the position is the depth.
_WEIGHT = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
# Every digit becomes "0" and every other byte "."; then a run of too many
# digits is a plain substring search (a regex for it costs more than the parse).
_DIGITS = bytes(ord("0") if chr(b).isascii() and chr(b).isdigit() else ord(".") for b in range(256))
_LONG_RUN = b"0" * (MAX_INT_DIGITS + 1)
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text, in linear time.

    Brackets inside strings (escaped quotes included) do not count. On text
    that is not JSON the figure is an upper bound up to the first error, which
    is as far as a parser would recurse.
    """
    opened = raw.count(b"[") + raw.count(b"{")
    if opened <= 1:
        return opened
    weights = _outside_strings(raw).translate(None, _NOT_BRACKET).translate(_WEIGHT)
    if not weights:
        return 0
    return max(0, max(map(operator.sub, accumulate(weights), range(1, len(weights) + 1))))


def _outside_strings(raw: bytes) -> bytes:
    """``raw`` without its JSON strings, as ``_STRING.sub(b"", raw)`` leaves it.

    With no backslash in the text every string runs from one quote to the
    next, so a split on quotes (in C) finds them: every other piece is a
    string's body, and a last, unpaired quote opens none (the regex leaves
    it and what follows it). Text with escapes takes the regex.
    """
    if b"\\" in raw:
        return _STRING.sub(b"", raw)
    pieces = raw.split(b'"')
    outside = pieces[::2]
    if len(pieces) % 2 == 0:  # an odd number of quotes
        outside.append(b'"' + pieces[-1])
    return b"".join(outside)


def check_depth(raw: bytes, *, max_depth: int = MAX_DEPTH, what: str = "the JSON",
                error: type[InvalidInputError] = InvalidInputError) -> None:
    """Refuse JSON nested deeper than ``max_depth``; cheap when there are few brackets."""
    if raw.count(b"[") + raw.count(b"{") > max_depth and json_depth(raw) > max_depth:
        raise error(f"{what} is nested more than {max_depth} levels deep")


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:32]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits is out of range")
    return int(text)


def loads_json(
    data: bytes | str,
    *,
    max_depth: int = MAX_DEPTH,
    what: str = "the JSON",
    error: type[InvalidInputError] = InvalidInputError,
    strict_strings: bool = False,
    allow_nan: bool = False,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """Parse JSON from a user, refusing what the standard parser would choke on.

    Args:
        data: UTF-8 bytes or text.
        max_depth: the deepest nesting of arrays and objects allowed.
        what: how to name the input in error messages ("adapter_config.json").
        error: the class to raise (e.g. InvalidAdapterError).
        strict_strings: also refuse NUL and unpaired surrogates in strings
            and keys (text that a database column cannot hold).
        allow_nan: accept NaN and infinities, as Python's own ``json.dump``
            writes them (for files that are only checked, never stored).
        object_pairs_hook: passed to :func:`json.loads`.

    Returns:
        The parsed value. NaN, Infinity and numbers that overflow a float
        (unless ``allow_nan``) and integers of more than 32 digits are refused.

    Raises:
        ``error``: naming ``what`` and the problem, in one line.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    check_depth(raw, max_depth=max_depth, what=what, error=error)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} is not valid UTF-8") from None
    # Only a run of more digits than MAX_INT_DIGITS can make an integer out of
    # range; without one, integers are parsed in C (no Python call each: a
    # safetensors header holds thousands).
    parse_int = _bounded_int if _LONG_RUN in raw.translate(_DIGITS) else None
    try:
        value = json.loads(text, parse_constant=None if allow_nan else _refuse_constant,
                           parse_float=None if allow_nan else _finite_float,
                           parse_int=parse_int, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise error(f"{what} is not valid JSON: {one_line(str(exc), 200)}") from None
    if strict_strings:
        check_strings(value, what=what, error=error)
    return value


def text_problem(value: str) -> str | None:
    """Why a string cannot be stored as text (NUL, unpaired surrogates), or None."""
    if "\x00" in value:
        return "contains a NUL character"
    if not value.isascii() and _SURROGATE.search(value):
        return "contains an unpaired surrogate (not valid Unicode)"
    return None


def name_problem(value: str, max_length: int) -> str | None:
    """Why a short name (a path, a tag, a model id) is refused, or None."""
    if len(value) > max_length:
        return f"is longer than {max_length} characters"
    if _CONTROL.search(value):
        return "contains a control character"
    return text_problem(value)


def check_strings(value: Any, *, what: str, error: type[InvalidInputError] = InvalidInputError) -> None:
    """Refuse NUL and unpaired surrogates anywhere in a parsed JSON value (keys too)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                raise error(f"{what}: a string {problem}")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def one_line(text: str, limit: int = 500) -> str:
    """``text`` on one line (control characters become spaces), at most ``limit`` characters."""
    flat = " ".join(_CONTROL.sub(" ", text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- YAML ---------------------------------------------------------------------


def _loader() -> type:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def yaml_bounds(text: str, *, max_depth: int = MAX_DEPTH, max_aliases: int = 100,
                max_expansion: float = 4.0, what: str = "the YAML") -> None:
    """Check a YAML document's shape from its parser events, before anything is built.

    Each node has a weight (a scalar: its length plus one; a collection: one
    plus its children) and a height; an alias counts the full weight and
    height of the node it names. The document is refused when it nests deeper
    than ``max_depth`` (aliases included), uses more than ``max_aliases``
    aliases or a recursive one, or expands to more than ``max_expansion``
    times its own length (plus 4 KiB).

    Raises:
        InvalidInputError: naming ``what`` and the problem.
    """
    import yaml

    budget = max_expansion * len(text) + 4096
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (weight, height)
    stack: list[list[Any]] = [[None, 0, 0]]  # [anchor, weight, height of children]
    aliases = total = 0

    def add(weight: int, height: int) -> None:
        nonlocal total
        frame = stack[-1]
        frame[1] += weight
        frame[2] = max(frame[2], height)
        total += weight
        if total > budget:
            raise InvalidInputError(f"{what} expands to more than {max_expansion:g} times its size (aliases)")
        if len(stack) - 1 + height > max_depth:
            raise InvalidInputError(f"{what} is nested more than {max_depth} levels deep")

    try:
        for event in yaml.parse(text, Loader=_loader()):
            if isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > max_aliases:
                    raise InvalidInputError(f"{what} uses more than {max_aliases} aliases")
                if any(frame[0] == event.anchor for frame in stack):
                    raise InvalidInputError(f"{what} has a recursive alias *{one_line(str(event.anchor), 64)}")
                weight, height = anchors.get(event.anchor or "", (1, 0))  # an alias always names its anchor
                add(weight, height)
            elif isinstance(event, yaml.ScalarEvent):
                add(len(event.value) + 1, 0)
                if event.anchor is not None:
                    anchors[event.anchor] = (len(event.value) + 1, 0)
            elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                stack.append([event.anchor, 1, 0])
                if len(stack) - 1 > max_depth:
                    raise InvalidInputError(f"{what} is nested more than {max_depth} levels deep")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                anchor, weight, height = stack.pop()
                total -= weight - 1  # the children were counted as they came
                add(weight, height + 1)
                if anchor is not None:
                    anchors[anchor] = (weight, height + 1)
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{what} is not valid YAML: {_yaml_problem(exc)}") from None


def _yaml_problem(exc: Exception) -> str:
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return one_line(f"{problem}{where}", 300)


def load_yaml(
    text: str,
    *,
    max_depth: int = MAX_DEPTH,
    max_aliases: int = 100,
    max_expansion: float = 4.0,
    what: str = "the YAML",
    error: type[InvalidInputError] = InvalidInputError,
) -> Any:
    """Load one YAML document with the safe loader, bounded in depth and expansion.

    The result is plain JSON data (str keys; dates as ISO strings; sets and
    tuples as lists; bytes as base64; NaN and infinities as strings; text
    that is not valid Unicode repaired), so any response can carry it.

    Args:
        text: the YAML.
        max_depth: deepest nesting allowed, counting what aliases expand to.
        max_aliases: most aliases (``*name``, merge keys included) allowed.
        max_expansion: most the expanded document may weigh, as a multiple of ``len(text)``.
        what: how to name the input in error messages.
        error: the class to raise.

    Raises:
        ``error``: the YAML is invalid or outside the bounds.
    """
    import yaml

    try:
        yaml_bounds(text, max_depth=max_depth, max_aliases=max_aliases, max_expansion=max_expansion, what=what)
        data = yaml.load(text, Loader=_loader())  # a SafeLoader (see _loader): no Python objects
    except InvalidInputError as exc:
        raise error(exc.message) from None
    except yaml.YAMLError as exc:
        raise error(f"{what} is not valid YAML: {_yaml_problem(exc)}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. an int of 5000 digits
        raise error(f"{what} has a value out of range: {one_line(str(exc), 200)}") from None
    return json_compatible(data)


def json_compatible(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` always accepts."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8") if text_problem(value) else value
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(json_compatible(k)): json_compatible(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_compatible(v) for v in value]
    return str(value)
