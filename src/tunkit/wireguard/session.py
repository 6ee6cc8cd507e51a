"""Transport sessions: a :class:`Keypair` per completed handshake, and the per-peer
previous/current/next rotation in :class:`Keypairs` (whitepaper §5.4.6, §6.2).

* :meth:`Keypair.seal` turns a plaintext IP packet into a complete transport message
  (header, counter nonce, zero padding to a multiple of 16 — or up to the MTU — and tag).
* :meth:`Keypair.open` authenticates and decrypts a transport message, *then* checks the
  counter against the RFC 6479 replay window, and returns the (still padded) plaintext.
  It raises :class:`~.crypto.DecryptionError`, :class:`ReplayError` or
  :class:`KeypairExpiredError` (all :class:`~tunkit.errors.RemoteProtocolError`).
* :class:`Keypairs` implements the rotation rules: an initiator sends on a new keypair at
  once; a responder keeps its new keypair in ``next`` and must not send on it until the first
  transport message arrives on it (:meth:`Keypairs.received_with`).

Keypairs are mutable and not safe for concurrent use; the hot path avoids per-packet
allocations other than the output bytes.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunkit.errors import LocalProtocolError, RemoteProtocolError

from .constants import (
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    TRANSPORT_HEADER_SIZE,
)
from .crypto import DecryptionError
from .handshake import SessionKeys
from .replay import ReplayWindow

_HEADER = struct.Struct("<IIQ")
_NONCE = struct.Struct("<4xQ")
_ZEROS = bytes(16)


class ReplayError(RemoteProtocolError):
    """A transport counter was already seen or is too old for the window."""


class KeypairExpiredError(RemoteProtocolError):
    """A transport message used a keypair past REJECT_AFTER_TIME/MESSAGES."""


def padding_length(size: int, mtu: int | None) -> int:
    """Zero bytes to append to a plaintext of ``size`` bytes (wireguard-go's rule)."""
    if mtu is None or mtu <= 0:
        return -size & 15
    last_unit = size % mtu if size > mtu else size
    padded = min((last_unit + 15) & ~15, mtu)
    return max(padded - last_unit, 0)


class Keypair:
    """Transport keys of one session."""

    __slots__ = (
        "_receiver",
        "_sender",
        "created",
        "is_initiator",
        "local_index",
        "remote_index",
        "replay",
        "send_counter",
    )

    def __init__(self, keys: SessionKeys, now: float) -> None:
        self._sender = ChaCha20Poly1305(keys.send_key)
        self._receiver = ChaCha20Poly1305(keys.receive_key)
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.is_initiator = keys.is_initiator
        self.created = now
        self.send_counter = 0
        self.replay = ReplayWindow()

    def __repr__(self) -> str:
        return (
            f"Keypair(local_index={self.local_index}, remote_index={self.remote_index}, "
            f"initiator={self.is_initiator}, sent={self.send_counter})"
        )

    def can_send(self, now: float) -> bool:
        return self.send_counter < REJECT_AFTER_MESSAGES and now - self.created < REJECT_AFTER_TIME

    def can_receive(self, now: float) -> bool:
        return now - self.created < REJECT_AFTER_TIME

    def seal(self, plaintext: bytes, mtu: int | None = None) -> bytes:
        """A complete transport message carrying ``plaintext`` (empty = keepalive)."""
        counter = self.send_counter
        if counter >= REJECT_AFTER_MESSAGES:
            raise LocalProtocolError("keypair exhausted: REJECT_AFTER_MESSAGES reached")
        self.send_counter = counter + 1
        pad = padding_length(len(plaintext), mtu)
        if pad:
            plaintext = plaintext + _ZEROS[:pad]
        return _HEADER.pack(MESSAGE_TRANSPORT, self.remote_index, counter) + self._sender.encrypt(
            _NONCE.pack(counter), plaintext, None
        )

    def seal_many(self, plaintexts: list[bytes], mtu: int | None = None) -> list[bytes]:
        """:meth:`seal` for a batch, with the loop invariants hoisted."""
        counter = self.send_counter
        if counter + len(plaintexts) > REJECT_AFTER_MESSAGES:
            raise LocalProtocolError("keypair exhausted: REJECT_AFTER_MESSAGES reached")
        encrypt = self._sender.encrypt
        header = _HEADER.pack
        nonce = _NONCE.pack
        remote = self.remote_index
        out = []
        for plaintext in plaintexts:
            pad = padding_length(len(plaintext), mtu)
            if pad:
                plaintext = plaintext + _ZEROS[:pad]
            out.append(
                header(MESSAGE_TRANSPORT, remote, counter)
                + encrypt(nonce(counter), plaintext, None)
            )
            counter += 1
        self.send_counter = counter
        return out

    def open(self, counter: int, message: bytes) -> bytes:
        """Decrypt a whole transport message whose header says ``counter``; see module doc."""
        if counter >= REJECT_AFTER_MESSAGES:
            raise ReplayError("counter beyond REJECT_AFTER_MESSAGES")
        try:
            plaintext = self._receiver.decrypt(
                _NONCE.pack(counter), message[TRANSPORT_HEADER_SIZE:], None
            )
        except InvalidTag:
            raise DecryptionError("transport tag mismatch") from None
        if not self.replay.check_and_update(counter):
            raise ReplayError(f"counter {counter} replayed or too old")
        return plaintext


class Keypairs:
    """previous / current / next keypairs of one peer (§6.2)."""

    __slots__ = ("current", "next", "previous")

    def __init__(self) -> None:
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None

    def all(self) -> list[Keypair]:
        return [k for k in (self.previous, self.current, self.next) if k is not None]

    def install(self, keypair: Keypair) -> list[Keypair]:
        """Add a freshly derived keypair; returns the keypairs that were dropped."""
        dropped: list[Keypair] = []
        if keypair.is_initiator:
            if self.next is not None:
                # A responder-side keypair never confirmed: it becomes "previous" so packets
                # already in flight on it can still be received; the old current is dropped.
                if self.current is not None:
                    dropped.append(self.current)
                if self.previous is not None:
                    dropped.append(self.previous)
                self.previous = self.next
                self.next = None
            else:
                if self.previous is not None:
                    dropped.append(self.previous)
                self.previous = self.current
            self.current = keypair
        else:
            if self.next is not None:
                dropped.append(self.next)
            if self.previous is not None:
                dropped.append(self.previous)
            self.next = keypair
            self.previous = None
        return dropped

    def received_with(self, keypair: Keypair) -> tuple[bool, list[Keypair]]:
        """Note a verified packet on ``keypair``.

        Returns ``(rotated, dropped)``: ``rotated`` is True when this confirmed ``next``
        (the responder may now send on it).
        """
        if self.next is not keypair:
            return False, []
        dropped = [self.previous] if self.previous is not None else []
        self.previous = self.current
        self.current = keypair
        self.next = None
        return True, dropped

    def clear(self) -> list[Keypair]:
        dropped = self.all()
        self.previous = self.current = self.next = None
        return dropped
