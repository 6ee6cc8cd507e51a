"""``tunkit up|down|save|strip CONFIG|NAME``: wg-quick, without bash.

Contract:

* ``CONFIG`` is a path (contains ``/`` or ends in ``.conf``); ``NAME`` means
  ``/etc/wireguard/NAME.conf``. The interface is named after the file (``wg0.conf`` -> ``wg0``).
* ``up`` does what wg-quick does, in its order: PreUp, start ``tunkit-wg`` (our daemon), apply
  the config over UAPI, addresses, MTU (``MTU=`` or derived: the largest route MTU towards
  the peers' endpoints, else the default route's, else 1500; minus 80), link up, DNS, routes
  for every AllowedIPs prefix (longest first; ``Table=off`` adds none, ``Table=N`` puts them
  in table N), the full-tunnel setup for ``/0`` prefixes (fwmark + table 51820 or the next
  free one, ``not fwmark T table T`` and ``table main suppress_prefixlength 0`` rules, nft
  table ``tunkit-IFNAME`` marking the tunnel's own UDP, ``src_valid_mark=1``), then PostUp.
  Hooks run with ``/bin/sh -c``, ``%i`` replaced by the interface name.
* Everything ``up`` adds outside the interface (rules, nft tables, sysctls, DNS) is recorded
  as it is added in ``/run/tunkit/wg-IFNAME.json``. ``down`` (SaveConfig, PreDown, undo the
  record in reverse, delete the interface, PostDown) and the daemon's exit path
  (:func:`cleanup_after_daemon`) replay that record, so a crash leaves nothing behind; a stale
  record found by ``up`` or ``down`` is cleaned up first. Routes and addresses live on the
  interface and vanish with it. A record is only replayed in the network namespace it was
  taken in (the state directory is shared by all namespaces).
* DNS: ``nameserver``/``search`` lines are written where the resolver of the namespace this
  runs in reads them (:func:`resolv_conf_path`: ``$TUNKIT_RESOLV_CONF``, else
  ``/etc/resolv.conf`` in the initial namespace, ``/etc/netns/NAME/resolv.conf`` in a named
  one); the previous content is kept in the record and restored on down.
* ``save`` writes the running interface's state over its file (what ``down`` does with
  ``SaveConfig = true``); ``strip`` returns the file with only the keys ``wg setconf``
  accepts, for ``wg syncconf IFNAME <(tunkit strip IFNAME)``.
* Errors are :class:`ConfigError` (file:line from the config parser) or :class:`DeviceError`;
  if ``up`` fails midway, what was added is removed again.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunkit.errors import ConfigError, DeviceError
from tunkit.io.netlink import Netlink
from tunkit.io.nft import NftTable
from tunkit.io.procs import pid_alive
from tunkit.services.uapi_server import (
    reply_errno,
    socket_is_live,
    socket_path,
    uapi_call,
)

log = logging.getLogger(__name__)

CONFIG_DIRECTORY = "/etc/wireguard"
STATE_DIRECTORY = "/run/tunkit"
NETNS_DIRECTORY = "/var/run/netns"
DEFAULT_TABLE = 51820
TUNNEL_OVERHEAD = 80
IP_MTU = 14
IPV6_MTU = 24


# --------------------------------------------------------------------------- the config view
@dataclass
class QuickConfig:
    """What wg-quick needs from a config file (filled from tunkit.wireguard.config)."""

    ifname: str
    path: Path
    addresses: list[str] = field(default_factory=list)
    dns_servers: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    mtu: int | None = None
    table: str | None = None
    """None/"auto": main table (and the fwmark scheme for /0); "off": no routes; else a table."""
    pre_up: list[str] = field(default_factory=list)
    post_up: list[str] = field(default_factory=list)
    pre_down: list[str] = field(default_factory=list)
    post_down: list[str] = field(default_factory=list)
    save_config: bool = False
    uapi_set: str = "set=1\n\n"
    """The complete ``set=1`` request for the wg part of the file (keys, peers, endpoints)."""
    raw: Any = None
    """The parsed config object from tunkit.wireguard.config (for SaveConfig)."""


def resolve_config_path(config: str) -> tuple[Path, str]:
    """``wg0`` -> (/etc/wireguard/wg0.conf, wg0); ``./x/wg1.conf`` -> (that, wg1)."""
    from tunkit.wg_daemon import validate_ifname

    if "/" in config or config.endswith(".conf"):
        path = Path(config)
    else:
        path = Path(CONFIG_DIRECTORY) / f"{config}.conf"
    name = path.name[:-5] if path.name.endswith(".conf") else path.name
    try:
        validate_ifname(name)
    except ConfigError:
        raise ConfigError(
            f"the config file must be a valid interface name followed by .conf: {path}"
        ) from None
    return path, name


def parse_config_file(config: str) -> tuple[Path, str, Any]:
    """``(path, ifname, parsed WgQuickConfig)`` of ``config``; no names are resolved."""
    from tunkit.wireguard import config as wgconfig

    path, ifname = resolve_config_path(config)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    return path, ifname, wgconfig.parse_config(text, filename=str(path),
                                               require_private_key=False)


def load_config(config: str) -> QuickConfig:
    path, ifname, parsed = parse_config_file(config)
    return _quick_view(parsed, path, ifname)


def strip(config: str) -> str:
    """``wg-quick strip``: the config with only the keys ``wg setconf`` accepts."""
    from tunkit.wireguard import config as wgconfig

    _path, _ifname, parsed = parse_config_file(config)
    return wgconfig.strip_config(parsed)


def save(config: str) -> Path:
    """``wg-quick save``: write the running interface's state over its config file."""
    path, ifname, parsed = parse_config_file(config)
    with Netlink() as nl:
        if not nl.link_exists(ifname):
            raise DeviceError(f"{ifname} is not a WireGuard interface")
    save_config(ifname, path, parsed)
    return path


