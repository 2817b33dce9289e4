"""Merging jobs of one source: jobs claimed close together render from one decode.

A worker slot that claimed a job asks :meth:`MergeWindow.share` for the variant set of its
tenant and source. The first slot opens a window of ``merge_window`` seconds (and wakes the
idle slots, so that they claim at once); slots of the same process that claim a job of the
same tenant and source within it join. When the window closes, one
:class:`~imgsrv.render.VariantSetRender` covering every joined job's variants is made: one
download, one decode at the largest size any of them needs. Each job still renders its own
variants, in its own slot, under its own lease, and may stop between them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from imgsrv import metrics
from imgsrv.render import Renderer, VariantSetRender
from imgsrv.spec import TransformSpec


@dataclass
class _Group:
    specs: list[TransformSpec]
    ready: asyncio.Future[VariantSetRender]
    members: int = 1
    keys: set[str] = field(default_factory=set)


class MergeWindow:
    """The open windows of one worker process, by (tenant, source)."""

    def __init__(self, renderer: Renderer, window: float, wake: Callable[[], None]) -> None:
        self.renderer = renderer
        self.window = window
        self.wake = wake
        self._open: dict[tuple[str, str], _Group] = {}

    async def share(
        self, tenant: str, source: str, specs: Sequence[TransformSpec]
    ) -> VariantSetRender:
        """The variant set this job renders from (shared with jobs that joined the window)."""
        if self.window <= 0:
            return self.renderer.variant_set(source, specs)
        key = (tenant, source)
        group = self._open.get(key)
        if group is not None:
            group.members += 1
            group.specs.extend(spec for spec in specs if spec.canonical() not in group.keys)
            group.keys.update(spec.canonical() for spec in specs)
            metrics.JOBS_MERGED.inc()
            return await asyncio.shield(group.ready)
        ready: asyncio.Future[VariantSetRender] = asyncio.get_running_loop().create_future()
        group = _Group(list(specs), ready, keys={spec.canonical() for spec in specs})
        self._open[key] = group
        self.wake()
        try:
            await asyncio.sleep(self.window)
        finally:
            del self._open[key]
            shared = self.renderer.variant_set(source, group.specs)
            ready.set_result(shared)
        if group.members > 1:
            metrics.JOBS_MERGED.inc()
        return shared
