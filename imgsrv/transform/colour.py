"""Colour: everything leaves as 8-bit sRGB (3 bands, or 4 with alpha).

Embedded ICC profiles (Adobe RGB, Display P3, CMYK, greyscale dot gain, XYB, ...) are applied
with lcms; CMYK without a profile uses libvips' built-in CMYK profile; untagged greyscale
and 16-bit images are converted arithmetically. Browsers assume untagged images are sRGB,
which is why the profile can then be stripped.
"""

from __future__ import annotations

import pyvips

from imgsrv.spec import TransformSpec
from imgsrv.transform.options import TransformOptions
from imgsrv.transform.state import ImageState
from imgsrv.transform.vips import VImage, has_field


def to_srgb(state: ImageState, spec: TransformSpec, options: TransformOptions) -> None:
    """Convert the image to 8-bit sRGB through its colour profile, if it has one."""
    image = state.image
    if not state.colour_managed:
        image = import_profile(image)
    state.image = as_srgb8(image)
    state.colour_managed = True


def import_profile(image: VImage) -> VImage:
    """Transform from the embedded (or, for CMYK, a fallback) profile to sRGB."""
    cmyk = str(image.interpretation) == "cmyk"
    if not (cmyk or has_field(image, "icc-profile-data")):
        return image
    try:
        return image.icc_transform(
            "srgb",
            embedded=True,
            input_profile="cmyk" if cmyk else "srgb",
            intent="perceptual",
            depth=8,
        )
    except pyvips.Error:
        # A profile lcms cannot use: show the pixels as they are rather than fail.
        image = image.copy()
        image.remove("icc-profile-data")
        return image


def as_srgb8(image: VImage) -> VImage:
    """Make the image 8-bit sRGB with 3 or 4 bands, without colour management."""
    if str(image.interpretation) != "srgb":
        image = image.colourspace("srgb")
    if str(image.format) != "uchar":
        # 16-bit sRGB (some TIFFs): keep the high byte; anything else is clipped to 0-255.
        image = image.cast("uchar", shift=str(image.format) in ("ushort", "short"))
    bands = int(image.bands)
    if bands > 4:
        image = image.extract_band(0, n=4)
    elif bands < 3:
        # One or two bands labelled sRGB can only be grey (plus alpha).
        image = image.copy(interpretation="b-w").colourspace("srgb")
    return image
