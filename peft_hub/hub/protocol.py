"""The HTTP/1.1 parser the hub runs under uvicorn, with a bound on each request's head.

uvicorn picks httptools (and uvloop) when they are installed, as the ``hub``
extra installs them: about four times h11's requests per second here. h11
refuses a request line and headers larger than its buffer; uvicorn's
httptools protocol buffers them without limit, so one connection sending an
endless header could hold any amount of a worker's memory. This protocol
counts the bytes that arrive while a request's head is still incomplete and
answers 431 past :data:`HEAD_MAX`, as h11 is told to with the same bound.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: h11 it is, bounded the same way
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

#: The most bytes a request line and its headers may take (h11's default is 16 KiB, nginx's 8 KiB a line).
HEAD_MAX = 64 * 1024
_MESSAGE = b"the request line and headers exceed 64 KiB\n"
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
              b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_MESSAGE), _MESSAGE))


def server_options(workers: int = 1) -> dict[str, Any]:
    """What every uvicorn ``Config`` serving the hub takes: the bounded parser, or h11 with the same bound;
    uvloop taking in waiting connections as asyncio does (:mod:`peft_hub.hub.eventloop`; a few a turn
    for each of several ``workers`` on one socket), or uvicorn's choice without uvloop."""
    http = "h11" if HttpToolsProtocol is None else f"{__name__}:BoundedHttpTools"
    loop = "auto" if find_spec("uvloop") is None else \
        f"peft_hub.hub.eventloop:{'EagerLoop' if workers <= 1 else 'SharingLoop'}"
    return {"http": http, "h11_max_incomplete_event_size": HEAD_MAX, "loop": loop}


if HttpToolsProtocol is not None:
    class BoundedHttpTools(HttpToolsProtocol):
        """uvicorn's httptools protocol, closing with 431 a connection whose request head outgrows :data:`HEAD_MAX`.

        A read counts when it was all head: the head was open before the
        parser saw it and still is, with no request finished in between. A
        read that finishes one request and starts the next is not counted (a
        body is never taken for a head), so a head may pass the bound by at
        most one read before it is refused.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.head_open, self.head_bytes, self.finished = True, 0, False

        def data_received(self, data: bytes) -> None:
            was_open, self.finished = self.head_open, False
            super().data_received(data)
            if not (was_open and self.head_open) or self.finished or self.transport.is_closing():
                return
            self.head_bytes += len(data)
            if self.head_bytes > HEAD_MAX:
                self.transport.write(_TOO_LARGE)
                self.transport.close()

        def on_headers_complete(self) -> None:
            self.head_open, self.head_bytes = False, 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.head_open, self.head_bytes, self.finished = True, 0, True  # what follows is the next request's head
            super().on_message_complete()
