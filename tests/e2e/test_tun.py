"""TUN/TAP device layer against the real kernel, inside lab namespaces.

Packets are crafted here with ``struct`` and checked with a local RFC 1071 sum, so these
tests judge ``tunkit.io.tun`` (and, for GSO, ``tunkit.packet.vnet.gso_split``) against an
independent implementation.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable

import pytest

from tunkit.errors import DeviceError, PermissionDeniedError
from tunkit.io.tun import (
    IFF_MULTI_QUEUE,
    IFF_NO_PI,
    IFF_TAP,
    IFF_TUN,
    IFF_VNET_HDR,
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_USO4,
    TUN_F_USO6,
    VNET_HDR_LEN,
    TunDevice,
    link_exists,
    offload_fallbacks,
    open_tun,
    probe_features,
)
from tunkit.lab import Host, Lab, wait_for

pytestmark = pytest.mark.e2e


# --------------------------------------------------------------------------- helpers


def csum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 ones'-complement sum, folded, not inverted."""
    if len(data) % 2:
        data += b"\0"
    total = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 0) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    check = ~csum(hdr) & 0xFFFF
    return hdr[:10] + struct.pack("!H", check) + hdr[12:] + payload


def l4_checksum(src: str, dst: str, proto: int, segment: bytes) -> int:
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, len(segment))
    return ~csum(pseudo + segment) & 0xFFFF


def udp4(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    check = l4_checksum(src, dst, 17, seg) or 0xFFFF
    return ipv4(src, dst, 17, seg[:6] + struct.pack("!H", check) + seg[8:])


def tcp4(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
         window: int = 65535, options: bytes = b"", payload: bytes = b"") -> bytes:
    offset = (20 + len(options)) // 4
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, window, 0, 0)
    seg += options + payload
    check = l4_checksum(src, dst, 6, seg)
    return ipv4(src, dst, 6, seg[:16] + struct.pack("!H", check) + seg[18:])


def valid_ipv4_tcp(pkt: bytes) -> bool:
    ihl = (pkt[0] & 0xF) * 4
    src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
    total = struct.unpack("!H", pkt[2:4])[0]
    return (csum(pkt[:ihl]) == 0xFFFF and total == len(pkt)
            and l4_checksum(src, dst, 6, pkt[ihl:]) == 0)


def first_matching(dev: TunDevice, match: Callable[[bytes], bool], timeout: float = 3.0) -> bytes:
    """The first packet (or frame) read from ``dev`` for which ``match`` is true."""
    buf = bytearray(70000)
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([dev.fileno()], [], [], remaining)[0]:
            break
        n = dev.read_into(buf)
        if match(bytes(buf[:n])):
            return bytes(buf[:n])
    raise AssertionError(f"no matching packet came out of {dev.name} within {timeout}s")


def first_udp_to(dev: TunDevice, dst: str, dport: int, timeout: float = 3.0) -> bytes:
    """The first IPv4 UDP packet to ``dst:dport`` read from ``dev``."""
    return first_matching(dev, lambda p: bool(udp_to([p], dst, dport)), timeout)


def udp_to(pkts: list[bytes], dst: str, dport: int) -> list[bytes]:
    """The IPv4 UDP packets in ``pkts`` addressed to ``dst:dport``."""
    return [p for p in pkts if len(p) >= 28 and p[0] >> 4 == 4 and p[9] == 17
            and p[16:20] == socket.inet_aton(dst) and struct.unpack("!H", p[22:24])[0] == dport]


def bring_up(host: Host, name: str, cidr: str) -> None:
    with host.netlink() as link:
        link.add_address(name, cidr)
        link.set_up(name)
        link.wait_operational(name)


# --------------------------------------------------------------------------- tests


def test_features_probe_reports_this_kernels_flags(require_root: None) -> None:
    mask = probe_features()
    required = IFF_TUN | IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE | IFF_VNET_HDR
    assert mask & required == required, hex(mask)
    assert mask < 0x10000


