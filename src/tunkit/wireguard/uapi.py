"""The cross-platform WireGuard UAPI text protocol (wireguard.com/xplatform), pure.

What it promises:

* ``UapiRequestReader`` frames a byte stream from one UAPI client into requests, h11-style:
  ``receive_data(bytes)``, ``receive_eof()``, then ``next_request()`` returns ``("get", None)``,
  ``("set", SetRequest)`` or ``NEED_DATA``. Memory is bounded: a line longer than
  ``max_line_bytes`` or a request larger than ``max_request_bytes`` raises a fatal ``UapiError``.
* ``parse_set(lines)`` validates a ``set=1`` body exactly like wireguard-go and returns typed
  changes; every problem raises ``UapiError`` carrying the errno the reply must carry.
* ``format_get_reply(DeviceSnapshot)`` writes the ``get=1`` reply in wireguard-go's key order,
  ending ``errno=0\\n\\n``; ``format_errno`` writes a bare status reply.
* ``format_set_request`` / ``parse_get_reply`` are the client side (tests, our own tools).

Errno convention (checked against wireguard-go ``ipc/uapi_unix.go`` and wg's ``ipc-uapi.h``):
the daemon answers ``errno=-22`` style *negative* errno values; ``wg`` does ``errno = -ret`` on
the number it reads, so a negative value makes it print e.g. "Invalid argument".

Normalisations (same device outcome as wireguard-go's line-by-line application):
``replace_allowed_ips=true`` drops the ``allowed_ip`` lines seen before it for that peer, and
after ``remove=true`` a peer's further lines are validated but ignored.

Device duties that are *not* parsing (left to the caller): a peer whose public key equals our
own is ignored; a listen port that cannot be bound answers ``ERRNO_PORT_IN_USE``.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from tunkit.errors import ConfigError, RemoteProtocolError
from tunkit.wireguard.allowedips import IPAddress, IPNetwork, parse_prefix
from tunkit.wireguard.keys import KEY_LEN, hex_key, key_from_hex

ERRNO_IO = -_errno.EIO  # -5
ERRNO_INVALID = -_errno.EINVAL  # -22
ERRNO_PROTOCOL = -_errno.EPROTO  # -71
ERRNO_PORT_IN_USE = -_errno.EADDRINUSE  # -98
ERRNO_UNKNOWN = -55  # wireguard-go's IpcErrorUnknown (ENOANO)

MAX_LINE_BYTES = 4096
MAX_REQUEST_BYTES = 16 * 1024 * 1024

Endpoint = tuple[IPAddress, int]
"""A numeric UDP endpoint: (address, port)."""

_ZERO_KEY = bytes(KEY_LEN)
_DIGITS = frozenset("0123456789")


class UapiError(RemoteProtocolError):
    """A UAPI request was refused.

    ``errno`` is the (negative) value to send back as ``errno=N``. When ``close_connection``
    is set the byte stream cannot be resynchronised and the server should reply and hang up.
    """

    def __init__(self, errno: int, message: str, *, close_connection: bool = False) -> None:
        super().__init__(message)
        self.errno = errno
        self.close_connection = close_connection


# ---- endpoints ----------------------------------------------------------------------------


def format_endpoint(addr: IPAddress, port: int) -> str:
    """``1.2.3.4:51820`` or ``[fd00::1]:51820``, as wireguard-go prints them."""
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        # Go prints 4-in-6 as ::ffff:1.2.3.4; Python 3.11 would print ::ffff:102:304.
        text = f"::ffff:{mapped}" if mapped is not None and addr.scope_id is None else str(addr)
        return f"[{text}]:{port}"
    return f"{addr}:{port}"


def format_prefix(prefix: IPNetwork) -> str:
    """``10.0.0.0/24`` / ``fd00::/64``; IPv4-mapped IPv6 printed as Go does (``::ffff:1.2.3.0``)."""
    if isinstance(prefix, ipaddress.IPv6Network):
        mapped = prefix.network_address.ipv4_mapped
        if mapped is not None:
            return f"::ffff:{mapped}/{prefix.prefixlen}"
    return str(prefix)


def split_host_port(text: str) -> tuple[str, str]:
    """Split ``host:port`` / ``[v6]:port`` like wg does; raise ConfigError if there is no port."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ConfigError(f"unable to find matching brace of endpoint {text!r}")
        if not rest.startswith(":") or len(rest) == 1:
            raise ConfigError(f"unable to find port of endpoint {text!r}")
        return host, rest[1:]
    host, colon, port = text.rpartition(":")
    if not colon or not port or not host:
        raise ConfigError(f"unable to find port of endpoint {text!r}")
    return host, port


