"""URL grammar, option parsing and signatures (no I/O)."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from imgsrv.config import load_settings
from imgsrv.errors import (
    ForbiddenSource,
    ImgsrvError,
    InvalidOption,
    InvalidSource,
    SignatureError,
)
from imgsrv.sources import resolve_source
from imgsrv.spec import DAY, TransformSpec
from imgsrv.urls import (
    build_path,
    build_query,
    parse_path,
    parse_query,
    sign_path,
    sign_query,
    signature,
    spec_path,
)

KEY = "943b421c9eb07c830af81030552c86009268de4e532ba2ee2eab8247c6da0881"
SALT = "520f986b998545b4785e0defbc4f3c1203f22de2374a3d53cb7a7fe9fea309c5"
SRC = "https://images.example.com/photos/cat.jpg"

UNSIGNED = load_settings({})
SIGNED = load_settings({"IMGSRV_SIGNING_KEY": KEY, "IMGSRV_SIGNING_SALT": SALT})


def parse(path: str, settings=UNSIGNED):  # type: ignore[no-untyped-def]
    return parse_path(path.encode(), settings).spec


# ----------------------------------------------------------------------------- options


def test_every_option_short_and_long_name_gives_the_same_spec() -> None:
    pairs = [
        ("w:300", "width:300"),
        ("h:200", "height:200"),
        ("rs:fill:300:200", "resize:fill:300:200"),
        ("g:ne", "gravity:ne"),
        ("g:fp:0.25:0.75", "gravity:fp:0.25:0.75"),
        ("el:1", "enlarge:1"),
        ("c:10:20:300:400", "crop:10:20:300:400"),
        ("rot:90", "rotate:90"),
        ("fl:hv", "flip:hv"),
        ("bl:2.5", "blur:2.5"),
        ("sh:1", "sharpen:1"),
        ("bg:ff000080", "background:ff000080"),
        ("pad:1:2:3:4", "padding:1:2:3:4"),
        ("t:10", "trim:10"),
        ("q:55", "quality:55"),
        ("f:webp", "format:webp"),
        ("pj:1", "progressive:1"),
        ("sm:0", "strip:0"),
    ]
    for short, long in pairs:
        a = parse(f"/_/{short}/plain/{SRC}")
        b = parse(f"/_/{long}/plain/{SRC}")
        assert a == b, (short, long)
        assert a != TransformSpec(source=SRC), short


def test_option_values_land_in_the_spec() -> None:
    spec = parse(
        f"/_/rs:contain:300:200/g:fp:0.2:0.8/dpr:2/el:1/c:1:2:3:4/rot:270/fl:h/bl:1.5/sh:0.5/"
        f"bg:00ff00/pad:5:10/t:12.5/q:70/f:avif/pj:1/sm:0/ttl:2d/plain/{SRC}"
    )
    assert (spec.width, spec.height, spec.fit) == (300, 200, "contain")
    assert (spec.gravity, spec.focus) == ("fp", (0.2, 0.8))
    assert spec.dpr == 2 and spec.enlarge and spec.crop == (1, 2, 3, 4)
    assert (spec.rotate, spec.flip, spec.blur, spec.sharpen) == (270, "h", 1.5, 0.5)
    assert spec.background == (0, 255, 0, 255)
    assert spec.padding == (5, 10, 5, 10)
    assert (spec.trim, spec.quality, spec.format) == (12.5, 70, "avif")
    assert spec.progressive and not spec.strip
    assert spec.ttl == 2 * DAY
    assert (spec.target_width, spec.target_height) == (600, 400)


def test_later_options_override_earlier_ones_and_extension_sets_format() -> None:
    spec = parse(f"/_/w:100/w:200/f:png/plain/{SRC}@webp")
    assert spec.width == 200 and spec.format == "webp"
    assert parse(f"/_/plain/{SRC}@jpg").format == "jpeg"


@pytest.mark.parametrize(
    ("option", "name"),
    [
        ("zoom:2", "zoom"),
        ("w:abc", "w"),
        ("w:-1", "w"),
        ("w:99999", "w"),
        ("h:1.5", "h"),
        ("fit:squash", "fit"),
        ("g:middle", "g"),
        ("g:fp:2:0", "g"),
        ("dpr:6", "dpr"),
        ("dpr:0", "dpr"),
        ("el:2", "el"),
        ("c:1:2:3", "c"),
        ("c:0:0:0:10", "c"),
        ("rot:45", "rot"),
        ("fl:x", "fl"),
        ("bl:nan", "bl"),
        ("bl:1000", "bl"),
        ("bg:red", "bg"),
        ("bg:fffff", "bg"),
        ("pad:1:2:3", "pad"),
        ("t:300", "t"),
        ("q:0", "q"),
        ("q:101", "q"),
        ("f:bmp", "f"),
        ("sm:yes", "sm"),
        ("ttl:1h", "ttl"),
        ("ttl:4d", "ttl"),
        ("pr:nope", "pr"),
        ("w:", "w"),
        ("w:4000/dpr:5", "dpr"),
    ],
)
def test_bad_options_are_400_naming_the_option(option: str, name: str) -> None:
    with pytest.raises(InvalidOption) as info:
        parse(f"/_/{option}/plain/{SRC}")
    assert info.value.status == 400
    assert info.value.option == name
    assert name in info.value.detail


def test_ttl_accepts_seconds_and_suffixes_within_one_to_three_days() -> None:
    assert parse(f"/_/ttl:86400/plain/{SRC}").ttl == DAY
    assert parse(f"/_/ttl:36h/plain/{SRC}").ttl == 36 * 3600
    assert parse(f"/_/ttl:3d/plain/{SRC}").ttl == 3 * DAY
    # ttl changes the cache lifetime, not the bytes: not part of the canonical string
    assert parse(f"/_/ttl:3d/plain/{SRC}").canonical() == parse(f"/_/plain/{SRC}").canonical()


def test_presets_expand_in_place_and_cannot_nest() -> None:
    settings = load_settings({"IMGSRV_PRESETS": "thumb=rs:cover:150:150/f:webp;loop=pr:thumb"})
    spec = parse_path(f"/_/pr:thumb/q:50/plain/{SRC}".encode(), settings).spec
    assert (spec.width, spec.height, spec.fit, spec.format, spec.quality) == (
        150,
        150,
        "cover",
        "webp",
        50,
    )
    assert (
        spec == parse_path(f"/_/rs:cover:150:150/f:webp/q:50/plain/{SRC}".encode(), settings).spec
    )
    with pytest.raises(InvalidOption):
        parse_path(f"/_/preset:loop/plain/{SRC}".encode(), settings)


# ----------------------------------------------------------------------------- sources


def test_plain_source_percent_encoded_or_not() -> None:
    encoded = "https%3A%2F%2Fimages.example.com%2Fphotos%2Fcat.jpg"
    assert parse(f"/_/w:10/plain/{encoded}").source == SRC
    assert parse(f"/_/w:10/plain/{SRC}").source == SRC
    assert parse(f"/_/w:10/plain/{encoded}@png").format == "png"


def test_base64_source_with_extension_and_split_segments() -> None:
    b64 = base64.urlsafe_b64encode(SRC.encode()).rstrip(b"=").decode()
    spec = parse(f"/_/w:10/{b64}.webp")
    assert spec.source == SRC and spec.format == "webp"
    split = f"{b64[:10]}/{b64[10:]}"
    assert parse(f"/_/w:10/{split}").source == SRC


def test_relative_sources_need_a_base_url() -> None:
    with pytest.raises(InvalidSource):
        parse("/_/w:10/plain/photos/cat.jpg")
    based = load_settings({"IMGSRV_SOURCE_BASE_URL": "https://images.example.com/"})
    assert parse_path(b"/_/w:10/plain/photos/cat.jpg", based).spec.source == SRC


def test_not_an_option_nor_base64_is_a_clear_400() -> None:
    with pytest.raises(InvalidSource) as info:
        parse("/_/w:10/????")
    assert info.value.status == 400


def test_forbidden_scheme() -> None:
    with pytest.raises((InvalidSource, ForbiddenSource)):
        parse("/_/w:10/plain/file:%2F%2F%2Fetc%2Fpasswd")


# ----------------------------------------------------------------------------- query form


def test_query_form_gives_the_same_spec_as_the_path_form() -> None:
    q = parse_query(
        b"url=" + SRC.encode() + b"&w=300&h=200&fit=contain&g=fp:0.1:0.9&f=webp", UNSIGNED
    ).spec
    p = parse(f"/_/w:300/h:200/fit:contain/g:fp:0.1:0.9/f:webp/plain/{SRC}")
    assert q == p


def test_query_form_needs_url_and_rejects_bad_options() -> None:
    with pytest.raises(InvalidSource):
        parse_query(b"w=300", UNSIGNED)
    with pytest.raises(InvalidOption) as info:
        parse_query(b"url=" + SRC.encode() + b"&width=wide", UNSIGNED)
    assert info.value.option == "width"


# ----------------------------------------------------------------------------- signatures


def test_signature_matches_the_documented_algorithm() -> None:
    import hashlib
    import hmac

    path = build_path(SRC, ["w:300"], "webp")
    assert path == "/w:300/plain/https%3A%2F%2Fimages.example.com%2Fphotos%2Fcat.jpg@webp"
    digest = hmac.new(bytes.fromhex(KEY), bytes.fromhex(SALT) + path.encode(), hashlib.sha256)
    expected = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    assert sign_path(path, SIGNED) == f"/{expected}{path}"
    assert signature(path, SIGNED) == expected


def test_valid_signature_is_accepted_and_marks_the_url_signed() -> None:
    url = sign_path(build_path(SRC, ["w:300", "h:200"], "webp"), SIGNED)
    parsed = parse_path(url.encode(), SIGNED)
    assert parsed.signed and parsed.spec.width == 300 and parsed.spec.format == "webp"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda u: u.replace("w:300", "w:301"),  # tampered option
        lambda u: u.replace("cat.jpg", "dog.jpg"),  # tampered source
        lambda u: u.replace("@webp", "@png"),  # tampered format
        lambda u: "/_" + u[u.index("/", 1) :],  # missing signature
        lambda u: "/" + "A" * 43 + u[u.index("/", 1) :],  # garbage signature
    ],
)
def test_tampered_urls_are_403(tamper) -> None:  # type: ignore[no-untyped-def]
    url = sign_path(build_path(SRC, ["w:300"], "webp"), SIGNED)
    with pytest.raises(SignatureError) as info:
        parse_path(tamper(url).encode(), SIGNED)
    assert info.value.status == 403


def test_wrong_key_is_403() -> None:
    other = load_settings({"IMGSRV_SIGNING_KEY": "00" * 32, "IMGSRV_SIGNING_SALT": SALT})
    url = sign_path(build_path(SRC, ["w:300"]), other)
    with pytest.raises(SignatureError):
        parse_path(url.encode(), SIGNED)


def test_unsigned_mode_accepts_underscore() -> None:
    assert sign_path("/w:1/plain/x", UNSIGNED) == "/_/w:1/plain/x"
    assert not parse_path(f"/_/w:1/plain/{SRC}".encode(), UNSIGNED).signed


def test_query_signature() -> None:
    url = sign_query(build_query(SRC, ["w:300", "rs:inside:100:100"], "webp"), SIGNED)
    path, _, query = url.partition("?")
    assert path == "/img"
    parsed = parse_query(query.encode(), SIGNED)
    assert parsed.signed and parsed.spec.format == "webp"
    with pytest.raises(SignatureError):
        parse_query(query.replace("w=300", "w=301").encode(), SIGNED)
    with pytest.raises(SignatureError):
        parse_query(query.rpartition("&sig=")[0].encode(), SIGNED)
    with pytest.raises(InvalidOption):
        parse_query(("sig=abc&" + query.rpartition("&sig=")[0]).encode(), SIGNED)


# ----------------------------------------------------------------------------- properties

sources = st.sampled_from(
    [SRC, "http://example.org/a b/ü.png?x=1&y=2", "local://sample.jpg", "https://h.example/%41@x"]
).map(lambda s: resolve_source(s, UNSIGNED))  # a spec always holds a resolved source
specs = st.builds(
    TransformSpec,
    source=sources,
    width=st.integers(0, 2000),
    height=st.integers(0, 1500),
    fit=st.sampled_from(["cover", "contain", "fill", "inside", "outside"]),
    gravity=st.sampled_from(["center", "n", "s", "e", "w", "ne", "nw", "se", "sw", "smart"]),
    focus=st.just((0.5, 0.5)),
    dpr=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    enlarge=st.booleans(),
    crop=st.none() | st.tuples(*[st.integers(0, 50)] * 2, *[st.integers(1, 500)] * 2),
    rotate=st.sampled_from([0, 90, 180, 270]),
    flip=st.sampled_from(["", "h", "v", "hv"]),
    blur=st.sampled_from([0.0, 0.5, 2.0, 12.25]),
    sharpen=st.sampled_from([0.0, 1.0, 3.5]),
    background=st.none() | st.tuples(*[st.integers(0, 255)] * 4),
    padding=st.tuples(*[st.integers(0, 50)] * 4),
    trim=st.none() | st.sampled_from([0.0, 10.0, 33.5]),
    quality=st.integers(0, 100),
    format=st.none() | st.sampled_from(["jpeg", "png", "webp", "avif", "gif", "auto"]),
    progressive=st.booleans(),
    strip=st.booleans(),
    ttl=st.integers(DAY, 3 * DAY),
)


@given(specs)
@hsettings(max_examples=300, deadline=None)
def test_spec_to_url_to_spec_round_trips(spec: TransformSpec) -> None:
    path = spec_path(spec)
    back = parse_path(sign_path(path, SIGNED).encode(), SIGNED).spec
    assert back == spec
    assert back.ttl == spec.ttl
    assert back.canonical() == spec.canonical()
    assert dataclasses.replace(back, ttl=DAY).canonical() == spec.canonical()


@given(st.floats(0, 1), st.floats(0, 1))
@hsettings(max_examples=100, deadline=None)
def test_focal_point_round_trips(x: float, y: float) -> None:
    spec = TransformSpec(source=SRC, width=10, gravity="fp", focus=(x, y))
    assert parse("/_" + spec_path(spec)) == spec


@given(st.text(max_size=200))
@hsettings(max_examples=500, deadline=None)
def test_garbage_paths_never_raise_anything_but_client_errors(text: str) -> None:
    for settings in (UNSIGNED, SIGNED):
        try:
            parse_path(("/" + text).encode("utf-8", "surrogatepass"), settings)
        except ImgsrvError as exc:
            assert 400 <= exc.status < 500
        try:
            parse_query(text.encode("utf-8", "surrogatepass"), settings)
        except ImgsrvError as exc:
            assert 400 <= exc.status < 500


def test_url_parser_remembers_good_urls_and_refuses_bad_ones_every_time() -> None:
    from imgsrv.urls import UrlParser

    parser = UrlParser(SIGNED, size=2)
    url = sign_path(build_path(SRC, ["w:300"]), SIGNED).encode()
    first = parser.path(url)
    assert parser.path(url) is first
    assert first == parse_path(url, SIGNED)
    tampered = url.replace(b"w:300", b"w:301")
    for _ in range(2):
        with pytest.raises(SignatureError):
            parser.path(tampered)
    query = sign_query(build_query(SRC, ["w:10"]), SIGNED).partition("?")[2].encode()
    assert parser.query(query) is parser.query(query)
    assert parser.query(query).spec.width == 10
