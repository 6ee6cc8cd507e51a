"""wg-quick with WG_QUICK_USERSPACE_IMPLEMENTATION=tunkit-wg, and our own `tunkit up/down`,
against a wireguard-go server: the tunnel works while up, and down leaves the namespace
exactly as before (links, routes, rules, nft). Also full-tunnel mode and crash cleanup."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from wg_support import WgNode, new_node, tool_env, unique_ifname, wait_ping

from tunkit.lab import Host, Lab, wait_for
from tunkit.wireguard.keys import encode_key, generate_private_key, public_key_from_private

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

CLIENT, SERVER = "192.168.74.1", "192.168.74.2"


@pytest.fixture
def lab():
    with Lab("tkwq") as lab:
        yield lab


def namespace_state(host: Host) -> dict[str, str]:
    """Everything `up` may touch, as text: links, routes and rules (v4, v6), nft ruleset."""
    def run(*argv: str) -> str:
        return host.run(list(argv), env=tool_env()).stdout

    return {
        "links": "\n".join(sorted(
            line.split(":")[1].strip() for line in run("ip", "-o", "link").splitlines()
        )),
        "routes4": run("ip", "-4", "route", "show", "table", "all"),
        "routes6": run("ip", "-6", "route", "show", "table", "all"),
        "rules4": run("ip", "-4", "rule"),
        "rules6": run("ip", "-6", "rule"),
        "nft": run("nft", "list", "ruleset"),
    }


def _setup(lab: Lab, tmp: Path, *, full_tunnel: bool = False, extra: str = "",
           ) -> tuple[Host, WgNode, Path, str]:
    client_host, server_host = lab.add_host("c"), lab.add_host("s")
    lab.link(client_host, server_host, f"{CLIENT}/24", f"{SERVER}/24",
             v6=("fd74::1/64", "fd74::2/64"))
    server = new_node(lab, server_host, "wireguard-go", 2, port=51202)
    server.start(tmp)
    client_key = generate_private_key()
    client_pub = encode_key(public_key_from_private(client_key))
    server.wg("set", server.ifname, "peer", client_pub, "allowed-ips", "10.77.0.1/32,fd77::1/128")
    # something beyond the server, reachable only through the tunnel in full-tunnel mode
    server.ip("address", "add", "203.0.113.1/32", "dev", "lo")
    ifname = unique_ifname("tkq")
    allowed = "0.0.0.0/0, ::/0" if full_tunnel else "10.77.0.2/32, fd77::2/128, 203.0.113.1/32"
    config = tmp / f"{ifname}.conf"
    config.write_text(
        "[Interface]\n"
        f"PrivateKey = {encode_key(client_key)}\n"
        "Address = 10.77.0.1/24, fd77::1/64\n"
        "ListenPort = 51201\n"
        f"{extra}"
        "\n[Peer]\n"
        f"PublicKey = {server.public_key}\n"
        f"Endpoint = {SERVER}:{server.listen_port}\n"
        f"AllowedIPs = {allowed}\n"
    )
    config.chmod(0o600)
    return client_host, server, config, ifname


def _wg_quick(host: Host, verb: str, config: Path) -> None:
    proc = host.run(["wg-quick", verb, str(config)], check=False, timeout=60,
                    env=tool_env(WG_QUICK_USERSPACE_IMPLEMENTATION="tunkit-wg"))
    assert proc.returncode == 0, f"wg-quick {verb}: {proc.stdout}\n{proc.stderr}"


def _tunkit(host: Host, verb: str, config: Path, **env: str) -> None:
    proc = host.run([sys.executable, "-m", "tunkit", verb, str(config)], check=False,
                    timeout=60, env=tool_env(**env))
    assert proc.returncode == 0, f"tunkit {verb}: {proc.stdout}\n{proc.stderr}"


def _client_view(host: Host, ifname: str) -> WgNode:
    node = WgNode(host=host, impl="tunkit", ifname=ifname, private_key=b"\0" * 32,
                  listen_port=51201, tunnel_v4="10.77.0.1/24", tunnel_v6="fd77::1/64")
    return node


def _check_tunnel(host: Host, server: WgNode, ifname: str, *, via_tunnel: bool) -> None:
    client = _client_view(host, ifname)
    wait_ping(client, "10.77.0.2")
    client.ping("fd77::2", count=2)
    client.ping("203.0.113.1", count=2)
    route = host.run(["ip", "route", "get", "203.0.113.1"]).stdout
    assert (f"dev {ifname}" in route) == via_tunnel or not via_tunnel, route
    assert client.latest_handshake(server) > 0


@pytest.mark.parametrize("tool", ["wg-quick", "tunkit"])
@pytest.mark.parametrize("full_tunnel", [False, True], ids=["split", "full"])
def test_up_down_leaves_namespace_as_before(lab, tmp_path, tool, full_tunnel):
    host, server, config, ifname = _setup(lab, tmp_path, full_tunnel=full_tunnel)
    before = namespace_state(host)
    up = _wg_quick if tool == "wg-quick" else _tunkit
    up(host, "up", config)
    try:
        during = namespace_state(host)
        assert ifname in during["links"]
        if full_tunnel:
            assert "not from all fwmark 0xca6c lookup 51820" in during["rules4"]
            assert "lookup main suppress_prefixlength 0" in during["rules4"]
            assert "lookup 51820" in during["rules6"]
            assert f"default dev {ifname} table 51820" in during["routes4"]
            # the default route of the client goes through the tunnel...
            route = host.run(["ip", "route", "get", "198.51.100.7"]).stdout
            assert f"dev {ifname}" in route, route
            # ...while the tunnel's own UDP, marked 51820, still goes to the server directly
            marked = host.run(["ip", "route", "get", SERVER, "mark", "51820"]).stdout
            assert "dev eth0" in marked, marked
            assert "fwmark: 0xca6c" in host.run(["wg", "show", ifname], env=tool_env()).stdout
        else:
            assert "10.77.0.2 dev" in during["routes4"] or "10.77.0.0/24 dev" in during["routes4"]
        client = _client_view(host, ifname)
        wait_ping(client, "10.77.0.2")
        client.ping("fd77::2", count=2)
        client.ping("203.0.113.1", count=2)
        assert client.latest_handshake(server) > 0
    finally:
        up(host, "down", config)
    after = namespace_state(host)
    assert after == before
    assert not Path(f"/var/run/wireguard/{ifname}.sock").exists()


def test_tunkit_up_dns_hooks_and_mtu(lab, tmp_path):
    marker = tmp_path / "hooks.log"
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    extra = (
        "DNS = 10.77.0.2, fd77::2, corp.example\n"
        f"PreUp = echo pre-up %i >> {marker}\n"
        f"PostUp = echo post-up %i >> {marker}\n"
        f"PreDown = echo pre-down %i >> {marker}\n"
        f"PostDown = echo post-down %i >> {marker}\n"
    )
    host, _server, config, ifname = _setup(lab, tmp_path, extra=extra)
    host.run(["ip", "link", "set", "eth0", "mtu", "1400"])
    before = namespace_state(host)
    _tunkit(host, "up", config, TUNKIT_RESOLV_CONF=str(resolv))
    try:
        assert resolv.read_text().splitlines()[1:] == [
            "nameserver 10.77.0.2", "nameserver fd77::2", "search corp.example"]
        mtu = host.run(["cat", f"/sys/class/net/{ifname}/mtu"], check=False).stdout.strip()
        link = host.run(["ip", "-o", "link", "show", ifname]).stdout
        assert " mtu 1320 " in link, (mtu, link)
        wait_ping(_client_view(host, ifname), "10.77.0.2")
    finally:
        _tunkit(host, "down", config, TUNKIT_RESOLV_CONF=str(resolv))
    assert resolv.read_text() == "nameserver 192.0.2.53\n"
    assert marker.read_text().split("\n") == [
        f"pre-up {ifname}", f"post-up {ifname}", f"pre-down {ifname}", f"post-down {ifname}", ""]
    assert namespace_state(host) == before


def test_tunkit_up_cleans_up_after_daemon_crash(lab, tmp_path):
    host, _server, config, ifname = _setup(lab, tmp_path, full_tunnel=True)
    before = namespace_state(host)
    _tunkit(host, "up", config)
    assert "lookup 51820" in namespace_state(host)["rules4"]
    state = Path(f"/run/tunkit/wg-{ifname}.json")
    assert state.exists()
    import json

    pid = json.loads(state.read_text())["daemon_pid"]
    assert pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not state.exists(), 10, what="crash cleanup")
    wait_for(lambda: namespace_state(host) == before, 5, what="namespace restored")
    assert not Path(f"/var/run/wireguard/{ifname}.sock").exists()


def test_tunkit_up_save_config_writes_running_state(lab, tmp_path):
    host, server, config, ifname = _setup(lab, tmp_path, extra="SaveConfig = true\n")
    _tunkit(host, "up", config)
    try:
        host.run(["wg", "set", ifname, "peer", server.public_key, "persistent-keepalive", "17"],
                 env=tool_env())
    finally:
        _tunkit(host, "down", config)
    text = config.read_text()
    assert "PersistentKeepalive = 17" in text
    assert "SaveConfig = true" in text and "Address = 10.77.0.1/24, fd77::1/64" in text
    time.sleep(0.1)


def test_tunkit_save_writes_running_state_without_save_config(lab, tmp_path):
    host, server, config, ifname = _setup(lab, tmp_path, extra="PostUp = true %i\n")
    _tunkit(host, "up", config)
    try:
        host.run(["wg", "set", ifname, "peer", server.public_key, "persistent-keepalive", "23",
                  "allowed-ips", "10.77.0.2/32,fd77::2/128,198.51.100.0/24"], env=tool_env())
        _tunkit(host, "save", config)
        saved = config.read_text()
    finally:
        _tunkit(host, "down", config)
    assert "PersistentKeepalive = 23" in saved and "198.51.100.0/24" in saved
    assert "PostUp = true %i" in saved and "Address = 10.77.0.1/24, fd77::1/64" in saved
    assert "SaveConfig" not in saved
    assert config.read_text() == saved  # no SaveConfig: down leaves the file alone
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    # saving an interface that is not up is one clear error
    proc = host.run([sys.executable, "-m", "tunkit", "save", str(config)], check=False,
                    env=tool_env())
    assert proc.returncode != 0
    assert proc.stderr.strip() == f"tunkit: error: {ifname} is not a WireGuard interface"


def test_tunkit_strip_matches_wg_quick_strip(lab, tmp_path):
    host, _server, config, _ifname = _setup(lab, tmp_path, extra="DNS = 10.77.0.2\nMTU = 1380\n")
    ours = host.run([sys.executable, "-m", "tunkit", "strip", str(config)], env=tool_env()).stdout
    theirs = host.run(["wg-quick", "strip", str(config)], env=tool_env()).stdout

    def keys(text: str) -> list[list[str]]:
        """Each section's lines, spaces dropped and sorted (we write keys in canonical
        order, wg-quick in the file's order)."""
        sections: list[list[str]] = []
        for line in text.splitlines():
            if line.startswith("["):
                sections.append([])
            if line.strip():
                sections[-1].append(line.replace(" ", ""))
        return [sorted(section) for section in sections]

    assert keys(ours) == keys(theirs)
    assert "Address" not in ours and "DNS" not in ours and "PrivateKey" in ours