def parse_port(text: str, *, what: str = "port") -> int:
    """Decimal 0-65535 with ASCII digits only (no sign, spaces or underscores)."""
    if not text or len(text) > 5 or not set(text) <= _DIGITS or int(text) > 0xFFFF:
        raise ConfigError(f"invalid {what} {text!r} (expected 0-65535)")
    return int(text)


def parse_endpoint(text: str) -> Endpoint:
    """Parse a numeric endpoint; IPv6 must be bracketed (zones allowed). ConfigError if bad."""
    host, port_text = split_host_port(text)
    bracketed = text.startswith("[")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"invalid endpoint {text!r}: not a numeric address") from None
    if bracketed != (addr.version == 6):
        raise ConfigError(f"invalid endpoint {text!r}: IPv6, and only IPv6, needs brackets")
    return addr, parse_port(port_text, what="endpoint port")


# ---- set=1 --------------------------------------------------------------------------------


@dataclass(slots=True)
class InterfaceChanges:
    """Device-level lines of a set request; ``None`` means "leave unchanged"."""

    private_key: bytes | None = field(default=None, repr=False)
    """32 bytes; all zeros means "remove the private key" (wireguard-go FromMaybeZeroHex)."""
    listen_port: int | None = None
    """0 means "pick a random port"."""
    fwmark: int | None = None
    """0 means "no mark"."""
    replace_peers: bool = False
    """Remove every existing peer before applying the peers of this request."""


@dataclass(slots=True)
class PeerChanges:
    """The lines following one ``public_key=`` line, applied to that peer."""

    public_key: bytes
    remove: bool = False
    """Remove the peer; every other field is then to be ignored."""
    update_only: bool = False
    """Only update an existing peer; do not create it."""
    preshared_key: bytes | None = field(default=None, repr=False)
    """All zeros means "no preshared key"."""
    endpoint: Endpoint | None = None
    persistent_keepalive_interval: int | None = None
    """Seconds, 0 = off."""
    replace_allowed_ips: bool = False
    """Drop the peer's current allowed IPs before adding ``allowed_ips``."""
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    """Prefixes to add, host bits already masked."""
    protocol_version: int | None = None


@dataclass(slots=True)
class SetRequest:
    """A parsed ``set=1`` request."""

    interface: InterfaceChanges = field(default_factory=InterfaceChanges)
    peers: list[PeerChanges] = field(default_factory=list)


def _invalid(message: str) -> UapiError:
    return UapiError(ERRNO_INVALID, message)


def _uint(value: str, bits: int, key: str) -> int:
    # strconv.ParseUint(value, 10, bits): ASCII digits only, leading zeros fine.
    if not value or len(value) > 32 or not set(value) <= _DIGITS or int(value) >> bits:
        raise _invalid(f"invalid {key}: {value[:40]!r}")
    return int(value)


def _hex_key(value: str, key: str) -> bytes:
    try:
        return key_from_hex(value)
    except ConfigError:
        raise _invalid(f"invalid {key}: expected 64 hex characters") from None


def _true(value: str, key: str) -> bool:
    if value != "true":
        raise _invalid(f"invalid {key}: {value[:40]!r} (only 'true' is accepted)")
    return True


