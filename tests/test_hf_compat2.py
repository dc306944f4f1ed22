"""Hugging Face compatibility, round two (issue #12, section 1), with the real
``huggingface_hub`` against a live hub on both backends: empty repos, Trainer
pickles, listing, tags and visibility, history, short ids, refs, card tags."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

hf = pytest.importorskip("huggingface_hub")
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

from peft_hub.hub.hf.shapes import EMPTY_SHA

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
VENV_030 = ROOT / ".venv-hf030" / "bin" / "python"


@pytest.fixture
def api(hub, monkeypatch) -> HfApi:
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    return HfApi(endpoint=hub.url, token=hub.admin_token)


def _hf_env(hub, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=hub.admin_token, HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


# --- empty repos ---------------------------------------------------------------


def test_an_empty_repo_has_an_empty_main(api, tmp_path):
    api.create_repo("admin/new")
    assert api.model_info("admin/new", revision="main").sha == EMPTY_SHA
    assert api.model_info("admin/new", revision=EMPTY_SHA).siblings == []
    assert api.list_repo_files("admin/new") == []
    assert list(api.list_repo_tree("admin/new", revision="main")) == []
    assert api.get_paths_info("admin/new", ["README.md"]) == []
    assert not api.file_exists("admin/new", "README.md")
    assert api.list_repo_refs("admin/new").branches[0].target_commit == EMPTY_SHA
    assert api.list_repo_commits("admin/new") == []
    out = snapshot_download("admin/new", endpoint=api.endpoint, token=api.token, cache_dir=tmp_path / "c")
    assert not os.path.exists(out) or os.listdir(out) == []  # as on huggingface.co: nothing to fetch
    with pytest.raises(RevisionNotFoundError):
        api.model_info("admin/new", revision="v1")


def test_upload_folder_with_delete_patterns_into_a_new_repo(api, llama_adapter):
    api.create_repo("admin/fresh")
    commit = api.upload_folder(folder_path=str(llama_adapter), repo_id="admin/fresh", delete_patterns=["*.json"])
    assert api.model_info("admin/fresh").sha == commit.oid
    assert "adapter_config.json" in api.list_repo_files("admin/fresh")


@pytest.mark.skipif(not VENV_030.exists(), reason="no .venv-hf030 (scripts/install-test-deps.sh makes it)")
def test_huggingface_hub_0_31_pushes_into_a_new_repo(hub, llama_adapter, tmp_path):
    """0.3x asks for repo_info(revision="main", expand="xetEnabled") before the first commit."""
    script = (
        "import sys, huggingface_hub as h\n"
        "api = h.HfApi()\n"
        "api.create_repo('admin/old-client')\n"
        "c = api.upload_folder(folder_path=sys.argv[1], repo_id='admin/old-client')\n"
        "print('VERSION', h.__version__, 'OID', c.oid)\n"
        "print('FILES', sorted(api.list_repo_files('admin/old-client')))\n"
    )
    done = subprocess.run([str(VENV_030), "-c", script, str(llama_adapter)], env=_hf_env(hub, tmp_path),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VERSION 0.31.1" in done.stdout and "adapter_config.json" in done.stdout
    assert HfApi(endpoint=hub.url, token=hub.admin_token).model_info("admin/old-client").sha in done.stdout


# --- Trainer pickles -----------------------------------------------------------


def test_training_args_bin_is_refused_with_trainer_advice(api, llama_adapter, tmp_path):
    folder = tmp_path / "out"
    shutil.copytree(llama_adapter, folder)
    (folder / "training_args.bin").write_bytes(b"\x80\x04pickle")
    api.create_repo("admin/trained")
    with pytest.raises(HfHubHTTPError) as refused:
        api.upload_folder(folder_path=str(folder), repo_id="admin/trained")
    message = str(refused.value)
    assert "training_args.bin" in message and "trainer.model.push_to_hub" in message and "Re-save" not in message
    # The documented way: a .gitignore in the folder; ignored files are never sent.
    (folder / ".gitignore").write_text("*.bin\n*.pt\n*.pth\n")
    commit = api.upload_folder(folder_path=str(folder), repo_id="admin/trained")
    assert sorted(api.list_repo_files("admin/trained", revision=commit.oid)) == sorted(os.listdir(llama_adapter))


# --- tags, visibility, history, short ids, refs -------------------------------


def test_tags_visibility_history_and_short_ids(api, hub, llama_adapter, tmp_path):
    api.create_repo("admin/hist")
    first = api.upload_folder(folder_path=str(llama_adapter), repo_id="admin/hist", create_pr=False)
    (tmp_path / "a").mkdir()
    shutil.copytree(llama_adapter, tmp_path / "a" / "x")
    (tmp_path / "a" / "x" / "README.md").write_text("# second\n")
    second = api.upload_folder(folder_path=str(tmp_path / "a" / "x"), repo_id="admin/hist", commit_message="two")
    commits = api.list_repo_commits("admin/hist")
    assert [c.commit_id for c in commits] == [second.oid, first.oid] and commits[0].title == "two"
    assert [c.commit_id for c in api.list_repo_commits("admin/hist", revision=first.oid)] == [first.oid]

    short = first.oid[:7]
    assert api.model_info("admin/hist", revision=short).sha == first.oid
    assert api.list_repo_files("admin/hist", revision=short) == sorted(os.listdir(llama_adapter))
    api.create_tag("admin/hist", tag="v1", revision=short)
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_tag("admin/hist", tag="v1")
    assert exists.value.response.status_code == 409
    api.create_tag("admin/hist", tag="v1", exist_ok=True)
    refs = api.list_repo_refs("admin/hist", include_pull_requests=True)
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", first.oid)] and refs.pull_requests == []
    api.delete_tag("admin/hist", tag="v1")
    assert api.list_repo_refs("admin/hist").tags == []
    with pytest.raises(HfHubHTTPError):
        api.delete_tag("admin/hist", tag="main")

    api.update_repo_settings("admin/hist", private=True)
    assert api.model_info("admin/hist").private
    anonymous = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(HfHubHTTPError) as hidden:
        anonymous.model_info("admin/hist")
    assert hidden.value.response.status_code in (401, 404)
    with pytest.raises(HfHubHTTPError):
        anonymous.update_repo_settings("admin/hist", private=False)
    api.update_repo_settings("admin/hist", private=False)
    assert anonymous.model_info("admin/hist").sha == second.oid
    actions = _audit_actions(hub)
    assert {"tag.move", "tag.delete", "adapter.visibility"} <= actions


def _audit_actions(hub) -> set[str]:
    from sqlmodel import Session, select

    from peft_hub.hub.models import AuditEvent

    with Session(hub.app.state.engine) as session:
        return set(session.exec(select(AuditEvent.action)).all())


# --- listing ------------------------------------------------------------------


def test_list_models_searches_filters_sorts_and_pages(api, llama_adapter, hub, tmp_path):
    for name in ("alpha-one", "alpha-two", "beta"):
        api.create_repo(f"admin/{name}")
        api.upload_folder(folder_path=str(llama_adapter), repo_id=f"admin/{name}")
    found = [m.id for m in api.list_models(search="alpha")]
    assert sorted(found) == ["admin/alpha-one", "admin/alpha-two"]
    assert {m.id for m in api.list_models(author="admin", filter="lora")} == {
        "admin/alpha-one", "admin/alpha-two", "admin/beta"}
    assert list(api.list_models(filter="base_model:some/other")) == []
    assert [m.id for m in api.list_models(author="admin", sort="downloads")]
    assert len(list(api.list_models(limit=2))) == 2
    full = next(iter(api.list_models(search="beta", full=True, cardData=True)))
    assert full.siblings and full.card_data is not None
    from peft_hub.hub.hf import listing

    old, listing.PAGE_MAX = listing.PAGE_MAX, 1
    try:  # three pages of one, followed through the Link header
        assert len(list(api.list_models(author="admin"))) == 3
    finally:
        listing.PAGE_MAX = old
    done = subprocess.run(["hf", "models", "ls", "--search", "alpha", "--format", "json"], env=_hf_env(hub, tmp_path),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "admin/alpha-one" in done.stdout, done.stdout + done.stderr
    done = subprocess.run(["hf", "repos", "ls"], env=_hf_env(hub, tmp_path),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "admin/beta" in done.stdout, done.stdout + done.stderr


# --- card tags ----------------------------------------------------------------


def test_a_local_base_model_path_is_no_base_model_tag(api, llama_adapter, tmp_path):
    folder = tmp_path / "local-base"
    shutil.copytree(llama_adapter, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/tmp/checkpoints/llama"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "README.md").write_text("---\nbase_model: /tmp/checkpoints/llama\n---\n# x\n")
    api.create_repo("admin/local-base")
    api.upload_folder(folder_path=str(folder), repo_id="admin/local-base")
    info = api.model_info("admin/local-base")
    assert not any(t.startswith("base_model:") for t in info.tags)
    assert (info.card_data or {}).get("base_model") is None


# --- names keep their case and are found whatever the case ---------------------


def test_names_keep_their_case_and_are_found_in_any_case(api, hub, llama_adapter, tmp_path):
    import httpx

    from peft_hub.client import HubClient

    api.create_repo("admin/Llama-3-LoRA")
    commit = api.upload_folder(folder_path=str(llama_adapter), repo_id="admin/llama-3-lora")
    info = api.model_info("ADMIN/LLAMA-3-LORA")
    assert (info.id, info.sha) == ("admin/Llama-3-LoRA", commit.oid)
    with pytest.raises(HfHubHTTPError) as twin:
        api.create_repo("admin/LLAMA-3-lora")
    assert twin.value.response.status_code == 409 and "ignore case" in str(twin.value)
    assert api.create_repo("admin/llama-3-LORA", exist_ok=True)
    assert [m.id for m in api.list_models(search="llama-3")] == ["admin/Llama-3-LoRA"]
    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "native") as client:
        assert client.pull("admin/LLAMA-3-LoRA", tmp_path / "out").revision == commit.oid
    assert httpx.get(f"{hub.url}/admin/llama-3-lora").status_code == 200
    # Non-ASCII letters never pass: no case folding can merge two names.
    auth = {"Authorization": f"Bearer {hub.admin_token}"}
    for owner, name in (("admin", "\u212aelvin"), ("admin", "stra\u00dfe"), ("API", "x")):
        refused = httpx.post(f"{hub.url}/api/repos/create", headers=auth,
                             json={"type": "model", "organization": owner, "name": name})
        assert refused.status_code == 422, refused.text


TRAINER_SCRIPT = '''
import sys, pathlib, torch
sys.path.insert(0, sys.argv[2])
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments
from tiny_models import tiny_llama

out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
# The documented setting: Trainer state is pickled; a .gitignore keeps it (and the
# resume checkpoint, a subfolder) out of the push, as on huggingface.co.
(out / ".gitignore").write_text("*.bin\\n*.pt\\n*.pth\\nlast-checkpoint/\\n")
model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
rows = [{"input_ids": torch.arange(8) % 128, "labels": torch.arange(8) % 128} for _ in range(4)]
args = TrainingArguments(output_dir=str(out), max_steps=2, per_device_train_batch_size=2, save_strategy="steps",
                         save_steps=1, report_to="none", use_cpu=True, push_to_hub=True,
                         hub_model_id="admin/trained-lora", hub_strategy="checkpoint")
trainer = Trainer(model=model, args=args, train_dataset=rows)
trainer.train()
trainer.push_to_hub(commit_message="end of training")
print("PUSHED")
'''


def test_trainer_push_to_hub_with_checkpoint_strategy(hub, tmp_path):
    """``Trainer(push_to_hub=True, hub_strategy="checkpoint")`` with the documented .gitignore."""
    pytest.importorskip("peft")
    done = subprocess.run([sys.executable, "-c", TRAINER_SCRIPT, str(tmp_path / "run"), str(ROOT / "tests")],
                          env=_hf_env(hub, tmp_path, HF_HUB_DISABLE_XET="1"), capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0 and "PUSHED" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    api = HfApi(endpoint=hub.url, token=hub.admin_token)
    files = set(api.list_repo_files("admin/trained-lora"))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert api.list_repo_commits("admin/trained-lora")[0].title == "end of training"
