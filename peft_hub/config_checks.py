"""What ``adapter_config.json`` and a lineage record may hold, checked field
by field, and PEFT's ``rank_pattern`` rule evaluated with linear-time regexes.

Everything here comes from a user's files, and parts of it end up in database
columns and search indexes, so each field the registry reads is checked for
its JSON type and range first: a list where a string belongs, a rank of 10**30
or ``true`` for an integer is a clear :class:`InvalidAdapterError`, never a
TypeError or an overflow later. The pattern keys are regular expressions from
the user; they run on RE2, so ``(a|a)+$`` costs what any other key costs.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from peft_hub.errors import InvalidAdapterError
from peft_hub.safeparse import name_problem, text_problem

CONFIG_NAME = "adapter_config.json"
#: Ranks above this are refused (the search columns are 32-bit integers).
MAX_RANK = 1 << 20
MAX_ALPHA = 1e12
MAX_VIRTUAL_TOKENS = 1 << 20
MAX_PATTERNS = 1024
MAX_PATTERN_CHARS = 512
MAX_TARGETS = 4096
#: Regex evaluations one check may cost: distinct modules x non-literal keys (about 1 µs each).
MAX_PATTERN_WORK = 1_000_000
#: Memory RE2 may use for one compiled key.
RE2_MAX_MEM = 1 << 20

_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A key that is a plain name once escapes are removed ("q_proj", re.escape(name)).
_LITERAL = re.compile(r"(?:[A-Za-z0-9_]|\\[^A-Za-z0-9\s])+")
_UNESCAPE = re.compile(r"\\(.)", re.S)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and abs(value) <= MAX_ALPHA)


def _text(config: dict[str, Any], key: str, limit: int, what: str) -> None:
    value = config.get(key)
    if value is None:
        return
    problem = "is not a string" if not isinstance(value, str) else name_problem(value, limit)
    if problem:
        raise InvalidAdapterError(f"{what}: {key} {problem}")


def _rank(value: Any, key: str, *, minimum: int = 0) -> None:
    if not _is_int(value) or not minimum <= value <= MAX_RANK:
        raise InvalidAdapterError(f"{CONFIG_NAME}: {key} must be an integer from {minimum} to {MAX_RANK}")


def check_config(config: dict[str, Any]) -> None:
    """Check the type and range of every field the registry reads from a config.

    Raises:
        InvalidAdapterError: naming the field.
    """
    method = config.get("peft_type")
    _text(config, "base_model_name_or_path", 512, CONFIG_NAME)
    _text(config, "task_type", 64, CONFIG_NAME)
    if config.get("r") is not None:
        _rank(config["r"], "r", minimum=1 if method == "LORA" else 0)
    for key in ("lora_alpha", "alpha"):
        if config.get(key) is not None and not _is_number(config[key]):
            raise InvalidAdapterError(f"{CONFIG_NAME}: {key} must be a finite number up to {MAX_ALPHA:g}")
    for key in ("use_rslora", "use_dora"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            raise InvalidAdapterError(f"{CONFIG_NAME}: {key} must be true or false")
    tokens = config.get("num_virtual_tokens")
    if tokens is not None and (not _is_int(tokens) or not 0 <= tokens <= MAX_VIRTUAL_TOKENS):
        raise InvalidAdapterError(
            f"{CONFIG_NAME}: num_virtual_tokens must be an integer from 0 to {MAX_VIRTUAL_TOKENS}"
        )
    _check_targets(config.get("target_modules"))
    for key in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(key)
        if patterns is None:
            continue
        if not isinstance(patterns, dict) or len(patterns) > MAX_PATTERNS:
            raise InvalidAdapterError(f"{CONFIG_NAME}: {key} must be an object of at most {MAX_PATTERNS} keys")
        regex_keys = []
        for name, value in patterns.items():
            if key == "rank_pattern" and method == "ADALORA" and isinstance(value, list):
                # AdaLoRA records which ranks it kept, as a mask per module name.
                if len(value) > MAX_RANK or not all(isinstance(v, bool) for v in value):
                    raise InvalidAdapterError(f"{CONFIG_NAME}: rank_pattern masks must be lists of true/false")
                continue
            if key == "rank_pattern":  # PEFT refuses a LoRA module of rank 0 (division by r)
                _rank(value, f"rank_pattern[{name[:64]!r}]", minimum=1 if method == "LORA" else 0)
            elif not _is_number(value):
                raise InvalidAdapterError(f"{CONFIG_NAME}: alpha_pattern values must be finite numbers")
            regex_keys.append(name)
        for name in regex_keys:
            compile_key(name, what=f"{CONFIG_NAME}: {key}")
    # The hub runs the pattern keys on RE2; PEFT runs them and these fields with Python's backtracking re,
    # so an adapter that would hang every PEFT (and vLLM) process loading it is refused here.
    problem = peft_regex_problem(config)
    if problem:
        raise InvalidAdapterError(problem)


def _check_targets(targets: Any) -> None:
    if targets is None:
        return
    if isinstance(targets, str):  # PEFT fullmatches a string against module names
        problem = name_problem(targets, MAX_PATTERN_CHARS * 8)
        if problem:
            raise InvalidAdapterError(f"{CONFIG_NAME}: target_modules {problem}")
        return
    if not isinstance(targets, list) or len(targets) > MAX_TARGETS:
        raise InvalidAdapterError(
            f"{CONFIG_NAME}: target_modules must be a string or a list of at most {MAX_TARGETS} names"
        )
    for name in targets:
        problem = "is not a string" if not isinstance(name, str) else name_problem(name, 256)
        if problem:
            raise InvalidAdapterError(f"{CONFIG_NAME}: an entry of target_modules {problem}")


def check_lineage(record: Any, *, what: str) -> dict[str, Any]:
    """Check a lineage record's shape (see :func:`peft_hub.compose.card.lineage`).

    Returns:
        The record, unchanged.
    """
    if not isinstance(record, dict):
        raise InvalidAdapterError(f"{what} must be a JSON object")
    method = record.get("method")
    if method is not None and (not isinstance(method, str) or name_problem(method, 32)):
        raise InvalidAdapterError(f"{what}: method must be a name of at most 32 characters")
    if record.get("params") is not None and not isinstance(record["params"], dict):
        raise InvalidAdapterError(f"{what}: params must be an object")
    version = record.get("peft_hub_version")
    if version is not None and (not isinstance(version, str) or name_problem(version, 64)):
        raise InvalidAdapterError(f"{what}: peft_hub_version must be a short string")
    parents = record.get("parents", [])
    if not isinstance(parents, list) or len(parents) > 64:
        raise InvalidAdapterError(f"{what}: parents must be a list of at most 64 objects")
    for parent in parents:
        if not isinstance(parent, dict):
            raise InvalidAdapterError(f"{what}: each parent must be an object")
        ref = parent.get("ref")
        if not isinstance(ref, str) or not ref or name_problem(ref, 300):
            raise InvalidAdapterError(f"{what}: a parent's ref must be a name of at most 300 characters")
        for key, shape, digits in (("revision", _SHA1, 40), ("sha256", _SHA256, 64)):
            value = parent.get(key)
            if value is not None and (not isinstance(value, str) or not shape.fullmatch(value)):
                raise InvalidAdapterError(f"{what}: a parent's {key} must be {digits} lowercase hex digits or null")
        weight = parent.get("weight")
        if weight is not None and not _is_number(weight):
            raise InvalidAdapterError(f"{what}: a parent's weight must be a finite number")
    return record


# --- rank_pattern / alpha_pattern ---------------------------------------------


@functools.lru_cache(maxsize=4096)
def _compiled(key: str) -> Any:
    import re2

    options = re2.Options()
    options.log_errors = False
    options.never_capture = True
    options.max_mem = RE2_MAX_MEM
    # PEFT's rule, re.match(rf"(.*\.)?({key})$", module), as one anchored match.
    return re2.compile(rf"(?:.*\.)?(?:{key})".encode(), options)


def compile_key(key: Any, *, what: str = "rank_pattern") -> Any:
    """The RE2 program for one pattern key; InvalidAdapterError if RE2 cannot run it."""
    if not isinstance(key, str):
        raise InvalidAdapterError(f"{what}: keys must be strings")
    too_long = f"is longer than {MAX_PATTERN_CHARS} characters" if len(key) > MAX_PATTERN_CHARS else None
    problem = text_problem(key) or too_long
    if problem:
        raise InvalidAdapterError(f"{what}: the key {key[:64]!r} {problem}")
    try:
        return _compiled(key)
    except Exception as exc:  # re2.error, and its parse errors
        detail = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise InvalidAdapterError(
            f"{what}: the key {key[:64]!r} is not a regular expression the hub can run in linear time "
            f"(RE2: {detail[:120]}); backreferences and lookarounds are not supported"
        ) from None


class PatternMatcher:
    """PEFT's rule for ``rank_pattern``/``alpha_pattern``: the first key (in
    order) that matches the module name, or ends it at a ``.`` boundary.

    Plain-name keys (``q_proj``, or ``re.escape``'d full names as compose
    writes them) are looked up in a dict; the rest run on RE2. Results are
    kept per module name.
    """

    def __init__(self, patterns: dict[str, Any], *, what: str = "rank_pattern") -> None:
        self.keys, self.values = list(patterns), list(patterns.values())
        self.literal: dict[str, int] = {}
        self.regex: list[tuple[int, Any]] = []
        self.what = what
        for index, key in enumerate(self.keys):
            if isinstance(key, str) and _LITERAL.fullmatch(key):
                self.literal.setdefault(_UNESCAPE.sub(r"\1", key), index)
            else:
                self.regex.append((index, compile_key(key, what=what)))
        self.cache: dict[str, int | None] = {}

    def index(self, module: str) -> int | None:
        """The position of the first key that matches ``module``, or None."""
        if module in self.cache:
            return self.cache[module]
        best = None
        if "\n" in module:  # a regex '.' never matches a newline: no shortcut
            encoded = module.encode("utf-8", "surrogatepass")
            best = next((i for i, k in enumerate(self.keys) if compile_key(k, what=self.what).fullmatch(encoded)), None)
            self.cache[module] = best
            return best
        if self.literal:
            starts = [0] + [i + 1 for i, c in enumerate(module) if c == "."]
            hits = [self.literal.get(module[s:]) for s in starts]
            best = min((h for h in hits if h is not None), default=None)
        if self.regex:
            encoded = module.encode("utf-8", "surrogatepass")
            for index, program in self.regex:
                if best is not None and index > best:
                    break
                if program.fullmatch(encoded):
                    best = index
                    break
        self.cache[module] = best
        return best

    def value(self, module: str, default: Any) -> Any:
        found = self.index(module)
        return default if found is None else self.values[found]


def check_pattern_work(matcher: PatternMatcher, modules: int, *, what: str) -> None:
    """Refuse a check that would cost more than :data:`MAX_PATTERN_WORK` regex evaluations."""
    if modules * len(matcher.regex) > MAX_PATTERN_WORK:
        raise InvalidAdapterError(
            f"{what} has {len(matcher.regex)} regular-expression keys for {modules} modules; "
            f"at most {MAX_PATTERN_WORK} key checks are evaluated (list plain or re.escape'd module names instead)"
        )


# --- regexes PEFT runs with Python's re -----------------------------------------

#: Length of the module names a pattern is costed against (real ones are under ~100 characters).
REGEX_SUBJECT_CHARS = 128
#: Most match attempts a pattern may cost against one module name, by the estimate below.
MAX_REGEX_PATHS = 10**8


def _sre_parse(pattern: str) -> Any:
    try:
        from re import _parser  # type: ignore[attr-defined]  # Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse as _parser
    return _parser.parse(pattern)


def _paths(items: Any, cap: int) -> int:
    """An upper bound on the ways Python's backtracking ``re`` can try to match
    ``items`` against a :data:`REGEX_SUBJECT_CHARS`-character name.

    A sequence multiplies its parts; an alternation adds its branches; an
    unbounded repeat of a part that matches in one way only counts one way per
    length. A variable repeat of something that itself has choices (``(a|aa)+``,
    ``(.*.*)*``) can backtrack exponentially: ValueError.
    """
    total = 1
    for op, av in items:
        kind = str(op)
        if kind in ("SUBPATTERN",):
            ways = _paths(av[-1], cap)
        elif kind in ("ATOMIC_GROUP", "ASSERT", "ASSERT_NOT"):
            ways = _paths(av[-1] if kind != "ATOMIC_GROUP" else av, cap)
        elif kind == "BRANCH":
            ways = sum(_paths(alt, cap) for alt in av[1])
        elif kind == "GROUPREF_EXISTS":
            ways = _paths(av[1], cap) + (_paths(av[2], cap) if av[2] is not None else 1)
        elif kind in ("GROUPREF", "GROUPREF_IGNORE"):
            raise ValueError("a backreference")
        elif kind in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, hi, sub = av
            inner = _paths(sub, cap)
            if hi == lo:
                ways = min(inner ** min(lo, 64), cap)
            elif hi == 1:
                ways = inner + 1
            elif inner > 1:
                raise ValueError("a repeated part that can itself match in several ways (nested or alternating "
                                 "quantifiers)")
            else:
                ways = min(hi - lo, REGEX_SUBJECT_CHARS) + 1
        else:  # one character, a class, an anchor
            ways = 1
        total = min(total * ways, cap)
    return total


def python_regex_problem(pattern: str, *, wrap: str = "{}") -> str | None:
    """Why Python's ``re`` could run ``wrap.format(pattern)`` for hours on a module name, or None.

    PEFT matches ``target_modules`` (a string), ``exclude_modules``,
    ``rank_pattern``/``alpha_pattern`` keys and ``modules_to_save`` entries with
    Python's backtracking ``re``, so a pattern such as ``(.*.*)*z`` makes loading
    the adapter hang. This estimates the backtracking (see :func:`_paths`)
    instead of running it.
    """
    try:
        tree = _sre_parse(wrap.format(pattern))
    except re.error as exc:
        return f"is not a regular expression ({exc})"
    except (RecursionError, OverflowError):
        return "is nested too deeply"
    try:
        paths = _paths(list(tree), MAX_REGEX_PATHS + 1)
    except ValueError as exc:
        return f"has {exc}"
    except RecursionError:
        return "is nested too deeply"
    if paths > MAX_REGEX_PATHS:
        return "has too many unbounded quantifiers in a row (Python's re would backtrack through each)"
    return None


#: Config fields PEFT turns into Python regexes, with how it embeds them.
_PEFT_REGEX_FIELDS = (
    ("target_modules", "{}"),
    ("exclude_modules", "{}"),
    ("modules_to_save", r"(^|.*\.){}($|\..*)"),
    ("layers_pattern", r".*\.[^.]*\.{}\.(\d+)\."),
)


def peft_regex_problem(config: dict[str, Any]) -> str | None:
    """The first field of ``config`` PEFT would run as a catastrophic Python regex, with why; or None.

    The ``rank_pattern``/``alpha_pattern`` keys included (PEFT:
    ``re.match(rf"(.*\\.)?({key})$", module)``).
    """
    checks: list[tuple[str, str, str]] = []
    for key, wrap in _PEFT_REGEX_FIELDS:
        value = config.get(key)
        if key in ("target_modules", "exclude_modules"):
            values = [value] if isinstance(value, str) and value != "all-linear" else []
        else:
            values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        if len(values) > MAX_TARGETS:
            return f"{CONFIG_NAME}: {key} has more than {MAX_TARGETS} entries"
        checks += [(key, v, wrap) for v in values if isinstance(v, str)]
    for key in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(key)
        if isinstance(patterns, dict):
            checks += [(key, k, r"(.*\.)?({})$") for k in patterns if isinstance(k, str)]
    for key, pattern, wrap in checks:
        if _LITERAL.fullmatch(pattern):
            continue  # a plain name: no quantifier at all
        if len(pattern) > MAX_PATTERN_CHARS * 8:
            return f"{CONFIG_NAME}: {key} has an entry longer than {MAX_PATTERN_CHARS * 8} characters"
        problem = python_regex_problem(pattern, wrap=wrap)
        if problem:
            return f"{CONFIG_NAME}: {key} {pattern[:64]!r} {problem}"
    return None
