"""The ``p2p`` section of ``tunkit demo``: compat, fast and TLS tunnels between two hosts.

For each mode it starts ``tunkit p2p`` as server in one namespace and as client in the
other, then measures ping RTT and iperf3 throughput through the tunnel, next to the raw
veth figure of the same run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tunkit.demo import Tour, register_section, stop, wait_for_link
from tunkit.errors import TunkitError
from tunkit.labtools import gbit, iperf3, ping


def _wait_tunnel(t: Tour, client, target: str, tries: int = 40) -> None:
    for _ in range(tries):
        if ping(client, target, count=1, interval=0.2).received:
            return
    raise TunkitError(f"the tunnel never carried a ping to {target}")


def section_p2p(t: Tour) -> None:
    client, server = t.lab.add_host("p2pc"), t.lab.add_host("p2ps")
    t.lab.link(client, server, "10.50.0.1/24", "10.50.0.2/24")
    raw = iperf3(server, client, "10.50.0.2", seconds=t.seconds)
    t.say(f"raw veth baseline: {gbit(raw)}")
    with tempfile.TemporaryDirectory(prefix="tunkit-demo-certs-") as tmp:
        _run_modes(t, client, server, raw, Path(tmp))


def _run_modes(t: Tour, client, server, raw: float, certs: Path) -> None:
    t.cmd("any", f"tunkit p2p gen-certs {certs}")
    from tunkit.services.certs import generate_certs

    generate_certs(str(certs))
    tls = ["--cert", "{c}.pem", "--key", "{c}.key", "--ca", str(certs / "ca.pem")]
    modes = [
        ("compat", ["--mode", "compat"]),
        ("fast", ["--mode", "fast"]),
        ("tls", ["--tls", *tls]),
    ]
    for n, (mode, extra) in enumerate(modes):
        port = str(55555 + n)
        sdev, cdev = t.ifname("tkps"), t.ifname("tkpc")

        def files(role: str, extra: list[str] = extra) -> list[str]:
            return [a.format(c=certs / role) for a in extra]

        shown = " ".join(a if "{c}" not in a else f"{certs}/<role>{Path(a).suffix}" for a in extra)
        t.cmd(server.name, f"tunkit p2p -i {sdev} --create --address 10.60.{n}.2/24 -s -p {port} {shown}")
        srv = t.tunkit(server, "p2p", "-i", sdev, "--create", "--address", f"10.60.{n}.2/24",
                       "-s", "-p", port, *files("server"))
        t.cmd(client.name, f"tunkit p2p -i {cdev} --create --address 10.60.{n}.1/24 -c 10.50.0.2 -p {port} {shown}")
        cli = t.tunkit(client, "p2p", "-i", cdev, "--create", "--address", f"10.60.{n}.1/24",
                       "-c", "10.50.0.2", "-p", port, *files("client"))
        try:
            wait_for_link(server, sdev, 10)
            wait_for_link(client, cdev, 10)
            _wait_tunnel(t, client, f"10.60.{n}.2")
            rtt = ping(client, f"10.60.{n}.2", count=5, interval=0.1)
            rate = iperf3(server, client, f"10.60.{n}.2", seconds=t.seconds)
            t.say(f"{mode:7s} ping {rtt}; iperf3 {gbit(rate)} ({rate / raw:.0%} of raw veth)")
        finally:
            for proc in (cli, srv):
                log = stop(proc)
            lines = [ln for ln in log.splitlines() if "connect" in ln or "mode" in ln]
            for line in lines[:2]:
                t.say(f"    server log: {line.strip()}")


register_section("p2p tunnel: simpletun-compatible, fast and TLS", section_p2p)
