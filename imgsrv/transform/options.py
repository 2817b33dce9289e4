"""Per-process transform limits and encoder defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TransformOptions:
    """Limits and defaults that apply to every transform in a process.

    Built once from the server settings by the caller; the transform never reads configuration
    itself.
    """

    max_source_megapixels: float = 50.0
    """Pixel budget checked from the header before decoding: width * height, times the frame
    count when the output keeps an animation. Animated outputs are held to it too."""
    max_animation_frames: int = 100
    """Most frames an animated output may have; only counted when the animation is kept."""
    max_output_dimension: int = 8192
    """Longest side of an output frame, padding included."""
    allow_svg: bool = True
    jpeg_quality: int = 80
    webp_quality: int = 80
    webp_effort: int = 4
    """libwebp's method, 0 (fastest) .. 6 (smallest); 4 is libwebp's own default."""
    avif_quality: int = 60
    avif_effort: int = 2
    png_compression: int = 6
    auto_formats: tuple[str, ...] = ("avif", "webp")
    """The accepted formats ``f:auto`` may choose ({"avif", "webp"} at most); the others of
    ``accepted`` are ignored."""
    jpeg_shrink_headroom: bool = False
    """Decode JPEGs at twice the target scale or more (libvips' thumbnail rule) instead of the
    smallest DCT scale that covers the target: sharper by a little, about 15% more CPU."""

    @property
    def max_pixels(self) -> int:
        """The megapixel budget in pixels."""
        return int(self.max_source_megapixels * 1_000_000)
