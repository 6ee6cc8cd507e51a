"""The pure, multi-peer WireGuard device (sans-IO; like boringtun's top level).

A :class:`Device` holds our static key, the peers (by public key), the session index table,
the cookie checker and rate limiter, and the allowed-IPs table for cryptokey routing.  It
never touches sockets, TUN devices or clocks.  An I/O shell drives it like this::

    device = Device(private_key, wall_offset=time.time() - time.monotonic())
    # TUN -> network:
    for action in device.send_packet(ip_packet, time.monotonic()): perform(action)
    # network -> TUN:
    for action in device.receive_datagram(udp_payload, (host, port), time.monotonic()): ...
    # timers:
    deadline = device.next_deadline()          # absolute `now` seconds, or None
    ... when monotonic() >= deadline: perform each of device.on_timer(monotonic())

``perform``: :class:`SendDatagram` -> ``sendto(data, endpoint)``; :class:`SendDatagrams` ->
send every datagram to ``endpoint`` (sendmmsg / UDP GSO); :class:`WriteToTunnel` -> write
the packet to TUN; :class:`HandshakeCompleted`, :class:`HandshakeGaveUp`,
:class:`EndpointChanged`, :class:`KeysZeroed` are events to log.  After any call the
deadline may have moved: re-read :meth:`Device.next_deadline`.

Batch forms for the hot path: :meth:`Device.send_packets` (one :class:`SendDatagrams` per
peer, the route looked up once per run of one destination) and
:meth:`Device.receive_datagrams`, which returns ``(tun_packets, actions)`` so no
per-packet action object is allocated.  Fastest: :meth:`Device.send_split` seals the
segments of a TSO super-packet (planned by :func:`tunkit.packet.tcpsplit.plan_tcp_split`)
into one buffer with one ``map`` of AEAD calls, and :meth:`Device.receive_segments` takes one UDP
GRO read (a buffer cut every ``gso_size`` bytes) and amortises per run of one receiver
index what is per-keypair (lookup, expiry, the peer's timers/roaming/rotation
bookkeeping) while every message keeps its own tag check and replay-window update.

Time: ``now`` is monotonic seconds (any origin).  Wall-clock time, needed for TAI64N
timestamps and ``last_handshake``, is ``now + device.wall_offset``; the shell sets
``wall_offset = time.time() - time.monotonic()`` at start (and may refresh it).

Load: the shell sets ``device.under_load`` from a ``load.LoadDetector`` (a handshake backlog
or rate); while it is set, handshake messages need a valid mac2 (otherwise we answer with a
cookie reply) and are rate-limited per source IP (20/s, burst 5).

Errors: :meth:`receive_datagram` never raises; every dropped datagram increments one
counter in ``device.stats`` (:class:`DeviceStats`).  Management methods raise
:class:`~tunkit.errors.LocalProtocolError` on misuse.

Management (used by UAPI): :meth:`set_private_key`, :meth:`add_peer`, :meth:`update_peer`,
:meth:`remove_peer`, :meth:`remove_all_peers`, :meth:`set_allowed_ips`,
:meth:`peer_snapshots`; ``listen_port`` and ``fwmark`` are plain attributes the shell applies.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, fields
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from cryptography.exceptions import InvalidTag

from tunkit.errors import LocalProtocolError, RemoteProtocolError
from tunkit.packet.tcpsplit import TcpSplit

from .allowedips import AllowedIPs, NetworkLike
from .constants import (
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    TRANSPORT_MIN_SIZE,
)
from .cookie import CookieChecker, source_bytes
from .crypto import DecryptionError, PresharedKey, PrivateKey, PublicKey, Rng
from .handshake import StaticIdentity, open_initiation
from .messages import (
    TRANSPORT_HEADER,
    MalformedMessageError,
    message_type,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
)
from .peer import (
    Action,
    DeviceContext,
    Endpoint,
    EndpointChanged,
    HandshakeCompleted,
    HandshakeGaveUp,
    KeysZeroed,
    Peer,
    PeerSnapshot,
    SendDatagram,
    SendDatagrams,
    WriteToTunnel,
)
from .ratelimiter import RateLimiter, source_key
from .session import Keypair, ReplayError

__all__ = [
    "Action",
    "Device",
    "DeviceStats",
    "EndpointChanged",
    "HandshakeCompleted",
    "HandshakeGaveUp",
    "KeysZeroed",
    "PeerSnapshot",
    "SendDatagram",
    "SendDatagrams",
    "WriteToTunnel",
]


@dataclass(slots=True)
class DeviceStats:
    """Counters of the device; every dropped datagram/packet increments exactly one."""

    datagrams_received: int = 0
    malformed: int = 0  # bad size, type or reserved bytes
    no_private_key: int = 0  # handshake message while we have no key
    bad_mac1: int = 0
    cookie_replies_sent: int = 0  # under load, no valid mac2
    rate_limited: int = 0  # under load, source over its budget
    handshake_rejected: int = 0  # AEAD failure, replayed timestamp, flood, low-order key
    unknown_peer: int = 0  # initiation from a static key we do not know
    unknown_index: int = 0  # receiver index not in our table
    cookie_replies_accepted: int = 0
    cookie_replies_rejected: int = 0
    expired_keypair: int = 0  # transport on a keypair older than REJECT_AFTER_TIME
    decrypt_failed: int = 0  # transport tag mismatch
    replayed: int = 0  # transport counter seen before or too old
    keepalives_received: int = 0
    invalid_inner_packet: int = 0  # decrypted payload is not a sane IPv4/IPv6 packet
    source_not_allowed: int = 0  # inner source outside the peer's allowed IPs
    packets_received: int = 0  # inner packets handed to the tunnel
    invalid_outbound: int = 0  # packet from TUN that is not IPv4/IPv6
    no_route: int = 0  # no peer's allowed IPs contain the destination
    internal_errors: int = 0  # a bug: an unexpected exception was swallowed

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_TRANSPORT_WORD = MESSAGE_TRANSPORT
_NONCE = struct.Struct("<4xQ")
_UNKNOWN_INDEX = 1
_EXPIRED = 2
Buffer = bytes | bytearray | memoryview
_unpack_transport = TRANSPORT_HEADER.unpack_from


class Device:
    """See the module docstring.  Not safe for concurrent use."""

    def __init__(
        self,
        private_key: PrivateKey | None = None,
        *,
        rng: Rng = os.urandom,
        wall_offset: float = 0.0,
        mtu: int | None = None,
    ) -> None:
        identity = StaticIdentity.from_private_key(private_key) if private_key else None
        self._ctx = DeviceContext(identity, rng, wall_offset, mtu)
        self._rng = rng
        self.peers: dict[PublicKey, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.cookie_checker = CookieChecker(identity.public_key if identity else None, rng)
        self.rate_limiter = RateLimiter()
        self.under_load = False
        self.stats = DeviceStats()
        self.listen_port = 0
        self.fwmark = 0

    # -- properties --------------------------------------------------------------------------

    @property
    def private_key(self) -> PrivateKey | None:
        identity = self._ctx.identity
        return identity.private_key if identity else None

    @property
    def public_key(self) -> PublicKey | None:
        identity = self._ctx.identity
        return identity.public_key if identity else None

    @property
    def wall_offset(self) -> float:
        return self._ctx.wall_offset

    @wall_offset.setter
    def wall_offset(self, value: float) -> None:
        self._ctx.wall_offset = value

    @property
    def mtu(self) -> int | None:
        """TUN MTU used to cap transport padding (None: always pad to 16)."""
        return self._ctx.mtu

    @mtu.setter
    def mtu(self, value: int | None) -> None:
        self._ctx.mtu = value

    # -- TUN -> network ----------------------------------------------------------------------

    def _route(self, packet: bytes) -> Peer | None:
        size = len(packet)
        version = packet[0] >> 4 if size else 0
        if version == 4 and size >= 20:
            dst = packet[16:20]
        elif version == 6 and size >= 40:
            dst = packet[24:40]
        else:
            self.stats.invalid_outbound += 1
            return None
        peer = self.allowed_ips.lookup(dst)
        if peer is None:
            self.stats.no_route += 1
        return peer

    def send_packet(self, ip_packet: bytes, now: float) -> list[Action]:
        """Route an IP packet from TUN to its peer (cryptokey routing) and encrypt it."""
        peer = self._route(ip_packet)
        if peer is None:
            return []
        return peer.encapsulate(ip_packet, now)

    def send_packets(self, ip_packets: Iterable[Buffer], now: float) -> list[Action]:
        """Batch :meth:`send_packet`: one SendDatagrams per peer, order kept per peer.

        Packets may be views of a buffer the caller reuses after the call.  The route is
        looked up once per run of packets to the same destination (the segments of a TSO
        super-packet share it)."""
        by_peer: dict[Peer, list[Buffer]] = {}
        stats = self.stats
        lookup = self.allowed_ips.lookup
        last_dst: Buffer | None = None
        run: list[Buffer] | None = None
        for packet in ip_packets:
            size = len(packet)
            version = packet[0] >> 4 if size else 0
            if version == 4 and size >= 20:
                dst = packet[16:20]
            elif version == 6 and size >= 40:
                dst = packet[24:40]
            else:
                stats.invalid_outbound += 1
                continue
            if dst != last_dst:
                last_dst = dst
                peer = lookup(dst)
                run = None if peer is None else by_peer.setdefault(peer, [])
            if run is None:
                stats.no_route += 1
            else:
                run.append(packet)
        actions: list[Action] = []
        for peer, packets in by_peer.items():
            actions.extend(peer.encapsulate_batch(packets, now))
        return actions

    def send_split(self, split: TcpSplit, packet: Buffer, now: float) -> list[Action]:
        """Send the segments of a TCP super-packet (``packet``, the IP packet after its vnet
        header, as planned by :func:`tunkit.packet.tcpsplit.plan_tcp_split`), routed once by
        its destination; ``packet`` is only read."""
        peer = self.allowed_ips.lookup(split.destination)
        if peer is None:
            self.stats.no_route += 1
            return []
        return peer.encapsulate_split(split, packet, now)

    # -- network -> TUN ----------------------------------------------------------------------

    def receive_segments(
        self,
        buffer: memoryview,
        segment_size: int,
        source: Endpoint,
        now: float,
        packets: list[bytes],
        actions: list[Action],
    ) -> None:
        """Handle the datagrams of one receive from ``source`` (a UDP GRO read): ``buffer``
        cut every ``segment_size`` bytes (the last piece may be shorter; 0 means one
        datagram).  Appends the IP packets for TUN to ``packets`` and other actions to
        ``actions``; never raises; ``buffer`` is not kept (the caller may reuse it).

        The fast path for data: runs of transport messages to one receiver index share
        the keypair lookup, the expiry check and the peer's bookkeeping
        (:meth:`Peer.received_burst`), and the allowed-IPs source check is cached per
        inner source address.  Every message still gets its own tag check and replay
        window update, in order, and exactly one counter per drop, as in
        :meth:`receive_datagram`.
        """
        total = len(buffer)
        if segment_size <= 0 or segment_size > total:
            segment_size = max(total, 1)
        stats = self.stats
        get_entry = self._ctx.indices.get
        unpack = _unpack_transport
        nonce = _NONCE.pack
        lookup = self.allowed_ips.lookup
        append = packets.append
        limit = REJECT_AFTER_MESSAGES
        run_receiver = -1  # receiver index of the open run; -1: no run
        run_drop = 0  # 0: the run's keypair is usable, else _UNKNOWN_INDEX / _EXPIRED
        peer: Peer | None = None
        keypair: Keypair | None = None
        decrypt: Any = None
        check: Any = None
        run_bytes = run_data = 0
        last_src: Buffer | None = None
        src_ok = False
        accepted = 0
        stats.datagrams_received += -(-total // segment_size)
        offset = 0
        while offset < total:
            start = offset
            end = start + segment_size
            if end > total:
                end = total
            offset = end
            size = end - start
            if size >= TRANSPORT_MIN_SIZE:
                word, receiver, counter = unpack(buffer, start)
                if word == _TRANSPORT_WORD:
                    if receiver != run_receiver:
                        if run_bytes:
                            peer.received_burst(  # type: ignore[union-attr]
                                keypair, source, run_bytes, run_data, now, actions  # type: ignore[arg-type]
                            )
                        run_bytes = run_data = 0
                        run_receiver = receiver
                        last_src = None
                        entry = get_entry(receiver)
                        keypair = entry[1] if entry is not None else None
                        if entry is None or keypair is None:
                            run_drop = _UNKNOWN_INDEX
                        elif now - keypair.created >= REJECT_AFTER_TIME:
                            run_drop = _EXPIRED
                        else:
                            run_drop = 0
                            peer = entry[0]
                            decrypt = keypair.receive_aead.decrypt
                            check = keypair.replay.check_and_update
                    if run_drop:
                        if run_drop == _UNKNOWN_INDEX:
                            stats.unknown_index += 1
                        else:
                            stats.expired_keypair += 1
                        continue
                    if counter >= limit:
                        stats.replayed += 1
                        continue
                    try:
                        plaintext = decrypt(nonce(counter), buffer[start + 16 : end], None)
                    except InvalidTag:
                        stats.decrypt_failed += 1
                        continue
                    if not check(counter):
                        stats.replayed += 1
                        continue
                    run_bytes += size
                    length = len(plaintext)
                    if not length:
                        stats.keepalives_received += 1
                        continue
                    run_data += 1
                    version = plaintext[0] >> 4
                    if version == 4 and length >= 20:
                        inner = (plaintext[2] << 8) | plaintext[3]
                        src = plaintext[12:16]
                        valid = 20 <= inner <= length
                    elif version == 6 and length >= 40:
                        inner = 40 + ((plaintext[4] << 8) | plaintext[5])
                        src = plaintext[8:24]
                        valid = inner <= length
                    else:
                        valid = False
                    if not valid:
                        stats.invalid_inner_packet += 1
                        continue
                    if src != last_src:
                        last_src = src
                        src_ok = lookup(src) is peer
                    if not src_ok:
                        stats.source_not_allowed += 1
                        continue
                    accepted += 1
                    append(plaintext if inner == length else plaintext[:inner])
                    continue
            # not a transport message: close the run (a handshake may change the keypairs)
            if run_bytes:
                peer.received_burst(  # type: ignore[union-attr]
                    keypair, source, run_bytes, run_data, now, actions  # type: ignore[arg-type]
                )
            run_bytes = run_data = 0
            run_receiver = -1
            stats.datagrams_received -= 1  # _receive counts it
            packet = self._receive(bytes(buffer[start:end]), source, now, actions)
            if packet is not None:
                append(packet)
        if run_bytes:
            peer.received_burst(  # type: ignore[union-attr]
                keypair, source, run_bytes, run_data, now, actions  # type: ignore[arg-type]
            )
        stats.packets_received += accepted

    def receive_datagram(self, data: bytes, source: Endpoint, now: float) -> list[Action]:
        """Handle one UDP payload from ``source``; never raises (drops are counted)."""
        actions: list[Action] = []
        packet = self._receive(data, source, now, actions)
        if packet is not None:
            actions.append(WriteToTunnel(packet))
        return actions

    def receive_datagrams(
        self, datagrams: Iterable[tuple[bytes, Endpoint]], now: float
    ) -> tuple[list[bytes], list[Action]]:
        """Batch form: returns (packets for TUN in order, other actions in order)."""
        packets: list[bytes] = []
        actions: list[Action] = []
        receive = self._receive
        for data, source in datagrams:
            packet = receive(data, source, now, actions)
            if packet is not None:
                packets.append(packet)
        return packets, actions

    def _receive(
        self, data: bytes, source: Endpoint, now: float, actions: list[Action]
    ) -> bytes | None:
        stats = self.stats
        stats.datagrams_received += 1
        try:
            if len(data) >= TRANSPORT_MIN_SIZE:
                word, receiver, counter = _unpack_transport(data)
                if word == _TRANSPORT_WORD:
                    return self._receive_transport(data, receiver, counter, source, now, actions)
            kind = message_type(data)
            if kind == MESSAGE_COOKIE_REPLY:
                self._receive_cookie_reply(data, now)
            elif kind in (MESSAGE_INITIATION, MESSAGE_RESPONSE):
                self._receive_handshake(data, kind, source, now, actions)
            else:
                stats.malformed += 1  # a transport header with bad reserved bytes
        except MalformedMessageError:
            stats.malformed += 1
        except Exception:  # a bug must not take the daemon down with it
            stats.internal_errors += 1
        return None

    def _receive_transport(
        self,
        data: bytes,
        receiver: int,
        counter: int,
        source: Endpoint,
        now: float,
        actions: list[Action],
    ) -> bytes | None:
        stats = self.stats
        entry = self._ctx.indices.get(receiver)
        keypair = entry[1] if entry is not None else None
        if entry is None or keypair is None:
            stats.unknown_index += 1
            return None
        peer = entry[0]
        if now - keypair.created >= REJECT_AFTER_TIME:
            stats.expired_keypair += 1
            return None
        try:
            plaintext = peer.decapsulate(keypair, counter, data, source, now, actions)
        except DecryptionError:
            stats.decrypt_failed += 1
            return None
        except ReplayError:
            stats.replayed += 1
            return None
        size = len(plaintext)
        if not size:
            stats.keepalives_received += 1
            return None
        version = plaintext[0] >> 4
        if version == 4 and size >= 20:
            length = (plaintext[2] << 8) | plaintext[3]
            src = plaintext[12:16]
            valid = 20 <= length <= size
        elif version == 6 and size >= 40:
            length = 40 + ((plaintext[4] << 8) | plaintext[5])
            src = plaintext[8:24]
            valid = length <= size
        else:
            valid = False
        if not valid:
            stats.invalid_inner_packet += 1
            return None
        if self.allowed_ips.lookup(src) is not peer:
            stats.source_not_allowed += 1
            return None
        stats.packets_received += 1
        return plaintext if length == size else plaintext[:length]

    def _receive_handshake(
        self, data: bytes, kind: int, source: Endpoint, now: float, actions: list[Action]
    ) -> None:
        stats = self.stats
        identity = self._ctx.identity
        if identity is None:
            stats.no_private_key += 1
            return
        checker = self.cookie_checker
        if not checker.check_mac1(data):
            stats.bad_mac1 += 1
            return
        if self.under_load:
            src = source_bytes(source)
            if not checker.check_mac2(data, src, now):
                sender = int.from_bytes(data[4:8], "little")
                actions.append(SendDatagram(checker.create_reply(data, sender, src, now), source))
                stats.cookie_replies_sent += 1
                return
            if not self.rate_limiter.allow(source_key(source), now):
                stats.rate_limited += 1
                return
        try:
            if kind == MESSAGE_INITIATION:
                opened = open_initiation(identity, parse_initiation(data))
                peer = self.peers.get(opened.peer_public_key)
                if peer is None:
                    stats.unknown_peer += 1
                    return
                actions.extend(peer.consume_initiation(opened, source, len(data), now))
            else:
                response = parse_response(data)
                entry = self._ctx.indices.get(response.receiver)
                if entry is None or entry[1] is not None:
                    stats.unknown_index += 1
                    return
                actions.extend(entry[0].consume_response(response, source, len(data), now))
        except MalformedMessageError:
            raise
        except (RemoteProtocolError, LocalProtocolError):
            stats.handshake_rejected += 1

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        reply = parse_cookie_reply(data)
        entry = self._ctx.indices.get(reply.receiver)
        if entry is None:
            self.stats.unknown_index += 1
        elif entry[0].consume_cookie_reply(reply, now):
            self.stats.cookie_replies_accepted += 1
        else:
            self.stats.cookie_replies_rejected += 1

    # -- timers ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest `now` at which :meth:`on_timer` has work, or None."""
        best = self.rate_limiter.next_deadline()
        for peer in self.peers.values():
            when = peer.timers.next_deadline()
            if when is not None and (best is None or when < best):
                best = when
        return best

    def on_timer(self, now: float) -> list[Action]:
        """Run every due timer of every peer."""
        actions: list[Action] = []
        for peer in list(self.peers.values()):
            when = peer.timers.next_deadline()
            if when is not None and when <= now:
                actions.extend(peer.on_timer(now))
        gc = self.rate_limiter.next_deadline()
        if gc is not None and gc <= now:
            self.rate_limiter.collect_garbage(now)
        return actions

    # -- management --------------------------------------------------------------------------

    def set_private_key(self, private_key: PrivateKey | None) -> None:
        """Change our static key; sessions are expired so the next packet re-handshakes."""
        if private_key == self.private_key:
            return
        identity = StaticIdentity.from_private_key(private_key) if private_key else None
        self._ctx.identity = identity
        if identity is not None:
            self.cookie_checker.set_public_key(identity.public_key)
            if identity.public_key in self.peers:  # a peer with our own key is meaningless
                self.remove_peer(identity.public_key)
        for peer in self.peers.values():
            peer.set_identity(identity)
            peer.expire_current_keypairs()

    def is_own_key(self, public_key: PublicKey) -> bool:
        return self.public_key is not None and public_key == self.public_key

    def add_peer(
        self,
        public_key: PublicKey,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: Endpoint | None = None,
        persistent_keepalive: int = 0,
        allowed_ips: Iterable[NetworkLike] = (),
    ) -> Peer:
        """Create a peer; raises LocalProtocolError for a duplicate or our own key."""
        if public_key in self.peers:
            raise LocalProtocolError("peer already exists")
        if self.is_own_key(public_key):
            raise LocalProtocolError("a peer cannot have the device's own public key")
        peer = Peer(
            self._ctx,
            public_key,
            preshared_key=preshared_key,
            endpoint=endpoint,
            persistent_keepalive=persistent_keepalive,
        )
        self.peers[public_key] = peer
        for network in allowed_ips:
            self.allowed_ips.insert(network, peer)
        return peer

    def update_peer(
        self,
        public_key: PublicKey,
        now: float,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: Endpoint | None = None,
        persistent_keepalive: int | None = None,
    ) -> list[Action]:
        """Change fields of a peer (None = unchanged).  Turning persistent keepalive on
        sends a keepalive at once, as wireguard-go does."""
        peer = self.peers.get(public_key)
        if peer is None:
            raise LocalProtocolError("no such peer")
        if preshared_key is not None:
            peer.preshared_key = preshared_key
        if endpoint is not None:
            peer.endpoint = endpoint
        actions: list[Action] = []
        if persistent_keepalive is not None:
            was_off = peer.persistent_keepalive == 0
            peer.persistent_keepalive = persistent_keepalive
            if persistent_keepalive > 0 and was_off and self._ctx.identity is not None:
                actions.extend(peer.send_keepalive(now))
        return actions

    def remove_peer(self, public_key: PublicKey) -> bool:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return False
        peer.zero_key_material()
        self._ctx.indices.free_peer(peer)
        self.allowed_ips.remove_value(peer)
        return True

    def remove_all_peers(self) -> None:
        for public_key in list(self.peers):
            self.remove_peer(public_key)

    def set_allowed_ips(
        self, public_key: PublicKey, networks: Iterable[NetworkLike], *, replace: bool = True
    ) -> None:
        """Route ``networks`` to the peer; ``replace`` first drops its current prefixes."""
        peer = self.peers.get(public_key)
        if peer is None:
            raise LocalProtocolError("no such peer")
        if replace:
            self.allowed_ips.remove_value(peer)
        for network in networks:
            self.allowed_ips.insert(network, peer)

    def allowed_ips_of(self, public_key: PublicKey) -> list[IPv4Network | IPv6Network]:
        peer = self.peers.get(public_key)
        return self.allowed_ips.entries_for(peer) if peer is not None else []

    def peer_snapshots(self) -> list[PeerSnapshot]:
        """Per-peer state for `wg show` / UAPI get, in insertion order."""
        return [
            peer.snapshot(tuple(self.allowed_ips.entries_for(peer))) for peer in self.peers.values()
        ]
