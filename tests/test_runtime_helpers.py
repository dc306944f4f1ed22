"""Shared pieces of the gpu_runtime tests: a recording stand-in for the hub
client, small JSONL writers and the ``cuda`` mark (the ``one_torch_thread``
fixture is in conftest.py). The real hub is exercised by the
integration test in test_runtime_demo.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from peft_hub.client import PulledAdapter, PushResult

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible")


class FakeHub:
    """Records push/pull/add_evals calls; stores pushed adapters in a folder.

    Implements only the three calls gpu_runtime makes, with the signatures of
    ``peft_hub.client.HubClient``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store: dict[str, tuple[Path, str]] = {}  # ref -> (files, revision)
        self.pulls: list[str] = []
        self.evals: list[tuple[str, list[dict]]] = []

    def add(self, repo_id: str, path: Path, revision: str = "r1") -> None:
        self.store[f"{repo_id}@{revision}"] = self.store[repo_id] = (path, revision)

    def push(self, path, *, name=None, **_):
        revision = f"rev{len(self.store)}"
        dest = self.root / name.replace("/", "__") / revision
        shutil.copytree(path, dest)
        self.add(name, dest, revision)
        return PushResult(name, revision, True, 0, 0)

    def pull(self, ref, output_dir=None):
        self.pulls.append(ref)
        if ref not in self.store:
            from peft_hub.errors import AdapterNotFoundError

            raise AdapterNotFoundError(f"no adapter {ref}")
        path, revision = self.store[ref]
        return PulledAdapter(path, ref.partition("@")[0], revision)

    def add_evals(self, ref, evals):
        self.evals.append((ref, evals))
        return {"added": len(evals)}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
