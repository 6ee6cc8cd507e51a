"""tunkit-wg against the real WireGuard tools in lab namespaces: wireguard-go as the peer,
`wg` as the control tool. Data plane, roaming, restarts, UAPI changes, security properties."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from pathlib import Path

import pytest
from wg_support import WgNode, iperf3, new_node, tool_env, wait_ping

from tunkit.lab import Lab, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

for _tool in ("wg", "wireguard-go", "iperf3", "ping"):
    if not any(os.access(os.path.join(d, _tool), os.X_OK)
               for d in tool_env()["PATH"].split(":")):
        pytest.fail(f"{_tool} is not installed")

A_V4, B_V4 = "192.168.71.1", "192.168.71.2"
A_V6, B_V6 = "fd71::1", "fd71::2"


@pytest.fixture
def lab():
    with Lab("tkwg") as lab:
        yield lab


def _pair(lab: Lab, tmp: Path, impl_a: str, impl_b: str, *, outer_v6: bool = False,
          endpoints: str = "both") -> tuple[WgNode, WgNode]:
    ha, hb = lab.add_host("a"), lab.add_host("b")
    lab.link(ha, hb, f"{A_V4}/24", f"{B_V4}/24", v6=(f"{A_V6}/64", f"{B_V6}/64"))
    a = new_node(lab, ha, impl_a, 1, port=51001)
    b = new_node(lab, hb, impl_b, 2, port=51002)
    a.start(tmp)
    b.start(tmp)
    host_a, host_b = (f"[{A_V6}]", f"[{B_V6}]") if outer_v6 else (A_V4, B_V4)
    a.add_peer(b, endpoint=f"{host_b}:{b.listen_port}" if endpoints in ("both", "a") else None)
    b.add_peer(a, endpoint=f"{host_a}:{a.listen_port}" if endpoints in ("both", "b") else None)
    return a, b


def _ip(node: WgNode, v6: bool = False) -> str:
    return (node.tunnel_v6 if v6 else node.tunnel_v4).split("/")[0]


# ------------------------------------------------------------------------- interop
@pytest.mark.parametrize("initiator", ["tunkit", "wireguard-go"])
def test_interop_with_wireguard_go(lab, tmp_path, initiator):
    """Only the initiator knows the other's endpoint, so it must start the handshake."""
    tk_first = initiator == "tunkit"
    a, b = _pair(lab, tmp_path, "tunkit", "wireguard-go", endpoints="a" if tk_first else "b")
    first, second = (a, b) if tk_first else (b, a)
    wait_ping(first, _ip(second))
    a.ping(_ip(b, v6=True), count=3)
    b.ping(_ip(a), count=3)
    b.ping(_ip(a, v6=True), count=3)
    assert a.latest_handshake(b) > time.time() - 60
    assert b.latest_handshake(a) > time.time() - 60
    # the responder learnt the initiator's endpoint from the handshake
    ep = second.show("endpoints").split("\t")[1].strip()
    assert ep == f"{A_V4 if tk_first else B_V4}:{first.listen_port}"
    forward = iperf3(a, b, _ip(b), seconds=2)
    backward = iperf3(a, b, _ip(b), seconds=2, reverse=True)
    assert forward > 0.01 and backward > 0.01, (forward, backward)
    rx_a, tx_a = a.transfer()[b.public_key]
    rx_b, tx_b = b.transfer()[a.public_key]
    assert min(rx_a, tx_a, rx_b, tx_b) > 1_000_000


def test_tunkit_to_tunkit_over_ipv6_outer(lab, tmp_path):
    a, b = _pair(lab, tmp_path, "tunkit", "tunkit", outer_v6=True)
    wait_ping(a, _ip(b))
    b.ping(_ip(a, v6=True))
    assert b.show("endpoints").split("\t")[1].strip() == f"[{A_V6}]:{a.listen_port}"
    assert iperf3(a, b, _ip(b, v6=True), seconds=2) > 0.01


