"""Reading a source's header: what it is, how big it is, and whether we accept it.

Nothing here decodes pixels. libvips opens the header lazily, so even a 65536 x 65536 PNG
is measured and refused in well under a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgsrv.errors import ImageTooLarge, UnsupportedFormat
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.vips import (
    get_int,
    get_str,
    has_alpha,
    has_field,
    open_with,
    sniff_loader,
    vips_errors,
)

# libvips loader nickname -> source format name. Anything else that libvips happens to be
# able to open (vips, matrix, csv, raw, ...) is not an image format a web server serves.
LOADER_FORMATS: dict[str, str] = {
    "jpegload_buffer": "jpeg",
    "uhdrload_buffer": "jpeg",  # Ultra HDR JPEG: the SDR base image is an ordinary JPEG
    "pngload_buffer": "png",
    "gifload_buffer": "gif",
    "webpload_buffer": "webp",
    "heifload_buffer": "heif",  # refined to "avif" from the compression below
    "tiffload_buffer": "tiff",
    "svgload_buffer": "svg",
}

ANIMATED_FORMATS = frozenset({"gif", "webp"})
"""Formats whose pages are animation frames (TIFF and HEIF pages are separate images)."""

# EXIF orientations 5-8 turn the image by a quarter, swapping width and height.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True, slots=True)
class SourceHeader:
    """What the header of a source says, with width/height as displayed (after orientation)."""

    format: str
    width: int
    height: int
    orientation: int
    alpha: bool
    pages: int
    icc_profile: bool
    cmyk: bool
    loader: str
    """The libvips loader class that read the header (``VipsForeignLoadJpegBuffer``, ...),
    which decodes the pixels too: the bytes are searched for their loader once per transform."""
    undecodable_reason: str = ""
    """Set when the header opens but this libvips cannot decode the pixels (HEVC HEIF)."""

    @property
    def animated(self) -> bool:
        """Whether the source is an animation (more than one frame of GIF or WebP)."""
        return self.format in ANIMATED_FORMATS and self.pages > 1

    @property
    def writable(self) -> bool:
        """Whether imgsrv can write this format back out."""
        return self.format in ("jpeg", "png", "webp", "avif", "gif")


def read_header(data: bytes, options: TransformOptions) -> SourceHeader:
    """Identify the source and read its header without decoding any pixels.

    Raises :class:`UnsupportedFormat` for bytes no allowed loader recognises (including SVG
    when ``allow_svg`` is off) and :class:`UndecodableImage` for a recognised format whose
    header is corrupt.
    """
    loader = sniff_loader(data)
    if loader is None:
        raise UnsupportedFormat("the source is not in a supported image format")
    with vips_errors("cannot read the image header"):
        image = open_with(loader, data, access="sequential")
        name = get_str(image, "vips-loader", "")
        fmt = LOADER_FORMATS.get(name)
        if fmt is None:
            raise UnsupportedFormat(f"images read by {name or 'this loader'} are not supported")
        if fmt == "svg" and not options.allow_svg:
            raise UnsupportedFormat("SVG sources are not allowed")
        reason = ""
        if fmt == "heif":
            compression = get_str(image, "heif-compression", "unknown")
            if compression == "av1":
                fmt = "avif"
            else:
                # libheif reads HEVC headers but this build has no HEVC decoder: the failure
                # would otherwise only surface, as a generic error, once pixels are read.
                reason = f"{compression.upper()} not supported: HEIF images must be AV1 (AVIF)"
        orientation = get_int(image, "orientation", 1)
        if not 1 <= orientation <= 8:
            orientation = 1
        width, height = int(image.width), int(image.height)
        if orientation in _QUARTER_TURNS:
            width, height = height, width
        return SourceHeader(
            format=fmt,
            width=width,
            height=height,
            orientation=orientation,
            alpha=has_alpha(image),
            pages=max(1, get_int(image, "n-pages", 1)),
            icc_profile=has_field(image, "icc-profile-data"),
            cmyk=str(image.interpretation) == "cmyk",
            loader=loader,
            undecodable_reason=reason,
        )


def check_decodable(header: SourceHeader) -> None:
    """Refuse sources whose header opens but whose pixels this libvips cannot decode."""
    if header.undecodable_reason:
        raise UnsupportedFormat(header.undecodable_reason)


def check_source_limits(
    header: SourceHeader, keep_animation: bool, options: TransformOptions
) -> None:
    """Refuse, before decoding, a source with too many pixels or frames.

    Frames count only when the output keeps the animation: a still output decodes the first
    frame alone, so a 10,000-frame GIF asked for as a JPEG costs one frame.
    """
    frames = header.pages if keep_animation else 1
    if frames > options.max_animation_frames:
        raise ImageTooLarge(
            f"the animation has {frames} frames; at most {options.max_animation_frames} are allowed"
        )
    pixels = header.width * header.height * frames
    if pixels > options.max_pixels:
        size = f"{header.width}x{header.height}" + (f" x {frames} frames" if frames > 1 else "")
        raise ImageTooLarge(
            f"the source is {size} = {pixels / 1e6:.1f} Mpx; "
            f"the limit is {options.max_source_megapixels:g} Mpx"
        )
