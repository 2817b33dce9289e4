"""What the job API needs of the queue in one process: the queue, the registry, the schedules."""

from __future__ import annotations

from dataclasses import dataclass

from imgsrv.jobs.queue import JobQueue
from imgsrv.jobs.registry import WorkerRegistry
from imgsrv.jobs.schedules import ScheduleStore


@dataclass(frozen=True, slots=True)
class JobServices:
    queue: JobQueue
    registry: WorkerRegistry
    schedules: ScheduleStore

    @classmethod
    def on(cls, queue: JobQueue, max_schedules: int) -> JobServices:
        return cls(queue, WorkerRegistry(queue), ScheduleStore(queue, max_schedules))
