"""Two and three tunkit.wireguard Devices wired together in memory (aioquic-style `transfer`),
with a fake clock: handshakes, data, timers, cookies, roaming, cryptokey routing, fuzzing."""

from __future__ import annotations

import ipaddress
import random
import struct
from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunkit.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_TIME,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
)
from tunkit.wireguard.crypto import PresharedKey, PrivateKey, PublicKey
from tunkit.wireguard.device import (
    Action,
    Device,
    EndpointChanged,
    HandshakeCompleted,
    HandshakeGaveUp,
    KeysZeroed,
    SendDatagram,
    SendDatagrams,
    WriteToTunnel,
)
from tunkit.wireguard.messages import build_initiation

WALL = 1_700_000_000.0
A_ADDR = ("192.0.2.1", 51820)
B_ADDR = ("192.0.2.2", 51821)
C_ADDR = ("192.0.2.3", 51822)


def ip4(src: str, dst: str, payload: bytes = b"hello") -> bytes:
    return struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
        ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
    ) + payload  # fmt: skip


def ip6(src: str, dst: str, payload: bytes = b"hello6") -> bytes:
    return struct.pack(
        "!IHBB16s16s", 6 << 28, len(payload), 17, 64,
        ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
    ) + payload  # fmt: skip


def datagrams_of(actions: list[Action]) -> list[bytes]:
    out: list[bytes] = []
    for action in actions:
        if isinstance(action, SendDatagram):
            out.append(action.data)
        elif isinstance(action, SendDatagrams):
            out.extend(action.datagrams)
    return out


@dataclass
class Wire:
    """Devices at fixed addresses; `transfer` delivers every SendDatagram until quiet."""

    devices: dict[tuple[str, int], Device]
    tunnel: dict[int, list[bytes]] = field(default_factory=dict)
    events: list[Action] = field(default_factory=list)
    sent: list[tuple[tuple[str, int], tuple[str, int], bytes]] = field(default_factory=list)
    blocked: set[tuple[str, int]] = field(default_factory=set)  # destinations that drop
    source_override: dict[int, tuple[str, int]] = field(default_factory=dict)  # NAT / roaming

    def addr(self, device: Device) -> tuple[str, int]:
        if id(device) in self.source_override:
            return self.source_override[id(device)]
        return next(a for a, d in self.devices.items() if d is device)

    def received(self, device: Device) -> list[bytes]:
        return self.tunnel.setdefault(id(device), [])

    def transfer(self, sender: Device, actions: list[Action], now: float) -> None:
        queue = deque((sender, a) for a in actions)
        while queue:
            device, action = queue.popleft()
            if isinstance(action, WriteToTunnel):
                self.received(device).append(action.packet)
                continue
            if isinstance(action, SendDatagram):
                batch, endpoint = [action.data], action.endpoint
            elif isinstance(action, SendDatagrams):
                batch, endpoint = list(action.datagrams), action.endpoint
            else:
                self.events.append(action)
                continue
            source = self.addr(device)
            for data in batch:
                self.sent.append((source, endpoint, data))
                target = self.devices.get(endpoint)
                if target is None or endpoint in self.blocked:
                    continue
                queue.extend((target, a) for a in target.receive_datagram(data, source, now))

    def tick(self, until: float, start: float) -> float:
        """Run every device's timers from `start` up to `until`; returns the last time used."""
        now = start
        while True:
            deadlines = [
                d for dev in self.devices.values() if (d := dev.next_deadline()) is not None
            ]
            if not deadlines or min(deadlines) > until:
                return now
            now = max(now, min(deadlines))
            for dev in list(self.devices.values()):
                due = dev.next_deadline()
                if due is not None and due <= now:
                    self.transfer(dev, dev.on_timer(now), now)


