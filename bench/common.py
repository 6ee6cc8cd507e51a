"""Shared benchmark helpers: iperf3 and ping inside lab namespaces, JSON results, ratio tables.

Contract: every helper runs its tools inside :class:`tunkit.lab.Host` namespaces (never the
root namespace) and kills what it starts.  :func:`iperf3_gbps` returns the receiver-side
throughput in Gbit/s, :func:`ping_rtt_ms` the average RTT; both raise ``RuntimeError`` with the
tool's own message on failure.  :func:`write_results` writes ``bench/results/NAME.json``.

Every iperf3 run also records how the machine's CPU time was spent while it ran
(:data:`RUNS`; :func:`cpu_note` summarises it): on this VM the hypervisor takes back up to
half of both vCPUs under load ("steal"), and a figure taken then is not comparable with one
taken when it did not.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tunkit.lab import Host

RESULTS_DIR = Path(__file__).resolve().parent / "results"
IPERF_PORT = 5201
T = TypeVar("T")
RUNS: list[dict[str, Any]] = []  # one entry per iperf3 run: address, -P, Gbit/s, CPU shares


def cpu_times() -> list[int]:
    """The machine-wide CPU counters of ``/proc/stat`` (user nice system idle iowait irq
    softirq steal), in clock ticks."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def cpu_shares(before: list[int], after: list[int]) -> dict[str, float]:
    """How the CPU time between two :func:`cpu_times` readings was spent, as fractions."""
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    return {"busy": (d[0] + d[1] + d[2] + d[5] + d[6]) / total, "idle": (d[3] + d[4]) / total,
            "steal": d[7] / total}


def add_steal_arguments(ap: Any) -> None:
    """``--max-steal`` and ``--retries``, the options of :func:`least_stolen`."""
    ap.add_argument("--max-steal", type=float, default=0.15,
                    help="measure again when more of the CPU than this was stolen meanwhile")
    ap.add_argument("--retries", type=int, default=2,
                    help="extra attempts when the steal is above --max-steal")


def least_stolen(measure: Callable[[], tuple[float, T]], max_steal: float,
                 retries: int) -> tuple[float, T]:
    """Call ``measure`` (which returns ``(steal, value)``) until its steal is at most
    ``max_steal`` or ``retries`` extra attempts are spent; the least-stolen result."""
    attempts: list[tuple[float, int, T]] = []
    for attempt in range(1 + max(0, retries)):
        steal, value = measure()
        attempts.append((steal, attempt, value))
        if steal <= max_steal:
            break
    steal, _attempt, value = min(attempts, key=lambda a: a[:2])
    return steal, value


def cpu_note() -> str:
    """One line on the CPU steal seen during this process's iperf3 runs ('' if none ran)."""
    steals = sorted(r["cpu"]["steal"] for r in RUNS)
    if not steals:
        return ""
    mid = steals[len(steals) // 2]
    line = (f"cpu steal during the {len(steals)} iperf3 runs: median {mid:.0%}, "
            f"max {steals[-1]:.0%}")
    if steals[-1] > 0.10:
        line += " (the hypervisor took that share of the vCPUs: compare paired figures only)"
    return line


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
        before = cpu_times()
        r = client.run(argv, check=False, timeout=seconds + 30)
        cpu = cpu_shares(before, cpu_times())
        try:
            data = json.loads(r.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"iperf3 output unreadable: {r.stderr.strip()}") from None
        if "error" in data:
            raise RuntimeError(f"iperf3: {data['error']}")
        gbps = float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
        RUNS.append({"addr": addr, "parallel": parallel, "reverse": reverse,
                     "gbps": round(gbps, 3), "cpu": {k: round(v, 3) for k, v in cpu.items()}})
        return gbps
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
    if RUNS:
        data = {**data, "iperf3_runs": RUNS}
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