def test_offload_fallback_order() -> None:
    full = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6
    assert offload_fallbacks(full) == [full, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, TUN_F_CSUM, 0]
    assert offload_fallbacks(TUN_F_CSUM) == [TUN_F_CSUM, 0]
    assert offload_fallbacks(0) == [0]


def test_offload_fallback_records_what_the_kernel_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    import tunkit.io.tun as tun

    tried: list[int] = []

    def fake_ioctl(fd: int, request: int, arg: int) -> int:
        assert request == tun.TUNSETOFFLOAD
        tried.append(arg)
        if arg & (TUN_F_USO4 | TUN_F_USO6):  # an older kernel: no USO
            raise OSError(errno.EINVAL, "Invalid argument")
        return 0

    monkeypatch.setattr(tun.fcntl, "ioctl", fake_ioctl)
    applied = tun._apply_offloads(-1, tun.DEFAULT_OFFLOADS, "tkfake0")
    assert applied == TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    assert tried == [tun.DEFAULT_OFFLOADS, applied]


def test_tun_with_kernel_chosen_name_reads_and_writes_ip(lab: Lab) -> None:
    a = lab.add_host("a")
    with a.inside():
        dev = open_tun()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with dev, sock:
        assert dev.name.startswith("tun") and dev.kind == "tun" and dev.created
        assert len(dev.fds) == 1 and dev.offloads == 0
        bring_up(a, dev.name, "10.60.0.1/24")
        sock.bind(("10.60.0.1", 9999))
        # kernel -> TUN: a datagram to a peer behind the device
        sock.sendto(b"hello tun", ("10.60.0.2", 7777))
        pkt = first_udp_to(dev, "10.60.0.2", 7777)
        assert pkt[12:16] == socket.inet_aton("10.60.0.1") and pkt[28:] == b"hello tun"
        # reads reuse the caller's buffer: a memoryview slice is filled in place
        sock.sendto(b"again", ("10.60.0.2", 7777))
        buf = bytearray(2048)
        view = memoryview(buf)[100:]
        wait_for(lambda: select.select([dev.fileno()], [], [], 0.1)[0], 3, what="second packet")
        n = dev.read_into(view)
        while buf[100 + 9] != 17:  # skip any non-UDP packet (e.g. IPv6 noise)
            n = dev.read_into(view)
        assert bytes(buf[100 + 28 : 100 + n]) == b"again"
        # TUN -> kernel: a hand-made datagram is delivered to our socket
        dev.write(udp4("10.60.0.2", "10.60.0.1", 7777, 9999, b"from the wire"))
        sock.settimeout(3)
        data, src = sock.recvfrom(100)
        assert (data, src) == (b"from the wire", ("10.60.0.2", 7777))
        # non-blocking mode: an empty queue raises BlockingIOError, never blocks
        dev.set_blocking(False)
        while True:
            try:
                dev.read_into(buf)
            except BlockingIOError:
                break
    assert dev.closed
    with a.netlink() as link:
        assert not link.link_exists(dev.name), "non-persistent TUN must vanish on close"


