"""Hostile base models and adapters against materialize and validate, and
hostile output paths for compose and materialize.

A base model directory is the attacker's too (``--kind model`` on the hub, a
mirror, a tarball): its index names the shard files materialize opens and
writes, its config.json sizes what quantization builds, and its small files
are copied into an output the user may push. Bases here are a few tensors
written with safetensors directly, so each test runs in well under a second.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_attack_s10_files import P, factors, lora, st
from test_runtime_helpers import write_jsonl

from peft_hub.compose import compose_dirs
from peft_hub.errors import (
    ComposeError,
    IncompatibleAdaptersError,
    InvalidAdapterError,
    InvalidInputError,
    PeftHubError,
)
from peft_hub.gpu_runtime import validator
from peft_hub.gpu_runtime.materializer import materialize
from peft_hub.gpu_runtime.tokenizer import save_char_tokenizer

Q, H = "model.layers.0.q_proj.weight", "lm_head.weight"
INDEX = "model.safetensors.index.json"


def base_dir(path: Path, shards: dict[str, dict[str, torch.Tensor]] | None = None, *, index: Any = None,
             config: dict[str, Any] | None = None) -> Path:
    """A base model: ``model.safetensors`` (Q and H), or the given shards with ``index`` (a weight_map
    built from the shards when None; raw text or JSON when given)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"model_type": "llama", "num_hidden_layers": 1}))
    (path / "tokenizer_config.json").write_text("{}")
    torch.manual_seed(0)
    if shards is None:
        save_file({Q: torch.randn(4, 4), H: torch.randn(8, 4)}, path / "model.safetensors")
        return path
    for name, tensors in shards.items():
        save_file(tensors, path / name)
    if index is None:
        index = {"weight_map": {k: name for name, tensors in shards.items() for k in tensors}}
    (path / INDEX).write_text(index if isinstance(index, str) else json.dumps(index))
    return path


@pytest.fixture
def adapter(tmp_path) -> Path:
    return lora(tmp_path / "adapter", st(factors(module="model.layers.0.q_proj")))


def refused(tmp_path: Path, base: Path, adapter: Path | str, error: type[PeftHubError], **options: Any) -> str:
    """Materialize must raise ``error`` in one line, fast, leaving no output and no staging directory."""
    out = tmp_path / "merged"
    start = time.perf_counter()
    with pytest.raises(error) as caught:
        materialize(base, str(adapter), out, device="cpu", **options)
    assert time.perf_counter() - start < 5
    assert not out.exists() and not list(tmp_path.glob(".merged.*"))
    assert "\n" not in caught.value.message
    return caught.value.message


def merged_q(out: Path, shard: str = "model.safetensors") -> torch.Tensor:
    return load_file(out / shard)[Q]


def expected_q(base: Path, adapter: Path, shard: str = "model.safetensors") -> torch.Tensor:
    w = load_file(base / shard)[Q]
    f = load_file(adapter / "adapter_model.safetensors")
    b, a = f[f"{P}model.layers.0.q_proj.lora_B.weight"], f[f"{P}model.layers.0.q_proj.lora_A.weight"]
    return w + 2.0 * b @ a  # lora_alpha / r = 4 / 2


# --- 1. the base's index names the files -----------------------------------------------------

TWO = {"a.safetensors": {Q: torch.ones(4, 4)}, "b.safetensors": {H: torch.ones(8, 4)}}
HOSTILE_INDEXES: dict[str, Any] = {
    "deep": "[" * 100_000 + "]" * 100_000,
    "not JSON": "{weight_map: ",
    "a list": "[1, 2]",
    "a NaN": '{"weight_map": NaN}',
    "an integer shard name": {"weight_map": {Q: 5, H: "b.safetensors"}},
    "an empty shard name": {"weight_map": {Q: "", H: "b.safetensors"}},
    "a NUL in the name": {"weight_map": {Q: "a.safetensors\x00", H: "b.safetensors"}},
    "an absolute path": {"weight_map": {Q: "/etc/passwd", H: "b.safetensors"}},
    "a parent path": {"weight_map": {Q: "../a.safetensors", H: "b.safetensors"}},
    "a hidden file": {"weight_map": {Q: ".a.safetensors", H: "b.safetensors"}},
    "a missing shard": {"weight_map": {Q: "a.safetensors", H: "c.safetensors"}},
    "a shard named like a side file": {"weight_map": {Q: "tokenizer_config.json", H: "b.safetensors"}},
    "a shard named like the report": {"weight_map": {Q: "peft_hub_materialize.json", H: "b.safetensors"}},
    "a tensor in a shard the index does not name for it": {"weight_map": {Q: "a.safetensors", H: "a.safetensors"}},
    "a tensor the shards lack": {"weight_map": {Q: "a.safetensors", H: "b.safetensors", "x": "b.safetensors"}},
    "metadata not an object": {"weight_map": {Q: "a.safetensors", H: "b.safetensors"}, "metadata": [1]},
    "no weight_map": {"metadata": {}},
}


