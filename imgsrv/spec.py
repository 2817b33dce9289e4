"""TransformSpec: what to render, parsed once, trusted everywhere downstream.

A spec is built from option name/argument pairs (the URL grammar, or a job variant object) by
:func:`parse_options`, which is the only place that validates them. The spec is frozen; its
:meth:`TransformSpec.canonical` string lists every field that changes the output bytes, in a
fixed order with defaults left out, and is the basis of the cache key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, cast, get_args

from imgsrv.errors import InvalidOption

Fit = Literal["cover", "contain", "fill", "inside", "outside"]
Gravity = Literal["center", "n", "s", "e", "w", "ne", "nw", "se", "sw", "smart", "entropy", "fp"]
OutputFormat = Literal["jpeg", "png", "webp", "avif", "gif"]
FormatChoice = Literal["jpeg", "png", "webp", "avif", "gif", "auto"]
Flip = Literal["", "h", "v", "hv"]

FITS: tuple[str, ...] = get_args(Fit)
GRAVITIES: tuple[str, ...] = get_args(Gravity)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
FORMAT_CHOICES: tuple[str, ...] = get_args(FormatChoice)

DAY = 86_400
MIN_TTL = DAY
MAX_TTL = 3 * DAY
DEFAULT_TTL = DAY

# Hard bounds that hold whatever the configuration says.
MAX_DPR = 5.0
MAX_SIGMA = 100.0
MAX_PADDING = 2_000


@dataclass(frozen=True, slots=True)
class TransformSpec:
    """A fully validated transform of one source image.

    ``width``/``height`` of 0 mean "derive from the other side" (or keep the source size when
    both are 0). They are CSS pixels: the output is ``dpr`` times larger. ``quality`` 0 means the
    configured default for the output format; ``format`` ``None`` keeps the source format when it
    can be written, ``"auto"`` negotiates from the request's ``Accept`` header.
    """

    source: str
    width: int = 0
    height: int = 0
    fit: Fit = "cover"
    gravity: Gravity = "center"
    focus: tuple[float, float] = (0.5, 0.5)
    dpr: float = 1.0
    enlarge: bool = False
    crop: tuple[int, int, int, int] | None = None
    rotate: int = 0
    flip: Flip = ""
    blur: float = 0.0
    sharpen: float = 0.0
    background: tuple[int, int, int, int] | None = None
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    trim: float | None = None
    quality: int = 0
    format: FormatChoice | None = None
    progressive: bool = False
    strip: bool = True
    # Cache lifetime in L2; not part of the canonical string because it does not change the bytes.
    ttl: int = field(default=DEFAULT_TTL, compare=False)
    # Built once: every request (the L1 hit included) needs it for its cache key.
    _canonical: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = [":".join([name, *args]) for name, args in self.options()]
        parts.append("src:" + self.source)
        object.__setattr__(self, "_canonical", "/".join(parts))

    @property
    def target_width(self) -> int:
        """Requested output width in device pixels (0 = unset)."""
        return round(self.width * self.dpr)

    @property
    def target_height(self) -> int:
        """Requested output height in device pixels (0 = unset)."""
        return round(self.height * self.dpr)

    def options(self) -> list[tuple[str, list[str]]]:
        """The non-default options as (short name, args), in canonical order."""
        out: list[tuple[str, list[str]]] = []
        if self.width:
            out.append(("w", [str(self.width)]))
        if self.height:
            out.append(("h", [str(self.height)]))
        if self.fit != "cover":
            out.append(("fit", [self.fit]))
        if self.gravity == "fp":
            out.append(("g", ["fp", _num(self.focus[0]), _num(self.focus[1])]))
        elif self.gravity != "center":
            out.append(("g", [self.gravity]))
        if self.dpr != 1.0:
            out.append(("dpr", [_num(self.dpr)]))
        if self.enlarge:
            out.append(("el", ["1"]))
        if self.crop is not None:
            out.append(("c", [str(v) for v in self.crop]))
        if self.rotate:
            out.append(("rot", [str(self.rotate)]))
        if self.flip:
            out.append(("fl", [self.flip]))
        if self.blur:
            out.append(("bl", [_num(self.blur)]))
        if self.sharpen:
            out.append(("sh", [_num(self.sharpen)]))
        if self.background is not None:
            out.append(("bg", [_hex_colour(self.background)]))
        if any(self.padding):
            out.append(("pad", [str(v) for v in self.padding]))
        if self.trim is not None:
            out.append(("t", [_num(self.trim)]))
        if self.quality:
            out.append(("q", [str(self.quality)]))
        if self.format is not None:
            out.append(("f", [self.format]))
        if self.progressive:
            out.append(("pj", ["1"]))
        if not self.strip:
            out.append(("sm", ["0"]))
        return out

    def canonical(self) -> str:
        """Stable text of everything that determines the output bytes (cache key basis)."""
        return self._canonical

    def with_format(self, fmt: FormatChoice | None) -> TransformSpec:
        return replace(self, format=fmt)


def _num(value: float) -> str:
    """Shortest round-tripping text for a float, without a trailing '.0'."""
    if value == int(value):
        return str(int(value))
    return repr(value)


def _hex_colour(rgba: tuple[int, int, int, int]) -> str:
    r, g, b, a = rgba
    text = f"{r:02x}{g:02x}{b:02x}"
    return text if a == 255 else text + f"{a:02x}"


# --------------------------------------------------------------------------- option parsing


@dataclass(frozen=True, slots=True)
class SpecLimits:
    """Configured bounds that option parsing enforces."""

    max_dimension: int = 8192
    presets: Mapping[str, str] = field(default_factory=dict)


Fields = dict[str, object]


def _int(option: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise InvalidOption(option, f"{text!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise InvalidOption(option, f"{value} is outside {lo}..{hi}")
    return value


def _float(option: str, text: str, lo: float, hi: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidOption(option, f"{text!r} is not a number") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidOption(option, f"{text} is outside {_num(lo)}..{_num(hi)}")
    return value


def _bool(option: str, text: str) -> bool:
    if text in ("1", "t", "true"):
        return True
    if text in ("0", "f", "false"):
        return False
    raise InvalidOption(option, f"{text!r} is not 0 or 1")


def _choice(option: str, text: str, choices: Sequence[str]) -> str:
    if text not in choices:
        raise InvalidOption(option, f"{text!r} is not one of {', '.join(choices)}")
    return text


def _arity(option: str, args: Sequence[str], *counts: int) -> None:
    if len(args) not in counts:
        wanted = " or ".join(str(c) for c in counts)
        raise InvalidOption(option, f"takes {wanted} argument(s), got {len(args)}")


def _colour(option: str, text: str) -> tuple[int, int, int, int]:
    if len(text) not in (6, 8):
        raise InvalidOption(option, f"{text!r} is not rrggbb or rrggbbaa hex")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise InvalidOption(option, f"{text!r} is not rrggbb or rrggbbaa hex") from None
    alpha = raw[3] if len(raw) == 4 else 255
    return raw[0], raw[1], raw[2], alpha


def _parse_ttl(option: str, text: str) -> int:
    """``ttl`` accepts seconds or a number with an s/m/h/d suffix; must be within 1..3 days.

    Out-of-range values are rejected rather than clamped so that a caller never silently gets
    a lifetime they did not ask for.
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": DAY}
    unit = units.get(text[-1:], 0)
    number = text[:-1] if unit else text
    seconds = _int(option, number, 0, 10 * MAX_TTL) * (unit or 1)
    if not MIN_TTL <= seconds <= MAX_TTL:
        raise InvalidOption(option, f"{text} is outside 1d..3d")
    return seconds


