"""The libvips image pipeline: encoded bytes and a TransformSpec in, encoded bytes out.

Pure and blocking: it knows nothing of HTTP, caches or Redis, and is meant to run on a
worker thread. :func:`configure_vips` must run once in each worker process.
"""

from __future__ import annotations

from imgsrv.transform.negotiate_format import resolve_auto_format
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.pipeline import probe, transform
from imgsrv.transform.results import ImageInfo, Rendered
from imgsrv.transform.variant_set import VariantSet
from imgsrv.transform.vips import configure_vips

__all__ = [
    "ImageInfo",
    "Rendered",
    "TransformOptions",
    "VariantSet",
    "configure_vips",
    "probe",
    "resolve_auto_format",
    "transform",
]
