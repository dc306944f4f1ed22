"""The compose preview: would ``peft-hub compose`` accept these adapters, what
rank would it produce, and the exact command to run.

The checks are compose's own (:mod:`peft_hub.compose.spec` for the options,
weights and config refusals, :mod:`peft_hub.compose.plan` for the header,
shape, base-model and rank rules), run over the stored ``adapter_config.json``
and the safetensors header read from the blob store, so no tensor is loaded
and the hub needs no torch.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from peft_hub.adapter import check_lora_shapes, parse_config, vllm_max_lora_rank
from peft_hub.adapter_files import CONFIG_NAME, WEIGHTS_NAME
from peft_hub.compose.plan import (
    LoraPair,
    ModulePlan,
    Term,
    check_base_models,
    lora_pairs,
    output_ranks,
    place,
    plan_ranks,
)
from peft_hub.compose.spec import DEFAULT_MAX_RANK, MERGE_METHODS, METHODS, ComposeOptions, check_config, check_weights
from peft_hub.errors import PeftHubError
from peft_hub.hub import crud
from peft_hub.hub.auth import Principal
from peft_hub.hub.storage import BlobStore
from peft_hub.names import validate_repo_id
from peft_hub.safetensors_header import SafetensorsHeader, read_header

__all__ = ["DEFAULT_MAX_RANK", "MERGE_METHODS", "METHODS", "Picked", "Preview", "build", "command", "inspect", "load"]

HEADER_READ_CAP = 16 * 1024 * 1024 + 8
#: The largest adapter_config.json the preview reads (real ones are a few KiB).
CONFIG_READ_CAP = 1024 * 1024


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
    embeddings: set[str] = field(default_factory=set)  # prefixes whose factors are lora_embedding_A/B
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


def _config(store: BlobStore, ref: str, size: int, sha256: str) -> dict[str, Any]:
    if size > CONFIG_READ_CAP:
        raise PeftHubError(f"{ref}: {CONFIG_NAME} is {size} bytes, too large to preview")
    with store.open(sha256, 0, size) as fh:
        return parse_config(fh.read(size + 1))


def load(session: Session, store: BlobStore, principal: Principal | None, ref: str) -> Picked:
    """Look one ``owner/name[@rev]`` up, read its config and header, and run compose's per-adapter checks."""
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
    files = {f.path: f for f in crud.revision_files(session, revision=revision)}
    if CONFIG_NAME not in files or WEIGHTS_NAME not in files:
        picked.problems.append(f"{ref} has no {CONFIG_NAME if CONFIG_NAME not in files else WEIGHTS_NAME}")
        return picked
    try:
        config = _config(store, ref, files[CONFIG_NAME].size, files[CONFIG_NAME].sha256)
        header = _header(store, files[WEIGHTS_NAME].sha256, files[WEIGHTS_NAME].size)
    except PeftHubError as exc:
        picked.problems.append(f"{ref}: {exc}")
        return picked
    return inspect(picked, config, header)


def inspect(picked: Picked, config: dict[str, Any], header: SafetensorsHeader) -> Picked:
    """Run compose's per-adapter checks on a parsed config and header; record the LoRA shapes or the refusal."""
    try:
        check_config(config, picked.ref)
        check_lora_shapes(config, header)
        pairs, _ = lora_pairs(header, picked.ref)
    except PeftHubError as exc:
        picked.problems.append(str(exc))
        return picked
    picked.modules = {p.prefix: (p.a_shape, p.b_shape) for p in pairs}
    picked.embeddings = {p.prefix for p in pairs if p.embedding}
    return picked


def _refuse(errors: list[str], check: Callable[[], object]) -> bool:
    """Run one of compose's checks; its refusal becomes an error line. True when it passed."""
    try:
        check()
    except PeftHubError as exc:
        errors.append(str(exc))
        return False
    return True


def _plan(found: list[Picked], errors: list[str]) -> list[ModulePlan]:
    """Compose's module plan from the headers: shapes must agree; weight-0 adapters add no terms."""
    modules: dict[str, ModulePlan] = {}
    try:
        for i, p in enumerate(found):
            for prefix, (a, b) in p.modules.items():
                plan = place(modules, LoraPair(prefix, prefix in p.embeddings, "", a, "", b), p.ref)
                if p.weight:
                    plan.terms.append(Term(i, "", "", a[0], 1.0, p.weight))
    except PeftHubError as exc:
        errors.append(str(exc))
        return []
    return [modules[k] for k in sorted(modules) if modules[k].terms]


def build(picked: list[Picked], method: str, rank: int | None, density: float | None, max_rank: int) -> Preview:
    """Run compose's checks on the choices together and produce the command."""
    preview = Preview(picked, method, rank, density, max_rank)
    errors, warnings = preview.errors, preview.warnings
    if len(picked) < 2:
        errors.append("pick at least two adapters to compose")
    # method is the form's unchecked text; options.check() below refuses one compose does not know.
    options = ComposeOptions(method=method, rank=rank, density=density, max_rank=max_rank)  # type: ignore[arg-type]
    valid = _refuse(errors, options.check)
    if any(p.weight is None for p in picked):
        errors.append("every weight must be a finite number, e.g. 0.7")
    elif picked:
        _refuse(errors, lambda: check_weights([p.weight or 0.0 for p in picked], len(picked)))
    found = [p for p in picked if p.found and not p.problems]
    bases = [(p.ref, p.meta.get("base_model")) for p in found]
    _refuse(errors, lambda: check_base_models(bases, False) if found else None)
    targets = {tuple(p.meta.get("target_modules") or ()) for p in found}
    if len(targets) > 1:
        warnings.append("the adapters target different modules; the result covers all of them: "
                        + "; ".join(f"{p.ref}: {', '.join(p.meta.get('target_modules') or [])}" for p in found))
    modules = _plan(found, errors)
    if modules and valid:
        preview.result_rank = max(output_ranks(modules, options).values())
        preview.vllm_rank = vllm_max_lora_rank(preview.result_rank)
        _refuse(errors, lambda: plan_ranks(modules, options))
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
