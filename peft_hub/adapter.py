"""The PEFT adapter format: read, validate and describe an adapter (no torch).

An adapter is a directory as PEFT's ``save_pretrained`` writes it:
``adapter_config.json``, ``adapter_model.safetensors`` and optionally a
``README.md`` model card plus a few small JSON or text files. Everything the
registry knows about an adapter is read from those files here, and nothing is
stored until :func:`validate_files` has accepted them.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from peft_hub.adapter_files import (
    CONFIG_NAME,
    MAX_FILES,
    WEIGHTS_NAME,
    check_listing,
    check_text_file,
    size_cap,
    validate_filename,
)
from peft_hub.config_checks import PatternMatcher, check_config, check_lineage, check_pattern_work
from peft_hub.errors import InvalidAdapterError
from peft_hub.modelcard import CARD_NAME, card_summary
from peft_hub.names import check_no_twins, shown
from peft_hub.safeparse import loads_json
from peft_hub.safetensors_header import SafetensorsHeader, read_header

#: Every PEFT method the registry stores: PEFT 0.21's ``PeftType`` values (kept here
#: so the hub and client need no torch), checked against PEFT in the tests.
KNOWN_PEFT_TYPES = frozenset({
    "PROMPT_TUNING", "MULTITASK_PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "LORA", "ADALORA", "ADAMSS",
    "BOFT", "ADAPTION_PROMPT", "IA3", "BEFT", "LILY", "LOHA", "LOKR", "OFT", "POLY", "LN_TUNING", "VERA",
    "FROD", "PVERA", "FOURIERFT", "GLORA", "XLORA", "HRA", "VBLORA", "UNILORA", "CPT", "MISS", "RANDLORA",
    "ROAD", "TRAINABLE_TOKENS", "HIRA", "SHIRA", "C3A", "WAVEFT", "OSF", "DELORA", "GRALORA", "CARTRIDGE",
    "TINYLORA", "PSOFT", "PEANUT", "SHADOW", "SUPERTUNING", "DEFT", "BONE",
})

#: The safetensors ``__metadata__`` key a composed adapter's lineage is read from.
LINEAGE_KEY = "peft_hub.lineage"
LINEAGE_MAX_CHARS = 64 * 1024


@dataclass
class FileEntry:
    """One file of an adapter: where it is on disk, and its digest."""

    path: str
    size: int
    sha256: str


@dataclass
class AdapterMeta:
    """What the registry records about an adapter, all read from its files."""

    base_model: str | None
    method: str
    task_type: str | None
    rank: int | None
    alpha: float | None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    max_rank: int | None = None
    use_rslora: bool = False
    use_dora: bool = False
    target_modules: list[str] = field(default_factory=list)
    trainable_params: int = 0
    dtype: str | None = None
    total_size: int = 0
    num_virtual_tokens: int | None = None
    lineage: dict[str, Any] | None = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The ``--max-lora-rank`` values vLLM accepts, and its default.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_LORA_RANK = 16


def vllm_max_lora_rank(rank: int) -> int | None:
    """The smallest ``--max-lora-rank`` vLLM needs to serve an adapter of this rank."""
    return next((v for v in VLLM_LORA_RANKS if v >= rank), None)


def sha256_file(path: str | os.PathLike[str], chunk: int = 4 * 1024 * 1024, *,
                stop: threading.Event | None = None) -> str:
    """Hex sha256 of a file, read in chunks into one buffer; given up
    (InterruptedError) once ``stop`` is set."""
    h, buf = hashlib.sha256(), bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            if stop is not None and stop.is_set():
                raise InterruptedError(f"hashing {os.path.basename(path)} stopped")
            h.update(view[:n])
    return h.hexdigest()


def parse_config(raw: bytes) -> dict[str, Any]:
    """Parse and check ``adapter_config.json``: bounded JSON, a known
    ``peft_type``, and the type and range of every field the registry reads."""
    config = loads_json(raw, what=CONFIG_NAME, error=InvalidAdapterError, strict_strings=True)
    if not isinstance(config, dict):
        raise InvalidAdapterError(f"{CONFIG_NAME} must be a JSON object")
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str) or peft_type not in KNOWN_PEFT_TYPES:
        raise InvalidAdapterError(f"{CONFIG_NAME}: unknown peft_type {shown(peft_type)}")
    check_config(config)
    return config


_MATCHERS: dict[tuple[Any, ...], PatternMatcher] = {}


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rule for ``rank_pattern``/``alpha_pattern``: a key matches a module
    name when the name ends with it at a ``.`` boundary (keys are regexes, run
    on RE2 in linear time; one RE2 cannot compile is an InvalidAdapterError)."""
    if not patterns:
        return default
    try:
        key = tuple(patterns.items())
        matcher = _MATCHERS.get(key)
    except TypeError:  # unhashable values (AdaLoRA masks): no reuse
        key, matcher = None, None
    if matcher is None:
        matcher = PatternMatcher(patterns)
        if key is not None:
            if len(_MATCHERS) >= 8:  # a handful of configs at a time; clear() is safe across threads
                _MATCHERS.clear()
            _MATCHERS[key] = matcher
    return matcher.value(module, default)


