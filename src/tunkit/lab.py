"""Throwaway network-namespace topologies for the demo, the e2e tests and the benchmarks.

Contract:

* ``with Lab() as lab:`` everything the lab creates (namespaces, the veth links inside them,
  processes started with :meth:`Host.popen`) is removed on exit, on an exception, at
  interpreter exit (atexit) and on SIGTERM/SIGINT (the previous handlers are restored when
  the last lab closes). Teardown is idempotent.
* Namespaces are named ``f"{prefix}{pid}-{name}"``, so parallel runs never collide, and the
  lab never touches the root namespace: veth pairs are created inside a host's namespace with
  the peer end placed directly in the other host's namespace.
* Processes are killed only by the PIDs we started (SIGTERM, then SIGKILL).
* ``lab_up`` / ``lab_down`` / ``lab_status`` keep a lab alive between CLI calls, recording its
  names in ``/run/tunkit/lab-PREFIX.json``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pickle
import select
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from tunkit.errors import ConfigError, DeviceError, TunkitError
from tunkit.io import netlink as nl
from tunkit.io.netlink import Netlink

T = TypeVar("T")

STATE_DIR = Path("/run/tunkit")
_KILL_GRACE = 2.0


class LabTimeoutError(TunkitError, TimeoutError):
    """A condition the lab was waiting for did not happen in time."""


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.05,
             what: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value, which is returned.

    Raises :class:`LabTimeoutError` naming ``what`` after ``timeout`` seconds.
    """
    value = nl.wait_until(predicate, timeout, interval)
    if not value:
        raise LabTimeoutError(f"timed out after {timeout:g}s waiting for {what}")
    return value


# --------------------------------------------------------------------------- hosts


