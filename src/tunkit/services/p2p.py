"""The running point-to-point tunnel: one TUN/TAP device, one peer over TCP, TLS or UDP.

Contract:

* :class:`P2PService` (built from a :class:`P2PConfig` and an already open device) runs until
  :meth:`P2PService.stop` is called, then returns; it never closes the device (the caller owns
  it, so a device we only attached to stays, and one we created goes when its fd closes).
* The device is opened with a virtio_net_hdr.  Compat framing and UDP switch the kernel's
  offloads off (so every read is one ordinary packet and the header is all zeros); fast mode
  switches TSO/USO on and carries super-packets of up to 64 KiB untouched.  See
  :mod:`tunkit.p2p.negotiation` for how the two ends agree.
* The device's ``fileno()`` is used directly with ``os.readv``/``os.writev``/``os.write``
  (one packet per call, non-blocking), which is what a TUN fd does.
* Compat framing over plain TCP runs both directions in one thread (:meth:`_compat_loop`):
  a packet from the peer is written to the device and whatever the kernel queued in answer
  (a ping reply) is read and sent in the same pass, so a round trip costs no thread
  hand-off; ``poll`` rather than an EAGAIN exception says whether more is queued (the
  exception, with its strerror lookup, cost more than the packet).  Every queued packet
  goes out in one ``sendmsg`` (each simpletun frame inside one write, TCP_NODELAY on);
  sending never blocks, so two ends can never wait on each other.
* Fast framing (plain TCP or TLS) uses one thread per direction (the GIL is released in the
  syscalls, and the two copies per direction then run on both cores): device → peer reads
  every queued super-packet and sends the batch with one ``sendmsg``; peer → device
  receives into a 4 MiB buffer and writes every complete frame.
* A bad frame length, a failed negotiation, a refused certificate or a closed socket ends that
  connection with one log line; the server then accepts the next client and the client
  reconnects with capped exponential backoff.  Nothing raised by a peer stops the service.
* TLS is TLS 1.3 only with mutual certificate authentication (fast framing inside); the UDP
  transport is plaintext, one datagram per packet, the client's address is learned from every
  datagram it sends.  A created device gets MTU 1452 so datagrams never fragment and UDP GSO
  (one ``sendmsg`` per TSO super-packet, split by :func:`tunkit.packet.vnet.gso_split_into`)
  and UDP GRO on receive can be used.

Where the time goes (perf and py-spy, iperf3 through the tunnel, 2 cores): in fast mode
about 35 % of the tunnel's CPU is the four kernel copies of every byte (TUN read, TCP send,
TCP receive, TUN write; none can be spliced: TUN has no splice_read/splice_write, and
zero-copy sends to a local socket are copied anyway), about 10-15 % is the interpreter,
the rest the outer TCP stack and wake-ups.  Raw veth copies each byte twice, so fast
mode lands near a third of raw veth when CPU-bound.  In compat and UDP mode the receiver's
one TUN write per 1500-byte packet dominates (the kernel runs its stack once per packet);
rebuilding super-packets in Python (``gro_coalesce``) cost more than it saved.  TLS adds the
AES-GCM work in ``SSLObject.read``/``write`` (GIL released) plus one memory-BIO copy per
direction.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tunkit.errors import ConfigError, MalformedPacketError, RemoteProtocolError, TunkitError
from tunkit.p2p.framing import (
    NEED_DATA,
    VNET_HDR_LEN,
    FrameDecoder,
    Framing,
    compat_framing,
    fast_framing,
    scan_frames,
)
from tunkit.p2p.negotiation import (
    ClientNegotiator,
    Decision,
    Mode,
    NegotiationError,
    Role,
    ServerNegotiator,
    parse_probe,
)
from tunkit.p2p.negotiation import Framing as Agreed
from tunkit.packet.vnet import complete_checksum, decode_vnet_hdr, gso_split_into

log = logging.getLogger("tunkit.p2p")

DEFAULT_PORT = 55555
ZERO_VNET = bytes(VNET_HDR_LEN)
SOCKET_BUFFER = 4 * 1024 * 1024
RX_BUFFER = 4 * 1024 * 1024
TX_BUFFER = 1024 * 1024
TX_MAX_VIEWS = 512
TLS_SLICE = 256 * 1024
MAX_READ = 65535 + 256 + VNET_HDR_LEN
POLL_MS = 200
UDP_KEEPALIVE = 10.0
VNET_F_NEEDS_CSUM = 0x01
# TUN_F_* offload bits (kernel ABI, PROTOCOLS.md §1)
OFFLOADS_NONE = 0
OFFLOADS_FAST = 0x01 | 0x02 | 0x04 | 0x20 | 0x40  # CSUM, TSO4, TSO6, USO4, USO6
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
UDP_GSO_MAX_SEGMENTS = 64
UDP_GSO_MAX_BYTES = 65000
UDP_SPLIT_BUFFER = 256 * 1024


class PacketDevice(Protocol):
    """What the service needs from a TUN/TAP device opened with a virtio_net_hdr."""

    name: str

    def fileno(self) -> int: ...
    def read_into(self, buf: bytearray | memoryview) -> int: ...
    def write(self, data: bytes | bytearray | memoryview) -> int: ...
    def writev(self, parts: Sequence[bytes | bytearray | memoryview]) -> int: ...


class ConnectionEnded(TunkitError):
    """The current connection is over (peer closed, reset, or refused); the reason is the text."""


@dataclass
class TlsFiles:
    cert: str
    key: str
    ca: str


@dataclass
class P2PConfig:
    """Everything the service needs; built by the CLI from the flags."""

    server: bool
    host: str | None = None
    port: int = DEFAULT_PORT
    tap: bool = False
    debug: bool = False
    mode: Mode = Mode.AUTO
    tls: TlsFiles | None = None
    udp: bool = False
    mtu: int = 1500
    stats_interval: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    bind: str = ""


@dataclass
class Counters:
    """Totals since start; each field is written by one thread only."""

    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    dropped: int = 0
    connections: int = 0

    def line(self) -> str:
        return (
            f"stats: to peer {self.tx_packets} frames {self.tx_bytes} bytes, from peer "
            f"{self.rx_packets} frames {self.rx_bytes} bytes, dropped {self.dropped}, "
            f"connections {self.connections}"
        )


# --------------------------------------------------------------------------- streams


def _tune_tcp(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
    # notice a silently vanished peer within about half a minute
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3),
                        ("TCP_USER_TIMEOUT", 30000)):
        if hasattr(socket, name):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class TcpStream:
    """A connected TCP socket with scatter-gather send."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer

    def send_views(self, views: list[memoryview]) -> None:
        """Send every view (consumed from ``views`` as they go out)."""
        while views:
            _consume(views, self.sock.sendmsg(views[:TX_MAX_VIEWS]))

    def recv_into(self, view: memoryview) -> int:
        return self.sock.recv_into(view)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class TlsStream:
    """TLS over a TCP socket through memory BIOs, usable by one reader and one writer thread.

    OpenSSL forbids concurrent use of one SSL object, so every SSL call holds ``_ssl_lock``;
    socket I/O happens outside it.  ``_send_lock`` is taken before ``_ssl_lock`` is released so
    ciphertext leaves in the order it was produced.
    """

    def __init__(self, sock: socket.socket, peer: str, ctx: ssl.SSLContext, server_side: bool):
        self.sock = sock
        self.peer = peer
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=server_side,
                                 server_hostname=None)
        self._ssl_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._raw = bytearray(256 * 1024)
        self._pending = b""

    def _take_output_locked(self) -> bytes:
        data = self._out.read()
        if data:
            self._send_lock.acquire()
        return data

    def _send_taken(self, data: bytes) -> None:
        if not data:
            return
        try:
            self.sock.sendall(data)
        finally:
            self._send_lock.release()

    def _feed(self) -> None:
        n = self.sock.recv_into(self._raw)
        if n == 0:
            raise ConnectionEnded("peer closed the connection during TLS")
        with self._ssl_lock:
            self._in.write(memoryview(self._raw)[:n])

    def handshake(self) -> None:
        while True:
            failure: ssl.SSLError | None = None
            with self._ssl_lock:
                try:
                    self._obj.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                except ssl.SSLError as exc:
                    failure = exc  # still send the alert, so the peer learns why
                    done = False
                out = self._take_output_locked()
            with contextlib.suppress(OSError):
                self._send_taken(out)
            if failure is not None:
                raise failure
            if done:
                return
            self._feed()

    def peer_subject(self) -> str:
        cert = self._obj.getpeercert() or {}
        subject: Any = cert.get("subject", ())
        parts = [f"{k}={v}" for rdn in subject for k, v in rdn]
        return ",".join(parts) or "?"

    def confirm(self, timeout: float) -> None:
        """Client side: wait for the server's first post-handshake record (its session ticket)
        so a refused certificate shows up now, as an error, rather than as a later EOF."""
        self.sock.settimeout(timeout)
        try:
            self._feed()
            with self._ssl_lock:
                with contextlib.suppress(ssl.SSLWantReadError):
                    self._pending = self._obj.read(256 * 1024)
                out = self._take_output_locked()
            self._send_taken(out)
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(None)

    def send_views(self, views: list[memoryview]) -> None:
        # Encrypt in slices of about TLS_SLICE bytes so the other direction (often the inner
        # TCP's ACKs) never waits long for the SSL lock.
        i = 0
        while i < len(views):
            size = 0
            with self._ssl_lock:
                while i < len(views) and size < TLS_SLICE:
                    self._obj.write(views[i])
                    size += len(views[i])
                    i += 1
                out = self._take_output_locked()
            self._send_taken(out)

    def recv_into(self, view: memoryview) -> int:
        if self._pending:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
            self._pending = self._pending[n:]
            return n
        while True:
            got = 0
            want = min(len(view), TLS_SLICE)
            with self._ssl_lock:
                try:
                    while got < want:
                        k = self._obj.read(want - got, view[got:])
                        if not k:
                            break
                        got += int(k)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    if not got:
                        return 0
                out = self._take_output_locked()
            self._send_taken(out)
            if got:
                return got
            n = self.sock.recv_into(self._raw)
            if n == 0:
                return 0
            with self._ssl_lock:
                self._in.write(memoryview(self._raw)[:n])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


