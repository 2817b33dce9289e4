"""Gaussian blur and unsharp-mask sharpening, frame by frame so frames do not bleed together."""

from __future__ import annotations

from typing import Final

from imgsrv.spec import TransformSpec
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.state import ImageState
from imgsrv.transform.vips import VImage, has_alpha

# libvips' sharpen accepts sigmas up to 10; beyond that the mask is wider than the detail
# any sharpening can restore, so larger requests get the strongest available.
MAX_SHARPEN_SIGMA: Final = 10.0


def blur(state: ImageState, spec: TransformSpec, options: TransformOptions) -> None:
    """Gaussian blur with standard deviation ``spec.blur`` (output pixels)."""
    if spec.blur <= 0:
        return
    sigma = spec.blur
    state.map_frames(lambda frame: blur_frame(frame, sigma))


def sharpen(state: ImageState, spec: TransformSpec, options: TransformOptions) -> None:
    """Sharpen with a mask of standard deviation ``spec.sharpen`` (at most 10)."""
    if spec.sharpen <= 0:
        return
    sigma = min(spec.sharpen, MAX_SHARPEN_SIGMA)
    state.map_frames(lambda frame: frame.sharpen(sigma=sigma))


def blur_frame(frame: VImage, sigma: float) -> VImage:
    """Blur one frame; alpha is premultiplied so transparent pixels do not darken edges."""
    if not has_alpha(frame):
        return frame.gaussblur(sigma)
    original = frame.format
    return frame.premultiply().gaussblur(sigma).unpremultiply().cast(original)
