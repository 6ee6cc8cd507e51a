"""The batch fast paths of the WireGuard core give the same results as the per-packet ones:
Device.receive_segments (one GRO read) against receive_datagram, send_packets on views of a
reused buffer, and Keypair.seal_packed's layout."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_packet_vnet import TS_OPTS, super_packet
from test_wg_device import A_ADDR, handshake, ip4, make_pair, peer_of
from test_wg_offload import TS, _reference, _v4, _v6

from tunkit.packet.tcpsplit import plan_tcp_split
from tunkit.packet.vnet import gso_split
from tunkit.services.wg_offload import coalesce_for_tun
from tunkit.wireguard.device import Device, SendDatagram, SendDatagrams, WriteToTunnel
from tunkit.wireguard.session import Keypair

NOW = 5.0


def state_of(device: Device) -> dict[str, Any]:
    peer: Any = peer_of(device)
    timers = peer.timers
    return {
        "stats": device.stats.as_dict(),
        "rx_bytes": peer.rx_bytes,
        "endpoint": peer.endpoint,
        "deadlines": list(timers.deadlines),
        "need_another_keepalive": timers.need_another_keepalive,
        "keypairs": [k.local_index if k else None for k in
                     (peer.keypairs.previous, peer.keypairs.current, peer.keypairs.next)],
    }


def mutate(datagrams: list[bytes], ops: list[tuple[int, int]]) -> list[bytes]:
    """Apply (op, index) edits: tamper, replay an earlier one, unknown index, garbage."""
    out = list(datagrams)
    for op, index in ops:
        i = index % len(out)
        data = bytearray(out[i])
        if op == 0:
            data[-1] ^= 1
        elif op == 1:
            data = bytearray(out[index % (i + 1)])
        elif op == 2:
            data[4:8] = b"\xde\xad\xbe\xef"
        else:
            data[0] = 9
        out[i] = bytes(data)
    return out


@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(1, 30),
    ops=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1000)), max_size=8),
    spoof=st.sets(st.integers(0, 29), max_size=4),
)
def test_receive_segments_matches_per_datagram(count: int, ops: list[tuple[int, int]],
                                               spoof: set[int]) -> None:
    a1, b1, wire1 = make_pair(7)
    a2, b2, wire2 = make_pair(7)
    handshake(a1, wire1)
    handshake(a2, wire2)
    assert state_of(b1) == state_of(b2)
    before = b2.stats.datagrams_received
    # equal-size packets, some from a source outside a's allowed IPs (dropped by b)
    packets = [ip4("10.0.0.9" if i in spoof else "10.0.0.1", "10.0.0.2", bytes([i]) * 100)
               for i in range(count)]
    (action,) = a1.send_packets(packets, NOW)
    assert isinstance(action, SendDatagrams)
    datagrams = mutate([bytes(d) for d in action.datagrams], ops)
    expected: list[bytes] = []
    for data in datagrams:
        expected += [x.packet for x in b1.receive_datagram(data, A_ADDR, NOW)
                     if isinstance(x, WriteToTunnel)]
    got: list[bytes] = []
    actions: list[Any] = []
    size = len(datagrams[0])
    b2.receive_segments(memoryview(b"".join(datagrams)), size, A_ADDR, NOW, got, actions)
    assert got == expected
    assert state_of(b2) == state_of(b1)
    assert b2.stats.datagrams_received - before == count


def test_receive_segments_confirms_the_responder_keypair_and_roams() -> None:
    results = []
    for batch in (False, True):
        a, b, _wire = make_pair(3)
        (init,) = a.send_packet(ip4("10.0.0.1", "10.0.0.2", b"queued"), 0.0)
        assert isinstance(init, SendDatagram)
        (response,) = [x for x in b.receive_datagram(bytes(init.data), A_ADDR, 0.0)
                       if isinstance(x, SendDatagram)]
        sent = [x for x in a.receive_datagram(bytes(response.data), ("192.0.2.2", 51821), 0.1)
                if isinstance(x, SendDatagrams | SendDatagram)]
        datagrams = [bytes(d) for x in sent for d in
                     (x.datagrams if isinstance(x, SendDatagrams) else [x.data])]
        assert peer_of(b).keypairs.current is None  # type: ignore[attr-defined]
        roamed = ("192.0.2.77", 4000)
        packets: list[bytes] = []
        actions: list[Any] = []
        if batch:
            for data in datagrams:
                b.receive_segments(memoryview(data), 0, roamed, 0.2, packets, actions)
        else:
            for data in datagrams:
                for x in b.receive_datagram(data, roamed, 0.2):
                    (packets if isinstance(x, WriteToTunnel) else actions).append(
                        x.packet if isinstance(x, WriteToTunnel) else x)
        assert packets == [ip4("10.0.0.1", "10.0.0.2", b"queued")]
        assert peer_of(b).keypairs.current is not None  # type: ignore[attr-defined]
        assert peer_of(b).endpoint == roamed  # type: ignore[attr-defined]
        results.append(([type(x).__name__ for x in actions], state_of(b)))
    assert results[0] == results[1]


def test_handshake_inside_a_read_goes_the_slow_path() -> None:
    a, b, wire = make_pair(4)
    handshake(a, wire)
    before = b.stats.datagrams_received
    packets: list[bytes] = []
    actions: list[Any] = []
    initiation = bytearray(148)
    initiation[0] = 1
    b.receive_segments(memoryview(bytes(initiation)), 0, A_ADDR, NOW, packets, actions)
    assert packets == [] and actions == []
    assert b.stats.bad_mac1 == 1 and b.stats.datagrams_received == before + 1


def test_send_packets_copies_views_it_queues() -> None:
    a, b, wire = make_pair(5)
    buffer = bytearray(ip4("10.0.0.1", "10.0.0.2", b"A" * 50) * 2)
    view = memoryview(buffer)
    half = len(buffer) // 2
    actions = a.send_packets([view[:half], view[half:]], 0.0)  # no session: queued
    buffer[:] = bytes(len(buffer))  # the caller reuses its buffer
    wire.transfer(a, actions, 0.0)
    assert wire.received(b) == [ip4("10.0.0.1", "10.0.0.2", b"A" * 50)] * 2


def test_seal_packed_layout() -> None:
    from tunkit.wireguard.handshake import SessionKeys

    sender = Keypair(SessionKeys(b"\1" * 32, b"\2" * 32, 10, 20, True), 0.0)
    receiver = Keypair(SessionKeys(b"\2" * 32, b"\1" * 32, 20, 10, False), 0.0)
    plaintexts = [b"x" * 1420, b"y" * 1419, b"", b"z" * 17]
    buffer, sizes = sender.seal_packed(plaintexts, 1420)
    assert sizes == [1452, 1452, 32, 64] and len(buffer) == sum(sizes)
    offset = 0
    for counter, (plaintext, size) in enumerate(zip(plaintexts, sizes, strict=True)):
        message = bytes(buffer[offset : offset + size])
        assert message[8:16] == counter.to_bytes(8, "little")
        opened = receiver.open(counter, message)
        assert opened[: len(plaintext)] == plaintext and not any(opened[len(plaintext):])
        offset += size
    assert sender.send_counter == 4


@settings(max_examples=60, deadline=None)
@given(version=st.sampled_from([4, 6]), size=st.integers(1, 9000), mss=st.integers(1, 3000),
       opts=st.sampled_from([b"", TS_OPTS]), mtu=st.sampled_from([None, 1420, 576]))
def test_seal_split_matches_sealing_gso_split(version: int, size: int, mss: int, opts: bytes,
                                              mtu: int | None) -> None:
    from tunkit.wireguard.handshake import SessionKeys

    payload = bytes((i * 13) & 0xFF for i in range(size))
    hdr, packet = super_packet(version, payload, mss=mss, opts=opts)
    expected = gso_split(hdr, packet)
    split = plan_tcp_split(hdr.gso_type, hdr.gso_size, packet)
    assert split is not None and split.count == len(expected)
    keys = SessionKeys(b"\1" * 32, b"\2" * 32, 10, 20, True)
    reference = Keypair(keys, 0.0).seal_packed(expected, mtu)
    sealer = Keypair(keys, 0.0)
    assert sealer.seal_split(split, packet, mtu) == reference
    assert sealer.send_counter == len(expected)


def test_send_split_goes_through_the_device() -> None:
    a, b, wire = make_pair(6)
    payload = bytes(range(256)) * 20
    hdr, packet = super_packet(4, payload, mss=1000, opts=TS_OPTS)
    # addresses of the lab pair: 10.0.0.1 -> 10.0.0.2
    packet = packet[:12] + bytes([10, 0, 0, 1, 10, 0, 0, 2]) + packet[20:]
    split = plan_tcp_split(hdr.gso_type, hdr.gso_size, packet)
    assert split is not None
    expected = gso_split(hdr, packet)
    for _ in range(2):  # first without a session (split and queued), then sealed at once
        actions = a.send_split(split, packet, 1.0)
        wire.transfer(a, actions, 1.0)
    assert wire.received(b) == expected * 2
    unrouted = packet[:16] + bytes([10, 9, 9, 9]) + packet[20:]
    split = plan_tcp_split(hdr.gso_type, hdr.gso_size, unrouted)
    assert split is not None and a.send_split(split, unrouted, 1.0) == []
    assert a.stats.no_route == 1


@settings(max_examples=80, deadline=None)
@given(count=st.integers(1, 60), version=st.sampled_from([4, 6]),
       edits=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 6)), max_size=4))
def test_long_runs_coalesce_like_the_reference(count: int, version: int,
                                               edits: list[tuple[int, int]]) -> None:
    """Long in-order runs (the numpy path of coalesce_for_tun) with a few disturbances."""
    mss = 1368
    packets = []
    for i in range(count):
        payload = bytes([i & 0xFF]) * mss
        seq = 1 + i * mss
        packets.append(_v4(seq, payload, opts=TS) if version == 4 else _v6(seq, payload))
    for index, kind in edits:
        if index >= count:
            continue
        pkt = bytearray(packets[index])
        l4 = 20 if version == 4 else 40
        if kind == 0:
            pkt[l4 + 13] |= 0x08  # PSH
        elif kind == 1:
            pkt[l4 + 13] |= 0x80  # CWR
        elif kind == 2:
            pkt[l4 + 7] ^= 1  # sequence gap
        elif kind == 3:
            pkt[l4 + 15] ^= 1  # window differs
        elif kind == 4:
            pkt = pkt[:-100]  # shorter (length field now wrong unless fixed below)
            if version == 4:
                pkt[2:4] = len(pkt).to_bytes(2, "big")
            else:
                pkt[4:6] = (len(pkt) - 40).to_bytes(2, "big")
        elif kind == 5:
            pkt[l4 + 13] |= 0x01  # FIN
        else:
            pkt[2 if version == 4 else 4] ^= 0x40  # length field lies
        packets[index] = bytes(pkt)
    assert coalesce_for_tun(packets) == _reference(packets)
