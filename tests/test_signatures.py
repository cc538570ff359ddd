"""Tests for dispatcher.signatures: every scheme, cross-checked against the provider libraries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import standardwebhooks
import stripe
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.errors import DispatcherError, ValidationError
from dispatcher.headers import Headers
from dispatcher.signatures import (
    SCHEMES,
    GitHub,
    Hmac,
    Scheme,
    Shopify,
    SignatureError,
    Slack,
    StandardWebhooks,
    Stripe,
    from_spec,
)

T = 1_700_000_000  # a fixed "now" for signing and verifying
BODY = b'{"id": "evt_123", "type": "invoice.paid", "data": {"amount": 4200}}'


def whsec(raw: bytes) -> str:
    return "whsec_" + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Case:
    """One scheme under test, with three distinct secrets: new, old (rotated out), other."""

    id: str
    make: Callable[..., Scheme]  # make(secret_or_list, tolerance) -> scheme
    secrets: tuple[str, str, str]
    signed: tuple[str, ...]  # the headers the signature covers: changing one must fail
    timestamped: bool
    many: bool  # sign() puts one signature per secret

    @property
    def new(self) -> str:
        return self.secrets[0]

    @property
    def old(self) -> str:
        return self.secrets[1]

    @property
    def other(self) -> str:
        return self.secrets[2]


CASES = [
    Case(
        "standard-webhooks",
        lambda secret, tolerance=300: StandardWebhooks(secret, tolerance=tolerance),
        (whsec(b"new standard key 0123456789"), whsec(b"old standard key"), whsec(b"other key")),
        ("webhook-id", "webhook-timestamp", "webhook-signature"),
        timestamped=True,
        many=True,
    ),
    Case(
        "stripe",
        lambda secret, tolerance=300: Stripe(secret, tolerance=tolerance),
        ("whsec_newStripeSecret123", "whsec_oldStripeSecret456", "whsec_otherStripeSecret"),
        ("Stripe-Signature",),
        timestamped=True,
        many=True,
    ),
    Case(
        "github",
        lambda secret, tolerance=300: GitHub(secret),
        ("new-github-secret", "old-github-secret", "other-github-secret"),
        ("X-Hub-Signature-256",),
        timestamped=False,
        many=False,
    ),
    Case(
        "shopify",
        lambda secret, tolerance=300: Shopify(secret),
        ("new-shopify-secret", "old-shopify-secret", "other-shopify-secret"),
        ("X-Shopify-Hmac-Sha256",),
        timestamped=False,
        many=False,
    ),
    Case(
        "slack",
        lambda secret, tolerance=300: Slack(secret, tolerance=tolerance),
        ("8f742231b10e8888abcd99newnewnew", "8f742231b10e8888abcd99oldoldold", "otherslack"),
        ("X-Slack-Request-Timestamp", "X-Slack-Signature"),
        timestamped=True,
        many=False,
    ),
    Case(
        "hmac-sha256-hex",
        lambda secret, tolerance=300: Hmac(secret, header="X-Signature"),
        ("new-hmac-secret", "old-hmac-secret", "other-hmac-secret"),
        ("X-Signature",),
        timestamped=False,
        many=False,
    ),
    Case(
        "hmac-sha512-base64-prefix",
        lambda secret, tolerance=300: Hmac(
            secret, header="X-Body-Sig", algorithm="sha512", encoding="base64", prefix="sha512="
        ),
        ("new-hmac-secret", "old-hmac-secret", "other-hmac-secret"),
        ("X-Body-Sig",),
        timestamped=False,
        many=False,
    ),
]
TIMESTAMPED = [case for case in CASES if case.timestamped]
ids = pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
timestamped_ids = pytest.mark.parametrize(
    "case", TIMESTAMPED, ids=[case.id for case in TIMESTAMPED]
)


def failure(scheme: Scheme, headers: Any, body: bytes, now: float = T) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        scheme.verify(headers, body, now=now)
    return info.value


def set_timestamp(case: Case, headers: dict[str, str], text: str) -> dict[str, str]:
    """A copy of ``headers`` with the timestamp replaced by ``text``."""
    changed = dict(headers)
    if case.id == "stripe":
        items = changed["Stripe-Signature"].split(",")
        changed["Stripe-Signature"] = ",".join([f"t={text}", *items[1:]])
    elif case.id == "slack":
        changed["X-Slack-Request-Timestamp"] = text
    else:
        changed["webhook-timestamp"] = text
    return changed


# -- every scheme


def test_schemes_table_and_idempotency_keys() -> None:
    assert {name: cls.__name__ for name, cls in SCHEMES.items()} == {
        "standard-webhooks": "StandardWebhooks",
        "stripe": "Stripe",
        "github": "GitHub",
        "shopify": "Shopify",
        "slack": "Slack",
        "hmac": "Hmac",
    }
    assert all(cls.name == name for name, cls in SCHEMES.items())
    assert StandardWebhooks.default_idempotency_key == "$Header{webhook-id}"
    assert GitHub.default_idempotency_key == "$Header{X-GitHub-Delivery}"
    assert Shopify.default_idempotency_key == "$Header{X-Shopify-Webhook-Id}"
    assert Stripe.default_idempotency_key == "$Event{id}"
    assert Slack.default_idempotency_key is None
    assert Hmac.default_idempotency_key is None


def test_signature_error_is_a_dispatcher_error_with_a_known_reason() -> None:
    error = SignatureError("stale_timestamp", "too old", header="webhook-timestamp")
    assert isinstance(error, DispatcherError)
    assert (error.reason, error.header, str(error)) == (
        "stale_timestamp",
        "webhook-timestamp",
        "too old",
    )
    with pytest.raises(ValueError):
        SignatureError("expired", "not a reason")  # type: ignore[arg-type]


@ids
def test_round_trip(case: Case) -> None:
    scheme = case.make(case.new)
    headers = scheme.sign(BODY, timestamp=T)
    assert set(case.signed) <= set(headers)
    assert scheme.verify(headers, BODY, now=T) is None
    # bytearray and memoryview are raw bytes too
    scheme.verify(headers, bytearray(BODY), now=T)
    scheme.verify(headers, memoryview(BODY), now=T)


@ids
def test_round_trip_with_empty_and_binary_bodies(case: Case) -> None:
    scheme = case.make(case.new)
    for body in (b"", bytes(range(256)), "héllo wörld".encode()):
        scheme.verify(scheme.sign(body, timestamp=T), body, now=T)


@ids
def test_default_timestamp_is_now(case: Case) -> None:
    scheme = case.make(case.new)
    headers = scheme.sign(BODY)
    scheme.verify(headers, BODY)  # now defaults to time.time() as well
    if case.timestamped:
        stamp = set_timestamp(case, headers, "0")
        assert failure(scheme, stamp, BODY, now=time.time()).reason == "stale_timestamp"


@ids
@pytest.mark.parametrize(
    "tamper",
    [
        lambda body: body[:10] + bytes([body[10] ^ 1]) + body[11:],
        lambda body: body + b" ",
        lambda body: body[:-1],
        lambda body: b"",
        lambda body: json.dumps(json.loads(body)).encode(),  # re-serialized: spaces change
    ],
    ids=["flipped", "appended", "truncated", "emptied", "reserialized"],
)
def test_tampered_body_fails(case: Case, tamper: Callable[[bytes], bytes]) -> None:
    body = b'{"id":"evt_123","type":"invoice.paid"}'
    scheme = case.make(case.new)
    headers = scheme.sign(body, timestamp=T)
    changed = tamper(body)
    assert changed != body
    assert failure(scheme, headers, changed).reason == "invalid_signature"


@ids
def test_missing_headers_fail(case: Case) -> None:
    scheme = case.make(case.new)
    headers = scheme.sign(BODY, timestamp=T)
    assert failure(scheme, {}, BODY).reason == "missing_signature"
    for name in case.signed:
        dropped = {key: value for key, value in headers.items() if key != name}
        error = failure(scheme, dropped, BODY)
        assert error.reason == "missing_signature"
        assert name in str(error)
        assert error.header == name
        emptied = {**headers, name: ""}
        assert failure(scheme, emptied, BODY).reason == "missing_signature"


@ids
def test_wrong_secret_fails(case: Case) -> None:
    headers = case.make(case.other).sign(BODY, timestamp=T)
    error = failure(case.make(case.new), headers, BODY)
    assert error.reason == "invalid_signature"


@ids
def test_rotation(case: Case) -> None:
    rotated = case.make([case.new, case.old])
    rotated.verify(case.make(case.old).sign(BODY, timestamp=T), BODY, now=T)
    rotated.verify(case.make(case.new).sign(BODY, timestamp=T), BODY, now=T)
    other = case.make(case.other).sign(BODY, timestamp=T)
    assert failure(rotated, other, BODY).reason == "invalid_signature"


@ids
def test_sign_with_several_secrets(case: Case) -> None:
    # Standard Webhooks and Stripe put one signature per secret; the others sign with the first.
    headers = case.make([case.new, case.old]).sign(BODY, timestamp=T)
    case.make(case.new).verify(headers, BODY, now=T)
    if case.many:
        case.make(case.old).verify(headers, BODY, now=T)
    else:
        assert failure(case.make(case.old), headers, BODY).reason == "invalid_signature"
    assert failure(case.make(case.other), headers, BODY).reason == "invalid_signature"


@ids
def test_headers_are_looked_up_case_insensitively(case: Case) -> None:
    scheme = case.make(case.new)
    headers = scheme.sign(BODY, timestamp=T)
    for spelling in (str.upper, str.lower, str.swapcase, str.title):
        scheme.verify({spelling(name): value for name, value in headers.items()}, BODY, now=T)
    asgi = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    scheme.verify(Headers.from_asgi(asgi), BODY, now=T)


@ids
def test_body_must_be_bytes(case: Case) -> None:
    scheme = case.make(case.new)
    headers = scheme.sign(BODY, timestamp=T)
    with pytest.raises(TypeError, match="raw request bytes"):
        scheme.verify(headers, BODY.decode(), now=T)  # type: ignore[arg-type]


@ids
@pytest.mark.parametrize("secret", ["", "   ", b"", [], [""]], ids=repr)
def test_empty_secret_is_refused(case: Case, secret: Any) -> None:
    with pytest.raises(ValidationError) as info:
        case.make(secret)
    assert info.value.field == "verify"


@ids
def test_a_secret_of_the_wrong_type_is_refused(case: Case) -> None:
    for secret in (42, None, [b"ok", 42], "\ud800"):
        with pytest.raises(ValidationError) as info:
            case.make(secret)
        assert info.value.field == "verify"


@ids
def test_bytes_and_str_secrets_are_the_same_key(case: Case) -> None:
    if case.id == "standard-webhooks":
        # bytes are the raw key, as in the reference library; str is whsec_ + base64 of it
        as_bytes = StandardWebhooks(b"new standard key 0123456789")
    else:
        as_bytes = case.make(case.new.encode())
    as_bytes.verify(case.make(case.new).sign(BODY, timestamp=T), BODY, now=T)


# -- timestamps


@timestamped_ids
def test_timestamp_too_old_or_too_new_is_stale(case: Case) -> None:
    scheme = case.make(case.new)
    headers = scheme.sign(BODY, timestamp=T)
    old = failure(scheme, headers, BODY, now=T + 301)
    new = failure(scheme, headers, BODY, now=T - 301)
    assert (old.reason, new.reason) == ("stale_timestamp", "stale_timestamp")
    assert "old" in str(old) and "future" in str(new)


@timestamped_ids
@pytest.mark.parametrize("tolerance", [0, 10, 3600])
def test_tolerance_is_configurable_and_inclusive(case: Case, tolerance: int) -> None:
    scheme = case.make(case.new, tolerance)
    headers = scheme.sign(BODY, timestamp=T)
    for now in (T, T + tolerance, T - tolerance):
        scheme.verify(headers, BODY, now=now)
    for now in (T + tolerance + 0.001, T - tolerance - 0.001, T + tolerance + 1):
        assert failure(scheme, headers, BODY, now=now).reason == "stale_timestamp"


@timestamped_ids
def test_sign_uses_the_given_timestamp_truncated_to_seconds(case: Case) -> None:
    scheme = case.make(case.new, 0)
    headers = scheme.sign(BODY, timestamp=T + 0.75)
    scheme.verify(headers, BODY, now=T)
    assert failure(scheme, headers, BODY, now=T + 1).reason == "stale_timestamp"


@timestamped_ids
@pytest.mark.parametrize(
    "text",
    ["1700000000.5", "17e8", "+1700000000", " 1700000000", "1700000000 ", "1_700_000_000",
     "-1700000000", "abc", "\uff11\uff17\uff10\uff10", "1" * 40],
)  # fmt: skip
def test_malformed_timestamp_is_invalid(case: Case, text: str) -> None:
    scheme = case.make(case.new, 10**12)  # a tolerance that any parsed number would pass
    headers = set_timestamp(case, scheme.sign(BODY, timestamp=T), text)
    error = failure(scheme, headers, BODY)
    assert error.reason == "invalid_signature"
    assert "timestamp" in str(error)


@timestamped_ids
def test_timestamp_is_signed_as_received(case: Case) -> None:
    # A leading zero is the same number, but not the text the provider signed.
    scheme = case.make(case.new)
    headers = set_timestamp(case, scheme.sign(BODY, timestamp=T), f"0{T}")
    assert failure(scheme, headers, BODY).reason == "invalid_signature"


@timestamped_ids
def test_timestamp_is_checked_before_any_hmac(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    scheme = case.make(case.new)
    headers = case.make(case.other).sign(BODY, timestamp=T)  # wrong signature and stale

    def no_hmac(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an HMAC was computed before the timestamp was checked")

    monkeypatch.setattr(hmac, "new", no_hmac)
    assert failure(scheme, headers, BODY, now=T + 10_000).reason == "stale_timestamp"


# -- Standard Webhooks


def test_standard_webhooks_signature_list() -> None:
    scheme = StandardWebhooks(whsec(b"key one"))
    headers = scheme.sign(BODY, timestamp=T, msg_id="msg_1")
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(T)
    good = headers["webhook-signature"]
    assert good.startswith("v1,")
    wrong = StandardWebhooks(whsec(b"key two")).sign(BODY, timestamp=T, msg_id="msg_1")
    bad = wrong["webhook-signature"]
    # any one valid v1 passes; other versions are ignored, even if they carry the right value
    for listed in (f"{bad} {good}", f"{good} {bad}", f"v2,abc {good}", f"v1a,xyz {good}"):
        scheme.verify({**headers, "webhook-signature": listed}, BODY, now=T)
    for listed in (bad, "v2," + good[3:], good[3:], "v1," + good[3:].rstrip("="), "v1", "garbage"):
        error = failure(scheme, {**headers, "webhook-signature": listed}, BODY)
        assert error.reason == "invalid_signature"
    # the id is signed
    assert failure(scheme, {**headers, "webhook-id": "msg_2"}, BODY).reason == "invalid_signature"


def test_standard_webhooks_known_vector() -> None:
    # computed independently: HMAC-SHA256 over "id.timestamp.body" with the base64-decoded key
    key = b"\x01\x02\x03 standard key"
    secret = whsec(key)
    content = b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330." + b'{"test": 2432232314}'
    expected = "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": expected,
    }
    StandardWebhooks(secret).verify(headers, b'{"test": 2432232314}', now=1614265330)
    signed = StandardWebhooks(secret).sign(
        b'{"test": 2432232314}', timestamp=1614265330, msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek"
    )
    assert signed == headers


def test_standard_webhooks_secret_forms() -> None:
    key = b"sixteen byte key!"
    encoded = base64.b64encode(key).decode()
    assert encoded.endswith("=")
    headers = StandardWebhooks(key).sign(BODY, timestamp=T)
    for form in ("whsec_" + encoded, encoded, "whsec_" + encoded.rstrip("="), encoded.rstrip("=")):
        StandardWebhooks(form).verify(headers, BODY, now=T)


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_abcde", "whsec_é", "whsec_"])
def test_standard_webhooks_secret_must_be_base64(secret: str) -> None:
    with pytest.raises(ValidationError) as info:
        StandardWebhooks(secret)
    assert info.value.field == "verify"
    if secret != "whsec_":
        assert secret.removeprefix("whsec_") not in info.value.message


def test_standard_webhooks_sign_makes_fresh_ids() -> None:
    scheme = StandardWebhooks(whsec(b"key"))
    first, second = scheme.sign(BODY)["webhook-id"], scheme.sign(BODY)["webhook-id"]
    assert first != second
    assert first.startswith("msg_")


# -- Stripe


def test_stripe_header_forms() -> None:
    scheme = Stripe("whsec_stripe")
    good = scheme.sign(BODY, timestamp=T)["Stripe-Signature"]
    signature = good.split(",")[1]
    wrong = Stripe("whsec_wrong").sign(BODY, timestamp=T)["Stripe-Signature"].split(",")[1]
    for header in (
        f"t={T},{wrong},{signature}",
        f"t={T},{signature},v0=deadbeef",
        f"{signature},t={T}",
        f"t={T},{signature},scheme2=xyz",
    ):
        scheme.verify({"Stripe-Signature": header}, BODY, now=T)
    for header in (
        f"t={T},{wrong}",
        f"t={T},v0={signature[3:]}",  # v0 is not trusted
        f"t={T}",
        signature,  # no timestamp
        f"t={T},t={T},{signature}",  # two timestamps: ambiguous
        f"t={T},v1={signature[3:].upper()}",
        "nonsense",
    ):
        error = failure(scheme, {"Stripe-Signature": header}, BODY)
        assert error.reason == "invalid_signature", header


# -- GitHub


def test_github_documented_example() -> None:
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    scheme = GitHub("It's a Secret to Everybody")
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert scheme.sign(b"Hello, World!")["X-Hub-Signature-256"] == expected
    scheme.verify({"X-Hub-Signature-256": expected}, b"Hello, World!")
    assert failure(scheme, {"X-Hub-Signature-256": expected}, b"Hello, World").reason == (
        "invalid_signature"
    )


def test_github_header_forms() -> None:
    scheme = GitHub("secret")
    good = scheme.sign(BODY)["X-Hub-Signature-256"]
    for header in (good[7:], "sha1=" + good[7:], "SHA256=" + good[7:], good.upper(), good + "0"):
        error = failure(scheme, {"X-Hub-Signature-256": header}, BODY)
        assert error.reason == "invalid_signature", header


def test_github_and_shopify_send_fresh_uuid4_delivery_ids() -> None:
    for scheme, header in (
        (GitHub("s"), "X-GitHub-Delivery"),
        (Shopify("s"), "X-Shopify-Webhook-Id"),
    ):
        first, second = scheme.sign(BODY)[header], scheme.sign(BODY)[header]
        assert first != second
        assert uuid.UUID(first).version == 4
        assert scheme.sign(BODY, msg_id="delivery-1")[header] == "delivery-1"


# -- Shopify


def test_shopify_fixed_vector() -> None:
    # computed independently: base64 of HMAC-SHA256 over the raw body
    secret, body = "hush", b'{"id":820982911946154508,"email":"jon@example.com"}'
    expected = base64.b64encode(hmac.new(b"hush", body, hashlib.sha256).digest()).decode()
    assert Shopify(secret).sign(body)["X-Shopify-Hmac-Sha256"] == expected
    Shopify(secret).verify({"x-shopify-hmac-sha256": expected}, body)
    for header in (expected.rstrip("="), base64.urlsafe_b64encode(b"x" * 32).decode(), "%%%"):
        error = failure(Shopify(secret), {"X-Shopify-Hmac-Sha256": header}, body)
        assert error.reason == "invalid_signature"


# -- Slack


SLACK_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id="
    b"G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-"
    b"collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F3977008"
    b"85554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c4"
    b"47fce8b6703c"
)


def test_slack_documented_example() -> None:
    # https://api.slack.com/authentication/verifying-requests-from-slack
    scheme = Slack("8f742231b10e8888abcd99yyyzzz85a5")
    headers = {
        "X-Slack-Request-Timestamp": "1531420618",
        "X-Slack-Signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
    }
    scheme.verify(headers, SLACK_BODY, now=1531420618)
    assert scheme.sign(SLACK_BODY, timestamp=1531420618) == headers
    error = failure(scheme, headers, SLACK_BODY + b"&", now=1531420618)
    assert error.reason == "invalid_signature"


def test_slack_signature_needs_its_version_prefix() -> None:
    scheme = Slack("secret")
    headers = scheme.sign(BODY, timestamp=T)
    bare = {**headers, "X-Slack-Signature": headers["X-Slack-Signature"][3:]}
    v1 = {**headers, "X-Slack-Signature": "v1=" + headers["X-Slack-Signature"][3:]}
    assert failure(scheme, bare, BODY).reason == "invalid_signature"
    assert failure(scheme, v1, BODY).reason == "invalid_signature"


# -- generic HMAC


def test_hmac_fixed_vectors() -> None:
    body = b"payload"
    sha1 = hmac.new(b"k", body, hashlib.sha1)
    checks = [
        (Hmac("k", header="X-Sig"), hmac.new(b"k", body, hashlib.sha256).hexdigest()),
        (
            Hmac("k", header="X-Sig", algorithm="sha1", prefix="sha1="),
            "sha1=" + sha1.hexdigest(),
        ),
        (
            Hmac("k", header="X-Sig", algorithm="sha512", encoding="base64"),
            base64.b64encode(hmac.new(b"k", body, hashlib.sha512).digest()).decode(),
        ),
    ]
    for scheme, expected in checks:
        assert scheme.sign(body) == {"X-Sig": expected}
        scheme.verify({"x-sig": expected}, body)


def test_hmac_prefix_must_be_present() -> None:
    scheme = Hmac("k", header="X-Sig", prefix="sha256=")
    bare = scheme.sign(BODY)["X-Sig"].removeprefix("sha256=")
    error = failure(scheme, {"X-Sig": bare}, BODY)
    assert error.reason == "invalid_signature"
    assert "sha256=" in str(error)


@pytest.mark.parametrize(
    "options",
    [
        {"header": "X-Sig", "algorithm": "sha257"},
        {"header": "X-Sig", "algorithm": "shake_128"},  # variable length: no HMAC digest
        {"header": "X-Sig", "algorithm": 5},
        {"header": "X-Sig", "encoding": "base32"},
        {"header": "X-Sig", "encoding": "HEX"},
        {"header": ""},
        {"header": "X Sig"},
        {"header": "X-Sig:"},
        {"header": "X-Sig", "prefix": None},
    ],
    ids=repr,
)
def test_hmac_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        Hmac("k", **options)
    assert info.value.field == "verify"


# -- cross-checks with the provider libraries


def their_standard_headers(secret: str | bytes, msg_id: str, stamp: int, payload: str) -> dict:
    signature = standardwebhooks.Webhook(secret).sign(
        msg_id, datetime.fromtimestamp(stamp, tz=UTC), payload
    )
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": signature}


SW = CASES[0]


def test_standard_webhooks_theirs_sign_ours_verify() -> None:
    payload = '{"type": "user.created", "data": {"name": "Zoë"}}'
    headers = their_standard_headers(SW.new, "msg_abc", T, payload)
    StandardWebhooks(SW.new).verify(headers, payload.encode(), now=T)
    # rotation: signed with the old secret, we know both
    old = their_standard_headers(SW.old, "msg_abc", T, payload)
    StandardWebhooks([SW.new, SW.old]).verify(old, payload.encode(), now=T)
    other = their_standard_headers(SW.other, "msg_abc", T, payload)
    error = failure(StandardWebhooks([SW.new, SW.old]), other, payload.encode())
    assert error.reason == "invalid_signature"
    # tampered
    error = failure(StandardWebhooks(SW.new), headers, payload.encode() + b" ")
    assert error.reason == "invalid_signature"
    # a raw bytes key means the same to both
    raw = their_standard_headers(b"raw key bytes", "msg_abc", T, payload)
    StandardWebhooks(b"raw key bytes").verify(raw, payload.encode(), now=T)


def test_standard_webhooks_ours_sign_theirs_verify() -> None:
    payload = '{"type": "user.created", "data": {"name": "Zoë"}}'
    now = time.time()  # their verify reads the clock
    headers = StandardWebhooks(SW.new).sign(payload.encode(), timestamp=now)
    assert standardwebhooks.Webhook(SW.new).verify(payload, headers) == json.loads(payload)
    # one signature per secret: each secret alone verifies it, a third does not
    rotated = StandardWebhooks([SW.new, SW.old]).sign(payload.encode(), timestamp=now)
    standardwebhooks.Webhook(SW.new).verify(payload, rotated)
    standardwebhooks.Webhook(SW.old).verify(payload, rotated)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SW.other).verify(payload, rotated)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SW.new).verify(payload + " ", headers)
    # and theirs agrees that our stale requests are stale
    stale = StandardWebhooks(SW.new).sign(payload.encode(), timestamp=now - 3600)
    with pytest.raises(standardwebhooks.WebhookVerificationError, match="too old"):
        standardwebhooks.Webhook(SW.new).verify(payload, stale)


@settings(max_examples=50, deadline=None)
@given(
    payload=st.text(max_size=200),
    msg_id=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=30),
    key=st.binary(min_size=1, max_size=64),
)
def test_standard_webhooks_agrees_with_reference(payload: str, msg_id: str, key: bytes) -> None:
    secret = whsec(key)
    theirs = their_standard_headers(secret, msg_id, T, payload)
    ours = StandardWebhooks(secret).sign(payload.encode(), timestamp=T, msg_id=msg_id)
    assert ours == theirs
    StandardWebhooks(secret).verify(theirs, payload.encode(), now=T)


ST = CASES[1]


def test_stripe_theirs_sign_ours_verify() -> None:
    payload = json.dumps({"id": "evt_1", "object": "event", "type": "charge.succeeded"})
    header = stripe.WebhookSignature.generate_signature_header(payload, ST.new, timestamp=T)
    Stripe(ST.new).verify({"Stripe-Signature": header}, payload.encode(), now=T)
    # rotation, Stripe style: one v1 per secret in a single header
    sign = stripe.WebhookSignature._compute_signature
    both = f"t={T},v1={sign(f'{T}.{payload}', ST.new)},v1={sign(f'{T}.{payload}', ST.old)}"
    Stripe(ST.old).verify({"Stripe-Signature": both}, payload.encode(), now=T)
    old = stripe.WebhookSignature.generate_signature_header(payload, ST.old, timestamp=T)
    Stripe([ST.new, ST.old]).verify({"Stripe-Signature": old}, payload.encode(), now=T)
    other = stripe.WebhookSignature.generate_signature_header(payload, ST.other, timestamp=T)
    error = failure(Stripe([ST.new, ST.old]), {"Stripe-Signature": other}, payload.encode())
    assert error.reason == "invalid_signature"
    error = failure(Stripe(ST.new), {"Stripe-Signature": header}, payload.encode()[:-1])
    assert error.reason == "invalid_signature"


def test_stripe_ours_sign_theirs_verify() -> None:
    payload = json.dumps({"id": "evt_42", "object": "event", "type": "charge.succeeded"})
    now = time.time()
    header = Stripe(ST.new).sign(payload.encode(), timestamp=now)["Stripe-Signature"]
    assert stripe.WebhookSignature.verify_header(payload, header, ST.new, tolerance=300)
    event = stripe.Webhook.construct_event(payload, header, ST.new)
    assert event.id == "evt_42"
    rotated = Stripe([ST.new, ST.old]).sign(payload.encode(), timestamp=now)["Stripe-Signature"]
    stripe.WebhookSignature.verify_header(payload, rotated, ST.old, tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(payload, rotated, ST.other, tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(payload + " ", header, ST.new, tolerance=300)
    stale = Stripe(ST.new).sign(payload.encode(), timestamp=now - 3600)["Stripe-Signature"]
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.WebhookSignature.verify_header(payload, stale, ST.new, tolerance=300)


@settings(max_examples=50, deadline=None)
@given(payload=st.text(max_size=200), secret=st.text(min_size=1, max_size=40).filter(str.strip))
def test_stripe_agrees_with_reference(payload: str, secret: str) -> None:
    theirs = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=T)
    assert Stripe(secret).sign(payload.encode(), timestamp=T) == {"Stripe-Signature": theirs}
    Stripe(secret).verify({"Stripe-Signature": theirs}, payload.encode(), now=T)


# -- any change to a signed request fails (hypothesis)


@ids
@settings(max_examples=120, deadline=None)
@given(body=st.binary(max_size=300), data=st.data())
def test_any_mutation_fails(case: Case, body: bytes, data: st.DataObject) -> None:
    tolerance = data.draw(st.integers(0, 3600), label="tolerance")
    stamp = data.draw(st.integers(10**9, 2 * 10**9), label="timestamp")
    scheme = case.make(case.new, tolerance)
    headers = scheme.sign(body, timestamp=stamp)
    offset = data.draw(
        st.floats(-tolerance, tolerance) if case.timestamped else st.floats(-1e9, 1e9)
    )
    scheme.verify(headers, body, now=stamp + offset)  # unmutated, within tolerance: passes

    kinds = ["insert-byte", "change-header", "drop-header"]
    kinds += ["flip-byte", "delete-byte"] if body else []
    kinds += ["shift-time"] if case.timestamped else []
    kind = data.draw(st.sampled_from(kinds), label="mutation")
    now = stamp + offset
    expected: tuple[str, ...] = ("invalid_signature",)
    if kind == "flip-byte":
        at = data.draw(st.integers(0, len(body) - 1))
        mask = data.draw(st.integers(1, 255))
        body = body[:at] + bytes([body[at] ^ mask]) + body[at + 1 :]
    elif kind == "insert-byte":
        at = data.draw(st.integers(0, len(body)))
        body = body[:at] + bytes([data.draw(st.integers(0, 255))]) + body[at:]
    elif kind == "delete-byte":
        at = data.draw(st.integers(0, len(body) - 1))
        body = body[:at] + body[at + 1 :]
    elif kind == "change-header":
        # Replace or delete one character. (Inserting a separator next to another adds an
        # empty list item, which the provider formats allow, so it is not a change.)
        name = data.draw(st.sampled_from(case.signed))
        value = headers[name]
        at = data.draw(st.integers(0, len(value) - 1))
        if data.draw(st.booleans(), label="replace"):
            char = data.draw(st.characters(codec="latin-1").filter(lambda c: c != value[at]))
            headers = {**headers, name: value[:at] + char + value[at + 1 :]}
        else:
            headers = {**headers, name: value[:at] + value[at + 1 :]}
        # a changed timestamp may be far enough off to be stale before it is mismatched
        expected = ("invalid_signature", "stale_timestamp")
    elif kind == "drop-header":
        name = data.draw(st.sampled_from(case.signed))
        headers = {key: value for key, value in headers.items() if key != name}
        expected = ("missing_signature",)
    else:  # shift-time
        beyond = data.draw(st.floats(0.001, 1e6))
        now = stamp + (tolerance + beyond) * data.draw(st.sampled_from([1, -1]))
        expected = ("stale_timestamp",)
    assert failure(scheme, headers, body, now=now).reason in expected


# -- catalog specs


def signed_by(case: Case, secret: str) -> tuple[dict[str, str], bytes]:
    return case.make(secret).sign(BODY, timestamp=T), BODY


SPEC_CASES = [
    ({"scheme": "standard-webhooks", "secret_env": "SW_SECRET"}, CASES[0]),
    ({"scheme": "stripe", "secret_env": "STRIPE_WEBHOOK_SECRET", "tolerance": 60}, CASES[1]),
    ({"scheme": "github", "secret_env": "GITHUB_SECRET"}, CASES[2]),
    ({"scheme": "shopify", "secret_env": "SHOPIFY_SECRET"}, CASES[3]),
    ({"scheme": "slack", "secret_env": "SLACK_SIGNING_SECRET"}, CASES[4]),
    ({"scheme": "hmac", "secret_env": "HMAC_SECRET", "header": "X-Signature"}, CASES[5]),
    (
        {
            "scheme": "hmac",
            "secret_env": "HMAC_SECRET",
            "header": "X-Body-Sig",
            "algorithm": "sha512",
            "encoding": "base64",
            "prefix": "sha512=",
        },
        CASES[6],
    ),
]


@pytest.mark.parametrize(("spec", "case"), SPEC_CASES, ids=[c.id for _, c in SPEC_CASES])
def test_from_spec_reads_secrets_from_environ(spec: dict, case: Case) -> None:
    environ = {spec["secret_env"]: case.new}
    scheme = from_spec(spec, environ)
    assert type(scheme) is SCHEMES[spec["scheme"]]
    headers, body = signed_by(case, case.new)
    scheme.verify(headers, body, now=T)
    wrong, body = signed_by(case, case.other)
    assert failure(scheme, wrong, body).reason == "invalid_signature"
    # round trip: names, never secrets
    assert scheme.to_spec() == spec
    assert case.new not in repr(scheme.to_spec())
    from_spec(scheme.to_spec(), environ).verify(headers, body, now=T)


@pytest.mark.parametrize(("spec", "case"), SPEC_CASES, ids=[c.id for _, c in SPEC_CASES])
def test_from_spec_with_a_list_of_env_names(spec: dict, case: Case) -> None:
    spec = {**spec, "secret_env": ["NEW_SECRET", "OLD_SECRET"]}
    environ = {"NEW_SECRET": case.new, "OLD_SECRET": case.old}
    scheme = from_spec(spec, environ)
    for secret in (case.new, case.old):
        scheme.verify(*signed_by(case, secret), now=T)
    assert failure(scheme, *signed_by(case, case.other)).reason == "invalid_signature"
    assert scheme.to_spec() == spec
    assert from_spec(scheme.to_spec(), environ).to_spec() == spec


def test_from_spec_tolerance() -> None:
    scheme = from_spec({"scheme": "slack", "secret_env": "S", "tolerance": 5}, {"S": "secret"})
    headers = Slack("secret").sign(BODY, timestamp=T)
    scheme.verify(headers, BODY, now=T + 5)
    assert failure(scheme, headers, BODY, now=T + 6).reason == "stale_timestamp"


def test_from_spec_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_TEST_GITHUB_SECRET", "from the environment")
    scheme = from_spec({"scheme": "github", "secret_env": "DISPATCHER_TEST_GITHUB_SECRET"})
    scheme.verify(GitHub("from the environment").sign(BODY), BODY)
    direct = GitHub.from_env("DISPATCHER_TEST_GITHUB_SECRET")
    direct.verify(GitHub("from the environment").sign(BODY), BODY)
    monkeypatch.delenv("DISPATCHER_TEST_GITHUB_SECRET")
    with pytest.raises(ValidationError, match="DISPATCHER_TEST_GITHUB_SECRET is not set"):
        GitHub.from_env("DISPATCHER_TEST_GITHUB_SECRET")


@pytest.mark.parametrize("cls", list(SCHEMES.values()), ids=list(SCHEMES))
def test_every_scheme_has_from_env(cls: type[Scheme]) -> None:
    case = next(c for c in CASES if c.make(c.new).name == cls.name)
    options = {"header": "X-Signature"} if cls is Hmac else {}
    scheme = cls.from_env("VAR", environ={"VAR": case.new}, **options)
    assert isinstance(scheme, cls)
    scheme.verify(*signed_by(case, case.new), now=T)
    assert scheme.to_spec() == {"scheme": cls.name, "secret_env": "VAR", **options}


STRIPE_ENV = {"STRIPE_WEBHOOK_SECRET": "whsec_x"}

SPEC_ERRORS = [
    (
        {"scheme": "stripe", "secret_env": "STRIPE_WEBHOOK_SECRET"},
        {},
        "environment variable STRIPE_WEBHOOK_SECRET is not set;"
        " export it or change verify.secret_env",
    ),
    (
        {"scheme": "stripe", "secret_env": ["STRIPE_WEBHOOK_SECRET", "STRIPE_OLD"]},
        STRIPE_ENV,
        "environment variable STRIPE_OLD is not set; export it or change verify.secret_env",
    ),
    (
        {"scheme": "stripe", "secret_env": "STRIPE_WEBHOOK_SECRET"},
        {"STRIPE_WEBHOOK_SECRET": ""},
        "environment variable STRIPE_WEBHOOK_SECRET is empty; export the secret in it or change"
        " verify.secret_env",
    ),
    (
        {"scheme": "stripe", "secret": "whsec_inline"},
        {},
        "secrets are not written in catalog files; put it in an environment variable"
        " and name it with secret_env",
    ),
    (
        {"scheme": "slack", "signing_secret": "abc", "secret_env": "X"},
        {"X": "s3cr3t-value"},
        "secrets are not written in catalog files",
    ),
    ({"scheme": "stripe"}, STRIPE_ENV, "verify.secret_env is missing; name the environment"),
    ({"scheme": "strpe", "secret_env": "X"}, {"X": "s3cr3t-value"}, "did you mean 'stripe'?"),
    (
        {"scheme": "paypal", "secret_env": "X"},
        {"X": "s3cr3t-value"},
        "unknown verify.scheme 'paypal'",
    ),
    ({"scheme": 7, "secret_env": "X"}, {"X": "s3cr3t-value"}, "unknown verify.scheme 7"),
    ({"secret_env": "X"}, {"X": "s3cr3t-value"}, "verify.scheme is missing"),
    (
        {"scheme": "stripe", "secret_env": "STRIPE_WEBHOOK_SECRET", "tolerence": 5},
        STRIPE_ENV,
        "unknown key verify.tolerence (did you mean tolerance?)",
    ),
    (
        {"scheme": "github", "secret_env": "X", "tolerance": 5},
        {"X": "s3cr3t-value"},
        "unknown key verify.tolerance for scheme github; the keys it takes are scheme, secret_env",
    ),
    (
        {"scheme": "hmac", "secret_env": "X"},
        {"X": "s3cr3t-value"},
        "verify.header is missing; set it to the name of the header",
    ),
    (
        {"scheme": "hmac", "secret_env": "X", "header": "X-Sig", "algorithm": "rot13"},
        {"X": "s3cr3t-value"},
        "algorithm 'rot13' is not a hash",
    ),
    (
        {"scheme": "stripe", "secret_env": "STRIPE_WEBHOOK_SECRET", "tolerance": -1},
        STRIPE_ENV,
        "tolerance must be a number of seconds, 0 or more",
    ),
    (
        {"scheme": "stripe", "secret_env": "STRIPE_WEBHOOK_SECRET", "tolerance": "5m"},
        STRIPE_ENV,
        "tolerance must be a number of seconds",
    ),
    (
        {"scheme": "stripe", "secret_env": "STRIPE_WEBHOOK_SECRET", "tolerance": True},
        STRIPE_ENV,
        "tolerance must be a number of seconds",
    ),
    ({"scheme": "stripe", "secret_env": 42}, {}, "verify.secret_env must be an environment"),
    ({"scheme": "stripe", "secret_env": []}, {}, "verify.secret_env must be an environment"),
    ({"scheme": "stripe", "secret_env": [""]}, {}, "verify.secret_env must be an environment"),
    (
        {"scheme": "standard-webhooks", "secret_env": "SW"},
        {"SW": "whsec_!!not-base64!!"},
        "environment variable SW: the Standard Webhooks secret is not valid base64",
    ),
    ("stripe", {}, "verify must be a mapping"),
]


@pytest.mark.parametrize(("spec", "environ", "fix"), SPEC_ERRORS, ids=range(len(SPEC_ERRORS)))
def test_from_spec_errors_name_the_field_and_the_fix(spec: Any, environ: dict, fix: str) -> None:
    with pytest.raises(ValidationError) as info:
        from_spec(spec, environ)
    assert info.value.field == "verify"
    assert fix in info.value.message
    for value in environ.values():
        if value:
            assert value not in str(info.value)
    if isinstance(spec, dict):
        for key in ("secret", "signing_secret"):
            if key in spec:
                assert spec[key] not in str(info.value)


@ids
def test_to_spec_of_a_literal_secret_explains_from_env(case: Case) -> None:
    scheme = case.make(case.new)
    with pytest.raises(ValidationError) as info:
        scheme.to_spec()
    assert info.value.field == "verify"
    assert f'{type(scheme).__name__}.from_env("VAR", ...)' in info.value.message
    assert case.new not in info.value.message


def test_from_env_keeps_the_list_form() -> None:
    environ = {"A": "one", "B": "two"}
    assert GitHub.from_env(["A"], environ=environ).to_spec()["secret_env"] == ["A"]
    assert GitHub.from_env("A", environ=environ).to_spec()["secret_env"] == "A"
    assert GitHub.from_env(("A", "B"), environ=environ).to_spec()["secret_env"] == ["A", "B"]


# -- secrets never shown


def secret_texts(case: Case, secret: str) -> list[str]:
    texts = [secret]
    if case.id == "standard-webhooks":
        texts.append(secret.removeprefix("whsec_"))
        texts.append(base64.b64decode(secret.removeprefix("whsec_")).decode("latin-1"))
    return texts


@ids
def test_repr_never_shows_a_secret(case: Case) -> None:
    literal = case.make([case.new, case.old])
    from_env = type(literal).from_env(
        ["NEW", "OLD"],
        environ={"NEW": case.new, "OLD": case.old},
        **({"header": "X-Signature"} if isinstance(literal, Hmac) else {}),
    )
    for scheme in (literal, from_env):
        text = repr(scheme) + str(scheme)
        for secret in (case.new, case.old):
            for shown in secret_texts(case, secret):
                assert shown not in text
    assert "2 secrets hidden" in repr(literal)
    assert "NEW" in repr(from_env)


@ids
def test_errors_never_show_the_secret_or_the_expected_signature(case: Case) -> None:
    scheme = case.make(case.new)
    good = scheme.sign(BODY, timestamp=T, msg_id="msg_fixed")
    # the signature values, whole and without their "sha256=", "v1," or "t=...,v1=" framing
    expected = [good[name] for name in case.signed if "timestamp" not in name.lower()]
    expected += [re.split("[=,]", value, maxsplit=1)[-1] for value in expected]
    expected += [value.rsplit("=", 1)[-1] for value in expected if "v1=" in value]
    expected = [value for value in expected if len(value) >= 20]
    assert expected
    wrong = case.make(case.other).sign(BODY, timestamp=T, msg_id="msg_fixed")
    errors = [
        failure(scheme, wrong, BODY),
        failure(scheme, good, BODY + b"x"),
        failure(scheme, {}, BODY),
    ]
    if case.timestamped:
        errors.append(failure(scheme, good, BODY, now=T + 10_000))
    for error in errors:
        shown = f"{error}|{error!r}|{error.args}|{error.message}"
        for secret in secret_texts(case, case.new):
            assert secret not in shown
        for signature in expected:
            assert signature not in shown
        assert error.header in case.signed
