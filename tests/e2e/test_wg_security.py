"""Hostile datagrams against a running tunkit-wg (peer: wireguard-go): tampered transport
data, bad mac1, a low-order ephemeral, and an initiation flood that must turn into cookie
replies. Every case is silent (no answer, no counter change) and the tunnel keeps working."""

from __future__ import annotations

import os
import socket
import time

import pytest
from test_wg import A_V4, B_V4, _icmp_in_echos, _ip, _pair, lab  # noqa: F401 (fixture)
from wg_support import WgNode, wait_ping

from tunkit.wireguard.crypto import hash_, mac
from tunkit.wireguard.keys import decode_key

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)


def _mac1(responder: WgNode, body: bytes) -> bytes:
    """Initiation (148 bytes) with a valid mac1 for ``responder`` and zero mac2."""
    assert len(body) == 116
    key = hash_(b"mac1----" + decode_key(responder.public_key))
    return body + mac(key, body) + bytes(16)


def _flood(responder: WgNode, count: int) -> list[bytes]:
    """``count`` initiations from random senders with a valid mac1: each passes the cheap
    check and, unless the responder is under load, costs it a Diffie-Hellman."""
    return [_mac1(responder, b"\x01\x00\x00\x00" + os.urandom(4 + 32 + 48 + 28))
            for _ in range(count)]


def _initiation(body_tail: bytes) -> bytes:
    return b"\x01\x00\x00\x00" + body_tail


def _replies(sock: socket.socket, wait: float = 0.5) -> list[bytes]:
    sock.settimeout(0.05)
    out, deadline = [], time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            out.append(sock.recv(2048))
        except TimeoutError:
            continue
    return out


@pytest.fixture
def tunnel(lab, tmp_path):  # noqa: F811
    a, b = _pair(lab, tmp_path, "wireguard-go", "tunkit")
    wait_ping(a, _ip(b))
    with a.host.inside():
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attacker.bind((A_V4, 0))
    yield a, b, attacker
    attacker.close()
    assert b.proc.poll() is None, "tunkit-wg died"
    a.ping(_ip(b), count=1)


def _capture_data_packet(a: WgNode, b: WgNode) -> bytes:
    with b.host.inside():
        sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        sniffer.bind(("eth0", 0))
    sniffer.settimeout(0.2)
    a.run("ping", "-c", "2", "-i", "0.2", _ip(b))
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:
            try:
                frame, info = sniffer.recvfrom(65535)
            except TimeoutError:
                continue
            ip = frame[14:]
            if info[2] == socket.PACKET_HOST and ip[9] == 17:
                ihl = (ip[0] & 15) * 4
                payload = ip[ihl + 8:]
                if int.from_bytes(ip[ihl + 2: ihl + 4], "big") == b.listen_port and (
                    payload[:1] == b"\x04" and len(payload) > 32
                ):
                    return frame
    finally:
        sniffer.close()
    raise AssertionError("no data packet captured")


def test_tampered_transport_data_is_dropped(tunnel):
    a, b, _ = tunnel
    frame = _capture_data_packet(a, b)
    time.sleep(0.3)
    rx = b.transfer()[a.public_key][0]
    echos = _icmp_in_echos(b)
    tampered = bytearray(frame)
    tampered[-20] ^= 0x01  # a ciphertext byte: the AEAD tag no longer matches (wrong key)
    with a.host.inside():
        injector = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        injector.bind(("eth0", 0))
    # UDP checksum: zero it so the kernel accepts the edited datagram (v4 allows none)
    ihl = (tampered[14] & 15) * 4
    tampered[14 + ihl + 6: 14 + ihl + 8] = b"\0\0"
    for _ in range(3):
        injector.send(bytes(tampered))
    injector.close()
    time.sleep(0.3)
    assert b.transfer()[a.public_key][0] == rx
    assert _icmp_in_echos(b) == echos


def test_bad_mac1_gets_no_answer(tunnel):
    _a, b, attacker = tunnel
    for _ in range(20):
        attacker.sendto(_initiation(os.urandom(144)), (B_V4, b.listen_port))
    assert _replies(attacker) == []


def test_low_order_ephemeral_is_rejected_silently(tunnel):
    _a, b, attacker = tunnel
    sender = os.urandom(4)
    zero_point = bytes(32)  # a low-order point: X25519 with it is all zeros
    body = b"\x01\x00\x00\x00" + sender + zero_point + os.urandom(48 + 28)
    attacker.sendto(_mac1(b, body), (B_V4, b.listen_port))
    assert _replies(attacker) == []


def test_initiation_flood_triggers_cookie_replies(tunnel):
    _a, b, attacker = tunnel
    target = (B_V4, b.listen_port)
    # built first, then sent back to back: the daemon sees a backlog, not a trickle
    for datagram in _flood(b, 400):
        attacker.sendto(datagram, target)
    replies = _replies(attacker, wait=2.0)
    cookies = [r for r in replies if len(r) == 64 and r[0] == 3]
    assert cookies, f"no cookie reply among {len(replies)} replies"
    assert all(len(r) == 64 and r[0] == 3 for r in replies), "only cookie replies expected"


def test_paced_initiation_flood_also_triggers_cookie_replies(tunnel):
    """One initiation every 2 ms never forms a backlog; the handshake rate alone must do it."""
    _a, b, attacker = tunnel
    target = (B_V4, b.listen_port)
    for datagram in _flood(b, 200):
        attacker.sendto(datagram, target)
        time.sleep(0.002)
    replies = _replies(attacker, wait=1.0)
    assert replies and all(len(r) == 64 and r[0] == 3 for r in replies), len(replies)
    # about the first 64 in that second were handled as handshakes, the rest got cookie replies
    assert 50 <= len(replies) <= 200 - 56, len(replies)
