"""Base models hosted like adapters: a sharded tiny Llama with its tokenizer
pushed and pulled natively and through the HF API, the refusals (each leaving
the hub as it was), and ``AutoPeftModelForCausalLM`` loading the base from the hub."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hub_state import snapshot

from peft_hub.client import HubClient
from peft_hub.errors import InvalidAdapterError, UnsafeFormatError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny Llama saved in 7 shards with an index, plus a tokenizer."""
    from tiny_models import tiny_llama

    from peft_hub.gpu_runtime.tokenizer import save_char_tokenizer

    path = tmp_path_factory.mktemp("models") / "llama-tiny"
    tiny_llama().save_pretrained(path, max_shard_size="20KB")
    save_char_tokenizer(path)
    assert len(list(path.glob("model-*-of-*.safetensors"))) > 1
    return path


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")}


def test_push_and_pull_a_sharded_model_byte_identical(hub, base_dir, tmp_path):
    from huggingface_hub import HfApi, snapshot_download

    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache") as client:
        pushed = client.push(base_dir, name="admin/llama-tiny", kind="model")
        assert pushed.created and pushed.files_uploaded == len(_files(base_dir))
        again = client.push(base_dir, name="admin/llama-tiny", kind="model")
        assert again.revision == pushed.revision and not again.created and again.files_uploaded == 0
        pulled = client.pull("admin/llama-tiny", tmp_path / "out")
        assert pulled.revision == pushed.revision
        info = client.info("admin/llama-tiny")
    assert _files(tmp_path / "out") == _files(base_dir)
    meta = info["meta"]
    assert (meta["kind"], meta["model_type"], meta["architectures"]) == ("model", "llama", ["LlamaForCausalLM"])
    assert (meta["hidden_size"], meta["num_layers"], meta["total_params"], meta["shards"]) == (32, 2, 26784, 7)
    assert info["method"] == "model" and info["base_model"] is None

    api = HfApi(endpoint=hub.url, token=hub.admin_token)
    hf = api.model_info("admin/llama-tiny")
    assert hf.library_name == "transformers" and hf.pipeline_tag == "text-generation" and "llama" in hf.tags
    folder = Path(snapshot_download("admin/llama-tiny", endpoint=hub.url, token=hub.admin_token,
                                    cache_dir=tmp_path / "hf"))
    assert _files(folder) == _files(base_dir)


def _rewrite_index(path: Path, change) -> None:
    index_path = path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    change(index["weight_map"])
    index_path.write_text(json.dumps(index))


def _first_shard_tensor(weight_map: dict[str, str]) -> str:
    return next(k for k, v in sorted(weight_map.items()) if v == "model-00001-of-00007.safetensors")


def _pickle(path: Path) -> None:
    (path / "pytorch_model.bin").write_bytes(b"\x80\x04fake pickle")


def _missing_shard(path: Path) -> None:
    _rewrite_index(path, lambda m: m.update({_first_shard_tensor(m): "model-00009-of-00009.safetensors"}))


def _unlisted_tensor(path: Path) -> None:
    def drop(weight_map: dict[str, str]) -> None:  # from a shard that keeps other tensors
        shard = max(set(weight_map.values()), key=list(weight_map.values()).count)
        weight_map.pop(next(k for k, v in sorted(weight_map.items()) if v == shard))
    _rewrite_index(path, drop)


def _unlisted_shard(path: Path) -> None:
    def move(weight_map: dict[str, str]) -> None:
        for key, value in weight_map.items():
            if value == "model-00002-of-00007.safetensors":
                weight_map[key] = "model-00001-of-00007.safetensors"
    _rewrite_index(path, move)


def _bad_config(path: Path) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": 5}))


def _huge_layers(path: Path) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": -3}))


def _unknown_file(path: Path) -> None:
    (path / "weights.npy").write_bytes(b"\x93NUMPY")


def _not_sentencepiece(path: Path) -> None:
    (path / "tokenizer.model").write_bytes(b"PK\x03\x04 a zip")


