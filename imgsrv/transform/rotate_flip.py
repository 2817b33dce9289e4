"""Rotating by quarter turns (clockwise) and mirroring, after resizing."""

from __future__ import annotations

from typing import Final

from imgsrv.spec import TransformSpec
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.state import ImageState

_ANGLES: Final = {90: "d90", 180: "d180", 270: "d270"}


def rotate_flip(state: ImageState, spec: TransformSpec, options: TransformOptions) -> None:
    """Rotate by ``spec.rotate`` degrees clockwise, then flip per ``spec.flip``."""
    if spec.rotate:
        angle = _ANGLES[spec.rotate]
        # Every rotated output row needs input from every input row.
        state.ensure_random_access()
        state.map_frames(lambda frame: frame.rot(angle))
    if "h" in spec.flip:
        state.map_frames(lambda frame: frame.fliphor())
    if "v" in spec.flip:
        # The first output row is the last input row.
        state.ensure_random_access()
        state.map_frames(lambda frame: frame.flipver())
