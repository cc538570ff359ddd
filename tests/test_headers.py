"""Headers read the same however they were built: from an ASGI scope (indexed by name only
when a lookup needs it), or rebuilt from what the inbox stored (``Headers.from_raw``)."""

from __future__ import annotations

from dispatcher.headers import Headers


def test_headers_from_their_raw_read_as_the_originals() -> None:
    original = Headers.from_asgi(
        [(b"content-type", b"application/json"), (b"x-tag", b"a"), (b"x-tag", b"b\xe9")]
    )
    rebuilt = Headers.from_raw(original.raw)
    assert rebuilt.raw == original.raw  # repeats and order kept
    expected = {"content-type": "application/json", "x-tag": "a, b\xe9"}
    assert dict(rebuilt) == dict(original) == expected
    assert rebuilt["X-Tag"] == "a, b\xe9" and rebuilt.getlist("x-tag") == ["a", "b\xe9"]
    assert rebuilt.value(b"content-type") == b"application/json"


def test_headers_from_raw_lower_their_names_and_take_the_general_path_for_the_rest() -> None:
    assert Headers.from_raw([("X-Trace", "t1")]).value(b"x-trace") == b"t1"
    beyond_latin1 = Headers.from_raw([("x-name", "Zoë ☃")])  # not what raw gives, still read
    assert beyond_latin1["x-name"] == Headers([("x-name", "Zoë ☃")])["x-name"]
    assert Headers.from_raw([(b"x-bytes", b"v")])["x-bytes"] == "v"


def test_asgi_headers_read_the_same_before_and_after_they_are_indexed() -> None:
    # from_asgi indexes names only when a lookup needs it; value() scans until then.
    def fresh() -> Headers:
        return Headers.from_asgi(
            [(b"content-type", b"application/json"), (b"x-tag", b"a"), (b"x-tag", b"b")]
        )

    scanned = fresh()
    assert scanned.value(b"content-type") == b"application/json"
    assert scanned.value(b"x-tag") == b"a, b"  # a repeated header's values, joined
    assert scanned.value(b"x-missing") is None
    indexed = fresh()
    assert indexed["X-Tag"] == "a, b" and len(indexed) == 2  # indexes them
    assert indexed.value(b"x-tag") == b"a, b" and indexed.value(b"x-missing") is None
    assert "content-type" in fresh() and list(fresh()) == ["content-type", "x-tag"]
    assert fresh().get("x-tag") == "a, b" and fresh().get("x-missing", "-") == "-"
