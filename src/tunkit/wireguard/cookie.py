"""mac1, mac2 and cookie replies: the DoS defence of whitepaper §5.4.4 and §5.4.7.

* :class:`CookieChecker` (one per device, keyed by our static public key) validates mac1 of
  every incoming handshake message, validates mac2 when the device is under load, and builds
  cookie replies.  Its random secret is rotated every COOKIE_SECRET_MAX_AGE seconds of
  ``now``; a mac2 made with an older cookie no longer verifies.
* :class:`CookieGenerator` (one per peer, keyed by the peer's static public key) writes
  mac1/mac2 into our outgoing handshake messages and stores the cookie from a verified reply.

A cookie binds the source of a datagram: :func:`source_bytes` turns the ``(host, port)``
endpoint into the bytes that are MACed.  Only the side that made a cookie checks it, so this
encoding is local (it need not match other implementations).
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from .constants import (
    COOKIE_NONCE_SIZE,
    COOKIE_REFRESH_TIME,
    COOKIE_SECRET_MAX_AGE,
    KEY_SIZE,
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_SIZE,
)
from .crypto import DecryptionError, PublicKey, Rng, hash_, mac, xaead_open, xaead_seal
from .messages import CookieReply, build_cookie_reply

_ZERO_MAC = bytes(MAC_SIZE)


def source_bytes(endpoint: tuple[object, ...]) -> bytes:
    """``ip_bytes || port (big-endian u16)`` for an ``(host, port, ...)`` endpoint."""
    host, port = (endpoint[0], endpoint[1]) if len(endpoint) >= 2 else ("", 0)
    try:
        ip = ipaddress.ip_address(str(host)).packed
    except ValueError:
        ip = str(host).encode()
    p = port if isinstance(port, int) else 0
    return ip + (p & 0xFFFF).to_bytes(2, "big")


def mac1_key(public: PublicKey) -> bytes:
    """HASH(LABEL_MAC1 || public): the key of mac1 for messages sent *to* ``public``."""
    return hash_(LABEL_MAC1, public.raw)


def cookie_key(public: PublicKey) -> bytes:
    """HASH(LABEL_COOKIE || public): the XAEAD key of cookie replies sent *by* ``public``."""
    return hash_(LABEL_COOKIE, public.raw)


class CookieChecker:
    """Responder side: verifies mac1/mac2 of incoming messages and makes cookie replies."""

    __slots__ = ("_cookie_key", "_mac1_key", "_rng", "_secret", "_secret_born")

    def __init__(self, our_public: PublicKey | None = None, rng: Rng = os.urandom) -> None:
        self._rng = rng
        self._mac1_key = b""
        self._cookie_key = b""
        self._secret = bytes(KEY_SIZE)
        self._secret_born: float | None = None
        if our_public is not None:
            self.set_public_key(our_public)

    def set_public_key(self, our_public: PublicKey) -> None:
        self._mac1_key = mac1_key(our_public)
        self._cookie_key = cookie_key(our_public)

    def check_mac1(self, message: bytes) -> bool:
        """True when mac1 (bytes -32..-16) is MAC(HASH(mac1 label || our key), before mac1)."""
        if not self._mac1_key or len(message) < 2 * MAC_SIZE:
            return False
        expected = mac(self._mac1_key, message[: -2 * MAC_SIZE])
        return hmac.compare_digest(expected, message[-2 * MAC_SIZE : -MAC_SIZE])

    def _cookie(self, source: bytes) -> bytes:
        return mac(self._secret, source)

    def check_mac2(self, message: bytes, source: bytes, now: float) -> bool:
        """True when mac2 is made with the cookie we would give ``source`` right now."""
        born = self._secret_born
        if born is None or now - born > COOKIE_SECRET_MAX_AGE or len(message) < 2 * MAC_SIZE:
            return False
        expected = mac(self._cookie(source), message[:-MAC_SIZE])
        return hmac.compare_digest(expected, message[-MAC_SIZE:])

    def create_reply(self, message: bytes, receiver: int, source: bytes, now: float) -> bytes:
        """A cookie reply (type 3) answering ``message`` (whose sender index is ``receiver``)."""
        born = self._secret_born
        if born is None or now - born > COOKIE_SECRET_MAX_AGE:
            self._secret = self._rng(KEY_SIZE)
            self._secret_born = now
        nonce = self._rng(COOKIE_NONCE_SIZE)
        msg_mac1 = message[-2 * MAC_SIZE : -MAC_SIZE]
        sealed = xaead_seal(self._cookie_key, nonce, self._cookie(source), msg_mac1)
        return build_cookie_reply(receiver, nonce, sealed)


class CookieGenerator:
    """Initiator side, one per peer: mac1/mac2 for outgoing handshake messages."""

    __slots__ = ("_cookie", "_cookie_key", "_cookie_time", "_last_mac1", "_mac1_key")

    def __init__(self, peer_public: PublicKey) -> None:
        self._mac1_key = mac1_key(peer_public)
        self._cookie_key = cookie_key(peer_public)
        self._cookie: bytes | None = None
        self._cookie_time = 0.0
        self._last_mac1: bytes | None = None

    def has_fresh_cookie(self, now: float) -> bool:
        return self._cookie is not None and now - self._cookie_time <= COOKIE_REFRESH_TIME

    def add_macs(self, message: bytes, now: float) -> bytes:
        """``message`` with mac1 and mac2 (zero unless we hold a fresh cookie) filled in."""
        body = message[: -2 * MAC_SIZE]
        mac1 = mac(self._mac1_key, body)
        self._last_mac1 = mac1
        if self._cookie is not None and now - self._cookie_time <= COOKIE_REFRESH_TIME:
            mac2 = mac(self._cookie, body + mac1)
        else:
            mac2 = _ZERO_MAC
        return body + mac1 + mac2

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Store the cookie of a reply to our last handshake message; False if it is not one."""
        if self._last_mac1 is None:
            return False
        try:
            cookie = xaead_open(
                self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1
            )
        except DecryptionError:
            return False
        self._cookie = cookie
        self._cookie_time = now
        self._last_mac1 = None
        return True