def test_exact_counters_after_pings(lab, tmp_path):
    """After the handshake, N pings of S bytes cost exactly N * (32 + pad16(S + 28)) each way."""
    a, b = _pair(lab, tmp_path, "tunkit", "wireguard-go")
    wait_ping(a, _ip(b))
    time.sleep(0.5)
    rx0, tx0 = a.transfer()[b.public_key]
    a.run("ping", "-c", "5", "-i", "0.2", "-s", "100", _ip(b))
    rx1, tx1 = a.transfer()[b.public_key]
    per_packet = 32 + ((100 + 8 + 20 + 15) // 16) * 16
    assert (tx1 - tx0, rx1 - rx0) == (5 * per_packet, 5 * per_packet)


def test_hub_forwards_between_spokes(lab, tmp_path):
    hub_host, s1_host, s2_host = lab.add_host("hub"), lab.add_host("s1"), lab.add_host("s2")
    lab.link(hub_host, s1_host, "192.168.72.1/24", "192.168.72.2/24")
    lab.link(hub_host, s2_host, "192.168.73.1/24", "192.168.73.2/24")
    hub_host.enable_forwarding()
    hub = new_node(lab, hub_host, "tunkit", 1, port=51010)
    s1 = new_node(lab, s1_host, "tunkit", 2, port=51011)
    s2 = new_node(lab, s2_host, "wireguard-go", 3, port=51012)
    for node in (hub, s1, s2):
        node.start(tmp_path)
    hub.add_peer(s1, endpoint=None)
    hub.add_peer(s2, endpoint=None)
    s1.add_peer(hub, endpoint=f"192.168.72.1:{hub.listen_port}",
                allowed="10.77.0.0/24,fd77::/64", keepalive=1)
    s2.add_peer(hub, endpoint=f"192.168.73.1:{hub.listen_port}",
                allowed="10.77.0.0/24,fd77::/64", keepalive=1)
    wait_ping(s1, _ip(s2), timeout=20)
    s2.ping(_ip(s1, v6=True))
    endpoints = dict(line.split("\t") for line in hub.show("endpoints").splitlines())
    assert endpoints == {s1.public_key: f"192.168.72.2:{s1.listen_port}",
                         s2.public_key: f"192.168.73.2:{s2.listen_port}"}


# ------------------------------------------------------------------------- dynamics
@pytest.mark.parametrize("mover", ["wireguard-go", "tunkit"])
def test_roaming_endpoint_follows(lab, tmp_path, mover):
    """The client moves to a new address and port; the server's endpoint follows it."""
    server_impl = "tunkit" if mover == "wireguard-go" else "wireguard-go"
    server, client = _pair(lab, tmp_path, server_impl, mover, endpoints="b")
    wait_ping(client, _ip(server))
    assert server.show("endpoints").split("\t")[1].strip() == f"{B_V4}:{client.listen_port}"
    # (delete first: removing a subnet's primary address also removes its secondaries)
    client.ip("address", "del", f"{B_V4}/24", "dev", "eth0")
    client.ip("address", "add", "192.168.71.3/24", "dev", "eth0")
    client.wg("set", client.ifname, "listen-port", "51099")
    client.ping(_ip(server), count=3)
    wait_for(lambda: server.show("endpoints").split("\t")[1].strip() == "192.168.71.3:51099",
             5, what="endpoint update")
    server.ping(_ip(client), count=2)


@pytest.mark.parametrize("restarted", ["tunkit", "wireguard-go"])
def test_peer_restart_handshakes_again(lab, tmp_path, restarted):
    a, b = _pair(lab, tmp_path, "tunkit", "wireguard-go")
    wait_ping(a, _ip(b))
    node, other = (a, b) if restarted == "tunkit" else (b, a)
    node.stop(9)
    sock = Path(node.sock)
    if sock.exists():
        sock.unlink()  # SIGKILL leaves the socket behind, like it does for wireguard-go
    wait_for(lambda: node.ifname not in node.run("ip", "-o", "link"), 5, what="tun gone")
    node.start(tmp_path)
    node.add_peer(other, endpoint=f"{B_V4 if node is a else A_V4}:{other.listen_port}")
    started = time.monotonic()
    wait_ping(node, _ip(other), timeout=10)
    assert time.monotonic() - started < 5.5
    assert node.latest_handshake(other) > 0


def test_wg_set_new_allowed_ip_takes_effect(lab, tmp_path):
    a, b = _pair(lab, tmp_path, "tunkit", "wireguard-go")
    wait_ping(a, _ip(b))
    b.ip("address", "add", "10.88.0.1/32", "dev", b.ifname)
    a.ip("route", "add", "10.88.0.1/32", "dev", a.ifname)
    assert a.host.run(["ping", "-c", "1", "-W", "1", "10.88.0.1"], check=False).returncode != 0
    a.wg("set", a.ifname, "peer", b.public_key, "allowed-ips",
         f"{_ip(b)}/32,{_ip(b, True)}/128,10.88.0.1/32")
    a.ping("10.88.0.1", count=2)
    assert "10.88.0.1/32" in a.show("allowed-ips")


def test_showconf_round_trips_through_setconf(lab, tmp_path):
    a, b = _pair(lab, tmp_path, "tunkit", "wireguard-go")
    from tunkit.wireguard.keys import encode_key, generate_preshared_key

    psk = tmp_path / "psk"
    psk.write_text(encode_key(generate_preshared_key()) + "\n")
    a.wg("set", a.ifname, "fwmark", "0x1234", "peer", b.public_key, "persistent-keepalive",
         "25", "preshared-key", str(psk))
    conf = a.wg("showconf", a.ifname)
    path = tmp_path / "a.conf"
    path.write_text(conf)
    a.wg("setconf", a.ifname, str(path))
    assert a.wg("showconf", a.ifname) == conf
    assert f"ListenPort = {a.listen_port}" in conf and "FwMark = 0x1234" in conf
    assert "PresharedKey = " + psk.read_text().strip() in conf
    assert "PersistentKeepalive = 25" in conf


def test_syncconf_removes_and_adds_peers(lab, tmp_path):
    a, b = _pair(lab, tmp_path, "tunkit", "wireguard-go")
    conf = a.wg("showconf", a.ifname)
    extra = "[Peer]\nPublicKey = " + new_node(lab, a.host, "tunkit", 9, port=1).public_key + (
        "\nAllowedIPs = 10.99.0.0/16\n"
    )
    path = tmp_path / "sync.conf"
    path.write_text(conf + "\n" + extra)
    a.wg("syncconf", a.ifname, str(path))
    assert len(a.show("peers").split()) == 2
    path.write_text(conf)
    a.wg("syncconf", a.ifname, str(path))
    assert a.show("peers").split() == [b.public_key]


def test_daemon_exits_when_device_or_socket_removed(lab, tmp_path):
    a, b = _pair(lab, tmp_path, "tunkit", "tunkit")
    a.ip("link", "del", a.ifname)
    a.proc.wait(5)
    assert not Path(a.sock).exists()
    Path(b.sock).unlink()
    b.proc.wait(5)
    assert b.ifname not in b.run("ip", "-o", "link")


def test_daemonized_start_returns_after_socket_exists(lab, tmp_path):
    host = lab.add_host("d")
    node = new_node(lab, host, "tunkit", 1, port=1)
    proc = host.run(["tunkit-wg", node.ifname], env=tool_env(), check=False)
    try:
        assert proc.returncode == 0, proc.stderr
        assert Path(node.sock).exists()  # immediately, no polling
        assert node.ifname in node.run("wg", "show", "interfaces")
    finally:
        node.run("ip", "link", "del", node.ifname, check=False)
        wait_for(lambda: not Path(node.sock).exists(), 5, what="daemon exit")


# ------------------------------------------------------------------------- security
def _icmp_in_echos(node: WgNode) -> int:
    def read() -> int:
        lines = Path("/proc/net/snmp").read_text().splitlines()
        head = next(i for i, line in enumerate(lines) if line.startswith("Icmp:"))
        keys, values = lines[head].split(), lines[head + 1].split()
        return int(values[keys.index("InEchos")])
    return node.host.call(read)


def test_replayed_data_packet_is_rejected(lab, tmp_path):
    a, b = _pair(lab, tmp_path, "wireguard-go", "tunkit")
    wait_ping(a, _ip(b))
    with b.host.inside():
        sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        sniffer.bind(("eth0", 0))
    sniffer.settimeout(0.2)
    a.run("ping", "-c", "2", "-i", "0.2", _ip(b))
    captured = None
    deadline = time.monotonic() + 5
    while captured is None and time.monotonic() < deadline:
        try:
            frame, info = sniffer.recvfrom(65535)
        except TimeoutError:
            continue
        ip = frame[14:]
        if info[2] == socket.PACKET_HOST and ip[9] == 17:
            ihl = (ip[0] & 15) * 4
            dport = int.from_bytes(ip[ihl + 2: ihl + 4], "big")
            payload = ip[ihl + 8:]
            if dport == b.listen_port and payload[:1] == b"\x04" and len(payload) > 32:
                captured = frame
    sniffer.close()
    assert captured is not None, "no data packet captured"
    time.sleep(0.5)
    rx_before = b.transfer()[a.public_key][0]
    echos_before = _icmp_in_echos(b)
    with a.host.inside():
        injector = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        injector.bind(("eth0", 0))
    for _ in range(5):
        injector.send(captured)
    injector.close()
    time.sleep(0.5)
    assert b.transfer()[a.public_key][0] == rx_before
    assert _icmp_in_echos(b) == echos_before
    a.ping(_ip(b), count=1)  # the tunnel still works


def test_inner_source_outside_allowed_ips_is_dropped(lab, tmp_path):
    a, b = _pair(lab, tmp_path, "tunkit", "wireguard-go")
    wait_ping(b, _ip(a))
    b.ip("address", "add", "10.99.0.1/32", "dev", b.ifname)
    echos = _icmp_in_echos(a)
    b.run("ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.99.0.1", _ip(a), check=False)
    assert _icmp_in_echos(a) == echos
    b.ping(_ip(a), count=1)
    assert _icmp_in_echos(a) == echos + 1


def test_garbage_datagrams_are_dropped_and_counted(lab, tmp_path):
    a, b = _pair(lab, tmp_path, "tunkit", "wireguard-go")
    wait_ping(b, _ip(a))
    rng = random.Random(4)
    with b.host.inside():
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    shapes = [b"", b"\x01", b"\x04" + bytes(40), b"\x01" + bytes(147), b"\x02" + bytes(91),
              b"\x03" + bytes(63), b"\x05" + bytes(100)]
    shapes += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200))) for _ in range(200)]
    for data in shapes:
        sender.sendto(data, (A_V4, a.listen_port))
    sender.close()
    time.sleep(0.5)
    assert a.proc.poll() is None
    b.ping(_ip(a), count=2)
    assert a.show("peers").strip() == b.public_key
    # every datagram was counted as a drop of some kind (SIGUSR1 logs the counters)
    a.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: "stats:" in a.log(), 5, what="stats in the log")
    stats = dict(item.split("=") for item in a.log().split("stats: ")[-1].split()[:40]
                 if "=" in item)
    drops = sum(int(stats.get(f"core_{k}", 0)) for k in (
        "malformed", "bad_mac1", "unknown_index", "handshake_rejected", "decrypt_failed",
        "replayed", "expired_keypair", "invalid_inner_packet"))
    assert drops >= len(shapes) - 5, stats


