"""The Noise_IKpsk2 handshake of WireGuard (whitepaper §5.4.2-§5.4.5) as a state machine.

One :class:`Handshake` exists per peer.  Its ``state`` is a :class:`HandshakeState`, and the
data each state needs lives in a small per-state object (``_InitiationSent`` /
``_InitiationReceived``), so a state can never see data it should not have.

Transitions (``-`` means "back to ZEROED, keys handed out")::

    ZEROED --create_initiation--> INITIATION_SENT --consume_response--> - (initiator keys)
    ZEROED / INITIATION_SENT / INITIATION_RECEIVED
           --consume_initiation--> INITIATION_RECEIVED --create_response--> - (responder keys)

An initiation is consumed in two steps because the responder learns *which* peer sent it
only after decrypting the static key: :func:`open_initiation` (device level, needs only our
identity) returns the initiator's public key and the transcript so far, then the matching
peer's :meth:`Handshake.consume_initiation` finishes it, enforcing TAI64N replay protection
and the 50 initiations/s flood limit.  Every failure raises a
:class:`~tunkit.errors.RemoteProtocolError` subclass and leaves the state unchanged.
Messages are returned with zero mac1/mac2; :class:`~.cookie.CookieGenerator` fills them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tunkit.errors import LocalProtocolError, RemoteProtocolError

from .constants import CONSTRUCTION, IDENTIFIER, INITIATIONS_PER_SECOND, TIMESTAMP_SIZE
from .crypto import (
    LowOrderPointError,
    PresharedKey,
    PrivateKey,
    PublicKey,
    Rng,
    aead_open,
    aead_seal,
    dh,
    hash_,
    kdf1,
    kdf2,
    kdf3,
)
from .messages import Initiation, Response, build_initiation, build_response
from .tai64n import tai64n

INITIAL_CHAINING_KEY = hash_(CONSTRUCTION)  # Ci := HASH(Construction)
INITIAL_HASH = hash_(INITIAL_CHAINING_KEY, IDENTIFIER)  # Hi := HASH(Ci || Identifier)
_FLOOD_INTERVAL = 1.0 / INITIATIONS_PER_SECOND


class HandshakeError(RemoteProtocolError):
    """A handshake message was authentic-looking but cannot be accepted."""


class ReplayedInitiationError(HandshakeError):
    """The initiation's TAI64N timestamp is not newer than the last accepted one."""


class InitiationFloodError(HandshakeError):
    """More than 50 initiations per second from one peer."""


class UnexpectedMessageError(HandshakeError):
    """A response arrived for a handshake that is not waiting for one."""


class HandshakeState(enum.Enum):
    ZEROED = "zeroed"
    INITIATION_SENT = "initiation sent"
    INITIATION_RECEIVED = "initiation received"


@dataclass(frozen=True, slots=True)
class StaticIdentity:
    """Our long-term key pair plus the hash every initiation sent to us starts from."""

    private_key: PrivateKey
    public_key: PublicKey
    initial_hash: bytes  # HASH(INITIAL_HASH || our public key)

    @classmethod
    def from_private_key(cls, private_key: PrivateKey) -> StaticIdentity:
        public = private_key.public_key()
        return cls(private_key, public, hash_(INITIAL_HASH, public.raw))


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Transport keys derived at the end of a handshake (§5.4.5)."""

    send_key: bytes
    receive_key: bytes
    local_index: int
    remote_index: int
    is_initiator: bool

    def __repr__(self) -> str:
        return (
            f"SessionKeys(<redacted>, local_index={self.local_index}, "
            f"remote_index={self.remote_index}, is_initiator={self.is_initiator})"
        )


@dataclass(frozen=True, slots=True)
class OpenedInitiation:
    """The first half of consuming an initiation: who sent it, and the transcript so far."""

    message: Initiation
    peer_public_key: PublicKey
    hash: bytes
    chaining_key: bytes


@dataclass(slots=True)
class _InitiationSent:
    local_index: int
    ephemeral: PrivateKey
    hash: bytes
    chaining_key: bytes


@dataclass(slots=True)
class _InitiationReceived:
    remote_index: int
    remote_ephemeral: bytes
    hash: bytes
    chaining_key: bytes


def open_initiation(identity: StaticIdentity, message: Initiation) -> OpenedInitiation:
    """Responder, step 1: decrypt the initiator's static key (§5.4.2, responder side)."""
    e = message.ephemeral
    ck = kdf1(INITIAL_CHAINING_KEY, e)  # Cr := KDF1(Cr, msg.ephemeral)
    h = hash_(identity.initial_hash, e)  # Hr := HASH(Hr || msg.ephemeral)
    ck, key = kdf2(ck, dh(identity.private_key, e))  # (Cr, k) := KDF2(Cr, DH(Sr_priv, Ei_pub))
    static = aead_open(key, 0, message.encrypted_static, h)
    h = hash_(h, message.encrypted_static)  # Hr := HASH(Hr || msg.static)
    return OpenedInitiation(message, PublicKey(static), h, ck)


