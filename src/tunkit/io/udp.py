"""Batched UDP for the WireGuard data plane.

Python has no ``sendmmsg``/``recvmmsg``, so batching uses the kernel's UDP offloads instead:

* **send**: :meth:`UdpTransport.send_batch` groups consecutive same-size datagrams to one
  endpoint and sends each group with one ``sendmsg`` carrying a ``UDP_SEGMENT`` cmsg (UDP
  GSO, Linux >= 4.18). The kernel cuts the buffer back into datagrams of ``segment_size``
  bytes (the last may be shorter). A refused GSO send is retried as one ``sendto`` per
  datagram; after repeated refusals of small segments GSO is turned off for good.
* **receive**: with ``UDP_GRO`` enabled (Linux >= 5.0), one ``recvmsg`` may return several
  datagrams from the same source coalesced into one buffer, with a cmsg telling their size.
  :meth:`UdpTransport.receive_batch` splits them back into datagrams.

The socket is dual-stack (AF_INET6 with ``IPV6_V6ONLY=0``) so one port serves IPv4 and IPv6
peers; an IPv4 peer appears as ``("192.0.2.1", 51820)``, never as a v4-mapped address. If
IPv6 is unavailable the transport falls back to a plain AF_INET socket.

Endpoints are ``(host, port)`` tuples with a numeric host; :func:`format_endpoint` and
:func:`parse_endpoint` convert to and from the ``1.2.3.4:51820`` / ``[::1]:51820`` text form
used by UAPI.

Not thread-safe for concurrent senders; one reader and one writer thread is fine.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence

from tunkit.errors import ConfigError, DeviceError
from tunkit.wireguard.peer import PackedDatagrams

Endpoint = tuple[str, int]
Buffer = bytes | bytearray | memoryview

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_MARK = 36
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SOCKET_BUFFER_BYTES = 8 << 20
# The kernel limits one GSO send to 64 segments (UDP_MAX_SEGMENTS) and 64 KiB of payload.
MAX_GSO_SEGMENTS = 64
MAX_GSO_BYTES = 65000
RECV_BUFFER_BYTES = 65535 + 64
GSO_TRUSTED_SIZE = 1280  # fits every IPv6 path: a refusal at this size means "no GSO here"
GSO_MAX_FAILURES = 8
_CMSG_SPACE = socket.CMSG_SPACE(4)
_INT = struct.Struct("=i")
_U16 = struct.Struct("=H")


def format_endpoint(endpoint: Endpoint) -> str:
    """``("1.2.3.4", 5)`` -> ``1.2.3.4:5``; ``("::1", 5)`` -> ``[::1]:5``."""
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``host:port`` or ``[v6]:port`` with a numeric host; raise ConfigError."""
    text = text.strip()
    try:
        if text.startswith("["):
            host, _, port_text = text[1:].partition("]:")
        else:
            host, _, port_text = text.rpartition(":")
        address = ipaddress.ip_address(host.split("%")[0])
        port = int(port_text)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    except ValueError as exc:
        raise ConfigError(f"bad endpoint {text!r}: expected host:port or [v6]:port") from exc
    if not 0 < port < 65536:
        raise ConfigError(f"bad endpoint {text!r}: port out of range")
    return normalize_endpoint((str(address), port))


