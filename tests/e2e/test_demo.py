"""``tunkit demo`` runs end to end and leaves nothing behind, also when interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.e2e


def _demo_namespaces(pid: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"tkdemo{pid}-")]


def _children_alive(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


def test_full_demo_runs_every_section_and_cleans_up(require_root: None) -> None:
    proc = subprocess.run([sys.executable, "-m", "tunkit", "demo", "--quick"],
                          capture_output=True, text=True, timeout=400)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for title in ("sniff and respond", "p2p tunnel", "WireGuard", "tun2socks proxy"):
        assert title in out, out
    assert "every section worked" in out
    assert "3/3 replies" in out
    assert "interface:" in out and "latest handshake" in out  # wg show output
    assert "Gbit/s" in out
    assert "connected to some-name.test:80" in out  # curl went through SOCKS5 by name


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_demo_leaves_no_namespace_or_process(require_root: None, sig: int) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tunkit", "demo", "--only", "p2p"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not _demo_namespaces(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _demo_namespaces(proc.pid), "the demo never built its lab"
    time.sleep(4)  # well inside the section: servers and clients are running
    assert _children_alive(proc.pid), "expected tunkit/iperf3 children while the demo runs"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in out, out
    assert _demo_namespaces(proc.pid) == []
    assert _children_alive(proc.pid) == []
