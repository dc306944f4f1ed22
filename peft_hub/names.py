"""Names in the registry: ``owner/name`` ids and the namespaces they live in,
and the one rule for the file names a repo holds.

A name keeps the case it was typed in and is found whatever the case (the
hub keys lookups on the lowercased name); only ASCII is allowed, so that
lowercasing can never make two different names collide.

A file name is checked here for the hub (push, HF commit) and the client
(local push, pull, cache) alike, so the hub never publishes a name its own
client refuses to write: :func:`check_file_name` for one name,
:func:`check_no_twins` for a list.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from peft_hub.errors import InvalidAdapterError, InvalidNameError

#: Names the web catalog and the API use for themselves.
RESERVED_NAMES = frozenset({"api", "static", "compose", "login", "logout"})
#: ``\Z``, not ``$``: a ``$`` also matches before a final newline.
#: ASCII letters of either case: a name keeps the case it was typed in and is
#: found whatever the case (ASCII, so lowercasing it cannot merge two strangers'
#: names the way Unicode case folding could, e.g. "K" and the Kelvin sign).
NAME_RE = re.compile(r"\A[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?\Z")


def shown(value: object, limit: int = 80) -> str:
    """A user's value for an error message: repr'd (so control characters show
    escaped) and cut short, so a megabyte of input makes a short message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validate_namespace(part: str, *, what: str = "name") -> str:
    """Check one half of ``owner/name``; return it unchanged."""
    if not isinstance(part, str) or not NAME_RE.fullmatch(part) or ".." in part:
        raise InvalidNameError(
            f"invalid {what} {shown(part)}: use 1-64 ASCII letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit, and no '..'"
        )
    if what in ("owner", "namespace", "organisation", "user") and part.lower() in RESERVED_NAMES:
        raise InvalidNameError(f"{part!r} is reserved and cannot be a namespace")
    return part


def validate_repo_id(repo_id: str) -> tuple[str, str]:
    """Split and check an ``owner/name`` id (already URL-decoded).

    Returns:
        ``(owner, name)``.
    """
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2:
        raise InvalidNameError(f"invalid adapter id {shown(repo_id)}: expected 'owner/name'")
    return validate_namespace(parts[0], what="owner"), validate_namespace(parts[1], what="name")


#: File names are stored in a VARCHAR(255) and written to disks whose limit is 255 bytes.
MAX_FILENAME_BYTES = 255
#: Path separators, what Windows refuses (':' also names drives and streams), and
#: what a quoted Content-Disposition cannot hold.
_NOT_IN_FILE_NAMES = frozenset('/\\:*?"<>|')
#: Controls, format characters (zero-width, bidi overrides), surrogates, line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: What Windows opens as a device whatever follows a dot (``nul.md``, ``CON .txt``, ``COM\u00b9.json``).
_WINDOWS_DEVICES = frozenset({
    "CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
    *(f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"),
})


def file_name_problem(name: object) -> str | None:
    """Why ``name`` is not a portable plain file name, or None.

    A portable plain name is one every disk a client runs on stores as
    itself, inside its directory: no separator or drive (``/ \\ :``), no
    ``.``, ``..`` or hidden name, no trailing space or dot (Windows drops
    them), no other character Windows refuses, no control, format
    (zero-width, bidi), surrogate or line/paragraph separator character, no
    Windows device name (``CON``, ``nul.md``, ``COM1.txt``), and at most
    :data:`MAX_FILENAME_BYTES` bytes of UTF-8. Look-alikes (a fullwidth dot,
    a division slash), other spaces and a leading space are plain.
    """
    if not isinstance(name, str):
        return "is not a string"
    if not name or name.startswith(".") or name.endswith((" ", ".")):
        return "is not a plain file name (empty, hidden, or ending in a space or a dot)"
    bad = next((c for c in name if c in _NOT_IN_FILE_NAMES or unicodedata.category(c) in _REFUSED_CATEGORIES), None)
    if bad is not None:
        return f"holds the character {bad!r}: repos are flat directories of plain, portable names"
    if name.partition(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        return "is a device name on Windows"
    if len(name.encode("utf-8")) > MAX_FILENAME_BYTES:
        return f"is longer than {MAX_FILENAME_BYTES} bytes"
    return None


def check_file_name(name: object) -> str:
    """``name`` if it is a portable plain file name (see :func:`file_name_problem`).

    Raises:
        InvalidAdapterError: naming the file and the problem.
    """
    problem = file_name_problem(name)
    if problem is not None or not isinstance(name, str):
        raise InvalidAdapterError(f"file name {shown(name)} {problem}")
    return name


def twin_key(name: str) -> str:
    """What two names share when a disk would hold them as one file.

    Unicode's canonical caseless match (NFD, full case folding, NFC; NFC
    compares as NFD does, and reads better): it covers case-insensitive disks
    (NTFS, APFS and HFS+ by default) and normalizing ones (APFS, HFS+), so
    ``notes.txt``/``NOTES.txt`` are twins, and so are an ``\u00e9`` written
    precomposed and decomposed. It merges all that ``NFC(name).casefold()``
    does and a few pairs more (a long s with an accent beside an ``\u015b``), and
    folds more than some disks do (``\u00df`` and ``ss``): refusing such a pair
    costs a rename, missing a real one leaves a revision no client can pull.
    """
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())


def check_no_twins(names: Iterable[str]) -> None:
    """Refuse a file list that holds one file twice, as the same name or as
    twins (see :func:`twin_key`).

    Raises:
        InvalidAdapterError: naming both files ("... is listed twice").
    """
    seen: dict[str, str] = {}
    for name in names:
        key = twin_key(name)
        if key in seen:
            first = seen[key]
            how = "" if first == name else (
                f": it is one file with {shown(first)} on a case-insensitive or Unicode-normalizing disk")
            raise InvalidAdapterError(f"file {shown(name)} is listed twice{how}")
        seen[key] = name
