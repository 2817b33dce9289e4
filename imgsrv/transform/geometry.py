"""Pure arithmetic of resizing: target sizes per fit mode, and where gravity puts the box.

Kept free of libvips so that the rules can be read, and tested, on their own.

Fit modes follow sharp:

* ``cover``: scale to fill the whole box, then crop the overflow (gravity picks what stays);
* ``contain``: scale to fit inside the box, then pad it to exactly the box size;
* ``fill``: stretch to the box, ignoring the aspect ratio;
* ``inside``: scale to fit inside the box, no padding;
* ``outside``: scale to cover the box, no cropping.

With only a width or only a height the other side follows the aspect ratio, whatever the
fit; with neither the source size is kept.

Without ``enlarge`` nothing is ever scaled up. ``inside``, ``outside`` and single-side
requests then stop at the source size; ``fill`` stops each axis at the source size; and
``cover``/``contain`` keep the *aspect ratio of the box* but not its size: ``cover`` crops the
largest box of that ratio that fits in the source, ``contain`` pads the source to the smallest
box of that ratio that holds it. So a 300x200 photo asked for as 600x600 cover is 200x200,
not stretched and not 600x600 of padding.

No output side exceeds the configured maximum: sizes that the request did not name (the
source size, a side derived from the aspect ratio, ``outside`` overflow) are scaled down
to fit, keeping the aspect ratio, rather than refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from imgsrv.spec import Fit, Gravity


@dataclass(frozen=True, slots=True)
class ResizePlan:
    """How to scale one frame, and the box it ends up in.

    The frame is scaled to ``width`` x ``height``; ``cover`` then crops it down to
    ``box_width`` x ``box_height`` and ``contain`` pads it up to that size. For the other fits
    the box equals the scaled size.
    """

    width: int
    height: int
    box_width: int
    box_height: int
    fit: Fit

    @property
    def crops(self) -> bool:
        """Whether the scaled frame overflows the box and must be cropped."""
        return self.width > self.box_width or self.height > self.box_height

    @property
    def pads(self) -> bool:
        """Whether the scaled frame is smaller than the box and must be padded."""
        return self.width < self.box_width or self.height < self.box_height


def _size(value: float) -> int:
    return max(1, round(value))


def plan_resize(
    source_width: int,
    source_height: int,
    target_width: int,
    target_height: int,
    fit: Fit,
    enlarge: bool,
    max_width: int,
    max_height: int,
) -> ResizePlan:
    """Plan the scaling of a ``source_width`` x ``source_height`` frame.

    ``target_*`` are device pixels (0 = unset); ``max_*`` the largest allowed frame, i.e. the
    output limit less any padding.
    """
    sw, sh, tw, th = source_width, source_height, target_width, target_height
    if tw == 0 and th == 0:
        width, height = sw, sh
        box = (width, height)
    elif tw == 0 or th == 0:
        scale = tw / sw if tw else th / sh
        if not enlarge:
            scale = min(scale, 1.0)
        width, height = _size(sw * scale), _size(sh * scale)
        box = (width, height)
    elif fit == "fill":
        sx, sy = tw / sw, th / sh
        if not enlarge:
            sx, sy = min(sx, 1.0), min(sy, 1.0)
        width, height = _size(sw * sx), _size(sh * sy)
        box = (width, height)
    elif fit in ("inside", "outside"):
        pick = min if fit == "inside" else max
        scale = pick(tw / sw, th / sh)
        if not enlarge:
            scale = min(scale, 1.0)
        width, height = _size(sw * scale), _size(sh * scale)
        box = (width, height)
    elif fit == "cover":
        bw, bh = tw, th
        if not enlarge:
            shrink = min(1.0, sw / tw, sh / th)
            bw, bh = _size(tw * shrink), _size(th * shrink)
        scale = max(bw / sw, bh / sh)
        width, height = max(bw, _size(sw * scale)), max(bh, _size(sh * scale))
        box = (bw, bh)
    else:  # contain
        bw, bh = tw, th
        scale = min(tw / sw, th / sh)
        if not enlarge and scale > 1.0:
            grow = max(sw / tw, sh / th)
            bw, bh = max(sw, _size(tw * grow)), max(sh, _size(th * grow))
            scale = 1.0
        width, height = min(bw, _size(sw * scale)), min(bh, _size(sh * scale))
        box = (bw, bh)
    return _clamp(ResizePlan(width, height, box[0], box[1], fit), max_width, max_height)


def _clamp(plan: ResizePlan, max_width: int, max_height: int) -> ResizePlan:
    factor = min(1.0, max_width / plan.box_width, max_height / plan.box_height)
    if factor >= 1.0:
        return plan
    # Floor, so that the clamped box never ends a pixel over the limit.
    bw = max(1, math.floor(plan.box_width * factor))
    bh = max(1, math.floor(plan.box_height * factor))
    width = max(1, math.floor(plan.width * factor))
    height = max(1, math.floor(plan.height * factor))
    if plan.crops:
        width, height = max(width, bw), max(height, bh)
    else:
        width, height = min(width, bw), min(height, bh)
    return ResizePlan(width, height, bw, bh, plan.fit)


_LEFT = frozenset({"w", "nw", "sw"})
_RIGHT = frozenset({"e", "ne", "se"})
_TOP = frozenset({"n", "nw", "ne"})
_BOTTOM = frozenset({"s", "sw", "se"})


def compass_offset(gravity: Gravity, free_width: int, free_height: int) -> tuple[int, int]:
    """Offset of the gravity side within ``free_*`` pixels of slack on each axis.

    For a crop it is where the kept box starts inside the larger image; for padding it is
    where the image sits inside the larger box. Gravities without a compass meaning (smart,
    entropy, fp) centre.
    """
    if gravity in _LEFT:
        x = 0
    elif gravity in _RIGHT:
        x = free_width
    else:
        x = free_width // 2
    if gravity in _TOP:
        y = 0
    elif gravity in _BOTTOM:
        y = free_height
    else:
        y = free_height // 2
    return x, y


def focus_offset(
    focus_x: float, focus_y: float, width: int, height: int, box_width: int, box_height: int
) -> tuple[int, int]:
    """Crop offset that centres the box on a focal point (in pixels of the scaled frame).

    The box is pushed back inside the frame when the point is near an edge, so the point is as
    central as the frame allows.
    """
    x = round(focus_x - box_width / 2)
    y = round(focus_y - box_height / 2)
    return (
        min(max(0, x), max(0, width - box_width)),
        min(max(0, y), max(0, height - box_height)),
    )


def padding_pixels(
    top: int, right: int, bottom: int, left: int, dpr: float
) -> tuple[int, int, int, int]:
    """Padding in device pixels (the spec gives CSS pixels), as top, right, bottom, left."""
    return round(top * dpr), round(right * dpr), round(bottom * dpr), round(left * dpr)