def test_bad_uapi_input_gets_errno_and_daemon_keeps_serving(lab, tmp_path):
    from tunkit.services.uapi_server import uapi_call

    a, b = _pair(lab, tmp_path, "tunkit", "wireguard-go")
    bad = [
        "set=1\nprivate_key=xyz\n\n",
        "set=1\nlisten_port=99999\n\n",
        "set=1\npublic_key=" + "0" * 63 + "\n\n",
        "set=1\npublic_key=" + "1" * 64 + "\nallowed_ip=10.0.0.0/33\n\n",
        "set=1\npublic_key=" + "1" * 64 + "\nendpoint=host.example:1\n\n",
        "set=1\nwhat=ever\n\n",
        "get=1\nget=1\n\n",
    ]
    for request in bad:
        reply = uapi_call(a.ifname, request)
        assert reply.startswith("errno=") and reply != "errno=0\n\n", (request, reply)
    with a.host.inside():
        squatter = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        squatter.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        squatter.bind(("::", 0))
    try:
        taken = squatter.getsockname()[1]
        assert uapi_call(a.ifname, f"set=1\nlisten_port={taken}\n\n") == "errno=-98\n\n"
    finally:
        squatter.close()
    assert a.run("wg", "set", a.ifname, "peer", "not-base64", check=False) == ""
    garbage = socket.socket(socket.AF_UNIX)
    garbage.connect(a.sock)
    garbage.sendall(os.urandom(5000))
    garbage.close()
    # still serving, still configured, still forwarding
    assert a.show("peers").split() == [b.public_key]
    assert a.show("listen-port").strip() == str(a.listen_port)
    wait_ping(a, _ip(b))


