"""Several variants of one source from one decode: responsive sets, job variant lists.

:func:`imgsrv.transform.transform` decodes the source for every output. A :class:`VariantSet`
reads the header once and decodes the pixels once, with shrink-on-load to the largest size
that any of its variants needs, keeps that image in memory and derives every variant from it:
scaled down with the same resampler as the resize step, then through the same steps and
encoder as a single transform. Every output has exactly the dimensions and format the single
transform gives (the plan is the same); the pixels of a variant smaller than the base differ
from it only by resampling once more from a larger image (the largest variant, whose size is
the base's, is the same bytes).

Variants that need the full-resolution source (a crop rectangle, trim) or keep an animation
are rendered by the single transform from the same bytes: one download, their own decode.

Pure and blocking, like the rest of the package: run :meth:`VariantSet.render` on a worker
thread. Several threads may render variants of one set at once; the first decodes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import pyvips

from imgsrv.errors import ImgsrvError
from imgsrv.spec import TransformSpec
from imgsrv.transform.header import SourceHeader, check_decodable, check_source_limits, read_header
from imgsrv.transform.load import FAIL_ON, can_shrink_on_load
from imgsrv.transform.negotiate_format import choose_output_format, keeps_animation
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.pipeline import STEPS, transform
from imgsrv.transform.resize import make_plan, scale_frame
from imgsrv.transform.results import Rendered
from imgsrv.transform.save import encode
from imgsrv.transform.state import ImageState
from imgsrv.transform.vips import VImage, vips_errors


class VariantSet:
    """The variants ``specs`` of the encoded source ``data``, sharing one decode."""

    def __init__(
        self,
        data: bytes,
        specs: Iterable[TransformSpec],
        accepted: frozenset[str],
        options: TransformOptions,
    ) -> None:
        self.data = data
        self.specs = tuple(specs)
        self.accepted = accepted
        self.options = options
        self.decodes = 0
        """Decodes of the shared base so far: 0 or 1."""
        self._lock = threading.Lock()
        self._header: SourceHeader | None = None
        self._base: VImage | None = None
        self._colour_managed = False

    def render(self, spec: TransformSpec) -> Rendered:
        """Render one variant (any spec of this source; those given at creation share best).

        Raises the same errors as :func:`imgsrv.transform.transform`.
        """
        with vips_errors("cannot decode the image"):
            header = self._read_header()
            output_format = choose_output_format(spec, header, self.accepted)
            if not self._shares(spec, header):
                return transform(self.data, spec, self.accepted, self.options)
            check_decodable(header)
            check_source_limits(header, False, self.options)
            plan = make_plan(header.width, header.height, 1, spec, self.options)
            base = self._decode_base(header)
            if (int(base.width), int(base.height)) == (plan.width, plan.height):
                image = base
            else:
                image = scale_frame(base, plan.width, plan.height)
            state = ImageState(
                image=image,
                header=header,
                output_format=output_format,
                animated=False,
                page_height=int(image.height),
                region=(0, 0, header.width, header.height),
                oriented=True,
                colour_managed=self._colour_managed,
                plan=plan,
                random_access=True,  # derived from an image in memory
            )
            for step in STEPS:
                step(state, spec, self.options)
            return encode(state, spec, self.options)

    def _shares(self, spec: TransformSpec, header: SourceHeader) -> bool:
        output_format = choose_output_format(spec, header, self.accepted)
        return can_shrink_on_load(spec) and not keeps_animation(header, output_format)

    def _read_header(self) -> SourceHeader:
        with self._lock:
            if self._header is None:
                self._header = read_header(self.data, self.options)
            return self._header

    def base_size(self, header: SourceHeader) -> tuple[int, int]:
        """The size to decode at: the source scaled by the largest scale any shared variant
        needs (never above the source's own size)."""
        scale = 0.0
        for spec in self.specs:
            if not self._shares(spec, header):
                continue
            try:
                plan = make_plan(header.width, header.height, 1, spec, self.options)
            except ImgsrvError:
                continue  # refused when it is rendered
            scale = max(scale, plan.width / header.width, plan.height / header.height)
        if scale <= 0 or scale >= 1:
            return header.width, header.height
        return max(1, round(header.width * scale)), max(1, round(header.height * scale))

    def _decode_base(self, header: SourceHeader) -> VImage:
        with self._lock:
            if self._base is None:
                width, height = self.base_size(header)
                colour: dict[str, Any] = {}
                if header.icc_profile or header.cmyk:
                    colour["output_profile"] = "srgb"
                image = pyvips.Image.thumbnail_buffer(
                    self.data,
                    width,
                    height=height,
                    size="force",
                    option_string=f"fail_on={FAIL_ON}",
                    **colour,
                )
                # In memory: every variant reads it, in any order, from any thread.
                self._base = image.copy_memory()
                self._colour_managed = bool(colour)
                self.decodes += 1
            return self._base
