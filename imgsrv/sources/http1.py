"""A lean HTTP/1.1 client for source downloads: GET over pooled keep-alive connections.

Downloading the source is most of what a miss costs the event loop. Through httpx (httpcore,
h11 and anyio under it) a 650 KB download took about 1.5 ms of loop CPU, spent in per-chunk
Python of four layers and three copies of the body; here the body of a response with a
Content-Length is read by the kernel straight into one buffer of that size (asyncio's
``BufferedProtocol``), about 0.1 ms for the same download.

It does what a source download needs and nothing else: ``GET``, HTTP/1.1 keep-alive, TLS with
certificate verification and SNI, bodies delimited by Content-Length, chunked coding or the
end of the connection, a byte limit checked before a body is accepted and while it arrives,
and a read timeout between arrivals. Connections go only to the addresses the SSRF guard
checked (:func:`~imgsrv.sources.resolver.resolve_checked`), never to a name resolved again.
The caller (:class:`~imgsrv.sources.fetcher.SourceFetcher`) follows redirects, applies the
total deadline and decodes content codings.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol, cast

import httpx

from imgsrv.errors import ImgsrvError, SourceError, SourceTimeout, SourceTooLarge
from imgsrv.sources.addresses import IPNetwork
from imgsrv.sources.codings import netloc
from imgsrv.sources.resolver import resolve_checked

MAX_HEAD_BYTES: Final = 64 * 1024
"""Longest response head (status line and headers) accepted."""
_HEAD_BUFFER: Final = 8 * 1024
_STREAM_BUFFER: Final = 256 * 1024  # reads of chunked and read-until-close bodies
_MAX_CHUNK_LINE: Final = 4096

# Response modes
_IDLE, _HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _DONE = range(6)
# Chunked decoder states
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


@dataclass(frozen=True, slots=True)
class Http1Response:
    """A response: status, headers (lower-case names, repeats joined by ", ") and, for a 2xx
    status, the body; other statuses come back without reading their body."""

    status: int
    headers: Mapping[str, str]
    body: bytes | None


class ClosedBeforeResponse(SourceError):
    """The connection ended before any byte of the response: on a reused connection, the
    server had closed it while idle, and the request may be sent again on a new one."""


def _protocol_error(url: httpx.URL, what: str) -> SourceError:
    return SourceError(f"source host {netloc(url)} sent an invalid HTTP response ({what})")


class Http1Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection; one request at a time, its response read as it arrives."""

    def __init__(self, url: httpx.URL) -> None:
        self._url = url
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._mode = _IDLE
        self._future: asyncio.Future[Http1Response] | None = None
        self._limit = 0
        self._head = bytearray(_HEAD_BUFFER)
        self._head_used = 0
        self._status = 0
        self._headers: dict[str, str] = {}
        self._keep_alive = False
        self._body = bytearray()
        self._body_used = 0
        self._stream: bytearray | None = None
        self._chunk_state = _SIZE
        self._chunk_left = 0
        self._line = bytearray()
        self._received = False
        self._read_timeout = 0.0
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ requests

    def send(
        self, request: bytes, limit: int, read_timeout: float
    ) -> asyncio.Future[Http1Response]:
        """Write ``request`` and return the future of its response."""
        assert self.transport is not None and self._mode == _IDLE
        self._future = self._loop.create_future()
        self._mode = _HEAD
        self._limit = limit
        self._head_used = 0
        self._received = False
        self._read_timeout = read_timeout
        self._last_data = self._loop.time()
        self._timer = self._loop.call_at(self._last_data + read_timeout, self._check_idle)
        self.transport.write(request)
        return self._future

    @property
    def reusable(self) -> bool:
        """Whether the last exchange finished cleanly and the connection may be reused."""
        return self._mode == _IDLE and self._keep_alive and not self.closed

    def close(self) -> None:
        """Close at once, discarding whatever the server still sends."""
        self.closed = True
        self._stop_timer()
        if self._future is not None and not self._future.done():
            self._future.cancel()  # nobody waits for it any more
        if self.transport is not None:
            # asyncio's abort() closes the socket on the loop's next turn; shutting it down now
            # tells the server at once that nothing more is read. (uvloop closes at once and
            # does not offer shutdown on its transport sockets.)
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError, TypeError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.transport.abort()

    # ------------------------------------------------------------------ protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but it is one in use.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._end_of_stream()

    def eof_received(self) -> bool:
        self._end_of_stream()
        return False  # close the transport

    def get_buffer(self, sizehint: int) -> memoryview:
        mode = self._mode
        if mode == _LENGTH:
            return memoryview(self._body)[self._body_used :]
        if mode == _HEAD:
            if self._head_used == len(self._head):
                self._head.extend(bytes(len(self._head)))
            return memoryview(self._head)[self._head_used :]
        if self._stream is None:
            self._stream = bytearray(_STREAM_BUFFER)
        return memoryview(self._stream)

    def buffer_updated(self, nbytes: int) -> None:
        self._last_data = self._loop.time()
        self._received = True
        mode = self._mode
        if mode == _LENGTH:
            self._body_used += nbytes
            if self._body_used == len(self._body):
                self._finish()
        elif mode == _HEAD:
            self._head_used += nbytes
            self._parse_head()
        elif mode in (_CHUNKED, _UNTIL_CLOSE):
            assert self._stream is not None
            self._feed(self._stream, nbytes)
        else:  # bytes nobody asked for: the connection cannot be trusted any more
            self.close()

    # ------------------------------------------------------------------ response head

    def _parse_head(self) -> None:
        end = self._head.find(b"\r\n\r\n", 0, self._head_used)
        if end < 0:
            if self._head_used >= MAX_HEAD_BYTES:
                self._fail(_protocol_error(self._url, "headers too large"))
            return
        try:
            status, headers, keep_alive = _parse_head(bytes(self._head[:end]))
        except ValueError as exc:
            self._fail(_protocol_error(self._url, str(exc)))
            return
        rest = bytes(self._head[end + 4 : self._head_used])
        if 100 <= status < 200:
            # An interim response (100 Continue, 103 Early Hints): the real one follows.
            self._head[: len(rest)] = rest
            self._head_used = len(rest)
            if status == 101:
                self._fail(_protocol_error(self._url, "unexpected protocol switch"))
            elif rest:
                self._parse_head()
            return
        self._status, self._headers, self._keep_alive = status, headers, keep_alive
        if not 200 <= status < 300:
            # The caller wants only the status and headers (errors, redirects); the body is
            # never read, so the connection cannot be reused.
            self._keep_alive = False
            self._resolve(Http1Response(status, headers, None))
            return
        try:
            self._start_body(headers)
        except ImgsrvError as exc:  # an invalid framing, or a body declared too large
            self._fail(exc)
            return
        if rest and self._mode != _DONE:
            self._feed(rest, len(rest))
        elif self._mode == _LENGTH and self._body_used == len(self._body):
            self._finish()

    def _start_body(self, headers: Mapping[str, str]) -> None:
        coding = headers.get("transfer-encoding")
        if self._status in (204, 205):
            self._body, self._body_used, self._mode = bytearray(), 0, _LENGTH
        elif coding is not None:
            if [c.strip().lower() for c in coding.split(",")] != ["chunked"]:
                raise _protocol_error(self._url, f"transfer coding {coding!r}")
            self._body, self._body_used, self._mode = bytearray(), 0, _CHUNKED
            self._chunk_state, self._line = _SIZE, bytearray()
            # A Content-Length beside chunked coding may have been added by a smuggler.
            self._keep_alive = self._keep_alive and "content-length" not in headers
        elif "content-length" in headers:
            length = _content_length(headers["content-length"])
            if length is None:
                raise _protocol_error(self._url, "bad Content-Length")
            if length > self._limit:
                raise SourceTooLarge(
                    f"source is {length} bytes, more than the limit of {self._limit} bytes"
                )
            self._body, self._body_used, self._mode = bytearray(length), 0, _LENGTH
        else:
            self._body, self._body_used, self._mode = bytearray(), 0, _UNTIL_CLOSE
            self._keep_alive = False

    # ------------------------------------------------------------------ bodies

    def _feed(self, buffer: bytes | bytearray, end: int) -> None:
        """``buffer[:end]``: bytes of a body that did not arrive straight into its buffer."""
        data = memoryview(buffer)[:end]
        if self._mode == _LENGTH:  # the part of a sized body that arrived with the head
            room = len(self._body) - self._body_used
            taken = data[:room]
            self._body[self._body_used : self._body_used + len(taken)] = taken
            self._body_used += len(taken)
            if len(data) > room:
                self._keep_alive = False  # more than the body: the framing is off
            if self._body_used == len(self._body):
                self._finish()
        elif self._mode == _UNTIL_CLOSE:
            self._append(data)
        elif self._mode == _CHUNKED:
            self._feed_chunked(buffer, end)

    def _append(self, data: memoryview) -> bool:
        if len(self._body) + len(data) > self._limit:
            self._fail(SourceTooLarge(f"source is more than the limit of {self._limit} bytes"))
            return False
        self._body += data
        return True

    def _feed_chunked(self, buffer: bytes | bytearray, end: int) -> None:
        data = memoryview(buffer)[:end]
        position = 0
        while position < end and self._mode == _CHUNKED:
            state = self._chunk_state
            if state == _DATA:
                taken = data[position : position + self._chunk_left]
                if not self._append(taken):
                    return
                position += len(taken)
                self._chunk_left -= len(taken)
                if self._chunk_left == 0:
                    self._chunk_state = _DATA_END
                continue
            newline = buffer.find(b"\n", position, end)
            if newline < 0:
                self._line += data[position:]
                if len(self._line) > _MAX_CHUNK_LINE:
                    self._fail(_protocol_error(self._url, "chunk line too long"))
                return
            self._line += data[position : newline + 1]
            position = newline + 1
            line, self._line = bytes(self._line).rstrip(b"\r\n"), bytearray()
            self._chunk_line(state, line)

    def _chunk_line(self, state: int, line: bytes) -> None:
        if state == _DATA_END:
            if line:
                self._fail(_protocol_error(self._url, "chunk not followed by CRLF"))
            else:
                self._chunk_state = _SIZE
        elif state == _SIZE:
            size = line.split(b";", 1)[0].strip()
            if not size or len(size) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in size):
                self._fail(_protocol_error(self._url, "bad chunk size"))
                return
            self._chunk_left = int(size, 16)
            self._chunk_state = _DATA if self._chunk_left else _TRAILER
        elif not line:  # the empty line after the trailers
            self._finish()

    def _end_of_stream(self) -> None:
        if self._mode == _UNTIL_CLOSE:
            self._finish()
        elif self._mode == _HEAD and not self._received:
            self._fail(
                ClosedBeforeResponse(f"source host {netloc(self._url)} closed the connection")
            )
        elif self._mode in (_HEAD, _LENGTH, _CHUNKED):
            self._fail(
                _protocol_error(self._url, "connection closed before the end of the response")
            )

    # ------------------------------------------------------------------ outcome

    def _finish(self) -> None:
        body = bytes(self._body)
        self._body = bytearray()
        self._resolve(Http1Response(self._status, self._headers, body))

    def _resolve(self, response: Http1Response) -> None:
        self._stop_timer()
        self._mode = _IDLE if 200 <= response.status < 300 else _DONE
        self.idle_since = self._loop.time()
        if self._future is not None and not self._future.done():
            self._future.set_result(response)

    def _fail(self, error: Exception) -> None:
        self._mode = _DONE
        if self._future is not None and not self._future.done():
            self._future.set_exception(error)
        self.close()

    def _check_idle(self) -> None:
        self._timer = None
        if self._mode in (_IDLE, _DONE):
            return
        due = self._last_data + self._read_timeout
        if self._loop.time() >= due:
            self._fail(SourceTimeout(f"source host {netloc(self._url)} did not answer in time"))
        else:
            self._timer = self._loop.call_at(due, self._check_idle)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """Status, headers and keep-alive of a response head; ValueError when it is malformed."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise ValueError("bad status line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or line[0] in " \t":
            raise ValueError("bad header line")
        name = name.lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = version == "HTTP/1.1" and "close" not in tokens
    return int(code), headers, keep_alive


def _content_length(value: str) -> int | None:
    """The length a Content-Length header gives (repeats must agree), or None if invalid."""
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        return None
    (length,) = values
    return int(length) if length.isdigit() and len(length) < 19 else None


# --------------------------------------------------------------------------- connecting


class Connector(Protocol):
    """Opens a connection to a checked IP address (tests put a spy here)."""

    def __call__(
        self,
        factory: Callable[[], Http1Connection],
        address: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> Awaitable[Http1Connection]: ...


async def open_tcp(
    factory: Callable[[], Http1Connection],
    address: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> Http1Connection:
    """A TCP (and TLS) connection to ``address`` on the running loop."""
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(
        factory, address, port, ssl=ssl_context, server_hostname=server_hostname
    )
    return connection


class Http1Pool:
    """Keep-alive connections to source hosts, one request at a time on each."""

    def __init__(
        self,
        allowed_networks: Iterable[IPNetwork] = (),
        *,
        connector: Connector = open_tcp,
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_origin: int = 8,
        max_idle: int = 64,
        idle_expiry: float = 30.0,
    ) -> None:
        self._allowed = tuple(allowed_networks)
        self._connector = connector
        self._ssl = ssl_context or httpx.create_ssl_context(trust_env=False)
        self._max_idle_per_origin = max_idle_per_origin
        self._max_idle = max_idle
        self._idle_expiry = idle_expiry
        self._idle: dict[tuple[str, bytes, int], deque[Http1Connection]] = {}
        self._idle_count = 0

    async def get(
        self,
        url: httpx.URL,
        headers: Iterable[tuple[str, str]],
        *,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
    ) -> Http1Response:
        """``GET url``: the response, with the body when its status is 2xx.

        Raises :class:`SourceTooLarge` for a body over ``limit`` bytes, :class:`SourceTimeout`
        when connecting takes longer than ``connect_timeout`` or the server is silent for
        ``read_timeout``, :class:`ForbiddenSource` from the SSRF guard, :class:`SourceError`
        for everything else.
        """
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.raw_host, port)
        request = _request(url, headers)
        while True:
            connection, reused = self._checkout(key), True
            if connection is None:
                connection, reused = await self._connect(url, port, connect_timeout), False
            try:
                response = await connection.send(request, limit, read_timeout)
            except ClosedBeforeResponse:
                connection.close()
                if reused:
                    continue  # closed by the server while idle: a GET may be sent again
                raise
            except BaseException:
                connection.close()  # cancelled or failed mid-response: never reuse it
                raise
            if connection.reusable:
                self._checkin(key, connection)
            else:
                connection.close()
            return response

    def _checkout(self, key: tuple[str, bytes, int]) -> Http1Connection | None:
        idle = self._idle.get(key)
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()  # the most recently used: least likely to have expired
            self._idle_count -= 1
            if not connection.closed and now - connection.idle_since < self._idle_expiry:
                return connection
            connection.close()
        return None

    def _checkin(self, key: tuple[str, bytes, int], connection: Http1Connection) -> None:
        idle = self._idle.setdefault(key, deque())
        if len(idle) >= self._max_idle_per_origin or self._idle_count >= self._max_idle:
            connection.close()
            return
        idle.append(connection)
        self._idle_count += 1

    async def _connect(self, url: httpx.URL, port: int, timeout: float) -> Http1Connection:
        host = url.raw_host.decode("ascii")
        https = url.scheme == "https"
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolve_checked(host, port, self._allowed)
                last: OSError | None = None
                for address in addresses:
                    try:
                        return await self._connector(
                            lambda: Http1Connection(url),
                            str(address),
                            port,
                            self._ssl if https else None,
                            host if https else None,
                        )
                    except ssl.SSLError:
                        raise
                    except OSError as exc:
                        last = exc
                raise last or OSError("no address to connect to")
        except TimeoutError:
            raise SourceTimeout(f"source host {netloc(url)} did not answer in time") from None
        except ssl.SSLCertVerificationError:
            raise SourceError(
                f"TLS certificate of source host {netloc(url)} could not be verified"
            ) from None
        except ssl.SSLError:
            raise SourceError(f"TLS handshake with source host {netloc(url)} failed") from None
        except OSError:
            raise SourceError(f"could not connect to source host {netloc(url)}") from None

    async def aclose(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        self._idle_count = 0


def _request(url: httpx.URL, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"GET {url.raw_path.decode('ascii')} HTTP/1.1", f"Host: {url.netloc.decode('ascii')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
