"""tunkit.wireguard.allowedips: longest-prefix match checked against a brute-force reference."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.errors import ConfigError
from tunkit.wireguard.allowedips import AllowedIPs, IPNetwork, parse_prefix

N = ipaddress.ip_network
A = ipaddress.ip_address


def reference_lookup(routes: dict[IPNetwork, object], addr: bytes) -> object | None:
    """Brute force: scan every route."""
    version = 4 if len(addr) == 4 else 6
    number = int.from_bytes(addr, "big")
    best: tuple[int, object] | None = None
    for net, value in routes.items():
        if (
            net.version == version
            and number & int(net.netmask) == int(net.network_address)
            and (best is None or net.prefixlen > best[0])
        ):
            best = (net.prefixlen, value)
    return None if best is None else best[1]


def test_longest_prefix_wins_v4_and_v6() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(N("0.0.0.0/0"), "default4")
    table.insert(N("10.0.0.0/8"), "ten")
    table.insert(N("10.1.0.0/16"), "ten-one")
    table.insert(N("10.1.2.3/32"), "host")
    table.insert(N("::/0"), "default6")
    table.insert(N("fd00::/8"), "ula")
    table.insert(N("fd00:1::/32"), "ula-one")
    assert table.lookup(A("10.1.2.3").packed) == "host"
    assert table.lookup(A("10.1.2.4").packed) == "ten-one"
    assert table.lookup(A("10.2.0.1").packed) == "ten"
    assert table.lookup(A("192.0.2.1").packed) == "default4"
    assert table.lookup(A("fd00:1::5").packed) == "ula-one"
    assert table.lookup(A("fd00:2::5").packed) == "ula"
    assert table.lookup(A("2001:db8::1").packed) == "default6"
    assert table.lookup_ip(A("10.1.9.9")) == "ten-one"
    assert len(table) == 7


def test_families_are_separate_and_bad_lengths_miss() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(N("::/0"), "v6")
    assert table.lookup(b"\x00\x00\x00\x00") is None  # 0.0.0.0 is not ::/0
    table.insert(N("0.0.0.0/0"), "v4")
    assert table.lookup(bytes(16)) == "v6"
    assert table.lookup(bytes(4)) == "v4"
    assert table.lookup(b"") is None and table.lookup(bytes(5)) is None
    assert table.lookup(bytearray(4)) == "v4" and table.lookup(memoryview(bytes(16))) == "v6"


def test_host_bits_are_masked_and_existing_prefix_moves() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert("10.0.0.77/24", "a")
    table.insert(ipaddress.ip_interface("10.0.0.1/24"), "b")  # same prefix: moves to b
    assert len(table) == 1
    assert table.entries_for("a") == []
    assert table.entries_for("b") == [N("10.0.0.0/24")]
    assert table.lookup(A("10.0.0.200").packed) == "b"


def test_remove_remove_value_clear() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    for i in range(10):
        table.insert(N(f"10.{i}.0.0/16"), "a" if i % 2 else "b")
    table.insert(N("fd00::/64"), "a")
    assert table.remove("10.1.0.0/16") is True
    assert table.remove(N("10.1.0.0/16")) is False
    assert table.lookup(A("10.1.0.1").packed) is None
    assert table.remove_value("a") == 5
    assert table.lookup(A("fd00::1").packed) is None
    assert table.entries_for("a") == []
    assert len(table) == 5
    table.clear()
    assert len(table) == 0 and table.lookup(A("10.0.0.1").packed) is None


def test_entries_for_sorted_v4_first() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    for text in ["fd00::/8", "10.0.0.0/8", "10.0.0.0/16", "::/0", "1.2.3.4/32", "0.0.0.0/0"]:
        table.insert(N(text), "p")
    assert [str(n) for n in table.entries_for("p")] == [
        "0.0.0.0/0",
        "1.2.3.4/32",
        "10.0.0.0/8",
        "10.0.0.0/16",
        "::/0",
        "fd00::/8",
    ]
    assert sorted(str(n) for n, _ in table) == sorted(str(n) for n in table.entries_for("p"))


def test_values_are_compared_by_identity() -> None:
    class Peer:
        def __eq__(self, other: object) -> bool:
            return True  # deliberately: equality must not merge peers

        __hash__ = object.__hash__

    p1, p2 = Peer(), Peer()
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert(N("10.0.0.0/24"), p1)
    table.insert(N("10.0.1.0/24"), p2)
    assert table.lookup(A("10.0.0.1").packed) is p1
    assert table.entries_for(p2) == [N("10.0.1.0/24")]
    assert table.remove_value(p1) == 1
    assert table.lookup(A("10.0.1.1").packed) is p2


def test_none_cannot_be_stored() -> None:
    table: AllowedIPs[object] = AllowedIPs()
    with pytest.raises(TypeError):
        table.insert(N("10.0.0.0/8"), None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("10.1.2.3", "10.1.2.3/32"),
        ("fd00::1/8", "fd00::/8"),
        ("::", "::/128"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("::/000", "::/0"),
    ],
)
def test_parse_prefix(text: str, expected: str) -> None:
    assert parse_prefix(text) == N(expected)


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.0/33",
        "fd00::/129",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0.0/ 8",
        "10.0.0.0/8 ",
        "10.0.0.0/255.0.0.0",
        "fe80::1%eth0/64",
        "010.0.0.0/8",
        "10.0.0/8",
        "",
        "/8",
        "x/8",
        "10.0.0.0/٨",
    ],
)
def test_parse_prefix_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_prefix(text)


def test_parse_prefix_require_length() -> None:
    with pytest.raises(ConfigError, match="missing /length"):
        parse_prefix("10.0.0.1", require_length=True)


def test_thousands_of_entries_against_reference() -> None:
    rng = random.Random(4)
    peers = [f"peer{i}" for i in range(40)]
    table: AllowedIPs[str] = AllowedIPs()
    routes: dict[IPNetwork, object] = {}
    for _ in range(3000):
        if rng.random() < 0.5:
            net: IPNetwork = ipaddress.IPv4Network(
                (rng.getrandbits(32), rng.randint(8, 32)), strict=False
            )
        else:
            net = ipaddress.IPv6Network((rng.getrandbits(128), rng.randint(16, 128)), strict=False)
        peer = rng.choice(peers)
        table.insert(net, peer)
        routes[net] = peer
    assert len(table) == len(routes)
    assert sum(len(table.entries_for(p)) for p in peers) == len(routes)
    nets = list(routes)
    for _ in range(500):
        net = rng.choice(nets)
        # an address inside a known prefix, and a random one
        inside = int(net.network_address) | (rng.getrandbits(net.max_prefixlen) & int(net.hostmask))
        addr = inside.to_bytes(net.max_prefixlen // 8, "big")
        assert table.lookup(addr) == reference_lookup(routes, addr)
    for _ in range(200):
        addr = rng.getrandbits(32).to_bytes(4, "big")
        assert table.lookup(addr) == reference_lookup(routes, addr)


# ---- property test: random operation sequences against a dict reference -----------------

_v4 = st.builds(
    lambda n, p: ipaddress.IPv4Network((n, p), strict=False),
    st.integers(0, 2**32 - 1).map(lambda n: n & 0xFF00FF0F),  # cluster to create overlaps
    st.integers(0, 32),
)
_v6 = st.builds(
    lambda n, p: ipaddress.IPv6Network((n, p), strict=False),
    st.integers(0, 2**128 - 1).map(lambda n: n & (0xFFFF << 112 | 0xFF)),
    st.integers(0, 128),
)
_nets = st.one_of(_v4, _v6)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), _nets, st.integers(0, 4)),
        st.tuples(st.just("remove"), _nets, st.just(0)),
        st.tuples(st.just("remove_value"), _nets, st.integers(0, 4)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(_ops, st.lists(st.one_of(_v4, _v6), max_size=20))
def test_matches_reference_model(
    ops: list[tuple[str, IPNetwork, int]], probes: list[IPNetwork]
) -> None:
    peers = [f"p{i}" for i in range(5)]
    table: AllowedIPs[str] = AllowedIPs()
    routes: dict[IPNetwork, object] = {}
    for op, net, index in ops:
        if op == "insert":
            table.insert(net, peers[index])
            routes[net] = peers[index]
        elif op == "remove":
            assert table.remove(net) == (net in routes)
            routes.pop(net, None)
        else:
            expected = [n for n, v in routes.items() if v == peers[index]]
            assert table.remove_value(peers[index]) == len(expected)
            for n in expected:
                del routes[n]
    assert len(table) == len(routes)
    for peer in peers:
        mine = table.entries_for(peer)
        assert sorted(mine, key=lambda n: (n.version, int(n.network_address), n.prefixlen)) == mine
        assert set(mine) == {n for n, v in routes.items() if v == peer}
    for net in probes + list(routes):
        for addr_int in (int(net.network_address), int(net.broadcast_address)):
            addr = addr_int.to_bytes(net.max_prefixlen // 8, "big")
            assert table.lookup(addr) == reference_lookup(routes, addr)
