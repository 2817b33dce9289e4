"""The requests each scenario sends, written as each contender spells them.

The same work goes to every contender. A miss workload is one or more transforms (source
file, width, format) of sources on the origin:

* ``miss``: ``/v/{unique}/photo-1920.jpg`` -> ``w:300`` JPEG (300x200), so every request is
  a new source URL: download + decode + resize + encode, no cache can answer;
* ``miss_webp``: the same, WebP out; ``miss_4000_webp``: the 4000x3000 JPEG -> ``w:800``
  WebP; ``miss_alpha``: the RGBA PNG -> ``w:400`` WebP (alpha kept);
* ``cdn_mix``: what a CDN sends an origin: new URLs over the four sources, widths of a
  responsive set, ``f:auto`` with Chrome's ``Accept`` (AVIF where imgsrv picks it), 5% HEAD
  of a new URL and 5% revalidations (``If-None-Match`` with the ETag of an earlier answer);
* ``miss_tiny``: a 64x43 JPEG -> ``w:32`` JPEG: almost no pixels, so a miss costs the fixed
  costs of a request and of a transform (the serving overhead, seen without the noise of a
  real image).

``hit``: a fixed set of :data:`HIT_URLS` source URLs ``/v/h{k}/photo-1920.jpg`` (all the
same bytes, so every response is the same size and the ``bare`` app can answer the very
same bytes), requested by Zipf-distributed rank.

URLs are handed to locust as templates with a ``{n}`` placeholder (unique miss ids) and as
path lists (hit set, in rank order); to wrk as a request file (``wrk_paths.lua``): a
pre-drawn sequence of paths or templates, with method and headers where needed.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

HIT_URLS = 300
ZIPF_S = 1.0
WIDTH = 300
MISS_SOURCE = "photo-1920.jpg"
TINY_SOURCE = "tiny-64.jpg"
MIXED_SOURCES = ("photo-1920.jpg", "photo-4000.jpg", "cutout-alpha.png", "photo-1920.webp")
CDN_WIDTHS = (320, 640, 960, 1280)
CHROME_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
_MARKER = "UNIQUEIDMARKER"


@dataclass(frozen=True)
class Transform:
    """One transform: ``w:{width}`` of ``source``; ``format`` "" keeps the source's format,
    "auto" negotiates it from the request's Accept header."""

    source: str
    width: int = WIDTH
    format: str = ""


@dataclass(frozen=True)
class MissWorkload:
    """What a miss scenario asks for: its transforms (drawn uniformly) and how it asks."""

    name: str
    transforms: tuple[Transform, ...]
    accept: str = ""  # sent with every request when set
    head_ratio: float = 0.0  # share of HEAD requests of new URLs
    revalidate_ratio: float = 0.0  # share of repeats with If-None-Match (304 expected)
    # Rounds this many times the mode's length: a mix whose renders cost 0.02-0.4 s each
    # needs a few hundred renders per round before its ratios say anything.
    round_factor: float = 1.0

    @property
    def conditional(self) -> bool:
        """Whether some requests are revalidations, so that 304 counts as success."""
        return self.revalidate_ratio > 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Accept": self.accept} if self.accept else {}


MISS_WORKLOADS: dict[str, MissWorkload] = {
    "miss": MissWorkload("miss", (Transform(MISS_SOURCE),)),
    "miss_webp": MissWorkload("miss_webp", (Transform(MISS_SOURCE, WIDTH, "webp"),)),
    "miss_4000_webp": MissWorkload("miss_4000_webp", (Transform("photo-4000.jpg", 800, "webp"),)),
    "miss_alpha": MissWorkload("miss_alpha", (Transform("cutout-alpha.png", 400, "webp"),)),
    "cdn_mix": MissWorkload(
        "cdn_mix",
        tuple(Transform(s, w, "auto") for s in MIXED_SOURCES for w in CDN_WIDTHS),
        accept=CHROME_ACCEPT,
        head_ratio=0.05,
        revalidate_ratio=0.05,
        round_factor=2.0,
    ),
    # Not a target workload: a 64x43 source, so that a miss costs almost nothing but the
    # fixed costs of one request and one transform (serving overhead measured directly).
    "miss_tiny": MissWorkload("miss_tiny", (Transform(TINY_SOURCE, 32),)),
}


