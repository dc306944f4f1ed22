"""The demo loop, shortened to a few training steps: once with a recording
stand-in for the client, once against a live hub (integration)."""

from __future__ import annotations

import json

import pytest
from test_runtime_helpers import FakeHub

from peft_hub.errors import InvalidInputError
from peft_hub.gpu_runtime.demo import TASKS, run_demo

SHORT = {"pretrain_steps": 3, "lora_steps": 3, "words": ["cat", "dog", "owl", "hat"], "device": "cpu"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.integration  # a subprocess or a model trained: slow
def test_demo_runs_the_whole_loop_and_pushes_through_the_client(tmp_path):
    hub = FakeHub(tmp_path / "hub")
    stages = []
    report = run_demo(tmp_path / "work", hub, log=stages.append, **SHORT)

    assert [s[:3] for s in stages] == ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]
    pushed = {k.partition("@")[0] for k in hub.store}
    assert pushed == {"demo/upper", "demo/reverse", "demo/upper-reverse"}
    refs = [info["ref"] for info in report.adapters.values()] + [report.composed["ref"]]
    assert all("@rev" in ref for ref in refs)
    # every hub adapter was validated on both tasks, and its evals went to its exact revision
    assert sorted(ref for ref, _ in hub.evals) == sorted(refs * len(TASKS))
    assert set(report.pushed_evals) == set(refs)
    # the composed adapter was pulled from the hub to be materialized and validated
    assert report.composed["ref"] in hub.pulls

    models = {"base", "upper", "reverse", "upper+reverse", "materialized none", "materialized nf4",
              "materialized int8"}
    assert set(report.scores) == models
    for per_task in report.scores.values():
        assert set(per_task) == set(TASKS)
        for metrics in per_task.values():
            assert 0.0 <= metrics["exact_match"] <= 1.0 and metrics["loss"] > 0
    # materializing the composition gives the same model as applying it on the fly
    for task in TASKS:
        assert report.scores["materialized none"][task]["loss"] == pytest.approx(
            report.scores["upper+reverse"][task]["loss"], abs=1e-4)

    work = tmp_path / "work"
    saved = json.loads((work / "demo_report.json").read_text())
    assert saved["scores"] == report.scores
    for q in ("nf4", "int8"):
        config = json.loads((work / "models" / f"merged-{q}" / "config.json").read_text())
        assert config["quantization_config"]["quant_method"] == "bitsandbytes"
    assert (work / "base" / "tokenizer.json").exists()
    assert {p.name for p in (work / "results").iterdir()} >= {"upper.json", "reverse.json"}
    assert "upper+reverse" in report.format_table()

    with pytest.raises(InvalidInputError, match="not empty"):
        run_demo(work, None, **SHORT)


@pytest.mark.integration  # a subprocess or a model trained: slow
def test_demo_without_a_hub_keeps_everything_local(tmp_path):
    report = run_demo(tmp_path / "work", None, quantizations=(), **SHORT)
    assert report.pushed_evals == []
    assert report.composed["ref"] == str(tmp_path / "work" / "adapters" / "upper-reverse")
    assert set(report.materialized) == {"none"}


@pytest.mark.integration
def test_demo_against_a_live_hub(embedded_hub, tmp_path):
    from peft_hub.client import HubClient

    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "cache") as client:
        report = run_demo(tmp_path / "work", client, quantizations=("nf4",), **SHORT)
        evals = client.evals("demo/upper")
        assert {e["metric"] for e in evals} == {"loss", "perplexity", "token_accuracy", "exact_match"}
        revision = report.adapters["upper"]["ref"].partition("@")[2]
        assert {e["revision"] for e in evals} == {revision}
        assert {e["dataset"] for e in evals} == {"upper.jsonl", "upper_prompts.jsonl", "reverse.jsonl",
                                                 "reverse_prompts.jsonl"}
        assert client.info("demo/upper-reverse")["revision"] == report.composed["ref"].partition("@")[2]
