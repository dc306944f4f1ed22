"""One way to send a file, or a slice of one, with PUT: a whole blob to the
URL the hub handed out (:func:`peft_hub.client.transfers.upload`) and each
part of a multipart upload (:func:`peft_hub.client.multipart.upload_parts`).

- The token and cookies go to the hub's own origin only.
- A URL off that origin (a presigned store URL) has its body handed to the
  kernel (:mod:`peft_hub.client.rawhttp`) where the session allows; any other
  goes through httpx, read a block at a time.
- Each try sends from the slice's start, and the progress bar is set back by
  exactly what the failed try had counted.
- A redirect is never followed: the body, and the token, would go where the
  hub did not say.
- A file that ends before the slice does was changed under the upload: a
  StorageError, never retried.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx

from peft_hub.client import rawhttp
from peft_hub.client.http import build_request, origin, raise_for_status, redact
from peft_hub.client.retry import NO_RETRY, RetryPolicy, transient
from peft_hub.errors import HubUnreachableError, StorageError
from peft_hub.progress import tqdm

#: The block size of a body sent through httpx.
CHUNK = 1024 * 1024


class _Sent:
    """What the current try has sent, counted on the progress bar as it goes."""

    def __init__(self, bar: tqdm) -> None:
        self.bar, self.n = bar, 0

    def __call__(self, n: int) -> None:
        self.n += n
        self.bar.update(n)

    def restart(self) -> None:
        self.bar.update(-self.n)
        self.n = 0


def _blocks(path: Path, offset: int, length: int, sent: _Sent) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        fh.seek(offset)
        left = length
        while left and (block := fh.read(min(CHUNK, left))):
            left -= len(block)
            sent(len(block))
            yield block
    if left:
        raise StorageError(f"{path.name} changed while it was uploaded")


def put_file(
    session: httpx.Client, url: httpx.URL, headers: dict[str, str], path: Path, bar: tqdm, *, what: str,
    offset: int = 0, length: int, retry: RetryPolicy = NO_RETRY, method: str = "PUT",
) -> int:
    """Send ``length`` bytes of ``path`` from ``offset`` to ``url``, retried as an idempotent
    request (the target is named by its bytes' digest); returns the answer's status (2xx,
    or 412: the store already had the bytes under If-None-Match). ``what`` names the
    upload in errors (``upload of adapter_model.safetensors``)."""
    headers = {**headers, "Content-Length": str(length)}
    sent = _Sent(bar)
    direct = rawhttp.for_url(session, url) if origin(url) != origin(session.base_url) else None
    try:
        for attempt in retry.retrying(lambda exc: transient(exc, idempotent=True)):
            with attempt:
                sent.restart()  # a new try sends the slice from its start
                if direct is not None:
                    request = build_request(session, method, url, headers=headers)
                    with open(path, "rb") as fh:
                        try:
                            answer: httpx.Response | rawhttp.Response = direct.put_file(
                                request.headers, fh, length, sent, offset=offset)
                        except httpx.LocalProtocolError:  # the file ended early
                            raise StorageError(f"{path.name} changed while it was uploaded") from None
                else:
                    request = build_request(session, method, url, headers=headers,
                                            content=_blocks(path, offset, length, sent))
                    answer = session.send(request, stream=True)
                try:
                    if 300 <= answer.status_code < 400:
                        raise StorageError(f"the {what} to {redact(url)} was answered with a redirect")
                    if answer.status_code != 412:
                        answer.raise_for_status() if isinstance(answer, rawhttp.Response) else raise_for_status(answer)
                    return answer.status_code
                finally:
                    answer.close()
    except httpx.HTTPError as exc:
        raise HubUnreachableError(f"{what} to {redact(url)} failed: {exc}") from None
    finally:
        if direct is not None:
            direct.close()
    raise AssertionError("unreachable")  # pragma: no cover
