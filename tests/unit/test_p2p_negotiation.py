"""Auto/fast negotiation: probes are valid simpletun frames; both roles agree; fallbacks."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunkit.p2p.framing import NEED_DATA, FrameDecoder, compat_framing
from tunkit.p2p.negotiation import (
    PROBE_ETHERTYPE,
    ClientNegotiator,
    Framing,
    Mode,
    NegotiationError,
    Role,
    ServerNegotiator,
    build_probe,
    parse_probe,
)


def _ipv4_header_sum_ok(header: bytes) -> bool:
    total = sum(struct.unpack("!10H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def _unframe(frame: bytes, tap: bool = False) -> bytes:
    dec = FrameDecoder(compat_framing(1500, tap))
    dec.receive_data(frame)
    out = dec.next_frame()
    assert isinstance(out, bytes)
    assert dec.next_frame() is NEED_DATA
    return out


def test_tun_probe_is_ipv4_the_kernel_drops() -> None:
    probe = build_probe(Role.OFFER, tap=False)
    assert probe[0] == 0x45 and probe[8] == 0 and probe[9] == 253
    assert struct.unpack("!H", probe[2:4])[0] == len(probe)
    assert not _ipv4_header_sum_ok(probe[:20])


def test_tap_probe_is_zero_mac_local_ethertype() -> None:
    probe = build_probe(Role.ACCEPT, tap=True)
    assert probe[:12] == bytes(12)
    assert struct.unpack("!H", probe[12:14])[0] == PROBE_ETHERTYPE


@pytest.mark.parametrize("tap", [False, True])
def test_auto_client_and_server_agree_on_fast(tap: bool) -> None:
    client = ClientNegotiator(Mode.AUTO, tap, 1500, now=0.0)
    server = ServerNegotiator(Mode.AUTO, tap, 1500, now=0.0)
    (offer,) = client.start().send
    assert len(offer) < 100 and struct.unpack("!H", offer[:2])[0] == len(offer) - 2
    d = server.receive_frame(_unframe(offer, tap), now=0.01)
    assert d.framing is Framing.FAST and d.deliver == []
    (accept,) = d.send
    d2 = client.receive_frame(_unframe(accept, tap), now=0.02)
    assert d2.framing is Framing.FAST


def test_server_falls_back_on_simpletun_traffic_and_delivers_it() -> None:
    server = ServerNegotiator(Mode.AUTO, False, 1500, now=0.0)
    ping = bytes.fromhex("4500001c0000400040010000c0a80001c0a80002") + b"\x08" + bytes(7)
    d = server.receive_frame(ping, now=0.1)
    assert d.framing is Framing.COMPAT and d.deliver == [ping] and d.send == []


def test_server_times_out_to_compat_but_fast_mode_refuses() -> None:
    auto = ServerNegotiator(Mode.AUTO, False, 1500, now=10.0)
    assert auto.on_timer(10.2).framing is None
    assert auto.on_timer(10.6).framing is Framing.COMPAT
    fast = ServerNegotiator(Mode.FAST, False, 1500, now=10.0)
    with pytest.raises(NegotiationError):
        fast.on_timer(11.0)


def test_client_against_simpletun_server_falls_back() -> None:
    client = ClientNegotiator(Mode.AUTO, False, 1500, now=0.0)
    client.start()
    assert client.on_timer(1.0).framing is None
    assert client.on_timer(2.5).framing is Framing.COMPAT
    c2 = ClientNegotiator(Mode.AUTO, False, 1500, now=0.0)
    c2.start()
    d = c2.receive_frame(b"\x45" + bytes(40), now=0.1)
    assert d.framing is Framing.COMPAT and d.deliver == [b"\x45" + bytes(40)]


def test_compat_mode_sends_nothing_extra() -> None:
    client = ClientNegotiator(Mode.COMPAT, False, 1500, now=0.0)
    d = client.start()
    assert d.framing is Framing.COMPAT and d.send == []


def test_tun_offer_at_a_tap_server_is_just_traffic() -> None:
    server = ServerNegotiator(Mode.AUTO, True, 1500, now=0.0)
    d = server.receive_frame(build_probe(Role.OFFER, tap=False), now=0.0)
    assert d.framing is Framing.COMPAT and d.send == []


def test_wrong_probe_version_is_refused() -> None:
    probe = bytearray(build_probe(Role.OFFER, tap=False))
    probe[20 + 10] = 9  # version byte after the 10-byte magic
    server = ServerNegotiator(Mode.AUTO, False, 1500, now=0.0)
    with pytest.raises(NegotiationError):
        server.receive_frame(bytes(probe), now=0.0)


@given(st.binary(max_size=200), st.booleans())
def test_fuzz_parse_probe(data: bytes, tap: bool) -> None:
    probe = parse_probe(data, tap)
    assert probe is None or probe.role in (Role.OFFER, Role.ACCEPT)


@pytest.mark.parametrize("tap", [False, True])
def test_probe_roundtrip(tap: bool) -> None:
    p = parse_probe(build_probe(Role.OFFER, tap), tap)
    assert p is not None and p.role is Role.OFFER and p.tap is tap and p.version == 1


@given(st.lists(st.binary(max_size=80), max_size=5), st.sampled_from(list(Mode)), st.booleans(),
       st.booleans())
def test_fuzz_negotiators_decide_or_raise_ours(frames: list[bytes], mode: Mode, tap: bool,
                                              server: bool) -> None:
    from tunkit.errors import RemoteProtocolError

    neg = ServerNegotiator(mode, tap, 1500, 0.0) if server else ClientNegotiator(mode, tap, 1500, 0.0)
    try:
        for frame in frames:
            if neg.framing is not None:
                break
            d = neg.receive_frame(frame, 0.1)
            assert d.framing in (None, Framing.COMPAT, Framing.FAST)
            assert all(f[:2] == len(f[2:]).to_bytes(2, "big") for f in d.send)
    except RemoteProtocolError:
        assert mode is not Mode.COMPAT
