"""Cropping a rectangle given in source pixels (after auto-orientation), before resizing."""

from __future__ import annotations

from imgsrv.errors import InvalidOption
from imgsrv.spec import TransformSpec
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.state import ImageState


def crop(state: ImageState, spec: TransformSpec, options: TransformOptions) -> None:
    """Keep ``spec.crop`` (x, y, width, height), clipped to the image.

    A rectangle that starts outside the image cannot be clipped to anything; that is the
    client's mistake (400), though only knowable once the source size is.
    """
    if spec.crop is None:
        return
    x, y, width, height = spec.crop
    frame_width, frame_height = state.frame_width, state.frame_height
    if x >= frame_width or y >= frame_height:
        raise InvalidOption(
            "crop", f"({x}, {y}) lies outside the {frame_width}x{frame_height} image"
        )
    width, height = min(width, frame_width - x), min(height, frame_height - y)
    if (x, y, width, height) == (0, 0, frame_width, frame_height):
        return
    state.map_frames(lambda frame: frame.crop(x, y, width, height))
    region_x, region_y, _, _ = state.region
    state.region = (region_x + x, region_y + y, width, height)
