"""Fake-IP pool: normalisation, LRU eviction, cursor wrap, SQLite persistence, prefix reset."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

import pytest

from tunkit.errors import ConfigError
from tunkit.proxy.fakeip import FakeIpPool, PoolEntry, StoredPool
from tunkit.proxy.store import SqlitePoolStore


def test_domains_are_normalised_and_stable() -> None:
    pool = FakeIpPool("198.18.0.0/15", reserved=("198.18.0.1",))
    a = pool.ip_for("WWW.Example.COM.", 0.0)
    assert pool.ip_for("www.example.com", 1.0) == a
    assert str(a) == "198.18.0.2"  # .0 is the network address, .1 reserved
    assert pool.domain_for(a) == "www.example.com"
    assert pool.domain_for(str(a)) == "www.example.com"
    assert pool.domain_for("198.18.9.9") is None
    assert pool.domain_for("garbage") is None
    assert pool.contains("198.19.255.1") and not pool.contains("10.0.0.1")


def test_sequential_allocation_skips_reserved() -> None:
    pool = FakeIpPool("198.18.0.0/24", reserved=("198.18.0.1", "198.18.0.3"), capacity=10)
    ips = [str(pool.ip_for(f"d{i}.test", float(i))) for i in range(4)]
    assert ips == ["198.18.0.2", "198.18.0.4", "198.18.0.5", "198.18.0.6"]


def test_lru_eviction_drops_both_directions() -> None:
    pool = FakeIpPool("198.18.0.0/24", capacity=3)
    a = pool.ip_for("a.test", 1.0)
    b = pool.ip_for("b.test", 2.0)
    pool.ip_for("c.test", 3.0)
    pool.touch("a.test", 4.0)  # b is now the least recently used
    pool.ip_for("d.test", 5.0)
    assert pool.domain_for(b) is None
    assert pool.domain_for(a) == "a.test"
    assert len(pool) == 3
    assert pool.stats.evicted_total == 1
    # b comes back with a new address: its old one is not handed out again at once.
    assert pool.ip_for("b.test", 6.0) != b


def test_touch_by_ip_and_unknown() -> None:
    pool = FakeIpPool("198.18.0.0/24", capacity=2)
    a = pool.ip_for("a.test", 1.0)
    pool.ip_for("b.test", 2.0)
    assert pool.touch(a, 3.0) is True
    assert pool.touch("nope.test", 3.0) is False
    assert pool.touch("198.18.0.200", 3.0) is False
    pool.ip_for("c.test", 4.0)
    assert pool.domain_for(a) == "a.test"  # b was evicted, not a


def test_cursor_wraps_and_never_duplicates() -> None:
    pool = FakeIpPool("198.18.0.0/29", capacity=4)  # hosts .1-.6
    seen: list[str] = []
    for i in range(20):
        ip = pool.ip_for(f"n{i}.test", float(i))
        seen.append(str(ip))
        live = [pool.domain_for(f"198.18.0.{h}") for h in range(1, 7)]
        assert sum(d is not None for d in live) == min(i + 1, 4)
    assert seen[:6] == [f"198.18.0.{h}" for h in range(1, 7)]
    assert seen[6] == "198.18.0.1"  # wrapped
    assert all(ipaddress.IPv4Address(s) in ipaddress.IPv4Network("198.18.0.0/29") for s in seen)


def test_capacity_bounds() -> None:
    with pytest.raises(ConfigError):
        FakeIpPool("198.18.0.0/30", capacity=3)
    with pytest.raises(ConfigError):
        FakeIpPool("198.18.0.0/30", reserved=("198.18.0.1", "198.18.0.2"))
    assert FakeIpPool("198.18.0.0/15").capacity == 65535


def test_ipv6_pool() -> None:
    pool = FakeIpPool("fc00:18::/64", reserved=("fc00:18::1",))
    ip = pool.ip_for("v6.test", 0.0)
    assert isinstance(ip, ipaddress.IPv6Address) and str(ip) == "fc00:18::2"
    assert pool.capacity == 65536


class MemoryStore:
    def __init__(self) -> None:
        self.saved: StoredPool | None = None
        self.entries: dict[str, PoolEntry] = {}
        self.cursor = 0
        self.prefix = ""
        self.writes = 0

    def load(self) -> StoredPool | None:
        if not self.prefix:
            return None
        return StoredPool(self.prefix, self.cursor, list(self.entries.values()))

    def reset(self, prefix: str) -> None:
        self.prefix, self.entries, self.cursor = prefix, {}, 0

    def write(self, upserts: Sequence[PoolEntry], deletes: Sequence[str], cursor: int) -> None:
        self.writes += 1
        for d in deletes:
            self.entries.pop(d, None)
        for e in upserts:
            self.entries[e.domain] = e
        self.cursor = cursor


def test_store_protocol_write_through_and_batched_touch() -> None:
    store = MemoryStore()
    pool = FakeIpPool("198.18.0.0/24", capacity=2, store=store)
    pool.ip_for("a.test", 1.0)
    pool.ip_for("b.test", 2.0)
    assert set(store.entries) == {"a.test", "b.test"} and store.writes == 2
    pool.ip_for("a.test", 5.0)  # touch only: not written yet
    assert store.entries["a.test"].last_used == 1.0
    assert pool.flush() == 1
    assert store.entries["a.test"].last_used == 5.0
    pool.ip_for("c.test", 6.0)  # evicts b
    assert set(store.entries) == {"a.test", "c.test"}


def test_sqlite_persistence_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "pool.sqlite"
    store = SqlitePoolStore(path)
    pool = FakeIpPool("198.18.0.0/15", reserved=("198.18.0.1",), capacity=100, store=store)
    ips = {f"host{i}.example": pool.ip_for(f"host{i}.example", float(i)) for i in range(50)}
    pool.touch("host0.example", 100.0)
    pool.flush()
    store.close()

    store2 = SqlitePoolStore(path)
    pool2 = FakeIpPool("198.18.0.0/15", reserved=("198.18.0.1",), capacity=100, store=store2)
    assert len(pool2) == 50
    for name, ip in ips.items():
        assert pool2.domain_for(ip) == name
        assert pool2.ip_for(name, 200.0) == ip
    # The cursor was restored: a new name gets the next address, not a used one.
    new = pool2.ip_for("new.example", 201.0)
    assert new not in ips.values()
    assert str(new) == "198.18.0.52"
    store2.close()


def test_sqlite_restore_keeps_lru_order(tmp_path: Path) -> None:
    path = tmp_path / "pool.sqlite"
    store = SqlitePoolStore(path)
    pool = FakeIpPool("198.18.0.0/24", capacity=3, store=store)
    pool.ip_for("a.test", 1.0)
    pool.ip_for("b.test", 2.0)
    pool.ip_for("c.test", 3.0)
    pool.touch("a.test", 10.0)
    pool.flush()
    store.close()
    store = SqlitePoolStore(path)
    pool = FakeIpPool("198.18.0.0/24", capacity=3, store=store)
    pool.ip_for("d.test", 11.0)
    assert pool.domain_for("198.18.0.2") is None  # b (LRU) evicted
    assert pool.domain_for("198.18.0.1") == "a.test"
    store.close()


def test_sqlite_prefix_change_resets(tmp_path: Path) -> None:
    path = tmp_path / "pool.sqlite"
    store = SqlitePoolStore(path)
    pool = FakeIpPool("198.18.0.0/15", store=store)
    pool.ip_for("a.test", 1.0)
    store.close()
    store = SqlitePoolStore(path)
    pool = FakeIpPool("198.18.0.0/16", store=store)
    assert len(pool) == 0
    loaded = store.load()
    assert loaded is not None and loaded.prefix == "198.18.0.0/16" and not loaded.entries
    store.close()


def test_sqlite_address_moving_to_new_domain(tmp_path: Path) -> None:
    store = SqlitePoolStore(tmp_path / "p.sqlite")
    pool = FakeIpPool("198.18.0.0/30", capacity=2, store=store)  # hosts .1 .2
    pool.ip_for("a.test", 1.0)
    pool.ip_for("b.test", 2.0)
    pool.ip_for("c.test", 3.0)  # evicts a, takes .1 again
    loaded = store.load()
    assert loaded is not None
    assert {(e.domain, e.ip) for e in loaded.entries} == {
        ("b.test", "198.18.0.2"), ("c.test", "198.18.0.1")}
    store.close()


def test_sqlite_unopenable_path_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SqlitePoolStore(tmp_path / "missing-dir" / "x.sqlite")


def test_sqlite_write_failure_is_store_error(tmp_path: Path) -> None:
    from tunkit.proxy.store import PoolStoreError

    store = SqlitePoolStore(tmp_path / "p.sqlite")
    pool = FakeIpPool("198.18.0.0/24", capacity=2, store=store)
    store.close()
    with pytest.raises(PoolStoreError):
        pool.ip_for("a.test", 0.0)


def test_lookup_by_packed_bytes_and_root_is_refused() -> None:
    from tunkit.errors import LocalProtocolError

    pool = FakeIpPool("198.18.0.0/24")
    ip = pool.ip_for("a.test", 0.0)
    assert pool.domain_for(ip.packed) == "a.test"
    assert pool.touch(ip.packed, 1.0) is True
    assert pool.domain_for(b"\x01\x02\x03") is None
    with pytest.raises(LocalProtocolError):
        pool.ip_for(".", 0.0)
