"""The end-to-end demo: pretrain, adapt twice, push, compose, materialize, validate.

Everything runs on the CPU in a few minutes:

1. a ~0.9M-parameter Llama is built from a config and pretrained briefly on
   ``data/corpus.txt`` (simple English sentences), with a character tokenizer;
2. two LoRAs are trained on two synthetic tasks over a fixed word list:
   ``upper`` (``upper: horse`` -> ``HORSE``) and ``reverse`` (``reverse: horse`` -> ``esroh``),
   with a quarter of each batch replaying 32-character windows of the corpus;
3. with a hub, both are pushed (``hub=None`` skips every hub step);
4. they are composed (exact stacking: ``ΔW = ΔW_upper + ΔW_reverse``);
5. the composition is materialized unquantized, nf4 and int8;
6. everything is validated on both tasks, and with a hub the evals are pushed.

The tasks are evaluated on the words the adapters were trained on: a model
this small memorises the mapping per word rather than learning the rule, so
the numbers show that adapters carry task knowledge and how well it survives
composition and quantization, not generalisation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_hub.errors import InvalidInputError

if TYPE_CHECKING:  # quantize imports torch, which the demo loads only when it runs
    from peft_hub.gpu_runtime.quantize import Quantization

CORPUS = Path(__file__).parent / "data" / "corpus.txt"
#: Words the pretraining corpus uses (see data/make_corpus.py).
WORDS = [
    "cat", "dog", "bird", "fish", "horse", "cow", "sheep", "goat", "duck", "mouse", "rabbit", "fox", "bear",
    "wolf", "frog", "lion", "tiger", "owl", "book", "apple", "ball", "box", "cup", "hat", "key", "lamp", "map",
    "pen", "ring", "rope", "shoe", "song", "stone", "table", "chair", "door", "bread", "cake", "coin", "kite",
]
TASKS: dict[str, Callable[[str], str]] = {"upper": str.upper, "reverse": lambda w: w[::-1]}


@dataclass
class DemoReport:
    """What the demo built, where, and how every model scored on every task."""

    workdir: str
    base: dict[str, Any]
    adapters: dict[str, dict[str, Any]]
    composed: dict[str, Any]
    materialized: dict[str, dict[str, Any]]
    scores: dict[str, dict[str, dict[str, float]]]  # model -> task -> metric -> value
    pushed_evals: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format_table(self) -> str:
        """Exact match and loss per model and task."""
        tasks = list(TASKS)
        head = f"{'model':<22}" + "".join(f"{t + ' EM':>12}{t + ' loss':>14}" for t in tasks)
        lines = [head]
        for model, per_task in self.scores.items():
            cells = "".join(
                f"{per_task[t]['exact_match']:>12.3f}{per_task[t]['loss']:>14.3f}" for t in tasks if t in per_task
            )
            lines.append(f"{model:<22}{cells}")
        return "\n".join(lines)


def write_task_files(task: str, words: list[str], out_dir: Path) -> tuple[Path, Path, list[dict[str, str]]]:
    """``{task}.jsonl`` (prompt/completion) and ``{task}_prompts.jsonl`` (prompt/reference)."""
    f = TASKS[task]
    rows = [{"prompt": f"{task}: {w}\n", "completion": f(w)} for w in words]
    data, prompts = out_dir / f"{task}.jsonl", out_dir / f"{task}_prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"], "reference": r["completion"]}) + "\n" for r in rows))
    return data, prompts, rows


def run_demo(
    workdir: str | Path,
    hub: Any = None,
    *,
    namespace: str = "demo",
    pretrain_steps: int = 150,
    lora_steps: int = 500,
    words: list[str] | None = None,
    quantizations: tuple[Quantization, ...] = ("nf4", "int8"),
    seed: int = 0,
    device: str = "auto",
    log: Callable[[str], None] = lambda msg: None,
) -> DemoReport:
    """Run the whole loop in ``workdir`` (created; must be empty).

    Args:
        workdir: where the base, adapters, models and results go.
        hub: a ``HubClient``; None skips pushing, pulling and eval upload.
        namespace: hub owner for the pushed adapters (``demo/upper`` ...).
        pretrain_steps, lora_steps: training lengths (the defaults take a few CPU minutes).
        words: the task vocabulary (default :data:`WORDS`).
        quantizations: which quantized materializations to build and validate.
        seed: seeds everything.
        device: where training and validation run.
        log: called with one line per stage.

    Returns:
        A :class:`DemoReport`, also written to ``workdir/demo_report.json``.
    """
    from peft_hub.gpu_runtime.device import resolve_device, single_cpu_thread

    started = time.perf_counter()
    work = Path(workdir)
    if work.exists() and any(work.iterdir()):
        raise InvalidInputError(f"{work} is not empty")
    for sub in ("tasks", "adapters", "models", "results"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    words = list(words or WORDS)
    # Models this small are all per-op overhead: see single_cpu_thread.
    with single_cpu_thread(dev):
        return _run(work, hub, dev, words, namespace, pretrain_steps, lora_steps, quantizations, seed, log, started)


def _run(work: Path, hub: Any, dev: Any, words: list[str], namespace: str, pretrain_steps: int, lora_steps: int,
         quantizations: tuple[Quantization, ...], seed: int, log: Callable[[str], None], started: float) -> DemoReport:
    from peft_hub.compose import compose_dirs
    from peft_hub.gpu_runtime.materializer import materialize
    from peft_hub.gpu_runtime.train import pretrain_base, train_lora
    from peft_hub.gpu_runtime.validator import validate

    log(f"1/6 pretraining the base for {pretrain_steps} steps on {CORPUS.name}")
    base = work / "base"
    corpus = CORPUS.read_text()
    base_info = pretrain_base(base, corpus, steps=pretrain_steps, seed=seed, device=dev)

    log(f"2/6 training {len(TASKS)} LoRAs for {lora_steps} steps each")
    files: dict[str, tuple[Path, Path]] = {}
    adapters: dict[str, dict[str, Any]] = {}
    for i, task in enumerate(TASKS):
        data, prompts, rows = write_task_files(task, words, work / "tasks")
        files[task] = (data, prompts)
        path = work / "adapters" / task
        stats = train_lora(base, rows, path, steps=lora_steps, batch_size=16, lr=5e-3, seed=seed + i,
                           base_name=f"{namespace}/base", replay=corpus, replay_fraction=0.25, device=dev)
        adapters[task] = {"path": str(path), "ref": str(path), "train": stats}

    if hub is not None:
        log("3/6 pushing the adapters")
        for task, info in adapters.items():
            pushed = hub.push(info["path"], name=f"{namespace}/{task}")
            info["ref"] = f"{pushed.repo_id}@{pushed.revision}"
    else:
        log("3/6 no hub: skipping push")

    log("4/6 composing upper + reverse (stacked)")
    composed_path = work / "adapters" / "upper-reverse"
    parents = []
    for info in adapters.values():
        repo, _, rev = info["ref"].partition("@")
        parents.append({"ref": repo, "revision": rev or None})
    compose_report = compose_dirs([Path(a["path"]) for a in adapters.values()], None, composed_path, parents=parents)
    composed: dict[str, Any] = {"path": str(composed_path), "ref": str(composed_path), "method": compose_report.method,
                "rank": compose_report.rank}
    if hub is not None:
        pushed = hub.push(composed_path, name=f"{namespace}/upper-reverse")
        composed["ref"] = f"{pushed.repo_id}@{pushed.revision}"

    log(f"5/6 materializing: none, {', '.join(quantizations)}")
    materialized: dict[str, dict[str, Any]] = {}
    levels: tuple[Quantization, ...] = ("none", *quantizations)
    for q in levels:
        out = work / "models" / f"merged-{q}"
        built = materialize(base, composed["ref"], out, quantize=q, device=str(dev), client=hub)
        materialized[q] = {"path": str(out), "seconds": built.seconds, "merged": built.merged,
                           "quantized": built.quantized}

    log("6/6 validating every model on every task")
    refs = {task: info["ref"] for task, info in adapters.items()}
    refs["upper+reverse"] = composed["ref"]
    scores: dict[str, dict[str, dict[str, float]]] = {}
    pushed_evals: list[str] = []
    for task, (data, prompts) in files.items():
        report = validate(
            base, list(refs.values()), data=data, prompts=prompts, device=str(dev), seed=seed, client=hub,
            push_evals=hub is not None, output=work / "results" / f"{task}.json",
        )
        pushed_evals.extend(report.pushed)
        for label, ref in [("base", "base"), *refs.items()]:
            scores.setdefault(label, {})[task] = _pick(report.model(ref).metrics)
        for level, info in materialized.items():
            checked = validate(info["path"], data=data, prompts=prompts, device=str(dev), seed=seed,
                               output=work / "results" / f"{task}-merged-{level}.json")
            scores.setdefault(f"materialized {level}", {})[task] = _pick(checked.models[0].metrics)

    result = DemoReport(
        workdir=str(work), base=base_info, adapters=adapters, composed=composed, materialized=materialized,
        scores=scores, pushed_evals=sorted(set(pushed_evals)), seconds=round(time.perf_counter() - started, 1),
    )
    (work / "demo_report.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def _pick(metrics: dict[str, float]) -> dict[str, float]:
    return {k: metrics[k] for k in ("exact_match", "loss", "token_accuracy") if k in metrics}
