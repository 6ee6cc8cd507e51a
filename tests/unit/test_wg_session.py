"""Keypair seal/open, padding and previous/current/next rotation."""

from __future__ import annotations

import pytest

from tunkit.wireguard.crypto import DecryptionError
from tunkit.wireguard.handshake import SessionKeys
from tunkit.wireguard.session import Keypair, Keypairs, ReplayError, padding_length


def _pair(now: float = 0.0) -> tuple[Keypair, Keypair]:
    a = Keypair(SessionKeys(b"\1" * 32, b"\2" * 32, 10, 20, True), now)
    b = Keypair(SessionKeys(b"\2" * 32, b"\1" * 32, 20, 10, False), now)
    return a, b


def test_seal_layout_padding_and_open() -> None:
    a, b = _pair()
    data = a.seal(b"x" * 17)
    assert data[:16] == b"\x04\0\0\0" + (20).to_bytes(4, "little") + bytes(8)
    assert len(data) == 16 + 32 + 16  # 17 padded to 32, plus tag
    assert b.open(0, data) == b"x" * 17 + bytes(15)
    keepalive = a.seal(b"")
    assert len(keepalive) == 32 and keepalive[8:16] == (1).to_bytes(8, "little")
    assert b.open(1, keepalive) == b""
    with pytest.raises(ReplayError):
        b.open(1, keepalive)
    with pytest.raises(DecryptionError):
        b.open(5, data)  # wrong nonce
    assert a.seal_many([b"a", b"bb"])[1][8:16] == (3).to_bytes(8, "little")


def test_padding_is_capped_at_mtu() -> None:
    assert padding_length(17, None) == 15
    assert padding_length(1419, 1420) == 1
    assert padding_length(1420, 1420) == 0
    assert padding_length(1415, 1420) == 5
    assert padding_length(0, 1420) == 0


def test_rotation_rules() -> None:
    kps = Keypairs()
    r1 = Keypair(SessionKeys(b"\1" * 32, b"\2" * 32, 1, 2, False), 0.0)
    assert kps.install(r1) == []
    assert kps.current is None and kps.next is r1  # responder must not send yet
    rotated, dropped = kps.received_with(r1)
    assert rotated and dropped == [] and kps.current is r1 and kps.next is None
    i2 = Keypair(SessionKeys(b"\1" * 32, b"\2" * 32, 3, 4, True), 1.0)
    assert kps.install(i2) == []
    assert kps.current is i2 and kps.previous is r1
    i3 = Keypair(SessionKeys(b"\1" * 32, b"\2" * 32, 5, 6, True), 2.0)
    assert kps.install(i3) == [r1]
    r4 = Keypair(SessionKeys(b"\1" * 32, b"\2" * 32, 7, 8, False), 3.0)
    assert kps.install(r4) == [i2]
    assert (kps.previous, kps.current, kps.next) == (None, i3, r4)
    assert kps.received_with(i3) == (False, [])
    assert sorted(k.local_index for k in kps.clear()) == [5, 7]
