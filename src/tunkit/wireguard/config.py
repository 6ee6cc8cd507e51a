"""wg-quick configuration files (``wg0.conf``): parse, format, strip, and turn into UAPI ``set=1``.

What it promises:

* ``parse_config(text, filename)`` reads the INI dialect of wg-quick(8) and wg(8): sections
  ``[Interface]`` / ``[Peer]`` and keys are case-insensitive, ``#`` starts a comment anywhere,
  list values are comma-separated, and list keys (Address, DNS, AllowedIPs, PreUp, ...) may repeat
  and accumulate; a repeated single-valued key keeps its last value, as wg does. The keys that
  ``wg setconf`` parses have all whitespace removed from their value (as wg does); hook commands
  keep their inner spaces. Every problem raises ``ConfigError("file:line: problem")``.
* ``format_config(cfg)`` writes a file that parses back to an equal ``WgQuickConfig``.
* ``strip_config(cfg)`` is ``wg-quick strip``: only the keys ``wg setconf`` accepts.
* ``to_set_request`` / ``to_uapi_set`` build what ``wg setconf`` would send to the daemon
  (replace_peers, private key, port and mark always set). Endpoint host names are kept as
  written; turning them into addresses is I/O, so the caller passes a ``resolve`` function.
* Pure: no file or network access; the caller reads the file.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from tunkit.errors import ConfigError
from tunkit.wireguard.allowedips import IPAddress, IPNetwork, parse_prefix
from tunkit.wireguard.keys import KEY_LEN, decode_key, encode_key
from tunkit.wireguard.uapi import (
    Endpoint,
    InterfaceChanges,
    PeerChanges,
    SetRequest,
    format_set_request,
    parse_port,
    split_host_port,
)

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Table = Literal["off", "auto"] | int
Resolver = Callable[[str, int], Endpoint]
"""Turns an endpoint (host, port) into a numeric endpoint; does I/O, so it is injected."""

MIN_MTU = 68
MAX_MTU = 65535
_TABLE_NAMES = {"default": 253, "main": 254, "local": 255}
_INTERFACE_NAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")
_DIGITS = frozenset("0123456789")


@dataclass(slots=True)
class InterfaceConfig:
    """The ``[Interface]`` section."""

    private_key: bytes | None = field(default=None, repr=False)
    listen_port: int | None = None
    fwmark: int | None = None
    """0 means off."""
    addresses: list[IPInterface] = field(default_factory=list)
    dns_servers: list[IPAddress] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    mtu: int | None = None
    """None: derive it from the route to the endpoints, as wg-quick does."""
    table: Table = "auto"
    pre_up: list[str] = field(default_factory=list)
    post_up: list[str] = field(default_factory=list)
    pre_down: list[str] = field(default_factory=list)
    post_down: list[str] = field(default_factory=list)
    save_config: bool = False


@dataclass(slots=True)
class PeerConfig:
    """One ``[Peer]`` section."""

    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: tuple[str, int] | None = None
    """(host, port); host is an IP literal (IPv6 without brackets) or a name to resolve."""
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    persistent_keepalive: int | None = None
    """Seconds; 0 means off."""


@dataclass(slots=True)
class WgQuickConfig:
    interface: InterfaceConfig = field(default_factory=InterfaceConfig)
    peers: list[PeerConfig] = field(default_factory=list)


def interface_name_for(filename: str) -> str:
    """The interface a config file names (``/etc/wireguard/wg0.conf`` -> ``wg0``), as wg-quick
    requires: a valid interface name followed by ``.conf``."""
    base = filename.rsplit("/", 1)[-1]
    if not base.endswith(".conf") or not _INTERFACE_NAME.fullmatch(base[: -len(".conf")]):
        raise ConfigError(
            f"{filename}: the config file must be a valid interface name, followed by .conf"
        )
    return base[: -len(".conf")]


# ---- parsing ------------------------------------------------------------------------------


@dataclass(slots=True)
class _PeerDraft:
    line: int
    public_key: bytes | None = None
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: tuple[str, int] | None = None
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    persistent_keepalive: int | None = None


def parse_config(
    text: str, filename: str = "wg0.conf", *, require_private_key: bool = True
) -> WgQuickConfig:
    """Parse a wg-quick config; raise ``ConfigError("filename:line: problem")`` on any error.

    ``require_private_key=False`` allows the documented pattern of a key set later by a
    ``PostUp = wg set %i private-key ...`` hook.
    """
    iface = InterfaceConfig()
    drafts: list[_PeerDraft] = []
    section: Literal["none", "interface", "peer"] = "none"
    interface_line = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.split("#", 1)[0]
        if not stripped.strip():
            continue
        key, equals, value = stripped.partition("=")
        key, value = key.strip(), value.strip()
        try:
            if key.startswith("["):
                if equals or key.lower() not in ("[interface]", "[peer]"):
                    raise ConfigError(f"unknown section {stripped.strip()!r}")
                if key.lower() == "[interface]":
                    section, interface_line = "interface", interface_line or number
                else:
                    section = "peer"
                    drafts.append(_PeerDraft(line=number))
                continue
            if not equals:
                raise ConfigError(f"line is not 'Key = Value': {stripped.strip()[:60]!r}")
            if section == "interface":
                _parse_interface_key(iface, key, value)
            elif section == "peer":
                _parse_peer_key(drafts[-1], key, value)
            else:
                raise ConfigError(f"key {key!r} outside of an [Interface] or [Peer] section")
        except ConfigError as err:
            raise ConfigError(f"{filename}:{number}: {err}") from None
    if require_private_key and iface.private_key is None:
        where = f"{filename}:{interface_line}" if interface_line else filename
        raise ConfigError(f"{where}: missing PrivateKey in [Interface]")
    peers: list[PeerConfig] = []
    for draft in drafts:
        if draft.public_key is None:
            raise ConfigError(f"{filename}:{draft.line}: [Peer] without PublicKey")
        peers.append(
            PeerConfig(
                public_key=draft.public_key,
                preshared_key=draft.preshared_key,
                endpoint=draft.endpoint,
                allowed_ips=draft.allowed_ips,
                persistent_keepalive=draft.persistent_keepalive,
            )
        )
    return WgQuickConfig(interface=iface, peers=peers)


def _squeeze(value: str) -> str:
    """wg removes every whitespace character from the lines it parses."""
    return "".join(value.split())


def _list_items(value: str) -> list[str]:
    """wg-quick splits Address/DNS on commas and whitespace."""
    return value.replace(",", " ").split()


def _parse_interface_key(iface: InterfaceConfig, key: str, value: str) -> None:
    name = key.lower()
    if name == "privatekey":
        iface.private_key = decode_key(_squeeze(value))
    elif name == "listenport":
        iface.listen_port = parse_port(_squeeze(value), what="ListenPort")
    elif name == "fwmark":
        iface.fwmark = _parse_fwmark(_squeeze(value))
    elif name == "address":
        iface.addresses.extend(_parse_address(item) for item in _list_items(value))
    elif name == "dns":
        for item in _list_items(value):
            if re.fullmatch(r"[0-9.]+", item) or ":" in item:
                iface.dns_servers.append(_parse_ip(item, "DNS server"))
            else:
                iface.dns_search.append(item)
    elif name == "mtu":
        iface.mtu = _parse_mtu(value)
    elif name == "table":
        iface.table = _parse_table(value)
    elif name == "preup":
        iface.pre_up.append(value)
    elif name == "postup":
        iface.post_up.append(value)
    elif name == "predown":
        iface.pre_down.append(value)
    elif name == "postdown":
        iface.post_down.append(value)
    elif name == "saveconfig":
        iface.save_config = _parse_bool(value)
    else:
        raise ConfigError(f"unknown key {key!r} in [Interface]")


def _parse_peer_key(peer: _PeerDraft, key: str, value: str) -> None:
    name = key.lower()
    if name == "publickey":
        peer.public_key = decode_key(_squeeze(value))
    elif name == "presharedkey":
        peer.preshared_key = decode_key(_squeeze(value))
    elif name == "allowedips":
        squeezed = _squeeze(value)
        if squeezed:
            for item in squeezed.split(","):
                peer.allowed_ips.append(_parse_allowed_ip(item))
    elif name == "endpoint":
        peer.endpoint = _parse_config_endpoint(_squeeze(value))
    elif name == "persistentkeepalive":
        peer.persistent_keepalive = _parse_keepalive(_squeeze(value))
    else:
        raise ConfigError(f"unknown key {key!r} in [Peer]")


def _parse_ip(text: str, what: str) -> IPAddress:
    try:
        if "%" in text:
            raise ValueError
        return ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"invalid {what} {text[:60]!r}") from None


def _parse_address(text: str) -> IPInterface:
    addr_text, slash, length = text.partition("/")
    addr = _parse_ip(addr_text, "Address")
    bits = 32 if addr.version == 4 else 128
    if slash and (
        not length or len(length) > 3 or not set(length) <= _DIGITS or int(length) > bits
    ):
        raise ConfigError(f"invalid Address {text[:60]!r}: bad prefix length")
    prefix = int(length) if slash else bits
    if addr.version == 4:
        return ipaddress.IPv4Interface((int(addr), prefix))
    return ipaddress.IPv6Interface((int(addr), prefix))


def _parse_allowed_ip(text: str) -> IPNetwork:
    try:
        return parse_prefix(text)
    except ConfigError:
        raise ConfigError(f"invalid AllowedIPs entry {text[:60]!r}") from None


def _parse_fwmark(text: str) -> int:
    # wg: "off", or decimal, or 0x-prefixed hex, up to 0xffffffff
    if text.lower() == "off":
        return 0
    lowered = text.lower()
    if lowered.startswith("0x") and len(text) > 2:
        digits, base = lowered[2:], 16
        ok = set(digits) <= set("0123456789abcdef")
    else:
        digits, base = text, 10
        ok = set(digits) <= _DIGITS
    if not digits or not ok or len(digits) > 12 or int(digits, base) > 0xFFFFFFFF:
        raise ConfigError(f"FwMark is neither 0/off nor 0-0xffffffff: {text[:60]!r}")
    return int(digits, base)


def _parse_keepalive(text: str) -> int:
    if text.lower() == "off":
        return 0
    if not text or len(text) > 5 or not set(text) <= _DIGITS or int(text) > 0xFFFF:
        raise ConfigError(f"PersistentKeepalive is neither 0/off nor 1-65535: {text[:60]!r}")
    return int(text)


def _parse_mtu(text: str) -> int:
    if not text or len(text) > 5 or not set(text) <= _DIGITS:
        raise ConfigError(f"invalid MTU {text[:60]!r}")
    mtu = int(text)
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ConfigError(f"invalid MTU {mtu} (expected {MIN_MTU}-{MAX_MTU})")
    return mtu


def _parse_table(text: str) -> Table:
    lowered = text.lower()
    if lowered == "off":
        return "off"
    if lowered == "auto":
        return "auto"
    if lowered in _TABLE_NAMES:
        return _TABLE_NAMES[lowered]
    if text and len(text) <= 10 and set(text) <= _DIGITS and 0 < int(text) <= 0xFFFFFFFF:
        return int(text)
    raise ConfigError(f"invalid Table {text[:60]!r} (expected off, auto or a table number)")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ConfigError(f"{text[:60]!r} is neither true nor false")


def _parse_config_endpoint(text: str) -> tuple[str, int]:
    host, port_text = split_host_port(text)
    port = parse_port(port_text, what="Endpoint port")
    if not host:
        raise ConfigError(f"invalid Endpoint {text[:60]!r}: empty host")
    if text.startswith("[") or ":" in host:
        # bracketed or colon-full hosts must be IP literals (IPv6 zones allowed, as in wg)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"invalid Endpoint address {host[:60]!r}") from None
    elif not re.fullmatch(r"[A-Za-z0-9._-]+", host):
        raise ConfigError(f"invalid Endpoint host {host[:60]!r}")
    return host, port


# ---- formatting ---------------------------------------------------------------------------


def format_endpoint_host(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _setconf_interface_lines(iface: InterfaceConfig) -> list[str]:
    lines = ["[Interface]"]
    if iface.private_key is not None:
        lines.append(f"PrivateKey = {encode_key(iface.private_key)}")
    if iface.listen_port is not None:
        lines.append(f"ListenPort = {iface.listen_port}")
    if iface.fwmark is not None:
        lines.append(f"FwMark = {hex(iface.fwmark) if iface.fwmark else 'off'}")
    return lines


def _peer_lines(peer: PeerConfig) -> list[str]:
    lines = ["[Peer]", f"PublicKey = {encode_key(peer.public_key)}"]
    if peer.preshared_key is not None:
        lines.append(f"PresharedKey = {encode_key(peer.preshared_key)}")
    if peer.allowed_ips:
        lines.append(f"AllowedIPs = {', '.join(str(p) for p in peer.allowed_ips)}")
    if peer.endpoint is not None:
        lines.append(f"Endpoint = {format_endpoint_host(*peer.endpoint)}")
    if peer.persistent_keepalive is not None:
        lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return lines


def _join_sections(sections: list[list[str]]) -> str:
    return "\n\n".join("\n".join(section) for section in sections) + "\n"


def format_config(cfg: WgQuickConfig) -> str:
    """A wg-quick file that ``parse_config`` reads back to an equal ``WgQuickConfig``."""
    iface = cfg.interface
    lines = _setconf_interface_lines(iface)
    if iface.addresses:
        lines.append(f"Address = {', '.join(str(a) for a in iface.addresses)}")
    dns = [str(s) for s in iface.dns_servers] + iface.dns_search
    if dns:
        lines.append(f"DNS = {', '.join(dns)}")
    if iface.mtu is not None:
        lines.append(f"MTU = {iface.mtu}")
    if iface.table != "auto":
        lines.append(f"Table = {iface.table}")
    for key, commands in (
        ("PreUp", iface.pre_up),
        ("PostUp", iface.post_up),
        ("PreDown", iface.pre_down),
        ("PostDown", iface.post_down),
    ):
        for command in commands:
            if "#" in command or "\n" in command or "\r" in command:
                raise ConfigError(f"{key} command cannot be written to a config: {command!r}")
            lines.append(f"{key} = {command}")
    if iface.save_config:
        lines.append("SaveConfig = true")
    return _join_sections([lines] + [_peer_lines(peer) for peer in cfg.peers])


def strip_config(cfg: WgQuickConfig) -> str:
    """What ``wg-quick strip`` prints: only the keys ``wg setconf`` accepts."""
    return _join_sections(
        [_setconf_interface_lines(cfg.interface)] + [_peer_lines(peer) for peer in cfg.peers]
    )


# ---- to the daemon ------------------------------------------------------------------------


def _numeric_endpoint(host: str, port: int) -> Endpoint:
    try:
        return ipaddress.ip_address(host), port
    except ValueError:
        pass
    raise ConfigError(f"endpoint host {host!r} needs resolving to an address first")


def to_set_request(cfg: WgQuickConfig, resolve: Resolver | None = None) -> SetRequest:
    """The changes ``wg setconf`` would send: a full replacement of the device's config.

    Endpoints that are not IP literals go through ``resolve``; without one they raise
    ``ConfigError``.
    """
    iface = cfg.interface
    request = SetRequest(
        interface=InterfaceChanges(
            private_key=iface.private_key if iface.private_key is not None else bytes(KEY_LEN),
            listen_port=iface.listen_port or 0,
            fwmark=iface.fwmark or 0,
            replace_peers=True,
        )
    )
    for peer in cfg.peers:
        endpoint: Endpoint | None = None
        if peer.endpoint is not None:
            host, port = peer.endpoint
            try:
                endpoint = _numeric_endpoint(host, port)
            except ConfigError:
                if resolve is None:
                    raise
                endpoint = resolve(host, port)
        request.peers.append(
            PeerChanges(
                public_key=peer.public_key,
                preshared_key=peer.preshared_key,
                endpoint=endpoint,
                persistent_keepalive_interval=peer.persistent_keepalive,
                replace_allowed_ips=True,
                allowed_ips=list(peer.allowed_ips),
            )
        )
    return request


def to_uapi_set(cfg: WgQuickConfig, resolve: Resolver | None = None) -> str:
    """The ``set=1`` request text for ``to_set_request(cfg, resolve)``."""
    return format_set_request(to_set_request(cfg, resolve))
