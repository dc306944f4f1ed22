"""The materialize / validate / demo commands through the real root CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_runtime_helpers import write_jsonl
from tiny_models import make_lora, tiny_llama

from peft_hub.cli import cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cli_module_imports_without_torch():
    code = (
        "import sys, peft_hub.gpu_runtime, peft_hub.gpu_runtime.cli as c; "
        "assert [x.name for x in c.COMMANDS] == ['materialize', 'validate', 'demo']; "
        "heavy = {'torch', 'transformers', 'peft', 'bitsandbytes', 'safetensors'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def model_dirs(tmp_path, client_env):
    from peft_hub.gpu_runtime.tokenizer import save_char_tokenizer

    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    save_char_tokenizer(tmp_path / "base")
    make_lora(base, tmp_path / "lora")
    return tmp_path


def test_materialize_and_validate_commands(model_dirs):
    tmp = model_dirs
    runner = CliRunner()
    result = runner.invoke(cli, ["materialize", str(tmp / "base"), str(tmp / "lora"), "-o", str(tmp / "out"),
                                 "--device", "cpu", "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert "14 tensors merged" in result.output and "bf16" in result.output
    assert json.loads((tmp / "out" / "config.json").read_text())["dtype"] == "bfloat16"

    data = write_jsonl(tmp / "d.jsonl", [{"prompt": "a", "completion": "b"}, {"text": "hello"}])
    result = runner.invoke(cli, ["validate", str(tmp / "base"), str(tmp / "lora"), "--data", str(data),
                                 "--device", "cpu", "-o", str(tmp / "r.json"), "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output and f"Δ {tmp / 'lora'}" in result.output
    assert json.loads((tmp / "r.json").read_text())["models"][1]["name"] == str(tmp / "lora")


def test_errors_are_one_line_and_exit_1(model_dirs):
    tmp = model_dirs
    runner = CliRunner()
    # not a directory, so it is a hub ref, and the hub is not there
    result = runner.invoke(cli, ["--url", "http://127.0.0.1:9", "materialize", str(tmp / "base"), "team/nope",
                                 "-o", str(tmp / "o")])
    assert result.exit_code == 1
    assert result.output.startswith("Error:") and "Traceback" not in result.output
    result = runner.invoke(cli, ["materialize", str(tmp / "base"), str(tmp / "lora"), "--quantize", "fp8"])
    assert result.exit_code == 2 and "fp8" in result.output
    bad = write_jsonl(tmp / "bad.jsonl", [{"nope": 1}])
    result = runner.invoke(cli, ["validate", str(tmp / "base"), "--data", str(bad), "--device", "cpu"])
    assert result.exit_code == 1 and "bad.jsonl:1" in result.output


@pytest.mark.integration  # a subprocess or a model trained: slow
def test_demo_command_offline(tmp_path, client_env):
    result = CliRunner().invoke(cli, ["demo", "--offline", "-w", str(tmp_path / "w"), "--pretrain-steps", "2",
                                      "--lora-steps", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "materialized nf4" in result.output and "no hub: skipping push" in result.output
    assert (tmp_path / "w" / "demo_report.json").exists()
