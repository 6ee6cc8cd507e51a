"""The netlink facade and the lab, against the real kernel.

Every check of the facade is cross-checked with iproute2's own view (``ip -j``), so the
facade cannot pass by agreeing with itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest

from tunkit.errors import ConfigError, DeviceError
from tunkit.io import netlink as nl
from tunkit.io.netlink import Netlink, Route
from tunkit.lab import Lab, lab_down, lab_status, lab_up, state_file, wait_for

pytestmark = pytest.mark.e2e


def ip_json(host_netns: str, *args: str) -> list[dict]:  # type: ignore[type-arg]
    out = subprocess.run(["ip", "-n", host_netns, "-j", *args], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out) if out.strip() else []


def test_addresses_mtu_and_up_down(lab: Lab, need_tool: Callable[[str], str]) -> None:
    need_tool("ip")
    a, b = lab.add_host("a"), lab.add_host("b")
    if_a, _ = lab.link(a, b, "10.70.0.1/24", "10.70.0.2/24", v6=("fd70::1/64", "fd70::2/64"), mtu=1400)
    with a.netlink() as link:
        assert link.get_mtu(if_a) == 1400
        link.set_mtu(if_a, 1280)
        link.add_address(if_a, "10.71.0.1/16")
        assert "10.71.0.1/16" in link.list_addresses(if_a)
        assert [x for x in link.list_addresses(if_a) if not x.startswith("fe80")] == [
            "10.70.0.1/24", "10.71.0.1/16", "fd70::1/64",
        ]
        link.del_address(if_a, "10.71.0.1/16")
        assert "10.71.0.1/16" not in link.list_addresses(if_a)
        assert link.is_up(if_a)
    info = ip_json(a.netns, "addr", "show", "dev", if_a)[0]
    assert info["mtu"] == 1280
    addrs = {(x["local"], x["prefixlen"]) for x in info["addr_info"]}
    assert {("10.70.0.1", 24), ("fd70::1", 64)} <= addrs and ("10.71.0.1", 16) not in addrs
    # both families carry traffic immediately (no DAD wait)
    assert a.run(["ping", "-c1", "-W2", "10.70.0.2"]).returncode == 0
    assert a.run(["ping", "-c1", "-W2", "fd70::2"]).returncode == 0
    with a.netlink() as link:
        link.set_down(if_a)
        assert not link.is_up(if_a)
    assert "UP" not in ip_json(a.netns, "link", "show", "dev", if_a)[0]["flags"]


def test_facade_errors_are_clear(lab: Lab) -> None:
    a = lab.add_host("a")
    with a.netlink() as link:
        with pytest.raises(ConfigError, match="invalid CIDR"):
            link.add_address("lo", "10.0.0.256/24")
        with pytest.raises(ConfigError, match="invalid CIDR"):
            link.add_address("lo", "10.0.0.1")
        with pytest.raises(ConfigError, match="invalid CIDR"):
            link.add_route("10.0.0.1/24", dev="lo")
        with pytest.raises(DeviceError, match="no such device: nope0"):
            link.set_up("nope0")
        with pytest.raises(ConfigError, match="invalid MTU"):
            link.set_mtu("lo", 20)
        link.add_address("lo", "10.99.0.1/32")
        with pytest.raises(DeviceError, match="already exists"):
            link.add_address("lo", "10.99.0.1/32")
    with pytest.raises(DeviceError, match="no such namespace"):
        Netlink("tk-no-such-namespace")
    assert not nl.netns_exists("tk-no-such-namespace"), "opening must never create a namespace"


def test_routes_with_table_and_metric(lab: Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    if_a, _ = lab.link(a, b, "10.72.0.1/24", "10.72.0.2/24", v6=("fd72::1/64", "fd72::2/64"))
    with a.netlink() as link:
        link.add_route("10.200.0.0/16", via="10.72.0.2", table=51820, metric=7)
        link.add_route("0.0.0.0/0", dev=if_a, table=51820)
        link.add_route("10.201.0.0/24", via="10.72.0.2")
        link.add_route("fd99::/64", via="fd72::2", table=51820)
        routes = link.list_routes(table=51820)
        assert Route("10.200.0.0/16", if_a, "10.72.0.2", 51820, 7) in routes
        assert Route("0.0.0.0/0", if_a, None, 51820, None) in routes
        assert link.list_routes(table=51820, family=socket.AF_INET6)[0].dst == "fd99::/64"
        assert any(r.dst == "10.201.0.0/24" for r in link.list_routes())
    seen = {(r["dst"], r.get("metric")) for r in ip_json(a.netns, "route", "show", "table", "51820")}
    assert ("10.200.0.0/16", 7) in seen and "default" in {d for d, _ in seen}
    # the kernel really uses the main-table route
    got = ip_json(a.netns, "route", "get", "10.201.0.9")[0]
    assert got["gateway"] == "10.72.0.2" and got["dev"] == if_a
    with a.netlink() as link:
        link.del_route("10.200.0.0/16", via="10.72.0.2", table=51820, metric=7)
        assert all(r.dst != "10.200.0.0/16" for r in link.list_routes(table=51820))
        with pytest.raises(ConfigError):
            link.add_route("10.5.0.0/16", via="fd72::2")  # family mismatch
        with pytest.raises(ConfigError):
            link.add_route("10.5.0.0/16")


def test_policy_rules_fwmark_and_suppress_prefixlength(lab: Lab) -> None:
    a = lab.add_host("a")
    with a.netlink() as link:
        # wg-quick's default-route recipe
        link.add_rule(fwmark=0xCA6C, table=51820, priority=100, invert=True)
        link.add_rule(table=254, priority=99, suppress_prefixlength=0)
        link.add_rule(fwmark=0x1, fwmask=0xFF, table=200, priority=98)
        link.add_rule(table=254, priority=97, suppress_prefixlength=0, family=socket.AF_INET6)
        rules = {r.priority: r for r in link.list_rules()}
        assert rules[100].fwmark == 0xCA6C and rules[100].invert and rules[100].table == 51820
        assert rules[99].suppress_prefixlength == 0 and rules[99].table == 254
        assert rules[98].fwmask == 0xFF
        assert rules[98].suppress_prefixlength is None
        assert [r.priority for r in link.list_rules(socket.AF_INET6) if r.priority == 97] == [97]
    text = a.run(["ip", "rule"]).stdout
    assert "100:\tnot from all fwmark 0xca6c lookup 51820" in text
    assert "99:\tfrom all lookup main suppress_prefixlength 0" in text
    assert "98:\tfrom all fwmark 0x1/0xff lookup 200" in text
    assert "97:" in a.run(["ip", "-6", "rule"]).stdout
    with a.netlink() as link:
        link.del_rule(table=254, priority=99, suppress_prefixlength=0)
        assert 99 not in {r.priority for r in link.list_rules()}
    assert "99:" not in a.run(["ip", "rule"]).stdout


def test_veth_create_move_and_delete(lab: Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    with a.netlink() as link:
        link.create_veth("tkv0", "tkv1")
        assert link.link_exists("tkv0") and link.link_exists("tkv1")
        mac = link.get_mac("tkv1")
        link.move_to_netns("tkv1", b.netns)
        assert not link.link_exists("tkv1")
    with b.netlink() as link:
        assert link.link_exists("tkv1") and link.get_mac("tkv1") == mac
        link.add_address("tkv1", "10.73.0.2/24")
        link.set_up("tkv1")
    with a.netlink() as link:
        link.add_address("tkv0", "10.73.0.1/24")
        link.set_up("tkv0")
        link.wait_operational("tkv0")
    with b.netlink() as link:
        link.wait_operational("tkv1")
    assert a.run(["ping", "-c1", "-W2", "10.73.0.2"]).returncode == 0
    with a.netlink() as link:
        link.delete_link("tkv0")
        assert not link.link_exists("tkv0")
    with b.netlink() as link:
        wait_for(lambda: not link.link_exists("tkv1"), 3, what="peer end to vanish")


def test_three_hosts_with_a_forwarding_router(lab: Lab, need_tool: Callable[[str], str]) -> None:
    need_tool("ping")
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        root_before = f.read()
    c1, r, c2 = lab.add_host("c1"), lab.add_host("r"), lab.add_host("c2")
    lab.link(c1, r, "10.74.1.2/24", "10.74.1.1/24")
    lab.link(r, c2, "10.74.2.1/24", "10.74.2.2/24")
    c1.add_route("10.74.2.0/24", via="10.74.1.1")
    c2.add_route("10.74.1.0/24", via="10.74.2.1")
    assert c1.run(["ping", "-c1", "-W1", "10.74.2.2"], check=False).returncode != 0
    r.enable_forwarding()
    assert c1.run(["ping", "-c1", "-W2", "10.74.2.2"]).returncode == 0
    assert r.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read() == root_before, "enable_forwarding leaked into the root namespace"
    text = lab.describe()
    assert "c1" in text and "10.74.2.1/24" in text and r.netns in text


def test_run_popen_call_and_wait_port(lab: Lab) -> None:
    a = lab.add_host("a")
    assert a.run(["cat", "/proc/self/net/dev"]).stdout.count(":") == 1  # only lo
    with pytest.raises(DeviceError, match="exited with"):
        a.run(["false"])
    with pytest.raises(DeviceError, match="command not found"):
        a.run(["tunkit-no-such-tool"])
    server = a.popen([sys.executable, "-c", textwrap.dedent("""
        import socket, time
        s = socket.socket(); s.bind(("127.0.0.1", 7070)); s.listen()
        c, _ = s.accept(); c.sendall(b"hi"); time.sleep(30)
    """)])
    a.wait_port(7070)
    assert a.call(_fetch, 7070) == b"hi"
    assert a.call(os.getpid) != os.getpid()
    with pytest.raises(ZeroDivisionError):
        a.call(_divide, 1, 0)
    with pytest.raises(Exception, match="7071"):
        a.wait_port(7071, timeout=0.3)
    lab.kill_processes()
    assert server.poll() is not None


def _fetch(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as c:
        return c.recv(10)


def _divide(x: int, y: int) -> float:
    return x / y


def test_lab_teardown_after_normal_exit_and_exception(require_root: None) -> None:
    with Lab(prefix="tkd") as lab:
        a, b = lab.add_host("a"), lab.add_host("b")
        lab.link(a, b)
        proc = a.popen(["sleep", "60"])
        names = [a.netns, b.netns]
    assert proc.poll() is not None
    assert not any(nl.netns_exists(n) for n in names)

    with pytest.raises(RuntimeError, match="boom"), Lab(prefix="tkd") as lab:
        c = lab.add_host("c")
        proc = c.popen(["sleep", "60"])
        name = c.netns
        raise RuntimeError("boom")
    assert proc.poll() is not None
    assert not nl.netns_exists(name)


_BUILDER = textwrap.dedent("""
    import json, signal, sys, time
    from tunkit.lab import Lab
    lab = Lab(prefix="tks")  # no with-block: atexit / signal handlers must clean up
    a, b = lab.add_host("a"), lab.add_host("b")
    lab.link(a, b)
    p = a.popen(["sleep", "60"])
    print(json.dumps({"netns": [a.netns, b.netns], "pid": p.pid}), flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_lab_teardown_when_the_builder_process_gets_a_signal(require_root: None, sig: int) -> None:
    builder = subprocess.Popen([sys.executable, "-c", _BUILDER], stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout is not None
        info = json.loads(builder.stdout.readline())
        assert all(nl.netns_exists(n) for n in info["netns"])
        builder.send_signal(sig)
        builder.wait(10)
    finally:
        if builder.poll() is None:
            builder.kill()
            builder.wait()
    assert not any(nl.netns_exists(n) for n in info["netns"])
    assert not os.path.exists(f"/proc/{info['pid']}") or _is_zombie_or_gone(info["pid"])


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_lab_teardown_at_interpreter_exit(require_root: None) -> None:
    script = _BUILDER.replace("time.sleep(60)", "sys.exit(0)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    info = json.loads(out.stdout.splitlines()[0])
    assert not any(nl.netns_exists(n) for n in info["netns"])
    time.sleep(0.1)
    assert _is_zombie_or_gone(info["pid"])


def test_lab_up_status_down(require_root: None) -> None:
    prefix = f"tku{os.getpid()}"
    path = lab_up(prefix)
    try:
        assert path == state_file(prefix) and path.exists()
        state = json.loads(path.read_text())
        a, b = state["hosts"]["a"], state["hosts"]["b"]
        assert nl.netns_exists(a) and nl.netns_exists(b)
        text = lab_status(prefix)
        assert "10.77.0.1/24" in text and "fd77::2/64" in text and f"ip netns exec {a}" in text
        with pytest.raises(ConfigError, match="already up"):
            lab_up(prefix)
        with Netlink(a) as link:
            link.wait_operational("eth0")
        r = subprocess.run(["ip", "netns", "exec", a, "ping", "-c1", "-W2", "fd77::2"],
                           capture_output=True, check=False)
        assert r.returncode == 0
    finally:
        removed = lab_down(prefix)
    assert sorted(removed) == sorted([a, b])
    assert not path.exists() and not nl.netns_exists(a) and not nl.netns_exists(b)
    with pytest.raises(ConfigError, match="no lab"):
        lab_down(prefix)