#: The prefix PEFT puts before module names in saved state dicts.
PEFT_PREFIX = "base_model.model."
#: A LoRA factor's key: ``<module>.lora_A.weight``, ``<module>.lora_embedding_B``, ...
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<emb>embedding_)?(?P<part>A|B)(?:\.weight)?$")


def check_lora_shapes(config: dict[str, Any], header: SafetensorsHeader) -> None:
    """For LoRA, every A/B pair must have the rank the config declares."""
    r = config.get("r")
    matcher = PatternMatcher(config.get("rank_pattern") or {})
    found = [(key, info, m) for key, info in header.tensors.items() if (m := LORA_KEY.match(key))]
    check_pattern_work(matcher, len({m.group("module") for _, _, m in found}), what=f"{CONFIG_NAME}: rank_pattern")
    for key, info, m in found:
        module = m.group("module")
        expected = matcher.value(module, r)
        # A is (r, in[, kh, kw]) and B is (out, r[, 1, 1]); embeddings alike.
        if m.group("part") == "A":
            got = info.shape[0] if info.shape else None
        else:
            got = info.shape[1] if len(info.shape) > 1 else None
        if got != expected:
            raise InvalidAdapterError(
                f"{shown(key)} has rank {got} but {CONFIG_NAME} says r={expected} for {shown(module)}"
            )


def describe(
    config: dict[str, Any], header: SafetensorsHeader, files: list[FileEntry], card: str = ""
) -> AdapterMeta:
    """Build the registry metadata from a validated config, header and card."""
    method = config["peft_type"]
    rank = config.get("r") if isinstance(config.get("r"), int) else None
    alpha = config.get("lora_alpha", config.get("alpha"))
    # AdaLoRA's masks count the ranks it kept; other methods give ranks.
    rank_pattern = {k: sum(v) if isinstance(v, list) else int(v) for k, v in (config.get("rank_pattern") or {}).items()}
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    dtypes = Counter(t.dtype for t in header.tensors.values())
    lineage = header.metadata.get(LINEAGE_KEY)
    return AdapterMeta(
        base_model=config.get("base_model_name_or_path"),
        method=method,
        task_type=config.get("task_type"),
        rank=rank,
        alpha=float(alpha) if isinstance(alpha, (int, float)) else None,
        rank_pattern=rank_pattern,
        alpha_pattern={k: float(v) for k, v in (config.get("alpha_pattern") or {}).items()},
        max_rank=max([rank or 0, *rank_pattern.values()]) or None,
        use_rslora=bool(config.get("use_rslora")),
        use_dora=bool(config.get("use_dora")),
        target_modules=sorted(str(t) for t in targets),
        trainable_params=sum(t.numel for t in header.tensors.values()),
        dtype=dtypes.most_common(1)[0][0] if dtypes else None,
        total_size=sum(f.size for f in files),
        num_virtual_tokens=config.get("num_virtual_tokens"),
        lineage=parse_lineage(lineage) if lineage else None,
        description=card_summary(card),
    )