@dataclass(frozen=True)
class Dialect:
    """How one contender's URLs look; ``origin`` is ``http://127.0.0.1:PORT``.

    ``auto_filters``: thumbor filters added to ``f:auto`` requests, so that its automatic
    format gets imgsrv's settings for that format (thumbor's AVIF uses its JPEG quality).
    thumbor's URLs use ``fit-in``, which never enlarges, like imgsrv's default (``el:0``):
    ``w:1280`` of the 1200 px cutout is 1200 px wide from both.
    """

    name: str
    origin: str
    auto_filters: str = ""

    def image_path(self, source_path: str, fmt: str = "", width: int = WIDTH) -> str:
        """The request path that renders ``origin + source_path`` at ``w:{width}``."""
        if self.name == "thumbor":
            host = self.origin.removeprefix("http://")
            filters = [f"format({fmt})"] if fmt and fmt != "auto" else []
            if fmt == "auto" and self.auto_filters:
                filters.append(self.auto_filters)
            chain = f"filters:{':'.join(filters)}/" if filters else ""
            return f"/unsafe/fit-in/{width}x0/{chain}{host}{source_path}"
        if self.name == "probe":
            return "/probe" + source_path
        # imgsrv path form (also what "bare" is sent: it answers any path the same way).
        option = "/f:auto" if fmt == "auto" else ""
        suffix = f"@{fmt}" if fmt and fmt != "auto" else ""
        quoted = quote(self.origin + source_path, safe="")
        return f"/_/w:{width}{option}/plain/{quoted}{suffix}"

    def miss_path(self, transform: Transform, unique: str = "{n}") -> str:
        """The path of ``transform`` for the source URL ``/v/{unique}/{source}``."""
        path = self.image_path(f"/v/{_MARKER}/{transform.source}", transform.format,
                               transform.width)  # fmt: skip
        return path.replace(_MARKER, unique)

    def miss_template(self, source: str = MISS_SOURCE, fmt: str = "", width: int = WIDTH) -> str:
        """A path with ``{n}`` where a unique id goes (braces in the URL are escaped)."""
        path = self.miss_path(Transform(source, width, fmt), _MARKER)
        return path.replace("{", "{{").replace("}", "}}").replace(_MARKER, "{n}")

    def templates(self, workload: MissWorkload) -> list[str]:
        """The locust templates of a workload (one per transform)."""
        return [self.miss_template(t.source, t.format, t.width) for t in workload.transforms]


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


def wrk_line(path: str, headers: Mapping[str, str], method: str = "GET") -> str:
    """One request of a wrk request file: method, path and headers, tab-separated."""
    return "\t".join([method, path, *(f"{k}: {v}" for k, v in headers.items())])


def wrk_requests(
    dialect: Dialect,
    workload: MissWorkload,
    revalidations: Mapping[str, str],
    length: int = 2000,
    seed: int = 11,
) -> list[str]:
    """A reproducible sequence of wrk requests with the workload's mix.

    New URLs (``{n}`` templates, one transform drawn uniformly per request) and, at the
    workload's revalidation share, ``If-None-Match`` repeats of ``revalidations`` (path ->
    ETag, URLs the runner fetched before the round). wrk cannot send HEAD (its parser would
    wait for the body a HEAD answer's Content-Length announces), so the HEAD share is sent
    as GETs of new URLs: the same render either way.
    """
    rng = random.Random(seed)
    headers = workload.headers
    repeats = sorted(revalidations.items())
    lines = []
    for _ in range(length):
        if repeats and rng.random() < workload.revalidate_ratio:
            path, etag = rng.choice(repeats)
            lines.append(wrk_line(path, {**headers, "If-None-Match": etag}))
        else:
            transform = rng.choice(workload.transforms)
            lines.append(wrk_line(dialect.miss_path(transform), headers))
    return lines


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
