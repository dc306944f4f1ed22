"""validate: metrics against direct computation, masking, generation, JSON, evals."""

from __future__ import annotations

import copy
import hashlib
import json
import math

import pytest
import torch
from test_runtime_helpers import FakeHub, cuda, write_jsonl
from tiny_models import make_lora, tiny_gpt2, tiny_llama

from peft_hub.errors import IncompatibleAdaptersError, InvalidInputError
from peft_hub.gpu_runtime.jsonl import IGNORE, encode_loss_row
from peft_hub.gpu_runtime.tokenizer import (
    build_char_tokenizer,
    load_tokenizer,
    save_char_tokenizer,
)
from peft_hub.gpu_runtime.validator import validate

TEXT_ROWS = [{"text": f"the cat {i} sat on the mat"} for i in range(5)]
PC_ROWS = [{"prompt": f"add {i}+{i}=", "completion": str(2 * i)} for i in range(6)]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    base = tiny_llama(hidden=64)
    base.save_pretrained(root / "base")
    save_char_tokenizer(root / "base")
    make_lora(base, root / "a", seed=1)
    make_lora(base, root / "b", seed=2, target_modules=["v_proj"])
    data = write_jsonl(root / "data.jsonl", TEXT_ROWS + PC_ROWS)
    prompts = write_jsonl(root / "prompts.jsonl",
                          [{"prompt": r["prompt"], "reference": r["completion"]} for r in PC_ROWS])
    return root, base, data, prompts


def _direct_metrics(model, tok, rows) -> tuple[float, float]:
    """Loss and token accuracy computed row by row with transformers' own loss."""
    loss_sum, n, correct = 0.0, 0, 0
    for row in rows:
        ids, labels = encode_loss_row(row, tok, 1024)
        ids_t, labels_t = torch.tensor([ids]), torch.tensor([labels])
        with torch.no_grad():
            out = model(input_ids=ids_t, labels=labels_t)
        scored = int((labels_t[:, 1:] != IGNORE).sum())
        loss_sum += out.loss.item() * scored
        n += scored
        pred = out.logits[0, :-1].argmax(-1)
        correct += int(((pred == labels_t[0, 1:]) & (labels_t[0, 1:] != IGNORE)).sum())
    return loss_sum / n, correct / n


def test_loss_and_accuracy_equal_a_direct_computation(setup):
    from peft import PeftModel

    root, base, data, _ = setup
    tok = load_tokenizer(root / "base")
    report = validate(root / "base", str(root / "a"), data=data, device="cpu", batch_size=4)
    loss, acc = _direct_metrics(base, tok, TEXT_ROWS + PC_ROWS)
    assert report.models[0].metrics["loss"] == pytest.approx(loss, abs=1e-5)
    assert report.models[0].metrics["token_accuracy"] == pytest.approx(acc)
    assert report.models[0].metrics["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)

    with_adapter = PeftModel.from_pretrained(copy.deepcopy(base), root / "a").eval()
    loss_a, _ = _direct_metrics(with_adapter, tok, TEXT_ROWS + PC_ROWS)
    assert report.models[1].metrics["loss"] == pytest.approx(loss_a, abs=1e-5)
    assert abs(loss_a - loss) > 1e-3  # the adapter really changes the model
    assert report.delta(str(root / "a"))["loss"] == pytest.approx(loss_a - loss, abs=1e-5)


def test_prompt_completion_rows_score_only_the_completion(setup):
    root, _, _, _ = setup
    tok = load_tokenizer(root / "base")
    ids, labels = encode_loss_row({"prompt": "add 2+2=", "completion": "4"}, tok, 1024)
    n_prompt = len(tok("add 2+2=")["input_ids"])
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] == [tok.convert_tokens_to_ids("4"), tok.eos_token_id]

    # Scored tokens: 2 per row (the digit(s) and EOS), nothing from the prompt.
    data = write_jsonl(root / "pc_only.jsonl", PC_ROWS)
    report = validate(root / "base", data=data, device="cpu")
    expected_tokens = sum(len(r["completion"]) + 1 for r in PC_ROWS)
    assert report.models[0].metrics["tokens"] == expected_tokens
    # Changing only the prompts changes the loss (conditioning) but never the number of scored tokens.
    other = write_jsonl(root / "pc_other.jsonl", [{**r, "prompt": "x" + r["prompt"] * 2} for r in PC_ROWS])
    report2 = validate(root / "base", data=other, device="cpu")
    assert report2.models[0].metrics["tokens"] == expected_tokens