def make_pair(seed: int = 1, psk: PresharedKey | None = None) -> tuple[Device, Device, Wire]:
    r = random.Random(seed)
    ka, kb = PrivateKey(r.randbytes(32)), PrivateKey(r.randbytes(32))
    a = Device(ka, rng=random.Random(seed + 100).randbytes, wall_offset=WALL)
    b = Device(kb, rng=random.Random(seed + 200).randbytes, wall_offset=WALL)
    a.add_peer(kb.public_key(), endpoint=B_ADDR, preshared_key=psk,
               allowed_ips=["10.0.0.2/32", "fd00::2/128"])  # fmt: skip
    b.add_peer(ka.public_key(), preshared_key=psk, allowed_ips=["10.0.0.1/32", "fd00::1/128"])
    return a, b, Wire({A_ADDR: a, B_ADDR: b})


def peer_of(device: Device) -> object:
    (peer,) = device.peers.values()
    return peer


def handshake(a: Device, wire: Wire, now: float = 0.0) -> None:
    wire.transfer(a, a.send_packet(ip4("10.0.0.1", "10.0.0.2", b"first"), now), now)


def assert_no_internal_errors(*devices: Device) -> None:
    for device in devices:
        assert device.stats.internal_errors == 0


# ---- handshake and data -----------------------------------------------------------------------


def test_handshake_and_data_both_ways() -> None:
    a, b, wire = make_pair()
    handshake(a, wire, 0.0)
    kinds = [d[0] for _, _, d in wire.sent]
    assert kinds == [1, 2, 4]  # initiation, response, the staged packet as transport
    assert wire.received(b) == [ip4("10.0.0.1", "10.0.0.2", b"first")]
    wire.transfer(b, b.send_packet(ip4("10.0.0.2", "10.0.0.1", b"reply"), 1.0), 1.0)
    wire.transfer(b, b.send_packet(ip6("fd00::2", "fd00::1"), 1.0), 1.0)
    assert wire.received(a) == [ip4("10.0.0.2", "10.0.0.1", b"reply"), ip6("fd00::2", "fd00::1")]
    pa, pb = peer_of(a), peer_of(b)
    assert pa.tx_bytes == pb.rx_bytes == 148 + 64  # type: ignore[attr-defined]
    assert pb.tx_bytes == pa.rx_bytes == 92 + 64 + 80  # type: ignore[attr-defined]
    assert pa.last_handshake == WALL + 0.0 and pb.last_handshake == WALL  # type: ignore[attr-defined]
    assert pb.endpoint == A_ADDR  # type: ignore[attr-defined]
    assert [type(e) for e in wire.events].count(HandshakeCompleted) == 2
    assert b.stats.packets_received == 1 and a.stats.packets_received == 2
    assert_no_internal_errors(a, b)


def test_with_preshared_key_and_mismatch() -> None:
    a, b, wire = make_pair(psk=PresharedKey(b"\x42" * 32))
    handshake(a, wire)
    assert len(wire.received(b)) == 1
    a, b, wire = make_pair(seed=2, psk=PresharedKey(b"\x42" * 32))
    peer_of(b).preshared_key = PresharedKey(b"\x43" * 32)  # type: ignore[attr-defined]
    handshake(a, wire)
    assert wire.received(b) == [] and a.stats.handshake_rejected == 1


def test_responder_waits_for_first_transport_before_sending() -> None:
    a, b, wire = make_pair()
    wire.blocked.add(A_ADDR)  # hold b's response
    handshake(a, wire)
    peer_b = peer_of(b)
    assert peer_b.keypairs.next is not None and peer_b.keypairs.current is None  # type: ignore[attr-defined]
    assert datagrams_of(b.send_packet(ip4("10.0.0.2", "10.0.0.1", b"early"), 0.5)) == []
    response = next(d for _, dst, d in wire.sent if d[0] == 2)
    wire.blocked.clear()
    wire.transfer(b, [SendDatagram(response, A_ADDR)], 1.0)
    # a completes and sends its staged packet; that confirms b's `next`, which releases b's
    assert wire.received(b) == [ip4("10.0.0.1", "10.0.0.2", b"first")]
    assert wire.received(a) == [ip4("10.0.0.2", "10.0.0.1", b"early")]
    assert [d[0] for _, _, d in wire.sent] == [1, 2, 2, 4, 4]