class _SetParser:
    """Validates set lines one at a time, so a large request is never held as text."""

    __slots__ = ("peer", "request")

    def __init__(self) -> None:
        self.request = SetRequest()
        self.peer: PeerChanges | None = None

    def feed(self, line: str) -> None:
        key, equals, value = line.partition("=")
        if not equals:
            raise UapiError(ERRNO_PROTOCOL, f"line without '=': {line[:40]!r}")
        if key == "public_key":
            self.peer = PeerChanges(public_key=_hex_key(value, key))
            self.request.peers.append(self.peer)
        elif self.peer is None:
            self._feed_interface(key, value)
        else:
            self._feed_peer(self.peer, key, value)

    def _feed_interface(self, key: str, value: str) -> None:
        changes = self.request.interface
        if key == "private_key":
            changes.private_key = _hex_key(value, key)
        elif key == "listen_port":
            changes.listen_port = _uint(value, 16, key)
        elif key == "fwmark":
            changes.fwmark = _uint(value, 32, key)
        elif key == "replace_peers":
            changes.replace_peers = _true(value, key)
        else:
            raise _invalid(f"invalid UAPI device key: {key[:40]!r}")

    def _feed_peer(self, peer: PeerChanges, key: str, value: str) -> None:
        if key == "update_only":
            _true(value, key)
            if not peer.remove:
                peer.update_only = True
            return
        if key == "remove":
            _true(value, key)
            # Nothing else about a removed peer matters: keep only the verdict.
            peer.remove, peer.update_only = True, False
            peer.preshared_key = peer.endpoint = peer.persistent_keepalive_interval = None
            peer.replace_allowed_ips = False
            peer.allowed_ips.clear()
            peer.protocol_version = None
            return
        if key == "preshared_key":
            psk = _hex_key(value, key)
            if not peer.remove:
                peer.preshared_key = psk
        elif key == "endpoint":
            try:
                endpoint = parse_endpoint(value)
            except ConfigError as err:
                raise _invalid(str(err)) from None
            if not peer.remove:
                peer.endpoint = endpoint
        elif key == "persistent_keepalive_interval":
            interval = _uint(value, 16, key)
            if not peer.remove:
                peer.persistent_keepalive_interval = interval
        elif key == "replace_allowed_ips":
            _true(value, key)
            if not peer.remove:
                peer.replace_allowed_ips = True
                peer.allowed_ips.clear()
        elif key == "allowed_ip":
            try:
                prefix = parse_prefix(value, require_length=True)
            except ConfigError as err:
                raise _invalid(str(err)) from None
            if not peer.remove:
                peer.allowed_ips.append(prefix)
        elif key == "protocol_version":
            if value != "1":
                raise _invalid(f"invalid protocol version: {value[:40]!r}")
            if not peer.remove:
                peer.protocol_version = 1
        else:
            raise _invalid(f"invalid UAPI peer key: {key[:40]!r}")


def parse_set(lines: Iterable[str]) -> SetRequest:
    """Parse the body of a ``set=1`` request (the lines after ``set=1``, without newlines).

    Parsing stops at the first empty line (the terminator), like wireguard-go.
    Raises ``UapiError`` with the errno for the reply.
    """
    parser = _SetParser()
    for line in lines:
        if not line:
            break
        parser.feed(line)
    return parser.request


def format_set_request(request: SetRequest) -> str:
    """The complete ``set=1`` request text, terminated by the empty line."""
    out = ["set=1"]
    changes = request.interface
    if changes.private_key is not None:
        out.append(f"private_key={hex_key(changes.private_key)}")
    if changes.listen_port is not None:
        out.append(f"listen_port={changes.listen_port}")
    if changes.fwmark is not None:
        out.append(f"fwmark={changes.fwmark}")
    if changes.replace_peers:
        out.append("replace_peers=true")
    for peer in request.peers:
        out.append(f"public_key={hex_key(peer.public_key)}")
        if peer.remove:
            out.append("remove=true")
            continue
        if peer.update_only:
            out.append("update_only=true")
        if peer.protocol_version is not None:
            out.append(f"protocol_version={peer.protocol_version}")
        if peer.preshared_key is not None:
            out.append(f"preshared_key={hex_key(peer.preshared_key)}")
        if peer.endpoint is not None:
            out.append(f"endpoint={format_endpoint(*peer.endpoint)}")
        if peer.persistent_keepalive_interval is not None:
            out.append(f"persistent_keepalive_interval={peer.persistent_keepalive_interval}")
        if peer.replace_allowed_ips:
            out.append("replace_allowed_ips=true")
        out.extend(f"allowed_ip={format_prefix(prefix)}" for prefix in peer.allowed_ips)
    return "\n".join(out) + "\n\n"


# ---- get=1 --------------------------------------------------------------------------------


@dataclass(slots=True)
class PeerSnapshot:
    """One peer as ``get=1`` reports it."""

    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: Endpoint | None = None
    last_handshake_time_sec: int = 0
    last_handshake_time_nsec: int = 0
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive_interval: int = 0
    allowed_ips: list[IPNetwork] = field(default_factory=list)


@dataclass(slots=True)
class DeviceSnapshot:
    """The device as ``get=1`` reports it; zero/None fields are omitted like wireguard-go."""

    private_key: bytes | None = field(default=None, repr=False)
    listen_port: int = 0
    fwmark: int = 0
    peers: list[PeerSnapshot] = field(default_factory=list)


def format_errno(errno: int) -> str:
    """A bare status reply: ``errno=N`` and the terminating empty line."""
    return f"errno={errno}\n\n"


