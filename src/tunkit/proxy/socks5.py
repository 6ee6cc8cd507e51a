"""SOCKS5 (RFC 1928) with username/password auth (RFC 1929): sans-IO client and server.

Same shape as h11: ``receive_data(bytes)``, then ``next_event()`` until it returns
:data:`NEED_DATA` or a terminal event; bytes to transmit are pulled with ``data_to_send()``.

Client (:class:`Socks5Client`): send :meth:`~Socks5Client.initial_bytes` (the greeting).  It
offers no-auth, plus username/password when credentials are given, answers the server's method
choice by itself (queueing the auth sub-negotiation and then the request), and ends with one of
:class:`Connected`, :class:`UdpAssociated` or :class:`Failed`.  Bytes after the server's reply
(early data from the destination) are in :attr:`Socks5Client.trailing_data`.

Server (:class:`Socks5Server`), for tests and in-process upstreams: yields
:class:`RequestReceived` (or :class:`Failed` when auth fails / no method fits), then the caller
answers with :meth:`Socks5Server.send_reply`.

Protocol violations by the peer raise :class:`RemoteProtocolError`; misuse of the API raises
:class:`LocalProtocolError`.  Buffers are bounded by the protocol (a request is <= 262 bytes).

Also: the UDP ASSOCIATE datagram header (``RSV(2) FRAG(1) ATYP DST.ADDR DST.PORT DATA``):
:func:`encode_udp_datagram` / :func:`decode_udp_datagram`.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from tunkit.errors import LocalProtocolError, MalformedPacketError, RemoteProtocolError
from tunkit.proxy.sansio import NEED_DATA, NeedData

VERSION: Final = 5
AUTH_VERSION: Final = 1
METHOD_NO_AUTH: Final = 0x00
METHOD_USERPASS: Final = 0x02
METHOD_NONE_ACCEPTABLE: Final = 0xFF
ATYP_IPV4: Final = 1
ATYP_DOMAIN: Final = 3
ATYP_IPV6: Final = 4


class Command(enum.IntEnum):
    CONNECT = 1
    BIND = 2
    UDP_ASSOCIATE = 3


class ReplyCode(enum.IntEnum):
    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


_REPLY_TEXT: Final = {
    0: "succeeded",
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


def reply_text(code: int) -> str:
    return _REPLY_TEXT.get(code, f"unassigned reply code {code}")


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    bound_host: str
    """BND.ADDR of the server's reply (the server's outgoing address)."""
    bound_port: int


@dataclass(frozen=True)
class UdpAssociated:
    relay_host: str
    """Where to send UDP datagrams (an unspecified address means: the server's address)."""
    relay_port: int


def relay_address(event: UdpAssociated, server_host: str) -> tuple[str, int]:
    """Where to send datagrams: BND.ADDR, or the server's host when BND.ADDR is unspecified
    (0.0.0.0 / ::), as many servers answer."""
    try:
        unspecified = ipaddress.ip_address(event.relay_host).is_unspecified
    except ValueError:
        unspecified = False
    return (server_host if unspecified else event.relay_host), event.relay_port


@dataclass(frozen=True)
class Failed:
    reply_code: int | None
    """The REP field, or None when the failure was in method selection or authentication."""
    message: str


@dataclass(frozen=True)
class RequestReceived:
    command: Command
    host: str
    """A dotted/colon IP address or a domain name, as the client sent it."""
    port: int
    username: str | None
    """The authenticated user, or None without auth."""


ClientEvent = NeedData | Connected | UdpAssociated | Failed
ServerEvent = NeedData | RequestReceived | Failed


# -- addresses ----------------------------------------------------------------------------


def encode_address(host: str, port: int) -> bytes:
    """ATYP + address + port.  IP literals become ATYP 1/4, anything else a domain name."""
    if not 0 <= port <= 65535:
        raise LocalProtocolError(f"port {port} out of range")
    if ":" not in host and not host[-1:].isdigit():
        # not an IP literal (those end in a digit or hold a colon): skip the failing parse
        return _encode_domain(host) + struct.pack("!H", port)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return _encode_domain(host) + struct.pack("!H", port)
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes([atyp]) + ip.packed + struct.pack("!H", port)


def _encode_domain(host: str) -> bytes:
    try:
        name = host.encode("idna") if not host.isascii() else host.encode("ascii")
    except UnicodeError:
        raise LocalProtocolError(f"domain {host!r} cannot be encoded") from None
    if not 0 < len(name) <= 255:
        raise LocalProtocolError(f"domain of {len(name)} bytes does not fit SOCKS5")
    return bytes([ATYP_DOMAIN, len(name)]) + name


def parse_address(buf: bytes | bytearray, offset: int) -> tuple[str, int, int] | None:
    """``(host, port, end_offset)`` of the ATYP-address at ``offset``, None if incomplete."""
    if len(buf) <= offset:
        return None
    atyp = buf[offset]
    if atyp == ATYP_IPV4:
        end = offset + 1 + 4
        if len(buf) < end + 2:
            return None
        host = ".".join(map(str, buf[offset + 1 : end]))
    elif atyp == ATYP_IPV6:
        end = offset + 1 + 16
        if len(buf) < end + 2:
            return None
        host = str(ipaddress.IPv6Address(bytes(buf[offset + 1 : end])))
    elif atyp == ATYP_DOMAIN:
        if len(buf) < offset + 2:
            return None
        length = buf[offset + 1]
        end = offset + 2 + length
        if len(buf) < end + 2:
            return None
        if length == 0:
            raise RemoteProtocolError("SOCKS5: empty domain name")
        try:
            host = bytes(buf[offset + 2 : end]).decode("ascii")
        except UnicodeDecodeError:
            raise RemoteProtocolError("SOCKS5: domain name is not ASCII") from None
    else:
        raise RemoteProtocolError(f"SOCKS5: unknown address type {atyp}")
    (port,) = struct.unpack_from("!H", buf, end)
    return host, port, end + 2


# -- client -------------------------------------------------------------------------------


class _HandshakeBuffers:
    """The byte plumbing shared by the client and server machines: bytes received wait in
    ``_buffer`` for ``next_event()``; bytes to send collect in ``_outgoing``."""

    _FINAL_STATES: tuple[enum.Enum, ...] = ()
    state: enum.Enum
    _buffer: bytearray
    _outgoing: bytearray

    def receive_data(self, data: bytes) -> None:
        if self.state in self._FINAL_STATES:
            raise LocalProtocolError(f"SOCKS5 handshake is over ({self.state.value})")
        self._buffer += data

    def data_to_send(self) -> bytes:
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out


class ClientState(enum.Enum):
    IDLE = "idle"
    GREETING_SENT = "greeting-sent"
    AUTH_SENT = "auth-sent"
    REQUEST_SENT = "request-sent"
    ESTABLISHED = "established"
    FAILED = "failed"


class Socks5Client(_HandshakeBuffers):
    """Client side: ``initial_bytes()``, then feed replies with ``receive_data()`` and pull
    ``next_event()`` until Connected/UdpAssociated/Failed; send ``data_to_send()`` between."""

    _FINAL_STATES = (ClientState.ESTABLISHED, ClientState.FAILED)

    def __init__(
        self,
        command: Command,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if command == Command.BIND:
            raise LocalProtocolError("SOCKS5 BIND is not supported")
        if (username is None) != (password is None):
            raise LocalProtocolError("SOCKS5 needs both a username and a password, or neither")
        self.command = command
        self._request = bytes([VERSION, command, 0]) + encode_address(host, port)
        self._auth: bytes | None = None
        if username is not None and password is not None:
            user, pw = username.encode(), password.encode()
            if not (0 < len(user) <= 255 and 0 < len(pw) <= 255):
                raise LocalProtocolError("SOCKS5 username and password must be 1-255 bytes")
            self._auth = bytes([AUTH_VERSION, len(user)]) + user + bytes([len(pw)]) + pw
        self.state = ClientState.IDLE
        self._buffer = bytearray()
        self._outgoing = bytearray()
        self.trailing_data = b""

    def __repr__(self) -> str:  # never show credentials
        return f"<Socks5Client {self.command.name} state={self.state.value}>"

    def initial_bytes(self) -> bytes:
        if self.state is not ClientState.IDLE:
            raise LocalProtocolError("SOCKS5 greeting already sent")
        self.state = ClientState.GREETING_SENT
        methods = [METHOD_NO_AUTH] if self._auth is None else [METHOD_NO_AUTH, METHOD_USERPASS]
        return bytes([VERSION, len(methods), *methods])


    def next_event(self) -> ClientEvent:
        state = self.state
        buf = self._buffer
        if state is ClientState.GREETING_SENT:
            if len(buf) < 2:
                return NEED_DATA
            version, method = buf[0], buf[1]
            del buf[:2]
            if version != VERSION:
                raise RemoteProtocolError(f"SOCKS5: server answered version {version}")
            if method == METHOD_NONE_ACCEPTABLE:
                return self._fail(None, "no acceptable authentication method")
            if method == METHOD_NO_AUTH:
                self._send_request()
            elif method == METHOD_USERPASS and self._auth is not None:
                self._outgoing += self._auth
                self.state = ClientState.AUTH_SENT
            else:
                raise RemoteProtocolError(f"SOCKS5: server chose method {method} we did not offer")
            return self.next_event()
        if state is ClientState.AUTH_SENT:
            if len(buf) < 2:
                return NEED_DATA
            version, status = buf[0], buf[1]
            del buf[:2]
            if version not in (AUTH_VERSION, VERSION):  # some servers echo 5
                raise RemoteProtocolError(f"SOCKS5: auth reply version {version}")
            if status != 0:
                return self._fail(None, "authentication rejected")
            self._send_request()
            return self.next_event()
        if state is ClientState.REQUEST_SENT:
            if len(buf) < 4:
                return NEED_DATA
            if buf[0] != VERSION:
                raise RemoteProtocolError(f"SOCKS5: reply version {buf[0]}")
            code = buf[1]
            parsed = parse_address(buf, 3)
            if parsed is None:
                return NEED_DATA
            host, port, end = parsed
            self.trailing_data = bytes(buf[end:])
            buf.clear()
            if code != ReplyCode.SUCCEEDED:
                return self._fail(code, reply_text(code))
            self.state = ClientState.ESTABLISHED
            if self.command == Command.UDP_ASSOCIATE:
                return UdpAssociated(host, port)
            return Connected(host, port)
        if state is ClientState.IDLE:
            raise LocalProtocolError("SOCKS5: call initial_bytes() first")
        raise LocalProtocolError(f"SOCKS5 handshake is over ({state.value})")

    def _send_request(self) -> None:
        self._outgoing += self._request
        self.state = ClientState.REQUEST_SENT

    def _fail(self, code: int | None, message: str) -> Failed:
        self.state = ClientState.FAILED
        return Failed(code, message)


# -- server -------------------------------------------------------------------------------


class ServerState(enum.Enum):
    AWAIT_GREETING = "await-greeting"
    AWAIT_AUTH = "await-auth"
    AWAIT_REQUEST = "await-request"
    AWAIT_REPLY = "await-reply"
    DONE = "done"
    FAILED = "failed"


class Socks5Server(_HandshakeBuffers):
    """``users`` maps username -> password; with users, auth is required unless
    ``allow_no_auth`` is set.  Without users, only no-auth is offered."""

    _FINAL_STATES = (ServerState.DONE, ServerState.FAILED)

    def __init__(
        self, users: Mapping[str, str] | None = None, *, allow_no_auth: bool | None = None
    ) -> None:
        self._users = dict(users or {})
        self._allow_no_auth = (not self._users) if allow_no_auth is None else allow_no_auth
        self.state = ServerState.AWAIT_GREETING
        self.username: str | None = None
        self._buffer = bytearray()
        self._outgoing = bytearray()
        self.trailing_data = b""


    def next_event(self) -> ServerEvent:
        buf = self._buffer
        state = self.state
        if state is ServerState.AWAIT_GREETING:
            if len(buf) < 2:
                return NEED_DATA
            if buf[0] != VERSION:
                raise RemoteProtocolError(f"SOCKS5: client version {buf[0]}")
            count = buf[1]
            if count == 0:
                raise RemoteProtocolError("SOCKS5: greeting offers no methods")
            if len(buf) < 2 + count:
                return NEED_DATA
            methods = set(buf[2 : 2 + count])
            del buf[: 2 + count]
            if self._users and METHOD_USERPASS in methods:
                self._outgoing += bytes([VERSION, METHOD_USERPASS])
                self.state = ServerState.AWAIT_AUTH
            elif self._allow_no_auth and METHOD_NO_AUTH in methods:
                self._outgoing += bytes([VERSION, METHOD_NO_AUTH])
                self.state = ServerState.AWAIT_REQUEST
            else:
                self._outgoing += bytes([VERSION, METHOD_NONE_ACCEPTABLE])
                self.state = ServerState.FAILED
                return Failed(None, "no acceptable authentication method")
            return self.next_event()
        if state is ServerState.AWAIT_AUTH:
            if len(buf) < 2:
                return NEED_DATA
            if buf[0] != AUTH_VERSION:
                raise RemoteProtocolError(f"SOCKS5: auth version {buf[0]}")
            ulen = buf[1]
            if len(buf) < 3 + ulen:
                return NEED_DATA
            plen = buf[2 + ulen]
            if len(buf) < 3 + ulen + plen:
                return NEED_DATA
            user = bytes(buf[2 : 2 + ulen]).decode("utf-8", "replace")
            password = bytes(buf[3 + ulen : 3 + ulen + plen]).decode("utf-8", "replace")
            del buf[: 3 + ulen + plen]
            if user in self._users and self._users[user] == password:
                self.username = user
                self._outgoing += bytes([AUTH_VERSION, 0])
                self.state = ServerState.AWAIT_REQUEST
                return self.next_event()
            self._outgoing += bytes([AUTH_VERSION, 1])
            self.state = ServerState.FAILED
            return Failed(None, "authentication rejected")
        if state is ServerState.AWAIT_REQUEST:
            if len(buf) < 4:
                return NEED_DATA
            if buf[0] != VERSION:
                raise RemoteProtocolError(f"SOCKS5: request version {buf[0]}")
            try:
                command = Command(buf[1])
            except ValueError:
                raise RemoteProtocolError(f"SOCKS5: unknown command {buf[1]}") from None
            parsed = parse_address(buf, 3)
            if parsed is None:
                return NEED_DATA
            host, port, end = parsed
            self.trailing_data = bytes(buf[end:])
            buf.clear()
            self.state = ServerState.AWAIT_REPLY
            return RequestReceived(command, host, port, self.username)
        if state is ServerState.AWAIT_REPLY:
            return NEED_DATA
        raise LocalProtocolError(f"SOCKS5 handshake is over ({state.value})")

    def send_reply(self, code: int, bound_host: str = "0.0.0.0", bound_port: int = 0) -> bytes:
        """The reply to the request; returns the bytes (also nothing is left queued)."""
        if self.state is not ServerState.AWAIT_REPLY:
            raise LocalProtocolError(f"SOCKS5: no request to reply to ({self.state.value})")
        self.state = ServerState.DONE if code == ReplyCode.SUCCEEDED else ServerState.FAILED
        return bytes([VERSION, code, 0]) + encode_address(bound_host, bound_port)


# -- UDP ASSOCIATE datagrams --------------------------------------------------------------


@dataclass(frozen=True)
class UdpDatagram:
    host: str
    port: int
    payload: bytes
    frag: int = 0


def encode_udp_datagram(host: str, port: int, payload: bytes, frag: int = 0) -> bytes:
    if not 0 <= frag <= 255:
        raise LocalProtocolError(f"SOCKS5 FRAG {frag} out of range")
    return b"\x00\x00" + bytes([frag]) + encode_address(host, port) + payload


def decode_udp_datagram(data: bytes) -> UdpDatagram:
    """Parse a relayed datagram; raises :class:`MalformedPacketError` on bad input."""
    if len(data) < 4:
        raise MalformedPacketError(f"SOCKS5 UDP datagram of {len(data)} bytes is too short")
    if data[0] != 0 or data[1] != 0:
        raise MalformedPacketError("SOCKS5 UDP datagram: RSV is not zero")
    try:
        parsed = parse_address(data, 3)
    except RemoteProtocolError as err:
        raise MalformedPacketError(str(err)) from None
    if parsed is None:
        raise MalformedPacketError("SOCKS5 UDP datagram: truncated address")
    host, port, end = parsed
    return UdpDatagram(host, port, bytes(data[end:]), data[2])