def test_batches() -> None:
    a, b, wire = make_pair()
    handshake(a, wire)
    packets = [ip4("10.0.0.1", "10.0.0.2", bytes([i]) * i) for i in range(1, 40)]
    actions = a.send_packets([*packets, ip4("10.0.0.1", "10.9.9.9")], 2.0)
    assert len(actions) == 1 and isinstance(actions[0], SendDatagrams)
    assert a.stats.no_route == 1
    got, other = b.receive_datagrams([(d, A_ADDR) for d in actions[0].datagrams], 2.0)
    assert got == packets and other == []


# ---- security ----------------------------------------------------------------------------------


def test_replayed_transport_is_rejected_and_not_counted() -> None:
    a, b, wire = make_pair()
    handshake(a, wire)
    data = datagrams_of(a.send_packet(ip4("10.0.0.1", "10.0.0.2", b"x"), 1.0))[0]
    assert b.receive_datagram(data, A_ADDR, 1.0) == [
        WriteToTunnel(ip4("10.0.0.1", "10.0.0.2", b"x"))
    ]
    rx = peer_of(b).rx_bytes  # type: ignore[attr-defined]
    assert b.receive_datagram(data, A_ADDR, 1.1) == []
    assert b.stats.replayed == 1 and peer_of(b).rx_bytes == rx  # type: ignore[attr-defined]


def test_tampered_transport_and_unknown_index_are_dropped() -> None:
    a, b, wire = make_pair()
    handshake(a, wire)
    data = bytearray(datagrams_of(a.send_packet(ip4("10.0.0.1", "10.0.0.2"), 1.0))[0])
    data[-1] ^= 1
    assert b.receive_datagram(bytes(data), A_ADDR, 1.0) == []
    assert b.stats.decrypt_failed == 1
    data[4:8] = b"\xde\xad\xbe\xef"
    assert b.receive_datagram(bytes(data), A_ADDR, 1.0) == []
    assert b.stats.unknown_index == 1


def test_bad_mac1_and_unknown_peer_are_dropped() -> None:
    a, b, _wire = make_pair()
    actions = a.send_packet(ip4("10.0.0.1", "10.0.0.2"), 0.0)
    initiation = bytearray(datagrams_of(actions)[0])
    initiation[120] ^= 1
    assert b.receive_datagram(bytes(initiation), A_ADDR, 0.0) == []
    assert b.stats.bad_mac1 == 1
    stranger = Device(PrivateKey(b"\x09" * 32), rng=random.Random(9).randbytes)
    stranger.add_peer(b.public_key, endpoint=B_ADDR, allowed_ips=["0.0.0.0/0"])  # type: ignore[arg-type]
    msg = datagrams_of(stranger.send_packet(ip4("10.0.0.9", "10.0.0.2"), 0.0))[0]
    assert b.receive_datagram(msg, C_ADDR, 0.0) == []
    assert b.stats.unknown_peer == 1 and b.stats.handshake_rejected == 0


def test_low_order_keys_never_send() -> None:
    a, _, _ = make_pair()
    a.add_peer(PublicKey(bytes(32)), endpoint=C_ADDR, allowed_ips=["10.0.0.3/32"])
    assert datagrams_of(a.send_packet(ip4("10.0.0.1", "10.0.0.3"), 0.0)) == []


def test_low_order_ephemeral_is_rejected() -> None:
    from tunkit.wireguard.cookie import CookieGenerator

    _a, b, _ = make_pair()
    fake = build_initiation(1, bytes(32), bytes(48), bytes(28))
    fake = CookieGenerator(b.public_key).add_macs(fake, 0.0)  # type: ignore[arg-type]
    assert b.receive_datagram(fake, A_ADDR, 0.0) == []
    assert b.stats.handshake_rejected == 1 and b.stats.bad_mac1 == 0


def test_inner_source_outside_allowed_ips_is_dropped() -> None:
    a, b, wire = make_pair()
    handshake(a, wire)
    spoofed = ip4("10.9.9.9", "10.0.0.2", b"spoof")
    wire.transfer(a, a.send_packet(spoofed, 1.0), 1.0)
    assert spoofed not in wire.received(b)
    assert b.stats.source_not_allowed == 1
    garbage = b"\x45" + bytes(10)  # claims IPv4, too short
    wire.transfer(a, datagrams_and(a, garbage, 1.0), 1.0)
    assert b.stats.invalid_inner_packet == 1


