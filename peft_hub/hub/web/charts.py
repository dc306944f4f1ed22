"""Evals for the adapter page: the table rows, and one line chart per metric
across revisions with the base model's score as a reference line.

Conventions for the base model's score on a dataset: an eval whose ``extra``
has ``"variant": "base"`` (``peft-hub eval add --base``), or the
``extra.base_value`` that ``peft-hub validate --push-evals`` records next to
the adapter's own score, measured in the same run. Every other eval is the
adapter's own score.

The charts are laid out here as plain numbers; the template draws them as
inline SVG, so every label goes through Jinja's autoescaping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from peft_hub.hub.models import Eval, Revision, pk

WIDTH, HEIGHT = 400, 230
#: Values a chart can place; others (non-finite, or beyond any real metric)
#: are listed in the table but left out of charts and gains.
CHARTABLE = 1e15


def chartable(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and abs(value) <= CHARTABLE


LEFT, RIGHT, TOP, BOTTOM = 50, 12, 24, 44


def is_base(e: Eval) -> bool:
    return isinstance(e.extra, dict) and e.extra.get("variant") == "base"


def base_value(e: Eval) -> float | None:
    """The base model's score carried by one of the adapter's own evals."""
    value = e.extra.get("base_value") if isinstance(e.extra, dict) else None
    return float(value) if chartable(value) else None


def series_key(e: Eval) -> tuple[str, str, str | None, str | None]:
    """Values are comparable only for the same metric, dataset, version and split."""
    return e.metric, e.dataset, e.dataset_version, e.split


@dataclass
class Point:
    x: float
    y: float
    value: float
    sha: str
    current: bool


@dataclass
class Chart:
    metric: str
    dataset: str
    detail: str  # "v2, test"
    points: list[Point]
    base: tuple[float, float] | None  # (y, value) of the base model's score
    yticks: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


def nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """Round tick values covering [lo, hi]."""
    span = hi - lo
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    ticks: list[float] = []
    v = first
    while v <= hi + step * 1e-9 and len(ticks) <= 2 * count:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _fmt_tick(v: float) -> str:
    return f"{v:.6g}"


def layout(key: tuple, by_revision: list[tuple[str, float]], base: float | None, current_sha: str) -> Chart:
    """Place the points (oldest revision on the left) and the base line."""
    values = [v for _, v in by_revision] + ([base] if base is not None else [])
    lo, hi = min(values), max(values)
    # A span too small against the values' size is drawn as flat, so the tick
    # arithmetic never underflows.
    pad = (hi - lo) * 0.12 if hi - lo > 1e-9 * max(abs(hi), abs(lo), 1.0) else (abs(hi) * 0.1 or 1.0)
    lo, hi = lo - pad, hi + pad
    chart = Chart(key[0], key[1], ", ".join(p for p in key[2:] if p), [], None)

    def y(v: float) -> float:
        return chart.bottom - (v - lo) / (hi - lo) * (chart.bottom - chart.top)

    n = len(by_revision)
    for i, (sha, v) in enumerate(by_revision):
        inset = 32  # room for the value labels beside the axis
        width = chart.right - chart.left - 2 * inset
        x = (chart.left + chart.right) / 2 if n == 1 else chart.left + inset + i * width / (n - 1)
        chart.points.append(Point(x, y(v), v, sha, sha == current_sha))
    if base is not None:
        chart.base = (y(base), base)
    chart.yticks = [(y(t), _fmt_tick(t)) for t in nice_ticks(lo, hi)]
    return chart


def build(
    evals: list[tuple[Eval, str]], revisions: list[Revision], current_sha: str
) -> tuple[list[dict[str, Any]], list[Chart]]:
    """The eval table rows (newest first, with the difference to the base
    model's score) and one chart per metric/dataset series."""
    order = {r.sha: i for i, r in enumerate(sorted(revisions, key=pk))}
    base_scores: dict[tuple, float] = {}
    latest: dict[tuple, dict[str, float]] = {}
    for e, sha in evals:  # oldest first, so later evals overwrite earlier ones
        if not chartable(e.value):
            continue
        if is_base(e):
            base_scores[series_key(e)] = e.value
        else:
            latest.setdefault(series_key(e), {})[sha] = e.value
            if (carried := base_value(e)) is not None:
                base_scores[series_key(e)] = carried
    rows = []
    for e, sha in reversed(evals):
        base = base_scores.get(series_key(e))
        rows.append({
            "eval": e, "sha": sha, "is_base": is_base(e),
            "delta": None if is_base(e) or base is None or not chartable(e.value) else e.value - base,
        })
    charts = []
    for key in sorted(latest, key=lambda k: tuple(str(p) for p in k)):
        by_revision = sorted(latest[key].items(), key=lambda kv: order.get(kv[0], -1))
        charts.append(layout(key, by_revision, base_scores.get(key), current_sha))
    return rows, charts


#: Metrics where a smaller value is better; every other metric counts as "higher is better".
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "ppl", "wer", "cer", "error", "error_rate"})


def gain(e: Eval) -> float | None:
    """How much better than the base model this eval is, relative to the base's
    score (positive: better), or None without a base score on the same eval."""
    base = base_value(e)
    if base is None or not chartable(e.value):
        return None
    sign = -1.0 if e.metric.lower() in LOWER_IS_BETTER else 1.0
    return sign * (e.value - base) / max(abs(base), 1e-9)


def headline(evals: list[Eval]) -> Eval | None:
    """The adapter's most telling eval: the largest gain over the base model
    where evals carry a base score, else the newest of its own evals."""
    own = [e for e in evals if not is_base(e)]
    scored = [(g, e) for e in own if (g := gain(e)) is not None]
    if scored:
        return max(scored, key=lambda pair: pair[0])[1]
    return own[0] if own else None
