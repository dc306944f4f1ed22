"""The compose specification: one table of refusals, run by compose and by the hub's preview.

Each case is fed to :func:`compose_dirs` (which reads the files) and to the
web preview (which sees only the parsed config, the safetensors header and the
registry metadata); both must refuse it with the same message, or both accept
it with the same rank.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
from test_compose_support import adapter

from peft_hub.adapter import parse_config, validate_dir
from peft_hub.adapter_files import CONFIG_NAME, WEIGHTS_NAME
from peft_hub.compose import compose_dirs, interpolate_dirs, spec
from peft_hub.errors import ComposeError, PeftHubError
from peft_hub.hub.web.compose_preview import Picked, build, inspect
from peft_hub.safetensors_header import read_header_path


def _edited(tmp_path: Path, parent: Path, **changes) -> Path:
    out = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(parent, out)
    config = json.loads((out / CONFIG_NAME).read_text())
    config.update(changes)
    (out / CONFIG_NAME).write_text(json.dumps(config))
    return out


def _picked(path: Path, weight: float) -> Picked:
    """The preview's view of a directory: what the hub stores about it, then compose's per-adapter checks."""
    meta, _ = validate_dir(path)
    picked = Picked(ref=str(path), weight=weight, weight_text=str(weight), repo_id="t/x", sha="c" * 40,
                    meta=meta.to_dict())
    return inspect(picked, parse_config((path / CONFIG_NAME).read_bytes()), read_header_path(path / WEIGHTS_NAME))


# (case, config edits of the second adapter, second adapter's build args, weights, options); None: accepted.
CASES = [
    ("plain", {}, {}, [1.0, 1.0], {}, None),
    ("modules_to_save", {"modules_to_save": ["lm_head"]}, {}, [1.0, 1.0], {}, "modules_to_save"),
    ("lora_bias", {"lora_bias": True}, {}, [1.0, 1.0], {}, "bias vector"),
    ("pissa", {"init_lora_weights": "pissa_niter_4"}, {}, [1.0, 1.0], {}, "rewrites the base weights"),
    ("olora", {"init_lora_weights": "olora"}, {}, [1.0, 1.0], {}, "rewrites the base weights"),
    ("bias", {"bias": "all"}, {}, [1.0, 1.0], {}, "bias='all'"),
    ("dora flag", {"use_dora": True}, {}, [1.0, 1.0], {}, "DoRA"),
    ("not lora", {"peft_type": "LOHA"}, {}, [1.0, 1.0], {}, "LOHA adapter"),
    ("base models", {"base_model_name_or_path": "other/model"}, {}, [1.0, 1.0], {}, "different base models"),
    ("shapes", {}, {"hidden": 64}, [1.0, 1.0], {}, "shapes do not match"),
    ("stack over max", {}, {}, [1.0, 1.0], {"method": "stack", "max_rank": 6}, "stacking exactly gives rank 8"),
    ("default over max", {}, {}, [1.0, 1.0], {"max_rank": 7}, "above --max-rank 7"),
    ("svd over max", {}, {}, [1.0, 1.0], {"method": "svd", "rank": 9, "max_rank": 8}, "--rank 9 is above"),
    ("svd", {}, {}, [0.7, 0.3], {"method": "svd", "rank": 3}, None),
    ("svd capped", {}, {}, [0.7, 0.3], {"method": "svd", "rank": 16, "max_rank": 16}, None),
    ("ties", {}, {}, [1.0, 1.0], {"method": "ties", "density": 0.5, "rank": 4}, None),
    ("ties no density", {}, {}, [1.0, 1.0], {"method": "ties"}, "needs --density"),
    ("density on svd", {}, {}, [1.0, 1.0], {"method": "svd", "density": 0.5}, "--density applies to"),
    ("stack with rank", {}, {}, [1.0, 1.0], {"method": "stack", "rank": 4}, "stack is exact"),
    ("zero weights", {}, {}, [0.0, 0.0], {}, "every weight is zero"),
    ("one weight zero", {}, {}, [1.0, 0.0], {}, None),
    ("unknown method", {}, {}, [1.0, 1.0], {"method": "median"}, "unknown method"),
]


@pytest.mark.parametrize(("edits", "build_args", "weights", "options", "refusal"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_preview_refuses_exactly_what_compose_refuses(tmp_path, edits, build_args, weights, options, refusal):
    first = adapter(r=4, seed=1)
    second = _edited(tmp_path, adapter(r=4, seed=2, **build_args), **edits)
    try:
        report = compose_dirs([first, second], weights, tmp_path / "out", **options)
        composed: str | None = None
    except PeftHubError as exc:
        composed = str(exc)
    picked = [_picked(first, weights[0]), _picked(second, weights[1])]
    preview = build(picked, options.get("method", "stack" if options.get("rank") is None else "svd"),
                    options.get("rank"), options.get("density"), options.get("max_rank", spec.DEFAULT_MAX_RANK))
    said = preview.errors + [problem for p in preview.picked for problem in p.problems]
    if refusal is None:
        assert composed is None and preview.compatible, (composed, said)
        assert preview.result_rank == report.rank
    else:
        assert composed is not None and refusal in composed
        assert said == [composed]  # the same check, the same words, and nothing else


def test_method_lists_come_from_the_literals():
    assert spec.METHODS == get_args(spec.Method) == spec.FACTOR_METHODS + spec.MERGE_METHODS
    assert set(spec.SIGN_METHODS) <= set(spec.MERGE_METHODS)
    assert spec.TRUNCATIONS == ("auto", "exact", "randomized") and spec.MAJORITY_SIGNS == ("total", "frequency")
    assert set(spec.DTYPE_ALIASES.values()) == set(spec.DTYPE_NAMES)
    from peft_hub.compose import cli as compose_cli
    from peft_hub.gpu_runtime import cli as runtime_cli
    from peft_hub.hub.web import compose_preview

    assert compose_cli.METHODS is spec.METHODS and compose_preview.METHODS is spec.METHODS
    assert tuple(runtime_cli.METHODS.choices) == spec.METHODS


def test_options_refuse_unknown_names_and_contradictions(tmp_path):
    with pytest.raises(ComposeError, match="unknown compose option 'rnak'"):
        spec.ComposeOptions.of(rnak=4)
    assert spec.ComposeOptions.of(spec.ComposeOptions(rank=4), max_rank=8) == spec.ComposeOptions(rank=4, max_rank=8)
    assert spec.ComposeOptions(rank=4).resolved_method == "svd" and spec.ComposeOptions().resolved_method == "stack"
    for bad in ({"rank": True}, {"max_rank": 0}, {"rank": "4"}, {"majority_sign": "mean"}, {"svd": "fast"}):
        with pytest.raises(ComposeError):
            spec.ComposeOptions(**bad).check()  # type: ignore[arg-type]  # the bad values under test
    with pytest.raises(PeftHubError, match="unknown dtype"):
        spec.ComposeOptions(dtype=["fp16"]).check()  # type: ignore[arg-type]
    a, b = adapter(r=4, seed=1), adapter(r=4, seed=2)
    with pytest.raises(ComposeError, match="interpolate takes .* not method"):
        interpolate_dirs(a, b, 0.5, tmp_path / "out", method="ties")
    assert not (tmp_path / "out").exists()


def test_weights_are_checked_before_any_file_is_read():
    assert spec.check_weights(None, 2) == [1.0, 1.0]
    for weights, message in (([1.0], "2 adapters but 1 weights"), ([float("nan"), 1.0], "finite"),
                             (["x", 1.0], "finite"), ([0, 0.0], "every weight is zero")):
        with pytest.raises(ComposeError, match=message):
            spec.check_weights(weights, 2)


def test_spec_imports_neither_torch_nor_the_hub():
    code = ("import sys, peft_hub.compose.spec, peft_hub.compose.plan; "
            "print([m for m in sys.modules if m == 'torch' or m.startswith('peft_hub.hub')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