@pytest.mark.parametrize("case", list(HOSTILE_INDEXES))
def test_hostile_indexes_are_one_clear_error(tmp_path, adapter, case):
    base = base_dir(tmp_path / "base", TWO, index=HOSTILE_INDEXES[case])
    refused(tmp_path, base, adapter, InvalidInputError)


def test_the_same_tensor_in_two_shards_is_refused(tmp_path, adapter):
    shards = {"a.safetensors": {Q: torch.ones(4, 4)}, "b.safetensors": {Q: torch.zeros(4, 4), H: torch.ones(8, 4)}}
    base = base_dir(tmp_path / "base", shards, index={"weight_map": {Q: "a.safetensors", H: "b.safetensors"}})
    assert "does not map to it" in refused(tmp_path, base, adapter, InvalidInputError)


def test_a_shard_named_like_a_side_file_was_silently_left_unmerged(tmp_path, adapter):
    """A shard called tokenizer.json was merged, written, then overwritten by the base's own copy of
    "tokenizer.json" (a side file): a model without the adapter's change, and no error. Shards must
    be NAME.safetensors files; any such name merges."""
    shards = {"tokenizer.json": {Q: torch.randn(4, 4)}, "b.safetensors": {H: torch.randn(8, 4)}}
    assert "shards are NAME.safetensors" in refused(tmp_path, base_dir(tmp_path / "hostile", shards), adapter,
                                                    InvalidInputError)
    shards = {"weights-a.safetensors": {Q: torch.randn(4, 4)}, "weights-b.safetensors": {H: torch.randn(8, 4)}}
    base = base_dir(tmp_path / "base", shards)
    out = tmp_path / "merged"
    materialize(base, str(adapter), out, device="cpu")
    assert torch.allclose(merged_q(out, "weights-a.safetensors"), expected_q(base, adapter, "weights-a.safetensors"))
    assert json.loads((out / INDEX).read_text())["weight_map"][Q] == "weights-a.safetensors"


def test_a_shard_that_is_a_directory_or_a_fifo_is_refused_without_blocking(tmp_path, adapter):
    base = base_dir(tmp_path / "base", TWO, index={"weight_map": {Q: "a.safetensors", H: "x.safetensors"}})
    os.mkfifo(base / "x.safetensors")  # opening it for reading would wait for a writer forever
    assert "not a file" in refused(tmp_path, base, adapter, InvalidInputError)
    (base / "x.safetensors").unlink()
    (base / "x.safetensors").mkdir()
    assert "not a file" in refused(tmp_path, base, adapter, InvalidInputError)


def test_a_shard_linked_from_outside_is_read_but_never_written(tmp_path, adapter):
    """A symlinked shard is how a Hugging Face cache snapshot looks: it is read, and the output is a new file."""
    outside = tmp_path / "elsewhere.safetensors"
    save_file({Q: torch.randn(4, 4)}, outside)
    before = outside.read_bytes()
    base = base_dir(tmp_path / "base", {"b.safetensors": {H: torch.ones(8, 4)}},
                    index={"weight_map": {Q: "a.safetensors", H: "b.safetensors"}})
    (base / "a.safetensors").symlink_to(outside)
    materialize(base, str(adapter), tmp_path / "merged", device="cpu")
    assert not (tmp_path / "merged" / "a.safetensors").is_symlink() and outside.read_bytes() == before
    assert torch.allclose(merged_q(tmp_path / "merged", "a.safetensors"), expected_q(base, adapter, "a.safetensors"))


# --- 2. the base's config.json and small files -------------------------------------------------


@pytest.mark.parametrize("text", ["[1]", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "{", "x" * (2 << 20)],
                         ids=["a list", "deep", "truncated", "2 MB"])
def test_a_hostile_config_json_is_one_clear_error(tmp_path, adapter, text):
    base = base_dir(tmp_path / "base")
    (base / "config.json").write_text(text)
    refused(tmp_path, base, adapter, InvalidInputError)


