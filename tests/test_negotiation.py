from imgsrv.negotiation import accepted_formats


def test_explicit_types_with_positive_q_only() -> None:
    chrome = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
    assert accepted_formats(chrome) == {"avif", "webp"}
    assert accepted_formats("image/webp;q=0, image/avif") == {"avif"}
    assert accepted_formats("image/webp;q=0.0;foo=bar") == frozenset()
    assert accepted_formats("IMAGE/WEBP ; q=0.5") == {"webp"}
    assert accepted_formats("*/*") == frozenset()
    assert accepted_formats("image/*") == frozenset()
    assert accepted_formats("") == frozenset()
    assert accepted_formats("image/webp;q=bogus") == frozenset()
