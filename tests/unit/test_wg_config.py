"""tunkit.wireguard.config: wg-quick files, with file:line errors.

WG_SETCONF_BYTES is what the real `wg setconf` (wireguard-tools v1.0.20210914) sent over a UAPI
socket for SETCONF_FILE; to_uapi_set must send the same bytes.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.errors import ConfigError
from tunkit.wireguard.config import (
    InterfaceConfig,
    PeerConfig,
    WgQuickConfig,
    format_config,
    interface_name_for,
    parse_config,
    strip_config,
    to_set_request,
    to_uapi_set,
)
from tunkit.wireguard.keys import decode_key
from tunkit.wireguard.uapi import parse_set

A = ipaddress.ip_address
N = ipaddress.ip_network
I = ipaddress.ip_interface  # noqa: E741

PRIV = "V8o3xUv9LYOrAj+K9u+0vXaG8Rh5x59YWNscNBWEMRM="
PUB1 = "cLZmNpP8VCQOW6Sk1qufD6Yva6LlypcNJJmMNI3El3E="
PUB2 = "j0DFrbaPJWJK5bIU6nZ6bslNgp09e14a0bpvPiE4KF8="
PSK = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

SETCONF_FILE = f"""[Interface]
PrivateKey = {PRIV}
ListenPort = 51820
FwMark = 0x20
[Peer]
PublicKey = {PUB1}
PresharedKey = {PSK}
AllowedIPs = 10.0.0.2/32, 10.1.0.0/16, ::/0
Endpoint = 192.0.2.7:51820
PersistentKeepalive = 25
[Peer]
PublicKey = {PUB2}
Endpoint = [fd00::1]:9
"""

WG_SETCONF_BYTES = (
    "set=1\n"
    "private_key=57ca37c54bfd2d83ab023f8af6efb4bd7686f11879c79f5858db1c3415843113\n"
    "listen_port=51820\n"
    "fwmark=32\n"
    "replace_peers=true\n"
    "public_key=70b6663693fc54240e5ba4a4d6ab9f0fa62f6ba2e5ca970d24998c348dc49771\n"
    "preshared_key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
    "endpoint=192.0.2.7:51820\n"
    "persistent_keepalive_interval=25\n"
    "replace_allowed_ips=true\n"
    "allowed_ip=10.0.0.2/32\n"
    "allowed_ip=10.1.0.0/16\n"
    "allowed_ip=::/0\n"
    "public_key=8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f\n"
    "endpoint=[fd00::1]:9\n"
    "replace_allowed_ips=true\n"
    "\n"
)

FULL = f"""# a wg-quick file
[Interface]
PrivateKey = {PRIV}   # the key
Address = 10.0.0.1/24, fd00::1/64
address = 10.0.1.1
DNS = 1.1.1.1, fd00::53 example.com,corp.example
MTU = 1420
Table = off
PreUp = echo pre up
PostUp = iptables -A FORWARD -i %i -j ACCEPT; ip rule add fwmark=1 table 7
PostUp = echo second
PreDown = echo pre down
PostDown = echo post down
SaveConfig = True

