"""Responses leave in one write system call, intact and in order (imgsrv.coalesced_writes)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from imgsrv.coalesced_writes import CoalescingTransport, _coalescing, coalescing_http_protocol
from imgsrv.serving import ImgsrvUvicornWorker
from tests.servers import ImgsrvProcess, free_port

HIT = "/_/w:120/plain/local://sample.jpg"


def _process_tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        for task in os.listdir(f"/proc/{pid}/task"):
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            todo.extend(int(child) for child in children)
    return pids


def _syscw(io: str) -> int:
    """The write/writev system call count in the text of a ``/proc/.../io`` file."""
    return next(int(line.split()[1]) for line in io.splitlines() if line.startswith("syscw:"))


def _serving_process(root: int, sock: socket.socket) -> int:
    """The process of the tree that holds the server's end of ``sock``.

    Only its writes are counted: another worker may still be starting up (and writing its
    startup lines) while the test runs.
    """
    client_port = sock.getsockname()[1]
    server_port = sock.getpeername()[1]
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(f.split(":")[1], 16) for f in fields[1:3])
        if (local, remote) == (server_port, client_port):
            inodes.add(f"socket:[{fields[9]}]")
    for pid in _process_tree(root):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue
    raise AssertionError("no process of the server holds the connection")


def _write_calls(pid: int) -> int:
    """write/writev system calls made so far by the process (all its threads)."""
    return _syscw(Path(f"/proc/{pid}/io").read_text())


def _request(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


class Reader:
    """HTTP/1.1 responses read off one socket, by Content-Length."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), "connection closed before the headers"
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines)
        length = 0 if head_only else int(headers["content-length"])
        while len(self.buffer) < length:
            assert self._fill(), "connection closed inside the body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def closed(self) -> bool:
        return not self.buffer and not self._fill()


@pytest.fixture(scope="module", params=["1", "2"], ids=["uvicorn", "gunicorn"])
def server(request: pytest.FixtureRequest) -> Iterator[ImgsrvProcess]:
    env = {"IMGSRV_WORKERS": request.param, "IMGSRV_EMBEDDED_REDIS": "0"}
    with ImgsrvProcess(env) as process:
        yield process


@pytest.fixture
def connection(server: ImgsrvProcess) -> Iterator[tuple[socket.socket, Reader]]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        yield sock, Reader(sock)


def test_the_servers_use_the_coalescing_protocol() -> None:
    protocol = ImgsrvUvicornWorker.CONFIG_KWARGS["http"]
    assert protocol is coalescing_http_protocol()
    assert protocol.__name__ == "CoalescingHttpToolsProtocol"


def test_a_keep_alive_response_is_one_write_system_call(
    server: ImgsrvProcess, connection: tuple[socket.socket, Reader]
) -> None:
    sock, reader = connection
    sock.sendall(_request(HIT))
    status, _, first = reader.response()  # rendered now; memory hits from here on
    assert status == 200
    assert server.process is not None
    count = 40
    worker = _serving_process(server.process.pid, sock)
    before = _write_calls(worker)
    for _ in range(count):
        sock.sendall(_request(HIT))
        status, headers, body = reader.response()
        assert (status, headers["x-cache"], body) == (200, "l1", first)
    writes = _write_calls(worker) - before
    # uvicorn's own protocol writes the head and the body apart: 2 per response.
    assert count <= writes <= count + 5


def test_pipelined_requests_are_answered_whole_and_in_order(
    connection: tuple[socket.socket, Reader],
) -> None:
    sock, reader = connection
    sock.sendall(_request(HIT))
    _, _, image = reader.response()
    sock.sendall(_request(HIT) + _request("/healthz") + _request(HIT, "HEAD") + _request(HIT))
    status, _, body = reader.response()
    assert (status, body) == (200, image)
    status, _, body = reader.response()
    assert status == 200 and body
    status, headers, _ = reader.response(head_only=True)
    assert (status, int(headers["content-length"])) == (200, len(image))
    status, _, body = reader.response()
    assert (status, body) == (200, image)


def test_connection_close_sends_the_whole_response_before_closing(
    connection: tuple[socket.socket, Reader],
) -> None:
    sock, reader = connection
    sock.sendall(_request(HIT, extra="Connection: close\r\n"))
    status, headers, body = reader.response()
    assert status == 200 and len(body) == int(headers["content-length"]) > 0
    assert headers["connection"] == "close"
    assert reader.closed()


def test_a_large_body_arrives_intact(connection: tuple[socket.socket, Reader]) -> None:
    sock, reader = connection
    sock.settimeout(30)
    sock.sendall(_request("/_/w:2000/f:png/plain/local://sample.jpg"))
    status, headers, body = reader.response()
    assert status == 200 and headers["content-type"] == "image/png"
    assert len(body) > 1_000_000 and body.startswith(b"\x89PNG")


# --------------------------------------------------------------------------- the transport


async def _pair() -> tuple[CoalescingTransport, asyncio.StreamReader, socket.socket]:
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    theirs.setblocking(False)
    reader = asyncio.StreamReader()
    await loop.connect_accepted_socket(lambda: asyncio.StreamReaderProtocol(reader), theirs)
    return CoalescingTransport(transport, loop), reader, theirs  # type: ignore[arg-type]


async def _received(reader: asyncio.StreamReader, size: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(size), 5)


def test_writes_wait_for_the_end_of_the_loop_step_then_go_in_order() -> None:
    async def scenario() -> None:
        transport, reader, _ = await _pair()
        transport.write(b"head ")
        transport.write(b"")
        transport.writelines([b"body", b"!"])
        assert transport.get_write_buffer_size() == 10  # kept, not yet with the transport
        assert await _received(reader, 10) == b"head body!"
        assert transport.get_write_buffer_size() == 0
        transport.write(b"next")
        transport.close()  # closing writes what is kept first
        assert await _received(reader, 4) == b"next"
        assert await reader.read() == b""

    asyncio.run(scenario())


def test_abort_drops_what_is_kept() -> None:
    async def scenario() -> None:
        transport, reader, _ = await _pair()
        transport.write(b"never sent")
        transport.abort()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await asyncio.sleep(0)  # the scheduled flush finds nothing
        assert transport.is_closing()

    asyncio.run(scenario())


def test_the_h11_protocol_coalesces_too() -> None:
    """Without httptools the same transport wraps uvicorn's h11 protocol."""

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        assert scope["type"] == "http"
        headers = [(b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"hello"})  # type: ignore[operator]

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=_coalescing(H11Protocol), lifespan="off",
        log_level="warning",
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        io = Path(f"/proc/self/task/{thread.native_id}/io")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            reader = Reader(sock)
            before = _syscw(io.read_text())
            for _ in range(20):
                sock.sendall(_request("/"))
                assert reader.response()[::2] == (200, b"hello")
            assert 20 <= _syscw(io.read_text()) - before <= 22
    finally:
        server.should_exit = True
        thread.join(10)
