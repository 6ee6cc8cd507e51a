"""Measurements inside a lab: ping and iperf3 runs with their results parsed.

Used by ``tunkit demo``, the e2e tests and ``bench/``.  Everything runs inside the lab's
namespaces (``Host.run``/``Host.popen``) and targets only addresses in those namespaces.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass

from tunkit.errors import DeviceError
from tunkit.lab import Host

_RTT = re.compile(r"= [\d.]+/([\d.]+)/([\d.]+)/[\d.]+ ms")
_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    avg_ms: float | None
    """Average round-trip time, or None when nothing came back."""

    def __str__(self) -> str:
        rtt = f", rtt avg {self.avg_ms:.3f} ms" if self.avg_ms is not None else ""
        return f"{self.received}/{self.sent} replies{rtt}"


def ping(host: Host, target: str, *, count: int = 3, interval: float = 0.2,
         timeout: float = 10, size: int | None = None) -> PingResult:
    """Ping ``target`` from ``host`` (v4 or v6 is chosen by the address)."""
    argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1"]
    if ":" in target:
        argv.insert(1, "-6")
    if size is not None:
        argv += ["-s", str(size)]
    proc = host.run([*argv, target], check=False, timeout=timeout + count * (interval + 1))
    counts = _COUNTS.search(proc.stdout)
    rtt = _RTT.search(proc.stdout)
    sent, received = (int(counts.group(1)), int(counts.group(2))) if counts else (count, 0)
    return PingResult(sent, received, float(rtt.group(1)) if rtt else None)


def iperf3(server: Host, client: Host, server_ip: str, *, seconds: float = 3, parallel: int = 1,
           reverse: bool = False, udp_bitrate: str | None = None, port: int = 5201,
           extra: list[str] | None = None) -> float:
    """Run one iperf3 test from ``client`` to ``server_ip`` (served by ``server``).

    Returns the receiver's throughput in bit/s.  The server process is started with
    ``--one-off`` and is always killed afterwards.
    """
    srv = server.popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    try:
        server.wait_port(port, timeout=5)
        argv = ["iperf3", "-c", server_ip, "-p", str(port), "-t", str(seconds), "-J",
                "-P", str(parallel)]
        if reverse:
            argv.append("-R")
        if udp_bitrate:
            argv += ["-u", "-b", udp_bitrate]
        proc = client.run([*argv, *(extra or [])], check=False, timeout=seconds + 20)
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            raise DeviceError(f"iperf3 to {server_ip} gave no result: {proc.stderr.strip()}") from None
        if "error" in data:
            raise DeviceError(f"iperf3 to {server_ip}: {data['error']}")
        end = data["end"]
        summary = end.get("sum_received") or end.get("sum")
        return float(summary["bits_per_second"])
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()


def gbit(bits_per_second: float) -> str:
    return f"{bits_per_second / 1e9:.2f} Gbit/s"
