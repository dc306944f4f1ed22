"""Read adapters' configs and headers and plan the work, before any tensor is loaded.

Every refusal is raised here, so a bad request fails in milliseconds rather
than after minutes of math. Nothing in this module imports torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_hub.adapter import CONFIG_NAME, WEIGHTS_NAME, check_lora_shapes, parse_config, pattern_value, sha256_file
from peft_hub.errors import IncompatibleAdaptersError, InvalidAdapterError, UnsupportedAdapterError
from peft_hub.safetensors_header import CONVERT_HINT, SafetensorsHeader, read_header_path

#: The prefix PEFT puts before module names in saved state dicts.
PEFT_PREFIX = "base_model.model."

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<emb>embedding_)?(?P<part>A|B)(?P<suffix>\.weight)?$")
# Full copies of an embedding saved by PEFT's save_embedding_layers: not a delta.
_BASE_LAYER_KEY = re.compile(r"^.+\.base_layer\.weight$")

# Config fields that make an adapter something other than a plain sum of s·B·A.
_NOT_LINEAR = {
    "use_dora": "DoRA rescales each output by a learned magnitude vector, which is not linearly composable",
    "lora_bias": "lora_bias adds a trained bias vector that the LoRA factors cannot carry",
    "alora_invocation_tokens": "aLoRA applies only after its invocation tokens, so it is not a fixed weight delta",
    "use_qalora": "QA-LoRA pools its inputs, so its factors are not a weight delta",
    "use_bdlora": "BD-LoRA factors are block-diagonal shards, not a plain weight delta",
    "layer_replication": "layer_replication changes the model's layers",
    "target_parameters": "target_parameters adapts raw parameters (e.g. MoE experts), not modules",
    "modules_to_save": "modules_to_save stores full trained copies of modules, which a LoRA output cannot hold",
    "trainable_token_indices": "trainable tokens store embedding rows, which a LoRA output cannot hold",
    "arrow_config": "Arrow routes between adapters at run time",
    "kasa_config": "KaSA changes the LoRA forward pass",
    "monteclora_config": "MonteCLoRA samples its factors",
    "velora_config": "VeLoRA is a LoRA variant this tool does not compose",
}
# Initialisations that rewrite the base weights: their deltas are relative to another base.
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


@dataclass
class AdapterInput:
    """One input adapter, read but not loaded."""

    path: Path
    config: dict[str, Any]
    header: SafetensorsHeader
    sha256: str

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_NAME


@dataclass(frozen=True)
class Term:
    """One adapter's contribution ``weight·scale·B·A`` to one module."""

    adapter: int  # index into the inputs
    key_a: str
    key_b: str
    rank: int
    scale: float  # lora_alpha / r, or lora_alpha / √r with rslora
    weight: float