def _quick_view(parsed: Any, path: Path, ifname: str) -> QuickConfig:
    from tunkit.wireguard import config as wgconfig

    iface = parsed.interface
    quick = QuickConfig(ifname=ifname, path=path, raw=parsed)
    quick.addresses = [str(a) for a in iface.addresses]
    quick.dns_servers = [str(s) for s in iface.dns_servers]
    quick.dns_search = list(iface.dns_search)
    quick.mtu = iface.mtu
    quick.table = str(iface.table)
    quick.pre_up = list(iface.pre_up)
    quick.post_up = list(iface.post_up)
    quick.pre_down = list(iface.pre_down)
    quick.post_down = list(iface.post_down)
    quick.save_config = bool(iface.save_config)
    quick.uapi_set = wgconfig.to_uapi_set(parsed, resolve=_resolve_endpoint)
    return quick


def _resolve_endpoint(host: str, port: int) -> tuple[Any, int]:
    """DNS for endpoints (the config core is pure): first address, v4 preferred like wg."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve endpoint host {host!r}: {exc.strerror}") from exc
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return ipaddress.ip_address(str(infos[0][4][0]).split("%")[0]), port


# --------------------------------------------------------------------------- the record
def state_path(ifname: str) -> Path:
    return Path(STATE_DIRECTORY) / f"wg-{ifname}.json"


class Record:
    """The list of undo steps, persisted after every step so a crash can be cleaned up."""

    def __init__(self, ifname: str, steps: list[dict[str, Any]] | None = None,
                 daemon_pid: int | None = None, netns: int | None = None) -> None:
        self.ifname = ifname
        self.steps: list[dict[str, Any]] = steps or []
        self.daemon_pid = daemon_pid
        # the steps are only meaningful in the network namespace they were taken in
        self.netns = netns if netns is not None else current_netns()

    @classmethod
    def load(cls, ifname: str) -> Record | None:
        try:
            data = json.loads(state_path(ifname).read_text())
        except (OSError, ValueError):
            return None
        return cls(ifname, list(data.get("steps", [])), data.get("daemon_pid"),
                   data.get("netns"))

    def save(self) -> None:
        path = state_path(self.ifname)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ifname": self.ifname, "daemon_pid": self.daemon_pid,
                                   "netns": self.netns, "steps": self.steps}, indent=1))
        os.chmod(tmp, 0o600)  # may hold resolv.conf content, nothing secret, but ours only
        tmp.replace(path)

    def add(self, step: dict[str, Any]) -> None:
        self.steps.append(step)
        self.save()

    def remove_file(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            state_path(self.ifname).unlink()

    def undo(self) -> list[str]:
        """Undo every step in reverse order; returns the errors (undo never stops early).

        Nothing is undone from another network namespace than the one the steps were
        taken in (the state directory is shared by all namespaces)."""
        if self.netns != current_netns():
            return [f"{self.ifname}: state belongs to another network namespace; left alone"]
        errors = []
        while self.steps:
            step = self.steps[-1]
            try:
                _undo_step(step)
            except Exception as exc:
                errors.append(f"{step.get('kind')}: {exc}")
            self.steps.pop()
            self.save()
        return errors


def current_netns() -> int:
    """Identity (inode) of the calling process's network namespace."""
    return os.stat("/proc/self/ns/net").st_ino


