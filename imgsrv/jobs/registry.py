"""The worker registry: every process that serves or runs jobs says who it is, every few seconds.

Each serving process and each ``imgsrv worker`` writes one record (``P:worker:<id>``, see
:mod:`imgsrv.jobs.scripts`) with its host, pid, version, kind, job slots and the jobs it runs
now, and renews it with a heartbeat every ``worker_heartbeat`` seconds. A worker that missed
three heartbeats is shown offline (its leases run out and its jobs are reaped as usual); one
that stopped cleanly says so at once. Records of silent workers go after :data:`KEEP_MS`.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any, cast

import orjson

from imgsrv import __version__
from imgsrv.jobs import scripts
from imgsrv.jobs.model import JsonObject, iso_time
from imgsrv.jobs.queue import JobQueue

MISSED_BEATS = 3
KEEP_MS = 3_600_000  # records of workers that went silent are kept for an hour


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a process says about itself in the registry."""

    id: str
    kind: str  # "server" (a serving process) or "worker" (imgsrv worker)
    concurrency: int
    interval: float
    host: str = ""
    pid: int = 0
    version: str = __version__

    @classmethod
    def of_this_process(cls, kind: str, concurrency: int, interval: float) -> WorkerInfo:
        """This process, with an id unique even when pids repeat (containers all have pid 1)."""
        host, pid = socket.gethostname(), os.getpid()
        return cls(f"{host}:{pid}:{secrets.token_hex(3)}", kind, concurrency, interval, host, pid)

    def fields(self, started_at: int) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "kind": self.kind,
            "concurrency": self.concurrency,
            "interval_ms": int(self.interval * 1000),
            "started_at": started_at,
        }


class WorkerRegistry:
    """Heartbeats of this process and the list of every registered one."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self._beat = queue.script(scripts.WORKER_BEAT)
        self._stop = queue.script(scripts.WORKER_STOP)
        self._list = queue.script(scripts.WORKER_LIST)
        self._started_at = 0

    @property
    def key(self) -> str:
        return f"{self.queue.prefix}:workers"

    async def beat(self, info: WorkerInfo, current: list[str]) -> None:
        """Renew this process's record with the jobs it runs now."""
        fields = info.fields(self._started_at)
        now = await self.queue.run(
            self._beat,
            self.key,
            info.id,
            orjson.dumps(fields).decode(),
            orjson.dumps(current).decode(),
            KEEP_MS,
        )
        if not self._started_at:
            self._started_at = int(now)

    async def stop(self, info: WorkerInfo) -> None:
        """Mark this process stopped (offline at once)."""
        await self.queue.run(self._stop, self.key, info.id)

    async def workers(self) -> list[JsonObject]:
        """Every registered worker, online ones first, each with its state and heartbeat age."""
        now, *records = cast(list[Any], await self.queue.run(self._list, self.key))
        # Each record is HGETALL's flat list of names and values; an expired one is empty.
        found = [describe(_pairs(flat), int(now)) for flat in records if flat]
        found.sort(key=lambda worker: (worker["state"] != "online", worker["heartbeat_age_s"]))
        return found

    async def get(self, worker_id: str) -> JsonObject | None:
        for worker in await self.workers():
            if worker["id"] == worker_id:
                return worker
        return None

    async def online(self) -> int:
        """How many workers are online now."""
        return sum(worker["state"] == "online" for worker in await self.workers())


def describe(raw: dict[Any, Any], now: int) -> JsonObject:
    """The public shape of a registry record at Redis time ``now`` (ms)."""
    text = {_text(k): _text(v) for k, v in raw.items()}
    beat = int(text.get("beat", "0"))
    interval_ms = int(text.get("interval_ms", "5000"))
    if text.get("stopped_at"):
        state = "stopped"
    elif now - beat <= MISSED_BEATS * interval_ms:
        state = "online"
    else:
        state = "offline"
    started = int(text.get("started_at") or beat)
    return {
        "id": text["id"],
        "host": text.get("host", ""),
        "pid": int(text.get("pid", "0")),
        "version": text.get("version", ""),
        "kind": text.get("kind", ""),
        "concurrency": int(text.get("concurrency", "0")),
        "state": state,
        "online": state == "online",
        "current_jobs": orjson.loads(text.get("current") or "[]"),
        "started_at": iso_time(started),
        "last_heartbeat": iso_time(beat),
        "heartbeat_age_s": round(max(0, now - beat) / 1000, 3),
        "heartbeat_interval_s": interval_ms / 1000,
    }


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


__all__ = ["MISSED_BEATS", "WorkerInfo", "WorkerRegistry", "describe"]
