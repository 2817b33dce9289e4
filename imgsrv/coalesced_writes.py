"""One socket write per response: the HTTP protocol's writes gathered until the loop turns.

uvicorn writes a response's status line and headers in one ``transport.write`` and its body
in another. With ``TCP_NODELAY`` (which uvicorn sets) each write is a ``send`` system call
and a TCP segment of its own, so every small response costs two sends, two segments for the
client to read, and on loopback two trips through the receiving side of the TCP stack. For a
memory-cache hit those two writes were the largest single cost of the request.

:class:`CoalescingTransport` sits between the protocol and the real transport: writes are
kept until the end of the current event-loop step (one ``call_soon``) and then handed to the
transport together, which sends them in one ``writev``. Nothing waits longer than the step in
which it was written, so no latency is added. Closing or aborting the connection first
writes (or drops) what is kept, in order.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional in uvicorn; imgsrv installs it
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class CoalescingTransport:
    """A transport whose writes within one event-loop step reach the socket together."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._kept: list[bytes | bytearray | memoryview] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._kept:
            self._loop.call_soon(self.flush)
        self._kept.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Hand everything kept to the transport now (a no-op when nothing is kept)."""
        kept, self._kept = self._kept, []
        if not kept or self._transport.is_closing():
            return
        if len(kept) == 1:
            self._transport.write(kept[0])
        else:
            self._transport.writelines(kept)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(data) for data in self._kept)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._kept = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        # Everything else (is_closing, get_extra_info, pause_reading, ...) is the transport's.
        return getattr(self._transport, name)


def _coalescing(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    class Protocol(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            coalescing = CoalescingTransport(transport, self.loop)  # type: ignore[arg-type]
            super().connection_made(coalescing)

    Protocol.__name__ = Protocol.__qualname__ = "Coalescing" + base.__name__
    return Protocol


@functools.cache
def coalescing_http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol (httptools' parser when installed, as uvicorn's ``auto``
    picks it), writing each event-loop step's output in one system call."""
    return _coalescing(HttpToolsProtocol if HttpToolsProtocol is not None else H11Protocol)
