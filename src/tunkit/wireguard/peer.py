"""One WireGuard peer: handshakes, keypairs, timers and counters, driven by its device.

A :class:`Peer` never does I/O.  Every method takes ``now`` (monotonic seconds) and returns a
list of actions (:data:`Action`) for the caller to carry out in order (``decapsulate``, on
the receive hot path, returns the plaintext and appends to a caller-owned action list):

* :class:`SendDatagram` / :class:`SendDatagrams`: UDP payload(s) for ``endpoint``;
* :class:`WriteToTunnel`: a decrypted IP packet (only the device emits this);
* events for logs/metrics: :class:`HandshakeCompleted`, :class:`HandshakeGaveUp`,
  :class:`EndpointChanged`, :class:`KeysZeroed`.

Entry points used by :class:`~.device.Device` (and by tests): :meth:`Peer.encapsulate`,
:meth:`Peer.encapsulate_batch`, :meth:`Peer.decapsulate`, :meth:`Peer.consume_initiation`,
:meth:`Peer.consume_response`, :meth:`Peer.consume_cookie_reply`, :meth:`Peer.on_timer`,
:meth:`Peer.next_deadline`, :meth:`Peer.send_keepalive`.

Time: ``now`` drives every timer; the wall clock (TAI64N timestamps and ``last_handshake``)
is ``now + context.wall_offset`` (see :class:`~.device.Device`).

Counters follow wireguard-go: ``tx_bytes`` counts every UDP payload sent to the peer
(handshake, data, keepalive), ``rx_bytes`` every authenticated UDP payload received from it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from tunkit.errors import LocalProtocolError
from tunkit.packet.tcpsplit import TcpSplit
from tunkit.packet.vnet import GSO_TCPV4, GSO_TCPV6, VirtioNetHdr, gso_split

from .constants import (
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ON_RECEIVE_AFTER_TIME,
    REKEY_TIMEOUT,
)
from .cookie import CookieGenerator
from .crypto import LowOrderPointError, PresharedKey, PublicKey, Rng
from .handshake import Handshake, OpenedInitiation, StaticIdentity
from .messages import CookieReply, Response
from .session import Keypair, Keypairs
from .timers import PeerTimers, Timer

Buffer = bytes | bytearray | memoryview
Endpoint = tuple[Any, ...]
"""An opaque UDP address as the I/O shell gives it, normally ``(host, port)``."""


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send ``data`` as one UDP datagram to ``endpoint``."""

    data: Buffer
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class SendDatagrams:
    """Send each of ``datagrams`` (in order) to ``endpoint``; a batch for sendmmsg/GSO.

    ``packed``, when set, holds the same datagrams back to back in one buffer (the
    datagrams are then views of it), so a shell can hand a run of them to one
    ``sendmsg`` with a ``UDP_SEGMENT`` cmsg as a single buffer.  ``segment_size``, when
    not 0, says that every datagram in ``packed`` has that size except the last, which
    may be shorter: the shell may then send ``packed`` without looking at ``datagrams``.
    """

    datagrams: Sequence[Buffer]
    endpoint: Endpoint
    packed: memoryview | None = None
    segment_size: int = 0