[peer]
publickey = {PUB1}
AllowedIPs = 10.0.0.2/32
AllowedIPs = ::/0
Endpoint = vpn.example.com:51820
PersistentKeepalive = off
"""


def test_parse_full_config() -> None:
    cfg = parse_config(FULL)
    iface = cfg.interface
    assert iface.private_key == decode_key(PRIV)
    assert iface.addresses == [I("10.0.0.1/24"), I("fd00::1/64"), I("10.0.1.1/32")]
    assert iface.dns_servers == [A("1.1.1.1"), A("fd00::53")]
    assert iface.dns_search == ["example.com", "corp.example"]
    assert (iface.mtu, iface.table, iface.save_config) == (1420, "off", True)
    assert iface.pre_up == ["echo pre up"]
    assert iface.post_up == [
        "iptables -A FORWARD -i %i -j ACCEPT; ip rule add fwmark=1 table 7",
        "echo second",
    ]
    assert (iface.pre_down, iface.post_down) == (["echo pre down"], ["echo post down"])
    assert iface.listen_port is None and iface.fwmark is None
    (peer,) = cfg.peers
    assert peer.public_key == decode_key(PUB1)
    assert peer.allowed_ips == [N("10.0.0.2/32"), N("::/0")]
    assert peer.endpoint == ("vpn.example.com", 51820)
    assert peer.persistent_keepalive == 0


def test_values_and_single_keys() -> None:
    cfg = parse_config(
        f"[Interface]\nPrivateKey={PRIV}\nListenPort=1\nListenPort = 2\nFwMark = 1234\n"
        "Table = 1000\nMTU = 68\n"
        f"[Peer]\nPublicKey = {PUB1}\nAllowedIPs = 10.1.2.3/8, 10.9.9.9\nAllowedIPs =\n"
        "Endpoint = [fd00::1]:51820\nPersistentKeepalive = 25\n"
        f"[Peer]\nPublicKey = {PUB2}\nEndpoint = fd00::2:7\nPresharedKey = {PSK}\n"
    )
    assert cfg.interface.listen_port == 2  # last one wins, like wg
    assert (cfg.interface.fwmark, cfg.interface.table, cfg.interface.mtu) == (1234, 1000, 68)
    first, second = cfg.peers
    assert first.allowed_ips == [N("10.0.0.0/8"), N("10.9.9.9/32")]  # host bits masked
    assert first.endpoint == ("fd00::1", 51820) and first.persistent_keepalive == 25
    assert second.endpoint == ("fd00::2", 7) and second.preshared_key == decode_key(PSK)
    assert parse_config(f"[Interface]\nPrivateKey={PRIV}\nTable = main\n").interface.table == 254
    assert parse_config(f"[Interface]\nPrivateKey={PRIV}\nFwMark = off\n").interface.fwmark == 0


def test_wg_strips_whitespace_inside_its_values() -> None:
    cfg = parse_config(
        f"[Interface]\nPrivateKey = {PRIV[:10]} {PRIV[10:]}\n"
        f"[Peer]\nPublicKey={PUB1}\nAllowedIPs = 10.0.0.0 / 8 , fd00:: /8\n"
    )
    assert cfg.peers[0].allowed_ips == [N("10.0.0.0/8"), N("fd00::/8")]


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("[Interface]\nPrivateKey = {PRIV}\nListenPortt = 1\n", 3, "unknown key 'ListenPortt'"),
        ("[Interface]\nPrivateKey = abc\n", 2, "invalid key: 'abc' (expected 44 base64"),
        ("[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0.1/33\n", 3, "invalid Address"),
        ("[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0/24\n", 3, "invalid Address"),
        ("[Interface]\nPrivateKey = {PRIV}\nListenPort = 65536\n", 3, "invalid ListenPort"),
        ("[Interface]\nPrivateKey = {PRIV}\nListenPort = -1\n", 3, "invalid ListenPort"),
        ("[Interface]\nPrivateKey = {PRIV}\nMTU = 1e3\n", 3, "invalid MTU"),
        ("[Interface]\nPrivateKey = {PRIV}\nMTU = 70000\n", 3, "invalid MTU"),
        ("[Interface]\nPrivateKey = {PRIV}\nTable = mine\n", 3, "invalid Table"),
        ("[Interface]\nPrivateKey = {PRIV}\nSaveConfig = yes\n", 3, "neither true nor false"),
        ("[Interface]\nPrivateKey = {PRIV}\nFwMark = 0x1ffffffff\n", 3, "FwMark is neither"),
        ("[Interface]\nPrivateKey = {PRIV}\nDNS = 1.2.3.300\n", 3, "invalid DNS server"),
        (
            "[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nAllowedIPs = 10.0.0.0/33\n",
            5,
            "invalid AllowedIPs entry '10.0.0.0/33'",
        ),
        (
            "[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nAllowedIPs = 10.0.0.0/8,\n",
            5,
            "invalid AllowedIPs entry ''",
        ),  # wg rejects a trailing comma too
        (
            "[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nEndpoint = host\n",
            5,
            "unable to find port",
        ),
        (
            "[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nEndpoint = h:99999\n",
            5,
            "invalid Endpoint port",
        ),
        (
            "[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nEndpoint = [fd00::1:9\n",
            5,
            "matching brace",
        ),
        (
            "[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nEndpoint = [zz]:9\n",
            5,
            "invalid Endpoint address",
        ),
        (
            "[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nPersistentKeepalive = 65536\n",
            5,
            "PersistentKeepalive is neither",
        ),
        (
            "[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nAddress = 10.0.0.1\n",
            5,
            "unknown key 'Address' in [Peer]",
        ),
        (
            "[Interface]\nPrivateKey = {PRIV}\n\n# c\n[Peer]\nAllowedIPs = 10.0.0.0/8\n",
            5,
            "[Peer] without PublicKey",
        ),
        ("\n[Interface]\nListenPort = 5\n", 2, "missing PrivateKey"),
        ("PrivateKey = {PRIV}\n", 1, "outside of an [Interface] or [Peer] section"),
        ("[Interface]\nPrivateKey = {PRIV}\n[Peers]\n", 3, "unknown section"),
        ("[Interface]\nPrivateKey = {PRIV}\njust words\n", 3, "not 'Key = Value'"),
    ],
)
def test_errors_name_file_and_line(text: str, line: int, problem: str) -> None:
    text = text.replace("{PRIV}", PRIV).replace("{PUB1}", PUB1)
    with pytest.raises(ConfigError) as info:
        parse_config(text, filename="/etc/wireguard/wg7.conf")
    message = str(info.value)
    assert message.startswith(f"/etc/wireguard/wg7.conf:{line}: "), message
    assert problem in message, message


def test_missing_private_key_can_be_allowed() -> None:
    cfg = parse_config(
        "[Interface]\nPostUp = wg set %i private-key /k\n", require_private_key=False
    )
    assert cfg.interface.private_key is None
    assert "private_key=" + "00" * 32 in to_uapi_set(cfg)


def test_format_round_trip() -> None:
    cfg = parse_config(FULL)
    text = format_config(cfg)
    assert parse_config(text) == cfg
    assert format_config(parse_config(text)) == text


def test_format_is_canonical() -> None:
    assert format_config(parse_config(SETCONF_FILE)) == (
        f"[Interface]\nPrivateKey = {PRIV}\nListenPort = 51820\nFwMark = 0x20\n\n"
        f"[Peer]\nPublicKey = {PUB1}\nPresharedKey = {PSK}\n"
        "AllowedIPs = 10.0.0.2/32, 10.1.0.0/16, ::/0\nEndpoint = 192.0.2.7:51820\n"
        "PersistentKeepalive = 25\n\n"
        f"[Peer]\nPublicKey = {PUB2}\nEndpoint = [fd00::1]:9\n"
    )


def test_strip_keeps_only_setconf_keys() -> None:
    stripped = strip_config(parse_config(FULL))
    assert stripped == (
        f"[Interface]\nPrivateKey = {PRIV}\n\n"
        f"[Peer]\nPublicKey = {PUB1}\nAllowedIPs = 10.0.0.2/32, ::/0\n"
        "Endpoint = vpn.example.com:51820\nPersistentKeepalive = 0\n"
    )
    reparsed = parse_config(stripped)
    assert reparsed.peers == parse_config(FULL).peers
    assert reparsed.interface == InterfaceConfig(private_key=decode_key(PRIV))


def test_tunkit_strip_command_prints_the_stripped_file(tmp_path, capsys) -> None:
    from tunkit.cli import main

    path = tmp_path / "wg7.conf"
    path.write_text(FULL)
    assert main(["strip", str(path)]) == 0
    assert capsys.readouterr().out == strip_config(parse_config(FULL))
    assert main(["strip", str(tmp_path / "missing0.conf")]) != 0
    err = capsys.readouterr().err
    assert err.startswith("tunkit: error: cannot read") and err.count("\n") == 1


def test_to_uapi_set_matches_wg_setconf_bytes() -> None:
    assert to_uapi_set(parse_config(SETCONF_FILE)) == WG_SETCONF_BYTES


def test_hostname_endpoints_need_a_resolver() -> None:
    cfg = parse_config(FULL)
    with pytest.raises(ConfigError, match="needs resolving"):
        to_uapi_set(cfg)
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> tuple[ipaddress.IPv4Address, int]:
        calls.append((host, port))
        return A("198.51.100.4"), port  # type: ignore[return-value]

    req = to_set_request(cfg, resolve)
    assert calls == [("vpn.example.com", 51820)]
    assert req.peers[0].endpoint == (A("198.51.100.4"), 51820)
    assert parse_set(to_uapi_set(cfg, resolve).split("\n")[1:]) == req


@pytest.mark.parametrize(
    ("path", "name"),
    [("wg0.conf", "wg0"), ("/etc/wireguard/tk-a.b=c+d_e.conf", "tk-a.b=c+d_e")],
)
def test_interface_name_for(path: str, name: str) -> None:
    assert interface_name_for(path) == name


@pytest.mark.parametrize(
    "path", ["wg0", "wg0.cfg", "a-name-much-too-long.conf", "w g.conf", ".conf"]
)
def test_interface_name_for_rejects(path: str) -> None:
    with pytest.raises(ConfigError, match="valid interface name"):
        interface_name_for(path)


# ---- property tests -----------------------------------------------------------------------

_keys = st.binary(min_size=32, max_size=32)
_v4net = st.builds(
    lambda n, p: ipaddress.IPv4Network((n, p), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
_v6net = st.builds(
    lambda n, p: ipaddress.IPv6Network((n, p), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
_v4if = st.builds(
    lambda n, p: ipaddress.IPv4Interface((n, p)), st.integers(0, 2**32 - 1), st.integers(0, 32)
)
_v6if = st.builds(
    lambda n, p: ipaddress.IPv6Interface((n, p)), st.integers(0, 2**128 - 1), st.integers(0, 128)
)
_hostnames = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z0-9-]{1,8}){0,2}", fullmatch=True)
_endpoint_hosts = st.one_of(_hostnames, st.ip_addresses().map(str))
_command = st.text(
    st.characters(
        blacklist_characters="#\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
        blacklist_categories=["Cs"],
    ),
    max_size=30,
).map(str.strip)
_peers = st.builds(
    PeerConfig,
    public_key=_keys,
    preshared_key=st.none() | _keys,
    endpoint=st.none() | st.tuples(_endpoint_hosts, st.integers(0, 65535)),
    allowed_ips=st.lists(st.one_of(_v4net, _v6net), max_size=4),
    persistent_keepalive=st.none() | st.integers(0, 65535),
)
_interfaces = st.builds(
    InterfaceConfig,
    private_key=_keys,
    listen_port=st.none() | st.integers(0, 65535),
    fwmark=st.none() | st.integers(0, 2**32 - 1),
    addresses=st.lists(st.one_of(_v4if, _v6if), max_size=3),
    dns_servers=st.lists(st.ip_addresses(), max_size=2),
    dns_search=st.lists(
        _hostnames.filter(lambda h: not all(c in "0123456789." for c in h)), max_size=2
    ),
    mtu=st.none() | st.integers(68, 65535),
    table=st.sampled_from(["off", "auto"]) | st.integers(1, 2**32 - 1),
    pre_up=st.lists(_command, max_size=2),
    post_up=st.lists(_command, max_size=2),
    pre_down=st.lists(_command, max_size=2),
    post_down=st.lists(_command, max_size=2),
    save_config=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(st.builds(WgQuickConfig, interface=_interfaces, peers=st.lists(_peers, max_size=3)))
def test_format_parse_round_trip_property(cfg: WgQuickConfig) -> None:
    assert parse_config(format_config(cfg)) == cfg


_FUZZ_LINES = st.one_of(
    st.sampled_from(FULL.splitlines() + SETCONF_FILE.splitlines()),
    st.builds(
        lambda k, v: f"{k} = {v}",
        st.sampled_from(
            [
                "PrivateKey",
                "ListenPort",
                "FwMark",
                "Address",
                "DNS",
                "MTU",
                "Table",
                "PostUp",
                "SaveConfig",
                "PublicKey",
                "PresharedKey",
                "AllowedIPs",
                "Endpoint",
                "PersistentKeepalive",
                "[Peer]",
                "[Interface]",
            ]
        ),
        st.text(max_size=25),
    ),
    st.text(max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_FUZZ_LINES, max_size=25))
def test_parse_config_fuzz(lines: list[str]) -> None:
    try:
        cfg = parse_config("\n".join(lines), require_private_key=False)
    except ConfigError as err:
        assert str(err).startswith("wg0.conf")
        return
    try:
        text = format_config(cfg)
    except ConfigError:
        return  # a hook command that cannot be written back (contains '#')
    assert parse_config(text, require_private_key=False) == cfg