def _undo_step(step: dict[str, Any]) -> None:
    kind = step["kind"]
    if kind == "rule":
        with Netlink() as nl:
            args = dict(step["args"])
            present = [r for r in nl.list_rules(family=args["family"]) if _rule_matches(r, args)]
            if present:
                nl.del_rule(**args)
    elif kind == "nft":
        NftTable(step["family"], step["name"]).delete()
    elif kind == "sysctl":
        Path(step["path"]).write_text(step["old"])
    elif kind == "dns":
        path = Path(step["path"])
        if step["old"] is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            path.write_text(step["old"])
        for directory in step.get("created_dirs", []):  # innermost first
            with contextlib.suppress(OSError):
                os.rmdir(directory)
    elif kind == "route":
        with Netlink() as nl, contextlib.suppress(DeviceError):
            nl.del_route(step["dst"], dev=step.get("dev"), table=step.get("table"))
    else:
        raise DeviceError(f"unknown undo step {kind!r}")


def _rule_matches(rule: Any, args: dict[str, Any]) -> bool:
    if rule.table != args.get("table"):
        return False
    if args.get("fwmark") is not None and rule.fwmark != args["fwmark"]:
        return False
    if args.get("suppress_prefixlength") is not None and (
        rule.suppress_prefixlength != args["suppress_prefixlength"]
    ):
        return False
    return bool(rule.invert) == bool(args.get("invert", False))


def cleanup_after_daemon(ifname: str) -> None:
    """Called by the daemon on its way out: undo what ``tunkit up`` recorded for ``ifname``."""
    record = Record.load(ifname)
    if record is None:
        return
    if record.daemon_pid not in (None, os.getpid()) and pid_alive(record.daemon_pid):
        return  # the record belongs to another live daemon
    if record.netns != current_netns():
        return
    errors = record.undo()
    record.remove_file()
    for error in errors:
        log.warning("cleanup %s: %s", ifname, error)


def _clean_stale(ifname: str) -> None:
    record = Record.load(ifname)
    if record is None:
        return
    if pid_alive(record.daemon_pid):
        return
    if record.netns != current_netns():
        return  # another namespace's interface of the same name: not ours to touch
    log.info("cleaning up after a dead tunkit-wg for %s", ifname)
    record.undo()
    record.remove_file()
    stale = socket_path(ifname)
    with contextlib.suppress(FileNotFoundError):
        if not socket_is_live(stale):
            os.unlink(stale)


# --------------------------------------------------------------------------- steps
def run_hooks(commands: list[str], ifname: str, what: str) -> None:
    for command in commands:
        command = command.replace("%i", ifname)
        log.info("[#] %s", command)
        proc = subprocess.run(["/bin/sh", "-c", command], check=False)
        if proc.returncode != 0:
            raise DeviceError(f"{what} hook failed with status {proc.returncode}: {command}")


def _daemon_command(ifname: str) -> list[str]:
    return [sys.executable, "-m", "tunkit.wg_daemon", ifname]