class Handshake:
    """Handshake state for one peer.  Not safe for concurrent use."""

    __slots__ = (
        "_data",
        "_identity",
        "_peer_initial_hash",
        "_static_static",
        "last_initiation_consumed",
        "last_timestamp",
        "peer_public_key",
        "preshared_key",
        "state",
    )

    def __init__(
        self,
        identity: StaticIdentity | None,
        peer_public_key: PublicKey,
        preshared_key: PresharedKey | None = None,
    ) -> None:
        self.peer_public_key = peer_public_key
        self.preshared_key = preshared_key or PresharedKey.zero()
        self._peer_initial_hash = hash_(INITIAL_HASH, peer_public_key.raw)
        self.state = HandshakeState.ZEROED
        self._data: _InitiationSent | _InitiationReceived | None = None
        self.last_timestamp = bytes(TIMESTAMP_SIZE)
        self.last_initiation_consumed: float | None = None
        self._identity: StaticIdentity | None = None
        self._static_static: bytes | None = None
        self.set_identity(identity)

    def set_identity(self, identity: StaticIdentity | None) -> None:
        """Install (or remove) our static key; precomputes DH(S_priv, S_peer_pub)."""
        self._identity = identity
        self._static_static = None
        if identity is not None:
            try:
                self._static_static = dh(identity.private_key, self.peer_public_key)
            except LowOrderPointError:
                self._static_static = None  # a low-order peer key can never handshake
        self.clear()

    @property
    def can_handshake(self) -> bool:
        """False without a private key, or when the peer's public key is a low-order point."""
        return self._identity is not None and self._static_static is not None

    @property
    def local_index(self) -> int | None:
        """Our index of the initiation in flight, if any."""
        return self._data.local_index if isinstance(self._data, _InitiationSent) else None

    def clear(self) -> None:
        self.state = HandshakeState.ZEROED
        self._data = None

    def _require(self) -> tuple[StaticIdentity, bytes]:
        if self._identity is None or self._static_static is None:
            raise LocalProtocolError("handshake impossible: no private key or low-order peer key")
        return self._identity, self._static_static

    # -- initiator ------------------------------------------------------------------------

    def create_initiation(self, local_index: int, wall_time: float, rng: Rng) -> bytes:
        """Initiator: a fresh initiation message (§5.4.2) with zero MACs."""
        identity, static_static = self._require()
        ephemeral = PrivateKey.generate(rng)
        e = ephemeral.public_key().raw
        ck = kdf1(INITIAL_CHAINING_KEY, e)  # Ci := KDF1(Ci, Ei_pub)
        h = hash_(self._peer_initial_hash, e)  # Hi := HASH(Hi || msg.ephemeral)
        ck, key = kdf2(ck, dh(ephemeral, self.peer_public_key))  # KDF2(Ci, DH(Ei_priv, Sr_pub))
        encrypted_static = aead_seal(key, 0, identity.public_key.raw, h)
        h = hash_(h, encrypted_static)
        ck, key = kdf2(ck, static_static)  # (Ci, k) := KDF2(Ci, DH(Si_priv, Sr_pub))
        encrypted_timestamp = aead_seal(key, 0, tai64n(wall_time), h)
        h = hash_(h, encrypted_timestamp)
        self.state = HandshakeState.INITIATION_SENT
        self._data = _InitiationSent(local_index, ephemeral, h, ck)
        return build_initiation(local_index, e, encrypted_static, encrypted_timestamp)

    def consume_response(self, message: Response) -> SessionKeys:
        """Initiator: verify the response (§5.4.3) and derive the transport keys."""
        identity, _ = self._require()
        data = self._data
        if self.state is not HandshakeState.INITIATION_SENT or not isinstance(
            data, _InitiationSent
        ):
            raise UnexpectedMessageError("no initiation is waiting for a response")
        if message.receiver != data.local_index:
            raise UnexpectedMessageError("response is for another initiation")
        e = message.ephemeral
        ck = kdf1(data.chaining_key, e)  # Ci := KDF1(Ci, Er_pub)
        h = hash_(data.hash, e)  # Hi := HASH(Hi || msg.ephemeral)
        ck = kdf1(ck, dh(data.ephemeral, e))  # Ci := KDF1(Ci, DH(Ei_priv, Er_pub))
        ck = kdf1(ck, dh(identity.private_key, e))  # Ci := KDF1(Ci, DH(Si_priv, Er_pub))
        ck, tau, key = kdf3(ck, self.preshared_key.raw)  # (Ci, tau, k) := KDF3(Ci, Q)
        h = hash_(h, tau)
        aead_open(key, 0, message.encrypted_nothing, h)  # raises on a wrong key / psk
        # h = HASH(h || msg.empty) completes the transcript; nothing uses it afterwards.
        send, receive = kdf2(ck, b"")  # (T_send_i, T_recv_i) := KDF2(Ci, e)
        self.clear()
        return SessionKeys(send, receive, data.local_index, message.sender, True)

    # -- responder ------------------------------------------------------------------------

    def consume_initiation(self, opened: OpenedInitiation, now: float) -> None:
        """Responder, step 2: check the timestamp and flood limit, then remember the initiation."""
        _, static_static = self._require()
        if opened.peer_public_key != self.peer_public_key:
            raise LocalProtocolError("initiation opened for a different peer")
        message = opened.message
        ck, key = kdf2(opened.chaining_key, static_static)  # KDF2(Cr, DH(Sr_priv, Si_pub))
        timestamp = aead_open(key, 0, message.encrypted_timestamp, opened.hash)
        h = hash_(opened.hash, message.encrypted_timestamp)
        if timestamp <= self.last_timestamp:
            raise ReplayedInitiationError("initiation timestamp is not newer than the last one")
        last = self.last_initiation_consumed
        if last is not None and now - last <= _FLOOD_INTERVAL:
            raise InitiationFloodError("more than 50 initiations per second")
        self.last_timestamp = timestamp
        self.last_initiation_consumed = now
        self.state = HandshakeState.INITIATION_RECEIVED
        self._data = _InitiationReceived(message.sender, message.ephemeral, h, ck)

    def create_response(self, local_index: int, rng: Rng) -> tuple[bytes, SessionKeys]:
        """Responder: the response message (§5.4.3, zero MACs) and the transport keys."""
        data = self._data
        if self.state is not HandshakeState.INITIATION_RECEIVED or not isinstance(
            data, _InitiationReceived
        ):
            raise LocalProtocolError("create_response needs a consumed initiation")
        ephemeral = PrivateKey.generate(rng)
        e = ephemeral.public_key().raw
        ck = kdf1(data.chaining_key, e)  # Cr := KDF1(Cr, Er_pub)
        h = hash_(data.hash, e)  # Hr := HASH(Hr || msg.ephemeral)
        ck = kdf1(ck, dh(ephemeral, data.remote_ephemeral))  # Cr := KDF1(Cr, DH(Er_priv, Ei_pub))
        ck = kdf1(ck, dh(ephemeral, self.peer_public_key))  # Cr := KDF1(Cr, DH(Er_priv, Si_pub))
        ck, tau, key = kdf3(ck, self.preshared_key.raw)  # (Cr, tau, k) := KDF3(Cr, Q)
        h = hash_(h, tau)
        encrypted_nothing = aead_seal(key, 0, b"", h)
        receive, send = kdf2(ck, b"")  # (T_recv_r, T_send_r) := KDF2(Cr, e)
        self.clear()
        message = build_response(local_index, data.remote_index, e, encrypted_nothing)
        return message, SessionKeys(send, receive, local_index, data.remote_index, False)
