"""The daemon's fast TCP coalescer must produce byte-for-byte what the reference
``tunkit.packet.vnet.gro_coalesce`` produces (pure; no root needed)."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.packet.vnet import gro_coalesce, gso_split
from tunkit.services.wg_offload import coalesce_for_tun


def _v4(seq: int, payload: bytes, *, flags: int = 0x10, sport: int = 1000, ttl: int = 64,
        opts: bytes = b"", ack: int = 7, win: int = 500) -> bytes:
    doff = (20 + len(opts)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, 5201, seq, ack, doff << 4, flags, win, 0, 0) + opts
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, ttl, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return ip + tcp + payload


def _v6(seq: int, payload: bytes, *, flags: int = 0x10, sport: int = 1000) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, 5201, seq, 9, 5 << 4, flags, 500, 0, 0)
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp) + len(payload), 6, 64,
                     bytes(15) + b"\x01", bytes(15) + b"\x02")
    return ip + tcp + payload


def _reference(packets):
    return [(hdr.encode(), data) for hdr, data in gro_coalesce(packets)]


TS = b"\x01\x01\x08\x0a" + bytes(8)


@st.composite
def streams(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))
    out = []
    seq = {1000: 1, 1001: 5000}
    for _ in range(draw(st.integers(1, 120))):
        sport = rng.choice((1000, 1000, 1000, 1001))
        kind = rng.random()
        size = rng.choice((1368, 1368, 1368, 1368, rng.randrange(1, 1368)))
        payload = bytes(rng.getrandbits(8) for _ in range(8)) * (size // 8) + b"x" * (size % 8)
        if kind < 0.05:
            out.append(bytes([0x45]) + bytes(30))  # junk
            continue
        if kind < 0.1:
            seq[sport] += 3  # a gap
        flags = rng.choice((0x10,) * 12 + (0x18, 0x11, 0x12, 0x90, 0x50, 0x00))
        if kind < 0.3:
            pkt = _v6(seq[sport], payload, flags=flags, sport=sport)
        else:
            opts = TS if kind < 0.6 else (b"\x01\x01\x05\x0a" + bytes(8) if kind < 0.62 else b"")
            pkt = _v4(seq[sport], payload, flags=flags, sport=sport, opts=opts,
                      ttl=rng.choice((64, 64, 64, 63)))
        seq[sport] += size
        out.append(pkt)
    return out


@settings(max_examples=150, deadline=None)
@given(streams())
def test_matches_reference_coalescer(packets):
    mine, ref = coalesce_for_tun(packets), _reference(packets)
    assert [(h, len(d), d[:80]) for h, d in mine] == [(h, len(d), d[:80]) for h, d in ref]
    assert mine == ref


def test_a_tso_split_round_trips_into_one_super_packet():
    from tunkit.packet.vnet import GSO_TCPV4, NEEDS_CSUM, VirtioNetHdr

    payload = bytes(range(256)) * 200
    big = bytearray(_v4(1, payload, opts=TS))
    struct.pack_into("!H", big, 2, 0)  # TSO super-packets may carry 0 or the full length
    struct.pack_into("!H", big, 2, len(big))
    hdr = VirtioNetHdr(NEEDS_CSUM, GSO_TCPV4, 52, 1368, 20, 16)
    segments = gso_split(hdr, bytes(big))
    assert len(segments) == -(-len(payload) // 1368)
    merged = coalesce_for_tun(segments)
    assert merged == _reference(segments)
    assert len(merged) == 1
    vnet, data = merged[0]
    assert data[52:] == payload and struct.unpack("<BBHHHH", vnet)[1] == GSO_TCPV4


def _long_run(n: int = 40, *, at: int = 17, start: int = 1, **change) -> list[bytes]:
    """``n`` full-size in-order segments of one flow; segment ``at`` gets ``change``."""
    out, seq = [], start
    for k in range(n):
        payload = bytes([k]) * 1368
        kwargs = {"opts": TS, **(change if k == at else {})}
        if k == at and "gap" in kwargs:
            seq += kwargs.pop("gap")
        if k == at and "size" in kwargs:
            payload = payload[: kwargs.pop("size")]
        out.append(_v4(seq, payload, **kwargs))
        seq = (seq + len(payload)) % 2**32
    return out


def test_long_runs_stop_where_the_reference_stops():
    """The vector path (runs of 8+ full-size followers) against the reference, with the one
    odd segment in the middle of the run, so the fast all-good check must fail."""
    cases = {
        "clean": _long_run(),
        "wrap": _long_run(start=2**32 - 20 * 1368 - 5),  # sequence numbers wrap mid-run
        "psh": _long_run(flags=0x18),
        "cwr": _long_run(flags=0x90),
        "gap": _long_run(gap=5),
        "ttl": _long_run(ttl=63),
        "ack": _long_run(ack=8),
        "window": _long_run(win=501),
        "short": _long_run(size=1000),
        "timestamp": _long_run(opts=b"\x01\x01\x08\x0a" + bytes(7) + b"\x01"),
        "fin": _long_run(flags=0x11),
    }
    for name, packets in cases.items():
        mine = coalesce_for_tun(packets)
        assert mine == _reference(packets), name
        assert sum(len(d) - 52 for _h, d in mine) == sum(len(p) - 52 for p in packets), name
    assert len(coalesce_for_tun(cases["clean"])) == 1
    assert len(coalesce_for_tun(cases["wrap"])) == 1
    assert len(coalesce_for_tun(cases["gap"])) == 2