@dataclass
class ModulePlan:
    """One output module: its shape and the terms that feed it."""

    name: str  # as PEFT names it for rank_pattern, e.g. model.layers.0.self_attn.q_proj
    prefix: str  # key prefix in the safetensors file
    embedding: bool
    a_shape: tuple[int, ...]  # (r, k, ...) of the inputs; k... kept for conv layers
    b_shape: tuple[int, ...]  # (d, r, ...) of the inputs
    terms: list[Term] = field(default_factory=list)

    @property
    def d(self) -> int:
        return self.b_shape[0]

    @property
    def k(self) -> int:
        return math.prod(self.a_shape[1:])

    @property
    def stacked_rank(self) -> int:
        return sum(t.rank for t in self.terms)

    def out_keys(self) -> tuple[str, str]:
        if self.embedding:
            return f"{self.prefix}.lora_embedding_A", f"{self.prefix}.lora_embedding_B"
        return f"{self.prefix}.lora_A.weight", f"{self.prefix}.lora_B.weight"

    def out_shapes(self, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of the output A and B at ``rank``."""
        return (rank, *self.a_shape[1:]), (self.b_shape[0], rank, *self.b_shape[2:])


def read_adapter(path: Path) -> AdapterInput:
    """Read and check one adapter directory; refuse anything not linearly composable.

    Raises:
        InvalidAdapterError: files missing or malformed.
        UnsupportedAdapterError: not LoRA, or a LoRA variant that is not a plain delta.
    """
    path = Path(path)
    config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not config_path.is_file():
        raise InvalidAdapterError(f"{path}: {CONFIG_NAME} is missing")
    if not weights_path.is_file():
        hint = f" {CONVERT_HINT}" if (path / "adapter_model.bin").exists() else ""
        raise InvalidAdapterError(f"{path}: {WEIGHTS_NAME} is missing.{hint}")
    config = parse_config(config_path.read_bytes())
    if config["peft_type"] != "LORA":
        raise UnsupportedAdapterError(
            f"{path} is a {config['peft_type']} adapter; compose works on LoRA adapters only "
            "(other methods are not sums of low-rank weight deltas)"
        )
    for key, why in _NOT_LINEAR.items():
        if config.get(key):
            raise UnsupportedAdapterError(f"{path}: {why}, so it cannot be composed ({key}={config[key]!r})")
    init = str(config.get("init_lora_weights", True)).lower()
    if init.startswith(_BASE_REWRITING_INITS):
        raise UnsupportedAdapterError(
            f"{path}: init_lora_weights={init!r} rewrites the base weights, so its delta is relative to a "
            "different base; convert it to a plain LoRA first (PEFT: path_initial_model_for_weight_conversion)"
        )
    if config.get("bias", "none") != "none":
        raise UnsupportedAdapterError(f"{path}: bias={config['bias']!r} trains full bias vectors; only bias='none' composes")
    header = read_header_path(weights_path)
    check_lora_shapes(config, header)
    return AdapterInput(path=path, config=config, header=header, sha256=sha256_file(weights_path))


def module_scale(config: dict[str, Any], name: str) -> tuple[int, float]:
    """The rank and scale PEFT gives module ``name`` under ``config``."""
    r = int(pattern_value(config.get("rank_pattern") or {}, name, config["r"]))
    alpha = float(pattern_value(config.get("alpha_pattern") or {}, name, config["lora_alpha"]))
    return r, alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def check_base_models(inputs: list[AdapterInput], force: bool) -> str | None:
    """The common base model, or an error naming the ones that differ."""
    bases = [a.config.get("base_model_name_or_path") for a in inputs]
    if len(set(bases)) > 1 and not force:
        listing = ", ".join(f"{a.path} -> {b!r}" for a, b in zip(inputs, bases))
        raise IncompatibleAdaptersError(
            f"the adapters were trained on different base models ({listing}); pass --force (force=True) "
            "if they really share one"
        )
    return bases[0]


def plan_modules(inputs: list[AdapterInput], weights: list[float]) -> tuple[list[ModulePlan], list[tuple[int, str]]]:
    """Group every adapter's LoRA tensors by module and check that shapes agree.

    Adapters with weight exactly 0 contribute no terms.

    Returns:
        The modules in a stable order (by name), and ``(adapter, key)`` for
        every non-LoRA tensor to carry through (saved embedding base layers).

    Raises:
        IncompatibleAdaptersError: a module has different shapes in two adapters.
        UnsupportedAdapterError: a tensor is neither a LoRA factor nor a base-layer copy.
    """
    modules: dict[str, ModulePlan] = {}
    extras: list[tuple[int, str]] = []
    for i, (adapter, w) in enumerate(zip(inputs, weights)):
        pairs: dict[str, dict[str, Any]] = {}
        for key, info in adapter.header.tensors.items():
            m = _LORA_KEY.match(key)
            if m is None:
                if _BASE_LAYER_KEY.match(key):
                    extras.append((i, key))
                    continue
                what = "DoRA magnitude vector" if "lora_magnitude_vector" in key else "tensor"
                raise UnsupportedAdapterError(f"{adapter.path}: {what} {key!r} is not a LoRA factor and cannot be composed")
            slot = pairs.setdefault(m["module"], {"embedding": bool(m["emb"])})
            slot[m["part"]] = (key, info.shape)
        for prefix, slot in pairs.items():
            if "A" not in slot or "B" not in slot:
                raise InvalidAdapterError(f"{adapter.path}: {prefix} has lora_{'A' if 'A' in slot else 'B'} but not the other")
            (key_a, a_shape), (key_b, b_shape) = slot["A"], slot["B"]
            name = prefix.removeprefix(PEFT_PREFIX)
            if any(n != 1 for n in b_shape[2:]):
                raise UnsupportedAdapterError(f"{adapter.path}: {key_b} has a kernel {list(b_shape)}; only 1x1 lora_B composes")
            rank, scale = module_scale(adapter.config, name)
            plan = modules.setdefault(prefix, ModulePlan(name, prefix, slot["embedding"], a_shape, b_shape))
            if (plan.embedding, plan.a_shape[1:], plan.b_shape[:1], plan.b_shape[2:]) != (
                slot["embedding"], a_shape[1:], b_shape[:1], b_shape[2:]
            ):
                first = inputs[plan.terms[0].adapter].path if plan.terms else "another adapter"
                raise IncompatibleAdaptersError(
                    f"{name} has A {list(a_shape)} / B {list(b_shape)} in {adapter.path} but "
                    f"A {list(plan.a_shape)} / B {list(plan.b_shape)} in {first}: the shapes do not match"
                )
            if w != 0:
                plan.terms.append(Term(i, key_a, key_b, rank, scale, w))
    planned = [modules[p] for p in sorted(modules) if modules[p].terms]
    return planned, extras


def output_targets(inputs: list[AdapterInput], modules: list[ModulePlan]) -> list[str] | str:
    """``target_modules`` for the output that selects exactly the output's modules.

    The union of the inputs' targets is exact when no input narrows its
    targets further (layers_to_transform, exclude_modules); otherwise the
    module names themselves are listed.
    """
    narrowed = any(a.config.get("layers_to_transform") is not None or a.config.get("exclude_modules") for a in inputs)
    targets = [a.config.get("target_modules") for a in inputs]
    # "all-linear" is a PEFT shorthand resolved against the model, which compose never sees.
    if narrowed or any(t is None or t == "all-linear" for t in targets):
        return sorted(m.name for m in modules)
    if all(isinstance(t, list) for t in targets):
        return sorted({str(x) for t in targets for x in t})
    # PEFT fullmatches a string target; a list entry x matches "x" or "….x".
    parts = [t if isinstance(t, str) else r"(.*\.)?(" + "|".join(re.escape(x) for x in t) + ")" for t in targets]
    return "|".join(f"({p})" for p in parts)


def rank_patterns(modules: list[ModulePlan], ranks: dict[str, int], r: int) -> dict[str, int]:
    """A ``rank_pattern`` giving each module its rank under PEFT's matching rule.

    Module names are used as keys; the result is checked with
    :func:`pattern_value` and falls back to listing every module, escaped and
    longest first, if a short key would also match another module.
    """
    pattern = {m.name: ranks[m.name] for m in modules if ranks[m.name] != r}
    if all(pattern_value(pattern, m.name, r) == ranks[m.name] for m in modules):
        return pattern
    ordered = sorted(modules, key=lambda m: len(m.name), reverse=True)
    return {re.escape(m.name): ranks[m.name] for m in ordered}

