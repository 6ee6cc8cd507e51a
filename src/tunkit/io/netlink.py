"""The one facade over pyroute2: links, addresses, MTU, routes, policy rules, namespaces.

Contract:

* Nothing else in tunkit imports pyroute2; everything that configures the kernel's network
  state goes through :class:`Netlink` (or the module functions for namespaces).
* ``Netlink(netns=None)`` talks to the caller's current namespace; ``Netlink(netns="x")``
  talks to the named namespace (``/var/run/netns/x``) and never creates it.
* Every method takes plain Python values (names, CIDR strings, ints) and returns plain
  values or small frozen dataclasses; pyroute2's kwargs and messages never leak out.
* Bad CIDRs raise ``ConfigError("invalid CIDR: ...")``; kernel refusals raise
  :class:`~tunkit.errors.DeviceError` (or ``PermissionDeniedError`` for EPERM) with a one-line
  message naming the object.
* Changes that the kernel applies asynchronously (a new link, a link moved to another
  namespace) are polled for until visible, so a method returns only when its effect is seen.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as _pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from tunkit.errors import ConfigError, DeviceError, PermissionDeniedError

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
IFA_F_NODAD = 0x02
FIB_RULE_INVERT = 0x02
FR_ACT_TO_TBL = 1
RT_TABLE_MAIN = 254
_POLL_TIMEOUT = 3.0

T = TypeVar("T")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class Route:
    """One routing table entry, as read back from the kernel."""

    dst: str
    """Destination prefix, e.g. ``"10.0.0.0/24"``, ``"0.0.0.0/0"`` for the default route."""
    dev: str | None
    """Output device name, if the route has one."""
    via: str | None
    """Gateway address, if any."""
    table: int
    """Routing table id (254 is ``main``)."""
    metric: int | None
    """Route priority (``metric`` in ``ip route``)."""


@dataclass(frozen=True)
class Rule:
    """One policy routing rule, as read back from the kernel."""

    priority: int
    table: int
    fwmark: int | None
    fwmask: int | None
    suppress_prefixlength: int | None
    invert: bool
    family: int


# --------------------------------------------------------------------------- validation


def parse_interface(cidr: str) -> Interface:
    """Parse an address with prefix (``10.0.0.1/24``, ``fd00::1/64``); ConfigError if bad."""
    if not isinstance(cidr, str) or "/" not in cidr:
        raise ConfigError(f"invalid CIDR: {cidr!r} (expected ADDRESS/PREFIX, e.g. 10.0.0.1/24)")
    try:
        return ipaddress.ip_interface(cidr)
    except ValueError as exc:
        raise ConfigError(f"invalid CIDR: {cidr!r} ({exc})") from None


def parse_network(cidr: str) -> Network:
    """Parse a destination prefix; host bits must be zero, ``default`` means 0.0.0.0/0."""
    if cidr == "default":
        cidr = "0.0.0.0/0"
    if cidr == "default6":
        cidr = "::/0"
    try:
        return ipaddress.ip_network(cidr, strict=True)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid CIDR: {cidr!r} ({exc})") from None


def parse_address(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(addr)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid address: {addr!r} ({exc})") from None


def _check_ifname(name: str) -> None:
    if not name or len(name.encode()) > 15 or "/" in name or any(c.isspace() for c in name):
        raise ConfigError(f"invalid interface name: {name!r} (1-15 bytes, no '/' or spaces)")


# --------------------------------------------------------------------------- namespaces


def netns_path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"invalid namespace name: {name!r}")
    return os.path.join(NETNS_RUN_DIR, name)


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def create_netns(name: str) -> None:
    """Create the named namespace; DeviceError if it already exists."""
    if netns_exists(name):
        raise DeviceError(f"namespace already exists: {name}")
    try:
        _pr_netns.create(name)
    except OSError as exc:
        raise _os_error(exc, f"cannot create namespace {name}") from None


def delete_netns(name: str) -> None:
    """Remove the named namespace (its links go with it once no process holds it)."""
    path = netns_path(name)
    if not os.path.exists(path):
        raise DeviceError(f"no such namespace: {name}")
    try:
        _pr_netns.remove(name)
    except OSError as exc:
        raise _os_error(exc, f"cannot delete namespace {name}") from None


def list_netns() -> list[str]:
    return sorted(_pr_netns.listnetns())


_libc: Any = None


def _setns_fn() -> Callable[[int, int], int]:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn: Callable[[int, int], int] = _libc.setns
    return fn


def open_netns_fd(name: str) -> int:
    """An O_CLOEXEC fd on the named namespace (for :func:`setns_fd`)."""
    path = netns_path(name)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DeviceError(f"no such namespace: {name}") from None


def setns_fd(fd: int) -> None:
    """Move the *calling thread* into the namespace behind ``fd``.

    Safe to call from a ``preexec_fn``: the libc handle is loaded beforehand by
    :func:`prepare_setns`, so this only does one system call.
    """
    if _setns_fn()(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


def prepare_setns() -> Callable[[int], None]:
    """Load libc now and return :func:`setns_fd` (call before fork)."""
    _setns_fn()
    return setns_fd


@contextmanager
def entered_netns(name: str) -> Iterator[None]:
    """Run the block with the calling thread inside namespace ``name``, then return.

    Sockets and TUN devices created inside stay in that namespace after the block.
    """
    target = open_netns_fd(name)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            setns_fd(target)
        except OSError as exc:
            raise _os_error(exc, f"cannot enter namespace {name}") from None
        try:
            yield
        finally:
            setns_fd(original)
    finally:
        os.close(target)
        os.close(original)


# --------------------------------------------------------------------------- errors


def _os_error(exc: OSError, what: str) -> DeviceError | PermissionDeniedError:
    code = exc.errno or 0
    text = os.strerror(code) if code else str(exc)
    if code in (errno.EPERM, errno.EACCES):
        return PermissionDeniedError(f"{what}: {text} (needs root / CAP_NET_ADMIN)")
    return DeviceError(f"{what}: {text}")


def _nl_error(exc: NetlinkError, what: str) -> DeviceError | PermissionDeniedError:
    code = int(exc.code)
    text = os.strerror(code) if code > 0 else str(exc)
    if code in (errno.EPERM, errno.EACCES):
        return PermissionDeniedError(f"{what}: {text} (needs root / CAP_NET_ADMIN)")
    if code == errno.EEXIST:
        return DeviceError(f"{what}: already exists")
    if code in (errno.ENODEV, errno.ENOENT, errno.ESRCH):
        return DeviceError(f"{what}: no such object ({text})")
    return DeviceError(f"{what}: {text}")


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.02) -> T | None:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


# --------------------------------------------------------------------------- the facade


class Netlink:
    """Configure links, addresses, routes and rules in one namespace.

    Not safe for concurrent use from several threads; open one per thread.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        try:
            if netns is None:
                self._ip = IPRoute()
            else:
                if not netns_exists(netns):
                    raise DeviceError(f"no such namespace: {netns}")
                # flags=0: never let pyroute2 create a namespace behind our back
                self._ip = IPRoute(netns=netns, flags=0)
        except OSError as exc:
            raise _os_error(exc, f"cannot open netlink socket in {netns or 'current namespace'}") from None

    # -- lifetime
    def close(self) -> None:
        ip, self._ip = self._ip, None
        if ip is not None:
            ip.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Netlink(netns={self.netns!r})"

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._ip is None:
            raise DeviceError("netlink facade is closed")
        try:
            return fn(*args, **kwargs)
        except NetlinkError as exc:
            raise _nl_error(exc, what) from None
        except OSError as exc:
            raise _os_error(exc, what) from None

    def _where(self) -> str:
        return f" in namespace {self.netns}" if self.netns else ""

    # -- links
    def _lookup(self, name: str) -> int | None:
        _check_ifname(name)
        found = self._call(f"lookup {name}", self._ip.link_lookup, ifname=name)
        return int(found[0]) if found else None

    def link_exists(self, name: str) -> bool:
        return self._lookup(name) is not None

    def link_index(self, name: str) -> int:
        idx = self._lookup(name)
        if idx is None:
            raise DeviceError(f"no such device: {name}{self._where()}")
        return idx

    def list_links(self) -> list[str]:
        msgs = self._call("list links", self._ip.get_links)
        return [m.get("IFLA_IFNAME") for m in msgs]

    def _link_attr(self, name: str, attr: str) -> Any:
        idx = self.link_index(name)
        msgs = self._call(f"get link {name}", self._ip.get_links, idx)
        return msgs[0].get(attr)

    def set_up(self, name: str) -> None:
        idx = self.link_index(name)
        self._call(f"set {name} up", self._ip.link, "set", index=idx, state="up")

    def set_down(self, name: str) -> None:
        idx = self.link_index(name)
        self._call(f"set {name} down", self._ip.link, "set", index=idx, state="down")

    def is_up(self, name: str) -> bool:
        flags = self._call(f"get link {name}", self._ip.get_links, self.link_index(name))[0]["flags"]
        return bool(int(flags) & 0x1)

    def operstate(self, name: str) -> str:
        """RFC 2863 operational state: ``"UP"``, ``"DOWN"``, ``"UNKNOWN"``, ..."""
        return str(self._link_attr(name, "IFLA_OPERSTATE"))

    def wait_operational(self, name: str, timeout: float = _POLL_TIMEOUT) -> None:
        """Wait until ``name`` can carry traffic (operstate UP or UNKNOWN).

        The kernel attaches the real qdisc and flips operstate from its linkwatch worker, up
        to a second after ``set_up``; packets sent before that are silently dropped.
        """
        def ready() -> bool:
            return self.operstate(name) in ("UP", "UNKNOWN")
        if wait_until(ready, timeout) is None:
            raise DeviceError(f"{name} is not operational after {timeout:g}s ({self.operstate(name)})")

    def set_mtu(self, name: str, mtu: int) -> None:
        if not isinstance(mtu, int) or not 68 <= mtu <= 65535:
            raise ConfigError(f"invalid MTU: {mtu!r} (68..65535)")
        idx = self.link_index(name)
        self._call(f"set mtu {mtu} on {name}", self._ip.link, "set", index=idx, mtu=mtu)

    def get_mtu(self, name: str) -> int:
        return int(self._link_attr(name, "IFLA_MTU"))

    def get_mac(self, name: str) -> str:
        mac = self._link_attr(name, "IFLA_ADDRESS")
        return str(mac) if mac else ""

    def create_veth(self, a: str, b: str, peer_netns: str | None = None) -> None:
        """Create veth pair ``a`` (here) <-> ``b`` (here, or directly in ``peer_netns``)."""
        _check_ifname(a)
        _check_ifname(b)
        peer: dict[str, Any] = {"ifname": b}
        if peer_netns is not None:
            if not netns_exists(peer_netns):
                raise DeviceError(f"no such namespace: {peer_netns}")
            peer["net_ns_fd"] = peer_netns
        self._call(f"create veth {a}<->{b}", self._ip.link, "add", ifname=a, kind="veth", peer=peer)
        if wait_until(lambda: self.link_exists(a), _POLL_TIMEOUT) is None:
            raise DeviceError(f"veth {a} did not appear{self._where()}")

    def delete_link(self, name: str) -> None:
        idx = self.link_index(name)
        self._call(f"delete link {name}", self._ip.link, "del", index=idx)
        if wait_until(lambda: not self.link_exists(name), _POLL_TIMEOUT) is None:
            raise DeviceError(f"link {name} still present after delete{self._where()}")

    def move_to_netns(self, name: str, netns: str) -> None:
        idx = self.link_index(name)
        if not netns_exists(netns):
            raise DeviceError(f"no such namespace: {netns}")
        self._call(f"move {name} to namespace {netns}", self._ip.link, "set", index=idx, net_ns_fd=netns)
        if wait_until(lambda: not self.link_exists(name), _POLL_TIMEOUT) is None:
            raise DeviceError(f"link {name} did not leave{self._where()}")

    # -- addresses
    def add_address(self, name: str, cidr: str, *, nodad: bool = False) -> None:
        """Add ``cidr`` (``10.0.0.1/24``) to ``name``. ``nodad`` skips IPv6 duplicate detection."""
        iface = parse_interface(cidr)
        idx = self.link_index(name)
        kwargs: dict[str, Any] = {}
        if nodad or iface.version == 6:
            # An address under DAD is "tentative" and cannot be used for ~1 s; tunkit's
            # links are point-to-point or private, so skipping DAD is always safe for v6.
            kwargs["flags"] = IFA_F_NODAD
        self._call(
            f"add address {cidr} to {name}", self._ip.addr, "add", index=idx,
            address=str(iface.ip), prefixlen=iface.network.prefixlen, **kwargs,
        )

    def del_address(self, name: str, cidr: str) -> None:
        iface = parse_interface(cidr)
        idx = self.link_index(name)
        self._call(
            f"delete address {cidr} from {name}", self._ip.addr, "del", index=idx,
            address=str(iface.ip), prefixlen=iface.network.prefixlen,
        )

    def list_addresses(self, name: str) -> list[str]:
        """Addresses on ``name`` as CIDR strings, v4 first (link-local v6 included)."""
        idx = self.link_index(name)
        msgs = self._call(f"list addresses of {name}", self._ip.get_addr, index=idx)
        out = [f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}" for m in msgs]
        return sorted(out, key=lambda c: (":" in c, c))

    # -- routes
    def _route_kwargs(
        self, dst_cidr: str, dev: str | None, via: str | None, table: int | None, metric: int | None
    ) -> dict[str, Any]:
        net = parse_network(dst_cidr)
        kw: dict[str, Any] = {"dst": str(net.network_address), "dst_len": net.prefixlen}
        kw["family"] = socket.AF_INET if net.version == 4 else socket.AF_INET6
        if dev is not None:
            kw["oif"] = self.link_index(dev)
        if via is not None:
            gw = parse_address(via)
            if gw.version != net.version:
                raise ConfigError(f"gateway {via} and destination {dst_cidr} differ in family")
            kw["gateway"] = str(gw)
        if table is not None:
            if not 1 <= table < 2**32:
                raise ConfigError(f"invalid table: {table!r}")
            kw["table"] = table
        if metric is not None:
            kw["priority"] = metric
        return kw

    def add_route(
        self, dst_cidr: str, *, dev: str | None = None, via: str | None = None,
        table: int | None = None, metric: int | None = None,
    ) -> None:
        if dev is None and via is None:
            raise ConfigError(f"route {dst_cidr}: give a device, a gateway, or both")
        kw = self._route_kwargs(dst_cidr, dev, via, table, metric)
        self._call(f"add route {dst_cidr}", self._ip.route, "add", **kw)

    def del_route(
        self, dst_cidr: str, *, dev: str | None = None, via: str | None = None,
        table: int | None = None, metric: int | None = None,
    ) -> None:
        kw = self._route_kwargs(dst_cidr, dev, via, table, metric)
        self._call(f"delete route {dst_cidr}", self._ip.route, "del", **kw)

    def list_routes(self, table: int | None = None, family: int = socket.AF_INET) -> list[Route]:
        """Unicast routes of ``table`` (default: main), in kernel order."""
        want = RT_TABLE_MAIN if table is None else table
        msgs = self._call("list routes", self._ip.get_routes, family=family, table=want)
        names = {}
        routes = []
        for m in msgs:
            if m["type"] != 1:  # RTN_UNICAST only: skip local/broadcast/multicast entries
                continue
            tbl = m.get("RTA_TABLE") or m["table"]
            if tbl != want:
                continue
            dst = m.get("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
            oif = m.get("RTA_OIF")
            dev = None
            if oif is not None:
                if oif not in names:
                    links = self._call("get link", self._ip.get_links, oif)
                    names[oif] = links[0].get("IFLA_IFNAME") if links else None
                dev = names[oif]
            routes.append(Route(
                dst=f"{dst}/{m['dst_len']}", dev=dev, via=m.get("RTA_GATEWAY"),
                table=int(tbl), metric=m.get("RTA_PRIORITY"),
            ))
        return routes

    # -- policy rules
    def _rule_kwargs(
        self, fwmark: int | None, fwmask: int | None, table: int | None, priority: int | None,
        suppress_prefixlength: int | None, invert: bool, family: int,
    ) -> dict[str, Any]:
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise ConfigError(f"invalid address family: {family!r}")
        kw: dict[str, Any] = {"family": family, "action": FR_ACT_TO_TBL}
        if table is not None:
            if not 1 <= table < 2**32:
                raise ConfigError(f"invalid table: {table!r}")
            kw["table"] = table
        if fwmark is not None:
            if not 0 <= fwmark < 2**32:
                raise ConfigError(f"invalid fwmark: {fwmark!r}")
            kw["fwmark"] = fwmark
        if fwmask is not None:
            kw["fwmask"] = fwmask
        if priority is not None:
            kw["priority"] = priority
        if suppress_prefixlength is not None:
            if not 0 <= suppress_prefixlength <= 128:
                raise ConfigError(f"invalid suppress_prefixlength: {suppress_prefixlength!r}")
            kw["suppress_prefixlen"] = suppress_prefixlength
        if invert:
            kw["flags"] = FIB_RULE_INVERT
        return kw

    def add_rule(
        self, *, fwmark: int | None = None, fwmask: int | None = None, table: int | None = None,
        priority: int | None = None, suppress_prefixlength: int | None = None,
        invert: bool = False, family: int = socket.AF_INET,
    ) -> None:
        if table is None:
            raise ConfigError("a policy rule needs a table")
        kw = self._rule_kwargs(fwmark, fwmask, table, priority, suppress_prefixlength, invert, family)
        self._call(f"add rule to table {table}", self._ip.rule, "add", **kw)

    def del_rule(
        self, *, fwmark: int | None = None, fwmask: int | None = None, table: int | None = None,
        priority: int | None = None, suppress_prefixlength: int | None = None,
        invert: bool = False, family: int = socket.AF_INET,
    ) -> None:
        kw = self._rule_kwargs(fwmark, fwmask, table, priority, suppress_prefixlength, invert, family)
        self._call(f"delete rule (table {table}, priority {priority})", self._ip.rule, "del", **kw)

    def list_rules(self, family: int = socket.AF_INET) -> list[Rule]:
        msgs = self._call("list rules", self._ip.get_rules, family=family)
        rules = []
        for m in msgs:
            sup = m.get("FRA_SUPPRESS_PREFIXLEN")
            # the kernel reports "no suppress" as 0xffffffff (-1)
            if sup is not None and (sup < 0 or sup == 0xFFFFFFFF):
                sup = None
            rules.append(Rule(
                priority=int(m.get("FRA_PRIORITY") or 0),
                table=int(m.get("FRA_TABLE") or m["table"]),
                fwmark=m.get("FRA_FWMARK"),
                fwmask=m.get("FRA_FWMASK"),
                suppress_prefixlength=sup,
                invert=bool(int(m["flags"]) & FIB_RULE_INVERT),
                family=int(m["family"]),
            ))
        return rules

    # -- namespaces (filesystem operations; independent of the bound namespace)
    create_netns = staticmethod(create_netns)
    delete_netns = staticmethod(delete_netns)
    list_netns = staticmethod(list_netns)
