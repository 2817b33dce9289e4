"""What one refusal (503 + Retry-After) costs the server, measured directly.

Under overload the runner can only estimate a refusal's CPU from what is left once the
successes are paid for, and at 1.6 refusals per success a 1% change in a success's cost moves
that estimate by more than the 0.1 ms it is judged against. Here nothing but refusals is
served: imgsrv (shipped defaults, except a pool of one thread and one waiting place per
worker) has every place taken by misses whose source never arrives from an origin that
accepts connections and never answers, and wrk then asks for new misses with as many
connections as the overload scenarios have users. Each is refused before any download, held
for ``refusal_delay`` and sent, as under real overload. The figure is the server tree's CPU
(workers, master; the bench's Redis is not asked) over the window, less what the same server
uses idle in as long, per refusal. The same is measured of the bare starlette app (see
:mod:`bench.harness.bare_app`) answering every request with a held 503: the least a request
held for a second and refused costs this stack at that rate.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import loadgen, proctree, servers, workload
from bench.harness.context import OVERLOAD_USERS, Bench
from bench.harness.loadgen import Target, WrkJob


class SilentOrigin:
    """A TCP server on 127.0.0.1 that accepts connections and never answers them."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port: int = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            self._held.append(conn)

    def close(self) -> None:
        """Close every held connection (their downloads fail at once) and the listener."""
        self._sock.close()
        for conn in self._held:
            conn.close()


class PlacesNotHeld(RuntimeError):
    """The server did not end up refusing every miss."""


def _ask_together(url: str, paths: list[str], wait: float) -> list[tuple[socket.socket, bool]]:
    """GET each path on a connection of its own, all at once; each connection, and whether
    a 503 came back on it within ``wait`` seconds."""
    host, port = url.removeprefix("http://").split(":")
    conns = []
    for path in paths:
        conn = socket.create_connection((host, int(port)), timeout=wait)
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        conns.append(conn)
    deadline = time.monotonic() + wait
    answers = dict.fromkeys(conns, b"")
    while (pending := [c for c in conns if not answers[c]]) and time.monotonic() < deadline:
        readable, _, _ = select.select(pending, [], [], max(0.0, deadline - time.monotonic()))
        for conn in readable:
            answers[conn] = conn.recv(65536) or b"closed"
    return [(conn, answers[conn].startswith(b"HTTP/1.1 503")) for conn in conns]


def _hold_every_place(url: str, source: str) -> list[socket.socket]:
    """Misses of the silent origin, 8 at a time, until all 8 are refused: every worker's
    places are taken then (each request that was not refused holds one, its connection
    kept open)."""
    holders: list[socket.socket] = []
    for batch in range(8):
        paths = [f"/_/w:300/plain/{source}/held-{batch}-{n}.jpg" for n in range(8)]
        answered = _ask_together(url, paths, wait=1.5)
        for conn, refused in answered:
            if refused:
                conn.close()
            else:
                holders.append(conn)
        if all(refused for _, refused in answered):
            return holders
    raise PlacesNotHeld("the server kept admitting misses of a silent origin")


def _tree_cpu(roots: list[int]) -> float:
    return sum(map(proctree.cpu_seconds, proctree.tree_pids(roots)))


def _refusal_cpu(bench: Bench, server: servers.Server, path: str, seconds: float) -> dict[str, Any]:
    """wrk on new URLs of ``path`` (a ``{n}`` template; every answer a held 503): the
    server's CPU per refusal, less what it uses idle."""
    idle_s = min(5.0, seconds)
    before = _tree_cpu(server.roots)
    time.sleep(idle_s)
    idle_cpu_per_s = (_tree_cpu(server.roots) - before) / idle_s
    label = f"refusals_{server.name}"
    requests = workload.write_lines(bench.work / "paths" / f"wrk-{label}.txt", [path])
    job = WrkJob(requests, OVERLOAD_USERS, seconds, count_statuses=True, ok_statuses=frozenset(),
                 shed_ok=True)  # fmt: skip
    done = loadgen.run_wrk(job, Target(server.url, server.roots), bench.work, label)
    if not done.shed:
        return {"skipped": "no request was refused"}
    net = done.server_cpu_s - idle_cpu_per_s * done.seconds
    return {
        "users": OVERLOAD_USERS,
        "seconds": round(done.seconds, 2),
        "refusals": done.shed,
        "other_answers": done.errors,
        "refusals_per_s": round(done.shed / done.seconds, 1),
        "server_cpu_s": round(done.server_cpu_s, 3),
        "idle_cpu_pct": round(idle_cpu_per_s * 100, 2),
        "cpu_ms_per_refusal": round(net / done.shed * 1000, 4),
        "cpu_ms_per_refusal_with_idle": round(done.server_cpu_s / done.shed * 1000, 4),
    }


def measure(bench: Bench, seconds: float) -> dict[str, Any]:
    """CPU per refusal of imgsrv with every place held (see the module docstring), and of
    the bare starlette app holding and sending the same answer (its ``/held-503/`` route)."""
    if not loadgen.wrk_available():
        return {"skipped": "wrk is not installed"}
    origin = SilentOrigin()
    overrides = {
        **bench.imgsrv_env,
        "IMGSRV_TRANSFORM_THREADS": "1",
        "IMGSRV_MAX_QUEUE": "1",
        "IMGSRV_READ_TIMEOUT": "600",
        "IMGSRV_DOWNLOAD_TIMEOUT": "600",
    }
    server = servers.start_imgsrv(bench.work, bench.workers, bench.redis.url, overrides)
    source = f"http://127.0.0.1:{origin.port}"
    holders: list[socket.socket] = []
    try:
        try:
            holders = _hold_every_place(server.url, source)
        except PlacesNotHeld as exc:
            return {"skipped": str(exc)}
        found = _refusal_cpu(bench, server, f"/_/w:300/plain/{source}/{{n}}.jpg", seconds)
    finally:
        origin.close()
        for conn in holders:
            conn.close()
        server.stop()
    bare = servers.start_bare(bench.work, bench.workers, Path("/dev/null"))
    try:
        found["bare"] = _refusal_cpu(bench, bare, "/held-503/{n}", seconds)
    finally:
        bare.stop()
    return found
