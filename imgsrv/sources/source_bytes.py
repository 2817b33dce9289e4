"""What fetching a source gives: its bytes and where they came from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SourceBytes:
    """A downloaded or read source image."""

    data: bytes
    url: str  # final URL after redirects (or the local:// url)
    content_type: str | None
