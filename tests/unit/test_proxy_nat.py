"""NAT manager: allocation over the prefix, both-way lookup, TCP state, expiry, exhaustion."""

from __future__ import annotations

import ipaddress
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.errors import ConfigError
from tunkit.proxy.nat import (
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    NatExhausted,
    NatKey,
    NatState,
    NatTable,
    NatTimeouts,
)

APP = ipaddress.IPv4Address("10.0.0.2")
DST = ipaddress.IPv4Address("93.184.216.34")


def key(port: int, proto: str = "tcp", dst_port: int = 443) -> NatKey:
    return NatKey.of(proto, APP, port, DST, dst_port)


def test_100k_live_mappings_are_unique_and_found_both_ways() -> None:
    table = NatTable("198.18.0.0/15", reserved=("198.18.0.1",))
    started = time.perf_counter()
    app, dst = APP.packed, DST.packed
    keys = [NatKey("tcp", app, p % 60000 + 1, dst, 443 + p // 60000) for p in range(100_000)]
    mappings = [table.lookup_or_allocate(k, 0.0) for k in keys]
    elapsed = time.perf_counter() - started
    pairs = {(m.fake_ip, m.fake_port) for m in mappings}
    assert len(pairs) == 100_000
    assert len(table) == 100_000
    reserved = ipaddress.IPv4Address("198.18.0.1")
    net = ipaddress.IPv4Network("198.18.0.0/15")
    for k, m in zip(keys, mappings, strict=True):
        assert table.lookup(k) is m
        assert table.lookup_by_fake(m.fake_ip, m.fake_port) is m
        assert m.fake_address in net and m.fake_address != reserved
        assert m.fake_address not in (net.network_address, net.broadcast_address)
        assert 10000 <= m.fake_port <= 65535
    assert table.lookup_by_fake(mappings[7].fake_address, mappings[7].fake_port) is mappings[7]
    assert table.stats.allocated_total == 100_000
    assert elapsed < 5.0
    # Spread over addresses: host-major order means 100k flows use ~all hosts of the /15.
    assert len({m.fake_ip for m in mappings}) > 90_000


def test_same_key_returns_same_mapping() -> None:
    table = NatTable("198.18.0.0/24")
    first = table.lookup_or_allocate(key(1000), 0.0)
    assert table.lookup_or_allocate(key(1000), 5.0) is first
    assert table.stats.allocated_total == 1


def test_exhaustion_of_a_tiny_prefix_is_reported_and_counted() -> None:
    # /30: hosts .1 and .2; .1 reserved -> one host; 3 ports -> 3 pairs.
    table = NatTable("198.18.0.0/30", reserved=("198.18.0.1",), port_range=(5000, 5002))
    got = [table.lookup_or_allocate(key(p), 0.0) for p in range(3)]
    assert {(str(m.fake_address), m.fake_port) for m in got} == {
        ("198.18.0.2", 5000), ("198.18.0.2", 5001), ("198.18.0.2", 5002)}
    for attempt in range(2):
        with pytest.raises(NatExhausted):
            table.lookup_or_allocate(key(100 + attempt), 0.0)
    assert table.stats.exhausted == 2
    assert len(table) == 3


def test_capacity_limit_raises_exhausted() -> None:
    table = NatTable("198.18.0.0/16", capacity=2)
    table.lookup_or_allocate(key(1), 0.0)
    table.lookup_or_allocate(key(2), 0.0)
    with pytest.raises(NatExhausted):
        table.lookup_or_allocate(key(3), 0.0)
    assert table.stats.exhausted == 1


def test_prefix_without_usable_addresses_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        NatTable("198.18.0.0/30", reserved=("198.18.0.1", "198.18.0.2"))
    with pytest.raises(ConfigError):
        NatTable("not-a-prefix")
    with pytest.raises(ConfigError):
        NatTable("198.18.0.0/24", port_range=(0, 10))


def test_idle_expiry_by_fake_clock_and_refresh_by_traffic() -> None:
    timeouts = NatTimeouts(opening=10, established=100, udp=30)
    table = NatTable("198.18.0.0/24", timeouts=timeouts)
    tcp = table.lookup_or_allocate(key(1), 0.0)
    udp = table.lookup_or_allocate(key(2, "udp", 53), 0.0)
    table.note_packet(tcp, 1.0, TCP_SYN | TCP_ACK, outbound=False)
    assert tcp.state is NatState.ESTABLISHED
    assert table.expire(29.0) == []
    table.note_packet(udp, 20.0)  # refresh: now due at 50
    assert table.expire(40.0) == []
    assert table.expire(50.0) == [udp]
    assert udp.live is False and table.lookup(udp.key) is None
    table.note_packet(tcp, 90.0, TCP_ACK)  # due at 190
    assert table.expire(150.0) == []
    assert table.expire(190.0) == [tcp]
    assert table.stats.expired == 2 and len(table) == 0


def test_unanswered_syn_expires_after_opening_timeout() -> None:
    table = NatTable("198.18.0.0/24", timeouts=NatTimeouts(opening=5))
    m = table.lookup_or_allocate(key(1), 0.0)
    table.note_packet(m, 0.0, TCP_SYN)
    assert table.expire(4.9) == []
    assert table.expire(5.0) == [m]


def test_fin_both_ways_enters_time_wait_and_pair_is_not_reused_during_grace() -> None:
    timeouts = NatTimeouts(fin_grace=30, established=1000, half_closed=500)
    # One host, one port: the only pair must stay blocked during TIME_WAIT.
    table = NatTable("198.18.0.0/30", reserved=("198.18.0.1",), port_range=(7000, 7000),
                     timeouts=timeouts)
    m = table.lookup_or_allocate(key(1), 0.0)
    table.note_packet(m, 0.0, TCP_SYN)
    table.note_packet(m, 0.1, TCP_SYN | TCP_ACK, outbound=False)
    table.note_packet(m, 1.0, TCP_FIN | TCP_ACK)
    assert m.state is NatState.HALF_CLOSED
    table.note_packet(m, 2.0, TCP_FIN | TCP_ACK, outbound=False)
    assert m.state.value == "time-wait"
    # Still translatable in both directions during the grace.
    assert table.lookup_by_fake(m.fake_ip, m.fake_port) is m
    with pytest.raises(NatExhausted):
        table.lookup_or_allocate(key(2), 10.0)
    assert table.expire(31.9) == []
    assert table.expire(32.0) == [m]
    fresh = table.lookup_or_allocate(key(2), 33.0)
    assert (fresh.fake_ip, fresh.fake_port) == (m.fake_ip, m.fake_port)
    assert table.lookup(key(1)) is None


def test_rst_gives_short_grace_even_if_deadline_was_far() -> None:
    table = NatTable("198.18.0.0/24", timeouts=NatTimeouts(established=7000, rst_grace=2))
    m = table.lookup_or_allocate(key(1), 0.0)
    table.note_packet(m, 0.0, TCP_SYN | TCP_ACK, outbound=False)
    table.note_packet(m, 10.0, TCP_RST, outbound=False)
    assert m.state is NatState.TIME_WAIT
    table.note_packet(m, 11.0, TCP_ACK)  # does not extend the grace
    assert table.expire(11.9) == []
    assert table.expire(12.0) == [m]


def test_syn_reopens_time_wait_mapping() -> None:
    table = NatTable("198.18.0.0/24", timeouts=NatTimeouts(rst_grace=2, opening=50))
    m = table.lookup_or_allocate(key(1), 0.0)
    table.note_packet(m, 1.0, TCP_RST)
    table.note_packet(m, 1.5, TCP_SYN)
    assert m.state is NatState.OPENING
    assert table.expire(10.0) == []
    assert table.expire(51.5) == [m]


def test_release_frees_after_rst_grace() -> None:
    table = NatTable("198.18.0.0/24", timeouts=NatTimeouts(rst_grace=2))
    m = table.lookup_or_allocate(key(1), 0.0)
    table.release(m, 5.0)
    assert table.expire(6.9) == [] and table.expire(7.0) == [m]


def test_freed_pairs_are_reused_oldest_first_after_the_cursor_runs_out() -> None:
    table = NatTable("198.18.0.0/30", port_range=(1, 2), timeouts=NatTimeouts(udp=1))
    a = table.lookup_or_allocate(key(1, "udp"), 0.0)
    b = table.lookup_or_allocate(key(2, "udp"), 0.5)
    c = table.lookup_or_allocate(key(3, "udp"), 0.7)
    d = table.lookup_or_allocate(key(4, "udp"), 0.8)
    assert len({(m.fake_ip, m.fake_port) for m in (a, b, c, d)}) == 4
    assert table.expire(1.6) == [a, b]
    e = table.lookup_or_allocate(key(5, "udp"), 2.0)
    assert (e.fake_ip, e.fake_port) == (a.fake_ip, a.fake_port)


def test_ipv6_prefix() -> None:
    table = NatTable("fc00:18::/64", reserved=("fc00:18::1",))
    app6 = ipaddress.IPv6Address("fd00::2")
    ms = [table.lookup_or_allocate(NatKey.of("tcp", app6, p, app6, 80), 0.0)
          for p in range(1, 1001)]
    assert len({(m.fake_ip, m.fake_port) for m in ms}) == 1000
    assert str(ms[0].fake_address) == "fc00:18::2"  # not ::0 (anycast) nor ::1 (reserved)
    for m in ms:
        assert isinstance(m.fake_address, ipaddress.IPv6Address) and len(m.fake_ip) == 16
        assert m.fake_address in ipaddress.IPv6Network("fc00:18::/64")
        assert str(m.fake_address) != "fc00:18::1"
        assert table.lookup_by_fake(m.fake_ip, m.fake_port) is m


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.sampled_from([0, TCP_SYN, TCP_ACK, TCP_FIN,
                                                             TCP_RST, TCP_SYN | TCP_ACK]),
                          st.booleans(), st.floats(0, 5)), max_size=80))
def test_random_traffic_never_collides(ops: list[tuple[int, int, bool, float]]) -> None:
    table = NatTable("198.18.0.0/29", port_range=(100, 101),
                     timeouts=NatTimeouts(opening=3, established=6, half_closed=4, fin_grace=2,
                                          rst_grace=1))
    now = 0.0
    for port, flags, outbound, dt in ops:
        now += dt
        table.expire(now)
        try:
            m = table.lookup_or_allocate(key(port), now)
        except NatExhausted:
            continue
        table.note_packet(m, now, flags, outbound=outbound)
        live = [table.lookup(key(p)) for p in range(8)]
        pairs = [(x.fake_ip, x.fake_port) for x in live if x is not None]
        assert len(pairs) == len(set(pairs)) == len(table)
        for x in live:
            if x is not None:
                assert table.lookup_by_fake(x.fake_ip, x.fake_port) is x


def test_unknown_protocol_is_local_error() -> None:
    from tunkit.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError):
        NatTable("198.18.0.0/24").lookup_or_allocate(key(1, "icmp"), 0.0)
