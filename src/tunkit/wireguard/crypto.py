"""WireGuard's cryptographic primitives (whitepaper §5.4) and key types.

Contract:

* ``hash_``, ``mac``, ``hmac_``, ``kdf1/2/3`` are exactly HASH, MAC, HMAC and KDFn of §5.4:
  BLAKE2s-256, keyed BLAKE2s-128, HMAC-BLAKE2s-256, and HKDF over that HMAC.
* ``aead_seal``/``aead_open`` are ChaCha20-Poly1305 with WireGuard's nonce
  (4 zero bytes || 64-bit little-endian counter).  ``aead_open`` raises
  :class:`DecryptionError` on a bad tag.
* ``xaead_seal``/``xaead_open`` are XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha), used only
  for cookie replies.  HChaCha20 is pure Python; it runs once per cookie reply.
* ``dh`` is X25519 and raises :class:`LowOrderPointError` when the result is all zeros.
* ``PrivateKey``, ``PublicKey`` and ``PresharedKey`` wrap 32 raw bytes.  Secret types never
  show their bytes in ``repr``/``str``.  Keys are compared by value and hashable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunkit.errors import ConfigError, RemoteProtocolError

from .constants import KEY_SIZE, MAC_SIZE

Rng = Callable[[int], bytes]

ZERO_KEY = bytes(KEY_SIZE)


class DecryptionError(RemoteProtocolError):
    """An AEAD tag did not verify: wrong key, tampered bytes or wrong associated data."""


class LowOrderPointError(RemoteProtocolError):
    """X25519 produced the all-zero shared secret: the public key is a low-order point."""


# --- HASH / MAC / HMAC / KDF ---------------------------------------------------------------


def hash_(*parts: bytes) -> bytes:
    """HASH(parts[0] || parts[1] || ...): BLAKE2s with a 32-byte digest."""
    h = hashlib.blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, data): keyed BLAKE2s with a 16-byte digest."""
    return hashlib.blake2s(data, digest_size=MAC_SIZE, key=key).digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    """HMAC(key, data): RFC 2104 HMAC over BLAKE2s-256 (block size 64)."""
    return hmac.digest(key, data, "blake2s")


