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
from collections import deque
from collections.abc import Sequence
from functools import lru_cache
from itertools import repeat

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunkit.errors import LocalProtocolError, RemoteProtocolError
from tunkit.packet.tcpsplit import TcpSplit, tcp_split_into

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
_OVERHEAD = TRANSPORT_HEADER_SIZE + 16  # header + Poly1305 tag
_WIRE_HEADER = np.dtype([("kind", "<u4"), ("receiver", "<u4"), ("counter", "<u8")])
Buffer = bytes | bytearray | memoryview


@lru_cache(maxsize=64)
def _segment_slices(
    count: int, stride: int, plain: int, sealed: int
) -> tuple[list[slice], list[slice]]:
    """(plaintext slices every ``stride`` bytes, ciphertext slices of ``sealed``-byte
    messages) for ``count`` messages: what :meth:`Keypair.seal_split` maps over."""
    h = TRANSPORT_HEADER_SIZE
    return (
        [slice(o, o + plain) for o in range(0, count * stride, stride)],
        [slice(o + h, o + sealed) for o in range(0, count * sealed, sealed)],
    )


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
        "_scratch",
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
        self._scratch = bytearray()  # plaintext layout for seal_split, reused

    def __repr__(self) -> str:
        return (
            f"Keypair(local_index={self.local_index}, remote_index={self.remote_index}, "
            f"initiator={self.is_initiator}, sent={self.send_counter})"
        )

    @property
    def receive_aead(self) -> ChaCha20Poly1305:
        """The receive-direction AEAD, for batch decryption (:meth:`Device.receive_segments`);
        a caller must check the replay window after each successful decryption."""
        return self._receiver

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

    def seal_many(self, plaintexts: Sequence[Buffer], mtu: int | None = None) -> list[memoryview]:
        """:meth:`seal` for a batch: the messages, back to back in one buffer (see
        :meth:`seal_packed`), as views."""
        buffer, sizes = self.seal_packed(plaintexts, mtu)
        view = memoryview(buffer)
        out = []
        offset = 0
        for size in sizes:
            out.append(view[offset : offset + size])
            offset += size
        return out

    def seal_packed(
        self, plaintexts: Sequence[Buffer], mtu: int | None = None
    ) -> tuple[bytearray, list[int]]:
        """Seal a batch into one buffer: ``(buffer, sizes)``, message ``i`` being the
        ``sizes[i]`` bytes after messages ``0..i-1``.  Each message is encrypted in place
        (``encrypt_into``), so a batch costs one allocation; counters are consecutive."""
        counter = self.send_counter
        count = len(plaintexts)
        if counter + count > REJECT_AFTER_MESSAGES:
            raise LocalProtocolError("keypair exhausted: REJECT_AFTER_MESSAGES reached")
        capped = mtu is not None and mtu > 0
        sizes = []
        pads = []
        total = 0
        for plaintext in plaintexts:
            size = len(plaintext)
            pad = -size & 15
            if capped and size + pad > mtu:  # type: ignore[operator]
                pad = padding_length(size, mtu)
            pads.append(pad)
            size += pad + _OVERHEAD
            sizes.append(size)
            total += size
        buffer = bytearray(total)
        view = memoryview(buffer)
        encrypt_into = self._sender.encrypt_into
        header = _HEADER.pack_into
        nonce = _NONCE.pack
        remote = self.remote_index
        offset = 0
        for plaintext, pad, size in zip(plaintexts, pads, sizes, strict=True):
            if pad:
                plaintext = bytes(plaintext) + _ZEROS[:pad]
            header(buffer, offset, MESSAGE_TRANSPORT, remote, counter)
            end = offset + size
            encrypt_into(nonce(counter), plaintext, None, view[offset + TRANSPORT_HEADER_SIZE : end])
            offset = end
            counter += 1
        self.send_counter = counter
        return buffer, sizes

    def seal_split(
        self, split: TcpSplit, packet: Buffer, mtu: int | None = None
    ) -> tuple[bytearray, list[int]]:
        """:meth:`seal_packed` for the segments of a TCP super-packet (``packet``, as planned
        by :func:`tunkit.packet.tcpsplit.plan_tcp_split`), without a per-segment Python loop.

        The segments are laid out, zero-padded and checksummed in this keypair's scratch
        buffer at one stride (:func:`~tunkit.packet.tcpsplit.tcp_split_into`), the
        transport headers written with three numpy assignments, and the AEAD calls driven
        by ``map``: per segment, what is left is the AEAD call itself.
        """
        count = split.count
        counter = self.send_counter
        if counter + count > REJECT_AFTER_MESSAGES:
            raise LocalProtocolError("keypair exhausted: REJECT_AFTER_MESSAGES reached")
        full, last = split.full_size, split.last_size
        plain_full = full + padding_length(full, mtu)
        plain_last = last + padding_length(last, mtu)
        size_full = plain_full + _OVERHEAD
        size_last = plain_last + _OVERHEAD
        stride = max(split.min_stride(), (plain_full + 3) & ~3)
        if len(self._scratch) < count * stride:
            self._scratch = bytearray(count * stride + 4096)
        scratch = self._scratch
        tcp_split_into(split, packet, scratch, stride)
        n = count - 1  # full-size segments; the last one is sealed apart
        base = n * size_full
        total = base + size_last
        buffer = bytearray(total)
        wire = np.ndarray((count,), dtype=_WIRE_HEADER, buffer=buffer, strides=(size_full,))
        wire["kind"] = MESSAGE_TRANSPORT
        wire["receiver"] = self.remote_index
        wire["counter"] = np.arange(counter, counter + count, dtype=np.uint64)
        encrypt_into = self._sender.encrypt_into
        plain, sealed = memoryview(scratch), memoryview(buffer)
        if n:
            ins, outs = _segment_slices(n, stride, plain_full, size_full)
            deque(map(encrypt_into, map(_NONCE.pack, range(counter, counter + n)),
                      map(plain.__getitem__, ins), repeat(None), map(sealed.__getitem__, outs)),
                  0)  # fmt: skip
        encrypt_into(_NONCE.pack(counter + n), plain[n * stride : n * stride + plain_last], None,
                     sealed[base + TRANSPORT_HEADER_SIZE : total])  # fmt: skip
        self.send_counter = counter + count
        sizes = [size_full] * n
        sizes.append(size_last)
        return buffer, sizes

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
