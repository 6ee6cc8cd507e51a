"""WireGuard key material in the encodings the tools use: base64 (configs, ``wg``) and hex (UAPI).

Contract:

* ``generate_private_key`` gives 32 random bytes clamped for Curve25519, byte for byte what
  ``wg genkey`` prints (decoded); ``public_key_from_private`` matches ``wg pubkey`` (X25519 of the
  base point; unclamped input is clamped, as wg does).
* ``decode_key`` accepts exactly what wg's ``key_from_base64`` accepts: 44 characters, one ``=``
  of padding, canonical trailing bits. Anything else raises ``ConfigError``.
* ``key_from_hex`` accepts exactly 64 hex digits (either case). Anything else raises ``ConfigError``.
* Pure: randomness only through the injected ``rng``.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tunkit.errors import ConfigError

KEY_LEN = 32
KEY_LEN_BASE64 = 44
KEY_LEN_HEX = 64

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def clamp_private_key(raw: bytes) -> bytes:
    """Curve25519 clamping (RFC 7748 §5), as ``wg genkey`` applies it."""
    if len(raw) != KEY_LEN:
        raise ConfigError(f"invalid key: {len(raw)} bytes (expected {KEY_LEN})")
    key = bytearray(raw)
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def generate_private_key(rng: Callable[[int], bytes] = os.urandom) -> bytes:
    """A fresh clamped private key, like ``wg genkey``."""
    return clamp_private_key(rng(KEY_LEN))


def generate_preshared_key(rng: Callable[[int], bytes] = os.urandom) -> bytes:
    """32 random bytes, like ``wg genpsk``."""
    key = rng(KEY_LEN)
    if len(key) != KEY_LEN:
        raise ConfigError(f"invalid key: rng returned {len(key)} bytes (expected {KEY_LEN})")
    return key


def public_key_from_private(private_key: bytes) -> bytes:
    """X25519 public key for ``private_key``, like ``wg pubkey``."""
    if len(private_key) != KEY_LEN:
        raise ConfigError(f"invalid key: {len(private_key)} bytes (expected {KEY_LEN})")
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def encode_key(key: bytes) -> str:
    """Base64 form (44 characters) used by wg configs and ``wg show``."""
    if len(key) != KEY_LEN:
        raise ConfigError(f"invalid key: {len(key)} bytes (expected {KEY_LEN})")
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """Parse a base64 key; raise ConfigError for bad base64 or length."""
    problem = f"invalid key: {_shown(text)} (expected {KEY_LEN_BASE64} base64 characters)"
    if len(text) != KEY_LEN_BASE64 or not text.isascii() or text[-1] != "=" or text[-2] == "=":
        raise ConfigError(problem)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(problem) from None
    # b64decode ignores non-zero trailing bits; wg rejects such non-canonical keys.
    if len(key) != KEY_LEN or base64.b64encode(key).decode("ascii") != text:
        raise ConfigError(problem)
    return key


def hex_key(key: bytes) -> str:
    """Lower-case hex form (64 characters) used by the UAPI."""
    if len(key) != KEY_LEN:
        raise ConfigError(f"invalid key: {len(key)} bytes (expected {KEY_LEN})")
    return key.hex()


def key_from_hex(text: str) -> bytes:
    """Parse a 64-digit hex key; raise ConfigError otherwise."""
    if len(text) != KEY_LEN_HEX or not set(text) <= _HEX_DIGITS:
        raise ConfigError(
            f"invalid key: {_shown(text)} (expected {KEY_LEN_HEX} hexadecimal characters)"
        )
    return bytes.fromhex(text)


def _shown(text: str) -> str:
    """Quote user input for an error message without echoing a whole secret or a huge string."""
    if len(text) > 12 or not text.isprintable():
        return f"{len(text)} characters"
    return repr(text)
