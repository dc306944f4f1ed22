"""The metadata half of :class:`peft_hub.client.HubClient`: search,
revisions and lineage, tags, deletion and evals (the bytes, push and pull,
are in :mod:`peft_hub.client.api`)."""

from __future__ import annotations

from typing import Any

from peft_hub.refs import Ref


class RepoMixin:
    """Methods on one adapter's metadata; ``HubClient`` supplies ``_json`` and ``resolve``."""

    def _json(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError

    def resolve(self, ref: str | Ref) -> Ref:
        raise NotImplementedError

    # --- discovery ---------------------------------------------------------

    def search(self, query: str | None = None, **filters: Any) -> dict[str, Any]:
        """Search adapters; filters are base_model, method, min_rank, max_rank,
        target_module, owner, tag, sort, order, page and per_page."""
        params = {k: v for k, v in {"q": query, **filters}.items() if v is not None}
        return self._json("GET", "/api/adapters", params=params)

    def revisions(self, ref: str | Ref) -> list[dict[str, Any]]:
        return self._json("GET", f"/api/adapters/{self.resolve(ref).repo_id}/revisions")

    def lineage(self, ref: str | Ref) -> dict[str, Any]:
        ref = self.resolve(ref)
        return self._json("GET", f"/api/adapters/{ref.repo_id}/lineage", params={"revision": ref.revision or "main"})

    # --- changes -----------------------------------------------------------

    def set_tag(self, ref: str | Ref, tag: str) -> dict[str, Any]:
        """Point ``tag`` at the revision ``ref`` names (default: main)."""
        ref = self.resolve(ref)
        return self._json("PUT", f"/api/adapters/{ref.repo_id}/tags/{tag}", json={"revision": ref.revision or "main"})

    def delete_tag(self, ref: str | Ref, tag: str) -> None:
        self._json("DELETE", f"/api/adapters/{self.resolve(ref).repo_id}/tags/{tag}")

    def delete(self, ref: str | Ref) -> None:
        """Delete an adapter with all its revisions."""
        self._json("DELETE", f"/api/adapters/{self.resolve(ref).repo_id}")

    def add_evals(self, ref: str | Ref, evals: list[dict[str, Any]]) -> dict[str, Any]:
        """Attach eval results (metric, value, dataset, dataset_version, split, extra) to a revision."""
        ref = self.resolve(ref)
        return self._json(
            "POST", f"/api/adapters/{ref.repo_id}/evals", json={"revision": ref.revision or "main", "evals": evals}
        )

    def evals(self, ref: str | Ref) -> list[dict[str, Any]]:
        return self._json("GET", f"/api/adapters/{self.resolve(ref).repo_id}/evals")

    def delete_eval(self, ref: str | Ref, eval_id: int) -> None:
        """Remove one eval result (needs write access to the adapter's namespace)."""
        self._json("DELETE", f"/api/adapters/{self.resolve(ref).repo_id}/evals/{int(eval_id)}")
