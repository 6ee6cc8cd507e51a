"""WireGuard in the lab: build a tunnel between two hosts with tunkit-wg and/or wireguard-go
(configured with the real `wg`), and the ``tunkit demo`` section that shows it.

Contract:

* :func:`build_wg_pair` ``(lab, impl_a, impl_b)`` creates two hosts linked by veth, starts one
  daemon in each (``"tunkit"`` or ``"wireguard-go"``, foreground, killed by the lab), keys and
  configures them with ``wg set``, and returns a :class:`WgPair` whose tunnel addresses are
  ``10.66.N.1`` / ``10.66.N.2`` (and ``fd66:N::1``/``::2``). Interface names are unique on the
  machine, because the UAPI socket directory is shared by all namespaces.
* Registering the demo section is a side effect of importing this module (``tunkit demo``
  imports it lazily).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunkit.errors import TunkitError
from tunkit.lab import Host, Lab, wait_for
from tunkit.wireguard.keys import encode_key, generate_private_key, public_key_from_private

SOCKET_DIRECTORY = "/var/run/wireguard"
_pairs = itertools.count(1)


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    return env


def daemon_argv(impl: str, ifname: str) -> list[str]:
    if impl == "tunkit":
        return [sys.executable, "-m", "tunkit.wg_daemon", "-f", ifname]
    if impl == "wireguard-go":
        return ["wireguard-go", "-f", ifname]
    raise TunkitError(f"unknown WireGuard implementation {impl!r}")


@dataclass
class WgEnd:
    host: Host
    impl: str
    ifname: str
    public_key: str
    tunnel_v4: str
    tunnel_v6: str
    port: int
    proc: subprocess.Popen[Any]

    def wg(self, *argv: str) -> str:
        return self.host.run(["wg", *argv], env=tool_env()).stdout


@dataclass
class WgPair:
    a: WgEnd
    b: WgEnd


def _start(host: Host, impl: str, ifname: str, key: bytes, port: int, v4: str, v6: str,
           keydir: Path) -> WgEnd:
    proc = host.popen(daemon_argv(impl, ifname), stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL, env={**tool_env(), "WG_PROCESS_FOREGROUND": "1"})
    sock = f"{SOCKET_DIRECTORY}/{ifname}.sock"
    wait_for(lambda: os.path.exists(sock) or proc.poll() is not None, 10, what=sock)
    if proc.poll() is not None:
        raise TunkitError(f"{impl} {ifname} exited with status {proc.returncode}")
    keyfile = keydir / f"{ifname}.key"
    keyfile.write_text(encode_key(key) + "\n")
    keyfile.chmod(0o600)
    env = tool_env()
    host.run(["wg", "set", ifname, "private-key", str(keyfile), "listen-port", str(port)], env=env)
    host.run(["ip", "address", "add", f"{v4}/24", "dev", ifname])
    host.run(["ip", "-6", "address", "add", f"{v6}/64", "dev", ifname, "nodad"])
    host.run(["ip", "link", "set", ifname, "up"])
    return WgEnd(host, impl, ifname, encode_key(public_key_from_private(key)), v4, v6, port, proc)


def build_wg_pair(lab: Lab, impl_a: str, impl_b: str, *, tag: str = "") -> WgPair:
    n = next(_pairs)
    ha = lab.add_host(f"wg{tag}{n}a")
    hb = lab.add_host(f"wg{tag}{n}b")
    under_a, under_b = f"192.168.{100 + n}.1", f"192.168.{100 + n}.2"
    lab.link(ha, hb, f"{under_a}/24", f"{under_b}/24")
    keydir = Path(tempfile.mkdtemp(prefix="tkwg"))
    ends = []
    for host, impl, index in ((ha, impl_a, 1), (hb, impl_b, 2)):
        stem = "tk" if impl == "tunkit" else "wgo"
        ifname = f"{stem}{os.getpid() % 100000}{n}{'ab'[index - 1]}"[:15]
        ends.append(_start(host, impl, ifname, generate_private_key(), 51800 + index,
                           f"10.66.{n}.{index}", f"fd66:{n}::{index}", keydir))
    a, b = ends
    for me, other, addr in ((a, b, under_b), (b, a, under_a)):
        me.host.run(["wg", "set", me.ifname, "peer", other.public_key, "endpoint",
                     f"{addr}:{other.port}", "allowed-ips",
                     f"{other.tunnel_v4}/32,{other.tunnel_v6}/128"], env=tool_env())
    return WgPair(a, b)


# --------------------------------------------------------------------------- the demo
def section_wireguard(t: Any) -> None:
    from tunkit.labtools import gbit, iperf3, ping

    t.say("tunkit-wg (our userspace WireGuard) <-> wireguard-go, configured with the real `wg`")
    pair = build_wg_pair(t.lab, "tunkit", "wireguard-go", tag="d")
    a, b = pair.a, pair.b
    t.cmd(a.host.name, f"tunkit-wg -f {a.ifname}; wg set {a.ifname} private-key ... peer ...")
    t.cmd(b.host.name, f"wireguard-go -f {b.ifname}; wg set {b.ifname} ...")
    deadline = time.monotonic() + 15
    result = ping(a.host, b.tunnel_v4, count=1)
    while result.received == 0 and time.monotonic() < deadline:
        result = ping(a.host, b.tunnel_v4, count=1)
    for target, src in ((b.tunnel_v4, a), (b.tunnel_v6, a), (a.tunnel_v4, b)):
        t.cmd(src.host.name, f"ping -c 3 {target}")
        result = ping(src.host, target, count=3)
        t.say(f"  {result}")
        if result.received == 0:
            raise TunkitError(f"no ping replies from {target} through WireGuard")
    t.cmd(a.host.name, f"wg show {a.ifname}")
    for line in a.wg("show", a.ifname).splitlines():
        if "private key" not in line:
            t.say(f"    {line}")
    for reverse in (False, True):
        way = "wireguard-go -> tunkit" if reverse else "tunkit -> wireguard-go"
        t.cmd(a.host.name, f"iperf3 -c {b.tunnel_v4} -t {t.seconds}{' -R' if reverse else ''}")
        bps = iperf3(b.host, a.host, b.tunnel_v4, seconds=t.seconds, reverse=reverse)
        t.say(f"  {way}: {gbit(bps)} (one TCP stream)")


def _register() -> None:
    try:
        from tunkit.demo import register_section
    except ImportError:
        return
    register_section("WireGuard: tunkit <-> wireguard-go", section_wireguard)


_register()
