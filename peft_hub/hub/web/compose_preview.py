"""The compose preview: would ``peft-hub compose`` accept these adapters, what
rank would it produce, and the exact command to run.

The checks mirror what compose itself refuses (same base model, LoRA only, no
DoRA, matching shapes, the rank limit), using the registry's metadata and the
safetensors headers read from the blob store, so no tensor is loaded.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from peft_hub.adapter import WEIGHTS_NAME, validate_repo_id, vllm_max_lora_rank
from peft_hub.errors import PeftHubError
from peft_hub.hub import crud
from peft_hub.hub.auth import Principal
from peft_hub.hub.storage import BlobStore
from peft_hub.safetensors_header import SafetensorsHeader, read_header

METHODS = ("stack", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune")
MERGE_METHODS = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
DEFAULT_MAX_RANK = 64  # compose's --max-rank default
#: The ``--max-lora-rank`` values vLLM accepts (as in peft_hub.compose.card).
HEADER_READ_CAP = 16 * 1024 * 1024 + 8

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?(?P<part>A|B)(?:\.weight)?$")


@dataclass
class Picked:
    """One adapter as the preview sees it."""

    ref: str
    weight: float | None = None
    weight_text: str = ""
    repo_id: str | None = None
    sha: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    modules: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)  # prefix -> (A, B) shapes
    problems: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.sha is not None


@dataclass
class Preview:
    picked: list[Picked]
    method: str
    rank: int | None
    density: float | None
    max_rank: int
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    result_rank: int | None = None
    vllm_rank: int | None = None
    command: str = ""

    @property
    def compatible(self) -> bool:
        return not self.errors and all(not p.problems for p in self.picked)


def fmt_float(x: float) -> str:
    return f"{x:.15g}"


def _header(store: BlobStore, sha256: str, size: int) -> SafetensorsHeader:
    fh = store.open(sha256, 0, min(size, HEADER_READ_CAP))
    try:
        return read_header(fh, size, name=WEIGHTS_NAME)
    finally:
        fh.close()


def load(session: Session, store: BlobStore, principal: Principal | None, ref: str) -> Picked:
    """Look one ``owner/name[@rev]`` up and read its LoRA shapes."""
    picked = Picked(ref=ref)
    name, _, rev = ref.partition("@")
    try:
        owner, short = validate_repo_id(name)
        adapter = crud.get_adapter(session, owner=owner, name=short, principal=principal)
        revision = crud.resolve_revision(session, adapter=adapter, rev=rev or None)
    except PeftHubError as exc:
        picked.problems.append(str(exc))
        return picked
    picked.repo_id, picked.sha, picked.meta = f"{owner}/{short}", revision.sha, revision.meta or {}
    if picked.meta.get("method") != "LORA":
        picked.problems.append(f"{ref} is a {picked.meta.get('method')} adapter; compose works on LoRA adapters only")
        return picked
    if picked.meta.get("use_dora"):
        picked.problems.append(f"{ref} uses DoRA, whose magnitude vectors are not linearly composable")
    weights = next((f for f in crud.revision_files(session, revision=revision) if f.path == WEIGHTS_NAME), None)
    if weights is None:
        picked.problems.append(f"{ref} has no {WEIGHTS_NAME}")
        return picked
    try:
        header = _header(store, weights.sha256, weights.size)
    except PeftHubError as exc:
        picked.problems.append(f"{ref}: {exc}")
        return picked
    slots: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, info in header.tensors.items():
        m = _LORA_KEY.match(key)
        if m:
            slots.setdefault(m["module"], {})[m["part"]] = info.shape
        elif "lora_magnitude_vector" in key and not picked.meta.get("use_dora"):
            picked.problems.append(f"{ref} holds DoRA magnitude vectors, which are not linearly composable")
    picked.modules = {p: (s["A"], s["B"]) for p, s in slots.items() if "A" in s and "B" in s}
    return picked


def _check_shapes(picked: list[Picked], errors: list[str]) -> None:
    first: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {}
    mismatched = []
    for p in picked:
        for prefix, (a, b) in p.modules.items():
            seen = first.setdefault(prefix, (p.ref, a, b))
            if (seen[1][1:], seen[2][:1], seen[2][2:]) != (a[1:], b[:1], b[2:]):
                mismatched.append(f"{prefix.removeprefix('base_model.model.')}: A {list(a)} / B {list(b)} in {p.ref} "
                                  f"but A {list(seen[1])} / B {list(seen[2])} in {seen[0]}")
    if mismatched:
        more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        errors.append("the tensor shapes do not match: " + "; ".join(mismatched[:3]) + more)


def _result_rank(preview: Preview, live: list[Picked]) -> int | None:
    """The output rank compose would produce (the largest over modules)."""
    per_module: dict[str, list[int]] = {}
    for p in live:
        for prefix, (a, _) in p.modules.items():
            per_module.setdefault(prefix, []).append(a[0])
    if not per_module:
        return None
    if preview.method == "stack":
        return max(sum(r) for r in per_module.values())
    target = preview.rank or max(max(r) for r in per_module.values())
    if preview.method == "svd":
        return min(target, max(sum(r) for r in per_module.values()))
    return target


def build(picked: list[Picked], method: str, rank: int | None, density: float | None, max_rank: int) -> Preview:
    """Check the choices together and produce the command."""
    preview = Preview(picked, method, rank, density, max_rank)
    errors, warnings = preview.errors, preview.warnings
    if len(picked) < 2:
        errors.append("pick at least two adapters to compose")
    if method not in METHODS:
        errors.append(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if any(p.weight is None for p in picked):
        errors.append("every weight must be a finite number, e.g. 0.7")
    elif picked and all(p.weight == 0 for p in picked):
        errors.append("every weight is zero: the result would be an empty adapter")
    if method == "stack" and rank is not None:
        errors.append("stack is exact and its rank is the sum of the input ranks; a rank applies to svd and the merge methods")
    if method in MERGE_METHODS and (density is None or not 0 < density <= 1):
        errors.append(f"{method} needs a density in (0, 1], e.g. 0.5")
    if method not in MERGE_METHODS and density is not None:
        errors.append(f"density applies to {', '.join(MERGE_METHODS)}, not {method}")
    found = [p for p in picked if p.found and not p.problems]
    bases = {p.meta.get("base_model") for p in found}
    if len(bases) > 1:
        listing = ", ".join(f"{p.ref} → {p.meta.get('base_model')}" for p in found)
        errors.append(f"the adapters were trained on different base models ({listing})")
    targets = {tuple(p.meta.get("target_modules") or ()) for p in found}
    if len(targets) > 1:
        warnings.append("the adapters target different modules; the result covers all of them: "
                        + "; ".join(f"{p.ref}: {', '.join(p.meta.get('target_modules') or [])}" for p in found))
    _check_shapes(found, errors)
    live = [p for p in found if p.weight]
    preview.result_rank = _result_rank(preview, live) if live else None
    if preview.result_rank is not None:
        preview.vllm_rank = vllm_max_lora_rank(preview.result_rank)
        if preview.result_rank > max_rank:
            hint = (f"pass a rank (e.g. {max_rank}) with svd to truncate, or a higher max rank"
                    if method == "stack" else "pass a smaller rank or a higher max rank")
            errors.append(f"the result would have rank {preview.result_rank}, above --max-rank {max_rank}: "
                          f"compose refuses it; {hint}")
    preview.command = command(preview)
    return preview


def command(preview: Preview) -> str:
    """The ``peft-hub compose`` line for these choices, shell-quoted."""
    refs = "+".join(p.ref for p in preview.picked) or "OWNER/A+OWNER/B"
    args = ["peft-hub", "compose", refs]
    weights = [p.weight_text if p.weight is None else fmt_float(p.weight) for p in preview.picked]
    if weights:
        args += ["--weights", ",".join(weights)]
    args += ["--method", preview.method]
    if preview.rank is not None:
        args += ["--rank", str(preview.rank)]
    if preview.density is not None:
        args += ["--density", fmt_float(preview.density)]
    if preview.max_rank != DEFAULT_MAX_RANK:
        args += ["--max-rank", str(preview.max_rank)]
    return shlex.join(args)


def parse_weight(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
