"""EXIF auto-orientation, always applied: the output is upright and carries no orientation."""

from __future__ import annotations

from imgsrv.spec import TransformSpec
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.state import ImageState


def auto_orient(state: ImageState, spec: TransformSpec, options: TransformOptions) -> None:
    """Rotate/mirror the image upright per its EXIF orientation (shrink-on-load already did)."""
    if state.oriented:
        return
    if state.header.orientation != 1:
        state.ensure_random_access()
        # autorot also drops the orientation tag, so no viewer turns the result again.
        state.map_frames(lambda frame: frame.autorot())
    state.oriented = True
