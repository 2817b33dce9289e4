"""Trimming a uniform border (before resizing), like ImageMagick's -trim."""

from __future__ import annotations

from imgsrv.spec import TransformSpec
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.state import ImageState
from imgsrv.transform.vips import VImage, has_alpha


def trim(state: ImageState, spec: TransformSpec, options: TransformOptions) -> None:
    """Remove the border whose colour is within ``spec.trim`` of the top-left pixel.

    For animations the border is found on the first frame and cut from every frame. An image
    that is all border is left as it is.
    """
    if spec.trim is None:
        return
    state.ensure_random_access()
    left, top, width, height = find_border(state.first_frame(), spec.trim)
    if width <= 0 or height <= 0:
        return
    if (left, top, width, height) == (0, 0, state.frame_width, state.frame_height):
        return
    state.map_frames(lambda frame: frame.crop(left, top, width, height))
    region_x, region_y, _, _ = state.region
    state.region = (region_x + left, region_y + top, width, height)


def find_border(frame: VImage, threshold: float) -> tuple[int, int, int, int]:
    """The box inside the uniform border, as left, top, width, height."""
    corner = [float(v) for v in frame.getpoint(0, 0)]
    if has_alpha(frame) and corner[-1] == 0:
        # A transparent border: its colour values mean nothing, only the alpha does.
        found = frame.extract_band(int(frame.bands) - 1).find_trim(
            threshold=threshold, background=[0.0]
        )
    else:
        # find_trim flattens alpha onto the background colour itself.
        found = frame.find_trim(threshold=threshold, background=corner[:3])
    left, top, width, height = (int(v) for v in found)
    return left, top, width, height