def datagrams_and(a: Device, packet: bytes, now: float) -> list[Action]:
    """Encrypt an arbitrary payload on a's current session (bypassing routing)."""
    peer = peer_of(a)
    return peer.encapsulate(packet, now)  # type: ignore[attr-defined,no-any-return]


def test_no_route_and_invalid_outbound() -> None:
    a, _, _ = make_pair()
    assert a.send_packet(ip4("10.0.0.1", "172.16.0.1"), 0.0) == []
    assert a.send_packet(b"\x00\x01", 0.0) == []
    assert a.stats.no_route == 1 and a.stats.invalid_outbound == 1


# ---- cookies under load -----------------------------------------------------------------------


def test_cookie_flow_under_load() -> None:
    a, b, wire = make_pair()
    b.under_load = True
    handshake(a, wire, 0.0)
    assert b.stats.cookie_replies_sent == 1 and a.stats.cookie_replies_accepted == 1
    assert [d[0] for _, _, d in wire.sent] == [1, 3]
    assert wire.received(b) == []
    # the retry (REKEY_TIMEOUT + jitter later) carries mac2 and succeeds
    wire.tick(until=REKEY_TIMEOUT + 1, start=0.0)
    assert [d[0] for _, _, d in wire.sent] == [1, 3, 1, 2, 4]
    assert wire.sent[2][2][132:] != bytes(16)  # mac2 present
    assert wire.received(b) == [ip4("10.0.0.1", "10.0.0.2", b"first")]


def test_rate_limit_under_load() -> None:
    a, b, wire = make_pair()
    b.under_load = True
    handshake(a, wire, 0.0)
    wire.tick(until=REKEY_TIMEOUT + 1, start=0.0)
    retry = wire.sent[2][2]
    for _ in range(10):
        b.receive_datagram(retry, A_ADDR, 6.0)
    # the bucket refilled to 5 costs since the retry passed: 4 pass (and are replays), 6 not
    assert b.stats.rate_limited == 6 and b.stats.handshake_rejected == 4


# ---- timers ------------------------------------------------------------------------------------


def test_retries_then_give_up_after_rekey_attempt_time() -> None:
    a, _b, wire = make_pair()
    wire.blocked.add(B_ADDR)
    handshake(a, wire, 0.0)
    end = wire.tick(until=200.0, start=0.0)
    initiations = [d for _, _, d in wire.sent if d[0] == 1]
    assert len(initiations) == 20  # 1 + MAX_TIMER_HANDSHAKES + 1 retries, like wireguard-go
    gave_up = [e for e in wire.events if isinstance(e, HandshakeGaveUp)]
    assert len(gave_up) == 1 and gave_up[0].dropped == 1
    assert REKEY_ATTEMPT_TIME < end <= 20 * (REKEY_TIMEOUT + 0.334)
    assert not peer_of(a).staged  # type: ignore[attr-defined]
    assert a.next_deadline() == pytest.approx(end + 3 * REJECT_AFTER_TIME)


def test_keepalive_after_receiving_data_without_reply() -> None:
    a, _b, wire = make_pair()
    handshake(a, wire, 0.0)
    wire.sent.clear()
    wire.tick(until=KEEPALIVE_TIMEOUT - 0.1, start=0.0)
    assert wire.sent == []
    wire.tick(until=KEEPALIVE_TIMEOUT + 0.1, start=0.0)
    assert [(src, len(d)) for src, _, d in wire.sent] == [(B_ADDR, 32)]
    assert a.stats.keepalives_received == 1


def test_new_handshake_when_sent_data_gets_no_answer() -> None:
    a, _b, wire = make_pair()
    handshake(a, wire, 0.0)  # a sent data at t=0 ...
    wire.blocked.update({A_ADDR, B_ADDR})  # ... and hears nothing after that
    wire.transfer(a, a.send_packet(ip4("10.0.0.1", "10.0.0.2"), 1.0), 1.0)
    wire.sent.clear()
    wire.tick(until=KEEPALIVE_TIMEOUT + REKEY_TIMEOUT - 0.01, start=1.0)
    assert [d[0] for src, _, d in wire.sent if src == A_ADDR] == []
    wire.tick(until=KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 0.34, start=1.0)
    assert [d[0] for src, _, d in wire.sent if src == A_ADDR] == [1]