def test_big_inner_mtu_works_both_ways(lab, tmp_path):
    """netns.sh: a ~34 KB inner MTU; the outer UDP datagrams are IP-fragmented on the veth."""
    a, b = _pair(lab, tmp_path, "tunkit", "wireguard-go")
    for node in (a, b):
        node.ip("link", "set", node.ifname, "mtu", "34000")
    wait_ping(a, _ip(b))
    a.run("ping", "-c", "2", "-i", "0.2", "-s", "30000", "-M", "do", _ip(b))
    b.run("ping", "-c", "2", "-i", "0.2", "-s", "30000", "-M", "do", _ip(a))
    # many big packets in one batch must not turn GSO off (the kernel refuses GSO segments
    # larger than the path MTU with EINVAL)
    a.run("ping", "-c", "20", "-i", "0.01", "-s", "20000", _ip(b))
    assert iperf3(a, b, _ip(b), seconds=1) > 0.005


def test_persistent_keepalive_sends_keepalives(lab, tmp_path):
    a, b = _pair(lab, tmp_path, "tunkit", "wireguard-go")
    wait_ping(a, _ip(b))
    a.wg("set", a.ifname, "peer", b.public_key, "persistent-keepalive", "1")
    time.sleep(1.2)
    rx0 = b.transfer()[a.public_key][0]
    time.sleep(3.1)
    rx1 = b.transfer()[a.public_key][0]
    # one 32-byte keepalive per second, nothing else is flowing
    assert (rx1 - rx0) % 32 == 0 and 2 * 32 <= rx1 - rx0 <= 5 * 32, rx1 - rx0
    assert a.show("persistent-keepalive").split("\t")[1].strip() == "1"


