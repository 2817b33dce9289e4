"""Source images for the benchmark, made from the photo the imgsrv package ships.

Nothing is downloaded: ``imgsrv/samples/sample.jpg`` (a 1800x1200 landscape photo, MIT) is
scaled and re-encoded into the sizes and formats a CDN origin typically sees. A real photo
matters for JPEG timing: decoder and encoder cost follows the image's entropy, which noise
would overstate and flat colour understate. The 4000x3000 version is an upscale, so a light
film grain puts back the fine detail a 12-megapixel camera file has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyvips

SAMPLE = Path(__file__).resolve().parents[2] / "imgsrv" / "samples" / "sample.jpg"


@dataclass(frozen=True)
class SourceImage:
    """One generated source: file name, pixel size, format and a one-line description."""

    name: str
    width: int
    height: int
    format: str
    description: str

    def path(self, folder: Path) -> Path:
        return folder / self.name


PHOTO_1920 = SourceImage("photo-1920.jpg", 1920, 1280, "jpeg", "JPEG q90 4:2:0, EXIF kept")
PHOTO_4000 = SourceImage("photo-4000.jpg", 4000, 3000, "jpeg", "JPEG q90 4:2:0, 4:3 crop + grain")
CUTOUT_PNG = SourceImage("cutout-alpha.png", 1200, 800, "png", "RGBA PNG, soft elliptic cutout")
PHOTO_WEBP = SourceImage("photo-1920.webp", 1920, 1280, "webp", "lossy WebP q85")
TINY_JPEG = SourceImage("tiny-64.jpg", 64, 43, "jpeg", "JPEG q90 4:2:0 (fixed costs only)")

ALL_SOURCES = (PHOTO_1920, PHOTO_4000, CUTOUT_PNG, PHOTO_WEBP, TINY_JPEG)


def _photo(width: int, height: int) -> Any:
    """The sample cropped to ``width:height`` (centred) and scaled to exactly that size."""
    image = pyvips.Image.new_from_file(str(SAMPLE))
    return image.thumbnail_image(width, height=height, size="force", crop="centre")


def _grain(image: Any, sigma: float) -> Any:
    noise = pyvips.Image.gaussnoise(image.width, image.height, sigma=sigma, mean=0)
    return (image + noise).cast("uchar")


def _cutout(image: Any) -> Any:
    """An alpha band that is opaque inside an ellipse and fades out over its edge."""
    xy = pyvips.Image.xyz(image.width, image.height)
    cx, cy = image.width / 2, image.height / 2
    dx = (xy[0] - cx) / (cx * 0.9)
    dy = (xy[1] - cy) / (cy * 0.9)
    radius = (dx * dx + dy * dy) ** 0.5
    # cast to uchar clips to 0..255: 0 outside the ellipse, 255 well inside it.
    alpha = ((1.15 - radius) * (255 / 0.15)).cast("uchar")
    return image.bandjoin(alpha)


def write_sources(folder: Path) -> dict[str, Path]:
    """Create every source in ``folder`` (skipping ones already there); name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for source in ALL_SOURCES:
        target = source.path(folder)
        paths[source.name] = target
        if target.exists() and target.stat().st_size > 0:
            continue
        partial = target.with_suffix(target.suffix + ".part")
        _render(source, partial)
        partial.rename(target)
    return paths


def _render(source: SourceImage, target: Path) -> None:
    image = _photo(source.width, source.height)
    if source is PHOTO_4000:
        image = _grain(image, 4.0)
    if source.format == "jpeg":
        image.jpegsave(str(target), Q=90, subsample_mode="on", keep="exif")
    elif source.format == "png":
        _cutout(image).pngsave(str(target), compression=6)
    else:
        image.webpsave(str(target), Q=85)


def describe_sources(paths: dict[str, Path]) -> str:
    """One line per source for the results: name, size, format, bytes."""
    parts = []
    for source in ALL_SOURCES:
        size = paths[source.name].stat().st_size
        parts.append(
            f"{source.name} {source.width}x{source.height} {source.description}, {size} bytes"
        )
    return f"generated from {SAMPLE.name} (imgsrv/samples): " + "; ".join(parts)
