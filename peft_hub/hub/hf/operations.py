"""A parsed Hugging Face commit, and its operations applied to the parent's files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peft_hub.adapter import FileEntry
from peft_hub.errors import EntryNotFoundError, PeftHubError

MAX_MESSAGE = 4000


@dataclass
class Operation:
    kind: Literal["add", "delete", "delete_folder"]
    path: str
    entry: FileEntry | None = None
    #: The bytes came inline in the commit (the hub received them itself).
    inline: bool = False

    @property
    def added(self) -> FileEntry:
        """The file an ``add`` puts in place (every ``add`` has one)."""
        if self.entry is None:
            raise PeftHubError(f"the {self.kind} of {self.path} carries no file")
        return self.entry


@dataclass
class ParsedCommit:
    summary: str = ""
    description: str = ""
    parent_commit: str | None = None
    operations: list[Operation] = field(default_factory=list)

    @property
    def message(self) -> str:
        text = self.summary if not self.description else f"{self.summary}\n\n{self.description}"
        return text[:MAX_MESSAGE]


def apply_operations(parent: list[FileEntry], operations: list[Operation]) -> list[FileEntry]:
    """The parent's files with the commit's additions and deletions applied, in order."""
    files = {e.path: e for e in parent}
    for op in operations:
        if op.kind == "add":
            files[op.path] = op.added
        elif op.kind == "delete":
            if files.pop(op.path, None) is None:
                raise EntryNotFoundError(f"A file with this name doesn't exist: {op.path}")
        else:
            prefix = op.path.strip("/")
            gone = [p for p in files if not prefix or p == prefix or p.startswith(prefix + "/")]
            if not gone:
                raise EntryNotFoundError(f"A folder with this name doesn't exist: {op.path}")
            for p in gone:
                del files[p]
    return sorted(files.values(), key=lambda e: e.path)
