"""Quantized materialize: bitsandbytes nf4/int8 files that transformers loads.

bitsandbytes 0.50 quantizes and runs on the CPU. Its CPU 4-bit kernels need
``in_features`` to be a multiple of the 64-element block, so these models
use hidden size 64 rather than the usual 32.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_runtime_helpers import cuda
from tiny_models import make_lora, tiny_gpt2, tiny_llama

from peft_hub.gpu_runtime.materializer import materialize

ARCHS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
BNB_CLASS = {"nf4": "Linear4bit", "int8": "Linear8bitLt"}
#: Max |logit - fp32 logit| seen for these random models, with headroom (nf4 is coarse).
LOGIT_TOL = {"nf4": 0.5, "int8": 0.1}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=list(ARCHS))
def merged(request, tmp_path_factory):
    """A base, a LoRA, and PEFT's own merged model saved in fp32."""
    from peft import PeftModel

    root = tmp_path_factory.mktemp(request.param)
    base = ARCHS[request.param](hidden=64)
    base.save_pretrained(root / "base", max_shard_size="60KB")
    make_lora(base, root / "lora")
    ref = PeftModel.from_pretrained(copy.deepcopy(base), root / "lora").merge_and_unload()
    ref.save_pretrained(root / "ref")
    return request.param, root, ref


@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_quantized_output_equals_transformers_quantizing_the_merged_model(merged, method):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    _, root, ref = merged
    out = root / f"q-{method}"
    report = materialize(root / "base", str(root / "lora"), out, quantize=method, dtype="fp32", device="cpu")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "bitsandbytes"
    assert config["load_in_4bit" if method == "nf4" else "load_in_8bit"] is True
    assert (out / "model.safetensors.index.json").exists()

    ours = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    linear = [m for n, m in ours.named_modules() if n.endswith(("q_proj", "c_attn"))]
    assert linear and all(type(m).__name__ == BNB_CLASS[method] for m in linear)
    assert report.quantized == sum(type(m).__name__ == BNB_CLASS[method] for m in ours.modules())

    # transformers' own path: load PEFT's merged fp32 model with the same BitsAndBytesConfig
    bnb = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
           if method == "nf4" else BitsAndBytesConfig(load_in_8bit=True))
    theirs = AutoModelForCausalLM.from_pretrained(root / "ref", quantization_config=bnb, device_map="cpu",
                                                  dtype=torch.float32)
    sd_ours, sd_theirs = ours.state_dict(), theirs.state_dict()
    assert set(sd_ours) == set(sd_theirs)
    for key in sd_theirs:
        assert torch.equal(sd_ours[key], sd_theirs[key]), key

    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(ids).logits - ref(ids).logits).abs().max().item()
    assert diff < LOGIT_TOL[method]


def test_quantized_bf16_output_loads_and_generates(merged):
    from transformers import AutoModelForCausalLM

    _, root, _ = merged
    out = root / "q-bf16"
    materialize(root / "base", str(root / "lora"), out, quantize="nf4", dtype="bf16", device="cpu")
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["quantization_config"]["bnb_4bit_compute_dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    out_ids = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out_ids.shape == (1, 7)


@pytest.mark.cuda
@cuda
def test_cuda_quantization_loads_on_cuda(merged):
    from transformers import AutoModelForCausalLM

    _, root, _ = merged
    report = materialize(root / "base", str(root / "lora"), root / "q-cuda", quantize="nf4", device="cuda")
    assert report.device.startswith("cuda")
    model = AutoModelForCausalLM.from_pretrained(root / "q-cuda", device_map="cuda")
    assert model(torch.tensor([[1, 2, 3]], device="cuda")).logits.isfinite().all()


@pytest.mark.parametrize("method", ["nf4", "int8"])
@pytest.mark.parametrize("shape", [(3000, 200), (1001, 96), (7, 64), (3, 21), "edges"])
def test_blockwise_cpu_quantization_equals_bitsandbytes_on_the_whole_tensor(shape, method):
    import bitsandbytes as bnb

    from peft_hub.gpu_runtime.quantize import NF4_BLOCKSIZE, quantize_weight

    if shape == "edges":
        # fp32 rows whose absmax is 1, so the scaled values are exactly the bucket bounds,
        # their float neighbours and the lookup grid's edges: where a table lookup could slip.
        from bitsandbytes.functional import get_4bit_type

        code = get_4bit_type("nf4", device="cpu").float()
        bounds = (code[:-1] + code[1:]) / 2
        values = torch.cat([bounds, torch.nextafter(bounds, torch.tensor(2.0)),
                            torch.nextafter(bounds, torch.tensor(-2.0)), -1 + torch.arange(4097) / 2048.0,
                            torch.tensor([0.0, -0.0, 1.0, -1.0])])
        values = torch.cat([values, torch.zeros(-len(values) % 63)]).reshape(-1, 63)
        weight = torch.cat([torch.ones(len(values), 1), values], dim=1)  # (rows, 64) fp32
        shape = tuple(weight.shape)
    else:
        weight = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
        weight[0] = 0  # an all-zero row: absmax 0
        weight[-1, 0] = 70000.0  # beyond fp16's range
    ours = quantize_weight(weight, method, compute_dtype=weight.dtype, device=torch.device("cpu"))
    with torch.device("meta"):
        if method == "nf4":
            module = bnb.nn.Linear4bit(shape[1], shape[0], bias=False, compute_dtype=weight.dtype, quant_type="nf4")
        else:
            module = bnb.nn.Linear8bitLt(shape[1], shape[0], bias=False, has_fp16_weights=False)
    if method == "nf4":
        module.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", blocksize=NF4_BLOCKSIZE,
                                          compress_statistics=False, module=module).to("cpu")
    else:
        module.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False).to("cpu")
    theirs = module.state_dict()
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
