"""Benchmark tunkit's WireGuard against wireguard-go and the raw veth link, in one lab run.

Side by side: raw veth, wireguard-go <-> wireguard-go, tunkit <-> wireguard-go and
tunkit <-> tunkit. For each: iperf3 TCP single stream and -P 4 (Gbit/s received) and the
average ping RTT through the tunnel. Prints each figure with its ratio to wireguard-go and
writes ``bench/results/wg.json``. Needs root, wireguard-go, wg, iperf3 and ping.
Usage: ``python bench/wg.py [--seconds N] [--repeat N] [--only raw,wgo,mixed,tunkit]
[--no-parallel]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    iperf3_gbps,
    machine_info,
    ping_rtt_ms,
    print_ratio_table,
    wait_ping,
    write_results,
)

from tunkit.lab import Lab
from tunkit.services.wg_demo import build_wg_pair

WIREGUARD_GO_GBPS = 0.44  # PROTOCOLS.md §3: Debian wireguard-go, one stream, this machine

SETUPS = {
    "wgo": ("wireguard-go<->wireguard-go", "wireguard-go", "wireguard-go"),
    "mixed": ("tunkit<->wireguard-go", "tunkit", "wireguard-go"),
    "tunkit": ("tunkit<->tunkit", "tunkit", "tunkit"),
}


def measure(lab: Lab, key: str, seconds: float, parallel: bool,
            repeat: int = 1) -> dict[str, float]:
    if key == "raw":
        a, b = lab.add_host("rawa"), lab.add_host("rawb")
        lab.link(a, b, "192.168.99.1/24", "192.168.99.2/24")
        client, server, addr = a, b, "192.168.99.2"
    else:
        _title, impl_a, impl_b = SETUPS[key]
        pair = build_wg_pair(lab, impl_a, impl_b, tag=key[:2])
        client, server, addr = pair.a.host, pair.b.host, pair.b.tunnel_v4
        wait_ping(client, addr)
    def best(**kw: Any) -> float:  # other load only slows a run: keep the best of `repeat`
        return max(iperf3_gbps(client, server, addr, seconds=seconds, **kw)
                   for _ in range(max(1, repeat)))

    values = {"single_gbps": best(), "single_reverse_gbps": best(reverse=True)}
    if parallel:
        values["p4_gbps"] = best(parallel=4)
    values["rtt_ms"] = ping_rtt_ms(client, addr)
    lab.kill_processes()
    return values


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", default="raw,wgo,mixed,tunkit")
    ap.add_argument("--no-parallel", action="store_true", help="skip the -P 4 runs")
    ap.add_argument("--repeat", type=int, default=1,
                    help="iperf3 runs per figure; the best is kept (other load only slows runs)")
    opts = ap.parse_args()
    keys = [k for k in opts.only.split(",") if k]
    names = {"raw": "raw veth", **{k: v[0] for k, v in SETUPS.items()}}
    rows: list[tuple[str, dict[str, float]]] = []
    with Lab("tkbw") as lab:
        for key in keys:
            print(f"measuring {names[key]} ...", flush=True)
            rows.append((names[key], measure(lab, key, opts.seconds, not opts.no_parallel,
                                             opts.repeat)))
    results = dict(rows)
    columns = ["single_gbps", "single_reverse_gbps", "p4_gbps", "rtt_ms"]
    baseline = names["wgo"] if "wgo" in keys else rows[0][0]
    print()
    print_ratio_table(rows, baseline, columns)
    summary = {}
    if "wgo" in keys and "tunkit" in keys:
        summary["tunkit_vs_wireguard_go_single"] = (
            results[names["tunkit"]]["single_gbps"] / results[names["wgo"]]["single_gbps"]
        )
        print(f"\ntunkit<->tunkit / wireguard-go<->wireguard-go, single stream: "
              f"{summary['tunkit_vs_wireguard_go_single']:.2f}x (target 3x)")
    path = write_results("wg", {"machine": machine_info(), "seconds": opts.seconds,
                                "repeat": opts.repeat,
                                "results": results, "baseline": baseline, "summary": summary,
                                "reference_wireguard_go_gbps": WIREGUARD_GO_GBPS})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
