"""The validation report: per-model metrics, the side-by-side table, the
flat result records and the eval payloads pushed to the hub (no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Metrics in table order; ``tokens`` is bookkeeping and is not pushed.
METRICS = ("loss", "perplexity", "token_accuracy", "exact_match")


@dataclass
class ModelResult:
    """One row of the comparison: the base, or the base with one adapter."""

    name: str  # "base", or the adapter argument as given
    adapter: dict[str, Any] | None
    metrics: dict[str, float]
    samples: list[dict[str, str]] = field(default_factory=list)  # a few generations, for eyeballing


@dataclass
class ValidationReport:
    """Everything :func:`~peft_hub.gpu_runtime.validator.validate` measured, and on what."""

    base_model: str
    quantization: str
    device: str
    dtype: str
    seed: int
    split: str
    dataset: dict[str, Any]  # name, sha256, rows, total_rows
    prompts: dict[str, Any] | None
    models: list[ModelResult]
    peft_hub_version: str
    pushed: dict[str, Any] = field(default_factory=dict)

    def model(self, name: str) -> ModelResult:
        return next(m for m in self.models if m.name == name)

    def _source(self, metric: str) -> dict[str, Any]:
        return self.prompts if (metric == "exact_match" and self.prompts) else self.dataset

    def delta(self, name: str) -> dict[str, float]:
        """``adapter - base`` for every metric both have."""
        base, other = self.models[0].metrics, self.model(name).metrics
        return {k: other[k] - base[k] for k in METRICS if k in base and k in other}

    def table(self) -> list[dict[str, Any]]:
        """One row per metric: base, each model, and each model's difference from the base."""
        rows = []
        for metric in METRICS:
            if metric not in self.models[0].metrics:
                continue
            row: dict[str, Any] = {"metric": metric}
            for m in self.models:
                row[m.name] = m.metrics[metric]
                if m is not self.models[0]:
                    row[f"Δ {m.name}"] = m.metrics[metric] - self.models[0].metrics[metric]
            rows.append(row)
        return rows

    def results(self) -> list[dict[str, Any]]:
        """Flat records: each says what was measured, on which data, with which setup."""
        out = []
        for m in self.models:
            for metric in METRICS:
                if metric not in m.metrics:
                    continue
                src = self._source(metric)
                out.append({
                    "model": m.name,
                    "adapter": (m.adapter or {}).get("pinned"),
                    "metric": metric,
                    "value": m.metrics[metric],
                    "dataset": src["name"],
                    "dataset_sha256": src["sha256"],
                    "split": self.split,
                    "base_model": self.base_model,
                    "quantization": self.quantization,
                    "device": self.device,
                    "dtype": self.dtype,
                    "peft_hub_version": self.peft_hub_version,
                })
        return out

    def evals_for(self, name: str) -> list[dict[str, Any]]:
        """The payload for ``client.add_evals`` for one adapter, with the base value alongside."""
        m, base = self.model(name), self.models[0]
        evals = []
        for metric in METRICS:
            if metric not in m.metrics:
                continue
            src = self._source(metric)
            evals.append({
                "metric": metric,
                "value": m.metrics[metric],
                "dataset": src["name"],
                "dataset_version": src["sha256"],
                "split": self.split,
                "extra": {
                    "base_model": self.base_model,
                    "quantization": self.quantization,
                    "device": self.device,
                    "dtype": self.dtype,
                    "peft_hub_version": self.peft_hub_version,
                    "base_value": base.metrics.get(metric),
                },
            })
        return evals

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["table"] = self.table()
        d["results"] = self.results()
        return d

    def format_table(self) -> str:
        """The comparison as aligned text, for the CLI."""
        rows = self.table()
        if not rows:
            return ""
        cols = list(rows[0])
        cells = [[str(c) for c in cols]] + [
            [r["metric"]] + [f"{r[c]:+.4f}" if c.startswith("Δ") else f"{r[c]:.4f}" for c in cols[1:]] for r in rows
        ]
        widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                           for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
                 for row in cells]
        return "\n".join(lines)
