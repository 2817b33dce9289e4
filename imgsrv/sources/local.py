"""``local://`` sources: files below the configured local root, never outside it."""

from __future__ import annotations

import asyncio
import mimetypes
from pathlib import Path
from urllib.parse import quote, unquote

from imgsrv.config import Settings
from imgsrv.errors import (
    ForbiddenSource,
    InvalidSource,
    SourceError,
    SourceNotFound,
    SourceTooLarge,
)
from imgsrv.sources.source_bytes import SourceBytes

LOCAL_PREFIX = "local://"


def local_segments(path: str) -> list[str]:
    """Decoded, normalised segments of a local path; refuses anything that could leave the root."""
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise InvalidSource("local source path is not valid UTF-8") from None
    if "\x00" in decoded or "\\" in decoded:
        raise InvalidSource("local source path contains a NUL or backslash")
    if decoded.startswith("/"):
        raise ForbiddenSource("local source paths must be relative to the local root")
    segments = [s for s in decoded.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise ForbiddenSource("local source path climbs out of the local root")
    if not segments:
        raise InvalidSource("empty local source path")
    return segments


def canonical_local(path: str) -> str:
    # Decoded once here and quoted again, so resolving a resolved source changes nothing.
    return LOCAL_PREFIX + quote("/".join(local_segments(path)), safe="/")


async def read_local(source: str, settings: Settings) -> SourceBytes:
    """Read a ``local://`` source (as :func:`~imgsrv.sources.resolve_source` returns it)."""
    segments = local_segments(source[len(LOCAL_PREFIX) :])
    data = await asyncio.to_thread(_read_local_file, settings.local_root_path, segments, settings)
    content_type, _ = mimetypes.guess_type(segments[-1])
    return SourceBytes(data, source, content_type)


def _read_local_file(root: Path, segments: list[str], settings: Settings) -> bytes:
    """Read a file below ``root``; runs in a worker thread."""
    limit = settings.max_source_bytes
    shown = "/".join(segments)
    try:
        real_root = root.resolve(strict=True)
        # resolve() follows symlinks, so a link inside the root that points outside is caught.
        target = real_root.joinpath(*segments).resolve()
        if not target.is_relative_to(real_root):
            raise ForbiddenSource(f"local source {shown!r} points outside the local root")
        if not target.is_file():
            raise SourceNotFound(f"local source {shown!r} not found")
        with target.open("rb") as f:
            # Read one byte past the limit instead of trusting a stat() that may be stale.
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise SourceNotFound(f"local source {shown!r} not found") from None
    except PermissionError:
        raise ForbiddenSource(f"local source {shown!r} is not readable") from None
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop, on Python < 3.13
        raise SourceError(f"could not read local source {shown!r}") from None
    if len(data) > limit:
        raise SourceTooLarge(f"local source is more than the limit of {limit} bytes")
    return data
