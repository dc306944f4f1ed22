"""The mirror's HTTP side: GETs to an HF-compatible upstream, every answer bounded.

Two calls, the ones ``huggingface_hub`` itself makes: repo info at a
revision (``GET /api/models/{repo}/revision/{rev}?blobs=true``, whose
``siblings`` carry sizes and LFS sha256s) and a file's bytes
(``GET /{repo}/resolve/{rev}/{path}``, following redirects to presigned
storage). Redirects are followed by hand: http(s) only, at most
:data:`MAX_REDIRECTS`, and the hub's token goes to the upstream's own origin
only, as ``huggingface_hub`` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from peft_hub import __version__
from peft_hub.errors import InvalidInputError, UnavailableError
from peft_hub.safeparse import loads_json, one_line

MAX_REDIRECTS = 5
#: Repo info larger than this is refused (an adapter's is a few KiB).
MAX_INFO_BYTES = 4 * 1024 * 1024
#: Nesting allowed in the upstream's JSON.
MAX_INFO_DEPTH = 32
CHUNK = 1024 * 1024


@dataclass
class UpstreamHttp:
    """GETs to one upstream hub, with the hub's own identity."""

    base: str
    token: str | None
    timeout: httpx.Timeout

    @classmethod
    def from_settings(cls, settings: Any) -> UpstreamHttp:
        base = str(settings.upstream).rstrip("/")
        if urlsplit(base).scheme not in ("http", "https") or not urlsplit(base).hostname:
            raise ValueError(f"PEFT_HUB_UPSTREAM must be an http(s) URL, not {one_line(base, 100)!r}")
        timeout = httpx.Timeout(settings.upstream_read_timeout, connect=settings.upstream_connect_timeout)
        return cls(base=base, token=settings.upstream_token, timeout=timeout)

    def repo_info(self, owner: str, name: str, deadline: float) -> Any | None:
        """The upstream's repo info at ``main``, parsed; None when it has no such repo for us."""
        url = f"{self.base}/api/models/{quote(owner, safe='')}/{quote(name, safe='')}/revision/main?blobs=true"
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            with self._get(client, url, deadline) as response:
                if response.status_code in (401, 403, 404):
                    return None
                self._check(response, url)
                raw = bytearray()
                for chunk in _pieces(response, self.base):
                    raw += chunk
                    if len(raw) > MAX_INFO_BYTES:
                        raise UnavailableError(f"{self.base}: repo info above {MAX_INFO_BYTES} bytes; refused")
                    _check_deadline(deadline, self.base)
        try:
            return loads_json(bytes(raw), max_depth=MAX_INFO_DEPTH, what="the upstream's repo info")
        except InvalidInputError as exc:
            raise UnavailableError(f"{self.base}: {exc.message}") from None

    def stream_file(self, owner: str, name: str, rev: str, path: str, size: int, deadline: float) -> Iterator[bytes]:
        """A file's bytes, in pieces; never more than ``size`` of them."""
        url = f"{self.base}/{quote(owner, safe='')}/{quote(name, safe='')}/resolve/{rev}/{quote(path, safe='')}"
        got = 0
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            with self._get(client, url, deadline) as response:
                self._check(response, url)
                for chunk in _pieces(response, self.base):
                    got += len(chunk)
                    if got > size:
                        raise UnavailableError(f"{self.base}: {path} is longer than the {size} bytes it listed")
                    _check_deadline(deadline, self.base)
                    yield chunk
        if got != size:
            raise UnavailableError(f"{self.base}: {path} ended after {got} of its {size} bytes")

    def _get(self, client: httpx.Client, url: str, deadline: float):  # noqa: ANN202 - a context manager
        """GET ``url``, following at most MAX_REDIRECTS redirects to http(s) URLs."""
        origin = urlsplit(self.base)[:2]
        for _ in range(MAX_REDIRECTS + 1):
            _check_deadline(deadline, self.base)
            headers = {"User-Agent": f"peft-hub/{__version__} (mirror)", "Accept-Encoding": "identity"}
            if self.token and urlsplit(url)[:2] == origin:
                headers["Authorization"] = f"Bearer {self.token}"
            try:
                response = client.send(client.build_request("GET", url, headers=headers), stream=True)
            except httpx.HTTPError as exc:
                reason = one_line(str(exc) or type(exc).__name__, 200)
                raise UnavailableError(f"upstream {self.base} did not answer: {reason}") from None
            if response.status_code not in (301, 302, 303, 307, 308):
                return _Closing(response)
            location = response.headers.get("location", "")
            response.close()
            url = urljoin(url, location)
            if urlsplit(url).scheme not in ("http", "https"):
                raise UnavailableError(f"upstream {self.base} redirected to a non-http(s) URL; refused")
        raise UnavailableError(f"upstream {self.base}: more than {MAX_REDIRECTS} redirects; refused")

    def _check(self, response: httpx.Response, url: str) -> None:
        if response.status_code != 200:
            raise UnavailableError(
                f"upstream {self.base} answered {response.status_code} for {one_line(urlsplit(url).path, 200)}")


class _Closing:
    """A streamed response, closed when the block ends."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    def __enter__(self) -> httpx.Response:
        return self.response

    def __exit__(self, *exc: object) -> None:
        self.response.close()


def _pieces(response: httpx.Response, base: str) -> Iterator[bytes]:
    """The body in CHUNK pieces; an upstream that breaks off mid-body (closed
    connection, reset, read timeout) is a 503 like one that never answered."""
    try:
        yield from response.iter_bytes(CHUNK)
    except httpx.HTTPError as exc:
        reason = one_line(str(exc) or type(exc).__name__, 200)
        raise UnavailableError(f"upstream {base} broke off mid-answer: {reason}; retry later") from None


def _check_deadline(deadline: float, base: str) -> None:
    if time.monotonic() > deadline:
        raise UnavailableError(f"upstream {base} is too slow: the fetch ran past its deadline; retry later")