def test_loss_does_not_depend_on_batch_size_and_runs_are_deterministic(setup):
    root, _, data, prompts = setup
    one = validate(root / "base", str(root / "a"), data=data, prompts=prompts, device="cpu", batch_size=1)
    many = validate(root / "base", str(root / "a"), data=data, prompts=prompts, device="cpu", batch_size=5)
    again = validate(root / "base", str(root / "a"), data=data, prompts=prompts, device="cpu", batch_size=5)
    for a, b in zip(one.models, many.models, strict=True):
        assert a.metrics["loss"] == pytest.approx(b.metrics["loss"], abs=1e-5)
    assert [m.metrics for m in many.models] == [m.metrics for m in again.models]
    assert [m.samples for m in many.models] == [m.samples for m in again.models]


def test_exact_match_is_greedy_generation_against_the_reference(setup):
    root, base, _, _ = setup
    tok = load_tokenizer(root / "base")
    # Make the references what the base generates greedily for half of the prompts.
    rows = []
    for i, r in enumerate(PC_ROWS):
        ids = torch.tensor([tok(r["prompt"])["input_ids"]])
        out = base.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id)
        greedy = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        rows.append({"prompt": r["prompt"], "reference": greedy if i % 2 == 0 else greedy + "zz"})
    prompts = write_jsonl(root / "greedy.jsonl", rows)
    data = write_jsonl(root / "d.jsonl", TEXT_ROWS)
    report = validate(root / "base", data=data, prompts=prompts, device="cpu", max_new_tokens=3, batch_size=4)
    assert report.models[0].metrics["exact_match"] == pytest.approx(0.5)
    assert report.prompts["sha256"] == hashlib.sha256(prompts.read_bytes()).hexdigest()