def test_packet_info_header_mode(lab: Lab) -> None:
    a = lab.add_host("a")
    with a.inside():
        dev = open_tun("tkpi0", packet_info=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with dev, sock:
        bring_up(a, "tkpi0", "10.61.0.1/24")
        sock.bind(("10.61.0.1", 9999))
        sock.sendto(b"pi", ("10.61.0.2", 7777))
        frame = first_matching(dev, lambda f: f[2:4] == b"\x08\x00" and bool(udp_to([f[4:]], "10.61.0.2", 7777)))
        flags, proto = struct.unpack("!HH", frame[:4])
        assert (flags, proto) == (0, 0x0800)
        assert frame[4] == 0x45 and frame[4 + 28 :] == b"pi"
        dev.write(struct.pack("!HH", 0, 0x0800) + udp4("10.61.0.2", "10.61.0.1", 7777, 9999, b"in"))
        sock.settimeout(3)
        assert sock.recvfrom(10)[0] == b"in"


def test_tap_device_sends_arp_with_its_mac(lab: Lab) -> None:
    a = lab.add_host("a")
    with a.inside():
        dev = open_tun("tktap0", tap=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with dev, sock:
        assert dev.kind == "tap"
        bring_up(a, "tktap0", "10.62.0.1/24")
        with a.netlink() as link:
            mac = bytes.fromhex(link.get_mac("tktap0").replace(":", ""))
        sock.sendto(b"x", ("10.62.0.2", 7777))
        f = first_matching(dev, lambda f: f[12:14] == b"\x08\x06")
        assert f[0:6] == b"\xff" * 6 and f[6:12] == mac
        assert struct.unpack("!H", f[20:22])[0] == 1  # request
        assert f[28:32] == socket.inet_aton("10.62.0.1") and f[38:42] == socket.inet_aton("10.62.0.2")


def _drain_all(dev: TunDevice, expect: int, timeout: float = 3.0) -> dict[int, list[bytes]]:
    """Read every queue non-blocking until ``expect`` packets arrived or ``timeout``."""
    dev.set_blocking(False)
    per_queue: dict[int, list[bytes]] = {q: [] for q in range(len(dev.fds))}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sum(len(v) for v in per_queue.values()) < expect:
        ready = select.select(dev.fds, [], [], 0.2)[0]
        for q, fd in enumerate(dev.fds):
            if fd not in ready:
                continue
            while True:
                try:
                    per_queue[q].append(dev.read(q))
                except BlockingIOError:
                    break
    return per_queue


def test_multi_queue_gives_n_working_fds(lab: Lab) -> None:
    queues, flows, per_flow = 4, 32, 3
    a = lab.add_host("a")
    with a.inside():
        dev = open_tun("tkmq0", queues=queues)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
    with dev, sock:
        assert len(set(dev.fds)) == queues and dev.multi_queue and dev.created
        bring_up(a, "tkmq0", "10.63.0.1/24")
        sock.bind(("10.63.0.1", 9999))
        # kernel -> TUN: every flow's packets come out whole, spread over the queues by hash
        for i, s in enumerate(senders):
            for j in range(per_flow):
                s.sendto(f"flow{i}-{j}".encode(), ("10.63.0.2", 7000 + i))
        per_queue = _drain_all(dev, flows * per_flow)
        for s in senders:
            s.close()
        got = {q: [p[28:] for p in pkts if len(p) > 28 and p[0] >> 4 == 4 and p[9] == 17]
               for q, pkts in per_queue.items()}
        payloads = sorted(x for v in got.values() for x in v)
        assert payloads == sorted(f"flow{i}-{j}".encode() for i in range(flows) for j in range(per_flow))
        used = [q for q, v in got.items() if v]
        assert len(used) >= 2, f"all {flows} flows landed on one queue: {[len(v) for v in got.values()]}"
        # a flow sticks to one queue
        flow_queue: dict[bytes, set[int]] = {}
        for q, v in got.items():
            for payload in v:
                flow_queue.setdefault(payload.split(b"-")[0], set()).add(q)
        assert all(len(qs) == 1 for qs in flow_queue.values())
        # TUN -> kernel: every queue's fd can inject packets
        for q in range(queues):
            dev.write(udp4("10.63.0.2", "10.63.0.1", 8000 + q, 9999, f"q{q}".encode()), queue=q)
        sock.settimeout(3)
        received = sorted(sock.recvfrom(100) for _ in range(queues))
        assert received == [(f"q{q}".encode(), ("10.63.0.2", 8000 + q)) for q in range(queues)]


def test_attach_to_existing_persistent_device(lab: Lab) -> None:
    a = lab.add_host("a")
    with a.inside():
        first = open_tun("tkatt0", persist=True)
        first.close()
        assert link_exists("tkatt0"), "persistent device must survive close"
        again = open_tun("tkatt0", attach=True)
        assert again.created is False and again.name == "tkatt0"
        again.set_persist(False)
        again.close()
        assert not link_exists("tkatt0")


def test_attach_to_missing_device_is_an_error_and_creates_nothing(lab: Lab) -> None:
    a = lab.add_host("a")
    with a.inside():
        with pytest.raises(DeviceError, match="no such device: tkmissing0"):
            open_tun("tkmissing0", attach=True)
        assert not link_exists("tkmissing0")


def test_name_too_long_is_refused_before_any_ioctl(lab: Lab) -> None:
    a = lab.add_host("a")
    with a.inside():
        before = socket.if_nameindex()
        with pytest.raises(DeviceError, match="too long"):
            open_tun("x" * 16)
        with pytest.raises(DeviceError, match="too long"):
            open_tun("\u00e9" * 8)  # 8 characters but 16 bytes
        assert socket.if_nameindex() == before


def test_busy_device_and_wrong_kind(lab: Lab) -> None:
    a = lab.add_host("a")
    with a.inside():
        dev = open_tun("tkbusy0")
        with dev:
            with pytest.raises(DeviceError, match="busy"):
                open_tun("tkbusy0")
            with pytest.raises(DeviceError, match="tkbusy0"):
                open_tun("tkbusy0", tap=True)
        with pytest.raises(DeviceError, match="lo"):
            open_tun("lo")


def _open_as_nobody(name: str) -> str:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    try:
        open_tun(name)
    except PermissionDeniedError as exc:
        return str(exc)
    return "opened"


def test_no_cap_net_admin_gives_permission_error(lab: Lab) -> None:
    a = lab.add_host("a")
    message = a.call(_open_as_nobody, "tkperm0")
    assert "not permitted" in message or "permission denied" in message, message
    with a.inside():
        assert not link_exists("tkperm0")


def test_missing_dev_net_tun_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import tunkit.io.tun as tun

    monkeypatch.setattr(tun, "TUN_PATH", "/dev/net/does-not-exist")
    with pytest.raises(DeviceError, match="no /dev/net/does-not-exist"):
        tun.open_tun("tkx0")
    with pytest.raises(DeviceError):
        tun.probe_features()


# --------------------------------------------------------------------------- GSO


TCP_SYN, TCP_ACK, TCP_PSH, TCP_FIN = 0x02, 0x10, 0x08, 0x01
GSO_TCPV4, NEEDS_CSUM = 1, 1


def test_vnet_hdr_tun_yields_tso_super_packets_that_split_into_valid_segments(lab: Lab) -> None:
    from tunkit.packet.vnet import decode_vnet_hdr, gso_split

    a = lab.add_host("a")
    local, peer, port = "10.64.0.1", "10.64.0.2", 5001
    with a.inside():
        dev = open_tun("tkgso0", vnet_hdr=True)
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with dev, client:
        assert dev.vnet_hdr and dev.offloads & (TUN_F_CSUM | TUN_F_TSO4) == TUN_F_CSUM | TUN_F_TSO4
        bring_up(a, "tkgso0", f"{local}/24")
        client.setblocking(False)
        assert client.connect_ex((peer, port)) == errno.EINPROGRESS
        dev.set_blocking(False)
        no_offload = bytes(VNET_HDR_LEN)

        def next_tcp(timeout: float = 3.0) -> tuple[bytes, bytes]:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not select.select([dev.fileno()], [], [], 0.2)[0]:
                    continue
                raw = dev.read()
                pkt = raw[VNET_HDR_LEN:]
                if pkt and pkt[0] >> 4 == 4 and pkt[9] == 6:
                    return raw[:VNET_HDR_LEN], pkt
            raise AssertionError("no TCP packet from the TUN")

        # handshake, answered by hand: MSS 1460, window scale 7, big window
        _, syn = next_tcp()
        sport = struct.unpack("!H", syn[20:22])[0]
        client_isn = struct.unpack("!I", syn[24:28])[0]
        assert syn[33] & TCP_SYN
        server_isn = 1_000_000
        opts = struct.pack("!BBH", 2, 4, 1460) + b"\x01" + struct.pack("!BBB", 3, 3, 7)
        dev.write(no_offload + tcp4(peer, local, port, sport, server_isn, client_isn + 1,
                                    TCP_SYN | TCP_ACK, 65535, opts))
        wait_for(lambda: client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                 and _connected(client), 3, what="client connect")

        total = 1 << 20
        data = os.urandom(total)
        sent = 0
        expected = client_isn + 1
        stream = bytearray()
        supers: list[tuple[object, bytes]] = []
        deadline = time.monotonic() + 15
        while len(stream) < total and time.monotonic() < deadline:
            if sent < total:
                with contextlib.suppress(BlockingIOError):
                    sent += client.send(data[sent : sent + 262144])
            if not select.select([dev.fileno()], [], [], 0.05)[0]:
                continue
            while True:
                try:
                    raw = dev.read()
                except BlockingIOError:
                    break
                hdr = decode_vnet_hdr(raw)
                pkt = raw[VNET_HDR_LEN:]
                if not (pkt and pkt[0] >> 4 == 4 and pkt[9] == 6):
                    continue
                ihl = (pkt[0] & 0xF) * 4
                doff = (pkt[ihl + 12] >> 4) * 4
                seq = struct.unpack("!I", pkt[ihl + 4 : ihl + 8])[0]
                payload = pkt[ihl + doff :]
                if hdr.gso_type == GSO_TCPV4 and len(payload) > hdr.gso_size:
                    supers.append((hdr, pkt))
                if seq == expected and payload:
                    stream += payload
                    expected = (expected + len(payload)) & 0xFFFFFFFF
            dev.write(no_offload + tcp4(peer, local, port, sport, server_isn + 1, expected,
                                        TCP_ACK, 65535))
        assert bytes(stream) == data, f"received {len(stream)} of {total} bytes in order"
        assert supers, "the kernel sent no GSO super-packets through the TSO-enabled TUN"

        # every super-packet splits into MSS-sized segments with valid checksums that
        # carry exactly the super-packet's payload, in sequence
        for hdr, pkt in supers[:20]:
            assert hdr.flags & NEEDS_CSUM and hdr.gso_size <= 1460  # type: ignore[attr-defined]
            segments = gso_split(hdr, pkt)  # type: ignore[arg-type]
            ihl = (pkt[0] & 0xF) * 4
            doff = (pkt[ihl + 12] >> 4) * 4
            payload = pkt[ihl + doff :]
            assert len(segments) == -(-len(payload) // hdr.gso_size)  # type: ignore[attr-defined]
            joined = b""
            seq0 = struct.unpack("!I", pkt[ihl + 4 : ihl + 8])[0]
            for seg in segments:
                assert valid_ipv4_tcp(seg), "segment with a bad checksum or length"
                assert len(seg) - ihl - doff <= hdr.gso_size  # type: ignore[attr-defined]
                seq = struct.unpack("!I", seg[ihl + 4 : ihl + 8])[0]
                assert seq == (seq0 + len(joined)) & 0xFFFFFFFF
                joined += seg[ihl + doff :]
            assert joined == payload
        # the IPv4 ids run +1 per segment
        segs = gso_split(supers[0][0], supers[0][1])  # type: ignore[arg-type]
        ids = [struct.unpack("!H", s[4:6])[0] for s in segs]
        assert ids == [(ids[0] + i) & 0xFFFF for i in range(len(ids))]


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True