def _listening_ports(proto: str) -> set[int]:
    """Local ports in LISTEN (tcp) or bound (udp) state, for the calling thread's namespace."""
    states = {"tcp": "0A", "udp": "07"}
    if proto not in states:
        raise ConfigError(f"invalid protocol: {proto!r} (tcp or udp)")
    ports: set[int] = set()
    for suffix in ("", "6"):
        try:
            lines = Path(f"/proc/thread-self/net/{proto}{suffix}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 3 and cols[3] == states[proto]:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass
class Host:
    """One network namespace of a lab."""

    name: str
    """Short name given to :meth:`Lab.add_host` (``"a"``)."""
    netns: str
    """The namespace name (``"tk1234-a"``); ``ip netns exec NETNS ...`` enters it."""
    lab: Lab = field(repr=False)
    _links: int = field(default=0, repr=False)

    # -- running things inside
    def _spawn(self, start: Callable[[Callable[[], None]], T]) -> T:
        fd = nl.open_netns_fd(self.netns)
        setns = nl.prepare_setns()
        try:
            return start(lambda: setns(fd))
        finally:
            os.close(fd)

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = 30,
            capture: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace and wait; ``check`` raises on non-zero exit."""
        kw.setdefault("text", True)
        if capture:
            kw.setdefault("stdout", subprocess.PIPE)
            kw.setdefault("stderr", subprocess.PIPE)
        try:
            proc: subprocess.CompletedProcess[str] = self._spawn(
                lambda enter: subprocess.run(list(argv), preexec_fn=enter, timeout=timeout, **kw)
            )
        except FileNotFoundError:
            raise DeviceError(f"[{self.name}] command not found: {argv[0]}") from None
        if check and proc.returncode != 0:
            err = (proc.stderr or "").strip().splitlines() if isinstance(proc.stderr, str) else []
            tail = f": {err[-1]}" if err else ""
            raise DeviceError(f"[{self.name}] {' '.join(argv)} exited with {proc.returncode}{tail}")
        return proc

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the namespace; the lab kills it (by PID) on teardown."""
        try:
            proc: subprocess.Popen[Any] = self._spawn(
                lambda enter: subprocess.Popen(list(argv), preexec_fn=enter, **kw)
            )
        except FileNotFoundError:
            raise DeviceError(f"[{self.name}] command not found: {argv[0]}") from None
        self.lab._processes.append(proc)
        return proc

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a forked child inside the namespace and return its
        (picklable) result, or re-raise its exception here."""
        fd = nl.open_netns_fd(self.netns)
        setns = nl.prepare_setns()
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns
            code = 0
            try:
                os.close(rfd)
                setns(fd)
                try:
                    payload = pickle.dumps((True, fn(*args, **kwargs)))
                except BaseException as exc:
                    try:
                        payload = pickle.dumps((False, exc))
                    except Exception:
                        payload = pickle.dumps((False, RuntimeError(traceback.format_exc())))
                view = memoryview(payload)
                while view:
                    view = view[os.write(wfd, view):]
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(wfd)
        os.close(fd)
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    os.kill(pid, signal.SIGKILL)
                    raise LabTimeoutError(f"[{self.name}] call to {fn!r} timed out")
                ready, _, _ = select.select([rfd], [], [], min(remaining, 0.5))
                if ready:
                    chunk = os.read(rfd, 1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
        finally:
            os.close(rfd)
            os.waitpid(pid, 0)
        if not chunks:
            raise DeviceError(f"[{self.name}] call to {fn!r} died without a result")
        ok, value = pickle.loads(b"".join(chunks))
        if not ok:
            raise value
        result: T = value
        return result

    @contextlib.contextmanager
    def inside(self) -> Iterator[Host]:
        """Run the block with the *calling thread* inside this namespace.

        Sockets and TUN devices opened in the block stay in the namespace afterwards.
        """
        with nl.entered_netns(self.netns):
            yield self

    # -- configuration
    def netlink(self) -> Netlink:
        """A :class:`Netlink` bound to this namespace (close it, or use ``with``)."""
        return Netlink(self.netns)

    def add_route(self, dst_cidr: str, *, dev: str | None = None, via: str | None = None,
                  table: int | None = None, metric: int | None = None) -> None:
        with self.netlink() as link:
            link.add_route(dst_cidr, dev=dev, via=via, table=table, metric=metric)

    def add_address(self, ifname: str, cidr: str) -> None:
        with self.netlink() as link:
            link.add_address(ifname, cidr, nodad=True)

    def enable_forwarding(self) -> None:
        """Turn on IPv4 and IPv6 forwarding in this namespace only."""
        self.sysctl("net.ipv4.ip_forward", "1")
        self.sysctl("net.ipv6.conf.all.forwarding", "1")

    def sysctl(self, key: str, value: str) -> None:
        """Set ``net.*`` sysctl ``key`` (dotted) inside this namespace."""
        if not key.startswith("net.") or ".." in key:
            raise ConfigError(f"only net.* sysctls can be set per namespace: {key!r}")
        path = Path("/proc/sys/" + key.replace(".", "/"))
        # /proc/sys/net resolves the namespace of the calling thread at open time
        with self.inside():
            path.write_text(f"{value}\n")

    def wait_port(self, port: int, proto: str = "tcp", timeout: float = 5.0) -> None:
        """Wait until something listens on ``port`` (tcp) or has it bound (udp) here."""
        def listening() -> bool:
            with self.inside():
                return port in _listening_ports(proto)
        wait_for(listening, timeout, what=f"{proto} port {port} in {self.netns}")

    def links(self) -> list[str]:
        with self.netlink() as link:
            return link.list_links()


# --------------------------------------------------------------------------- the lab

_active_labs: list[Lab] = []
_saved_handlers: dict[int, Any] = {}
_atexit_registered = False
_registry_lock = threading.RLock()


def _teardown_all() -> None:
    # Forked children (pyroute2 helpers, Host.call) inherit atexit and signal handlers;
    # only the process that built a lab may tear it down.
    with _registry_lock:
        labs = [lab for lab in _active_labs if lab.owner_pid == os.getpid()]
    for lab in reversed(labs):
        lab.close()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    previous = _saved_handlers.get(signum, signal.SIG_DFL)
    if _active_labs and not any(lab.owner_pid == os.getpid() for lab in _active_labs):
        # a forked child that inherited our handler: behave like the default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _teardown_all()
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _register(lab: Lab) -> None:
    global _atexit_registered
    with _registry_lock:
        _active_labs.append(lab)
        if not _atexit_registered:
            atexit.register(_teardown_all)
            _atexit_registered = True
        if not _saved_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                _saved_handlers[sig] = signal.getsignal(sig)
                signal.signal(sig, _on_signal)


def _unregister(lab: Lab) -> None:
    with _registry_lock:
        if lab in _active_labs:
            _active_labs.remove(lab)
        if not _active_labs and _saved_handlers and (
            threading.current_thread() is threading.main_thread()
        ):
            for sig, handler in _saved_handlers.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            _saved_handlers.clear()


class Lab:
    """A set of namespaces (hosts) and veth links, torn down as one."""

    def __init__(self, prefix: str = "tk", *, unique: bool = True) -> None:
        if not prefix or "/" in prefix or len(prefix) > 32:
            raise ConfigError(f"invalid lab prefix: {prefix!r}")
        self.prefix = prefix
        self.unique = unique
        self.owner_pid = os.getpid()
        self.hosts: dict[str, Host] = {}
        self.veths: list[tuple[str, str, str, str]] = []  # (host_a, if_a, host_b, if_b)
        self._processes: list[subprocess.Popen[Any]] = []
        self._created_netns: list[str] = []
        self._closed = False
        self._detached = False
        _register(self)

    # -- building
    def _netns_name(self, name: str) -> str:
        base = f"{self.prefix}{os.getpid()}-{name}" if self.unique else f"{self.prefix}-{name}"
        candidate, n = base, 2
        while self.unique and nl.netns_exists(candidate):
            candidate, n = f"{base}{n}", n + 1
        return candidate

    def add_host(self, name: str) -> Host:
        """Create a namespace for ``name`` with ``lo`` up."""
        if self._closed:
            raise DeviceError("lab is closed")
        if not name or "/" in name or name in self.hosts:
            raise ConfigError(f"invalid or duplicate host name: {name!r}")
        netns = self._netns_name(name)
        nl.create_netns(netns)
        self._created_netns.append(netns)
        host = Host(name=name, netns=netns, lab=self)
        self.hosts[name] = host
        with host.inside():
            # No IPv6 DAD anywhere in the lab: tentative link-local addresses would make the
            # first neighbour discovery (and so the first ping6) fail for about a second.
            for conf in ("all", "default"):
                Path(f"/proc/sys/net/ipv6/conf/{conf}/accept_dad").write_text("0\n")
        with host.netlink() as link:
            link.set_up("lo")
        return host

    def link(self, host_a: Host, host_b: Host, cidr_a: str | None = "10.0.0.1/24",
             cidr_b: str | None = "10.0.0.2/24", *, v6: tuple[str, str] | None = None,
             mtu: int | None = None) -> tuple[str, str]:
        """Connect two hosts with a veth pair, address and bring up both ends.

        Returns the interface names ``(in host_a, in host_b)``: ``eth0``, ``eth1``... per host.
        ``v6=("fd00::1/64", "fd00::2/64")`` adds IPv6 addresses (no DAD, usable at once).
        """
        for cidr in (cidr_a, cidr_b, *(v6 or ())):
            if cidr is not None:
                nl.parse_interface(cidr)
        if host_a is host_b:
            raise ConfigError("a link needs two different hosts")
        if_a, if_b = f"eth{host_a._links}", f"eth{host_b._links}"
        with host_a.netlink() as la:
            la.create_veth(if_a, if_b, peer_netns=host_b.netns)
        host_a._links += 1
        host_b._links += 1
        self.veths.append((host_a.name, if_a, host_b.name, if_b))
        with host_b.netlink() as lb:
            wait_for(lambda: lb.link_exists(if_b), 3.0, what=f"{if_b} in {host_b.netns}")
        for host, ifname, v4, v6addr in (
            (host_a, if_a, cidr_a, v6[0] if v6 else None),
            (host_b, if_b, cidr_b, v6[1] if v6 else None),
        ):
            with host.netlink() as link:
                if mtu is not None:
                    link.set_mtu(ifname, mtu)
                if v4 is not None:
                    link.add_address(ifname, v4)
                if v6addr is not None:
                    link.add_address(ifname, v6addr, nodad=True)
                link.set_up(ifname)
        for host, ifname in ((host_a, if_a), (host_b, if_b)):
            with host.netlink() as link:
                link.wait_operational(ifname)
        return if_a, if_b

    # -- reporting
    def describe(self) -> str:
        lines = [f"lab {self.prefix}: {len(self.hosts)} host(s), {len(self._live_processes())} process(es)"]
        for host in self.hosts.values():
            try:
                with host.netlink() as link:
                    parts = []
                    for ifname in link.list_links():
                        if ifname == "lo":
                            continue
                        addrs = [a for a in link.list_addresses(ifname) if not a.startswith("fe80")]
                        parts.append(f"{ifname} {' '.join(addrs) or '-'}")
                lines.append(f"  {host.name} (netns {host.netns}): " + ("; ".join(parts) or "no links"))
            except TunkitError as exc:
                lines.append(f"  {host.name} (netns {host.netns}): {exc}")
        for a, if_a, b, if_b in self.veths:
            lines.append(f"  link {a}:{if_a} <-> {b}:{if_b}")
        for proc in self._live_processes():
            lines.append(f"  pid {proc.pid}: {' '.join(map(str, proc.args))}")  # type: ignore[arg-type]
        return "\n".join(lines)

    def _live_processes(self) -> list[subprocess.Popen[Any]]:
        return [p for p in self._processes if p.poll() is None]

    # -- teardown
    def kill_processes(self) -> None:
        live = self._live_processes()
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _KILL_GRACE
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(2.0)
        for proc in self._processes:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._processes.clear()

    def detach(self) -> None:
        """Forget everything: the namespaces stay (used by ``lab_up``)."""
        self._detached = True
        self._closed = True
        _unregister(self)

    def close(self) -> None:
        """Kill our processes and delete our namespaces. Safe to call repeatedly."""
        if self._closed or os.getpid() != self.owner_pid:
            return
        self._closed = True
        try:
            self.kill_processes()
        finally:
            for netns in reversed(self._created_netns):
                with contextlib.suppress(TunkitError, OSError):
                    if nl.netns_exists(netns):
                        nl.delete_netns(netns)
            self._created_netns.clear()
            _unregister(self)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- CLI state


LAB_V4 = ("10.77.0.1/24", "10.77.0.2/24")
LAB_V6 = ("fd77::1/64", "fd77::2/64")


def state_file(prefix: str) -> Path:
    if not prefix or "/" in prefix:
        raise ConfigError(f"invalid lab prefix: {prefix!r}")
    return STATE_DIR / f"lab-{prefix}.json"


def lab_up(prefix: str = "tk", spec: str = "pair") -> Path:
    """Create a persistent lab (hosts ``a`` and ``b``) and return its state file."""
    if spec != "pair":
        raise ConfigError(f"unknown lab spec: {spec!r} (known: pair)")
    path = state_file(prefix)
    if path.exists():
        raise ConfigError(f"lab {prefix} is already up (state in {path}); run `tunkit lab down --prefix {prefix}` first")
    lab = Lab(prefix, unique=False)
    try:
        for name in ("a", "b"):
            if nl.netns_exists(f"{prefix}-{name}"):
                raise DeviceError(f"namespace {prefix}-{name} already exists")
        a, b = lab.add_host("a"), lab.add_host("b")
        if_a, if_b = lab.link(a, b, LAB_V4[0], LAB_V4[1], v6=LAB_V6)
        state = {
            "prefix": prefix,
            "spec": spec,
            "hosts": {h.name: h.netns for h in (a, b)},
            "links": [[a.name, if_a, LAB_V4[0], LAB_V6[0], b.name, if_b, LAB_V4[1], LAB_V6[1]]],
            "created_by_pid": os.getpid(),
        }
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(path)
    except BaseException:
        lab.close()
        raise
    lab.detach()
    return path


def _read_state(prefix: str) -> dict[str, Any]:
    path = state_file(prefix)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no lab {prefix} is up (no {path})") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"unreadable lab state {path}: {exc}") from None
    return data


def lab_down(prefix: str = "tk") -> list[str]:
    """Delete the persistent lab's namespaces and state file; returns the deleted names."""
    state = _read_state(prefix)
    removed = []
    for netns in state.get("hosts", {}).values():
        if nl.netns_exists(netns):
            nl.delete_netns(netns)
            removed.append(netns)
    state_file(prefix).unlink(missing_ok=True)
    return removed


def lab_status(prefix: str = "tk") -> str:
    """A human-readable status of the persistent lab, with how to enter each host."""
    state = _read_state(prefix)
    lines = [f"lab {prefix} ({state.get('spec', '?')}), state {state_file(prefix)}"]
    for name, netns in state.get("hosts", {}).items():
        alive = nl.netns_exists(netns)
        detail = ""
        if alive:
            with Netlink(netns) as link:
                parts = [f"{i} {' '.join(a for a in link.list_addresses(i) if not a.startswith('fe80'))}"
                         for i in link.list_links() if i != "lo"]
            detail = "; ".join(parts)
        lines.append(f"  host {name}: netns {netns} {'up' if alive else 'MISSING'}  {detail}".rstrip())
    for name, netns in state.get("hosts", {}).items():
        lines.append(f"  enter {name}: ip netns exec {netns} bash   (or: nsenter --net={nl.netns_path(netns)})")
    links = state.get("links", [])
    if links:
        a, _, _, _, _, _, ip_b, ip6_b = links[0]
        lines.append(f"  try: ip netns exec {state['hosts'][a]} ping -c1 {ip_b.split('/')[0]}"
                     f"   /   ping -c1 {ip6_b.split('/')[0]}")
    return "\n".join(lines)