def test_json_output_records_every_result_with_its_setup(setup, tmp_path):
    root, _, data, prompts = setup
    out = tmp_path / "results.json"
    adapters = f"{root / 'a'},{root / 'b'}"
    validate(root / "base", adapters, data=data, prompts=prompts, device="cpu", output=out, split="test")
    doc = json.loads(out.read_text())
    names = ["base", str(root / "a"), str(root / "b")]
    assert [m["name"] for m in doc["models"]] == names
    assert doc["dataset"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert doc["dataset"]["name"] == "data.jsonl" and doc["dataset"]["rows"] == len(TEXT_ROWS + PC_ROWS)
    assert len(doc["results"]) == 3 * 4  # three models x (loss, perplexity, token_accuracy, exact_match)
    for rec in doc["results"]:
        assert set(rec) >= {"metric", "value", "dataset", "dataset_sha256", "base_model", "quantization", "device",
                            "dtype", "peft_hub_version", "split"}
        assert rec["quantization"] == "none" and rec["device"] == "cpu" and rec["dtype"] == "fp32"
        assert rec["split"] == "test"
        expected_src = "prompts.jsonl" if rec["metric"] == "exact_match" else "data.jsonl"
        assert rec["dataset"] == expected_src
    table = {row["metric"]: row for row in doc["table"]}
    base_loss, a_loss = table["loss"]["base"], table["loss"][names[1]]
    assert table["loss"][f"Δ {names[1]}"] == pytest.approx(a_loss - base_loss)


def test_push_evals_attaches_results_to_the_pulled_revision(setup):
    root, _, data, prompts = setup
    hub = FakeHub(root / "hub")
    hub.add("team/a", root / "a", revision="rev-a")
    report = validate(root / "base", "team/a", data=data, prompts=prompts, device="cpu", client=hub,
                      push_evals=True)
    assert hub.pulls == ["team/a"]
    ((ref, evals),) = hub.evals
    assert ref == "team/a@rev-a"  # pinned: a later push to main cannot steal these results
    assert {e["metric"] for e in evals} == {"loss", "perplexity", "token_accuracy", "exact_match"}
    for e in evals:
        assert set(e) == {"metric", "value", "dataset", "dataset_version", "split", "extra"}
        assert set(e["extra"]) >= {"base_model", "quantization", "device", "dtype", "peft_hub_version"}
        src = prompts if e["metric"] == "exact_match" else data
        assert e["dataset_version"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert e["value"] == report.models[1].metrics[e["metric"]]
        assert e["extra"]["base_value"] == report.models[0].metrics[e["metric"]]

    with pytest.raises(InvalidInputError, match="not a hub adapter"):
        validate(root / "base", str(root / "a"), data=data, device="cpu", client=hub, push_evals=True)
    assert len(hub.evals) == 1


def test_quantized_validation_and_a_composed_entry(setup):
    root, _, data, _ = setup
    report = validate(root / "base", f"{root / 'a'}+{root / 'b'}", data=data, device="cpu", quantize="nf4")
    assert report.quantization == "nf4"
    fp = validate(root / "base", f"{root / 'a'}+{root / 'b'}", data=data, device="cpu")
    # nf4 is close to, but not the same as, full precision
    assert report.models[1].metrics["loss"] == pytest.approx(fp.models[1].metrics["loss"], rel=0.05)
    assert report.models[1].metrics["loss"] != fp.models[1].metrics["loss"]


def test_input_errors(setup, tmp_path):
    root, _, data, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"prompt": "no completion"}\n')
    with pytest.raises(InvalidInputError, match="bad.jsonl:2"):
        validate(root / "base", data=bad, device="cpu")
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(InvalidInputError, match="bad.jsonl:2: not valid JSON"):
        validate(root / "base", data=bad, device="cpu")
    gpt2_lora = make_lora(tiny_gpt2(), tmp_path / "gpt2_lora")
    with pytest.raises(IncompatibleAdaptersError, match="cannot attach"):
        validate(root / "base", str(gpt2_lora), data=data, device="cpu")
    no_tok = tmp_path / "no_tok"
    tiny_llama().save_pretrained(no_tok)
    with pytest.raises(InvalidInputError, match="save_char_tokenizer"):
        validate(no_tok, data=data, device="cpu")


def test_max_samples_is_a_seeded_subset(setup):
    root, _, data, _ = setup
    a = validate(root / "base", data=data, device="cpu", max_samples=4, seed=1)
    b = validate(root / "base", data=data, device="cpu", max_samples=4, seed=1)
    c = validate(root / "base", data=data, device="cpu", max_samples=4, seed=2)
    assert a.dataset["rows"] == 4 and a.dataset["total_rows"] == len(TEXT_ROWS + PC_ROWS)
    assert a.models[0].metrics == b.models[0].metrics
    assert a.models[0].metrics != c.models[0].metrics


def test_char_tokenizer_round_trips_and_fits_the_tiny_vocab(tmp_path):
    from transformers import AutoTokenizer

    tok = build_char_tokenizer()
    assert len(tok) == 100  # fits the 128-token vocabulary of the tiny models
    text = "Hello, World!\nupper: horse -> HORSE"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok("é")["input_ids"][1] == tok.unk_token_id
    tiny_llama().save_pretrained(tmp_path)
    save_char_tokenizer(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids and again.pad_token_id == 0 and again.eos_token_id == 2
    with pytest.raises(InvalidInputError, match="vocab_size is 50"):
        tiny_llama(vocab_size=50).save_pretrained(tmp_path / "small")
        save_char_tokenizer(tmp_path / "small")


@pytest.mark.cuda
@cuda
def test_validate_on_cuda_matches_cpu(setup):
    root, _, data, _ = setup
    cpu = validate(root / "base", str(root / "a"), data=data, device="cpu")
    gpu = validate(root / "base", str(root / "a"), data=data, device="cuda", dtype="fp32")
    assert gpu.device.startswith("cuda")
    for a, b in zip(cpu.models, gpu.models, strict=True):
        assert a.metrics["loss"] == pytest.approx(b.metrics["loss"], rel=1e-3)
