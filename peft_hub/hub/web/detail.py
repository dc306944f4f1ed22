"""Everything the adapter page shows about one revision: files, revisions and
tags, the model card, evals and charts, lineage, and copy-paste snippets."""

from __future__ import annotations

import json
import shlex
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from peft_hub.adapter import vllm_max_lora_rank
from peft_hub.hub import crud
from peft_hub.hub.auth import Principal
from peft_hub.hub.models import Adapter, Revision
from peft_hub.hub.storage import BlobStore
from peft_hub.hub.web import charts
from peft_hub.hub.web.card import card_from_blob
from peft_hub.modelcard import CARD_NAME

AUTO_CLASSES = {
    "CAUSAL_LM": "AutoModelForCausalLM", "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification", "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering", "FEATURE_EXTRACTION": "AutoModel",
}


def page_link(repo_id: str, rev: str | None = None) -> str:
    return f"/{repo_id}@{rev}" if rev else f"/{repo_id}"


def read_card(store: BlobStore, files: list[Any]) -> tuple[str | None, str | None]:
    """The card's YAML header (as text) and its body rendered to safe HTML."""
    entry = next((f for f in files if f.path == CARD_NAME), None)
    if entry is None:
        return None, None
    return card_from_blob(store, entry.sha256, entry.size)  # read and rendered once per blob


def lineage_view(session: Session, adapter: Adapter, revision: Revision, principal: Principal | None) -> dict[str, Any]:
    """Parents with links (where the viewer may see them) and visible children."""
    raw = crud.lineage(session, adapter=adapter, revision=revision, principal=principal)
    parents = [{**p, "href": page_link(p["ref"], p["revision"]) if p["in_hub"] else None} for p in raw["parents"]]
    children = [{**c, "href": page_link(c["id"], c["revision"])} for c in raw["children"]]
    record = (revision.meta or {}).get("lineage") or {}
    params = record.get("params") if isinstance(record.get("params"), dict) else {}
    return {"parents": parents, "children": children, "method": record.get("method"), "params": params}


def find_base(session: Session, principal: Principal | None, base_model: str | None) -> Adapter | None:
    """The visible model repo an adapter's ``base_model`` names, if the hub holds it."""
    owner, slash, name = (base_model or "").partition("/")
    if not slash or not owner or not name or "/" in name:
        return None
    return session.exec(
        select(Adapter).where(
            crud.visible_clause(principal), col(Adapter.kind) == "model",
            func.lower(col(Adapter.owner)) == owner.lower(), func.lower(col(Adapter.name)) == name.lower(),
        )
    ).first()


def sibling(session: Session, adapter: Adapter, principal: Principal | None) -> str | None:
    """Another visible LoRA on the same base model, for the compose example."""
    if not adapter.base_model:
        return None
    clauses = crud.search_filters(principal=principal, base_model=adapter.base_model, method="LORA")
    items = crud.search_adapters(session, clauses=clauses, sort="downloads", per_page=2).items
    return next((f"{a.owner}/{a.name}" for a in items if a.id != adapter.id), None)


def snippets(
    hub_url: str, adapter: Adapter, rev_label: str | None, meta: dict[str, Any], other: str | None
) -> dict[str, str]:
    """Commands to pull, compose and serve this adapter, quoted for a shell or Python."""
    repo_id = f"{adapter.owner}/{adapter.name}"
    ref = f"{repo_id}@{rev_label}" if rev_label else repo_id
    base = meta.get("base_model") or "BASE_MODEL"
    out = {
        "cli_env": f"export PEFT_HUB_URL={shlex.quote(hub_url)}",
        "pull": shlex.join(["peft-hub", "pull", ref]),
        "compose": shlex.join(["peft-hub", "compose", f"{ref}+{other or 'OWNER/OTHER'}",
                               "--weights", "0.5,0.5", "--method", "stack"]),
    }
    auto = AUTO_CLASSES.get(meta.get("task_type") or "", "AutoModelForCausalLM")
    revision = f", revision={json.dumps(rev_label)}" if rev_label else ""
    token_line = "\nos.environ[\"HF_TOKEN\"] = \"<your peft-hub token>\"  # private adapter" if adapter.private else ""
    out["peft"] = (
        "import os\n\n"
        "# Set before huggingface_hub is imported.\n"
        f"os.environ[\"HF_ENDPOINT\"] = {json.dumps(hub_url)}{token_line}\n\n"
        f"from peft import PeftModel\nfrom transformers import {auto}\n\n"
        f"base = {auto}.from_pretrained({json.dumps(base)})\n"
        f"model = PeftModel.from_pretrained(base, {json.dumps(repo_id)}{revision})"
    )
    if meta.get("method") == "LORA":
        rank = meta.get("max_rank") or meta.get("rank") or 0
        vllm_rank = vllm_max_lora_rank(rank)
        env = f"HF_ENDPOINT={shlex.quote(hub_url)}" + (" HF_TOKEN=<your peft-hub token>" if adapter.private else "")
        args = ["vllm", "serve", base, "--enable-lora", "--lora-modules", f"{adapter.name}={repo_id}"]
        if vllm_rank:
            args += ["--max-lora-rank", str(vllm_rank)]
        out["vllm"] = f"{env} {shlex.join(args)}"
    return out


def build(
    session: Session, store: BlobStore, principal: Principal | None, hub_url: str,
    adapter: Adapter, revision: Revision, rev_label: str | None,
) -> dict[str, Any]:
    """The adapter page's template context."""
    files = crud.revision_files(session, revision=revision)
    tags = crud.tags_of(session, adapter=adapter)
    tags_by_sha: dict[str, list[str]] = {}
    for tag, sha in tags.items():
        tags_by_sha.setdefault(sha, []).append(tag)
    revisions = crud.list_revisions(session, adapter=adapter)
    eval_rows, eval_charts = charts.build(crud.list_evals(session, adapter=adapter), revisions, revision.sha)
    front, card_html = read_card(store, files)
    meta = revision.meta or {}
    return {
        "adapter": adapter, "repo_id": f"{adapter.owner}/{adapter.name}", "revision": revision,
        "rev_label": rev_label, "is_main": tags.get("main") == revision.sha, "meta": meta,
        "files": files, "tags": tags, "tags_by_sha": tags_by_sha, "revisions": revisions,
        "eval_rows": eval_rows, "charts": eval_charts, "card_front": front, "card_html": card_html,
        "lineage": lineage_view(session, adapter, revision, principal),
        "snippets": snippets(hub_url, adapter, rev_label, meta, sibling(session, adapter, principal)),
        "base_repo": find_base(session, principal, adapter.base_model), "page_link": page_link,
    }