def kdf1(key: bytes, data: bytes) -> bytes:
    """KDF1(key, data) = tau1."""
    t0 = hmac_(key, data)
    return hmac_(t0, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """KDF2(key, data) = (tau1, tau2)."""
    t0 = hmac_(key, data)
    t1 = hmac_(t0, b"\x01")
    t2 = hmac_(t0, t1 + b"\x02")
    return t1, t2


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """KDF3(key, data) = (tau1, tau2, tau3)."""
    t0 = hmac_(key, data)
    t1 = hmac_(t0, b"\x01")
    t2 = hmac_(t0, t1 + b"\x02")
    t3 = hmac_(t0, t2 + b"\x03")
    return t1, t2, t3


# --- AEAD ------------------------------------------------------------------------------------

_NONCE = struct.Struct("<4xQ")


def aead_nonce(counter: int) -> bytes:
    """WireGuard's 96-bit nonce: 32 zero bits then the little-endian 64-bit counter."""
    return _NONCE.pack(counter)


def aead_seal(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD(key, counter, plaintext, ad): ciphertext || 16-byte tag."""
    return ChaCha20Poly1305(key).encrypt(_NONCE.pack(counter), plaintext, ad)


def aead_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`aead_seal`; raises :class:`DecryptionError`."""
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE.pack(counter), ciphertext, ad)
    except InvalidTag:
        raise DecryptionError("AEAD tag mismatch") from None


# --- XChaCha20-Poly1305 (cookies only) -------------------------------------------------------

_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
_M32 = 0xFFFFFFFF


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20(key, nonce16) -> 32-byte subkey (draft-irtf-cfrg-xchacha §2.2)."""
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("hchacha20 needs a 32-byte key and a 16-byte nonce")
    s = [*_SIGMA, *struct.unpack("<8I", key), *struct.unpack("<4I", nonce16)]

    def quarter(a: int, b: int, c: int, d: int) -> None:
        s[a] = (s[a] + s[b]) & _M32
        x = s[d] ^ s[a]
        s[d] = ((x << 16) | (x >> 16)) & _M32
        s[c] = (s[c] + s[d]) & _M32
        x = s[b] ^ s[c]
        s[b] = ((x << 12) | (x >> 20)) & _M32
        s[a] = (s[a] + s[b]) & _M32
        x = s[d] ^ s[a]
        s[d] = ((x << 8) | (x >> 24)) & _M32
        s[c] = (s[c] + s[d]) & _M32
        x = s[b] ^ s[c]
        s[b] = ((x << 7) | (x >> 25)) & _M32

    for _ in range(10):
        quarter(0, 4, 8, 12)
        quarter(1, 5, 9, 13)
        quarter(2, 6, 10, 14)
        quarter(3, 7, 11, 15)
        quarter(0, 5, 10, 15)
        quarter(1, 6, 11, 12)
        quarter(2, 7, 8, 13)
        quarter(3, 4, 9, 14)
    return struct.pack("<8I", *s[0:4], *s[12:16])


def _xchacha_parts(key: bytes, nonce24: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    if len(nonce24) != 24:
        raise ValueError("XChaCha20 needs a 24-byte nonce")
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey), b"\x00\x00\x00\x00" + nonce24[16:]


def xaead_seal(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XAEAD(key, nonce24, plaintext, ad): XChaCha20-Poly1305 ciphertext || tag."""
    cipher, nonce = _xchacha_parts(key, nonce24)
    return cipher.encrypt(nonce, plaintext, ad)


def xaead_open(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`xaead_seal`; raises :class:`DecryptionError`."""
    cipher, nonce = _xchacha_parts(key, nonce24)
    try:
        return cipher.decrypt(nonce, ciphertext, ad)
    except InvalidTag:
        raise DecryptionError("XAEAD tag mismatch") from None


# --- keys --------------------------------------------------------------------------------------


def _decode_key(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what}: not valid base64") from None
    if len(raw) != KEY_SIZE:
        raise ConfigError(f"{what}: must decode to {KEY_SIZE} bytes, got {len(raw)}")
    return raw


def _decode_hex(text: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError(f"{what}: not valid hex") from None
    if len(raw) != KEY_SIZE:
        raise ConfigError(f"{what}: must be {KEY_SIZE} bytes, got {len(raw)}")
    return raw


class _Key:
    """32 raw bytes; equality and hash by value."""

    __slots__ = ("raw",)
    _secret = True

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_SIZE:
            raise ConfigError(f"{type(self).__name__} must be {KEY_SIZE} bytes, got {len(raw)}")
        self.raw = bytes(raw)

    @classmethod
    def from_base64(cls, text: str) -> _Key:
        return cls(_decode_key(text, cls.__name__))

    @classmethod
    def from_hex(cls, text: str) -> _Key:
        return cls(_decode_hex(text, cls.__name__))

    def to_base64(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")

    def to_hex(self) -> str:
        return self.raw.hex()

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Key)
            and type(other) is type(self)
            and hmac.compare_digest(self.raw, other.raw)
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.raw))

    def __repr__(self) -> str:
        if self._secret:
            return f"{type(self).__name__}(<redacted>)"
        return f"{type(self).__name__}({self.to_base64()!r})"

    __str__ = __repr__


class PublicKey(_Key):
    """A Curve25519 public key (not secret: repr shows base64)."""

    __slots__ = ()
    _secret = False

    @classmethod
    def from_base64(cls, text: str) -> PublicKey:
        return cls(_decode_key(text, "public key"))

    @classmethod
    def from_hex(cls, text: str) -> PublicKey:
        return cls(_decode_hex(text, "public key"))


class PresharedKey(_Key):
    """The optional symmetric key Q mixed into the handshake (§5.2); all zeros when unset."""

    __slots__ = ()

    @classmethod
    def from_base64(cls, text: str) -> PresharedKey:
        return cls(_decode_key(text, "preshared key"))

    @classmethod
    def from_hex(cls, text: str) -> PresharedKey:
        return cls(_decode_hex(text, "preshared key"))

    @classmethod
    def zero(cls) -> PresharedKey:
        return cls(ZERO_KEY)

    def is_zero(self) -> bool:
        return self.raw == ZERO_KEY


class PrivateKey(_Key):
    """A Curve25519 private key.  The raw bytes are stored clamped, as `wg genkey` does."""

    __slots__ = ("_public", "_x25519")

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw)
        clamped = bytearray(self.raw)
        clamped[0] &= 248
        clamped[31] = (clamped[31] & 127) | 64
        self.raw = bytes(clamped)
        self._x25519 = X25519PrivateKey.from_private_bytes(self.raw)
        self._public = PublicKey(self._x25519.public_key().public_bytes_raw())

    @classmethod
    def generate(cls, rng: Rng = os.urandom) -> PrivateKey:
        return cls(rng(KEY_SIZE))

    @classmethod
    def from_base64(cls, text: str) -> PrivateKey:
        return cls(_decode_key(text, "private key"))

    @classmethod
    def from_hex(cls, text: str) -> PrivateKey:
        return cls(_decode_hex(text, "private key"))

    def public_key(self) -> PublicKey:
        return self._public

    def exchange(self, public: bytes) -> bytes:
        """X25519(self, public) or :class:`LowOrderPointError` for an all-zero result."""
        try:
            shared = self._x25519.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError:
            # OpenSSL refuses the all-zero result itself; same meaning.
            raise LowOrderPointError("X25519 result is all zeros (low-order point)") from None
        if shared == ZERO_KEY:
            raise LowOrderPointError("X25519 result is all zeros (low-order point)")
        return shared


def dh(private: PrivateKey, public: bytes | PublicKey) -> bytes:
    """DH(private, public) of §5.4, rejecting the all-zero result."""
    raw = public.raw if isinstance(public, PublicKey) else public
    return private.exchange(raw)