def normalize_endpoint(endpoint: Endpoint | tuple[str, int, int, int]) -> Endpoint:
    """Drop flowinfo/scope and unwrap v4-mapped v6 (``::ffff:1.2.3.4``) to plain v4."""
    host, port = endpoint[0], endpoint[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return (host, port)


def endpoint_of(value: object) -> Endpoint:
    """An endpoint from what a caller stored: a ``(host, port[, ...])`` tuple or text."""
    if isinstance(value, tuple) and len(value) >= 2:
        return normalize_endpoint((str(value[0]), int(value[1])))
    if isinstance(value, str):
        return parse_endpoint(value)
    raise ConfigError(f"not an endpoint: {value!r}")


class UdpTransport:
    """One bound UDP socket (dual-stack when possible) with GSO send and GRO receive."""

    def __init__(self, port: int = 0, *, fwmark: int = 0, gso: bool = True, gro: bool = True) -> None:
        self.gso_enabled = gso
        self.gso_failures = 0
        self.gro_enabled = False
        self.fwmark = 0
        self.dual_stack = False
        self._sock = self._bind(port)
        self.port: int = self._sock.getsockname()[1]
        if fwmark:
            self.set_fwmark(fwmark)
        if gro:
            self._enable_gro()
        # counters (read by the service's stats)
        self.tx_datagrams = 0
        self.tx_syscalls = 0
        self.rx_datagrams = 0
        self.rx_syscalls = 0
        self.tx_errors = 0

    # ---------------------------------------------------------------- setup
    def _bind(self, port: int) -> socket.socket:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", port))
                self.dual_stack = True
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DeviceError(f"UDP port {port} is already in use") from exc
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError as exc4:
                sock.close()
                raise DeviceError(f"cannot bind UDP port {port}: {exc4.strerror}") from exc4
        # bursts of GSO/GRO batches need more than the default ~200 KiB; the FORCE variants
        # (root) bypass net.core.[rw]mem_max, the plain ones are the unprivileged fallback
        for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER_BYTES)
            except OSError:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER_BYTES)
        sock.setblocking(False)
        return sock

    def _enable_gro(self) -> None:
        try:
            self._sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self.gro_enabled = True
        except OSError:
            self.gro_enabled = False

    def set_fwmark(self, mark: int) -> None:
        """Set SO_MARK (0 clears it); needs CAP_NET_ADMIN."""
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        except OSError as exc:
            raise DeviceError(f"cannot set fwmark {mark}: {exc.strerror}") from exc
        self.fwmark = mark

    def rebind(self, port: int) -> None:
        """Move to another port (UAPI ``listen_port``), keeping fwmark and GRO settings."""
        if port == self.port and port != 0:
            return
        new = self._bind(port)
        self._sock.close()
        self._sock = new
        self.port = new.getsockname()[1]
        if self.fwmark:
            self.set_fwmark(self.fwmark)
        if self.gro_enabled:
            self._enable_gro()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    # ---------------------------------------------------------------- send
    def _address(self, endpoint: Endpoint) -> tuple[str, int]:
        host, port = endpoint
        if self.dual_stack and ":" not in host:
            return ("::ffff:" + host, port)
        return (host, port)

    def sendto(self, data: Buffer, endpoint: Endpoint) -> bool:
        """Send one datagram; False (and a counted error) when the kernel refuses it."""
        self.tx_syscalls += 1
        try:
            self._sock.sendto(data, self._address(endpoint))
        except (BlockingIOError, InterruptedError):
            self.tx_errors += 1
            return False
        except OSError:
            # unreachable, no route, v6 host on a v4-only socket: drop like the kernel would
            self.tx_errors += 1
            return False
        self.tx_datagrams += 1
        return True

    def send_batch(
        self, datagrams: Sequence[Buffer], endpoint: Endpoint, packed: Buffer | None = None
    ) -> None:
        """Send datagrams to one endpoint, in order, in as few syscalls as GSO allows.

        ``packed``, if given, is the datagrams back to back in one buffer: each GSO group
        then goes to the kernel as one slice of it instead of one iovec per datagram.
        """
        n = len(datagrams)
        if n == 1 or not self.gso_enabled:
            for d in datagrams:
                self.sendto(d, endpoint)
            return
        address = self._address(endpoint)
        view = memoryview(packed) if packed is not None else None
        i = 0
        offset = 0
        while i < n:
            size = len(datagrams[i])
            j = i + 1
            total = size
            # a group is N datagrams of `size` bytes, optionally ended by one shorter one
            while j < n and j - i < MAX_GSO_SEGMENTS and total + size <= MAX_GSO_BYTES:
                length = len(datagrams[j])
                if length > size:
                    break
                total += length
                j += 1
                if length < size:
                    break
            if j - i == 1:
                self.sendto(datagrams[i], endpoint)
            else:
                group: Sequence[Buffer] = datagrams[i:j]
                whole = (view[offset : offset + total],) if view is not None else group
                self._send_segmented(group, whole, size, address, endpoint)
            offset += total
            i = j

    def send_packed(self, packed: Buffer, segment_size: int, endpoint: Endpoint) -> None:
        """Send ``packed`` as datagrams of ``segment_size`` bytes (the last may be shorter)
        to one endpoint: one GSO ``sendmsg`` per ``MAX_GSO_BYTES`` of them, no per-datagram
        work in Python."""
        view = memoryview(packed)
        total = len(view)
        if segment_size <= 0:
            segment_size = max(total, 1)
        if not self.gso_enabled or total <= segment_size:
            for offset in range(0, total, segment_size):
                self.sendto(view[offset : offset + segment_size], endpoint)
            return
        address = self._address(endpoint)
        step = max(1, min(MAX_GSO_SEGMENTS, MAX_GSO_BYTES // segment_size)) * segment_size
        for offset in range(0, total, step):
            chunk = view[offset : offset + step]
            if len(chunk) <= segment_size:
                self.sendto(chunk, endpoint)
            else:
                group = PackedDatagrams(chunk, segment_size)
                self._send_segmented(group, (chunk,), segment_size, address, endpoint)

    def _send_segmented(
        self, group: Sequence[Buffer], whole: Sequence[Buffer], size: int,
        address: tuple[str, int], endpoint: Endpoint,
    ) -> None:
        self.tx_syscalls += 1
        try:
            self._sock.sendmsg(
                whole, [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))], 0, address
            )
        except (BlockingIOError, InterruptedError):
            self.tx_errors += len(group)
            return
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                # EINVAL also means "segment larger than the path MTU" (a big inner MTU), so
                # only give up on GSO after repeated refusals of ordinary sizes
                if size <= GSO_TRUSTED_SIZE:
                    self.gso_failures += 1
                    if self.gso_failures >= GSO_MAX_FAILURES:
                        self.gso_enabled = False
                for d in group:
                    self.sendto(d, endpoint)
            else:
                self.tx_errors += len(group)
            return
        self.tx_datagrams += len(group)

    # ---------------------------------------------------------------- receive
    def receive_batch(self) -> tuple[list[bytes], Endpoint] | None:
        """Read one syscall's worth: the datagrams (all from one source) and that source.

        Returns None when nothing is waiting. Zero-length datagrams are returned as ``b""``.
        """
        try:
            data, ancdata, _flags, source = self._sock.recvmsg(RECV_BUFFER_BYTES, _CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            # ICMP errors surface here as ECONNREFUSED etc.; they carry no datagram
            return ([], ("0.0.0.0", 0))
        self.rx_syscalls += 1
        endpoint = normalize_endpoint(source)
        segment = 0
        for level, kind, value in ancdata:
            if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
                segment = _INT.unpack_from(value)[0]
        if segment <= 0 or segment >= len(data):
            self.rx_datagrams += 1
            return ([data], endpoint)
        view = memoryview(data)
        datagrams = [bytes(view[k : k + segment]) for k in range(0, len(data), segment)]
        self.rx_datagrams += len(datagrams)
        return (datagrams, endpoint)

    def receive_into(self, buffer: memoryview) -> tuple[int, int, Endpoint] | None:
        """Read one syscall's worth into ``buffer``: ``(nbytes, segment_size, source)``.

        ``segment_size`` is the UDP GRO size (datagrams of that size back to back, the
        last possibly shorter), or 0 for a single datagram.  None when nothing is waiting;
        ``nbytes`` is -1 for an error that carried no datagram (ICMP errors).
        """
        try:
            nbytes, ancdata, _flags, source = self._sock.recvmsg_into(
                (buffer,), _CMSG_SPACE
            )
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return (-1, 0, ("0.0.0.0", 0))
        self.rx_syscalls += 1
        segment = 0
        for level, kind, value in ancdata:
            if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
                segment = _INT.unpack_from(value)[0]
        if segment <= 0 or segment >= nbytes:
            segment = 0
            self.rx_datagrams += 1
        else:
            self.rx_datagrams += -(-nbytes // segment)
        host = source[0]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return (nbytes, segment, (host, source[1]))

    def receive_many(self, max_syscalls: int = 64) -> Iterable[tuple[list[bytes], Endpoint]]:
        """Drain up to ``max_syscalls`` reads; stops early when the socket is empty."""
        for _ in range(max_syscalls):
            batch = self.receive_batch()
            if batch is None:
                return
            if batch[0]:
                yield batch


Read = tuple[int, int, int, Endpoint]
"""``(offset, nbytes, segment_size, source)`` of one receive into a shared buffer; a
segment size of 0 means a single datagram (see :meth:`UdpTransport.receive_into`)."""


def merge_single_datagrams(reads: list[Read]) -> list[Read]:
    """Userspace GRO over reads laid back to back in one buffer: a read joins the run
    before it when both come from the same source, it starts where the run ends, the
    run's last datagram is full-size, and the read is a single datagram no larger than
    the run's or a GRO read of the run's segment size (a GRO read's rules: equal
    datagrams, the last one may be shorter).  Order is kept; zero-length datagrams stay
    alone."""
    out: list[Read] = []
    for read in reads:
        offset, nbytes, segment, source = read
        if out and nbytes:
            start, length, run_size, run_source = out[-1]
            run_size = run_size or length
            if (run_size and run_source == source and start + length == offset
                    and not length % run_size
                    and (segment == run_size or (not segment and nbytes <= run_size))):
                out[-1] = (start, length + nbytes, run_size, source)
                continue
        out.append(read)
    return out