@pytest.mark.parametrize("config", [{"num_hidden_layers": 2**40}, {"n_layer": 10**9},
                                    {"text_config": {"num_hidden_layers": 2**40}}, {"num_local_experts": 10**8}])
def test_a_config_claiming_more_layers_than_tensors_is_refused_before_quantization_builds_them(
        tmp_path, adapter, config):
    """To find the Linear weights, quantization builds the architecture from config.json (on the meta
    device, ~1 ms of Python per layer): 2^40 layers would run for decades."""
    llama = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 128, "num_hidden_layers": 1}
    base = base_dir(tmp_path / "base", config={**llama, **config})
    assert "holds only 2 tensors" in refused(tmp_path, base, adapter, InvalidInputError, quantize="int8")


def test_config_sizes_and_dtypes_that_lie_change_nothing_but_the_config(tmp_path, adapter):
    """The merge follows the tensors' shapes, whatever hidden_size says; torch_dtype is rewritten."""
    base = base_dir(tmp_path / "base", config={"model_type": "llama", "hidden_size": 4096,
                                               "torch_dtype": {"x": [1]}, "num_hidden_layers": 1})
    materialize(base, str(adapter), tmp_path / "merged", device="cpu")
    assert torch.allclose(merged_q(tmp_path / "merged"), expected_q(base, adapter))
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and config["hidden_size"] == 4096


def test_a_side_file_linking_out_of_the_base_is_not_copied_into_the_output(tmp_path, adapter):
    """merges.txt -> ~/.aws/credentials would be copied into the model, and a push would publish it."""
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = hunter2\n")
    base = base_dir(tmp_path / "base")
    (base / "merges.txt").symlink_to(secret)
    message = refused(tmp_path, base, adapter, InvalidInputError)
    assert "merges.txt" in message and "symbolic link" in message
    (base / "merges.txt").unlink()
    (base / "config.json").rename(tmp_path / "config.json")
    (base / "config.json").symlink_to(tmp_path / "config.json")
    refused(tmp_path, base, adapter, InvalidInputError)


def test_a_hugging_face_cache_snapshot_with_links_into_its_blobs_still_materializes(tmp_path, adapter):
    repo = tmp_path / "models--acme--tiny"
    flat = base_dir(tmp_path / "flat")
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for child in flat.iterdir():
        child.rename(repo / "blobs" / child.name)
        (snapshot / child.name).symlink_to(Path("../..") / "blobs" / child.name)
    materialize(snapshot, str(adapter), tmp_path / "merged", device="cpu")
    assert (tmp_path / "merged" / "tokenizer_config.json").read_text() == "{}"


# --- 3. the adapter, read by materialize without the hub's checks --------------------------------


def _edited(adapter: Path, text: str) -> Path:
    (adapter / "adapter_config.json").write_text(text)
    return adapter


@pytest.mark.parametrize("text", [
    '{"peft_type": "LORA", "r": 2, "lora_alpha": NaN}', '{"peft_type": "LORA", "r": 2, "lora_alpha": 1e308}',
    '{"peft_type": "LORA", "r": 2, "lora_alpha": Infinity}', '{"peft_type": "LORA", "r": 2, "lora_alpha": -1e13}',
    '{"peft_type": "LORA", "r": 2.0, "lora_alpha": 4}', '{"peft_type": "NOPE", "r": 2, "lora_alpha": 4}',
    "[1]", '{"peft_type": "LORA", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": "(.*.*)*z"}',
], ids=["NaN alpha", "1e308 alpha", "inf alpha", "-1e13 alpha", "float r", "unknown peft_type", "a list", "deep",
        "ReDoS target"])
def test_a_hostile_adapter_config_is_refused_by_materialize(tmp_path, adapter, text):
    refused(tmp_path, base_dir(tmp_path / "base"), _edited(adapter, text), InvalidAdapterError)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_adapter_weights_are_not_merged_into_the_base(tmp_path, value):
    bad = factors(module="model.layers.0.q_proj")
    bad[f"{P}model.layers.0.q_proj.lora_A.weight"][0, 0] = value
    message = refused(tmp_path, base_dir(tmp_path / "base"), lora(tmp_path / "bad", st(bad)), InvalidAdapterError)
    assert "NaN or infinite" in message


def test_a_nan_weight_is_refused(tmp_path, adapter):
    refused(tmp_path, base_dir(tmp_path / "base"), adapter, InvalidInputError, weights="nan")


