"""Several variants of one source from one decode: responsive sets, job variant lists.

:func:`imgsrv.transform.transform` decodes the source for every output. A :class:`VariantSet`
reads the header once and decodes the pixels once, exactly as the single transform decodes
them for the largest of its variants (shrink-on-load included), turns them upright and into
sRGB, keeps that image in memory and derives every variant from it: scaled with the resize
step's resampler, then through the same steps and encoder as a single transform. Every output
has exactly the dimensions and format the single transform gives (the plan is the same); the
largest variant is the same bytes, and a smaller one is resampled from that larger decode
rather than from the loader's own shrink of the source.

Variants that need the full-resolution source (a crop rectangle, trim) or keep an animation
are rendered by the single transform from the same bytes: one download, their own decode.

Pure and blocking, like the rest of the package: run :meth:`VariantSet.render` on a worker
thread. Several threads may render variants of one set at once; the first decodes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from imgsrv.errors import ImgsrvError
from imgsrv.spec import TransformSpec
from imgsrv.transform.colour import to_srgb
from imgsrv.transform.header import SourceHeader, check_decodable, check_source_limits, read_header
from imgsrv.transform.load import can_shrink_on_load, decode
from imgsrv.transform.negotiate_format import choose_output_format, keeps_animation
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.orient import auto_orient
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
            base = self._decode_base(header, spec)
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
                colour_managed=True,
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

    def largest(self, header: SourceHeader) -> TransformSpec | None:
        """The shared variant that needs the most pixels of the source (None: none shared)."""
        chosen, most = None, 0.0
        for spec in self.specs:
            if not self._shares(spec, header):
                continue
            try:
                plan = make_plan(header.width, header.height, 1, spec, self.options)
            except ImgsrvError:
                continue  # refused when it is rendered
            scale = max(plan.width / header.width, plan.height / header.height)
            if chosen is None or scale > most:
                chosen, most = spec, scale
        return chosen

    def _decode_base(self, header: SourceHeader, fallback: TransformSpec) -> VImage:
        """The source decoded as the single transform decodes it for the largest variant
        (shrink-on-load included), upright and in sRGB, in memory."""
        with self._lock:
            if self._base is None:
                largest = self.largest(header) or fallback
                output_format = choose_output_format(largest, header, self.accepted)
                state = decode(self.data, header, largest, output_format, False, self.options)
                auto_orient(state, largest, self.options)
                to_srgb(state, largest, self.options)
                # In memory: every variant reads it, in any order, from any thread.
                self._base = state.image.copy_memory()
                self.decodes += 1
            return self._base