class PackedDatagrams(Sequence[memoryview]):
    """Datagrams of ``segment_size`` bytes (the last may be shorter) back to back in
    ``packed``, as a read-only sequence of views made on demand."""

    __slots__ = ("_packed", "_size")

    def __init__(self, packed: memoryview, segment_size: int) -> None:
        self._packed = packed
        self._size = segment_size

    def __len__(self) -> int:
        return -(-len(self._packed) // self._size)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        count = len(self)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError(index)
        return self._packed[index * self._size : (index + 1) * self._size]


@dataclass(frozen=True, slots=True)
class WriteToTunnel:
    """Write the decrypted IP ``packet`` to the TUN device."""

    packet: bytes


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A session with ``public_key`` is ready (``initiator``: we started the handshake)."""

    public_key: PublicKey
    initiator: bool


@dataclass(frozen=True, slots=True)
class HandshakeGaveUp:
    """No handshake completed within REKEY_ATTEMPT_TIME; ``dropped`` queued packets."""

    public_key: PublicKey
    dropped: int


@dataclass(frozen=True, slots=True)
class EndpointChanged:
    """Roaming: an authenticated packet came from a new ``endpoint``."""

    public_key: PublicKey
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class KeysZeroed:
    """All session keys of ``public_key`` were erased (3 * REJECT_AFTER_TIME idle)."""

    public_key: PublicKey


Action = (
    SendDatagram
    | SendDatagrams
    | WriteToTunnel
    | HandshakeCompleted
    | HandshakeGaveUp
    | EndpointChanged
    | KeysZeroed
)


@dataclass(frozen=True, slots=True)
class PeerSnapshot:
    """What `wg show` / UAPI get=1 reports for a peer."""

    public_key: PublicKey
    preshared_key: PresharedKey
    endpoint: Endpoint | None
    persistent_keepalive: int
    last_handshake: float | None  # wall-clock seconds since the epoch, None if never
    rx_bytes: int
    tx_bytes: int
    allowed_ips: tuple[IPv4Network | IPv6Network, ...]


class IndexTable:
    """Our random 32-bit session indices -> (peer, keypair or None while handshaking)."""

    __slots__ = ("_entries", "_rng")

    def __init__(self, rng: Rng) -> None:
        self._rng = rng
        self._entries: dict[int, tuple[Peer, Keypair | None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def allocate(self, peer: Peer) -> int:
        for _ in range(1000):
            index = int.from_bytes(self._rng(4), "little")
            if index not in self._entries:
                self._entries[index] = (peer, None)
                return index
        raise LocalProtocolError("rng keeps returning used session indices")

    def bind(self, index: int, peer: Peer, keypair: Keypair) -> None:
        self._entries[index] = (peer, keypair)

    def get(self, index: int) -> tuple[Peer, Keypair | None] | None:
        return self._entries.get(index)

    def free(self, index: int | None) -> None:
        if index is not None:
            self._entries.pop(index, None)

    def free_keypair(self, keypair: Keypair) -> None:
        entry = self._entries.get(keypair.local_index)
        if entry is not None and entry[1] is keypair:
            del self._entries[keypair.local_index]

    def free_peer(self, peer: Peer) -> None:
        for index in [i for i, (p, _) in self._entries.items() if p is peer]:
            del self._entries[index]


class DeviceContext:
    """Device-wide state a peer needs; owned and updated by the device."""

    __slots__ = ("identity", "indices", "mtu", "rng", "wall_offset")

    def __init__(
        self, identity: StaticIdentity | None, rng: Rng, wall_offset: float, mtu: int | None
    ) -> None:
        self.identity = identity
        self.rng = rng
        self.indices = IndexTable(rng)
        self.wall_offset = wall_offset
        self.mtu = mtu


class Peer:
    """State of one peer.  Not safe for concurrent use."""

    def __init__(
        self,
        context: DeviceContext,
        public_key: PublicKey,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: Endpoint | None = None,
        persistent_keepalive: int = 0,
    ) -> None:
        self._ctx = context
        self.public_key = public_key
        self.handshake = Handshake(context.identity, public_key, preshared_key)
        self.cookies = CookieGenerator(public_key)
        self.keypairs = Keypairs()
        self.timers = PeerTimers(context.rng)
        self.staged: deque[bytes] = deque(maxlen=MAX_STAGED_PACKETS)
        self.endpoint = endpoint
        self.persistent_keepalive = persistent_keepalive
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.dropped_packets = 0
        self.last_handshake: float | None = None
        self.last_sent_handshake: float | None = None

    def __repr__(self) -> str:
        return f"Peer({self.public_key.to_base64()!r}, endpoint={self.endpoint!r})"

    @property
    def preshared_key(self) -> PresharedKey:
        return self.handshake.preshared_key

    @preshared_key.setter
    def preshared_key(self, value: PresharedKey | None) -> None:
        self.handshake.preshared_key = value or PresharedKey.zero()

    # -- sending -----------------------------------------------------------------------------

    def sending_keypair(self, now: float) -> Keypair | None:
        """The current keypair if we may send on it."""
        kp = self.keypairs.current
        if (
            kp is not None
            and kp.send_counter < REJECT_AFTER_MESSAGES
            and now - kp.created < REJECT_AFTER_TIME
        ):
            return kp
        return None

    def encapsulate(self, packet: bytes, now: float) -> list[Action]:
        """Encrypt ``packet`` for this peer, or queue it and start a handshake."""
        kp = self.sending_keypair(now)
        endpoint = self.endpoint
        if kp is None or endpoint is None or self.staged:
            self.staged.append(bytes(packet))
            return self.send_staged(now)
        data = kp.seal(packet, self._ctx.mtu)
        self.tx_bytes += len(data)
        actions: list[Action] = [SendDatagram(data, endpoint)]
        self._after_send(now, bool(packet), actions)
        return actions

    def encapsulate_batch(self, packets: Sequence[Buffer], now: float) -> list[Action]:
        """Like :meth:`encapsulate` for many packets; data goes out as one SendDatagrams
        whose datagrams share one ``packed`` buffer.  ``packets`` may be views of a buffer
        the caller reuses: queued packets are copied."""
        kp = self.sending_keypair(now)
        endpoint = self.endpoint
        if kp is None or endpoint is None or self.staged:
            # bounded: the oldest are dropped, as in wireguard-go
            self.staged.extend(bytes(p) for p in packets)
            return self.send_staged(now)
        buffer, sizes = kp.seal_packed(packets, self._ctx.mtu)
        packed = memoryview(buffer)
        datagrams = []
        offset = 0
        for size in sizes:
            datagrams.append(packed[offset : offset + size])
            offset += size
        self.tx_bytes += offset
        actions: list[Action] = [SendDatagrams(datagrams, endpoint, packed)]
        self._after_send(now, any(packets), actions)
        return actions

    def encapsulate_split(self, split: TcpSplit, packet: Buffer, now: float) -> list[Action]:
        """:meth:`encapsulate_batch` for the segments of a TCP super-packet (see
        :meth:`Keypair.seal_split`); ``packet`` is only read."""
        kp = self.sending_keypair(now)
        endpoint = self.endpoint
        if kp is None or endpoint is None or self.staged:
            segments = gso_split(VirtioNetHdr(0, GSO_TCPV4 if split.version == 4 else GSO_TCPV6,
                                              split.hdr_len, split.mss), packet)  # fmt: skip
            return self.encapsulate_batch(segments, now)
        buffer, sizes = kp.seal_split(split, packet, self._ctx.mtu)
        packed = memoryview(buffer)
        size = sizes[0]
        self.tx_bytes += len(buffer)
        actions: list[Action] = [
            SendDatagrams(PackedDatagrams(packed, size), endpoint, packed, size)
        ]
        self._after_send(now, True, actions)
        return actions

    def send_keepalive(self, now: float) -> list[Action]:
        """Send an empty transport message (or the queue, if packets are waiting)."""
        if not self.staged:
            self.staged.append(b"")
        return self.send_staged(now)

    def send_staged(self, now: float) -> list[Action]:
        """Encrypt every queued packet on the current keypair, or start a handshake."""
        if not self.staged:
            return []
        kp = self.sending_keypair(now)
        endpoint = self.endpoint
        if kp is None or endpoint is None:
            return self.initiate_handshake(now)
        packets = list(self.staged)
        self.staged.clear()
        datagrams = kp.seal_many(packets, self._ctx.mtu)
        self.tx_bytes += sum(map(len, datagrams))
        actions: list[Action] = (
            [SendDatagram(datagrams[0], endpoint)]
            if len(datagrams) == 1
            else [SendDatagrams(datagrams, endpoint)]
        )
        self._after_send(now, any(packets), actions)
        return actions

    def _after_send(self, now: float, data_sent: bool, actions: list[Action]) -> None:
        timers = self.timers
        timers.on_any_authenticated_packet_traversal(now, self.persistent_keepalive)
        timers.on_any_authenticated_packet_sent()
        if data_sent:
            timers.on_data_sent(now)
        # §6.2 keep the key fresh (sending side): the initiator rekeys an old or worn key.
        kp = self.keypairs.current
        if kp is not None and (
            kp.send_counter >= REKEY_AFTER_MESSAGES
            or (kp.is_initiator and now - kp.created >= REKEY_AFTER_TIME)
        ):
            actions.extend(self.initiate_handshake(now))

    def initiate_handshake(self, now: float, retry: bool = False) -> list[Action]:
        """Send a handshake initiation unless one went out less than REKEY_TIMEOUT ago."""
        timers = self.timers
        if not retry:
            timers.handshake_attempts = 0
        last = self.last_sent_handshake
        if last is not None and now - last < REKEY_TIMEOUT:
            return []
        if not self.handshake.can_handshake:
            return []
        self.last_sent_handshake = now
        indices = self._ctx.indices
        indices.free(self.handshake.local_index)
        index = indices.allocate(self)
        message = self.handshake.create_initiation(
            index, now + self._ctx.wall_offset, self._ctx.rng
        )
        message = self.cookies.add_macs(message, now)
        timers.on_any_authenticated_packet_traversal(now, self.persistent_keepalive)
        timers.on_any_authenticated_packet_sent()
        actions: list[Action] = []
        if self.endpoint is not None:
            actions.append(SendDatagram(message, self.endpoint))
            self.tx_bytes += len(message)
        timers.on_handshake_initiated(now)
        return actions

    # -- receiving ---------------------------------------------------------------------------

    def _roam(self, source: Endpoint, actions: list[Action]) -> None:
        if source != self.endpoint:
            self.endpoint = source
            actions.append(EndpointChanged(self.public_key, source))

    def _install(self, keypair: Keypair) -> None:
        indices = self._ctx.indices
        indices.bind(keypair.local_index, self, keypair)
        for dropped in self.keypairs.install(keypair):
            indices.free_keypair(dropped)

    def consume_initiation(
        self, opened: OpenedInitiation, source: Endpoint, size: int, now: float
    ) -> list[Action]:
        """Accept an initiation addressed to us and answer it; raises on rejection."""
        old_index = self.handshake.local_index
        self.handshake.consume_initiation(opened, now)  # raises: replay, flood, bad AEAD
        indices = self._ctx.indices
        indices.free(old_index)
        actions: list[Action] = []
        self._roam(source, actions)
        timers = self.timers
        timers.on_any_authenticated_packet_traversal(now, self.persistent_keepalive)
        timers.on_any_authenticated_packet_received()
        self.rx_bytes += size
        self.last_sent_handshake = now
        index = indices.allocate(self)
        try:
            message, keys = self.handshake.create_response(index, self._ctx.rng)
        except LowOrderPointError:
            indices.free(index)
            self.handshake.clear()
            raise
        self._install(Keypair(keys, now))
        timers.on_session_derived(now)
        message = self.cookies.add_macs(message, now)
        timers.on_any_authenticated_packet_traversal(now, self.persistent_keepalive)
        timers.on_any_authenticated_packet_sent()
        if self.endpoint is not None:
            actions.append(SendDatagram(message, self.endpoint))
            self.tx_bytes += len(message)
        return actions

    def consume_response(
        self, message: Response, source: Endpoint, size: int, now: float
    ) -> list[Action]:
        """Finish our handshake with the peer's response; raises on rejection."""
        keys = self.handshake.consume_response(message)
        actions: list[Action] = []
        self._roam(source, actions)
        timers = self.timers
        timers.on_any_authenticated_packet_traversal(now, self.persistent_keepalive)
        timers.on_any_authenticated_packet_received()
        self.rx_bytes += size
        self._install(Keypair(keys, now))
        timers.on_session_derived(now)
        timers.on_handshake_complete()
        self.last_handshake = now + self._ctx.wall_offset
        actions.append(HandshakeCompleted(self.public_key, True))
        actions.extend(self.send_keepalive(now))
        return actions

    def consume_cookie_reply(self, reply: CookieReply, now: float) -> bool:
        """Store the cookie of a reply to our last handshake message."""
        return self.cookies.consume_reply(reply, now)

    def decapsulate(
        self,
        keypair: Keypair,
        counter: int,
        message: bytes,
        source: Endpoint,
        now: float,
        actions: list[Action],
    ) -> bytes:
        """Open a transport message on ``keypair``; returns the (padded) plaintext and appends
        any resulting actions to ``actions``.  An empty plaintext is a keepalive.

        Raises DecryptionError / ReplayError; nothing changes then.
        """
        plaintext = keypair.open(counter, message)
        self.received_burst(keypair, source, len(message), 1 if plaintext else 0, now, actions)
        return plaintext

    def received_burst(
        self,
        keypair: Keypair,
        source: Endpoint,
        size: int,
        data_packets: int,
        now: float,
        actions: list[Action],
    ) -> None:
        """Bookkeeping after authenticated transport messages on ``keypair`` from ``source``
        (``size`` bytes in all, ``data_packets`` of them not keepalives), all at ``now``.

        One call for a burst has the same effect as one call per message: roaming, the
        ``next`` -> ``current`` rotation, the receive-side rekey, timers and ``rx_bytes``
        depend only on ``now``, the keypair and the source.
        """
        if source != self.endpoint:
            self._roam(source, actions)
        if keypair is self.keypairs.next:
            _, dropped = self.keypairs.received_with(keypair)
            for old in dropped:
                self._ctx.indices.free_keypair(old)
            self.timers.on_handshake_complete()
            self.last_handshake = now + self._ctx.wall_offset
            actions.append(HandshakeCompleted(self.public_key, False))
            actions.extend(self.send_staged(now))
        timers = self.timers
        if not timers.sent_last_minute_handshake:
            # §6.2 keep the key fresh (receiving side), once per session.
            current = self.keypairs.current
            if (
                current is not None
                and current.is_initiator
                and now - current.created > REKEY_ON_RECEIVE_AFTER_TIME
            ):
                timers.sent_last_minute_handshake = True
                actions.extend(self.initiate_handshake(now))
        if self.persistent_keepalive > 0:
            timers.on_any_authenticated_packet_traversal(now, self.persistent_keepalive)
        timers.on_any_authenticated_packet_received()
        self.rx_bytes += size
        if data_packets:
            timers.on_data_received(now)
            if data_packets > 1:  # what the second and later per-packet calls would do
                timers.on_data_received(now)

    # -- timers ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def on_timer(self, now: float) -> list[Action]:
        """Run every timer whose deadline is <= now."""
        actions: list[Action] = []
        timers = self.timers
        for timer in timers.pop_expired(now):
            if timer is Timer.RETRANSMIT_HANDSHAKE:
                if timers.handshake_attempts > MAX_TIMER_HANDSHAKES:
                    timers.cancel(Timer.SEND_KEEPALIVE)
                    dropped = len(self.staged)
                    self.dropped_packets += dropped
                    self.staged.clear()
                    if not timers.pending(Timer.ZERO_KEY_MATERIAL):
                        timers.on_session_derived(now)
                    actions.append(HandshakeGaveUp(self.public_key, dropped))
                else:
                    timers.handshake_attempts += 1
                    actions.extend(self.initiate_handshake(now, retry=True))
            elif timer is Timer.SEND_KEEPALIVE:
                actions.extend(self.send_keepalive(now))
                if timers.need_another_keepalive:
                    timers.need_another_keepalive = False
                    timers.set(Timer.SEND_KEEPALIVE, now + KEEPALIVE_TIMEOUT)
            elif timer is Timer.NEW_HANDSHAKE:
                actions.extend(self.initiate_handshake(now))
            elif timer is Timer.ZERO_KEY_MATERIAL:
                self.zero_key_material()
                actions.append(KeysZeroed(self.public_key))
            elif timer is Timer.PERSISTENT_KEEPALIVE and self.persistent_keepalive > 0:
                actions.extend(self.send_keepalive(now))
        return actions

    # -- management --------------------------------------------------------------------------

    def zero_key_material(self) -> None:
        """Forget all keypairs, the handshake in flight and queued packets."""
        indices = self._ctx.indices
        for kp in self.keypairs.clear():
            indices.free_keypair(kp)
        indices.free(self.handshake.local_index)
        self.handshake.clear()
        self.staged.clear()

    def expire_current_keypairs(self) -> None:
        """Make the next send start a handshake at once (after a private-key change)."""
        self._ctx.indices.free(self.handshake.local_index)
        self.handshake.clear()
        self.last_sent_handshake = None
        for kp in (self.keypairs.current, self.keypairs.next):
            if kp is not None:
                kp.send_counter = REJECT_AFTER_MESSAGES

    def set_identity(self, identity: StaticIdentity | None) -> None:
        self._ctx.indices.free(self.handshake.local_index)
        self.handshake.set_identity(identity)

    def snapshot(self, allowed_ips: tuple[IPv4Network | IPv6Network, ...] = ()) -> PeerSnapshot:
        return PeerSnapshot(
            public_key=self.public_key,
            preshared_key=self.preshared_key,
            endpoint=self.endpoint,
            persistent_keepalive=self.persistent_keepalive,
            last_handshake=self.last_handshake,
            rx_bytes=self.rx_bytes,
            tx_bytes=self.tx_bytes,
            allowed_ips=allowed_ips,
        )
