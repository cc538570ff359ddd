"""Signature schemes: prove that a webhook request was sent by the provider.

A webhook endpoint is public, so every request is checked against a secret shared with the
provider before anything else reads it. Each scheme knows one provider's headers:

    scheme.verify(headers, body)   # raises SignatureError, or returns None
    scheme.sign(body)              # the headers the provider would send (tests, `dispatcher send`)

Rules every scheme keeps:

* The HMAC covers the raw body bytes as received; nothing is parsed or re-serialized first.
* Signatures are compared with ``hmac.compare_digest``, as the exact text the provider sends
  (lower-case hex, canonical base64), so there is one accepted spelling of each signature.
* Timestamped schemes reject a timestamp more than ``tolerance`` seconds away from now in
  either direction, and check it before any HMAC is computed.
* A header that is absent or empty is ``missing_signature``. A header that is present but
  malformed (including a timestamp that is not a plain integer) is ``invalid_signature``:
  the sender did sign, just not in a form we accept.
* Several secrets may be configured (rotation); a request signed with any of them passes.
  ``sign`` signs with the first one, except Standard Webhooks and Stripe, whose signature
  header carries a list: there ``sign`` puts one signature per secret, as those providers
  do while a secret is being rolled.
* Neither error messages nor ``repr`` show a secret or an expected signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Self

from dispatcher.errors import DispatcherError, ValidationError, closest
from dispatcher.headers import Headers

__all__ = [
    "SCHEMES",
    "GitHub",
    "Hmac",
    "Scheme",
    "Shopify",
    "SignatureError",
    "Slack",
    "StandardWebhooks",
    "Stripe",
    "from_spec",
]

Reason = Literal["missing_signature", "invalid_signature", "stale_timestamp"]
Secret = str | bytes
Secrets = Secret | Sequence[Secret]

_REASONS = ("missing_signature", "invalid_signature", "stale_timestamp")
# Plain decimal seconds only: int() would also take "+1", " 1" and "1_0", spellings no
# provider sends; 15 digits bounds the parse.
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token
# Keys that would put a secret in a catalog file: refused with a message saying where it goes.
_INLINE_SECRET_KEYS = ("secret", "secrets", "signing_secret")


class SignatureError(DispatcherError):
    """A request failed verification. ``reason`` is one of ``missing_signature``,
    ``invalid_signature`` or ``stale_timestamp``; ``header`` names the header at fault."""

    def __init__(self, reason: Reason, message: str, *, header: str | None = None) -> None:
        if reason not in _REASONS:
            raise ValueError(f"reason must be one of {', '.join(_REASONS)}, got {reason!r}")
        self.reason = reason
        self.message = message
        self.header = header
        super().__init__(message)

    def __repr__(self) -> str:
        return f"SignatureError(reason={self.reason!r}, message={self.message!r})"


class Scheme:
    """Shared plumbing: secrets, environment variable names, specs and repr.

    Subclasses set ``name`` and implement ``_verify`` and ``sign``; ``_OPTIONS`` lists the
    spec keys they take besides ``scheme`` and ``secret_env``, ``_REQUIRED`` those that must be
    given.
    """

    name: ClassVar[str]
    default_idempotency_key: ClassVar[str | None] = None
    _OPTIONS: ClassVar[tuple[str, ...]] = ()
    _REQUIRED: ClassVar[dict[str, str]] = {}  # required spec key -> what it holds

    def __init__(self, secret: Secrets) -> None:
        self._keys = self._keys_of(secret)
        # Set by from_env only: a scheme built from a literal secret cannot be written to a
        # catalog file, because the file would have to hold the secret.
        self._secret_env: str | list[str] | None = None

    @classmethod
    def from_env(
        cls, names: str | list[str], *, environ: Mapping[str, str] | None = None, **options: Any
    ) -> Self:
        """Build from the secrets in environment variables ``names`` (several for rotation)."""
        env = os.environ if environ is None else environ
        name_list = _env_names(names)
        secrets: list[str] = []
        for var in name_list:
            value = env.get(var)
            if value is None:
                raise ValidationError(
                    "verify",
                    f"environment variable {var} is not set; export it or change verify.secret_env",
                )
            if not value.strip():
                raise ValidationError(
                    "verify",
                    f"environment variable {var} is empty; export the secret in it or change"
                    " verify.secret_env",
                )
            try:
                cls._key(value)
            except ValidationError as error:
                raise ValidationError(
                    "verify", f"environment variable {var}: {error.message}"
                ) from None
            secrets.append(value)
        scheme = cls(secrets, **options)
        scheme._secret_env = names if isinstance(names, str) else list(names)
        return scheme

    def verify(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> None:
        """Raise SignatureError unless ``body`` was signed by the provider."""
        found = headers if isinstance(headers, Headers) else Headers(headers)
        self._verify(found, _raw(body), time.time() if now is None else now)

    def sign(
        self, body: bytes, *, timestamp: float | None = None, msg_id: str | None = None
    ) -> dict[str, str]:
        """The headers the provider would send with ``body``.

        ``timestamp`` is used by timestamped schemes (default now); ``msg_id`` by schemes
        that send a delivery id (default a fresh random id). Others ignore them.
        """
        raise NotImplementedError

    def to_spec(self) -> dict[str, Any]:
        """The catalog-file form: environment variable names, never secrets."""
        if self._secret_env is None:
            cls = type(self).__name__
            raise ValidationError(
                "verify",
                f"this {cls} scheme was built with a literal secret, and secrets are not written"
                f' in catalog files; build it with {cls}.from_env("VAR", ...) to save it',
            )
        env = self._secret_env if isinstance(self._secret_env, str) else list(self._secret_env)
        return {"scheme": self.name, "secret_env": env, **self._spec_options()}

    def __repr__(self) -> str:
        if self._secret_env is not None:
            where = f"secret_env={self._secret_env!r}"
        else:
            count = len(self._keys)
            where = f"<{count} secret{'s' if count != 1 else ''} hidden>"
        options = "".join(f", {key}={value!r}" for key, value in self._spec_options().items())
        return f"{type(self).__name__}({where}{options})"

    # -- for subclasses

    def _verify(self, headers: Headers, body: bytes, now: float) -> None:
        raise NotImplementedError

    def _spec_options(self) -> dict[str, Any]:
        """Options that differ from their defaults (kept out of specs to keep files short)."""
        return {}

    @classmethod
    def _key(cls, secret: Secret) -> bytes:
        """The HMAC key for one secret: the text as UTF-8, or bytes as they are."""
        # A text secret of only whitespace is a copy-paste slip; random key bytes may be anything.
        blank = not secret.strip() if isinstance(secret, str) else not secret
        if blank:
            raise ValidationError("verify", "the secret is empty; copy it from the provider")
        if not isinstance(secret, str):
            return bytes(secret)
        try:
            # surrogateescape gives back the bytes of an environment value that is not UTF-8.
            return secret.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise ValidationError("verify", "the secret is not valid text") from None

    @classmethod
    def _keys_of(cls, secret: Secrets) -> tuple[bytes, ...]:
        if isinstance(secret, str | bytes | bytearray):
            secrets: list[Secret] = [secret]
        elif isinstance(secret, Sequence):
            secrets = list(secret)
        else:
            raise ValidationError(
                "verify",
                f"the secret must be str, bytes or a list of them, not {type(secret).__name__}",
            )
        if not secrets:
            raise ValidationError("verify", "no secrets given; pass at least one")
        for item in secrets:
            if not isinstance(item, str | bytes | bytearray):
                raise ValidationError(
                    "verify", f"each secret must be str or bytes, not {type(item).__name__}"
                )
        return tuple(cls._key(item) for item in secrets)

    def _mac(self, key: bytes, content: bytes) -> bytes:
        return hmac.new(key, content, hashlib.sha256).digest()

    def _matches(self, received: Sequence[str], expected_of: Callable[[bytes], bytes]) -> bool:
        """True if any received signature equals ``expected_of(key)`` for any key."""
        return any(
            hmac.compare_digest(_utf8(candidate), expected_of(key))
            for key in self._keys
            for candidate in received
        )


class _Timestamped(Scheme):
    """A scheme whose signature covers a timestamp, so old requests cannot be replayed."""

    _OPTIONS = ("tolerance",)

    def __init__(self, secret: Secrets, tolerance: float = 300) -> None:
        super().__init__(secret)
        self.tolerance = _tolerance(tolerance)

    def _spec_options(self) -> dict[str, Any]:
        return {} if self.tolerance == 300 else {"tolerance": self.tolerance}

    def _check_time(self, header: str, text: str, now: float, *, label: str = "") -> None:
        """Reject a malformed timestamp, or one outside ``tolerance`` of ``now``.

        ``label`` names the timestamp in messages when it is part of a header, not all of it.
        """
        label = label or header
        if not _TIMESTAMP.fullmatch(text):
            raise SignatureError(
                "invalid_signature",
                f"{label} is not a timestamp: expected whole seconds since the epoch",
                header=header,
            )
        skew = now - int(text)
        if abs(skew) <= self.tolerance:
            return
        direction = "old" if skew > 0 else "in the future"
        raise SignatureError(
            "stale_timestamp",
            f"{label} is {_seconds(abs(skew))}s {direction}, beyond the "
            f"{_seconds(self.tolerance)}s tolerance: a replayed request, or a wrong clock",
            header=header,
        )


class StandardWebhooks(_Timestamped):
    """The Standard Webhooks spec (what Svix sends).

    The secret is ``whsec_`` + base64 of the key (the prefix is optional). A bytes secret is
    the key itself, as in the reference library.
    """

    name = "standard-webhooks"
    default_idempotency_key = "$Header{webhook-id}"

    @classmethod
    def _key(cls, secret: Secret) -> bytes:
        if not isinstance(secret, str):
            return super()._key(secret)
        text = secret.removeprefix("whsec_")
        try:
            # Padding is optional in what providers display, so it is restored here.
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except ValueError:
            raise ValidationError(
                "verify",
                "the Standard Webhooks secret is not valid base64; it should be whsec_ followed"
                " by base64, copied whole from the provider",
            ) from None
        if not key:
            raise ValidationError("verify", "the secret is empty; copy it from the provider")
        return key

    def _verify(self, headers: Headers, body: bytes, now: float) -> None:
        msg_id, stamp, signature = _require(
            headers, "webhook-id", "webhook-timestamp", "webhook-signature"
        )
        self._check_time("webhook-timestamp", stamp, now)
        # Space-separated "version,signature" pairs; only v1 (HMAC-SHA256) is defined.
        received = [
            value
            for version, comma, value in (part.partition(",") for part in signature.split(" "))
            if comma and version == "v1"
        ]
        if not received:
            raise SignatureError(
                "invalid_signature",
                "webhook-signature has no v1 signature: expected space-separated v1,<base64>",
                header="webhook-signature",
            )
        # The timestamp is signed as the text received, so a re-spelled one does not match.
        content = _utf8(f"{msg_id}.{stamp}.") + body
        if not self._matches(received, lambda key: _b64(self._mac(key, content))):
            raise _no_match("webhook-signature")

    def sign(
        self, body: bytes, *, timestamp: float | None = None, msg_id: str | None = None
    ) -> dict[str, str]:
        msg_id = f"msg_{uuid.uuid4().hex}" if msg_id is None else msg_id
        stamp = str(int(time.time() if timestamp is None else timestamp))
        content = _utf8(f"{msg_id}.{stamp}.") + _raw(body)
        signature = " ".join(f"v1,{_b64(self._mac(key, content)).decode()}" for key in self._keys)
        return {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature}


class Stripe(_Timestamped):
    """Stripe: ``Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>...]``; the secret is used as text."""

    name = "stripe"
    # Stripe sends no delivery-id header, and a retry resends the same event id.
    default_idempotency_key = "$Event{id}"

    def _verify(self, headers: Headers, body: bytes, now: float) -> None:
        (header,) = _require(headers, "Stripe-Signature")
        stamps: list[str] = []
        received: list[str] = []
        for item in header.split(","):
            key, _, value = item.partition("=")
            if key == "t":
                stamps.append(value)
            elif key == "v1":
                received.append(value)
            # v0 and unknown schemes are ignored, as Stripe documents.
        if len(stamps) != 1:
            problem = "no t=<timestamp>" if not stamps else "more than one t=<timestamp>"
            raise SignatureError(
                "invalid_signature", f"Stripe-Signature has {problem}", header="Stripe-Signature"
            )
        self._check_time("Stripe-Signature", stamps[0], now, label="Stripe-Signature t=")
        if not received:
            raise SignatureError(
                "invalid_signature",
                "Stripe-Signature has no v1=<hex> signature",
                header="Stripe-Signature",
            )
        content = _utf8(f"{stamps[0]}.") + body
        if not self._matches(received, lambda key: _hex(self._mac(key, content))):
            raise _no_match("Stripe-Signature")

    def sign(
        self, body: bytes, *, timestamp: float | None = None, msg_id: str | None = None
    ) -> dict[str, str]:
        stamp = str(int(time.time() if timestamp is None else timestamp))
        content = _utf8(f"{stamp}.") + _raw(body)
        signatures = ",".join(f"v1={_hex(self._mac(key, content)).decode()}" for key in self._keys)
        return {"Stripe-Signature": f"t={stamp},{signatures}"}


class GitHub(Scheme):
    """GitHub: ``X-Hub-Signature-256: sha256=<hex>`` over the body. No timestamp."""

    name = "github"
    default_idempotency_key = "$Header{X-GitHub-Delivery}"

    def _verify(self, headers: Headers, body: bytes, now: float) -> None:
        (header,) = _require(headers, "X-Hub-Signature-256")
        if not header.startswith("sha256="):
            raise SignatureError(
                "invalid_signature",
                "X-Hub-Signature-256 is malformed: expected sha256=<hex>",
                header="X-Hub-Signature-256",
            )
        received = [header.removeprefix("sha256=")]
        if not self._matches(received, lambda key: _hex(self._mac(key, body))):
            raise _no_match("X-Hub-Signature-256")

    def sign(
        self, body: bytes, *, timestamp: float | None = None, msg_id: str | None = None
    ) -> dict[str, str]:
        return {
            "X-Hub-Signature-256": f"sha256={_hex(self._mac(self._keys[0], _raw(body))).decode()}",
            "X-GitHub-Delivery": str(uuid.uuid4()) if msg_id is None else msg_id,
        }


class Shopify(Scheme):
    """Shopify: ``X-Shopify-Hmac-Sha256: <base64>`` over the body. No timestamp."""

    name = "shopify"
    default_idempotency_key = "$Header{X-Shopify-Webhook-Id}"

    def _verify(self, headers: Headers, body: bytes, now: float) -> None:
        (header,) = _require(headers, "X-Shopify-Hmac-Sha256")
        if not self._matches([header], lambda key: _b64(self._mac(key, body))):
            raise _no_match("X-Shopify-Hmac-Sha256")

    def sign(
        self, body: bytes, *, timestamp: float | None = None, msg_id: str | None = None
    ) -> dict[str, str]:
        return {
            "X-Shopify-Hmac-Sha256": _b64(self._mac(self._keys[0], _raw(body))).decode(),
            "X-Shopify-Webhook-Id": str(uuid.uuid4()) if msg_id is None else msg_id,
        }


class Slack(_Timestamped):
    """Slack: ``X-Slack-Signature: v0=<hex>`` over ``v0:<ts>:<body>``."""

    name = "slack"

    def __init__(self, signing_secret: Secrets, tolerance: float = 300) -> None:
        super().__init__(signing_secret, tolerance)

    def _verify(self, headers: Headers, body: bytes, now: float) -> None:
        stamp, header = _require(headers, "X-Slack-Request-Timestamp", "X-Slack-Signature")
        self._check_time("X-Slack-Request-Timestamp", stamp, now)
        if not header.startswith("v0="):
            raise SignatureError(
                "invalid_signature",
                "X-Slack-Signature is malformed: expected v0=<hex>",
                header="X-Slack-Signature",
            )
        content = _utf8(f"v0:{stamp}:") + body
        received = [header.removeprefix("v0=")]
        if not self._matches(received, lambda key: _hex(self._mac(key, content))):
            raise _no_match("X-Slack-Signature")

    def sign(
        self, body: bytes, *, timestamp: float | None = None, msg_id: str | None = None
    ) -> dict[str, str]:
        stamp = str(int(time.time() if timestamp is None else timestamp))
        mac = self._mac(self._keys[0], _utf8(f"v0:{stamp}:") + _raw(body))
        return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={_hex(mac).decode()}"}


class Hmac(Scheme):
    """Any provider that sends ``prefix + encoded HMAC of the body`` in one header.

    ``algorithm`` is a hashlib name; ``encoding`` is ``hex`` (lower-case) or ``base64``.
    """

    name = "hmac"
    _OPTIONS = ("header", "algorithm", "encoding", "prefix")
    _REQUIRED = {"header": "the name of the header that carries the signature"}

    def __init__(
        self,
        secret: Secrets,
        *,
        header: str,
        algorithm: str = "sha256",
        encoding: str = "hex",
        prefix: str = "",
    ) -> None:
        super().__init__(secret)
        if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
            raise ValidationError(
                "verify", f"header must be the name of the signature header, got {header!r}"
            )
        if not isinstance(algorithm, str) or not _usable_hash(algorithm):
            raise ValidationError(
                "verify",
                f"algorithm {algorithm!r} is not a hash hashlib can use for HMAC;"
                " use one such as sha256, sha512 or sha1",
            )
        if encoding not in ("hex", "base64"):
            raise ValidationError("verify", f"encoding must be hex or base64, got {encoding!r}")
        if not isinstance(prefix, str):
            raise ValidationError("verify", f"prefix must be text, got {prefix!r}")
        self.header = header
        self.algorithm = algorithm
        self.encoding = encoding
        self.prefix = prefix

    def _spec_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"header": self.header}
        if self.algorithm != "sha256":
            options["algorithm"] = self.algorithm
        if self.encoding != "hex":
            options["encoding"] = self.encoding
        if self.prefix:
            options["prefix"] = self.prefix
        return options

    def _mac(self, key: bytes, content: bytes) -> bytes:
        return hmac.new(key, content, self.algorithm).digest()

    def _encode(self, mac: bytes) -> bytes:
        return _hex(mac) if self.encoding == "hex" else _b64(mac)

    def _verify(self, headers: Headers, body: bytes, now: float) -> None:
        (value,) = _require(headers, self.header)
        if not value.startswith(self.prefix):
            raise SignatureError(
                "invalid_signature",
                f"{self.header} is malformed: expected it to start with {self.prefix!r}",
                header=self.header,
            )
        received = [value.removeprefix(self.prefix)]
        if not self._matches(received, lambda key: self._encode(self._mac(key, body))):
            raise _no_match(self.header)

    def sign(
        self, body: bytes, *, timestamp: float | None = None, msg_id: str | None = None
    ) -> dict[str, str]:
        mac = self._encode(self._mac(self._keys[0], _raw(body))).decode()
        return {self.header: f"{self.prefix}{mac}"}


SCHEMES: dict[str, type[Scheme]] = {
    scheme.name: scheme for scheme in (StandardWebhooks, Stripe, GitHub, Shopify, Slack, Hmac)
}


def from_spec(spec: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Scheme:
    """Build a scheme from its catalog-file form, reading secrets from ``environ``.

    ``spec`` is e.g. ``{"scheme": "stripe", "secret_env": "STRIPE_WEBHOOK_SECRET"}``;
    ``environ`` defaults to ``os.environ``.
    """
    if not isinstance(spec, Mapping):
        raise ValidationError(
            "verify",
            "verify must be a mapping such as {scheme: stripe, secret_env: STRIPE_WEBHOOK_SECRET}",
        )
    name = spec.get("scheme")
    if name is None:
        raise ValidationError(
            "verify", f"verify.scheme is missing; set it to one of {', '.join(SCHEMES)}"
        )
    cls = SCHEMES.get(name) if isinstance(name, str) else None
    if cls is None:
        hint = closest(name, SCHEMES) if isinstance(name, str) else None
        did_you_mean = f"; did you mean {hint!r}?" if hint else ""
        raise ValidationError(
            "verify",
            f"unknown verify.scheme {name!r}; use one of {', '.join(SCHEMES)}{did_you_mean}",
        )
    # Checked before unknown keys, so the message says where a secret belongs.
    for key in _INLINE_SECRET_KEYS:
        if key in spec:
            raise ValidationError(
                "verify",
                "secrets are not written in catalog files; put it in an environment variable"
                " and name it with secret_env",
            )
    allowed = ("scheme", "secret_env", *cls._OPTIONS)
    for key in spec:
        if key not in allowed:
            hint = closest(str(key), allowed)
            did_you_mean = f" (did you mean {hint}?)" if hint else ""
            raise ValidationError(
                "verify",
                f"unknown key verify.{key}{did_you_mean} for scheme {name};"
                f" the keys it takes are {', '.join(allowed)}",
            )
    if "secret_env" not in spec:
        raise ValidationError(
            "verify",
            "verify.secret_env is missing; name the environment variable that holds the secret,"
            " e.g. secret_env: STRIPE_WEBHOOK_SECRET",
        )
    for key, meaning in cls._REQUIRED.items():
        if key not in spec:
            raise ValidationError("verify", f"verify.{key} is missing; set it to {meaning}")
    options = {key: spec[key] for key in cls._OPTIONS if key in spec}
    return cls.from_env(spec["secret_env"], environ=environ, **options)


def _env_names(names: Any) -> list[str]:
    listed = [names] if isinstance(names, str) else names
    if (
        not isinstance(listed, list | tuple)
        or not listed
        or not all(isinstance(n, str) and n.strip() for n in listed)
    ):
        raise ValidationError(
            "verify",
            "verify.secret_env must be an environment variable name or a non-empty list of"
            f" them, got {names!r}",
        )
    return list(listed)


def _tolerance(value: Any) -> float:
    # bool is an int, but tolerance=True is a mistake, not one second.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValidationError(
            "verify", f"tolerance must be a number of seconds, 0 or more, got {value!r}"
        )
    return value


def _usable_hash(algorithm: str) -> bool:
    try:
        hmac.new(b"key", b"", algorithm).digest()
    except (ValueError, TypeError):  # unknown name, or a variable-length hash like shake_128
        return False
    return True


def _require(headers: Headers, *names: str) -> list[str]:
    """The values of ``names``, or missing_signature naming every absent (or empty) one."""
    values = [headers.get(name) or "" for name in names]
    missing = [name for name, value in zip(names, values, strict=True) if not value]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise SignatureError(
            "missing_signature",
            f"missing header{plural} {', '.join(missing)}: the request is not signed",
            header=missing[0],
        )
    return values


def _no_match(header: str) -> SignatureError:
    return SignatureError(
        "invalid_signature",
        f"{header} does not match the body for any configured secret:"
        " a wrong secret, or the body was changed after signing",
        header=header,
    )


def _utf8(text: str) -> bytes:
    # surrogatepass: a header value can hold anything, and verify must not crash on it.
    return text.encode("utf-8", "surrogatepass")


def _hex(mac: bytes) -> bytes:
    return mac.hex().encode()


def _b64(mac: bytes) -> bytes:
    return base64.b64encode(mac)


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _raw(body: bytes) -> bytes:
    if not isinstance(body, bytes | bytearray | memoryview):
        # A decoded str has lost the exact bytes the provider signed.
        raise TypeError(f"body must be the raw request bytes, got {type(body).__name__}")
    return bytes(body)
