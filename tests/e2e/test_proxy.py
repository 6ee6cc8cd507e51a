"""e2e: ``tunkit proxy`` in a lab with real microsocks, dante, a DNS server and a web server.

Topology: :mod:`tunkit.services.proxy_lab` (client -> upstream -> server namespaces).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunkit.lab import Lab, wait_for
from tunkit.services import proxy_lab as pl
from tunkit.services.proxy_route import cgroup2_root

pytestmark = pytest.mark.e2e

SOCKS = f"socks5://{pl.UPSTREAM_IP}:{pl.SOCKS_PORT}"
UDP_CLIENT = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
data, addr = s.recvfrom(65535)
print(data.decode(), addr[0], addr[1])
'''


def need_tool(name: str) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"missing tool {name}")


@pytest.fixture
def plab(lab: Lab, tmp_path: Path) -> Iterator[pl.ProxyLab]:
    for tool in ("microsocks", "danted", "curl", "dig", "nft", "unshare"):
        need_tool(tool)
    tmp_path.chmod(0o755)
    yield pl.build(lab, tmp_path / "lab", big_mib=32)


def start(plab: pl.ProxyLab, *args: str, upstream: str = SOCKS, **kw: Any) -> subprocess.Popen[Any]:
    return plab.start_proxy("--upstream", upstream, "--dns-upstream", pl.SERVER_IP,
                            "--state", str(plab.workdir / "fakeip.sqlite"), *args, **kw)


def stop(proc: subprocess.Popen[Any]) -> int:
    proc.terminate()
    return proc.wait(10)


def dig(plab: pl.ProxyLab, name: str, server: str = "198.18.0.1") -> str:
    out = plab.client.run(["dig", "+short", "+time=2", "+tries=1", f"@{server}", name],
                          check=False)
    return out.stdout.strip()


def curl(plab: pl.ProxyLab, url: str, *extra: str, nameserver: str = "198.18.0.1",
         timeout: float = 20) -> subprocess.CompletedProcess[Any]:
    return plab.run_client(["curl", "-sS", "-m", str(int(timeout)), *extra, url],
                           nameserver=nameserver, text=False, timeout=timeout + 10)


def socks_log(plab: pl.ProxyLab) -> str:
    return plab.socks_log.read_text()


def test_curl_by_domain_through_socks5(plab: pl.ProxyLab) -> None:
    proc = start(plab)
    try:
        fake = dig(plab, "some-name.test")
        assert fake.startswith("198.18."), fake
        got = curl(plab, "http://some-name.test/")
        assert got.returncode == 0, got.stderr
        assert b"hello from the web server" in got.stdout
        assert "connected to some-name.test:80" in socks_log(plab)  # CONNECT by domain name
        big = curl(plab, "http://big.test/big.bin")
        assert big.returncode == 0, big.stderr
        assert len(big.stdout) == plab.big_size
        assert hashlib.sha256(big.stdout).hexdigest() == plab.big_sha256
        assert "connected to big.test:80" in socks_log(plab)
        # Remote DNS: the real resolver was asked by the SOCKS server, never by the client.
        askers = {ln.split()[-1] for ln in plab.dns_log.read_text().splitlines()
                  if ln.startswith("some-name.test. A ")}
        assert askers == {pl.UPSTREAM_FAR_IP}
    finally:
        assert stop(proc) == 0


def test_filtered_domain_gets_the_real_answer(plab: pl.ProxyLab) -> None:
    proc = start(plab, "--filter-domain", "real.test")
    try:
        assert dig(plab, "www.real.test") == pl.SERVER_IP
        assert "www.real.test. A" in plab.dns_log.read_text()
        assert dig(plab, "fake.test").startswith("198.18.")
        # TCP DNS as well
        out = plab.client.run(["dig", "+short", "+tcp", "@198.18.0.1", "tcp.real.test"],
                              check=False)
        assert out.stdout.strip() == pl.SERVER_IP
    finally:
        stop(proc)


def test_udp_through_dante_udp_associate(plab: pl.ProxyLab) -> None:
    plab.upstream.wait_port(pl.DANTE_PORT, timeout=10)
    (plab.workdir / "udp_client.py").write_text(UDP_CLIENT)
    proc = start(plab, upstream=f"socks5://{pl.UPSTREAM_IP}:{pl.DANTE_PORT}")
    try:
        fake = dig(plab, "echo.test")
        assert fake.startswith("198.18.")
        out = plab.client.run([sys.executable, str(plab.workdir / "udp_client.py"), fake,
                               str(pl.ECHO_PORT), "ping-through-dante"], check=False, timeout=20)
        assert out.returncode == 0, out.stderr
        text, source, port = out.stdout.split()
        assert text == "echo:ping-through-dante"
        assert source == fake and port == str(pl.ECHO_PORT)  # the reply comes from the fake IP
        doc = json.loads(plab.client.run(
            [sys.executable, "-m", "tunkit", "proxy", "status", "--json"]).stdout)
        udp = [f for f in doc["flows"] if f["proto"] == "udp"]
        assert udp and udp[0]["domain"] == "echo.test" and udp[0]["upstream"] == "default"
        assert udp[0]["bytes_up"] == len("ping-through-dante")
        assert udp[0]["bytes_down"] == len("echo:ping-through-dante")
        assert doc["udp"]["sessions"] == 1
    finally:
        stop(proc)


def test_udp_direct_rule(plab: pl.ProxyLab) -> None:
    (plab.workdir / "udp_client.py").write_text(UDP_CLIENT)
    rules = plab.workdir / "rules.txt"
    rules.write_text("proto udp direct\n")
    proc = start(plab, "--rules", str(rules), "--udp-timeout", "1")
    try:
        fake = dig(plab, "echo.test")
        out = plab.client.run([sys.executable, str(plab.workdir / "udp_client.py"), fake,
                               str(pl.ECHO_PORT), "direct-udp"], check=False, timeout=20)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[:2] == ["echo:direct-udp", fake]

        def udp_status() -> dict[str, Any]:
            doc: dict[str, Any] = json.loads(plab.client.run(
                [sys.executable, "-m", "tunkit", "proxy", "status", "--json"]).stdout)
            return doc

        assert udp_status()["udp"]["created"] == 1
        # the idle session expires and its upstream socket and flow entry go with it
        doc = wait_for(lambda: (d := udp_status())["udp"]["expired"] == 1 and d, 5,
                       what="the idle UDP session to expire")
        assert doc["udp"]["sessions"] == 0
        assert not [f for f in doc["flows"] if f["proto"] == "udp"]
    finally:
        stop(proc)


SLOW_AND_FAST = r'''
import socket, sys, time
slow, fast, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
start = time.monotonic()
s.sendto(b"to-slow", (slow, port))  # its name takes 2 s to resolve
time.sleep(0.1)
s.sendto(b"to-fast", (fast, port))
for _ in range(2):
    data, addr = s.recvfrom(65535)
    print(data.decode(), addr[0], round(time.monotonic() - start, 2))
'''


def test_udp_direct_flow_does_not_wait_for_another_names_resolution(plab: pl.ProxyLab) -> None:
    (plab.workdir / "slow_and_fast.py").write_text(SLOW_AND_FAST)
    rules = plab.workdir / "rules.txt"
    rules.write_text("proto udp direct\n")
    proc = start(plab, "--rules", str(rules))
    try:
        slow, fast = dig(plab, "sluggish.echo.test"), dig(plab, "echo.test")
        out = plab.client.run([sys.executable, str(plab.workdir / "slow_and_fast.py"), slow, fast,
                               str(pl.ECHO_PORT)], check=False, timeout=20)
        assert out.returncode == 0, out.stderr
        (first, first_from, first_at), (second, second_from, second_at) = (
            line.split() for line in out.stdout.splitlines())
        # the fast name's echo comes back while the slow one is still being resolved
        assert (first, first_from) == ("echo:to-fast", fast) and float(first_at) < 1.5
        assert (second, second_from) == ("echo:to-slow", slow) and float(second_at) >= 1.9
    finally:
        stop(proc)


def test_reject_rule_fails_fast(plab: pl.ProxyLab) -> None:
    rules = plab.workdir / "rules.txt"
    rules.write_text("domain-keyword blocked reject\ncidr 198.18.0.0/15 default\n")
    proc = start(plab, "--rules", str(rules))
    try:
        got = curl(plab, "http://www.blocked.test/", "-w", "%{time_total}", timeout=10)
        assert got.returncode == 7, got.stderr  # couldn't connect: refused by our RST
        assert b"Couldn't connect" in got.stderr or b"refused" in got.stderr
        assert float(got.stdout) < 1.0  # curl's own clock: resolve + refused connect
        assert "blocked" not in socks_log(plab)
        assert curl(plab, "http://fine.test/").returncode == 0
    finally:
        stop(proc)


def test_direct_rule_bypasses_the_proxy(plab: pl.ProxyLab) -> None:
    rules = plab.workdir / "rules.txt"
    rules.write_text("domain-suffix direct.test direct\n")
    proc = start(plab, "--rules", str(rules))
    try:
        got = curl(plab, "http://www.direct.test/")
        assert got.returncode == 0, got.stderr
        assert b"hello from the web server" in got.stdout
        assert "direct.test" not in socks_log(plab)
        assert "www.direct.test. A" in plab.dns_log.read_text()  # resolved by the proxy
        assert curl(plab, "http://viasocks.test/").returncode == 0
        assert "viasocks.test" in socks_log(plab)
    finally:
        stop(proc)


def test_auto_route_captures_default_route_without_loop(plab: pl.ProxyLab) -> None:
    # The SOCKS server is reached through the default route only (10.77.2.1 is not on the
    # client's link), so an unmarked upstream socket would loop back into the TUN.
    proc = start(plab, "--auto-route", upstream=f"socks5://{pl.UPSTREAM_FAR_IP}:{pl.SOCKS_PORT}")
    try:
        got = curl(plab, f"http://{pl.SERVER_IP}/", nameserver=pl.SERVER_IP)
        assert got.returncode == 0, got.stderr
        assert f"connected to {pl.SERVER_IP}:80" in socks_log(plab)
        # DNS to any address on port 53 is hijacked into the fake-IP server.
        before = plab.dns_log.read_text()
        assert dig(plab, "hijacked.test", server=pl.SERVER_IP).startswith("198.18.")
        assert "hijacked.test" not in plab.dns_log.read_text()[len(before):]
        # even to a resolver on the directly connected network (no route through the TUN)
        assert dig(plab, "onlink.test", server=pl.UPSTREAM_IP).startswith("198.18.")
        got = curl(plab, "http://by-name.test/", nameserver=pl.SERVER_IP)
        assert got.returncode == 0, got.stderr
        assert "connected to by-name.test:80" in socks_log(plab)
        status = json.loads(plab.client.run(
            [sys.executable, "-m", "tunkit", "proxy", "status", "--json"]).stdout)
        assert status["counters"]["dns_hijacked"] >= 1
        assert status["counters"]["tcp_accepted"] >= 2
    finally:
        assert stop(proc) == 0


def test_restart_keeps_fake_ip_mapping(plab: pl.ProxyLab) -> None:
    proc = start(plab)
    first = dig(plab, "sticky.test")
    others = [dig(plab, f"n{i}.test") for i in range(3)]
    stop(proc)
    proc = start(plab)
    try:
        assert dig(plab, "sticky.test") == first
        assert [dig(plab, f"n{i}.test") for i in range(3)] == others
        # An app that cached the old fake IP (no DNS query now) still reaches the name.
        got = curl(plab, "http://sticky.test/", "--resolve", f"sticky.test:80:{first}")
        assert got.returncode == 0, got.stderr
        assert "connected to sticky.test:80" in socks_log(plab)
    finally:
        stop(proc)


def _host_state(plab: pl.ProxyLab) -> dict[str, Any]:
    rules = plab.client.run(["ip", "rule", "show"]).stdout
    routes = plab.client.run(["ip", "route", "show", "table", "7475"], check=False).stdout
    tables = plab.client.run(["nft", "list", "tables"]).stdout
    return {"rules": [ln for ln in rules.splitlines() if ln.startswith("900")],
            "routes": routes.strip(), "nft": "tunkit_proxy" in tables,
            "cgroups": sorted(p.name for p in (cgroup2_root() or Path("/nonexistent")).glob(
                "tunkit-proxy-*-tkp0"))}


def test_everything_removed_after_exit_and_after_sigkill(plab: pl.ProxyLab) -> None:
    clean = _host_state(plab)
    assert clean["rules"] == [] and not clean["nft"]
    proc = start(plab, "--auto-route")
    up = _host_state(plab)
    assert len(up["rules"]) == 4 and up["nft"] and "default dev tkp0" in up["routes"]
    assert len(up["cgroups"]) == 1
    assert stop(proc) == 0
    assert _host_state(plab) == clean

    proc = start(plab, "--auto-route")
    proc.kill()
    proc.wait()
    left = _host_state(plab)
    assert len(left["rules"]) == 4 and left["nft"]  # a SIGKILLed proxy cannot clean up
    proc = start(plab, "--auto-route", log_name="proxy2.log")
    assert "did not exit cleanly" in (plab.workdir / "proxy2.log").read_text()
    again = _host_state(plab)
    assert len(again["rules"]) == 4  # the stale ones were removed, ours added once
    assert stop(proc) == 0
    assert _host_state(plab) == clean


def test_cgroup_bypass_exec(plab: pl.ProxyLab) -> None:
    proc = start(plab, "--auto-route", upstream=f"socks5://{pl.UPSTREAM_FAR_IP}:{pl.SOCKS_PORT}")
    try:
        got = plab.client.run([sys.executable, "-m", "tunkit", "proxy", "exec", "--tun", "tkp0",
                               "--bypass", "--", "curl", "-sS", "-m", "5",
                               f"http://{pl.SERVER_IP}/"], check=False)
        assert got.returncode == 0, got.stderr
        assert "hello from the web server" in got.stdout
        assert pl.SERVER_IP not in socks_log(plab)  # went around the proxy
        got = curl(plab, f"http://{pl.SERVER_IP}/", nameserver=pl.SERVER_IP)
        assert got.returncode == 0
        assert f"connected to {pl.SERVER_IP}:80" in socks_log(plab)  # captured again
    finally:
        stop(proc)


def test_cgroup_bypass_masquerades_both_families(plab: pl.ProxyLab) -> None:
    """A bypassed socket's packet keeps the TUN source picked before the reroute; the nat
    chain rewrites it for IPv4 and, with --prefix6, for IPv6 too."""
    proc = start(plab, "--auto-route", "--prefix6", "fc00:18::/64")
    try:
        ruleset = plab.client.run(["nft", "list", "ruleset"]).stdout
        masquerades = [ln.strip() for ln in ruleset.splitlines() if "masquerade" in ln]
        assert any("ip saddr 198.18.0.0/15" in ln for ln in masquerades), ruleset
        assert any("ip6 saddr fc00:18::/64" in ln for ln in masquerades), ruleset
        assert all('oifname != "tkp0"' in ln for ln in masquerades), ruleset
    finally:
        stop(proc)
    assert "masquerade" not in plab.client.run(["nft", "list", "ruleset"]).stdout


def test_status_shows_live_flow(plab: pl.ProxyLab) -> None:
    proc = start(plab)
    try:
        slow = plab.client.popen(pl.private_resolv(
            ["curl", "-sS", "-o", "/dev/null", "--limit-rate", "2M", "http://slow.test/big.bin"],
            plab.client_resolv("198.18.0.1")))

        def live_flow() -> dict[str, Any] | None:
            doc = json.loads(plab.client.run(
                [sys.executable, "-m", "tunkit", "proxy", "status", "--json"]).stdout)
            flows = [f for f in doc["flows"] if f["domain"] == "slow.test"]
            return flows[0] if flows and flows[0]["bytes_down"] > 0 else None

        flow = wait_for(live_flow, 10, what="a live flow in the status")
        assert flow["upstream"] == "default"
        assert flow["destination"].startswith("198.18.") and flow["destination"].endswith(":80")
        assert flow["source"].startswith("198.18.0.1:")
        text = plab.client.run([sys.executable, "-m", "tunkit", "proxy", "status"]).stdout
        assert "slow.test" in text and "nat: live=" in text and "pool: size=" in text
        slow.kill()
        slow.wait()
    finally:
        stop(proc)


def test_listener_rejects_unmapped_and_stale_packets(plab: pl.ProxyLab) -> None:
    """A fake IP nobody resolved gets an immediate RST, not a hang."""
    proc = start(plab)
    try:
        started = time.monotonic()
        got = plab.client.run(["curl", "-sS", "-m", "5", "http://198.18.200.200/"], check=False)
        assert got.returncode == 7
        assert time.monotonic() - started < 2
    finally:
        stop(proc)


def test_socket_cleanup_tun_gone(plab: pl.ProxyLab) -> None:
    proc = start(plab)
    assert "tkp0" in plab.client.links()
    stop(proc)
    assert "tkp0" not in plab.client.links()


def test_socks5_user_password(plab: pl.ProxyLab) -> None:
    url = f"socks5://{pl.SOCKS_USER}:{pl.SOCKS_PASSWORD}@{pl.UPSTREAM_IP}:{pl.SOCKS_AUTH_PORT}"
    proc = start(plab, upstream=url)
    try:
        got = curl(plab, "http://authed.test/")
        assert got.returncode == 0, got.stderr
        assert "connected to authed.test:80" in socks_log(plab)
    finally:
        stop(proc)
    # A wrong password resets the application's connection instead of hanging it.
    bad = f"socks5://{pl.SOCKS_USER}:wrong@{pl.UPSTREAM_IP}:{pl.SOCKS_AUTH_PORT}"
    proc = start(plab, upstream=bad)
    try:
        started = time.monotonic()
        got = curl(plab, "http://denied.test/")
        # The reset reaches curl as an empty reply or a reset read (52, 56), or, when it
        # comes within curl's own connect check, as "couldn't connect" (7): never a hang.
        assert got.returncode in (7, 52, 56), got.stderr
        assert time.monotonic() - started < 3
        assert ":wrong@" not in (plab.workdir / "proxy.log").read_text()  # never log secrets
    finally:
        stop(proc)


def test_http_connect_upstream_and_named_upstreams(plab: pl.ProxyLab) -> None:
    rules = plab.workdir / "rules.txt"
    rules.write_text(
        f"upstream web http://{pl.UPSTREAM_IP}:{pl.HTTP_PROXY_PORT}\n"
        f"upstream socks socks5://{pl.UPSTREAM_IP}:{pl.SOCKS_PORT}\n"
        "domain-suffix viahttp.test web\n"
        "final socks\n")
    proc = start(plab, "--rules", str(rules), upstream="reject")
    try:
        got = curl(plab, "http://www.viahttp.test/")
        assert got.returncode == 0, got.stderr
        assert b"hello from the web server" in got.stdout
        log = (plab.workdir / "http_proxy.log").read_text()
        assert "CONNECT www.viahttp.test:80 HTTP/1.1" in log
        got = curl(plab, "http://other.test/")
        assert got.returncode == 0, got.stderr
        assert "connected to other.test:80" in socks_log(plab)
        assert "other.test" not in (plab.workdir / "http_proxy.log").read_text()
    finally:
        stop(proc)


def test_ipv6_fake_ips(plab: pl.ProxyLab) -> None:
    proc = start(plab, "--prefix6", "fc00:18::/64")
    try:
        fake6 = plab.client.run(["dig", "+short", "AAAA", "@198.18.0.1", "six.test"]).stdout.strip()
        assert fake6.startswith("fc00:18::"), fake6
        got = curl(plab, "http://six.test/", "-6")
        assert got.returncode == 0, got.stderr
        assert b"hello from the web server" in got.stdout
        assert "connected to six.test:80" in socks_log(plab)
    finally:
        stop(proc)