Stream = TcpStream | TlsStream


def _consume(views: list[memoryview], sent: int) -> None:
    """Drop ``sent`` bytes from the front of ``views`` (in place)."""
    i = 0
    while sent and i < len(views):
        n = len(views[i])
        if sent >= n:
            sent -= n
            i += 1
        else:
            views[i] = views[i][sent:]
            sent = 0
    del views[:i]


def tls_context(files: TlsFiles, server: bool) -> ssl.SSLContext:
    """TLS 1.3 only, mutual authentication against our CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(files.cert, files.key)
        ctx.load_verify_locations(files.ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files ({files.cert}, {files.key}, {files.ca}): {exc}") from None
    # The CA is private to this tunnel: a chain to it (and the serverAuth/clientAuth purpose
    # OpenSSL checks) is the identity; the host is usually an IP the certificate cannot name.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or exc.strerror or str(exc)
        return reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- the service


@dataclass
class _Connection:
    stream: Stream
    framing: Framing
    agreed: Agreed
    initial: bytes = b""
    deliver: list[bytes] = field(default_factory=list)


class _RxState:
    """The receive buffer of one connection: ``buf[start:end]`` holds undecoded bytes."""

    def __init__(self, conn: _Connection, framing: Framing) -> None:
        self.framing = framing
        self.buf = bytearray(RX_BUFFER)
        self.mv = memoryview(self.buf)
        self.end = len(conn.initial)
        self.buf[: self.end] = conn.initial
        self.start = 0
        self.reserve = framing.max_length + framing.header_len

    def free(self) -> memoryview:
        return self.mv[self.end :]

    def compact(self) -> None:
        if self.start == self.end:
            self.start = self.end = 0
        elif len(self.buf) - self.end < self.reserve:
            self.buf[: self.end - self.start] = self.buf[self.start : self.end]
            self.end -= self.start
            self.start = 0


class P2PService:
    """Tunnel ``device`` to the peer described by ``config``; see the module docstring."""

    def __init__(
        self,
        config: P2PConfig,
        device: PacketDevice,
        set_offloads: Callable[[int], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not config.server and not config.host:
            raise ConfigError("client mode needs a server address (-c HOST)")
        self.config = config
        self.device = device
        self._set_offloads = set_offloads or (lambda bits: bits)
        self._clock = clock
        self._stop = threading.Event()
        self.counters = Counters()
        self.kind = "tap" if config.tap else "tun"
        self._tls = tls_context(config.tls, config.server) if config.tls else None
        self._listener: socket.socket | None = None
        self.ready = threading.Event()
        """Set once the server listens (or the client first tries to connect)."""
        self.bound_port: int | None = None
        self._fast = fast_framing()
        self._compat_max = compat_framing(config.mtu, config.tap).max_length
        self._udp_gso = True
        os.set_blocking(device.fileno(), False)

    # -- lifetime
    def stop(self) -> None:
        """Ask :meth:`run` to return soon (safe from a signal handler or another thread)."""
        self._stop.set()

    def run(self) -> None:
        stats = threading.Thread(target=self._stats_loop, name="p2p-stats", daemon=True)
        stats.start()
        try:
            if self.config.udp:
                self._run_udp()
            elif self.config.server:
                self._run_server()
            else:
                self._run_client()
        finally:
            self._stop.set()
            if self._listener is not None:
                self._listener.close()
            log.info("stopped; %s", self.counters.line())

    def _stats_loop(self) -> None:
        interval = self.config.stats_interval
        if interval <= 0:
            return
        while not self._stop.wait(interval):
            log.info("%s", self.counters.line())

    # -- TCP / TLS server and client
    def _run_server(self) -> None:
        family = socket.AF_INET6 if ":" in self.config.bind else socket.AF_INET
        lst = socket.socket(family, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            lst.bind((self.config.bind, self.config.port))
        except OSError as exc:
            lst.close()
            raise ConfigError(f"cannot listen on port {self.config.port}: {exc.strerror}") from None
        lst.listen(4)
        lst.settimeout(POLL_MS / 1000)
        self._listener = lst
        self.bound_port = lst.getsockname()[1]
        log.info("listening on %s port %d (%s, %s)", self.config.bind or "*", self.bound_port,
                 "TLS 1.3" if self._tls else "TCP", self._mode_text())
        self.ready.set()
        while not self._stop.is_set():
            try:
                sock, addr = lst.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log.warning("accept failed: %s", exc.strerror)
                continue
            peer = f"{addr[0]}:{addr[1]}"
            log.info("client %s connected", peer)
            self._serve_connection(sock, peer, Role.ACCEPT)

    def _run_client(self) -> None:
        assert self.config.host is not None
        delay = self.config.backoff_initial
        self.ready.set()
        while not self._stop.is_set():
            target = f"{self.config.host}:{self.config.port}"
            try:
                sock = socket.create_connection((self.config.host, self.config.port), timeout=5)
            except OSError as exc:
                log.info("cannot connect to %s: %s; retrying in %gs", target,
                         exc.strerror or exc, delay)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, self.config.backoff_max)
                continue
            log.info("connected to %s", target)
            started = self._clock()
            useful = self._serve_connection(sock, target, Role.OFFER)
            if self._stop.is_set():
                return
            if useful or self._clock() - started > 30:
                delay = self.config.backoff_initial
            log.info("reconnecting to %s in %gs", target, delay)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.config.backoff_max)

    def _mode_text(self) -> str:
        return "fast framing" if self._tls else f"mode {self.config.mode.value}"

    def _serve_connection(self, sock: socket.socket, peer: str, role: Role) -> bool:
        """Run one connection to its end; True if traffic framing was agreed."""
        self.counters.connections += 1
        _tune_tcp(sock)
        sock.settimeout(None)
        tcp = TcpStream(sock, peer)
        stream: Stream = tcp
        try:
            if self._tls is not None:
                tls = TlsStream(sock, peer, self._tls, server_side=role is Role.ACCEPT)
                sock.settimeout(5)
                try:
                    tls.handshake()
                except (ssl.SSLError, OSError, ConnectionEnded) as exc:
                    log.warning("refused TLS peer %s: %s", peer, _ssl_reason(exc))
                    return False
                if role is Role.OFFER:
                    try:
                        tls.confirm(1.0)
                    except (ssl.SSLError, OSError, ConnectionEnded) as exc:
                        log.warning("TLS server %s refused us: %s", peer, _ssl_reason(exc))
                        return False
                sock.settimeout(None)
                log.info("TLS 1.3 peer %s authenticated as %s", peer, tls.peer_subject())
                stream = tls
                conn = _Connection(stream, fast_framing(), Agreed.FAST)
            else:
                conn = self._negotiate(tcp, role)
            log.info("peer %s: %s framing", peer, conn.agreed.value)
            self._pump(conn)
            return True
        except (RemoteProtocolError, ConnectionEnded) as exc:
            if self._stop.is_set():
                log.info("closing connection with %s: shutting down", peer)
            else:
                log.warning("closing connection with %s: %s", peer, exc)
            return False
        except OSError as exc:
            log.warning("connection with %s failed: %s", peer, exc.strerror or exc)
            return False
        finally:
            stream.close()
            log.info("peer %s disconnected", peer)

    def _negotiate(self, stream: TcpStream, role: Role) -> _Connection:
        cfg = self.config
        now = self._clock()
        neg: ClientNegotiator | ServerNegotiator
        if role is Role.OFFER:
            neg = ClientNegotiator(cfg.mode, cfg.tap, cfg.mtu, now)
            decision = neg.start()
        else:
            neg = ServerNegotiator(cfg.mode, cfg.tap, cfg.mtu, now)
            decision = Decision(neg.framing)
        deliver: list[bytes] = []
        compat = compat_framing(cfg.mtu, cfg.tap)
        decoder = FrameDecoder(compat)
        buf = bytearray(65536)

        def apply(d: Decision) -> None:
            for frame in d.send:
                stream.sock.sendall(frame)
            deliver.extend(d.deliver)
            if d.reason:
                log.info("peer %s: %s", stream.peer, d.reason)

        apply(decision)
        try:
            while neg.framing is None:
                if self._stop.is_set():
                    raise ConnectionEnded("stopping")
                remaining = neg.deadline - self._clock()
                if remaining <= 0:
                    apply(neg.on_timer(self._clock()))
                    break
                stream.sock.settimeout(min(remaining, POLL_MS / 1000))
                try:
                    n = stream.sock.recv_into(buf)
                except TimeoutError:
                    continue
                if n == 0:
                    raise ConnectionEnded("peer closed the connection")
                decoder.receive_data(bytes(buf[:n]))
                while neg.framing is None:
                    frame = decoder.next_frame()
                    if frame is NEED_DATA:
                        break
                    assert isinstance(frame, bytes)
                    apply(neg.receive_frame(frame, self._clock()))
        finally:
            stream.sock.settimeout(None)
        agreed = neg.framing
        assert agreed is not None
        framing = fast_framing() if agreed is Agreed.FAST else compat
        return _Connection(stream, framing, agreed, decoder.take_remaining(), deliver)

    # -- the two pumps
    def _pump(self, conn: _Connection) -> None:
        fast = conn.agreed is Agreed.FAST
        applied = self._set_offloads(OFFLOADS_FAST if fast else OFFLOADS_NONE)
        if self.config.debug:
            log.debug("device offloads %#x", applied)
        for packet in conn.deliver:
            self._write_packet(memoryview(packet), fast=False)
            self.counters.rx_packets += 1
            self.counters.rx_bytes += len(packet)
        if isinstance(conn.stream, TcpStream) and not fast:
            try:
                self._compat_loop(conn)
            except OSError as err:
                if self._stop.is_set() or isinstance(err, (ConnectionResetError, BrokenPipeError)):
                    raise ConnectionEnded(err.strerror or str(err)) from None
                raise
            return
        done = threading.Event()
        errors: list[BaseException] = []

        def guard(fn: Callable[[_Connection, threading.Event], None]) -> Callable[[], None]:
            def body() -> None:
                try:
                    fn(conn, done)
                except BaseException as exc:
                    errors.append(exc)
                finally:
                    done.set()
            return body

        threads = [
            threading.Thread(target=guard(self._device_to_peer), name="p2p-tx", daemon=True),
            threading.Thread(target=guard(self._peer_to_device), name="p2p-rx", daemon=True),
        ]
        for t in threads:
            t.start()
        while not done.wait(POLL_MS / 1000):
            if self._stop.is_set():
                break
        done.set()
        conn.stream.close()
        for t in threads:
            t.join(5)
        for exc in errors:
            if isinstance(exc, (RemoteProtocolError, ConnectionEnded)):
                raise exc
            if isinstance(exc, ssl.SSLError):
                raise ConnectionEnded(f"TLS error: {_ssl_reason(exc)}")
            if isinstance(exc, OSError):
                if self._stop.is_set() or isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                    raise ConnectionEnded(exc.strerror or str(exc))
                raise exc
            raise exc

    def _compat_frame(self, mv: memoryview, pos: int, n: int) -> memoryview | None:
        """``mv[pos:pos+n]`` is vnet_hdr + packet; frame it in place (length over the header)."""
        hdr = mv[pos : pos + VNET_HDR_LEN]
        if hdr[1] != 0:
            return None  # a GSO super-packet queued while offloads were on: cannot send it
        packet = mv[pos + VNET_HDR_LEN : pos + n]
        if hdr[0] & VNET_F_NEEDS_CSUM:
            try:
                complete_checksum(decode_vnet_hdr(hdr), packet)
            except MalformedPacketError:
                return None
        length = n - VNET_HDR_LEN
        if length > self._compat_max:
            return None
        struct.pack_into("!H", mv, pos + VNET_HDR_LEN - 2, length)
        return mv[pos + VNET_HDR_LEN - 2 : pos + n]

    def _device_to_peer(self, conn: _Connection, done: threading.Event) -> None:
        """Fast framing (TCP or TLS): read every queued super-packet, send them in one go."""
        buf = bytearray(TX_BUFFER + MAX_READ + 8)
        mv = memoryview(buf)
        poller = select.poll()
        poller.register(self.device.fileno(), select.POLLIN)
        readv, dfd = os.readv, self.device.fileno()
        pack_into, max_len = self._fast.header.pack_into, self._fast.max_length
        send = conn.stream.send_views
        debug = self.config.debug
        c = self.counters
        while not done.is_set():
            views: list[memoryview] = []
            pos = 0
            while pos <= TX_BUFFER and len(views) < TX_MAX_VIEWS:
                try:
                    n = readv(dfd, [mv[pos + 4 :]])
                except BlockingIOError:
                    break
                if not VNET_HDR_LEN < n <= max_len:
                    c.dropped += 1
                    continue
                pack_into(buf, pos, n)
                views.append(mv[pos : pos + 4 + n])
                pos += 4 + n
                c.tx_packets += 1
                c.tx_bytes += n
                if debug:
                    log.debug("TAP2NET %d: Read %d bytes from the %s interface", c.tx_packets,
                              n - VNET_HDR_LEN, self.kind)
            if not views:
                poller.poll(POLL_MS)
                continue
            send(views)
            if debug:
                first = c.tx_packets - len(views) + 1
                for k, view in enumerate(views):
                    log.debug("TAP2NET %d: Written %d bytes to the network", first + k, len(view))

    def _compat_loop(self, conn: _Connection) -> None:
        """Both directions of a plain-TCP compat connection in this one thread.

        A packet from the peer is written to the device and, in the same pass, whatever the
        kernel queued in answer (a ping reply) is read back and sent: no thread hand-off on
        the round trip.  Sending never blocks: while the socket is full the device is left
        unread (its queue drops, as a NIC would) and the socket keeps being read, so two ends
        can never wait on each other.
        """
        sock = conn.stream.sock
        sock.setblocking(False)
        sfd, dfd = sock.fileno(), self.device.fileno()
        rx = _RxState(conn, conn.framing)
        buf, rxmv = rx.buf, rx.mv
        probe_len = (14 if self.config.tap else 20) + 13
        txbuf = bytearray(TX_BUFFER + MAX_READ + 8)
        tx = memoryview(txbuf)
        tx_limit = TX_BUFFER
        pending: list[memoryview] = []
        poller = select.poll()
        poller.register(dfd, select.POLLIN)
        poller.register(sfd, select.POLLIN)
        want_out = False
        debug = self.config.debug
        recv_into, sendmsg = sock.recv_into, sock.sendmsg
        readv, writev = os.readv, os.writev
        header = conn.framing.header
        hlen = header.size
        unpack_from, pack_into = header.unpack_from, header.pack_into
        max_len = conn.framing.max_length
        c = self.counters
        stop = self._stop
        poll = poller.poll
        dev_poller = select.poll()
        dev_poller.register(dfd, select.POLLIN)
        dev_poll = dev_poller.poll
        sock_ready = dev_ready = True
        dev_maybe = False
        parse = rx.end > 0  # frames that arrived with the negotiation
        while not stop.is_set():
            if sock_ready:
                try:
                    n = recv_into(rxmv[rx.end :])
                except BlockingIOError:
                    n = -1
                if n == 0:
                    raise ConnectionEnded("peer closed the connection")
                if n > 0:
                    if debug:
                        log.debug("NET2TAP: Read %d bytes from the network", n)
                    rx.end += n
                    parse = True
            if parse:
                parse = False
                end = rx.end
                pos = rx.start
                while end - pos >= hlen:
                    (length,) = unpack_from(buf, pos)
                    if not 0 < length <= max_len:
                        scan_frames(conn.framing, buf, pos, end)  # raises the framing error
                    if end - pos - hlen < length:
                        break
                    pos += hlen
                    packet = rxmv[pos : pos + length]
                    pos += length
                    if length == probe_len:
                        probe = parse_probe(bytes(packet), self.config.tap)
                        if probe is not None:
                            if probe.role is Role.ACCEPT and not self.config.server:
                                raise NegotiationError(
                                    "peer accepted fast mode after we fell back")
                            continue
                    try:
                        writev(dfd, [ZERO_VNET, packet])
                    except OSError as exc:
                        c.dropped += 1
                        if debug:
                            log.debug("device refused a %d-byte packet: %s", length,
                                      exc.strerror)
                        continue
                    c.rx_packets += 1
                    c.rx_bytes += length
                    if debug:
                        log.debug("NET2TAP %d: Written %d bytes to the %s interface",
                                  c.rx_packets, length, self.kind)
                rx.start, rx.end = pos, end
                rx.compact()
                dev_maybe = True  # an answer to what we just wrote may be queued already
            if (dev_ready or dev_maybe) and not pending:
                pos = 0
                while pos <= tx_limit and len(pending) < TX_MAX_VIEWS:
                    # poll() says whether more is queued: far cheaper than an EAGAIN exception
                    if not dev_ready and not dev_poll(0):
                        break
                    dev_ready = False
                    try:
                        n = readv(dfd, [tx[pos:]])
                    except BlockingIOError:
                        break
                    length = n - VNET_HDR_LEN
                    if txbuf[pos + 1] or txbuf[pos] & VNET_F_NEEDS_CSUM or not 0 < length <= max_len:
                        frame = self._compat_frame(tx, pos, n) if length > 0 else None
                        if frame is None:
                            c.dropped += 1
                            continue
                    else:
                        pack_into(txbuf, pos + VNET_HDR_LEN - 2, length)
                    pending.append(tx[pos + VNET_HDR_LEN - 2 : pos + n])
                    pos += n
                    c.tx_packets += 1
                    c.tx_bytes += length
                    if debug:
                        log.debug("TAP2NET %d: Read %d bytes from the %s interface",
                                  c.tx_packets, length, self.kind)
                        log.debug("TAP2NET %d: Written %d bytes to the network",
                                  c.tx_packets, length + 2)
            if pending:
                try:
                    sent = sendmsg(pending)
                except BlockingIOError:
                    sent = 0
                _consume(pending, sent)
                if pending and not want_out:
                    want_out = True
                    poller.modify(sfd, select.POLLIN | select.POLLOUT)
                    poller.modify(dfd, 0)
            if want_out and not pending:
                want_out = False
                poller.modify(sfd, select.POLLIN)
                poller.modify(dfd, select.POLLIN)
            sock_ready = dev_ready = dev_maybe = False
            for fd, _ev in poll(POLL_MS):
                if fd == sfd:
                    sock_ready = True  # POLLOUT, POLLERR and POLLHUP too: the calls tell
                else:
                    dev_ready = True

    def _write_packet(self, packet: memoryview, fast: bool) -> None:
        try:
            if fast:
                self.device.write(packet)
            else:
                self.device.writev([ZERO_VNET, packet])
        except OSError as exc:
            self.counters.dropped += 1
            if self.config.debug:
                log.debug("device refused a %d-byte packet: %s", len(packet), exc.strerror)

    def _peer_to_device(self, conn: _Connection, done: threading.Event) -> None:
        """Fast framing (TCP or TLS): receive in bulk, write every complete frame."""
        framing = conn.framing
        rx = _RxState(conn, framing)
        buf, mv = rx.buf, rx.mv
        recv_into = conn.stream.recv_into
        write, dfd = os.write, self.device.fileno()
        unpack_from, hlen, max_len = framing.header.unpack_from, framing.header_len, framing.max_length
        debug = self.config.debug
        c = self.counters
        while True:
            pos, end = rx.start, rx.end
            while end - pos >= hlen:
                (length,) = unpack_from(buf, pos)
                if not 0 < length <= max_len:
                    scan_frames(framing, buf, pos, end)  # raises the framing error
                if end - pos - hlen < length:
                    break
                pos += hlen
                try:
                    write(dfd, mv[pos : pos + length])
                except OSError as exc:
                    c.dropped += 1
                    if debug:
                        log.debug("device refused a %d-byte packet: %s", length, exc.strerror)
                else:
                    c.rx_packets += 1
                    c.rx_bytes += length
                    if debug:
                        log.debug("NET2TAP %d: Written %d bytes to the %s interface",
                                  c.rx_packets, length - VNET_HDR_LEN, self.kind)
                pos += length
            rx.start = pos
            rx.compact()
            if done.is_set():
                return
            n = recv_into(rx.free())
            if n == 0:
                raise ConnectionEnded("peer closed the connection")
            rx.end += n
            if debug:
                log.debug("NET2TAP: Read %d bytes from the network", n)

    # -- UDP
    def _run_udp(self) -> None:
        cfg = self.config
        if cfg.server:
            family = socket.AF_INET6 if ":" in cfg.bind else socket.AF_INET
            addr: tuple[str, int] = (cfg.bind, cfg.port)
        else:
            assert cfg.host is not None
            try:
                infos = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                raise ConfigError(f"cannot resolve {cfg.host}: {exc}") from None
            family, _, _, _, sockaddr = infos[0]
            addr = (str(sockaddr[0]), int(sockaddr[1]))
        sock = socket.socket(family, socket.SOCK_DGRAM)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        peer: list[tuple[str, int] | None] = [None]
        try:
            if cfg.server:
                sock.bind(addr)
                self.bound_port = sock.getsockname()[1]
                log.info("UDP (plaintext) listening on port %d", self.bound_port)
            else:
                sock.connect(addr)
                peer[0] = addr
                log.info("UDP (plaintext) sending to %s:%d", addr[0], addr[1])
        except OSError as exc:
            sock.close()
            raise ConfigError(f"UDP socket on port {cfg.port}: {exc.strerror}") from None
        # TAP frames carry an Ethernet header the splitter does not parse: no GSO for them.
        self._set_offloads(OFFLOADS_NONE if cfg.tap else OFFLOADS_FAST)
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        self.counters.connections = 1
        self.ready.set()
        sock.settimeout(POLL_MS / 1000)
        rx = threading.Thread(target=self._udp_rx, args=(sock, peer), name="p2p-udp-rx",
                              daemon=True)
        rx.start()
        try:
            self._udp_tx(sock, peer)
        finally:
            self._stop.set()
            rx.join(2)
            sock.close()

    def _udp_send_segments(self, sock: socket.socket, dest: tuple[str, int], client: bool,
                           out: memoryview, spans: list[tuple[int, int]]) -> None:
        """Send equal-stride segments with UDP GSO (one sendmsg per <= 64 segments)."""
        stride = spans[0][1]
        per = max(1, min(UDP_GSO_MAX_SEGMENTS, UDP_GSO_MAX_BYTES // stride))
        for i in range(0, len(spans), per):
            group = spans[i : i + per]
            first, last = group[0][0], group[-1][0] + group[-1][1]
            if self._udp_gso and len(group) > 1:
                cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", stride))]
                try:
                    if client:
                        sock.sendmsg([out[first:last]], cmsg)
                    else:
                        sock.sendmsg([out[first:last]], cmsg, 0, dest)
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT,
                                         errno.EOPNOTSUPP, errno.EMSGSIZE):
                        raise
                    self._udp_gso = False
                    log.info("UDP GSO unavailable (%s); sending datagrams one by one",
                             exc.strerror)
            for off, length in group:
                if client:
                    sock.send(out[off : off + length])
                else:
                    sock.sendto(out[off : off + length], dest)

    def _udp_tx(self, sock: socket.socket, peer: list[tuple[str, int] | None]) -> None:
        client = not self.config.server
        mv = memoryview(bytearray(MAX_READ + 8))
        out = memoryview(bytearray(UDP_SPLIT_BUFFER))
        poller = select.poll()
        poller.register(self.device.fileno(), select.POLLIN)
        last_keepalive = -1e9
        c = self.counters
        limit = self._compat_max
        while not self._stop.is_set():
            now = self._clock()
            if client and now - last_keepalive >= UDP_KEEPALIVE:
                with contextlib.suppress(OSError):
                    sock.send(b"")
                last_keepalive = now
            try:
                n = self.device.read_into(mv)
            except BlockingIOError:
                poller.poll(POLL_MS)
                continue
            dest = peer[0]
            if n <= VNET_HDR_LEN or dest is None:
                c.dropped += 1
                continue
            try:
                hdr = decode_vnet_hdr(mv[:VNET_HDR_LEN])
                if hdr.gso_type == 0 and not hdr.flags & VNET_F_NEEDS_CSUM:
                    source, spans = mv, [(VNET_HDR_LEN, n - VNET_HDR_LEN)]
                elif self.config.tap:
                    raise MalformedPacketError("offloaded TAP frame in UDP mode")
                else:
                    source, spans = out, gso_split_into(hdr, mv[VNET_HDR_LEN:n], out)
            except (MalformedPacketError, ValueError):
                c.dropped += 1
                continue
            if any(length > limit for _, length in spans):
                c.dropped += 1
                continue
            try:
                self._udp_send_segments(sock, dest, client, source, spans)
            except OSError:
                c.dropped += 1
                continue
            c.tx_packets += len(spans)
            c.tx_bytes += n - VNET_HDR_LEN
            if self.config.debug:
                for _, length in spans:
                    log.debug("TAP2NET %d: Read %d bytes from the %s interface", c.tx_packets,
                              length, self.kind)

    def _udp_rx(self, sock: socket.socket, peer: list[tuple[str, int] | None]) -> None:
        buf = bytearray(65536)
        mv = memoryview(buf)
        limit = self._compat_max
        c = self.counters
        cmsg_space = socket.CMSG_SPACE(4)
        while not self._stop.is_set():
            try:
                n, ancdata, _flags, addr = sock.recvmsg_into([mv], cmsg_space)
            except TimeoutError:
                continue
            except OSError:
                continue  # ICMP errors (server not up yet) surface here: keep going
            if self.config.server and addr != peer[0]:
                log.info("UDP peer is now %s:%d", addr[0], addr[1])
                peer[0] = addr
            if n == 0:
                continue  # keepalive: only teaches us the address
            segment = n
            for level, kind, value in ancdata:
                if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
                    segment = struct.unpack_from("=i", value)[0] or n
            packets: list[memoryview] = []
            for off in range(0, n, segment):
                length = min(segment, n - off)
                if length > limit:
                    c.dropped += 1
                    log.warning("dropping a %d-byte datagram from %s (limit %d)", length,
                                addr[0], limit)
                    continue
                packets.append(mv[off : off + length])
                c.rx_packets += 1
                c.rx_bytes += length
                if self.config.debug:
                    log.debug("NET2TAP %d: Written %d bytes to the %s interface", c.rx_packets,
                              length, self.kind)
            # Per-datagram writes: rebuilding super-packets with gro_coalesce costs more
            # Python time than the kernel saves (measured: 0.53 vs 0.65-1.15 Gbit/s).
            for packet in packets:
                self._write_packet(packet, fast=False)
