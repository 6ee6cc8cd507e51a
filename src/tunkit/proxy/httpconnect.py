"""HTTP CONNECT tunnel client (RFC 9110 §9.3.6), sans-IO, h11-style.

Send :meth:`HttpConnectClient.initial_bytes` (the request, with ``Proxy-Authorization: Basic``
when credentials are given), feed the proxy's bytes to ``receive_data`` and call
``next_event()``: :data:`NEED_DATA`, :class:`Connected` (any 2xx; bytes after the header block
are in :attr:`HttpConnectClient.trailing_data`) or :class:`Failed` (status and reason, e.g. 407).

The response parser is small and bounded: the header block may be at most
:data:`MAX_HEADER_BYTES`; anything that is not ``HTTP/1.x SSS reason`` followed by header lines
raises :class:`RemoteProtocolError`.  Interim 1xx responses are skipped.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
from dataclasses import dataclass
from typing import Final

from tunkit.errors import LocalProtocolError, RemoteProtocolError
from tunkit.proxy.sansio import NEED_DATA, NeedData

MAX_HEADER_BYTES: Final = 16384


@dataclass(frozen=True)
class Connected:
    status: int
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Failed:
    status: int
    reason: str


HttpConnectEvent = NeedData | Connected | Failed


class HttpConnectState(enum.Enum):
    IDLE = "idle"
    REQUEST_SENT = "request-sent"
    ESTABLISHED = "established"
    FAILED = "failed"


def authority(host: str, port: int) -> str:
    """``host:port`` with IPv6 literals bracketed."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


class HttpConnectClient:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        user_agent: str = "tunkit",
    ) -> None:
        if not 0 < port <= 65535:
            raise LocalProtocolError(f"port {port} out of range")
        if any(c in host for c in "\r\n /") or not host:
            raise LocalProtocolError(f"invalid CONNECT host {host!r}")
        target = authority(host, port)
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", f"User-Agent: {user_agent}"]
        if username is not None or password is not None:
            token = base64.b64encode(f"{username or ''}:{password or ''}".encode()).decode()
            lines.append(f"Proxy-Authorization: Basic {token}")
        self._request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.state = HttpConnectState.IDLE
        self._buffer = bytearray()
        self.trailing_data = b""

    def __repr__(self) -> str:  # never show credentials
        return f"<HttpConnectClient state={self.state.value}>"

    def initial_bytes(self) -> bytes:
        if self.state is not HttpConnectState.IDLE:
            raise LocalProtocolError("CONNECT request already sent")
        self.state = HttpConnectState.REQUEST_SENT
        return self._request

    def receive_data(self, data: bytes) -> None:
        if self.state is not HttpConnectState.REQUEST_SENT:
            raise LocalProtocolError(f"CONNECT client is {self.state.value}")
        self._buffer += data

    def next_event(self) -> HttpConnectEvent:
        if self.state is not HttpConnectState.REQUEST_SENT:
            raise LocalProtocolError(f"CONNECT client is {self.state.value}")
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise RemoteProtocolError("CONNECT response header block too large")
                return NEED_DATA
            if end > MAX_HEADER_BYTES:
                raise RemoteProtocolError("CONNECT response header block too large")
            block = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            status, reason, headers = parse_response_head(block)
            if 100 <= status < 200:
                continue  # interim response, the real one follows
            if 200 <= status < 300:
                self.state = HttpConnectState.ESTABLISHED
                self.trailing_data = bytes(self._buffer)
                self._buffer.clear()
                return Connected(status, headers)
            self.state = HttpConnectState.FAILED
            return Failed(status, reason)


def parse_response_head(block: bytes) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    """Status, reason and headers of a response head (without the final blank line)."""
    try:
        text = block.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise RemoteProtocolError("CONNECT response is not text") from None
    status_line, *header_lines = text.split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.0", "HTTP/1.1"):
        raise RemoteProtocolError(f"not an HTTP status line: {status_line[:60]!r}")
    code = parts[1]
    if len(code) != 3 or not code.isascii() or not code.isdigit():
        raise RemoteProtocolError(f"bad HTTP status code {code[:10]!r}")
    reason = parts[2] if len(parts) == 3 else ""
    headers: list[tuple[str, str]] = []
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t\n\r"):
            raise RemoteProtocolError(f"bad HTTP header line {line[:60]!r}")
        headers.append((name.lower(), value.strip()))
    return int(code), reason, tuple(headers)