def test_rekey_after_time_on_send() -> None:
    a, b, wire = make_pair()
    handshake(a, wire, 0.0)
    first_index = peer_of(a).keypairs.current.local_index  # type: ignore[attr-defined]
    now = REKEY_AFTER_TIME + 1
    wire.sent.clear()
    wire.transfer(a, a.send_packet(ip4("10.0.0.1", "10.0.0.2", b"late"), now), now)
    assert [d[0] for _, _, d in wire.sent] == [4, 1, 2, 4]  # data on old key, then rekey
    kps = peer_of(a).keypairs  # type: ignore[attr-defined]
    assert kps.current.local_index != first_index and kps.previous.local_index == first_index
    assert wire.received(b)[-1] == ip4("10.0.0.1", "10.0.0.2", b"late")
    # the responder never rekeys on send just because of age
    wire.sent.clear()
    wire.transfer(b, b.send_packet(ip4("10.0.0.2", "10.0.0.1"), now + 1), now + 1)
    assert [d[0] for _, _, d in wire.sent] == [4]


def test_rekey_on_receive_near_reject_after_time() -> None:
    a, b, wire = make_pair()
    handshake(a, wire, 0.0)
    # keep b's session alive by having b talk; a only receives
    now = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT + 1
    wire.sent.clear()
    wire.transfer(b, b.send_packet(ip4("10.0.0.2", "10.0.0.1"), now), now)
    assert [d[0] for src, _, d in wire.sent if src == A_ADDR][:1] == [1]


def test_expired_keypair_is_not_used() -> None:
    a, b, wire = make_pair()
    handshake(a, wire, 0.0)
    old = datagrams_of(a.send_packet(ip4("10.0.0.1", "10.0.0.2"), 1.0))[0]
    assert b.receive_datagram(old, A_ADDR, REJECT_AFTER_TIME + 1) == []
    assert b.stats.expired_keypair == 1
    wire.sent.clear()
    now = REJECT_AFTER_TIME + 2
    wire.transfer(b, b.send_packet(ip4("10.0.0.2", "10.0.0.1"), now), now)
    assert [d[0] for _, _, d in wire.sent][:2] == [1, 2]  # b must handshake first


def test_persistent_keepalive() -> None:
    a, b, wire = make_pair()
    handshake(a, wire, 0.0)
    wire.sent.clear()
    actions = a.update_peer(b.public_key, 1.0, persistent_keepalive=25)  # type: ignore[arg-type]
    assert [len(d) for d in datagrams_of(actions)] == [32]  # sent at once when turned on
    wire.transfer(a, actions, 1.0)
    wire.sent.clear()
    # b answers a's t=0 data with a keepalive at t=10; that packet also restarts a's
    # persistent-keepalive timer, which then fires at 10 + 25
    wire.tick(until=10 + 25 - 0.01, start=1.0)
    assert [(src, len(d)) for src, _, d in wire.sent] == [(B_ADDR, 32)]
    wire.tick(until=10 + 25 + 0.01, start=1.0)
    assert [(src, len(d)) for src, _, d in wire.sent] == [(B_ADDR, 32), (A_ADDR, 32)]
    wire.tick(until=10 + 50 + 0.01, start=35.0)
    assert [src for src, _, _ in wire.sent].count(A_ADDR) == 2


def test_zero_key_material_after_three_reject_after_times() -> None:
    a, b, wire = make_pair()
    handshake(a, wire, 0.0)
    wire.blocked.update({A_ADDR, B_ADDR})
    wire.tick(until=3 * REJECT_AFTER_TIME + 1, start=0.0)
    assert any(isinstance(e, KeysZeroed) for e in wire.events)
    for device in (a, b):
        kps = peer_of(device).keypairs  # type: ignore[attr-defined]
        assert kps.all() == []
        assert len(device._ctx.indices) == 0


# ---- roaming, key changes, management ---------------------------------------------------------


