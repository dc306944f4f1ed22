"""What compose accepts: its methods, options, refusals and scale rule (no torch, no hub).

This is the one home of those facts. The compose engine, both CLIs, the GPU
runtime and the hub's web preview (which must run without torch) read them
from here, so the preview refuses exactly what ``peft-hub compose`` refuses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args

from peft_hub.adapter import pattern_value
from peft_hub.errors import ComposeError, InvalidAdapterError, InvalidInputError, UnsupportedAdapterError
from peft_hub.names import shown

FactorMethod = Literal["stack", "svd"]  # exact, from the low-rank factors
MergeMethod = Literal["ties", "dare_linear", "dare_ties", "magnitude_prune"]  # dense per module, then truncated
Method = Literal[FactorMethod, MergeMethod]
Truncation = Literal["auto", "exact", "randomized"]
MajoritySign = Literal["total", "frequency"]
DtypeName = Literal["fp32", "fp16", "bf16"]

FACTOR_METHODS: tuple[FactorMethod, ...] = get_args(FactorMethod)
MERGE_METHODS: tuple[MergeMethod, ...] = get_args(MergeMethod)
METHODS: tuple[Method, ...] = get_args(Method)
#: The merge methods that elect a sign per entry, and so take ``majority_sign``.
SIGN_METHODS: tuple[MergeMethod, ...] = ("ties", "dare_ties")
TRUNCATIONS: tuple[Truncation, ...] = get_args(Truncation)
MAJORITY_SIGNS: tuple[MajoritySign, ...] = get_args(MajoritySign)
DTYPE_NAMES: tuple[DtypeName, ...] = get_args(DtypeName)
#: Every spelling ``dtype`` accepts, to its short name.
DTYPE_ALIASES: dict[str, DtypeName] = {
    "fp32": "fp32", "float32": "fp32", "fp16": "fp16", "float16": "fp16", "bf16": "bf16", "bfloat16": "bf16",
}
DEFAULT_MAX_RANK = 64

#: Config fields that make an adapter something other than a plain sum of s·B·A.
UNSUPPORTED_CONFIG: dict[str, str] = {
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
#: Initialisations that rewrite the base weights: their deltas are relative to another base.
BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


def check_config(config: dict[str, Any], where: str) -> None:
    """Refuse a config that is not a plain LoRA, i.e. whose delta is not ``s·B·A``.

    Args:
        config: a parsed ``adapter_config.json``.
        where: the adapter's name for the message (a path or a hub ref).

    Raises:
        UnsupportedAdapterError: naming the field and why it does not compose.
    """
    if config.get("peft_type") != "LORA":
        raise UnsupportedAdapterError(
            f"{where} is a {config.get('peft_type')} adapter; compose works on LoRA adapters only "
            "(other methods are not sums of low-rank weight deltas)"
        )
    for key in ("r", "lora_alpha"):  # the scale of every module is lora_alpha / r
        if config.get(key) is None:
            raise InvalidAdapterError(f"{where}: adapter_config.json has no {key}, so its delta's scale is unknown")
    for key, why in UNSUPPORTED_CONFIG.items():
        if config.get(key):
            raise UnsupportedAdapterError(f"{where}: {why}, so it cannot be composed ({key}={shown(config[key])})")
    init = str(config.get("init_lora_weights", True)).lower()
    if init.startswith(BASE_REWRITING_INITS):
        raise UnsupportedAdapterError(
            f"{where}: init_lora_weights={shown(init)} rewrites the base weights, so its delta is relative to a "
            "different base; convert it to a plain LoRA first (PEFT: path_initial_model_for_weight_conversion)"
        )
    if config.get("bias", "none") != "none":
        raise UnsupportedAdapterError(
            f"{where}: bias={shown(config['bias'])} trains full bias vectors; only bias='none' composes"
        )


def module_scale(config: dict[str, Any], name: str) -> tuple[int, float]:
    """The rank and scale PEFT gives module ``name``: ``alpha / r``, or ``alpha / √r`` with rsLoRA."""
    r = int(pattern_value(config.get("rank_pattern") or {}, name, config["r"]))
    alpha = float(pattern_value(config.get("alpha_pattern") or {}, name, config["lora_alpha"]))
    return r, alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def normalize_dtype(name: object) -> DtypeName:
    """``fp32``/``fp16``/``bf16`` or a long name (any case) to the short name."""
    short = DTYPE_ALIASES.get(name.lower()) if isinstance(name, str) else None
    if short is None:
        raise InvalidInputError(f"unknown dtype {shown(name)}: use fp32, fp16 or bf16")
    return short


def check_weights(weights: list[float] | None, count: int) -> list[float]:
    """One finite weight per adapter, not all zero; None means 1.0 each."""
    if count == 0:
        raise ComposeError("give at least one adapter")
    if weights is None:
        return [1.0] * count
    if len(weights) != count:
        raise ComposeError(f"{count} adapters but {len(weights)} weights: give one weight per adapter")
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ComposeError(f"weights must be finite numbers, got {shown(weights)}") from None
    if not all(math.isfinite(w) for w in values):
        raise ComposeError(f"weights must be finite numbers, got {values}")
    if all(w == 0 for w in values):
        raise ComposeError("every weight is zero: the result would be an empty adapter")
    return values


@dataclass(frozen=True)
class ComposeOptions:
    """How to compose: everything but the inputs, their weights and the output.

    Attributes:
        method: ``stack`` (exact, rank = sum of ranks), ``svd`` (exact best
            rank-``rank`` approximation), or ``ties``/``dare_linear``/``dare_ties``/
            ``magnitude_prune`` (dense per module, then truncated to ``rank``).
            None stacks, or runs ``svd`` when ``rank`` is given.
        rank: output rank for the truncating methods (default: largest input rank).
        max_rank: refuse outputs with a larger rank.
        density: fraction kept, for the merge methods (required there).
        majority_sign: sign election for ``ties``/``dare_ties``.
        seed: for the DARE methods' random drops and the randomized SVD's sketch.
        svd: how the merge methods truncate: ``exact``, ``randomized`` or
            ``auto`` (exact when min(d, k) ≤ 1024). ``stack`` and ``svd`` are
            exact from the factors at any size and refuse ``randomized``.
        dtype: ``fp32``/``fp16``/``bf16`` for the output (default: the inputs').
        force: compose adapters that declare different base models.
    """

    method: Method | None = None
    rank: int | None = None
    max_rank: int = DEFAULT_MAX_RANK
    density: float | None = None
    majority_sign: MajoritySign = "total"
    seed: int = 0
    svd: Truncation = "auto"
    dtype: str | None = None
    force: bool = False

    @classmethod
    def of(cls, options: ComposeOptions | None = None, **settings: Any) -> ComposeOptions:
        """``options`` (or the defaults) with ``settings`` replacing fields by name."""
        unknown = sorted(set(settings) - {f.name for f in fields(cls)})
        if unknown:
            raise ComposeError(f"unknown compose option {unknown[0]!r}: use {', '.join(f.name for f in fields(cls))}")
        return replace(options or cls(), **settings)

    @property
    def resolved_method(self) -> Method:
        """The method that runs: ``method``, else ``stack``, or ``svd`` when a rank is given."""
        return self.method or ("stack" if self.rank is None else "svd")

    def check(self) -> None:
        """Refuse options that contradict each other or are out of range.

        Raises:
            ComposeError: naming the option. InvalidInputError: an unknown dtype.
        """
        if self.dtype is not None:
            normalize_dtype(self.dtype)
        method = self.method
        if method is not None and method not in METHODS:
            raise ComposeError(f"unknown method {shown(method)}: use one of {', '.join(METHODS)}")
        if method == "stack" and self.rank is not None:
            raise ComposeError(
                "stack is exact and its rank is the sum of the input ranks; --rank applies to svd and the merge methods"
            )
        if not _positive(self.max_rank) or (self.rank is not None and not _positive(self.rank)):
            raise ComposeError(f"ranks must be positive (rank={shown(self.rank)}, max_rank={shown(self.max_rank)})")
        density = self.density
        if method in MERGE_METHODS:
            if not isinstance(density, (int, float)) or not 0 < density <= 1:
                raise ComposeError(
                    f"{method} needs --density in (0, 1], got {shown(density)}: it needs a density, the fraction "
                    "of each adapter's delta entries that it keeps"
                )
        elif density is not None:
            raise ComposeError(f"--density applies to {', '.join(MERGE_METHODS)}, not {method or 'stack'}")
        if self.svd not in TRUNCATIONS:
            raise ComposeError(f"svd must be one of {', '.join(TRUNCATIONS)}, got {shown(self.svd)}")
        if self.svd == "randomized" and method not in MERGE_METHODS:
            raise ComposeError(
                f"--svd randomized applies to {', '.join(MERGE_METHODS)}; {method or 'stack/svd'} truncates exactly "
                "from the low-rank factors (milliseconds per module), so there is nothing to approximate"
            )
        if self.majority_sign not in MAJORITY_SIGNS:
            raise ComposeError(f"majority_sign must be 'total' or 'frequency', got {shown(self.majority_sign)}")

    def record(self, method: str, weights: list[float], dtype: str) -> dict[str, Any]:
        """The settings that determine the result, for the lineage record (``method`` is the one that ran)."""
        params: dict[str, Any] = {"weights": weights, "rank": self.rank, "max_rank": self.max_rank}
        if method in MERGE_METHODS:
            params |= {"density": self.density, "seed": self.seed, "svd": self.svd}
            if method in SIGN_METHODS:
                params["majority_sign"] = self.majority_sign
        return params | {"dtype": dtype, "force": self.force}


def _positive(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1