def format_get_reply(snapshot: DeviceSnapshot) -> str:
    """The full ``get=1`` reply, in wireguard-go's key order, ending ``errno=0\\n\\n``."""
    out: list[str] = []
    if snapshot.private_key is not None and snapshot.private_key != _ZERO_KEY:
        out.append(f"private_key={hex_key(snapshot.private_key)}")
    if snapshot.listen_port:
        out.append(f"listen_port={snapshot.listen_port}")
    if snapshot.fwmark:
        out.append(f"fwmark={snapshot.fwmark}")
    for peer in snapshot.peers:
        out.append(f"public_key={hex_key(peer.public_key)}")
        out.append(f"preshared_key={hex_key(peer.preshared_key or _ZERO_KEY)}")
        out.append("protocol_version=1")
        if peer.endpoint is not None:
            out.append(f"endpoint={format_endpoint(*peer.endpoint)}")
        out.append(f"last_handshake_time_sec={peer.last_handshake_time_sec}")
        out.append(f"last_handshake_time_nsec={peer.last_handshake_time_nsec}")
        out.append(f"tx_bytes={peer.tx_bytes}")
        out.append(f"rx_bytes={peer.rx_bytes}")
        out.append(f"persistent_keepalive_interval={peer.persistent_keepalive_interval}")
        out.extend(f"allowed_ip={format_prefix(prefix)}" for prefix in peer.allowed_ips)
    out.append(format_errno(0))
    return "\n".join(out)


def parse_get_reply(text: str) -> DeviceSnapshot:
    """Client side: parse a ``get=1`` reply. Raises ``UapiError`` (with the daemon's errno
    if it reported one, else ``ERRNO_PROTOCOL``)."""
    snapshot = DeviceSnapshot()
    peer: PeerSnapshot | None = None
    status: int | None = None
    for line in text.split("\n"):
        if not line:
            break
        key, equals, value = line.partition("=")
        if not equals:
            raise UapiError(ERRNO_PROTOCOL, f"line without '=': {line[:40]!r}")
        try:
            peer = _apply_get_line(snapshot, peer, key, value)
        except UapiError as err:
            raise UapiError(ERRNO_PROTOCOL, f"bad get reply line {line[:60]!r}: {err}") from None
        if key == "errno":
            status = int(value) if value.lstrip("-").isdigit() and len(value) < 12 else None
            if status is None:
                raise UapiError(ERRNO_PROTOCOL, f"bad errno line {line[:40]!r}")
    if status is None:
        raise UapiError(ERRNO_PROTOCOL, "get reply has no errno line")
    if status != 0:
        raise UapiError(status, f"daemon answered errno={status}")
    return snapshot


def _apply_get_line(
    snapshot: DeviceSnapshot, peer: PeerSnapshot | None, key: str, value: str
) -> PeerSnapshot | None:
    if key == "errno":
        return peer
    if key == "public_key":
        peer = PeerSnapshot(public_key=_hex_key(value, key))
        snapshot.peers.append(peer)
        return peer
    if peer is None:
        if key == "private_key":
            snapshot.private_key = _hex_key(value, key)
        elif key == "listen_port":
            snapshot.listen_port = _uint(value, 16, key)
        elif key == "fwmark":
            snapshot.fwmark = _uint(value, 32, key)
        else:
            raise _invalid(f"unknown device key {key[:40]!r}")
        return None
    if key == "preshared_key":
        psk = _hex_key(value, key)
        peer.preshared_key = None if psk == _ZERO_KEY else psk
    elif key == "protocol_version":
        if value != "1":
            raise _invalid(f"unknown protocol version {value[:40]!r}")
    elif key == "endpoint":
        try:
            peer.endpoint = parse_endpoint(value)
        except ConfigError as err:
            raise _invalid(str(err)) from None
    elif key == "last_handshake_time_sec":
        peer.last_handshake_time_sec = _uint(value, 63, key)
    elif key == "last_handshake_time_nsec":
        peer.last_handshake_time_nsec = _uint(value, 63, key)
    elif key == "tx_bytes":
        peer.tx_bytes = _uint(value, 64, key)
    elif key == "rx_bytes":
        peer.rx_bytes = _uint(value, 64, key)
    elif key == "persistent_keepalive_interval":
        peer.persistent_keepalive_interval = _uint(value, 16, key)
    elif key == "allowed_ip":
        try:
            peer.allowed_ips.append(parse_prefix(value, require_length=True))
        except ConfigError as err:
            raise _invalid(str(err)) from None
    else:
        raise _invalid(f"unknown peer key {key[:40]!r}")
    return peer


# ---- framing ------------------------------------------------------------------------------


