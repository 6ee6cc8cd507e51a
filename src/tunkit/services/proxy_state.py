"""Shared state of a running ``tunkit proxy``: configuration, pure cores and the one lock.

Contract:

* :class:`ProxyConfig` is the validated command line (plain values).
* :class:`ProxyState` holds the pure cores (fake-IP pools, DNS resolver, NAT tables, rules,
  flow registry).  Every thread (reactor, TUN queue threads, DNS server, UDP manager, status
  server) touches the cores only while holding :attr:`ProxyState.lock`; the cores themselves
  are not thread-safe.  The fake-IP pools' SQLite stores are used only through the pools, so
  the lock also serializes every database call (from whichever thread).
* The prefix is split in two halves: the first half is the fake-IP pool (DNS answers), the
  second half the NAT's fake *sources*, so a fake source can never equal a fake destination.
  The TUN's own address (first host of the prefix) is reserved in both.
* :meth:`ProxyState.decide` is the routing decision for a flow: it returns the target name
  (``direct``, ``reject``, or an upstream name) and its :class:`Upstream`.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunkit.errors import ConfigError
from tunkit.proxy.dns import FakeDnsResolver
from tunkit.proxy.fakeip import FakeIpPool
from tunkit.proxy.flows import FlowRegistry
from tunkit.proxy.nat import NatMapping, NatTable
from tunkit.proxy.rules import DEFAULT, DIRECT, REJECT, RuleSet, Upstream, parse_rules
from tunkit.proxy.store import SqlitePoolStore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PREFIX = "198.18.0.0/15"
DEFAULT_TUN = "tkproxy0"
DEFAULT_FWMARK = 0x7475
DEFAULT_TABLE = 7475
DEFAULT_STATUS = "127.0.0.1:7475"


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``"1.2.3.4:53"``, ``"[::1]:53"``, ``"1.2.3.4"`` -> ``(host, port)``."""
    text = text.strip()
    if text.startswith("["):
        host, _sep, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    try:
        ipaddress.ip_address(host)
        number = int(port) if port else default_port
    except ValueError:
        raise ConfigError(f"invalid address {text!r}: expected IP[:PORT]") from None
    if not 0 < number <= 65535:
        raise ConfigError(f"invalid port in {text!r}")
    return host, number


@dataclass
class ProxyConfig:
    upstream: Upstream
    tun: str = DEFAULT_TUN
    prefix: str = DEFAULT_PREFIX
    prefix6: str | None = None
    dns_listen: list[tuple[str, int]] = field(default_factory=list)
    """Empty: the TUN address, port 53."""
    dns_upstream: tuple[str, int] | None = None
    rules_file: str | None = None
    auto_route: bool = False
    fwmark: int | None = None
    interface: str | None = None
    state_file: str | None = None
    status_listen: tuple[str, int] | None = None
    table: int = DEFAULT_TABLE
    filter_domains: tuple[str, ...] = ()
    bypass_cgroup: bool = True
    udp_timeout: float = 60.0
    udp_max_sessions: int = 4096
    mtu: int = 9000
    queues: int = 1
    """TUN queues: queue 0 is served on the relay's reactor thread, any further queue by a
    thread of its own (more CPUs for the kernel work behind TUN writes, but a GIL hand-over
    per packet batch: measured, 1 queue costs ~20 % less CPU per connection, same bulk
    throughput)."""


def split_prefix(prefix: str) -> tuple[IPNetwork, IPNetwork, IPNetwork]:
    """``(whole, pool half, NAT half)`` of a prefix; the halves are its two subnets."""
    try:
        net = ipaddress.ip_network(prefix, strict=False)
    except ValueError as err:
        raise ConfigError(f"invalid prefix {prefix!r}: {err}") from None
    limit = 28 if net.version == 4 else 124
    if net.prefixlen > limit:
        raise ConfigError(f"prefix {net} is too small (at most /{limit})")
    low, high = net.subnets(prefixlen_diff=1)
    return net, low, high