def test_private_key_change_then_immediate_new_handshake(lab, tmp_path):
    from tunkit.wireguard.keys import encode_key, generate_private_key, public_key_from_private

    a, b = _pair(lab, tmp_path, "tunkit", "wireguard-go")
    wait_ping(a, _ip(b))
    old_public = a.public_key
    a.private_key = generate_private_key()
    keyfile = tmp_path / "new.key"
    keyfile.write_text(encode_key(a.private_key) + "\n")
    a.wg("set", a.ifname, "private-key", str(keyfile))
    assert a.show("public-key").strip() == encode_key(public_key_from_private(a.private_key))
    b.wg("set", b.ifname, "peer", old_public, "remove")
    b.add_peer(a, endpoint=None)
    started = time.monotonic()
    wait_ping(a, _ip(b), timeout=10)
    assert time.monotonic() - started < 5  # a new handshake at once, not after REKEY_TIMEOUT
    assert b.latest_handshake(a) > 0


def test_routing_loop_through_the_tunnel_is_bounded(lab, tmp_path):
    """The peer's endpoint routed into the tunnel itself: packets grow until they no longer
    fit the MTU and are dropped; the daemon survives and traffic stops."""
    a, b = _pair(lab, tmp_path, "tunkit", "wireguard-go")
    wait_ping(a, _ip(b))
    a.wg("set", a.ifname, "peer", b.public_key, "allowed-ips",
         f"{_ip(b)}/32,{B_V4}/32")
    a.ip("route", "add", f"{B_V4}/32", "dev", a.ifname)
    a.run("ping", "-c", "3", "-i", "0.2", "-W", "1", _ip(b), check=False)
    time.sleep(1)
    tx1 = a.transfer()[b.public_key][1]
    time.sleep(1)
    assert a.transfer()[b.public_key][1] == tx1  # no traffic of its own making
    assert a.proc.poll() is None
    a.ip("route", "del", f"{B_V4}/32", "dev", a.ifname)
    a.wg("set", a.ifname, "peer", b.public_key, "allowed-ips", f"{_ip(b)}/32")
    wait_ping(a, _ip(b))


