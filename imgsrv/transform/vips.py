"""The thin layer over pyvips: process setup, error mapping and typed metadata access.

pyvips has no type information, so every libvips image is ``VImage`` (an alias of ``Any``)
and every value read from libvips is converted to a plain Python type here or at the call
site, so that ``Any`` stops at this package's boundary.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias

import pyvips

from imgsrv.errors import UndecodableImage

VImage: TypeAlias = Any
"""A ``pyvips.Image``."""

# Loaders that libvips marks untrusted but that imgsrv still wants; whether SVG is accepted
# is then decided per request by TransformOptions.allow_svg.
_UNTRUSTED_BUT_WANTED = ("VipsForeignLoadSvg",)

_MAX_DETAIL = 300


def configure_vips(concurrency: int) -> None:
    """Set up libvips for a server process; call once per worker process, after forking.

    The operation cache is switched off: every request decodes different bytes, so cached
    operations would only pin memory. ``concurrency`` is the libvips thread count per
    pipeline; many small parallel requests want it low (1-2) rather than one request using
    every core. Untrusted loaders (CSV, vips, FITS, ...) are blocked, SVG excepted.

    libvips log messages go to GLib's own handler (stderr) instead of Python logging. pyvips'
    Python handler lets arbitrary Python run inside a GLib log call: a garbage collection
    there can free an image whose loader logs while closing (a JPEG with warnings does), and
    GLib aborts the whole process on a message logged from inside a log handler.
    """
    remove_python_log_handler = getattr(pyvips, "_remove_log_handler", None)
    if remove_python_log_handler is not None:
        remove_python_log_handler()
    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)
    pyvips.cache_set_max_files(0)
    pyvips.concurrency_set(max(1, concurrency))
    pyvips.block_untrusted_set(True)
    for name in _UNTRUSTED_BUT_WANTED:
        pyvips.operation_block_set(name, False)


def vips_concurrency() -> int:
    """The current libvips thread count per pipeline."""
    return int(pyvips.concurrency_get())


def vips_cache_max() -> int:
    """The current maximum number of cached libvips operations."""
    return int(pyvips.cache_get_max())


def sniff_loader(data: bytes) -> str | None:
    """Name of the libvips loader class that would open ``data``, or None for no loader.

    Only the magic bytes are looked at; nothing is decoded.
    """
    if not data:
        return None
    pointer = pyvips.vips_lib.vips_foreign_find_load_buffer(data, len(data))
    if pointer == pyvips.ffi.NULL:
        # The failed search leaves a message in libvips' process-wide error buffer, which
        # would otherwise be prepended to the next unrelated pyvips.Error.
        pyvips.vips_lib.vips_error_clear()
        return None
    return str(pyvips.ffi.string(pointer).decode("utf-8", "replace"))


def open_with(loader: str, data: bytes, **options: Any) -> VImage:
    """Open ``data`` with the named loader (what :func:`sniff_loader` found).

    ``Image.new_from_buffer`` would search every loader for the bytes again: calling the
    loader by name saves that search and about 0.1 ms per open.
    """
    return pyvips.Operation.call(loader, data, **options)


def libvips_message(exc: BaseException) -> str:
    """A one-line, length-bounded summary of a libvips error for problem details."""
    text = f"{exc.message} {exc.detail or ''}" if isinstance(exc, pyvips.Error) else str(exc)
    # The heif and gif loaders prefix their errors with "bad seek" lines that say nothing.
    lines = [line.strip() for line in text.splitlines() if line.strip() and "bad seek" not in line]
    # Repeated lines are common (each pipeline thread reports the same failure).
    unique = list(dict.fromkeys(lines))
    return "; ".join(unique)[:_MAX_DETAIL]


@contextmanager
def vips_errors(what: str) -> Iterator[None]:
    """Turn any libvips failure inside the block into :class:`UndecodableImage`.

    libvips evaluates lazily, so a corrupt source may only fail at encode time; wrapping the
    whole pipeline guarantees that no ``pyvips.Error`` reaches the caller.
    """
    try:
        yield
    except pyvips.Error as exc:
        raise UndecodableImage(f"{what}: {libvips_message(exc)}") from exc


def get_int(image: VImage, name: str, default: int) -> int:
    """An integer metadata field, or ``default`` when the image does not carry it."""
    if image.get_typeof(name) == 0:
        return default
    return int(image.get(name))


def get_str(image: VImage, name: str, default: str) -> str:
    """A string metadata field, or ``default`` when the image does not carry it."""
    if image.get_typeof(name) == 0:
        return default
    return str(image.get(name))


def has_field(image: VImage, name: str) -> bool:
    """Whether the image carries a metadata field."""
    return bool(image.get_typeof(name) != 0)


def with_int_field(image: VImage, name: str, value: int) -> VImage:
    """A copy of ``image`` with an integer metadata field set (images are shared, so copy)."""
    out = image.copy()
    out.set_type(pyvips.GValue.gint_type, name, value)
    return out


def has_alpha(image: VImage) -> bool:
    """Whether the image has an alpha band."""
    return bool(image.hasalpha())
