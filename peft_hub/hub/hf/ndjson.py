"""A streamed NDJSON request body, read a line (or, for a long line, a piece) at a time.

:func:`peft_hub.hub.hf.commit.read_commit` reads a commit through
:class:`StreamedBody`, so a line too long to hold whole can be streamed
instead; :func:`ndjson_lines` refuses such lines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from peft_hub.errors import InvalidInputError


class StreamedBody:
    """A streamed request body, consumed a line (or, for a long line, a piece) at a time."""

    LONG = b"<a line too long to read whole>"

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks.__aiter__()
        self.buffer = bytearray()
        self._scanned = 0  # bytes of buffer known to hold no newline

    async def more(self) -> bool:
        """Read the next piece into the buffer; False at the end of the body."""
        try:
            self.buffer += await self._chunks.__anext__()
        except StopAsyncIteration:
            return False
        return True

    async def line(self, limit: int) -> bytes | None:
        """The next non-blank line; :attr:`LONG` (the line left unread in the
        buffer) when it is longer than ``limit``; None at the end."""
        while True:
            end = self.buffer.find(b"\n", self._scanned)
            if end > limit or (end < 0 and len(self.buffer) > limit):
                self._scanned = 0
                return self.LONG
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                self._scanned = 0
                if line.strip():
                    return line
                continue
            self._scanned = len(self.buffer)
            if not await self.more():
                line, self._scanned = bytes(self.buffer), 0
                self.buffer.clear()
                return line if line.strip() else None

    async def rest_of_line(self, limit: int, what: str) -> bytes:
        """The bytes up to the next newline (consumed with it), at most ``limit``."""
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > limit:
                raise InvalidInputError(f"{what} is longer than {limit} bytes")
            if not await self.more():
                end = len(self.buffer)
                break
        if end > limit:
            raise InvalidInputError(f"{what} is longer than {limit} bytes")
        rest = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return rest


async def ndjson_lines(chunks: AsyncIterator[bytes], max_line: int) -> AsyncIterator[bytes]:
    """Split a streamed body into lines without holding more than one line."""
    body = StreamedBody(chunks)
    while (line := await body.line(max_line)) is not None:
        if line is StreamedBody.LONG:
            raise InvalidInputError(f"a commit line is longer than {max_line} bytes; send large files through LFS")
        yield line
