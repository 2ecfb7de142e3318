"""Signed entries: producers HMAC each stream entry, workers refuse what is not signed.

Anyone who can XADD to a queue's stream can otherwise make a worker run any
registered task with any arguments. With ``Settings.signing_keys`` and
``signing_key_id`` set, every entry a producer writes carries ``kid`` (which
key) and ``sig`` (HMAC-SHA256, hex) over a canonical encoding of the fields
that decide what runs and how (``SIGNED_FIELDS``). A worker verifies entries
that carry a signature and, with ``require_signatures``, dead-letters those
that carry none; it never runs an entry that fails.

``attempt`` is deliberately not signed: the scripts rewrite it on every retry
and requeue (complete.lua, requeue.lua), and every other script copies an
entry's fields verbatim, so the signature survives retries, the delayed set,
DLQ requeues and bounces without any key in Redis. A forged ``attempt`` can
only change how many retries a job has left, which ``max_retries`` (capped by
``Settings.max_job_retries``) and the server's delivery count still bound.

Signing proves who wrote an entry, not that it is fresh: a copy of a signed
entry (same job id) verifies too; the job hash's status guards against a
finished job running again.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from streamq.errors import ConfigError
from streamq.keys import Keyspace

KID_FIELD: Final = "kid"
SIG_FIELD: Final = "sig"
SIGNED_FIELDS: Final = (
    "v", "id", "task", "ct", "payload", "enq_ms", "max_retries", "timeout", "headers",
    "retry_intervals", "result_ttl", KID_FIELD,
)  # fmt: skip
"""Signed in this order; a field that is absent is signed as absent (so it cannot be added)."""
_SIGNED_BYTES: Final = tuple(name.encode() for name in SIGNED_FIELDS)
_DOMAIN: Final = b"streamq-entry-sig-1\n"
MIN_KEY_BYTES: Final = 16


def canonical(fields: Mapping[bytes, bytes]) -> bytes:
    """The signed bytes: each signed field as absent, or present with its length and value."""
    parts = [_DOMAIN]
    for name in _SIGNED_BYTES:
        value = fields.get(name)
        if value is None:
            parts.append(b"-")
        else:
            parts.append(b"+%d:" % len(value))
            parts.append(value)
    return b"".join(parts)


def _mac(secret: bytes, fields: Mapping[bytes, bytes]) -> bytes:
    return hmac.digest(secret, canonical(fields), sha256).hex().encode()


def as_bytes(value: object) -> bytes:
    """A field value as redis-py sends it (bytes as is, str as UTF-8, numbers as repr)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(f"cannot sign a field value of type {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs entries with one key; producers hold one (``App.signer``)."""

    kid: str
    secret: bytes

    def sign(self, fields: Mapping[bytes, bytes]) -> str:
        """``sig`` for an entry with these fields (``kid`` is taken as this signer's)."""
        return _mac(self.secret, {**fields, b"kid": self.kid.encode()}).decode()


@dataclass(frozen=True, slots=True)
class Verifier:
    """Checks entries against the accepted keys (several, for rotation)."""

    keys: Mapping[bytes, bytes]
    required: bool

    def reason(self, fields: Mapping[bytes, bytes]) -> str | None:
        """Why the entry must not run, or None when it may."""
        sig, kid = fields.get(b"sig"), fields.get(b"kid")
        if sig is None and kid is None:
            return "unsigned entry" if self.required else None
        if kid is None or sig is None:
            return "bad signature: the entry has a sig without a kid or a kid without a sig"
        secret = self.keys.get(kid)
        if secret is None:
            return f"unknown signing key {kid.decode(errors='replace')[:64]!r}"
        if not hmac.compare_digest(_mac(secret, fields), sig):
            return "bad signature"
        return None


def signer_for(keys: Mapping[str, bytes], key_id: str | None) -> Signer | None:
    return None if key_id is None else Signer(key_id, keys[key_id])


def verifier_for(keys: Mapping[str, bytes], required: bool) -> Verifier | None:
    """None (no cost at all) when no key is configured and signatures are not required."""
    if not keys and not required:
        return None
    return Verifier({kid.encode(): secret for kid, secret in keys.items()}, required)


def check_keys(keys: object, key_id: object, required: object) -> dict[str, bytes]:
    """Validate the settings' signing options; returns the keys as a plain dict."""
    if not isinstance(keys, Mapping):
        raise ConfigError(f"signing_keys must be a mapping of key id to bytes, got {keys!r}")
    for kid, secret in keys.items():
        if not isinstance(kid, str) or not kid or not kid.isprintable() or "," in kid:
            raise ConfigError(f"signing key ids must be printable text without commas, got {kid!r}")
        if ":" in kid:
            raise ConfigError(f"signing key ids cannot contain ':', got {kid!r}")
        if not isinstance(secret, bytes) or len(secret) < MIN_KEY_BYTES:
            raise ConfigError(
                f"signing key {kid!r} must be bytes, at least {MIN_KEY_BYTES} long "
                "(e.g. secrets.token_bytes(32))"
            )
    if key_id is not None and key_id not in keys:
        raise ConfigError(
            f"signing_key_id {key_id!r} names no key in signing_keys ({sorted(keys)})"
        )
    if not isinstance(required, bool):
        raise ConfigError(f"require_signatures must be True or False, got {required!r}")
    if required and not keys:
        raise ConfigError("require_signatures needs at least one key in signing_keys")
    return dict(keys)


def parse_env_keys(raw: str) -> dict[str, bytes]:
    """``STREAMQ_SIGNING_KEYS``: ``kid1:base64secret,kid2:base64secret``."""
    keys: dict[str, bytes] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        kid, sep, encoded = item.partition(":")
        if not sep or not kid.strip():
            raise ConfigError(
                "STREAMQ_SIGNING_KEYS must be kid:base64secret pairs separated by commas"
            )
        try:
            keys[kid.strip()] = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"STREAMQ_SIGNING_KEYS: the secret of key {kid.strip()!r} is not base64"
            ) from None
    return keys


def sign_job(
    signer: Signer,
    *,
    job_id: str,
    task: str,
    content_type: str,
    payload: bytes,
    enq_ms: object,
    extra: Sequence[object],
) -> str:
    """``sig`` of the entry a script builds from these values (``extra``: field,
    value pairs, as passed to the scripts; the entry's ``attempt`` is not signed)."""
    fields = {
        b"v": b"1",
        b"id": job_id.encode(),
        b"task": task.encode(),
        b"ct": content_type.encode(),
        b"payload": payload,
        b"enq_ms": as_bytes(enq_ms),
    }
    for name, value in zip(extra[::2], extra[1::2], strict=True):
        fields[as_bytes(name)] = as_bytes(value)
    return signer.sign(fields)


async def owned_job(
    redis: Redis, keys: Keyspace, claimed_id: bytes | None, msg_id: bytes
) -> str | None:
    """The job id an unverified message claims, when the job's hash records this very
    message as its own (so a legitimate entry refused for a key this worker lacks is
    dead-lettered as its job, and can be requeued); else None (a forged copy)."""
    if not claimed_id:
        return None
    try:
        job_id = claimed_id.decode()
        recorded = await redis.hget(keys.job(job_id), "msg_id")
    except (UnicodeDecodeError, RedisError):  # not a job id, or not a hash
        return None
    return job_id if recorded == msg_id else None
