"""PEFT itself, unchanged, pulling from and pushing to the hub through
``HF_ENDPOINT`` (in a subprocess: ``huggingface_hub`` reads the variable at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peft_hub.client import HubClient

pytest.importorskip("peft")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel

base_dir, local_adapter, out = sys.argv[1:4]
ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])

def logits(model):
    with torch.no_grad():
        return model(input_ids=ids).logits

def base():
    return AutoModelForCausalLM.from_pretrained(base_dir).eval()

local = PeftModel.from_pretrained(base(), local_adapter).eval()
pulled = PeftModel.from_pretrained(base(), "admin/support").eval()
pulled_at_tag = PeftModel.from_pretrained(base(), "admin/support", revision="v1").eval()
result = {
    "pulled_equal": torch.equal(logits(local), logits(pulled)),
    "tag_equal": torch.equal(logits(local), logits(pulled_at_tag)),
    "adapter_matters": not torch.equal(logits(local), logits(base())),
}
commit = pulled.push_to_hub("admin/pushed-by-peft", commit_message="PeftModel.push_to_hub")
back = PeftModel.from_pretrained(base(), "admin/pushed-by-peft").eval()
result["pushed_equal"] = torch.equal(logits(local), logits(back))
result["commit"] = commit.oid
with open(out, "w") as fh:
    json.dump(result, fh)
"""


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    from tiny_models import save_base, tiny_llama

    return save_base(tiny_llama(), tmp_path_factory.mktemp("base") / "tiny-llama")


def test_peft_from_pretrained_and_push_to_hub_through_hf_endpoint(hub, llama_adapter, base_dir, tmp_path):
    from huggingface_hub import HfApi, snapshot_download
    from safetensors.torch import load_file

    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "native") as client:
        client.push(llama_adapter, name="admin/support", tags=["v1"])

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=hub.admin_token, HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(base_dir), str(llama_adapter), str(out)],
                          check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["adapter_matters"]
    assert result["pulled_equal"] and result["tag_equal"] and result["pushed_equal"], result

    # What push_to_hub stored is a normal revision: same tensors, a model card, library "peft".
    info = HfApi(endpoint=hub.url, token=hub.admin_token).model_info("admin/pushed-by-peft")
    assert info.sha == result["commit"] and info.library_name == "peft"
    assert {s.rfilename for s in info.siblings} == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    folder = Path(snapshot_download("admin/pushed-by-peft", endpoint=hub.url, cache_dir=tmp_path / "hf", token=False))
    pushed = load_file(folder / "adapter_model.safetensors")
    original = load_file(llama_adapter / "adapter_model.safetensors")
    assert pushed.keys() == original.keys() and all(pushed[k].equal(original[k]) for k in original)
