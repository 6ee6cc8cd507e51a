"""``tunkit sniff`` on real TUN/TAP devices inside lab namespaces.

Each test starts the real CLI in a namespace, drives real ping through the device and
asserts on what sniff printed, what ping received and what tcpdump reads back.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tunkit.lab import Host, Lab, wait_for
from tunkit.labtools import ping

pytestmark = pytest.mark.e2e


def start_sniff(host: Host, name: str, *args: str) -> subprocess.Popen[str]:
    proc = host.popen([sys.executable, "-m", "tunkit", "sniff", "--create", name, *args],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def configured() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"sniff exited early: {proc.stderr.read() if proc.stderr else ''}")
        with host.netlink() as nl:
            return nl.link_exists(name) and nl.is_up(name) and bool(nl.list_addresses(name))

    wait_for(configured, 10, what=f"{name} configured")
    time.sleep(0.2)
    return proc


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.terminate()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return out, err


def test_sniff_prints_a_ping_flow_and_writes_a_pcap_tcpdump_reads(lab: Lab, tmp_path, need_tool: Callable[[str], str]) -> None:
    need_tool("ping")
    tcpdump = need_tool("tcpdump")
    host = lab.add_host("a")
    pcap = tmp_path / "capture.pcap"
    proc = start_sniff(host, "tks0", "--address", "10.9.0.1/24", "-w", str(pcap))
    result = ping(host, "10.9.0.7", count=2, interval=0.2)
    assert result.received == 0  # nobody answers without --respond
    out, err = stop(proc)
    requests = [ln for ln in out.splitlines() if "ICMP 10.9.0.1 -> 10.9.0.7 len=84 echo-request" in ln]
    assert len(requests) == 2, out
    assert "seq=1" in requests[0] and "seq=2" in requests[1]
    assert requests[0][2] == ":" and requests[0][8] == "."  # HH:MM:SS.mmm prefix
    read = subprocess.run([tcpdump, "-n", "-r", str(pcap)], capture_output=True, text=True, check=True)
    echo_lines = [ln for ln in read.stdout.splitlines() if "10.9.0.1 > 10.9.0.7: ICMP echo request" in ln]
    assert len(echo_lines) == 2, read.stdout
    assert "packets captured" in err


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_respond_makes_ping_work_through_tun(lab: Lab, family: str, need_tool: Callable[[str], str]) -> None:
    need_tool("ping")
    host = lab.add_host("a")
    proc = start_sniff(host, "tks1", "--address", "10.9.1.1/24", "--address", "fd09:1::1/64", "--respond")
    target = "10.9.1.7" if family == "v4" else "fd09:1::7"
    result = ping(host, target, count=3, interval=0.2)
    out, err = stop(proc)
    assert result.received == 3, out + err
    assert out.count("echo-reply") >= 3 and "(reply)" in out
    assert "3 replies sent" in err or "replies sent" in err


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_respond_makes_ping_work_through_tap_with_arp(lab: Lab, family: str, need_tool: Callable[[str], str]) -> None:
    need_tool("ping")
    host = lab.add_host("a")
    proc = start_sniff(host, "tkt0", "--tap", "--address", "10.9.2.1/24", "--address", "fd09:2::1/64", "--respond")
    target = "10.9.2.9" if family == "v4" else "fd09:2::9"
    result = ping(host, target, count=3, interval=0.2)
    # the kernel learnt tunkit's MAC for the target (read before the device goes away)
    neigh = host.run(["ip", "neigh", "show", target]).stdout
    out, _ = stop(proc)
    assert result.received == 3, out
    assert "02:74:6b:00:00:01" in neigh, neigh
    if family == "v4":
        assert "ARP who-has 10.9.2.9" in out, out
    else:
        assert "neighbor-solicitation" in out or "neighbour" in out, out


def test_attach_to_existing_device_and_count(lab: Lab, need_tool: Callable[[str], str]) -> None:
    need_tool("ping")
    host = lab.add_host("a")
    host.run(["ip", "tuntap", "add", "dev", "tkpersist", "mode", "tun"])
    host.run(["ip", "link", "set", "tkpersist", "addrgenmode", "none"])  # no IPv6 router solicitations
    host.run(["ip", "addr", "add", "10.9.3.1/24", "dev", "tkpersist"])
    host.run(["ip", "link", "set", "tkpersist", "up"])
    proc = host.popen([sys.executable, "-m", "tunkit", "sniff", "-i", "tkpersist", "-c", "2", "--respond"],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    result = ping(host, "10.9.3.5", count=2, interval=0.2)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert result.received == 2
    assert "2 packets captured" in err
    with host.netlink() as nl:
        assert nl.link_exists("tkpersist")  # an attached device stays


def test_device_deleted_under_sniff_gives_one_line(lab: Lab) -> None:
    host = lab.add_host("a")
    host.run(["ip", "tuntap", "add", "dev", "tkgone", "mode", "tun"])
    proc = host.popen([sys.executable, "-m", "tunkit", "sniff", "-i", "tkgone"],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    host.run(["ip", "link", "del", "tkgone"])
    _, err = proc.communicate(timeout=15)
    assert proc.returncode != 0
    assert "Traceback" not in err, err
    assert "tkgone" in err.splitlines()[-1]
