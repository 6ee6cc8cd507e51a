"""``tunkit demo``: a guided tour that builds a throwaway lab and shows every mode working.

Contract: the demo creates its namespaces with unique names (``tkdemo<PID>-*``), sends
traffic only between them, and tears everything down when it ends, fails or is
interrupted (Ctrl-C, SIGTERM).  Each section prints what it ran and what it measured;
a failed section is reported and the tour continues; the exit status is non-zero if any
section failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from tunkit.errors import TunkitError

Section = Callable[["Tour"], None]


class Tour:
    """What a demo section gets: the lab, output helpers and a name generator."""

    def __init__(self, lab: Any, quick: bool) -> None:
        self.lab = lab
        self.quick = quick
        self.seconds = 2 if quick else 3
        self._n = 0

    def say(self, text: str = "") -> None:
        print(f"  {text}" if text else "", flush=True)

    def cmd(self, where: str, text: str) -> None:
        print(f"  [{where}]$ {text}", flush=True)

    def ifname(self, stem: str) -> str:
        """A device name unique on this machine (WireGuard socket names are global)."""
        self._n += 1
        return f"{stem}{os.getpid() % 100000}{self._n}"[:15]

    def tunkit(self, host: Any, *argv: str, **kw: Any) -> subprocess.Popen[str]:
        """Start ``tunkit ARGV`` inside ``host``; the lab kills it on teardown."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.STDOUT)
        proc: subprocess.Popen[str] = host.popen([sys.executable, "-m", "tunkit", *argv],
                                                 text=True, **kw)
        return proc


def wait_for_link(host: Any, name: str, timeout: float = 5.0) -> None:
    from tunkit.lab import wait_for

    def up() -> bool:
        with host.netlink() as nl:
            return bool(nl.link_exists(name))

    wait_for(up, timeout, what=f"device {name} in {host.netns}")


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM a process we started and return what it printed."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


# --------------------------------------------------------------------------- sections


def section_sniff(t: Tour) -> None:
    from tunkit.labtools import ping

    host = t.lab.add_host("sniff")
    tun = t.ifname("tks")
    t.cmd(host.name, f"tunkit sniff --create {tun} --address 10.9.0.1/24 --address fd09::1/64 --respond")
    proc = t.tunkit(host, "sniff", "--create", tun, "--address", "10.9.0.1/24",
                    "--address", "fd09::1/64", "--respond")
    wait_for_link(host, tun)
    time.sleep(0.3)
    for target in ("10.9.0.7", "fd09::7"):
        t.cmd(host.name, f"ping -c 3 {target}")
        result = ping(host, target, count=3)
        t.say(f"  {result}")
        if result.received == 0:
            raise TunkitError(f"no ping replies from {target} through the TUN")
    lines = [ln for ln in stop(proc).splitlines() if ln[:2].isdigit()]
    t.say(f"sniff printed {len(lines)} packet lines, e.g.:")
    for line in lines[:2] + [ln for ln in lines if "ICMPv6" in ln and "echo" in ln][:2]:
        t.say(f"    {line}")

    tap = t.ifname("tkt")
    t.cmd(host.name, f"tunkit sniff --tap --create {tap} --address 10.10.0.1/24 --respond")
    proc = t.tunkit(host, "sniff", "--tap", "--create", tap, "--address", "10.10.0.1/24",
                    "--address", "fd10::1/64", "--respond")
    wait_for_link(host, tap)
    time.sleep(0.3)
    t.cmd(host.name, "ping -c 3 10.10.0.9    (ARP answered by tunkit)")
    result = ping(host, "10.10.0.9", count=3)
    t.say(f"  {result}")
    lines = [ln for ln in stop(proc).splitlines() if "ARP" in ln]
    for line in lines[:2]:
        t.say(f"    {line}")
    if result.received == 0:
        raise TunkitError("no ping replies through the TAP device")


SECTIONS: list[tuple[str, Section]] = [
    ("TUN/TAP: sniff and respond", section_sniff),
]


def register_section(title: str, section: Section) -> None:
    SECTIONS.append((title, section))


def run_demo(args: argparse.Namespace) -> int:
    from tunkit.cli import require_root

    require_root("tunkit demo")
    _load_optional_sections()
    # The lab turns SIGINT/SIGTERM into teardown plus an exception; when that exception
    # lands inside an interpreter callback it is "unraisable": say nothing, the check
    # after each section notices the lab is gone.
    default_hook = sys.unraisablehook

    def quiet_interrupts(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, (SystemExit, KeyboardInterrupt)):
            default_hook(unraisable)

    sys.unraisablehook = quiet_interrupts
    wanted = set(args.only or [])
    failures: list[str] = []
    started = time.monotonic()
    print("tunkit demo: building a throwaway lab of network namespaces", flush=True)
    try:
        return _tour(args, wanted, failures, started)
    except (KeyboardInterrupt, SystemExit):
        print("\ninterrupted: the lab and its processes were removed", flush=True)
        return 130


def _tour(args: argparse.Namespace, wanted: set[str], failures: list[str], started: float) -> int:
    from tunkit.lab import Lab

    with Lab("tkdemo") as lab:
        tour = Tour(lab, args.quick)
        for title, section in SECTIONS:
            key = section.__name__.removeprefix("section_")
            if wanted and key not in wanted:
                continue
            print(f"\n== {title} ==", flush=True)
            try:
                section(tour)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                if lab._closed:  # a signal tore the lab down mid-section
                    raise KeyboardInterrupt from None
                failures.append(title)
                print(f"  FAILED: {exc}", flush=True)
                if args.verbose:
                    traceback.print_exc()
            lab.kill_processes()
        print("\ntearing the lab down", flush=True)
    took = time.monotonic() - started
    leftovers = _leftovers(lab)
    if leftovers:
        print(f"demo left things behind: {', '.join(leftovers)}")
        failures.append("teardown")
    if failures:
        print(f"demo finished in {took:.0f}s with {len(failures)} failed section(s): {', '.join(failures)}")
        return 1
    print(f"demo finished in {took:.0f}s: every section worked; no namespace, link or process left behind")
    return 0


def _leftovers(lab: Any) -> list[str]:
    """Namespaces and processes of this lab that still exist after teardown."""
    from tunkit.io.netlink import list_netns

    names = [f"netns {n}" for n in list_netns() if n in {h.netns for h in lab.hosts.values()}]
    names += [f"pid {p.pid}" for p in lab._processes if p.poll() is None]
    return names


def _load_optional_sections() -> None:
    """Sections for the other modes live next to their services."""
    import importlib

    for module in ("tunkit.services.p2p_demo", "tunkit.services.wg_demo", "tunkit.services.proxy_demo"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def add_demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="build a throwaway lab and show every mode working (needs root)",
                       description="Build network namespaces, run every tunkit mode with real "
                       "traffic (ping, iperf3, wg show, curl through the proxy), tear it all down.")
    p.add_argument("--quick", action="store_true", help="shorter throughput runs")
    p.add_argument("--only", action="append", metavar="SECTION",
                   help="run only this section (sniff, p2p, wireguard, proxy); repeatable")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failed sections")
    p.set_defaults(func=run_demo)
