"""Shared benchmark helpers: iperf3 and ping inside lab namespaces, JSON results, ratio tables.

Contract: every helper runs its tools inside :class:`tunkit.lab.Host` namespaces (never the
root namespace) and kills what it starts.  :func:`iperf3_gbps` returns the receiver-side
throughput in Gbit/s, :func:`ping_rtt_ms` the average RTT; both raise ``RuntimeError`` with the
tool's own message on failure.  :func:`write_results` writes ``bench/results/NAME.json``.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunkit.lab import Host

RESULTS_DIR = Path(__file__).resolve().parent / "results"
IPERF_PORT = 5201


def iperf3_gbps(client: Host, server: Host, addr: str, *, parallel: int = 1,
                seconds: float = 5.0, reverse: bool = False) -> float:
    """One iperf3 TCP run from ``client`` to ``addr`` (served in ``server``); Gbit/s received."""
    srv = server.popen(["iperf3", "-s", "-1", "-p", str(IPERF_PORT)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server.wait_port(IPERF_PORT)
        argv = ["iperf3", "-c", addr, "-p", str(IPERF_PORT), "-t", f"{seconds:g}",
                "-P", str(parallel), "-J"]
        if reverse:
            argv.append("-R")
        r = client.run(argv, check=False, timeout=seconds + 30)
        try:
            data = json.loads(r.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"iperf3 output unreadable: {r.stderr.strip()}") from None
        if "error" in data:
            raise RuntimeError(f"iperf3: {data['error']}")
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        if srv.poll() is None:
            srv.terminate()
        srv.wait(5)


def ping_stats_ms(host: Host, addr: str, count: int = 20, interval: float = 0.05) -> dict[str, float]:
    """Ping RTT ``{"min", "avg", "max"}`` in milliseconds (raises if a reply was lost)."""
    r = host.run(["ping", "-c", str(count), "-i", f"{interval:g}", "-W", "2", addr], check=False)
    if f"{count} received" not in r.stdout:
        raise RuntimeError(f"ping {addr} lost packets: {r.stdout.strip().splitlines()[-2:]}")
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", r.stdout)
    if not m:
        raise RuntimeError(f"cannot read ping output: {r.stdout!r}")
    return {"min": float(m.group(1)), "avg": float(m.group(2)), "max": float(m.group(3))}


def ping_rtt_ms(host: Host, addr: str, count: int = 20, interval: float = 0.05) -> float:
    """Average ping RTT in milliseconds (raises if a reply was lost)."""
    return ping_stats_ms(host, addr, count, interval)["avg"]


def load_average() -> float:
    """The 1-minute load average: benchmarks on a shared machine should report it."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_ping(host: Host, addr: str, timeout: float = 15.0) -> None:
    """Wait until one ping to ``addr`` succeeds (a tunnel may still be negotiating)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.run(["ping", "-c", "1", "-W", "1", addr], check=False).returncode == 0:
            return
    raise RuntimeError(f"{addr} never answered ping")


def machine_info() -> dict[str, Any]:
    cpus = Path("/proc/cpuinfo").read_text().count("processor\t:")
    return {"kernel": platform.release(), "python": platform.python_version(), "cpus": cpus,
            "loadavg_1min": load_average(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def print_ratio_table(rows: Sequence[tuple[str, dict[str, float]]], baseline: str,
                      columns: Sequence[str]) -> None:
    """Print one line per row: each column's value and its ratio to the baseline row."""
    base = dict(rows)[baseline]
    header = f"{'':12}" + "".join(f"{c:>22}" for c in columns)
    print(header)
    for name, values in rows:
        cells = []
        for c in columns:
            v = values.get(c)
            if v is None:
                cells.append(f"{'-':>22}")
                continue
            ratio = v / base[c] if base.get(c) else float("nan")
            cells.append(f"{v:>12.3f} ({ratio:6.1%})")
        print(f"{name:12}" + "".join(cells))