def test_uapi_stress_many_peers_and_prefixes(lab, tmp_path):
    """Dozens of peers with thousands of allowed IPs through `wg setconf`, our own key as a
    peer (ignored), then `wg show` lists exactly what was set."""
    from tunkit.wireguard.keys import encode_key, generate_private_key, public_key_from_private

    a, _b = _pair(lab, tmp_path, "tunkit", "wireguard-go")
    own_public = a.public_key
    lines = ["[Interface]", f"PrivateKey = {encode_key(a.private_key)}",
             f"ListenPort = {a.listen_port}", ""]
    peers = []
    for p in range(40):
        public = encode_key(public_key_from_private(generate_private_key()))
        peers.append(public)
        prefixes = ", ".join(f"10.{100 + p}.{i // 256}.{i % 256}/32" for i in range(100))
        lines += ["[Peer]", f"PublicKey = {public}", f"AllowedIPs = {prefixes}, fd{p:02x}::/64",
                  f"Endpoint = 192.0.2.{p + 1}:{1000 + p}", ""]
    lines += ["[Peer]", f"PublicKey = {own_public}", "AllowedIPs = 10.250.0.0/16", ""]
    conf = tmp_path / "stress.conf"
    conf.write_text("\n".join(lines))
    started = time.monotonic()
    a.wg("setconf", a.ifname, str(conf))
    assert time.monotonic() - started < 10
    shown = a.show("allowed-ips").splitlines()
    assert sorted(line.split("\t")[0] for line in shown) == sorted(peers)
    assert sum(len(line.split("\t")[1].split()) for line in shown) == 40 * 101
    assert own_public not in a.show("peers")
    assert "10.250.0.0/16" not in a.show("allowed-ips")


def test_nat_with_persistent_keepalive(lab, tmp_path):
    """netns.sh: the client sits behind a masquerading router whose UDP conntrack entries
    expire after 2 s; a 1 s persistent keepalive keeps the mapping, so the server can still
    reach the client after an idle period longer than the timeout."""
    from tunkit.io.nft import NftTable

    client_host, router, server_host = lab.add_host("c"), lab.add_host("r"), lab.add_host("s")
    lab.link(client_host, router, "192.168.80.2/24", "192.168.80.1/24")
    lab.link(router, server_host, "192.168.81.1/24", "192.168.81.2/24")
    client_host.add_route("0.0.0.0/0", via="192.168.80.1")
    router.enable_forwarding()
    NftTable("ip", "tknat", netns=router.netns).apply(
        "  chain post { type nat hook postrouting priority 100; oifname \"eth1\" masquerade; }"
    )
    router.sysctl("net.netfilter.nf_conntrack_udp_timeout", "2")
    router.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", "2")
    client = new_node(lab, client_host, "tunkit", 1, port=51301)
    server = new_node(lab, server_host, "wireguard-go", 2, port=51302)
    client.start(tmp_path)
    server.start(tmp_path)
    server.add_peer(client, endpoint=None)
    client.add_peer(server, endpoint=f"192.168.81.2:{server.listen_port}", keepalive=1)
    wait_ping(client, _ip(server))
    endpoint = server.show("endpoints").split("\t")[1].strip()
    assert endpoint.startswith("192.168.81.1:"), endpoint  # the router's address: NATed
    time.sleep(4)  # twice the conntrack timeout, no traffic but keepalives
    server.ping(_ip(client), count=2)