@pytest.mark.parametrize("table", ["off", "1234"])
def test_tunkit_up_table_setting(lab, tmp_path, table):
    host, _server, config, ifname = _setup(lab, tmp_path, extra=f"Table = {table}\nFwMark = 0x99\n")
    before = namespace_state(host)
    _tunkit(host, "up", config)
    try:
        main = host.run(["ip", "-4", "route", "show", "dev", ifname]).stdout
        custom = host.run(["ip", "-4", "route", "show", "table", "1234"], check=False).stdout
        assert "10.77.0.2" not in main and "203.0.113.1" not in main
        if table == "off":
            assert custom == ""
        else:
            assert "10.77.0.2 dev" in custom and "203.0.113.1 dev" in custom
        assert "fwmark: 0x99" in host.run(["wg", "show", ifname], env=tool_env()).stdout
        assert "listening port: 51201" in host.run(["wg", "show", ifname], env=tool_env()).stdout
    finally:
        _tunkit(host, "down", config)
    assert namespace_state(host) == before


def test_tunkit_up_dns_stays_inside_the_namespace(lab, tmp_path):
    """Without TUNKIT_RESOLV_CONF, DNS= inside a named namespace goes to
    /etc/netns/NAME/resolv.conf (what `ip netns exec NAME` shows as /etc/resolv.conf), never
    to the host's /etc/resolv.conf; down removes it again."""
    host, _server, config, _ifname = _setup(lab, tmp_path, extra="DNS = 10.77.0.2\n")
    host_resolv = Path("/etc/resolv.conf").read_bytes()
    netns_dir = Path("/etc/netns") / host.netns
    etc_netns_existed = Path("/etc/netns").exists()
    env = {k: v for k, v in tool_env().items() if k != "TUNKIT_RESOLV_CONF"}
    proc = host.run([sys.executable, "-m", "tunkit", "up", str(config)], check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    try:
        assert (netns_dir / "resolv.conf").read_text().splitlines()[1:] == ["nameserver 10.77.0.2"]
        seen = host.run(["ip", "netns", "exec", host.netns, "cat", "/etc/resolv.conf"]).stdout
        assert "nameserver 10.77.0.2" in seen
        assert Path("/etc/resolv.conf").read_bytes() == host_resolv
    finally:
        host.run([sys.executable, "-m", "tunkit", "down", str(config)], env=env)
    assert not netns_dir.exists()
    assert Path("/etc/netns").exists() == etc_netns_existed
    assert Path("/etc/resolv.conf").read_bytes() == host_resolv