def start_daemon(ifname: str) -> None:
    proc = subprocess.run(_daemon_command(ifname), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        raise DeviceError(detail[-1] if detail else f"tunkit-wg {ifname} failed to start")


def uapi_set(ifname: str, request: str) -> None:
    code = reply_errno(uapi_call(ifname, request))
    if code != 0:
        raise DeviceError(f"{ifname}: the daemon refused the configuration (errno={code})")


def _daemon_pid(ifname: str) -> int | None:
    """PID of the process holding our UAPI socket (from /proc/net/unix + fd links)."""
    path = socket_path(ifname)
    inode = None
    with contextlib.suppress(OSError), open("/proc/net/unix") as table:
        for line in table:
            parts = line.split()
            if len(parts) >= 8 and parts[-1] == path:
                inode = parts[6]
                break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (pid_dir / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return int(pid_dir.name)
    return None


def route_mtu(destination: str) -> int | None:
    """MTU of the route towards ``destination`` (a UDP connect sends nothing)."""
    try:
        address = ipaddress.ip_address(destination)
    except ValueError:
        return None
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((str(address), 9))
            level, option = (
                (socket.IPPROTO_IP, IP_MTU) if family == socket.AF_INET
                else (socket.IPPROTO_IPV6, IPV6_MTU)
            )
            return int(probe.getsockopt(level, option))
        except OSError:
            return None


def derive_mtu(endpoints: list[str]) -> int:
    """wg-quick's rule: the largest route MTU to any endpoint, else the default route's, - 80."""
    mtu = 0
    for host in endpoints:
        mtu = max(mtu, route_mtu(host) or 0)
    if mtu == 0:
        with Netlink() as nl:
            for family in (socket.AF_INET, socket.AF_INET6):
                for route in nl.list_routes(family=family):
                    if route.dst in ("0.0.0.0/0", "::/0") and route.dev:
                        mtu = max(mtu, nl.get_mtu(route.dev))
                if mtu:
                    break
    return (mtu or 1500) - TUNNEL_OVERHEAD


def _uapi_endpoints(ifname: str) -> list[str]:
    hosts = []
    for line in uapi_call(ifname, "get=1\n\n").split("\n"):
        if line.startswith("endpoint="):
            value = line[9:]
            hosts.append(value[1:].partition("]")[0] if value.startswith("[") else
                         value.rpartition(":")[0])
    return hosts


def _uapi_allowed_ips(ifname: str) -> list[str]:
    return [line[11:] for line in uapi_call(ifname, "get=1\n\n").split("\n")
            if line.startswith("allowed_ip=")]


def _uapi_fwmark(ifname: str) -> int:
    for line in uapi_call(ifname, "get=1\n\n").split("\n"):
        if line.startswith("fwmark="):
            return int(line[7:])
    return 0


def resolv_conf_path() -> Path:
    """Where the resolver of *this* network namespace reads its configuration.

    ``$TUNKIT_RESOLV_CONF`` wins. In the initial namespace it is ``/etc/resolv.conf``; in a
    named namespace it is ``/etc/netns/NAME/resolv.conf``, which ``ip netns exec`` mounts
    over ``/etc/resolv.conf`` (writing ``/etc/resolv.conf`` from there would change the
    host's DNS). An unnamed namespace has no such place: ConfigError.
    """
    override = os.environ.get("TUNKIT_RESOLV_CONF")
    if override:
        return Path(override)
    here = current_netns()
    with contextlib.suppress(OSError):
        if os.stat("/proc/1/ns/net").st_ino == here:
            return Path("/etc/resolv.conf")
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir(NETNS_DIRECTORY)):
            with contextlib.suppress(OSError):
                if os.stat(os.path.join(NETNS_DIRECTORY, entry)).st_ino == here:
                    return Path("/etc/netns") / entry / "resolv.conf"
    raise ConfigError(
        "DNS= inside an unnamed network namespace: set TUNKIT_RESOLV_CONF to the file to write"
    )


def set_dns(quick: QuickConfig, record: Record) -> None:
    if not quick.dns_servers and not quick.dns_search:
        return
    path = resolv_conf_path()
    try:
        old: str | None = path.read_text()
    except FileNotFoundError:
        old = None
    created = [str(d) for d in (path.parent, *path.parent.parents) if not d.exists()]
    record.add({"kind": "dns", "path": str(path), "old": old, "created_dirs": created})
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# written by tunkit up {quick.ifname}; restored by tunkit down"]
    lines += [f"nameserver {server}" for server in quick.dns_servers]
    if quick.dns_search:
        lines.append("search " + " ".join(quick.dns_search))
    path.write_text("\n".join(lines) + "\n")


def _free_table(nl: Netlink) -> int:
    table = DEFAULT_TABLE
    while nl.list_routes(table=table, family=socket.AF_INET) or nl.list_routes(
        table=table, family=socket.AF_INET6
    ):
        table += 1
    return table


def add_default_route(quick: QuickConfig, prefix: str, record: Record) -> None:
    """wg-quick's add_default: fwmark + table + two rules + nft marking, per family."""
    ifname = quick.ifname
    version = ipaddress.ip_network(prefix, strict=False).version
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with Netlink() as nl:
        table = _uapi_fwmark(ifname)
        if not table:
            table = _free_table(nl)
            uapi_set(ifname, f"set=1\nfwmark={table}\n\n")
        nl.add_route(prefix, dev=ifname, table=table)
        rule_a: dict[str, Any] = {"fwmark": table, "table": table, "invert": True, "family": family}
        nl.add_rule(**rule_a)
        record.add({"kind": "rule", "args": rule_a})
        rule_b: dict[str, Any] = {"table": 254, "suppress_prefixlength": 0, "family": family}
        nl.add_rule(**rule_b)
        record.add({"kind": "rule", "args": rule_b})
        addresses = nl.list_addresses(ifname)
    nft_family = "ip" if version == 4 else "ip6"
    drops = "".join(
        f'\n    iifname != "{ifname}" {nft_family} daddr {ipaddress.ip_interface(cidr).ip} '
        "fib saddr type != local drop"
        for cidr in addresses
        if ipaddress.ip_interface(cidr).version == version
    )
    body = (
        f"  chain preraw {{\n    type filter hook prerouting priority -300;{drops}\n  }}\n"
        "  chain premangle {\n    type filter hook prerouting priority -150;\n"
        "    meta l4proto udp meta mark set ct mark\n  }\n"
        "  chain postmangle {\n    type filter hook postrouting priority -150;\n"
        f"    meta l4proto udp mark {table} ct mark set mark\n  }}"
    )
    name = f"tunkit-{ifname}"
    record.add({"kind": "nft", "family": nft_family, "name": name})
    NftTable(nft_family, name).apply(body)
    if version == 4:
        sysctl = Path("/proc/sys/net/ipv4/conf/all/src_valid_mark")
        old = sysctl.read_text()
        if old.strip() != "1":
            record.add({"kind": "sysctl", "path": str(sysctl), "old": old})
            sysctl.write_text("1\n")


def add_routes(quick: QuickConfig, record: Record) -> None:
    if quick.table == "off":
        return
    prefixes = _uapi_allowed_ips(quick.ifname)
    prefixes.sort(key=lambda p: int(p.rpartition("/")[2]), reverse=True)
    custom_table = None
    if quick.table not in (None, "auto"):
        custom_table = _table_number(quick.table)
    with Netlink() as nl:
        for prefix in prefixes:
            if custom_table is not None:
                nl.add_route(prefix, dev=quick.ifname, table=custom_table)
                record.add({"kind": "route", "dst": prefix, "dev": quick.ifname,
                            "table": custom_table})
            elif prefix.endswith("/0"):
                add_default_route(quick, prefix, record)
            else:
                try:
                    nl.add_route(prefix, dev=quick.ifname)
                except DeviceError as exc:
                    if "exists" not in str(exc).lower():
                        raise


def _table_number(table: str) -> int:
    if table.isdigit():
        return int(table)
    names = {"main": 254, "local": 255, "default": 253}
    with contextlib.suppress(OSError), open("/etc/iproute2/rt_tables") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and not parts[0].startswith("#") and parts[0].isdigit():
                names[parts[1]] = int(parts[0])
    if table not in names:
        raise ConfigError(f"unknown routing table {table!r}")
    return names[table]


# --------------------------------------------------------------------------- up / down
def up(config: str) -> str:
    """Bring the interface of ``config`` up; returns its name."""
    quick = load_config(config)
    ifname = quick.ifname
    _clean_stale(ifname)
    with Netlink() as nl:
        if nl.link_exists(ifname):
            raise DeviceError(f"{ifname} already exists")
    if os.path.exists(socket_path(ifname)) and socket_is_live(socket_path(ifname)):
        raise DeviceError(f"{ifname} already exists (in another namespace?)")
    record = Record(ifname)
    record.save()
    try:
        run_hooks(quick.pre_up, ifname, "PreUp")
        start_daemon(ifname)
        record.daemon_pid = _daemon_pid(ifname)
        record.save()
        uapi_set(ifname, quick.uapi_set)
        with Netlink() as nl:
            for address in quick.addresses:
                nl.add_address(ifname, address, nodad=":" in address)
            mtu = quick.mtu or derive_mtu(_uapi_endpoints(ifname))
            nl.set_mtu(ifname, mtu)
            nl.set_up(ifname)
        set_dns(quick, record)
        add_routes(quick, record)
        run_hooks(quick.post_up, ifname, "PostUp")
    except BaseException:
        _tear_down(ifname, record)
        raise
    return ifname


def _tear_down(ifname: str, record: Record) -> list[str]:
    errors = record.undo()
    pid = record.daemon_pid or _daemon_pid(ifname)
    with Netlink() as nl:
        if nl.link_exists(ifname):
            nl.delete_link(ifname)
    _wait_gone(pid, ifname)
    record.remove_file()
    return errors


def _wait_gone(pid: int | None, ifname: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid) and not os.path.exists(socket_path(ifname)):
            return
        time.sleep(0.05)
    if pid_alive(pid):
        log.warning("tunkit-wg for %s (pid %s) did not exit", ifname, pid)


def down(config: str) -> str:
    """Take the interface of ``config`` down and undo everything ``up`` did."""
    path, ifname = resolve_config_path(config)
    quick: QuickConfig | None = None
    if path.exists():
        quick = load_config(config)
    record = Record.load(ifname) or Record(ifname)
    with Netlink() as nl:
        exists = nl.link_exists(ifname)
    if not exists:
        _clean_stale(ifname)
        raise DeviceError(f"{ifname} is not a WireGuard interface")
    if quick is not None and quick.save_config:
        save_config(ifname, quick.path, quick.raw)
    if quick is not None:
        run_hooks(quick.pre_down, ifname, "PreDown")
    errors = _tear_down(ifname, record)
    if quick is not None:
        run_hooks(quick.post_down, ifname, "PostDown")
    for error in errors:
        log.warning("down %s: %s", ifname, error)
    return ifname


def save_config(ifname: str, path: Path, previous: Any) -> None:
    """Write the running state of ``ifname`` (UAPI get, addresses, MTU) over ``path``.

    DNS, Table, the hooks and SaveConfig come from ``previous`` (the parsed file), as
    wg-quick keeps them; MTU is written only if the file had one.  The new file replaces the
    old one atomically, mode 0600.
    """
    from tunkit.wireguard import config as wgconfig
    from tunkit.wireguard.uapi import parse_get_reply

    snapshot = parse_get_reply(uapi_call(ifname, "get=1\n\n"))
    with Netlink() as nl:
        addresses = nl.list_addresses(ifname)
        mtu = nl.get_mtu(ifname)
    old = previous.interface
    iface = wgconfig.InterfaceConfig(
        private_key=snapshot.private_key,
        listen_port=snapshot.listen_port or None,
        fwmark=snapshot.fwmark or None,
        addresses=[ipaddress.ip_interface(a) for a in addresses],
        dns_servers=list(old.dns_servers), dns_search=list(old.dns_search),
        mtu=mtu if old.mtu is not None else None, table=old.table,
        pre_up=list(old.pre_up), post_up=list(old.post_up),
        pre_down=list(old.pre_down), post_down=list(old.post_down),
        save_config=old.save_config,
    )
    peers = [
        wgconfig.PeerConfig(
            public_key=p.public_key, preshared_key=p.preshared_key,
            endpoint=(str(p.endpoint[0]), p.endpoint[1]) if p.endpoint else None,
            allowed_ips=list(p.allowed_ips),
            persistent_keepalive=p.persistent_keepalive_interval or None,
        )
        for p in snapshot.peers
    ]
    text = wgconfig.format_config(wgconfig.WgQuickConfig(interface=iface, peers=peers))
    tmp = path.with_suffix(".conf.tmp")
    # created 0600: the private key is never readable by others, not even for a moment
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, 0o600)  # in case a stale .tmp existed with other bits
    tmp.replace(path)


@contextlib.contextmanager
def tunnel(config: str) -> Iterator[str]:
    """``with tunnel(path) as ifname:`` up on entry, down on exit."""
    ifname = up(config)
    try:
        yield ifname
    finally:
        down(config)


def configure_cli_logging() -> None:
    """``[#] step`` lines on stderr, like wg-quick prints its commands."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
