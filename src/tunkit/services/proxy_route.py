"""Host changes of ``tunkit proxy``: auto-route, loop avoidance, cgroup bypass, crash cleanup.

Contract:

* :class:`HostChanges` records every change *before* making it in a state file
  ``/run/tunkit/proxy-<netns inode>-<tun>.json`` (with our PID), and :meth:`remove` undoes
  them all, deleting the file last.  A later start in the same namespace that finds a file
  whose PID is dead (a SIGKILLed proxy) undoes its changes first (:meth:`clean_stale`); a
  live PID means another proxy owns the TUN name, which is an error.
* ``--auto-route`` (:meth:`install_auto_route`), in the proxy's namespace only:

  - table ``T``: ``default dev TUN`` (and ``::/0`` with ``--prefix6``);
  - rule ``P``: ``fwmark MARK lookup main``: the proxy's own sockets (and bypassed cgroups);
  - rule ``P+1``: ``fwmark DNS_MARK lookup T``: DNS (port 53) to any address;
  - rule ``P+2``: ``lookup main suppress_prefixlength 0``: everything but the default route;
  - rule ``P+3``: ``lookup T``: the default route goes into the TUN.

* nft table ``inet tunkit_proxy_<netns>`` (:meth:`install_nft`), output route chain: packets
  already carrying MARK are left alone; sockets in the bypass cgroup v2 directory
  ``tunkit-proxy-<netns>-<tun>`` (``socket cgroupv2``) get MARK (main table, and a masquerade
  fixes their TUN source address); port 53 gets DNS_MARK (hijack into the fake-IP server).
  ``tunkit proxy exec --bypass -- CMD`` (:func:`exec_bypassed`) moves itself there and execs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from tunkit.errors import ConfigError, DeviceError, TunkitError
from tunkit.io.netlink import RT_TABLE_MAIN, Netlink
from tunkit.io.nft import NftTable
from tunkit.io.procs import pid_alive
from tunkit.services.proxy_state import netns_id

log = logging.getLogger("tunkit.proxy.route")

STATE_DIR = Path("/run/tunkit")
RULE_PRIORITY = 9000


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (pure v2 or the hybrid ``unified``)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


def state_path(tun: str) -> Path:
    return STATE_DIR / f"proxy-{netns_id()}-{tun}.json"


class HostChanges:
    def __init__(self, tun: str) -> None:
        self.tun = tun
        self.path = state_path(tun)
        self.record: dict[str, Any] = {"pid": os.getpid(), "tun": tun, "rules": [], "nft": None,
                                       "cgroup": None, "mark": None}

    # -- the state file ----------------------------------------------------------------

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record))
        tmp.replace(self.path)

    def clean_stale(self) -> bool:
        """Undo what a dead proxy of this namespace and TUN left behind; True if it did."""
        if not self.path.exists():
            return False
        try:
            old = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.path.unlink(missing_ok=True)
            return False
        pid = int(old.get("pid", 0))
        if pid and pid != os.getpid() and pid_alive(pid) and _is_proxy(pid):
            raise ConfigError(f"another tunkit proxy (pid {pid}) already uses TUN {self.tun}")
        log.warning("cleaning up after a tunkit proxy (pid %d) that did not exit cleanly", pid)
        _undo(old)
        self.path.unlink(missing_ok=True)
        return True

    def start(self) -> None:
        self._save()

    # -- auto-route --------------------------------------------------------------------

    def install_auto_route(self, netlink: Netlink, *, table: int, mark: int, dns_mark: int,
                           v6: bool) -> None:
        families = [socket.AF_INET] + ([socket.AF_INET6] if v6 else [])
        rules = [
            {"priority": RULE_PRIORITY, "fwmark": mark, "table": RT_TABLE_MAIN},
            {"priority": RULE_PRIORITY + 1, "fwmark": dns_mark, "table": table},
            {"priority": RULE_PRIORITY + 2, "table": RT_TABLE_MAIN, "suppress_prefixlength": 0},
            {"priority": RULE_PRIORITY + 3, "table": table},
        ]
        self.record["mark"] = mark
        for family in families:
            for rule in rules:
                entry: dict[str, Any] = {**rule, "family": int(family)}
                self.record["rules"].append(entry)
                self._save()
                netlink.add_rule(**entry)
        netlink.add_route("0.0.0.0/0", dev=self.tun, table=table)
        if v6:
            netlink.add_route("::/0", dev=self.tun, table=table)

    def install_nft(self, *, mark: int, dns_mark: int, tun_prefix: str,
                    bypass_cgroup: bool, tun_prefix6: str | None = None) -> Path | None:
        """The nft table of ``--auto-route``; returns the bypass cgroup (None without v2)."""
        rules: list[str] = [f"meta mark {mark:#x} return"]  # our own sockets: hands off
        group = None
        if bypass_cgroup:
            root = cgroup2_root()
            if root is None:
                log.warning("no cgroup v2 hierarchy: `tunkit proxy exec --bypass` is unavailable")
            else:
                group = root / f"tunkit-proxy-{netns_id()}-{self.tun}"
                self.record["cgroup"] = str(group)
                self._save()
                group.mkdir(exist_ok=True)
                # nft resolves the path below /sys/fs/cgroup; level = depth below the v2 root
                relative = group.relative_to("/sys/fs/cgroup") if str(group).startswith(
                    "/sys/fs/cgroup/") else Path(group.name)
                level = len(group.relative_to(root).parts)
                rules.append(f'socket cgroupv2 level {level} "{relative}" '
                             f"meta mark set {mark:#x} return")
        # DNS to any address, even on a directly connected network, goes into the TUN,
        # where the fake-IP server answers it.
        rules += [f"udp dport 53 meta mark set {dns_mark:#x}",
                  f"tcp dport 53 meta mark set {dns_mark:#x}"]
        nft_name = f"tunkit_proxy_{netns_id()}"
        self.record["nft"] = ["inet", nft_name]
        self._save()
        body = "  chain output {\n    type route hook output priority mangle; policy accept;\n"
        body += "".join(f"    {rule}\n" for rule in rules) + "  }\n"
        if group is not None:
            # A rerouted packet keeps the source address picked for the TUN; give it the
            # address of the interface it really leaves by.
            body += ("  chain postrouting {\n"
                     "    type nat hook postrouting priority srcnat; policy accept;\n"
                     f"    meta mark {mark:#x} ip saddr {tun_prefix} "
                     f'oifname != "{self.tun}" masquerade\n')
            if tun_prefix6 is not None:
                body += (f"    meta mark {mark:#x} ip6 saddr {tun_prefix6} "
                         f'oifname != "{self.tun}" masquerade\n')
            body += "  }\n"
        NftTable("inet", nft_name).apply(body)
        return group

    def remove(self) -> None:
        _undo(self.record)
        self.path.unlink(missing_ok=True)


def _is_proxy(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"proxy" in cmdline


def _undo(record: dict[str, Any]) -> None:
    errors: list[str] = []
    nft = record.get("nft")
    if nft:
        try:
            NftTable(nft[0], nft[1]).delete()
        except TunkitError as err:
            errors.append(str(err))
    rules = record.get("rules") or []
    if rules:
        with Netlink() as netlink:
            for rule in reversed(rules):
                try:
                    netlink.del_rule(**rule)
                except TunkitError as err:
                    if "No such file" not in str(err) and "not exist" not in str(err):
                        errors.append(str(err))
    group = record.get("cgroup")
    if group:
        path = Path(group)
        parent = path.parent / "cgroup.procs"
        with contextlib.suppress(OSError):
            for pid in (path / "cgroup.procs").read_text().split():
                # Move stragglers out so the directory can go; they keep running.
                parent.write_text(pid)
        with contextlib.suppress(FileNotFoundError):
            try:
                path.rmdir()
            except OSError as exc:
                errors.append(f"cannot remove cgroup {path}: {exc.strerror}")
    for message in errors:
        log.warning("cleanup: %s", message)


def exec_bypassed(tun: str, argv: list[str]) -> None:
    """Move this process into the proxy's bypass cgroup and exec ``argv`` (never returns)."""
    if not argv:
        raise ConfigError("nothing to run: tunkit proxy exec --bypass -- CMD [ARGS]")
    path = state_path(tun)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DeviceError(f"no running tunkit proxy with TUN {tun} in this namespace") from None
    group = record.get("cgroup")
    if not group:
        raise DeviceError("the running proxy has no bypass cgroup (it needs --auto-route "
                          "and cgroup v2)")
    try:
        (Path(group) / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as err:
        raise DeviceError(f"cannot enter cgroup {group}: {err.strerror}") from None
    try:
        os.execvp(argv[0], argv)
    except OSError as err:
        raise DeviceError(f"cannot run {argv[0]}: {err.strerror}") from None