REFUSALS = {
    "pickle weights": (_pickle, UnsafeFormatError, "pytorch_model.bin is a pickle-based format"),
    "index names a missing shard": (_missing_shard, InvalidAdapterError, "names 'model-00009-of-00009.safetensors'"),
    "tensor not in the index": (_unlisted_tensor, InvalidAdapterError, "which model.safetensors.index.json does not"),
    "shard not in the index": (_unlisted_shard, InvalidAdapterError, "model-00002-of-00007.safetensors is not in"),
    "bad config.json": (_bad_config, InvalidAdapterError, "model_type must be a short name"),
    "negative size in config.json": (_huge_layers, InvalidAdapterError, "num_hidden_layers must be a positive integer"),
    "unknown file": (_unknown_file, InvalidAdapterError, "'weights.npy' is not allowed in a model"),
    "not a sentencepiece model": (_not_sentencepiece, InvalidAdapterError, "not a sentencepiece model"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_bad_model_is_refused_and_nothing_is_stored(embedded_hub, base_dir, tmp_path, case):
    from peft_hub import repo_kinds

    spoil, error, message = REFUSALS[case]
    bad = tmp_path / "bad"
    shutil.copytree(base_dir, bad)
    spoil(bad)
    before = snapshot(embedded_hub)
    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "cache") as client:
        with pytest.raises(error, match=message):
            client.push(bad, name="admin/bad", kind="model")
    assert snapshot(embedded_hub) == before
    # The hub's own check, from the files alone, says the same.
    with pytest.raises(error, match=message):
        repo_kinds.validate_dir("model", bad)


def test_kind_mismatches_are_refused_before_any_upload(embedded_hub, base_dir, llama_adapter, tmp_path):
    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "cache") as client:
        client.push(llama_adapter, name="admin/support")
        before = snapshot(embedded_hub)
        with pytest.raises(InvalidAdapterError, match="is an adapter, not a model"):
            client.push(llama_adapter, name="admin/x", kind="model")
        with pytest.raises(InvalidAdapterError, match="is a model, not an adapter"):
            client.push(base_dir, name="admin/x", kind="adapter")
        with pytest.raises(InvalidAdapterError, match="is a model, not an adapter"):
            client.push(base_dir, name="admin/x")  # a base model is never pushed by accident
        with pytest.raises(InvalidAdapterError, match="admin/support holds an adapter; a model cannot be pushed"):
            client.push(base_dir, name="admin/support", kind="model")
        assert snapshot(embedded_hub) == before
        client.push(base_dir, name="admin/llama-tiny", kind="model")
        with pytest.raises(InvalidAdapterError, match="admin/llama-tiny holds a base model; an adapter cannot"):
            client.push(llama_adapter, name="admin/llama-tiny")
        assert client.info("admin/llama-tiny")["method"] == "model"


def test_hf_upload_folder_of_a_model(embedded_hub, base_dir, llama_adapter, tmp_path):
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils import HfHubHTTPError

    api = HfApi(endpoint=embedded_hub.url, token=embedded_hub.admin_token)
    api.create_repo("admin/llama-hf")
    api.upload_folder(folder_path=str(base_dir), repo_id="admin/llama-hf")
    info = api.model_info("admin/llama-hf")
    assert info.library_name == "transformers" and {s.rfilename for s in info.siblings} == set(_files(base_dir))
    folder = Path(snapshot_download("admin/llama-hf", endpoint=embedded_hub.url, token=embedded_hub.admin_token,
                                    cache_dir=tmp_path / "hf"))
    assert _files(folder) == _files(base_dir)

    # Into an adapter repo: refused whole, inline bytes taken back.
    api.create_repo("admin/support")
    api.upload_folder(folder_path=str(llama_adapter), repo_id="admin/support")
    before = snapshot(embedded_hub)
    with pytest.raises(HfHubHTTPError, match="admin/support holds an adapter"):
        api.upload_folder(folder_path=str(base_dir), repo_id="admin/support",
                          delete_patterns=["adapter_*", "README.md"])
    assert snapshot(embedded_hub) == before


SCRIPT = r"""
import json, sys
import torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM

base_dir, adapter_dir, out = sys.argv[1:4]
ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])

def logits(model):
    with torch.no_grad():
        return model(input_ids=ids).logits

hub_base = AutoModelForCausalLM.from_pretrained("admin/llama-tiny")
local_base = AutoModelForCausalLM.from_pretrained(base_dir)
from_hub = AutoPeftModelForCausalLM.from_pretrained("admin/support")
local = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
json.dump({
    "base_equal": torch.equal(logits(hub_base), logits(local_base)),
    "pair_equal": torch.equal(logits(from_hub), logits(local)),
    "adapter_matters": not torch.equal(logits(local), logits(local_base)),
    "base_name": from_hub.peft_config["default"].base_model_name_or_path,
}, open(out, "w"))
"""


@pytest.mark.slow
def test_auto_peft_model_loads_its_base_from_the_hub(embedded_hub, base_dir, tmp_path):
    from tiny_models import make_lora, tiny_llama

    adapter = make_lora(tiny_llama(), tmp_path / "support", r=4, base_name="admin/llama-tiny")
    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "cache") as client:
        client.push(base_dir, name="admin/llama-tiny", kind="model")
        client.push(adapter, name="admin/support")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=embedded_hub.url, HF_TOKEN=embedded_hub.admin_token, HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(base_dir), str(adapter), str(out)],
                          check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result == {"base_equal": True, "pair_equal": True, "adapter_matters": True, "base_name": "admin/llama-tiny"}