def _opt_size(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    key = "width" if option in ("w", "width") else "height"
    out[key] = _int(option, args[0], 0, limits.max_dimension)


def _opt_resize(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1, 2, 3)
    out["fit"] = _choice(option, args[0], FITS)
    if len(args) > 1:
        out["width"] = _int(option, args[1], 0, limits.max_dimension)
    if len(args) > 2:
        out["height"] = _int(option, args[2], 0, limits.max_dimension)


def _opt_fit(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    out["fit"] = _choice(option, args[0], FITS)


def _opt_gravity(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    if args[:1] == ["fp"]:
        _arity(option, args, 3)
        out["gravity"] = "fp"
        out["focus"] = (_float(option, args[1], 0, 1), _float(option, args[2], 0, 1))
        return
    _arity(option, args, 1)
    out["gravity"] = _choice(option, args[0], [g for g in GRAVITIES if g != "fp"])
    out["focus"] = (0.5, 0.5)


def _opt_dpr(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    out["dpr"] = _float(option, args[0], 1, MAX_DPR)


def _opt_enlarge(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    out["enlarge"] = _bool(option, args[0])


def _opt_crop(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 4)
    big = 1 << 20
    x, y = (_int(option, a, 0, big) for a in args[:2])
    w, h = (_int(option, a, 1, big) for a in args[2:])
    out["crop"] = (x, y, w, h)


def _opt_rotate(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    out["rotate"] = int(_choice(option, args[0], ("0", "90", "180", "270")))


def _opt_flip(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    out["flip"] = "" if args[0] == "0" else _choice(option, args[0], ("h", "v", "hv"))


def _opt_blur(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    key = "blur" if option in ("bl", "blur") else "sharpen"
    out[key] = _float(option, args[0], 0, MAX_SIGMA)


def _opt_background(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    out["background"] = _colour(option, args[0])


def _opt_padding(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1, 2, 4)
    values = [_int(option, a, 0, MAX_PADDING) for a in args]
    if len(values) == 1:
        values *= 4
    elif len(values) == 2:
        values *= 2
    out["padding"] = (values[0], values[1], values[2], values[3])


def _opt_trim(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    out["trim"] = _float(option, args[0], 0, 255)


def _opt_quality(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    out["quality"] = _int(option, args[0], 1, 100)


def _opt_format(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    out["format"] = normalise_format(option, args[0])


def _opt_progressive(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    out["progressive"] = _bool(option, args[0])


def _opt_strip(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    out["strip"] = _bool(option, args[0])


def _opt_ttl(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    out["ttl"] = _parse_ttl(option, args[0])


def _opt_preset(option: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    _arity(option, args, 1)
    body = limits.presets.get(args[0])
    if body is None:
        raise InvalidOption(option, f"unknown preset {args[0]!r}")
    # A preset expands in place; presets cannot nest, so expansion always terminates.
    for name, sub_args in split_options(body):
        if name in ("pr", "preset"):
            raise InvalidOption(option, f"preset {args[0]!r} refers to another preset")
        apply_option(name, sub_args, limits, out)


OptionParser = Callable[[str, Sequence[str], SpecLimits, Fields], None]

_OPTIONS: dict[tuple[str, ...], OptionParser] = {
    ("w", "width"): _opt_size,
    ("h", "height"): _opt_size,
    ("rs", "resize"): _opt_resize,
    ("fit",): _opt_fit,
    ("g", "gravity"): _opt_gravity,
    ("dpr",): _opt_dpr,
    ("el", "enlarge"): _opt_enlarge,
    ("c", "crop"): _opt_crop,
    ("rot", "rotate"): _opt_rotate,
    ("fl", "flip"): _opt_flip,
    ("bl", "blur"): _opt_blur,
    ("sh", "sharpen"): _opt_blur,
    ("bg", "background"): _opt_background,
    ("pad", "padding"): _opt_padding,
    ("t", "trim"): _opt_trim,
    ("q", "quality"): _opt_quality,
    ("f", "format"): _opt_format,
    ("pj", "progressive"): _opt_progressive,
    ("sm", "strip"): _opt_strip,
    ("ttl",): _opt_ttl,
    ("pr", "preset"): _opt_preset,
}
OPTION_PARSERS = {name: parser for names, parser in _OPTIONS.items() for name in names}
OPTION_NAMES: tuple[str, ...] = tuple(OPTION_PARSERS)


def normalise_format(option: str, text: str) -> FormatChoice:
    """Map a format name or file extension (``jpg``, ``JPEG``, ``webp``...) to a FormatChoice."""
    lowered = text.lower()
    lowered = {"jpg": "jpeg", "jpe": "jpeg", "jfif": "jpeg"}.get(lowered, lowered)
    return cast(FormatChoice, _choice(option, lowered, FORMAT_CHOICES))


def split_options(text: str) -> list[tuple[str, list[str]]]:
    """Split ``"w:300/h:200"`` into ``[("w", ["300"]), ("h", ["200"])]``."""
    out: list[tuple[str, list[str]]] = []
    for part in text.split("/"):
        if part:
            name, *args = part.split(":")
            out.append((name, args))
    return out


def apply_option(name: str, args: Sequence[str], limits: SpecLimits, out: Fields) -> None:
    """Validate one option and record its effect on the spec fields in ``out``."""
    parser = OPTION_PARSERS.get(name)
    if parser is None:
        raise InvalidOption(name, "unknown option")
    if not args or any(a == "" for a in args):
        raise InvalidOption(name, "missing argument")
    parser(name, args, limits, out)


def parse_options(
    source: str,
    options: Iterable[tuple[str, Sequence[str]]],
    limits: SpecLimits,
    fmt: FormatChoice | None = None,
) -> TransformSpec:
    """Build a TransformSpec from option pairs; later options override earlier ones.

    ``fmt`` (from a source extension) overrides any ``f`` option, as in the URL grammar.
    """
    out: Fields = {}
    for name, args in options:
        apply_option(name, args, limits, out)
    if fmt is not None:
        out["format"] = fmt
    spec = TransformSpec(source=source, **out)  # type: ignore[arg-type]
    _check_output_size(spec, limits)
    return spec


def _check_output_size(spec: TransformSpec, limits: SpecLimits) -> None:
    top, right, bottom, left = spec.padding
    width = spec.target_width + round((left + right) * spec.dpr)
    height = spec.target_height + round((top + bottom) * spec.dpr)
    if width > limits.max_dimension or height > limits.max_dimension:
        raise InvalidOption(
            "dpr" if spec.dpr != 1 else "w" if width > limits.max_dimension else "h",
            f"output {width}x{height} exceeds the {limits.max_dimension} px limit",
        )