def test_a_header_the_hub_refuses_is_refused_by_materialize_too(tmp_path):
    """safetensors itself loads a header with a duplicate key (the last one wins); the hub's reader does not."""
    f = factors(module="model.layers.0.q_proj")
    key_a = f"{P}model.layers.0.q_proj.lora_A.weight"
    entry = json.dumps({"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]})
    head = ("{" + f'"{key_a}": {entry}, "{key_a}": {entry}, "{P}model.layers.0.q_proj.lora_B.weight": '
            + json.dumps({"dtype": "F32", "shape": [4, 2], "data_offsets": [32, 64]}) + "}").encode()
    raw = st({}, raw_header=head, data=f[key_a].tobytes() + f[f"{P}model.layers.0.q_proj.lora_B.weight"].tobytes())
    assert "duplicate" in refused(tmp_path, base_dir(tmp_path / "base"), lora(tmp_path / "dup", raw),
                                  InvalidAdapterError)


def test_an_adapter_for_other_shapes_or_modules_is_refused_and_a_late_failure_leaves_nothing(tmp_path):
    wrong = lora(tmp_path / "wrong", st(factors(module="model.layers.0.q_proj", k=8)))
    assert "different model" in refused(tmp_path, base_dir(tmp_path / "base"), wrong, IncompatibleAdaptersError)
    elsewhere = lora(tmp_path / "elsewhere", st(factors(module="model.layers.9.q_proj")))
    refused(tmp_path, tmp_path / "base", elsewhere, IncompatibleAdaptersError)
    # The second shard's tensor fails after the first shard is written: nothing of it is left.
    both = {**factors(module="model.layers.0.q_proj"), **factors(module="lm_head", d=8, k=8)}
    base = base_dir(tmp_path / "sharded", TWO)
    refused(tmp_path, base, lora(tmp_path / "late", st(both)), IncompatibleAdaptersError)


# --- 4. validate: PEFT reads the config with Python's re ----------------------------------------


@pytest.mark.parametrize("fields", [{"target_modules": "(.*.*)*z"}, {"rank_pattern": {"(a|aa)+$": 2}},
                                    {"alpha_pattern": {".*.*.*.*.*x": 2}}, {"layers_pattern": "(.+)+"}])
def test_validate_refuses_a_config_peft_would_hang_on_before_loading_the_base(tmp_path, monkeypatch, fields):
    base = base_dir(tmp_path / "base", config={"model_type": "llama", "vocab_size": 512})
    save_char_tokenizer(base)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], **fields}
    adapter = lora(tmp_path / "a", st(factors(module="model.layers.0.q_proj")))
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    monkeypatch.setattr(validator, "_load_base", lambda *a: pytest.fail("the base was loaded"))
    start = time.perf_counter()
    with pytest.raises(InvalidAdapterError, match="quantifiers"):
        validator.validate(base, str(adapter), data=write_jsonl(tmp_path / "d.jsonl", [{"text": "a b"}]),
                           device="cpu")
    assert time.perf_counter() - start < 5


# --- 5. output paths --------------------------------------------------------------------------------


def test_outputs_onto_links_and_files_are_refused(tmp_path, adapter):
    base = base_dir(tmp_path / "base")
    target = tmp_path / "victim.txt"
    target.write_text("keep")
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out in (tmp_path / "link", tmp_path / "dangling", target):
        with pytest.raises(ComposeError):
            compose_dirs([adapter], None, out)
        with pytest.raises(InvalidInputError):
            materialize(base, str(adapter), out, device="cpu")
    assert target.read_text() == "keep" and not (tmp_path / "nowhere").exists()


def test_writing_into_a_directory_replaces_a_link_there_and_never_writes_through_it(tmp_path, adapter):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"the user's file")
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").symlink_to(outside)
    compose_dirs([adapter], None, out, into_existing=True)
    assert outside.read_bytes() == b"the user's file"
    assert not (out / "adapter_model.safetensors").is_symlink()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").symlink_to(outside)
    materialize(base_dir(tmp_path / "base"), str(adapter), tmp_path / "m", device="cpu", force=True)
    assert outside.read_bytes() == b"the user's file"
    assert torch.allclose(merged_q(tmp_path / "m"), expected_q(tmp_path / "base", adapter))


def test_a_hostile_hub_name_never_steers_the_default_output_out_of_the_directory():
    from peft_hub.refs import default_output

    for refs in (["../../etc"], ["/abs/../x"], ["a/..", "b"], ["..\\x"], ["~root"], ["x\n@y"]):
        out = default_output(refs, "stack")
        assert len(out.parts) == 1 and out.name not in (".", ".."), (refs, out)
