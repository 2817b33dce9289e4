"""The requests each scenario sends, written as each contender spells them.

The same work goes to every contender: ``w:300`` of a source on the origin (300x200 for the
1920x1280 photo), JPEG out unless WebP is asked for.

* ``miss``: ``/v/{unique}/photo-1920.jpg`` on the origin, so every request is a new source
  URL: download + decode + resize + encode, no cache can answer.
* ``hit``: a fixed set of :data:`HIT_URLS` source URLs ``/v/h{k}/photo-1920.jpg`` (all the
  same bytes, so every response is the same size and the ``bare`` app can answer the very
  same bytes), requested by Zipf-distributed rank.

URLs are handed to locust as templates with a ``{n}`` placeholder (unique miss ids) and as
path lists (hit set, in rank order); to wrk as a pre-drawn sequence of paths.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

HIT_URLS = 300
ZIPF_S = 1.0
WIDTH = 300
MISS_SOURCE = "photo-1920.jpg"
MIXED_SOURCES = ("photo-1920.jpg", "photo-4000.jpg", "cutout-alpha.png", "photo-1920.webp")


@dataclass(frozen=True)
class Dialect:
    """How one contender's URLs look; ``origin`` is ``http://127.0.0.1:PORT``."""

    name: str
    origin: str

    def image_path(self, source_path: str, fmt: str | None = None) -> str:
        """The request path that renders ``origin + source_path`` at ``w:300``."""
        if self.name == "thumbor":
            host = self.origin.removeprefix("http://")
            filters = f"filters:format({fmt})/" if fmt else ""
            return f"/unsafe/{WIDTH}x0/{filters}{host}{source_path}"
        if self.name == "probe":
            return "/probe" + source_path
        # imgsrv path form (also what "bare" is sent: it answers any path the same way).
        suffix = f"@{fmt}" if fmt else ""
        return f"/_/w:{WIDTH}/plain/{quote(self.origin + source_path, safe='')}{suffix}"

    def miss_template(self, source: str = MISS_SOURCE, fmt: str | None = None) -> str:
        """A path with ``{n}`` where a unique id goes (braces in the URL are escaped)."""
        marker = "UNIQUEIDMARKER"
        path = self.image_path(f"/v/{marker}/{source}", fmt)
        return path.replace("{", "{{").replace("}", "}}").replace(marker, "{n}")


def hit_paths(dialect: Dialect, count: int = HIT_URLS) -> list[str]:
    """The hit set in rank order (rank 1 first)."""
    return [dialect.image_path(f"/v/h{k}/{MISS_SOURCE}") for k in range(count)]


def zipf_weights(count: int, s: float = ZIPF_S) -> list[float]:
    return [1.0 / (rank**s) for rank in range(1, count + 1)]


def zipf_sequence(paths: Sequence[str], length: int, seed: int = 7) -> list[str]:
    """``length`` paths drawn by Zipf rank, reproducibly."""
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(zipf_weights(len(paths))))
    return rng.choices(list(paths), cum_weights=cumulative, k=length)


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
