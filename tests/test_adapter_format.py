"""The adapter format: every PEFT method validates; unsafe or tampered files,
bad configs and bad names are refused with a message that says why."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import make_lora, tiny_llama

from peft_hub.adapter import KNOWN_PEFT_TYPES, manifest_digest, validate_dir
from peft_hub.adapter_files import validate_filename
from peft_hub.errors import InvalidAdapterError, InvalidNameError, UnsafeFormatError
from peft_hub.names import validate_repo_id


@pytest.fixture(scope="module")
def base():
    return tiny_llama()


def _save(base, config, path: Path) -> Path:
    import copy

    from peft import get_peft_model

    model = get_peft_model(copy.deepcopy(base), config)
    model.save_pretrained(path)
    return path


def test_known_types_cover_peft():
    from peft import PeftType

    assert {p.value for p in PeftType} <= KNOWN_PEFT_TYPES


@pytest.mark.parametrize("method", [
    "LORA", "ADALORA", "IA3", "LOHA", "LOKR", "PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING", "QLORA_STYLE",
])
def test_every_method_validates(base, tmp_path, method):
    import peft

    targets = ["q_proj", "v_proj"]
    configs = {
        "LORA": lambda: peft.LoraConfig(r=4, target_modules=targets, use_rslora=True,
                                        rank_pattern={"q_proj": 2}, task_type="CAUSAL_LM"),
        "QLORA_STYLE": lambda: peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
        "ADALORA": lambda: peft.AdaLoraConfig(
            init_r=6, target_r=4, target_modules=targets, total_step=10, task_type="CAUSAL_LM"
        ),
        "IA3": lambda: peft.IA3Config(
            target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"], task_type="CAUSAL_LM"
        ),
        "LOHA": lambda: peft.LoHaConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"),
        "LOKR": lambda: peft.LoKrConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"),
        "PREFIX_TUNING": lambda: peft.PrefixTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM"),
        "PROMPT_TUNING": lambda: peft.PromptTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM"),
        "P_TUNING": lambda: peft.PromptEncoderConfig(
            num_virtual_tokens=5, encoder_hidden_size=16, task_type="CAUSAL_LM"
        ),
    }
    path = _save(base, configs[method](), tmp_path / "a")
    meta, entries = validate_dir(path)
    expected = "LORA" if method == "QLORA_STYLE" else method
    assert meta.method == expected
    assert meta.trainable_params > 0
    assert meta.dtype == "F32"
    assert {e.path for e in entries} >= {"adapter_config.json", "adapter_model.safetensors"}
    if method == "LORA":
        assert (meta.rank, meta.use_rslora, meta.rank_pattern) == (4, True, {"q_proj": 2})
    if method in ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING"):
        assert meta.num_virtual_tokens == 5


def test_lora_metadata_read_from_files(base, tmp_path):
    path = make_lora(base, tmp_path / "a", r=8, alpha=16, base_name="org/base-7b")
    meta, entries = validate_dir(path)
    assert (meta.base_model, meta.rank, meta.alpha, meta.task_type) == ("org/base-7b", 8, 16.0, "CAUSAL_LM")
    assert "q_proj" in meta.target_modules
    assert meta.total_size == sum(e.size for e in entries) == sum(p.stat().st_size for p in path.iterdir())
    # 2 layers x 7 modules, each A (8 x in) and B (out x 8)
    import safetensors

    with safetensors.safe_open(path / "adapter_model.safetensors", "pt") as f:
        assert meta.trainable_params == sum(f.get_tensor(k).numel() for k in f.keys())
    assert len(manifest_digest(entries)) == 40


@pytest.fixture
def good(base, tmp_path) -> Path:
    return make_lora(base, tmp_path / "good", r=4)


def test_pickle_is_refused_with_conversion_hint(good):
    torch.save({"w": torch.zeros(2)}, good / "adapter_model.bin")
    with pytest.raises(UnsafeFormatError, match="safe_serialization=True"):
        validate_dir(good)


def test_pickle_renamed_to_safetensors_is_refused(good):
    torch.save({"w": torch.zeros(2)}, good / "adapter_model.safetensors")
    with pytest.raises(UnsafeFormatError, match="pickle"):
        validate_dir(good)


def _rewrite_header(path: Path, mutate) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    header, data = mutate(header, data)
    blob = json.dumps(header).encode() if isinstance(header, dict) else header
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _first(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


@pytest.mark.parametrize("case,mutate,message", [
    ("trailing bytes", lambda h, d: (h, d + b"\0" * 4), "trailing"),
    ("truncated", lambda h, d: (h, d[:-4]), "truncated"),
    ("shifted offsets",
     lambda h, d: ({**h, _first(h): {**h[_first(h)], "data_offsets": [4, h[_first(h)]["data_offsets"][1] + 4]}}, d),
     "gap|overlaps"),
    ("unknown dtype", lambda h, d: ({**h, _first(h): {**h[_first(h)], "dtype": "Q7"}}, d), "unknown dtype"),
    ("size mismatch", lambda h, d: ({**h, _first(h): {**h[_first(h)], "shape": [1, 1]}}, d), "needs"),
    ("not json", lambda h, d: (b"{not json", d), "not valid JSON"),
    ("not an object", lambda h, d: (b"[1, 2]", d), "start with"),
    ("bad utf8", lambda h, d: (b"{\"\xff\": 1}", d), "UTF-8"),
    ("duplicate key",
     lambda h, d: (json.dumps(h).encode()[:-1] + b', ' + json.dumps({_first(h): h[_first(h)]}).encode()[1:], d),
     "duplicate"),
])
def test_tampered_safetensors_is_refused(good, case, mutate, message):
    _rewrite_header(good / "adapter_model.safetensors", mutate)
    with pytest.raises(InvalidAdapterError, match=message):
        validate_dir(good)


def test_gap_between_tensors_is_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2), "b": torch.zeros(2)}, path)

    def gap(h, d):
        for entry in h.values():
            if isinstance(entry, dict) and "data_offsets" in entry and entry["data_offsets"][0] > 0:
                entry["data_offsets"] = [entry["data_offsets"][0] + 4, entry["data_offsets"][1] + 4]
        return h, d + b"\0" * 4

    _rewrite_header(path, gap)
    from peft_hub.safetensors_header import read_header_path

    with pytest.raises(InvalidAdapterError, match="gap"):
        read_header_path(path)


def test_huge_header_length_is_refused(good):
    path = good / "adapter_model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 1 << 40) + raw[8:])
    with pytest.raises(InvalidAdapterError, match="cap"):
        validate_dir(good)


def test_config_must_agree_with_tensors(good):
    config = json.loads((good / "adapter_config.json").read_text())
    config["r"] = 16
    (good / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidAdapterError, match="rank 4 but adapter_config.json says r=16"):
        validate_dir(good)


def test_unknown_peft_type_and_missing_files(good):
    config = json.loads((good / "adapter_config.json").read_text())
    (good / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "MAGIC"}))
    with pytest.raises(InvalidAdapterError, match="unknown peft_type"):
        validate_dir(good)
    (good / "adapter_config.json").unlink()
    with pytest.raises(InvalidAdapterError, match="adapter_config.json is missing"):
        validate_dir(good)


def test_only_allowlisted_small_files(good):
    (good / "run.sh").write_text("rm -rf /")
    with pytest.raises(InvalidAdapterError, match="not allowed"):
        validate_dir(good)
    (good / "run.sh").unlink()
    (good / "notes.md").write_bytes(b"x" * (1024**2 + 1))
    with pytest.raises(InvalidAdapterError, match="cap"):
        validate_dir(good)
    (good / "notes.md").unlink()
    (good / "sub").mkdir()
    with pytest.raises(InvalidAdapterError, match="flat"):
        validate_dir(good)
    shutil.rmtree(good / "sub")
    validate_dir(good)


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "a/b/c", "\u00c4/b", "a/-b", "a/b..c", "a/.b", "a/", "/b", "a/b c", "a%2fb/c"]
)
def test_bad_repo_ids_are_refused(name):
    with pytest.raises(InvalidNameError):
        validate_repo_id(name)


@pytest.mark.parametrize("name", ["../x.json", "a/b.json", ".hidden.json", "x.exe", "weights.pt", "w.pkl"])
def test_bad_filenames_are_refused(name):
    with pytest.raises(InvalidAdapterError):
        validate_filename(name)


def test_good_repo_id():
    assert validate_repo_id("acme-ai/legal_v1.2") == ("acme-ai", "legal_v1.2")


@pytest.mark.parametrize("owner", ["api", "static", "login"])
def test_reserved_namespaces_are_refused(owner):
    with pytest.raises(InvalidNameError, match="reserved"):
        validate_repo_id(f"{owner}/x")
    assert validate_repo_id(f"x/{owner}") == ("x", owner)


def test_description_is_the_cards_first_paragraph(good):
    (good / "README.md").write_text(
        "---\nlicense: mit\n---\n# Support bot\n\n<img src=x>\n\n"
        "Answers **billing** questions\nin a friendly tone.\n\nMore.\n"
    )
    meta, _ = validate_dir(good)
    assert meta.description == "Answers **billing** questions in a friendly tone."
