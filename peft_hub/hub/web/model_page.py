"""The base model page: what the model is, how to pull it and build on it,
and every adapter in the hub made for it, with their evals side by side.

An adapter is "made for" a base model when its ``base_model`` (its config's
``base_model_name_or_path``) names the model's repo, ``owner/name``, in any
case. Only adapters the viewer may read are listed (``crud.visible_clause``).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from peft_hub.hub import crud
from peft_hub.hub.auth import Principal
from peft_hub.hub.models import Adapter, Eval, Revision, pk
from peft_hub.hub.storage import BlobStore
from peft_hub.hub.web import charts
from peft_hub.hub.web.detail import page_link, read_card

#: The most adapters one base model page lists (the most downloaded first).
MAX_ADAPTERS = 200
#: The most metric columns the side-by-side table shows.
MAX_COLUMNS = 12


def adapters_for(session: Session, principal: Principal | None, repo_id: str) -> list[Adapter]:
    """The visible adapters whose base model is ``repo_id`` (case-insensitive), most downloaded first."""
    rows = session.exec(
        select(Adapter).where(
            crud.visible_clause(principal), col(Adapter.kind) == "adapter",
            func.lower(col(Adapter.base_model)) == repo_id.lower(),
        ).order_by(col(Adapter.downloads).desc(), col(Adapter.id).asc()).limit(MAX_ADAPTERS)
    ).all()
    return list(rows)


def column_label(key: tuple[str, str, str | None, str | None]) -> str:
    metric, dataset, version, split = key
    detail = ", ".join(p for p in (f"v{version}" if version else None, split) if p)
    return f"{metric} · {dataset}" + (f" ({detail})" if detail else "")


def evals_table(adapters: list[Adapter], evals: dict[int, list[Eval]]) -> dict[str, Any]:
    """One row per adapter, one column per metric/dataset series, from each
    adapter's ``main`` revision (``evals`` newest first, as
    ``crud.main_revision_evals`` gives them). A cell holds the adapter's newest
    score and the base model's score on that series where an eval carries one
    (``extra.base_value``, or an eval marked ``variant: base``)."""
    counts: dict[tuple, int] = {}
    rows: list[dict[str, Any]] = []
    for adapter in adapters:
        cells: dict[tuple, dict[str, float | None]] = {}
        bases: dict[tuple, float] = {}
        for e in evals.get(pk(adapter), []):
            key = charts.series_key(e)
            if not charts.chartable(e.value):
                continue
            if charts.is_base(e):
                bases.setdefault(key, e.value)
            elif key not in cells:
                cells[key] = {"value": e.value, "base": charts.base_value(e)}
        for key, cell in cells.items():
            if cell["base"] is None:
                cell["base"] = bases.get(key)
            counts[key] = counts.get(key, 0) + 1
        rows.append({"adapter": adapter, "cells": cells})
    # The series most adapters report come first; ties in name order.
    keys = sorted(counts, key=lambda k: (-counts[k], tuple(str(p) for p in k)))[:MAX_COLUMNS]
    columns = [{"key": k, "label": column_label(k), "metric": k[0], "dataset": k[1]} for k in keys]
    return {"columns": columns, "rows": [r for r in rows if any(k in r["cells"] for k in keys)]}


def snippets(hub_url: str, repo_id: str, rev_label: str | None, private: bool, example: str | None) -> dict[str, str]:
    """Commands to pull this model, merge an adapter into it, and load it with transformers."""
    ref = f"{repo_id}@{rev_label}" if rev_label else repo_id
    revision = f", revision={json.dumps(rev_label)}" if rev_label else ""
    token_line = "\nos.environ[\"HF_TOKEN\"] = \"<your peft-hub token>\"  # private model" if private else ""
    return {
        "cli_env": f"export PEFT_HUB_URL={shlex.quote(hub_url)}",
        "pull": shlex.join(["peft-hub", "pull", ref]),
        "materialize": shlex.join(["peft-hub", "materialize", ref, example or "OWNER/ADAPTER", "-o", "merged"]),
        "transformers": (
            "import os\n\n"
            "# Set before huggingface_hub is imported.\n"
            f"os.environ[\"HF_ENDPOINT\"] = {json.dumps(hub_url)}{token_line}\n\n"
            "from transformers import AutoModelForCausalLM\n\n"
            f"model = AutoModelForCausalLM.from_pretrained({json.dumps(repo_id)}{revision})"
        ),
    }


def build(
    session: Session, store: BlobStore, principal: Principal | None, hub_url: str,
    model: Adapter, revision: Revision, rev_label: str | None,
) -> dict[str, Any]:
    """The model page's template context."""
    repo_id = f"{model.owner}/{model.name}"
    files = crud.revision_files(session, revision=revision)
    tags = crud.tags_of(session, adapter=model)
    tags_by_sha: dict[str, list[str]] = {}
    for tag, sha in tags.items():
        tags_by_sha.setdefault(sha, []).append(tag)
    front, card_html = read_card(store, files)
    adapters = adapters_for(session, principal, repo_id)
    evals = crud.main_revision_evals(session, adapter_ids=[pk(a) for a in adapters])
    listed = [{"adapter": a, "headline": charts.headline(evals.get(pk(a), []))} for a in adapters]
    example = f"{adapters[0].owner}/{adapters[0].name}" if adapters else None
    return {
        "adapter": model, "repo_id": repo_id, "revision": revision, "rev_label": rev_label,
        "is_main": tags.get("main") == revision.sha, "meta": revision.meta or {}, "files": files, "tags": tags,
        "tags_by_sha": tags_by_sha, "revisions": crud.list_revisions(session, adapter=model),
        "card_front": front, "card_html": card_html, "adapters": listed,
        "evals_table": evals_table(adapters, evals),
        "snippets": snippets(hub_url, repo_id, rev_label, model.private, example), "page_link": page_link,
    }
