"""The one mutable object the pipeline steps work on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyvips

from imgsrv.spec import OutputFormat
from imgsrv.transform.geometry import ResizePlan
from imgsrv.transform.header import SourceHeader
from imgsrv.transform.vips import VImage


@dataclass(slots=True)
class ImageState:
    """The image being transformed, and what the steps so far have done to it.

    An animation is held as libvips holds it: all frames stacked vertically in one tall
    image, ``page_height`` pixels each. Steps that change a frame's geometry go through
    :meth:`map_frames`, which also works on stills (one frame), so they need no special case.
    """

    image: VImage
    header: SourceHeader
    output_format: OutputFormat
    animated: bool
    """The output keeps every frame of an animated source."""
    page_height: int
    region: tuple[int, int, int, int]
    """The part of the (oriented) source the image shows, as x, y, width, height in source
    pixels; crop and trim narrow it, so focal points given on the source stay put."""
    oriented: bool = False
    """EXIF orientation already applied (shrink-on-load does it while decoding)."""
    colour_managed: bool = False
    """Embedded profiles already converted to sRGB (shrink-on-load can do it too)."""
    planned: ResizePlan | None = None
    """The scaling planned on the source's full size before decoding, when the loader already
    shrank the frame part of the way (the resize step finishes it to exactly this plan)."""
    plan: ResizePlan | None = None
    """Set once the frame has been scaled."""
    random_access: bool = False
    """The pixels no longer come from a top-to-bottom decoder stream."""

    @property
    def frames(self) -> int:
        """Number of frames held (1 for stills)."""
        return int(self.image.height) // self.page_height if self.animated else 1

    @property
    def frame_width(self) -> int:
        return int(self.image.width)

    @property
    def frame_height(self) -> int:
        return self.page_height if self.animated else int(self.image.height)

    def ensure_random_access(self) -> None:
        """Make the pixels readable in any order.

        Images are decoded as a top-to-bottom stream; operations that look at the whole image
        before producing output (rotation, vertical flip, smart crop, trim detection, frame
        splitting) need it decoded first. Called by those steps only, and it happens once.
        """
        if not self.random_access:
            self.image = self.image.copy_memory()
            self.random_access = True

    def first_frame(self) -> VImage:
        """The first frame (the whole image for stills)."""
        if not self.animated:
            return self.image
        self.ensure_random_access()
        return self.image.crop(0, 0, self.frame_width, self.page_height)

    def map_frames(self, change: Callable[[VImage], VImage]) -> None:
        """Apply a geometry-changing operation to every frame (or the still image)."""
        if not self.animated:
            self.image = change(self.image)
            return
        self.ensure_random_access()
        width, height = self.frame_width, self.page_height
        frames = [change(self.image.crop(0, i * height, width, height)) for i in range(self.frames)]
        # arrayjoin keeps the first frame's metadata, which is the whole animation's (frame
        # delays, loop count), since every frame was cut from the same strip.
        self.image = pyvips.Image.arrayjoin(frames, across=1)
        self.page_height = int(frames[0].height)