def test_roaming_endpoint_follows_authenticated_packets() -> None:
    a, b, wire = make_pair()
    handshake(a, wire, 0.0)
    new_addr = ("198.51.100.50", 40000)
    wire.devices[new_addr] = a
    wire.source_override[id(a)] = new_addr
    wire.transfer(a, a.send_packet(ip4("10.0.0.1", "10.0.0.2", b"moved"), 2.0), 2.0)
    assert peer_of(b).endpoint == new_addr  # type: ignore[attr-defined]
    assert EndpointChanged(a.public_key, new_addr) in wire.events  # type: ignore[arg-type]
    wire.sent.clear()
    wire.transfer(b, b.send_packet(ip4("10.0.0.2", "10.0.0.1"), 3.0), 3.0)
    assert wire.sent[0][1] == new_addr
    # an unauthenticated datagram from elsewhere does not move the endpoint
    b.receive_datagram(b"\x04\0\0\0" + bytes(40), ("203.0.113.1", 1), 4.0)
    assert peer_of(b).endpoint == new_addr  # type: ignore[attr-defined]


def test_private_key_change_forces_new_handshake() -> None:
    a, b, wire = make_pair()
    handshake(a, wire, 0.0)
    new_key = PrivateKey(b"\x11" * 32)
    b.set_private_key(new_key)
    a.remove_peer(next(iter(a.peers)))
    a.add_peer(new_key.public_key(), endpoint=B_ADDR, allowed_ips=["10.0.0.2/32"])
    wire.sent.clear()
    wire.transfer(b, b.send_packet(ip4("10.0.0.2", "10.0.0.1", b"new"), 1.0), 1.0)
    assert [d[0] for _, _, d in wire.sent] == [1, 2, 4]
    assert wire.received(a)[-1] == ip4("10.0.0.2", "10.0.0.1", b"new")


def test_management_snapshot_and_errors() -> None:
    from tunkit.errors import LocalProtocolError

    a, b, wire = make_pair()
    with pytest.raises(LocalProtocolError):
        a.add_peer(b.public_key)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        a.add_peer(a.public_key)  # type: ignore[arg-type]
    a.set_allowed_ips(b.public_key, ["10.1.0.0/16"], replace=False)  # type: ignore[arg-type]
    (snap,) = a.peer_snapshots()
    assert [str(n) for n in snap.allowed_ips] == ["10.0.0.2/32", "10.1.0.0/16", "fd00::2/128"]
    assert snap.last_handshake is None and snap.endpoint == B_ADDR
    a.set_allowed_ips(b.public_key, ["10.2.0.0/16"])  # type: ignore[arg-type]
    assert [str(n) for n in a.allowed_ips_of(b.public_key)] == ["10.2.0.0/16"]  # type: ignore[arg-type]
    handshake(a, wire)
    assert a.stats.no_route == 1
    assert a.remove_peer(b.public_key) and not a.peers  # type: ignore[arg-type]
    assert a.allowed_ips.lookup(bytes([10, 2, 0, 1])) is None


# ---- three peers: hub and spokes --------------------------------------------------------------


def test_hub_routes_between_spokes() -> None:
    r = random.Random(7)
    kh, k1, k2 = (PrivateKey(r.randbytes(32)) for _ in range(3))
    hub = Device(kh, rng=random.Random(1).randbytes, wall_offset=WALL)
    s1 = Device(k1, rng=random.Random(2).randbytes, wall_offset=WALL)
    s2 = Device(k2, rng=random.Random(3).randbytes, wall_offset=WALL)
    hub.add_peer(k1.public_key(), allowed_ips=["10.0.0.1/32"])
    hub.add_peer(k2.public_key(), allowed_ips=["10.0.0.2/32", "10.0.2.0/24"])
    s1.add_peer(kh.public_key(), endpoint=C_ADDR, allowed_ips=["10.0.0.0/16"])
    s2.add_peer(kh.public_key(), endpoint=C_ADDR, allowed_ips=["10.0.0.0/16"])
    wire = Wire({A_ADDR: s1, B_ADDR: s2, C_ADDR: hub})
    to_s2 = ip4("10.0.0.1", "10.0.2.7", b"via hub")
    wire.transfer(s2, s2.send_packet(ip4("10.0.0.2", "10.0.0.100"), 0.0), 0.0)  # s2 says hello
    wire.transfer(s1, s1.send_packet(to_s2, 0.0), 0.0)
    assert wire.received(hub)[-1] == to_s2
    # the shell writes it to TUN, the kernel routes it back into the hub's TUN:
    wire.transfer(hub, hub.send_packet(to_s2, 0.1), 0.1)
    assert wire.received(s2) == [to_s2]
    assert hub.peers[k2.public_key()].endpoint == B_ADDR
    assert hub.send_packet(ip4("10.0.0.9", "10.0.0.1"), 0.2) != []  # picks spoke 1
    assert_no_internal_errors(hub, s1, s2)


