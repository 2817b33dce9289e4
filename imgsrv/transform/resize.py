"""Scaling to the requested size, and cropping ``cover`` overflow where gravity says.

Planning is shared with the loader: when shrink-on-load is possible the plan is made on the
source's full size before decoding, the frame arrives part of the way there (or, from libvips'
thumbnail, already scaled) and this step finishes it to exactly the planned size.
"""

from __future__ import annotations

from typing import Literal

from imgsrv.errors import ImageTooLarge
from imgsrv.spec import TransformSpec
from imgsrv.transform.geometry import (
    ResizePlan,
    compass_offset,
    focus_offset,
    padding_pixels,
    plan_resize,
)
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.state import ImageState
from imgsrv.transform.vips import VImage, has_alpha

_INTERESTING: dict[str, Literal["attention", "entropy"]] = {
    "smart": "attention",
    "entropy": "entropy",
}


def make_plan(
    width: int, height: int, frames: int, spec: TransformSpec, options: TransformOptions
) -> ResizePlan:
    """Plan the scaling of a ``width`` x ``height`` frame for ``spec`` within the limits.

    The frame may use what the output limit leaves after padding (on the axes it will have
    after rotation). Animations are held to the pixel budget over all frames, so a small
    many-frame GIF cannot be enlarged into gigapixels.
    """
    top, right, bottom, left = padding_pixels(*spec.padding, spec.dpr)
    max_width = options.max_output_dimension - left - right
    max_height = options.max_output_dimension - top - bottom
    if spec.rotate in (90, 270):
        max_width, max_height = max_height, max_width
    if max_width < 1 or max_height < 1:
        raise ImageTooLarge(f"the padding leaves no room within {options.max_output_dimension} px")
    plan = plan_resize(
        width,
        height,
        spec.target_width,
        spec.target_height,
        spec.fit,
        spec.enlarge,
        max_width,
        max_height,
    )
    if frames > 1:
        frame_pixels = (plan.box_width + left + right) * (plan.box_height + top + bottom)
        if frame_pixels * frames > options.max_pixels:
            raise ImageTooLarge(
                f"{frames} frames of {plan.box_width}x{plan.box_height} exceed the "
                f"{options.max_source_megapixels:g} Mpx limit"
            )
    return plan


def scale_frame(frame: VImage, width: int, height: int) -> VImage:
    """Resample a frame to exactly ``width`` x ``height`` (Lanczos 3).

    Alpha is premultiplied for the resampling so that transparent pixels, whose colour is
    meaningless, do not bleed dark fringes into the visible edge. The premultiplied pixels go
    back to the frame's own format before resampling, as libvips' thumbnail does: the 8-bit
    resampler is twice as fast as the float one, for the same output.
    """
    hscale = width / int(frame.width)
    vscale = height / int(frame.height)
    if has_alpha(frame):
        premultiplied = frame.premultiply().cast(frame.format)
        scaled = premultiplied.resize(hscale, vscale=vscale).unpremultiply().cast(frame.format)
    else:
        scaled = frame.resize(hscale, vscale=vscale)
    if (int(scaled.width), int(scaled.height)) != (width, height):
        # resize rounds each side on its own; never let that leak a pixel into the output.
        scaled = scaled.gravity("centre", width, height, extend="copy")
    return scaled


def resize(state: ImageState, spec: TransformSpec, options: TransformOptions) -> None:
    """Scale every frame per the fit mode, then crop ``cover`` overflow by gravity."""
    if state.plan is None:
        plan = state.planned or make_plan(
            state.frame_width, state.frame_height, state.frames, spec, options
        )
        if (plan.width, plan.height) != (state.frame_width, state.frame_height):
            state.map_frames(lambda frame: scale_frame(frame, plan.width, plan.height))
        state.plan = plan
    if state.plan.crops:
        crop_to_box(state, spec, state.plan)


def crop_to_box(state: ImageState, spec: TransformSpec, plan: ResizePlan) -> None:
    """Cut the plan's box out of the scaled frame(s), where the gravity points."""
    width, height = state.frame_width, state.frame_height
    box_width, box_height = min(plan.box_width, width), min(plan.box_height, height)
    interesting = _INTERESTING.get(spec.gravity)
    if interesting is not None:
        # The crop position is chosen once, on the first frame, and applied to all frames,
        # so an animation does not jitter from frame to frame.
        state.ensure_random_access()
        chosen = state.first_frame().smartcrop(box_width, box_height, interesting=interesting)
        # smartcrop is an extract_area, whose origin libvips records as a negative offset.
        left, top = -int(chosen.xoffset), -int(chosen.yoffset)
    elif spec.gravity == "fp":
        focus_x, focus_y = _focus_in_frame(state, spec)
        left, top = focus_offset(focus_x, focus_y, width, height, box_width, box_height)
    else:
        left, top = compass_offset(spec.gravity, width - box_width, height - box_height)
    left = min(max(0, left), width - box_width)
    top = min(max(0, top), height - box_height)
    state.map_frames(lambda frame: frame.crop(left, top, box_width, box_height))


def _focus_in_frame(state: ImageState, spec: TransformSpec) -> tuple[float, float]:
    """The focal point (given as fractions of the whole source) in pixels of the frame.

    Crop and trim may have cut the source down to ``state.region`` before scaling.
    """
    region_x, region_y, region_width, region_height = state.region
    source_x = spec.focus[0] * state.header.width - region_x
    source_y = spec.focus[1] * state.header.height - region_y
    return (
        source_x * state.frame_width / region_width,
        source_y * state.frame_height / region_height,
    )