def parse_lineage(raw: str) -> dict[str, Any]:
    """The lineage record a composed adapter carries in its safetensors metadata."""
    what = f"{WEIGHTS_NAME} metadata {LINEAGE_KEY}"
    if len(raw) > LINEAGE_MAX_CHARS:
        raise InvalidAdapterError(f"{what} is longer than {LINEAGE_MAX_CHARS} characters")
    record = loads_json(raw, max_depth=16, what=what, error=InvalidAdapterError, strict_strings=True)
    return check_lineage(record, what=what)


def check_entries(entries: list[FileEntry]) -> None:
    """Check the file list alone: names, required files, count and size caps."""
    names = check_listing(entries, kind="adapter", max_files=MAX_FILES)
    for required in (CONFIG_NAME, WEIGHTS_NAME):
        if required not in names:
            raise InvalidAdapterError(f"{required} is missing")


def validate_manifest(
    entries: list[FileEntry], open_file: Callable[[FileEntry], AbstractContextManager[BinaryIO]]
) -> AdapterMeta:
    """Validate an adapter's contents, wherever its bytes live.

    The client calls this on local files before uploading, and the hub calls it
    again on the stored blobs before publishing; only headers and small files
    are read, never whole weight files.

    Args:
        entries: the files, with sizes and sha256 already known to be right.
        open_file: opens one entry's bytes for reading from the start.

    Returns:
        The metadata read from the files.

    Raises:
        InvalidAdapterError: naming the file and the problem.
    """
    check_entries(entries)
    by_name = {e.path: e for e in entries}
    with open_file(by_name[CONFIG_NAME]) as fh:
        config = parse_config(fh.read(by_name[CONFIG_NAME].size + 1))
    with open_file(by_name[WEIGHTS_NAME]) as fh:
        header = read_header(fh, by_name[WEIGHTS_NAME].size, name=WEIGHTS_NAME)
    if not header.tensors:
        raise InvalidAdapterError(f"{WEIGHTS_NAME} holds no tensors")
    if config["peft_type"] == "LORA":
        check_lora_shapes(config, header)
    card = ""
    for entry in entries:
        if entry.path == CONFIG_NAME or entry.path == WEIGHTS_NAME:
            continue
        with open_file(entry) as fh:
            raw = fh.read(entry.size + 1)
        text = check_text_file(entry.path, raw)
        if entry.path == CARD_NAME:
            card = text
    return describe(config, header, entries, card)


def validate_files(files: Mapping[str, str | os.PathLike[str]]) -> tuple[AdapterMeta, list[FileEntry]]:
    """Validate a whole adapter given as ``{name: local path}``.

    Returns:
        The metadata and the file entries (sorted by name, with sha256).
    """
    for name in files:
        validate_filename(name)
    check_no_twins(files)  # before any byte is hashed
    entries = []
    for name, path in sorted(files.items()):
        size = os.path.getsize(path)
        if size > size_cap(name):
            raise InvalidAdapterError(f"{name} is {size} bytes, above the {size_cap(name)} byte cap")
        entries.append(FileEntry(name, size, sha256_file(path)))
    meta = validate_manifest(entries, lambda e: open(files[e.path], "rb"))
    return meta, entries


def scan_dir(path: str | os.PathLike[str]) -> dict[str, Path]:
    """The files of an adapter directory, by name (hidden files skipped)."""
    root = Path(path)
    if not root.is_dir():
        raise InvalidAdapterError(f"{root} is not a directory")
    out: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            raise InvalidAdapterError(f"{child} is a directory: adapters are flat")
        out[child.name] = child
    return out


def validate_dir(path: str | os.PathLike[str]) -> tuple[AdapterMeta, list[FileEntry]]:
    """Validate an adapter directory on disk; see :func:`validate_files`."""
    return validate_files(scan_dir(path))


def manifest_digest(entries: list[FileEntry]) -> str:
    """The revision id: a 40-hex hash of the sorted (path, sha256, size) list."""
    lines = "".join(f"{e.path}\x00{e.sha256}\x00{e.size}\n" for e in sorted(entries, key=lambda e: e.path))
    return hashlib.sha1(lines.encode()).hexdigest()
