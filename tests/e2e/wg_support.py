"""Helpers for the WireGuard e2e tests: start tunkit-wg or wireguard-go inside a lab host,
configure it with the real `wg`, and read `wg show` back.

Every interface name is unique across namespaces (the UAPI socket directory is global):
``f"{tag}{pid % 100000}{n}"``, at most 15 characters. Processes are started with
``host.popen`` so the lab kills them by PID on teardown.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunkit.lab import Host, Lab, wait_for
from tunkit.services.wg_demo import daemon_argv
from tunkit.services.wg_demo import tool_env as demo_tool_env
from tunkit.wireguard.keys import encode_key, generate_private_key, public_key_from_private

SOCKET_DIR = "/var/run/wireguard"
_counter = itertools.count()


def unique_ifname(tag: str = "wg") -> str:
    name = f"{tag}{os.getpid() % 100000}{next(_counter)}"
    assert len(name) <= 15, name
    return name


def tool_env(**extra: str) -> dict[str, str]:
    """The environment the demo gives wg, wg-quick and the daemons, plus ``extra``."""
    return {**demo_tool_env(), **extra}


@dataclass
class WgNode:
    """One WireGuard interface in one lab host."""

    host: Host
    impl: str
    ifname: str
    private_key: bytes
    listen_port: int
    tunnel_v4: str
    tunnel_v6: str
    proc: subprocess.Popen[Any] | None = None
    log_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def public_key(self) -> str:
        return encode_key(public_key_from_private(self.private_key))

    @property
    def sock(self) -> str:
        return f"{SOCKET_DIR}/{self.ifname}.sock"

    # -- lifecycle
    def start(self, tmp: Path) -> None:
        self.log_path = tmp / f"{self.ifname}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed by the lab's teardown of proc)
        self.proc = self.host.popen(
            daemon_argv(self.impl, self.ifname), stdout=log, stderr=log,
            env=tool_env(WG_PROCESS_FOREGROUND="1", LOG_LEVEL="debug"),
        )
        log.close()
        wait_for(lambda: os.path.exists(self.sock) or self.proc.poll() is not None, 10,
                 what=f"{self.sock}")
        assert self.proc.poll() is None, f"{self.impl} exited: {self.log()}"
        keyfile = tmp / f"{self.ifname}.key"
        keyfile.write_text(encode_key(self.private_key) + "\n")
        self.wg("set", self.ifname, "private-key", str(keyfile), "listen-port",
                str(self.listen_port))
        self.ip("address", "add", self.tunnel_v4, "dev", self.ifname)
        self.ip("-6", "address", "add", self.tunnel_v6, "dev", self.ifname, "nodad")
        self.ip("link", "set", self.ifname, "up")

    def stop(self, sig: int = 15) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""

    # -- tools
    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        proc = self.host.run(list(argv), check=False, timeout=timeout, env=tool_env())
        if check and proc.returncode != 0:
            raise AssertionError(
                f"[{self.host.name}] {' '.join(argv)} -> {proc.returncode}\n"
                f"{proc.stdout}\n{proc.stderr}\n--- daemon log ---\n{self.log()}"
            )
        return proc.stdout

    def wg(self, *argv: str, check: bool = True) -> str:
        return self.run("wg", *argv, check=check)

    def ip(self, *argv: str) -> str:
        return self.run("ip", *argv)

    def add_peer(self, other: WgNode, *, endpoint: str | None, allowed: str | None = None,
                 keepalive: int | None = None) -> None:
        allowed = allowed or f"{other.tunnel_v4.split('/')[0]}/32,{other.tunnel_v6.split('/')[0]}/128"
        argv = ["set", self.ifname, "peer", other.public_key, "allowed-ips", allowed]
        if endpoint:
            argv += ["endpoint", endpoint]
        if keepalive is not None:
            argv += ["persistent-keepalive", str(keepalive)]
        self.wg(*argv)

    def show(self, what: str) -> str:
        return self.wg("show", self.ifname, what)

    def transfer(self) -> dict[str, tuple[int, int]]:
        """public key -> (rx, tx) bytes."""
        out = {}
        for line in self.show("transfer").splitlines():
            key, rx, tx = line.split("\t")
            out[key] = (int(rx), int(tx))
        return out

    def latest_handshake(self, peer: WgNode) -> int:
        for line in self.show("latest-handshakes").splitlines():
            key, stamp = line.split("\t")
            if key == peer.public_key:
                return int(stamp)
        return 0

    def ping(self, address: str, count: int = 3, timeout: float = 20) -> str:
        six = ["-6"] if ":" in address else []
        return self.run("ping", *six, "-c", str(count), "-i", "0.2", "-W", "2", address,
                        timeout=timeout)


def new_node(lab: Lab, host: Host, impl: str, index: int, *, port: int) -> WgNode:
    return WgNode(
        host=host, impl=impl, ifname=unique_ifname("tk" if impl == "tunkit" else "wgo"),
        private_key=generate_private_key(), listen_port=port,
        tunnel_v4=f"10.77.0.{index}/24", tunnel_v6=f"fd77::{index}/64",
    )


def wait_ping(node: WgNode, address: str, timeout: float = 15) -> None:
    """Ping until one reply arrives (the first packets trigger the handshake)."""
    six = ["-6"] if ":" in address else []
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        proc = node.host.run(["ping", *six, "-c", "1", "-W", "1", address], check=False,
                             timeout=10)
        if proc.returncode == 0:
            return
        last = proc.stdout + proc.stderr
    raise AssertionError(f"no ping reply from {address}: {last}\n--- log ---\n{node.log()}")


def iperf3(client: WgNode, server: WgNode, address: str, *, seconds: int = 2,
           reverse: bool = False) -> float:
    """Run iperf3 TCP from ``client`` to ``server``'s tunnel ``address``; Gbit/s received."""
    import json

    port = 5201 + next(_counter) % 100
    srv = server.host.popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        server.host.wait_port(port, "tcp", timeout=5)
        argv = ["iperf3", "-c", address, "-p", str(port), "-t", str(seconds), "-J"]
        if reverse:
            argv.append("-R")
        out = client.run(*argv, timeout=seconds + 30)
    finally:
        if srv.poll() is None:
            srv.terminate()
        srv.wait(5)
    result = json.loads(out)
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