class ProxyState:
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.started = time.time()
        net4, pool4_net, nat4_net = split_prefix(config.prefix)
        if net4.version != 4:
            raise ConfigError(f"--prefix must be IPv4, not {config.prefix}")
        self.tun_ip4: ipaddress.IPv4Address = ipaddress.IPv4Address(int(net4.network_address) + 1)
        self.prefix4 = net4
        self.rules = RuleSet()
        if config.rules_file:
            try:
                text = Path(config.rules_file).read_text()
            except OSError as err:
                raise ConfigError(f"{config.rules_file}: {err.strerror}") from None
            self.rules = parse_rules(text, config.rules_file)
        self.pool6: FakeIpPool | None = None
        self.nat6: NatTable | None = None
        self.tun_ip6: ipaddress.IPv6Address | None = None
        self.prefix6: IPNetwork | None = None
        if config.prefix6:
            net6, pool6_net, nat6_net = split_prefix(config.prefix6)
            if net6.version != 6:
                raise ConfigError(f"--prefix6 must be IPv6, not {config.prefix6}")
            self.prefix6 = net6
            self.tun_ip6 = ipaddress.IPv6Address(int(net6.network_address) + 1)
            self.nat6 = NatTable(nat6_net, reserved=(self.tun_ip6,))
        store = store6 = None
        if config.state_file:
            Path(config.state_file).parent.mkdir(parents=True, exist_ok=True)
            store = SqlitePoolStore(config.state_file)
            if config.prefix6:
                store6 = SqlitePoolStore(str(Path(config.state_file).with_suffix(".v6.sqlite")))
        self.store = store
        self.store6 = store6
        if config.prefix6 and self.tun_ip6 is not None:
            self.pool6 = FakeIpPool(pool6_net, reserved=[self.tun_ip6], store=store6)
        self.pool4 = FakeIpPool(pool4_net, reserved=[self.tun_ip4], store=store)
        self.nat4 = NatTable(nat4_net, reserved=(self.tun_ip4,))
        self.resolver = FakeDnsResolver(self.pool4, self.pool6,
                                        filter_suffixes=config.filter_domains)
        self.flows = FlowRegistry()
        self.counters: dict[str, int] = {
            "tcp_accepted": 0, "tcp_rejected": 0, "tcp_upstream_failed": 0, "rst_sent": 0,
            "dns_queries": 0, "dns_forwarded": 0, "dns_hijacked": 0, "udp_datagrams_up": 0,
            "udp_datagrams_down": 0, "tun_packets": 0, "tun_dropped": 0,
        }
        self.mark = config.fwmark if config.fwmark is not None else (
            DEFAULT_FWMARK if config.auto_route else None)
        self.listen_port = 0
        self.tun_write_lock = threading.Lock()
        self.stopping = threading.Event()

    # -- decisions -------------------------------------------------------------------------

    def nat_for(self, version: int) -> NatTable | None:
        return self.nat4 if version == 4 else self.nat6

    def pool_for(self, ip: IPAddress) -> FakeIpPool | None:
        if ip.version == 4:
            return self.pool4 if ip in self.pool4.prefix else None
        if self.pool6 is not None and ip in self.pool6.prefix:
            return self.pool6
        return None

    def domain_of(self, ip: IPAddress) -> tuple[bool, str | None]:
        """``(is_fake, domain)`` for a destination address (call with the lock held)."""
        pool = self.pool_for(ip)
        if pool is None:
            return False, None
        return True, pool.domain_for(ip)

    def decide(self, domain: str | None, dst_ip: IPAddress, dst_port: int,
               proto: str) -> tuple[str, Upstream]:
        """The rules target of a flow and the upstream it names (lock held or not)."""
        name = self.rules.match(domain, dst_ip, dst_port, proto)
        if name == DEFAULT:
            up = self.config.upstream
            return (up.scheme if up.scheme in (DIRECT, REJECT) else DEFAULT), up
        if name in (DIRECT, REJECT):
            return name, Upstream(name)
        return name, self.rules.upstreams[name]

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def release_nat(self, mapping: NatMapping) -> None:
        with self.lock:
            table = self.nat_for(4 if len(mapping.key.src_ip) == 4 else 6)
            if table is not None:
                table.release(mapping, time.monotonic())

    def close(self) -> None:
        with self.lock:
            self.pool4.flush()
            if self.pool6 is not None:
                self.pool6.flush()
            for store in (self.store, self.store6):
                if store is not None:
                    store.close()
            self.store = self.store6 = None


def netns_id() -> int:
    """Inode of the caller's network namespace: names state files per namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino
