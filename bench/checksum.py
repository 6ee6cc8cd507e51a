"""Checksum and GSO-split benchmark: before and after vectorising.

Splits one 64 KiB TCPv4 super-packet (MSS 1448, timestamps option, 46 segments) with:

* ``naive_word_loop``: per segment, headers stamped with struct and every checksum summed by
  a pure-Python loop over 16-bit words (the textbook RFC 1071 loop);
* ``naive_from_bytes``: per segment, the ``int.from_bytes(..) % 0xffff`` trick;
* ``gso_split``: tunkit.packet.vnet.gso_split (numpy sums of all segments at once);
* ``gso_split_into``: the same into a preallocated buffer (no per-segment bytes objects).

Every variant's segments are checked against gso_split's before timing.  Then raw
``ones_complement_sum`` throughput per size for the two scalar paths.  Prints a table and
writes bench/results/checksum.json.  Takes ~20 s; use the best of several repeats
(the machine is shared).
"""

from __future__ import annotations

import json
import os
import platform
import struct
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tunkit.packet.checksum import (
    _sum_from_bytes,
    _sum_numpy,
    fold,
    ones_complement_sum,
    pseudo_header_sum,
    segment_sums,
    strided_sums,
)
from tunkit.packet.ip import PROTO_TCP, build_ipv4
from tunkit.packet.tcp import ACK, PSH, build_tcp_segment
from tunkit.packet.vnet import (
    GSO_TCPV4,
    NEEDS_CSUM,
    VirtioNetHdr,
    gso_split,
    gso_split_into,
    split_size,
)

MSS = 1448
SRC, DST = bytes([10, 9, 0, 1]), bytes([10, 9, 0, 7])
RESULTS = Path(__file__).resolve().parent / "results" / "checksum.json"


def super_packet() -> tuple[VirtioNetHdr, bytes]:
    opts = b"\x01\x01\x08\x0a" + struct.pack("!II", 1, 2)
    payload = os.urandom(65535 - 52)
    seg = bytearray(build_tcp_segment(SRC, DST, 40312, 80, payload, seq=1, ack=1, flags=ACK | PSH, options=opts))
    struct.pack_into("!H", seg, 16, pseudo_header_sum(SRC, DST, PROTO_TCP, len(seg)))
    pkt = build_ipv4(SRC, DST, PROTO_TCP, seg, identification=100)
    return VirtioNetHdr(NEEDS_CSUM, GSO_TCPV4, 52, MSS, 20, 16), pkt


def word_loop_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def split_naive(pkt: bytes, csum: Callable[[bytes], int]) -> list[bytes]:
    """Per-segment split with a per-segment checksum function (the 'before' picture)."""
    h = 20 + (pkt[32] >> 4) * 4
    total = struct.unpack_from("!H", pkt, 2)[0]
    ident0 = struct.unpack_from("!H", pkt, 4)[0]
    seq0 = struct.unpack_from("!I", pkt, 24)[0]
    flags0 = pkt[33]
    starts = list(range(h, total, MSS))
    out = []
    for i, s in enumerate(starts):
        body = pkt[s : min(s + MSS, total)]
        hdr = bytearray(pkt[:h])
        struct.pack_into("!HH", hdr, 2, h + len(body), (ident0 + i) & 0xFFFF)
        hdr[10:12] = b"\0\0"
        struct.pack_into("!H", hdr, 10, ~csum(bytes(hdr[:20])) & 0xFFFF)
        struct.pack_into("!I", hdr, 24, (seq0 + i * MSS) & 0xFFFFFFFF)
        hdr[33] = flags0 & ~0x89 | ((flags0 & 0x09) if i == len(starts) - 1 else 0) | ((flags0 & 0x80) if i == 0 else 0)
        hdr[36:38] = b"\0\0"
        l4 = bytes(hdr[20:]) + body
        ph = pseudo_header_sum(SRC, DST, PROTO_TCP, len(l4))
        struct.pack_into("!H", hdr, 36, ~fold(ph + csum(l4)) & 0xFFFF)
        out.append(bytes(hdr) + body)
    return out


def best(fn: Callable[[], object], min_time: float = 0.2, repeat: int = 7) -> float:
    """Best seconds per call over ``repeat`` runs of at least ``min_time`` each."""
    number, elapsed = 1, 0.0
    while True:
        elapsed = timeit.timeit(fn, number=number)
        if elapsed >= min_time:
            break
        number *= 2
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def main() -> int:
    hdr, pkt = super_packet()
    reference = gso_split(hdr, pkt)
    nseg = len(reference)
    out = bytearray(split_size(hdr, pkt))

    def into() -> None:
        gso_split_into(hdr, pkt, out)

    variants: dict[str, Callable[[], object]] = {
        "naive_word_loop": lambda: split_naive(pkt, word_loop_sum),
        "naive_from_bytes": lambda: split_naive(pkt, _sum_from_bytes),
        "gso_split": lambda: gso_split(hdr, pkt),
        "gso_split_into": into,
    }
    for name in ("naive_word_loop", "naive_from_bytes"):
        got = variants[name]()
        # representation of a zero checksum (0 vs 0xffff) is the only allowed difference
        assert isinstance(got, list) and len(got) == nseg, name
        assert all(ones_complement_sum(g[:20]) == 0xFFFF for g in got), name
        assert [g[40:] for g in got] == [r[40:] for r in reference], name
    spans = gso_split_into(hdr, pkt, out)
    assert [bytes(out[o : o + n]) for o, n in spans] == reference

    split: dict[str, dict[str, float]] = {}
    print(f"64 KiB TCPv4 super-packet, MSS {MSS}: {nseg} segments")
    print(f"{'variant':20s} {'us/packet':>10s} {'us/segment':>11s} {'segments/s':>12s}")
    for name, fn in variants.items():
        sec = best(fn, min_time=0.05 if name == "naive_word_loop" else 0.2, repeat=3 if name == "naive_word_loop" else 7)
        split[name] = {
            "us_per_super_packet": round(sec * 1e6, 1),
            "us_per_segment": round(sec * 1e6 / nseg, 2),
            "segments_per_second": round(nseg / sec),
        }
        print(f"{name:20s} {sec * 1e6:10.1f} {sec * 1e6 / nseg:11.2f} {nseg / sec:12,.0f}")

    # the checksum part alone: payload sums of all 46 segments
    starts = list(range(52, len(pkt), MSS))
    sums: dict[str, dict[str, float]] = {}
    view = memoryview(pkt)
    sum_variants: dict[str, Callable[[], object]] = {
        "word_loop_per_segment": lambda: [word_loop_sum(pkt[s : s + MSS]) for s in starts],
        "from_bytes_per_segment": lambda: [_sum_from_bytes(view[s : s + MSS]) for s in starts],
        "strided_sums_numpy": lambda: strided_sums(pkt, 52, MSS, len(pkt)),
        "segment_sums_numpy": lambda: segment_sums(pkt, starts, [min(s + MSS, len(pkt)) for s in starts]),
    }
    expect = [ones_complement_sum(pkt[s : s + MSS]) for s in starts]
    print(f"\npayload checksums only, {nseg} segments")
    for name, fn in sum_variants.items():
        got = fn()
        assert list(got) == expect, name  # type: ignore[call-overload]
        sec = best(fn, min_time=0.05 if name.startswith("word") else 0.2, repeat=3 if name.startswith("word") else 7)
        sums[name] = {"us_per_super_packet": round(sec * 1e6, 1), "us_per_segment": round(sec * 1e6 / nseg, 2)}
        print(f"{name:24s} {sec * 1e6:10.1f} us {sec * 1e6 / nseg:8.2f} us/segment")

    throughput: dict[str, dict[str, float]] = {}
    print(f"\n{'bytes':>6s} {'from_bytes MB/s':>16s} {'numpy MB/s':>11s} {'word loop MB/s':>15s}")
    for size in (64, 256, 512, 1024, 1500, 9000, 65535):
        data = os.urandom(size)
        row = {
            "from_bytes_MBps": size / best(lambda d=data: _sum_from_bytes(d), 0.05, 3) / 1e6,
            "numpy_MBps": size / best(lambda d=data: _sum_numpy(d), 0.05, 3) / 1e6,
        }
        if size <= 1500:
            row["word_loop_MBps"] = size / best(lambda d=data: word_loop_sum(d), 0.05, 3) / 1e6
        throughput[str(size)] = {k: round(v, 1) for k, v in row.items()}
        loop = f"{row['word_loop_MBps']:15.1f}" if "word_loop_MBps" in row else f"{'-':>15s}"
        print(f"{size:6d} {row['from_bytes_MBps']:16.1f} {row['numpy_MBps']:11.1f} {loop}")

    result = {
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform(),
        },
        "super_packet": {"bytes": len(pkt), "mss": MSS, "segments": nseg},
        "split": split,
        "payload_checksums_only": sums,
        "speedup_gso_split_vs_naive_word_loop": round(
            split["naive_word_loop"]["us_per_super_packet"] / split["gso_split"]["us_per_super_packet"], 1),
        "speedup_gso_split_vs_naive_from_bytes": round(
            split["naive_from_bytes"]["us_per_super_packet"] / split["gso_split"]["us_per_super_packet"], 2),
        "checksum_throughput": throughput,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