class Signal(Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = Signal.NEED_DATA
"""``next_request`` has no complete request yet: feed more bytes (or, after EOF: done)."""

Request = tuple[Literal["get"], None] | tuple[Literal["set"], SetRequest]


class UapiRequestReader:
    """Incremental framer for one UAPI connection (the server side).

    Feed bytes with ``receive_data``; call ``next_request`` until it returns ``NEED_DATA``.
    A refused request raises ``UapiError``: reply ``format_errno(err.errno)``; if
    ``err.close_connection`` the stream is unusable (the reader keeps raising) and the
    connection should be closed, otherwise keep reading. Like wireguard-go:

    * ``get=1`` must be followed by an empty line (``get=1\\n\\n``), else EINVAL;
    * a ``set=1`` body ends at an empty line, or at EOF; lines may end in ``\\r\\n``;
    * an unknown operation line is fatal (wireguard-go hangs up without a reply).
    """

    def __init__(
        self, *, max_line_bytes: int = MAX_LINE_BYTES, max_request_bytes: int = MAX_REQUEST_BYTES
    ) -> None:
        self._max_line = max_line_bytes
        self._max_request = max_request_bytes
        self._buffer = bytearray()
        self._pos = 0  # start of the unread part of _buffer
        self._eof = False
        self._fatal: UapiError | None = None
        self._op: Literal["get", "set"] | None = None
        self._set: _SetParser | None = None
        self._set_error: UapiError | None = None
        self._request_bytes = 0

    def receive_data(self, data: bytes) -> None:
        if self._eof:
            raise UapiError(ERRNO_IO, "data after EOF", close_connection=True)
        if self._fatal is None:  # after a fatal error the stream is dead: do not hoard it
            self._buffer += data

    def receive_eof(self) -> None:
        self._eof = True

    def next_request(self) -> Request | Signal:
        if self._fatal is not None:
            raise self._fatal
        try:
            return self._next()
        except UapiError as err:
            if err.close_connection:
                self._fatal = err
                self._compact(len(self._buffer))
            raise

    def _next(self) -> Request | Signal:
        while True:
            if self._op is None:
                line = self._take_line()
                if line is None:
                    return NEED_DATA
                if line == b"get=1":
                    self._op = "get"
                elif line == b"set=1":
                    self._op = "set"
                    self._set = _SetParser()
                    self._set_error = None
                    self._request_bytes = 0
                else:
                    raise UapiError(
                        ERRNO_PROTOCOL,
                        f"invalid UAPI operation {bytes(line[:40])!r}",
                        close_connection=True,
                    )
            if self._op == "get":
                terminator = self._take_byte()
                if terminator is None:
                    return NEED_DATA
                self._op = None
                if terminator != 0x0A:
                    raise UapiError(
                        ERRNO_INVALID, f"trailing character in UAPI get: {chr(terminator)!r}"
                    )
                return ("get", None)
            request = self._continue_set()
            if request is None:
                return NEED_DATA
            return request

    def _continue_set(self) -> Request | None:
        parser = self._set
        assert parser is not None
        while True:
            raw = self._take_line()
            if raw is None:
                if not (self._eof and self._pos >= len(self._buffer)):
                    return None
                break  # EOF ends a set body, as wireguard-go's scanner does
            self._request_bytes += len(raw) + 1
            if self._request_bytes > self._max_request:
                raise UapiError(ERRNO_IO, "UAPI request too large", close_connection=True)
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if not raw:
                break
            if self._set_error is not None:
                continue  # swallow the rest of a refused request to stay in sync
            try:
                parser.feed(raw.decode("utf-8", errors="replace"))
            except UapiError as err:
                self._set_error = err
        self._op = None
        self._set = None
        refused, self._set_error = self._set_error, None
        if refused is not None:
            raise refused
        return ("set", parser.request)

    def _take_line(self) -> bytes | None:
        # Lines are consumed by advancing _pos; the buffer is compacted only now and then,
        # so a multi-megabyte request fed in one piece is split in linear time.
        buffer, pos = self._buffer, self._pos
        end = buffer.find(b"\n", pos, pos + self._max_line + 1)
        if end < 0:
            if len(buffer) - pos > self._max_line:
                raise UapiError(ERRNO_IO, "UAPI line too long", close_connection=True)
            if self._eof and len(buffer) > pos and self._op == "set":
                # A last unterminated line at EOF still counts (bufio.Scanner does the same).
                line = bytes(buffer[pos:])
                self._compact(len(buffer))
                return line
            self._compact(pos)
            return None
        line = bytes(buffer[pos:end])
        self._pos = end + 1
        if self._pos > 65536:
            self._compact(self._pos)
        return line

    def _take_byte(self) -> int | None:
        if self._pos >= len(self._buffer):
            return None
        byte = self._buffer[self._pos]
        self._pos += 1
        return byte

    def _compact(self, upto: int) -> None:
        del self._buffer[:upto]
        self._pos = 0
