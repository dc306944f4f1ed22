"""Every refusal of peft_hub.compose: the right error class, a useful message, nothing written."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
from test_compose_support import adapter, assert_deltas_close, base, peft_deltas, weighted_sum

from peft_hub.compose import compose_dirs, interpolate_dirs
from peft_hub.errors import (
    ComposeError,
    IncompatibleAdaptersError,
    InvalidInputError,
    PeftHubError,
    RankLimitError,
    UnsupportedAdapterError,
)


def _edited(tmp_path, parent, **changes):
    """A copy of ``parent`` with config fields changed."""
    out = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(parent, out)
    config = json.loads((out / "adapter_config.json").read_text())
    config.update(changes)
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def test_errors_are_value_errors():
    for cls in (ComposeError, IncompatibleAdaptersError, UnsupportedAdapterError, RankLimitError):
        assert issubclass(cls, ValueError) and issubclass(cls, PeftHubError)


def test_different_base_models_refused_unless_forced(tmp_path):
    parents = [adapter(r=4, seed=1), adapter(r=4, seed=2, base_name="other/model")]
    with pytest.raises(IncompatibleAdaptersError, match="different base models.*--force"):
        compose_dirs(parents, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    compose_dirs(parents, None, tmp_path / "forced", force=True)
    assert_deltas_close(peft_deltas(base(), tmp_path / "forced"), weighted_sum(base(), parents, [1.0, 1.0]))


def test_shape_mismatch_refused_even_when_forced(tmp_path):
    parents = [adapter(r=4, seed=1), adapter(hidden=48, r=4, seed=2, base_name="tiny-llama")]
    with pytest.raises(IncompatibleAdaptersError, match="shapes do not match"):
        compose_dirs(parents, None, tmp_path / "out", force=True)


def test_dora_refused(tmp_path):
    with pytest.raises(UnsupportedAdapterError, match="magnitude vector.*not linearly composable"):
        compose_dirs([adapter(r=4, seed=1), adapter(r=4, seed=3, use_dora=True)], None, tmp_path / "out")


def test_dora_vector_without_flag_refused(tmp_path):
    dora = _edited(tmp_path, adapter(r=4, seed=3, use_dora=True), use_dora=False)
    with pytest.raises(UnsupportedAdapterError, match="DoRA magnitude vector"):
        compose_dirs([dora], None, tmp_path / "out")


def test_non_lora_refused(tmp_path):
    from peft import IA3Config, get_peft_model

    model = get_peft_model(copy.deepcopy(base()), IA3Config(target_modules=["k_proj", "down_proj"],
                                                            feedforward_modules=["down_proj"]))
    model.save_pretrained(tmp_path / "ia3")
    with pytest.raises(UnsupportedAdapterError, match="IA3 adapter.*LoRA adapters only"):
        compose_dirs([adapter(r=4, seed=1), tmp_path / "ia3"], None, tmp_path / "out")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("modules_to_save", ["lm_head"], "modules_to_save"),
    ("init_lora_weights", "pissa_niter_4", "rewrites the base weights"),
    ("lora_bias", True, "bias vector"),
    ("bias", "all", "bias='all'"),
    ("peft_type", "LOHA", "LOHA adapter"),
])
def test_other_non_linear_configs_refused(tmp_path, field, value, message):
    edited = _edited(tmp_path, adapter(r=4, seed=1), **{field: value})
    with pytest.raises(UnsupportedAdapterError, match=message):
        compose_dirs([edited], None, tmp_path / "out")


def test_weight_count_mismatch(tmp_path):
    with pytest.raises(ComposeError, match="2 adapters but 3 weights"):
        compose_dirs([adapter(r=4, seed=1), adapter(r=4, seed=2)], [0.5, 0.3, 0.2], tmp_path / "out")


def test_all_zero_weights(tmp_path):
    with pytest.raises(ComposeError, match="every weight is zero"):
        compose_dirs([adapter(r=4, seed=1), adapter(r=4, seed=2)], [0.0, 0.0], tmp_path / "out")


def test_stack_above_max_rank_says_how_to_fix(tmp_path):
    parents = [adapter(r=8, seed=1), adapter(r=8, seed=2)]
    with pytest.raises(RankLimitError) as info:
        compose_dirs(parents, None, tmp_path / "out", max_rank=12)
    assert "rank 16" in str(info.value) and "--rank N" in str(info.value) and "--max-rank" in str(info.value)
    with pytest.raises(RankLimitError):
        compose_dirs(parents, None, tmp_path / "out", method="stack", max_rank=12)
    assert not (tmp_path / "out").exists()
    assert compose_dirs(parents, None, tmp_path / "raised", max_rank=16).rank == 16
    assert compose_dirs(parents, None, tmp_path / "svd", max_rank=12, rank=12).method == "svd"


def test_truncated_rank_above_max_rank(tmp_path):
    with pytest.raises(RankLimitError, match="--rank 32 is above --max-rank 16"):
        compose_dirs([adapter(r=4, seed=1)], None, tmp_path / "out", method="svd", rank=32, max_rank=16)
    with pytest.raises(RankLimitError):
        interpolate_dirs(adapter(r=4, seed=1), adapter(r=4, seed=2), 0.5, tmp_path / "i", rank=32, max_rank=16)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "ties"}, "needs --density"),
    ({"method": "dare_ties", "density": 1.5}, "needs --density in"),
    ({"method": "svd", "density": 0.5}, "--density applies to"),
    ({"method": "stack", "rank": 4}, "stack is exact"),
    ({"method": "median"}, "unknown method"),
    ({"rank": 0}, "positive"),
    ({"majority_sign": "mean"}, "majority_sign"),
    ({"parents": [{"ref": "x"}]}, "parent records"),
    ({"method": "ties", "density": 0.5, "svd": "fast"}, "svd must be one of"),
    ({"method": "svd", "rank": 4, "svd": "randomized"}, "randomized applies to ties"),
    ({"svd": "randomized"}, "stack/svd truncates exactly"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ComposeError, match=message):
        compose_dirs([adapter(r=4, seed=1), adapter(r=4, seed=2)], None, tmp_path / "out", **kwargs)


def test_interpolate_truncates_from_factors_only(tmp_path):
    a, b = adapter(r=4, seed=1), adapter(r=4, seed=2)
    with pytest.raises(ComposeError, match="randomized applies to"):
        interpolate_dirs(a, b, 0.5, tmp_path / "out", rank=2, svd="randomized")
    assert interpolate_dirs(a, b, 0.5, tmp_path / "exact", rank=2, svd="exact").method == "svd"


def test_interpolate_t_must_be_finite(tmp_path):
    with pytest.raises(ComposeError, match="finite"):
        interpolate_dirs(adapter(r=4, seed=1), adapter(r=4, seed=2), float("nan"), tmp_path / "out")


def test_output_must_be_new_or_empty(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ComposeError, match="not an empty directory"):
        compose_dirs([adapter(r=4, seed=1)], None, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert compose_dirs([adapter(r=4, seed=1)], None, tmp_path / "empty").output_dir == tmp_path / "empty"
    assert (tmp_path / "empty" / "adapter_model.safetensors").exists()


def test_missing_weights_file(tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(adapter(r=4, seed=1), broken)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(PeftHubError, match="adapter_model.safetensors is missing"):
        compose_dirs([broken], None, tmp_path / "out")


def test_unknown_dtype(tmp_path):
    with pytest.raises(InvalidInputError, match="unknown dtype 'fp8'"):
        compose_dirs([adapter(r=4, seed=1)], None, tmp_path / "out", dtype="fp8")
    assert not (tmp_path / "out").exists()


def test_adapter_without_lora_factors(tmp_path):
    import torch
    from safetensors.torch import save_file

    empty = _edited(tmp_path, adapter(r=4, seed=1))
    save_file({"base_model.model.model.embed_tokens.base_layer.weight": torch.zeros(4, 4)},
              empty / "adapter_model.safetensors")
    with pytest.raises(ComposeError, match="no LoRA factors"):
        compose_dirs([empty], None, tmp_path / "out")


def test_output_checked_before_any_work(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ComposeError, match="not an empty directory"):
        compose_dirs([tmp_path / "does-not-exist"], None, tmp_path / "full")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ComposeError, match="is one of the inputs"):
        compose_dirs([tmp_path / "empty"], None, tmp_path / "empty")