# ---- fuzzing -----------------------------------------------------------------------------------

_FUZZ_A, _FUZZ_B, _FUZZ_WIRE = make_pair(seed=42)
handshake(_FUZZ_A, _FUZZ_WIRE, 0.0)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_receive_datagram_random_bytes(data: bytes) -> None:
    before = _FUZZ_B.stats.datagrams_received
    actions = _FUZZ_B.receive_datagram(data, ("203.0.113.9", 9), 1.0)
    assert all(not isinstance(x, WriteToTunnel) for x in actions)
    assert _FUZZ_B.stats.datagrams_received == before + 1
    assert _FUZZ_B.stats.internal_errors == 0


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([(1, 148), (2, 92), (3, 64), (4, 32), (4, 64)]), st.data(), st.booleans())
def test_fuzz_receive_datagram_well_framed(
    kind_size: tuple[int, int], data: st.DataObject, load: bool
) -> None:
    kind, size = kind_size
    body = data.draw(st.binary(min_size=size - 4, max_size=size - 4))
    raw = bytes([kind, 0, 0, 0]) + body
    if kind == 4 and data.draw(st.booleans()):  # aim at a real session index
        index = peer_of(_FUZZ_B).keypairs.current.local_index  # type: ignore[attr-defined]
        raw = raw[:4] + index.to_bytes(4, "little") + raw[8:]
    if kind in (1, 2) and data.draw(st.booleans()):  # valid mac1: reach the handshake code
        from tunkit.wireguard.cookie import CookieGenerator

        raw = CookieGenerator(_FUZZ_B.public_key).add_macs(raw, 1.0)  # type: ignore[arg-type]
    _FUZZ_B.under_load = load
    try:
        actions = _FUZZ_B.receive_datagram(raw, ("203.0.113.9", 9), 1.0)
    finally:
        _FUZZ_B.under_load = False
    assert all(not isinstance(x, WriteToTunnel) for x in actions)
    assert _FUZZ_B.stats.internal_errors == 0


def test_ipv6_outer_endpoints_with_flowinfo_and_scope() -> None:
    a, b, wire = make_pair()
    v6_a = ("2001:db8::1", 51820, 0, 0)  # what recvfrom gives for AF_INET6
    v6_b = ("2001:db8::2", 51821, 0, 0)
    wire.devices = {v6_a: a, v6_b: b}
    a.update_peer(b.public_key, 0.0, endpoint=v6_b)  # type: ignore[arg-type]
    b.under_load = True  # exercise the cookie path with an IPv6 source as well
    handshake(a, wire, 0.0)
    wire.tick(until=REKEY_TIMEOUT + 1, start=0.0)
    assert wire.received(b) == [ip4("10.0.0.1", "10.0.0.2", b"first")]
    assert peer_of(b).endpoint == v6_a  # type: ignore[attr-defined]
    assert b.stats.cookie_replies_sent == 1


def test_without_private_key_handshakes_are_dropped() -> None:
    a, b, wire = make_pair()
    b.set_private_key(None)
    assert b.public_key is None
    handshake(a, wire, 0.0)
    assert b.stats.no_private_key == 1 and wire.received(b) == []
    assert b.receive_datagram(b"\x01\0\0\0" + bytes(144), A_ADDR, 0.0) == []
    assert_no_internal_errors(a, b)
