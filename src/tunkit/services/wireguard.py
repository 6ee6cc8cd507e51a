"""The WireGuard daemon's engine: the sans-IO ``tunkit.wireguard.device.Device`` wired to a TUN
device, a batched UDP socket, the UAPI socket and the clock.

Contract:

* :class:`WireGuardService` ``(ifname)`` creates the TUN device (MTU 1420, down, like
  wireguard-go), binds UDP on a random port until UAPI sets ``listen_port``, and opens the
  UAPI socket ``/var/run/wireguard/IFNAME.sock``. :meth:`run` drives everything from one
  epoll loop on the calling thread until :meth:`stop` or a signal, the TUN device
  disappearing, or the socket file being deleted; it returns the reason as a string.
* Latency: after an idle spell (one ping every 50 ms is enough on this VM) every call on
  the path of a packet runs with cold caches, at 10-50 µs each (``selectors.select`` 43 µs
  against ``epoll.poll``'s 22 µs; an EAGAIN exception 48 µs against ``poll(0)``'s 20 µs).
  So the loop calls ``epoll`` directly and, after a lone packet or datagram, each pump asks
  ``poll(0)`` before a second read instead of reading until EAGAIN (bulk reads go on as
  before); through two daemons that took 6-7 % off the minimum ping (0.71 -> 0.66 ms).
* The hot path works on batches: every wake-up drains up to ``BATCH`` reads from the TUN fd
  (or ``BATCH`` GRO reads from UDP), and flushes the resulting actions with one GSO
  ``sendmsg`` per run of same-size datagrams to one endpoint.  TUN -> UDP: a TSO
  super-packet is read into a reused buffer, planned
  (:func:`tunkit.packet.tcpsplit.plan_tcp_split`) and the core lays out, checksums and
  seals every segment at once (:meth:`Device.send_split`) into one buffer that goes out as
  one ``sendmsg`` slice per GSO run.  UDP -> TUN: GRO reads land in one preallocated buffer and each read is one
  call of :meth:`Device.receive_segments`; the decrypted TCP runs are coalesced.
* The core is not thread-safe: the UAPI threads and the loop share ``self.lock``.
* ``now`` passed to the core is ``time.monotonic()``; the core's ``wall_offset`` turns it
  into wall-clock time for TAI64N and ``last_handshake_time``.
* Counters (:meth:`stats`: the I/O edge's, the UDP transport's and the core's drop counters)
  are logged on SIGUSR1 and at exit; malformed input never raises out of the loop, it is
  dropped and counted.
* :meth:`close` removes everything it created: socket file, UDP socket, TUN device.
* Offloads: the TUN device is opened with ``IFF_VNET_HDR`` and TSO/USO/CSUM offloads, so a
  read may be a 64 KiB super-packet (segmented in place, see above) and decrypted TCP runs
  are written back coalesced (:mod:`tunkit.services.wg_offload`).

Developer switches (environment): ``TUNKIT_WG_OFFLOAD=0`` (plain TUN), ``TUNKIT_WG_TSO=0``
(vnet header for coalesced writes, but the kernel segments what we read), ``TUNKIT_WG_GSO=0``,
``TUNKIT_WG_GRO=0`` (UDP offloads), ``TUNKIT_WG_BATCH=N`` (reads per wake-up),
``TUNKIT_WG_THREADS=1`` (one thread per direction), ``TUNKIT_WG_PROFILE=PATH`` (cProfile dump).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import selectors
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from tunkit.errors import DeviceError, MalformedPacketError
from tunkit.io.tun import TunDevice, open_tun
from tunkit.io.udp import Endpoint, UdpTransport, endpoint_of, merge_single_datagrams
from tunkit.packet.tcpsplit import plan_tcp_split
from tunkit.packet.vnet import (
    GSO_NONE,
    NEEDS_CSUM,
    VNET_HDR_LEN,
    decode_vnet_hdr,
    gso_split,
)
from tunkit.services.uapi_server import SOCKET_DIRECTORY, UapiServer
from tunkit.services.wg_control import UapiGlue
from tunkit.services.wg_offload import coalesce_for_tun
from tunkit.wireguard.device import Device
from tunkit.wireguard.load import LoadDetector
from tunkit.wireguard.peer import SendDatagram, SendDatagrams, WriteToTunnel

log = logging.getLogger(__name__)

DEFAULT_MTU = 1420
# reads per wake-up: a TUN read may be a 64 KiB super-packet and a UDP read ~45 GRO'd
# datagrams, so 16 reads is already hundreds of packets; more only delays the other direction
BATCH = int(os.environ.get("TUNKIT_WG_BATCH", "16"))
_HANDSHAKE_SIZES = frozenset((148, 92))
RX_SLOT_BYTES = 65535 + 64  # one GRO read: up to 64 KiB of datagrams
SINGLE_READS = 128  # receive syscalls per wake-up at most (single datagrams are small)
TUN_READ_SIZE = 65535 + 256  # a 64 KiB super-packet plus its virtio_net_hdr
LIVENESS_INTERVAL = 0.5
SIOCGIFMTU = 0x8921
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)


class WireGuardService:
    """One WireGuard interface served from userspace; see the module docstring."""

    def __init__(
        self, ifname: str, *, mtu: int = DEFAULT_MTU, uapi_directory: str = SOCKET_DIRECTORY,
        device: Any = None,
    ) -> None:
        if device is None:
            device = Device(wall_offset=time.time() - time.monotonic(), mtu=mtu)
        self.ifname = ifname
        self.device = device
        self.lock = threading.RLock()
        self.counters: Counter[str] = Counter()
        self._stop_reason: str | None = None
        # handshake backlog or rate -> cookie replies and per-source limits (wireguard/load.py)
        self._load = LoadDetector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.tun: TunDevice | None = None
        self.offload = False
        self.udp: UdpTransport | None = None
        self.uapi: UapiServer | None = None
        self._rx_view = memoryview(bytearray(BATCH * RX_SLOT_BYTES))
        self._udp_poll = select.poll()
        self._udp_poll_fd = -1
        self._tx_buffer = bytearray(TUN_READ_SIZE)  # one TUN read, reused (sealed in place)
        self._tx_view = memoryview(self._tx_buffer)
        try:
            self.offload = os.environ.get("TUNKIT_WG_OFFLOAD") != "0"
            # TSO lets one read carry ~45 segments, but we must then split them and compute
            # their checksums in Python; without it the kernel does both in C
            tso = os.environ.get("TUNKIT_WG_TSO", "1") != "0"
            self.tun = open_tun(
                ifname, vnet_hdr=self.offload,
                offloads=None if (self.offload and tso) else 0,
            )
            self.tun.set_blocking(False)
            tun_poll = select.poll()
            tun_poll.register(self.tun.fileno(), select.POLLIN)
            self._tun_more = tun_poll.poll  # (0) -> non-empty when another read is waiting
            self._ifindex = socket.if_nametoindex(self.tun.name)
            self._set_mtu(mtu)
            self.udp = UdpTransport(
                0, gso=os.environ.get("TUNKIT_WG_GSO") != "0",
                gro=os.environ.get("TUNKIT_WG_GRO") != "0",
            )
            self.uapi = UapiServer(
                ifname, UapiGlue(self), directory=uapi_directory, lock=self.lock
            )
        except BaseException:
            self.close()
            raise

    def _set_mtu(self, mtu: int) -> None:
        from tunkit.io.netlink import Netlink

        with Netlink() as link:
            link.set_mtu(self.ifname, mtu)

    # ---------------------------------------------------------------- control
    def stop(self, reason: str = "stopped") -> None:
        """Ask :meth:`run` to return (safe from signal handlers and other threads)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            self.stop(signal.Signals(signum).name)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGUSR1, lambda _signum, _frame: self.log_stats())

    def stats(self) -> dict[str, int]:
        """I/O counters, UDP transport counters and the core's drop counters, by name."""
        out = dict(self.counters)
        if self.udp is not None:
            for name in ("tx_datagrams", "tx_syscalls", "tx_errors", "rx_datagrams",
                         "rx_syscalls"):
                out[f"udp_{name}"] = getattr(self.udp, name)
        out.update({f"core_{k}": v for k, v in self.device.stats.as_dict().items() if v})
        return out

    def log_stats(self) -> None:
        """Log every non-zero counter (on SIGUSR1 and at exit)."""
        log.info("%s stats: %s", self.ifname,
                 " ".join(f"{k}={v}" for k, v in sorted(self.stats().items()) if v))

    def now(self) -> float:
        return time.monotonic()

    def device_present(self) -> bool:
        try:
            return socket.if_nametoindex(self.ifname) == self._ifindex
        except OSError:
            return False

    def _run_threaded(self) -> str:
        assert self.tun is not None and self.udp is not None and self.uapi is not None
        workers = [
            threading.Thread(target=self._pump_forever, args=("tun",), name="tun-to-udp",
                             daemon=True),
            threading.Thread(target=self._pump_forever, args=("udp",), name="udp-to-tun",
                             daemon=True),
        ]
        for worker in workers:
            worker.start()
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        next_liveness = 0.0
        try:
            while self._stop_reason is None:
                now = self.now()
                timeout = self._select_timeout(now)
                if selector.select(timeout):
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                now = self.now()
                actions: list[Any] = []
                with self.lock:
                    deadline = self.device.next_deadline()
                    if deadline is not None and deadline <= now:
                        actions = self.device.on_timer(now) or []
                if actions:
                    self._execute(actions)
                if now >= next_liveness:
                    next_liveness = now + LIVENESS_INTERVAL
                    self._check_liveness()
        finally:
            selector.close()
            for worker in workers:
                worker.join(2 * LIVENESS_INTERVAL)
        return self._stop_reason or "stopped"

    def _pump_forever(self, which: str) -> None:
        """One direction of the data plane, until the service stops."""
        assert self.tun is not None and self.udp is not None
        selector = selectors.DefaultSelector()
        fd = self.tun.fileno() if which == "tun" else self.udp.fileno()
        selector.register(fd, selectors.EVENT_READ)
        pump = self._pump_tun if which == "tun" else self._pump_udp
        try:
            while self._stop_reason is None:
                if which == "udp" and self.udp.fileno() != fd:  # rebound by UAPI
                    selector.unregister(fd)
                    fd = self.udp.fileno()
                    selector.register(fd, selectors.EVENT_READ)
                if selector.select(LIVENESS_INTERVAL):
                    try:
                        pump()
                    except Exception:  # keep the data plane alive; the error is logged
                        self.counters[f"{which}_pump_errors"] += 1
                        log.exception("%s pump failed", which)
        finally:
            selector.close()

    def _check_liveness(self) -> None:
        assert self.uapi is not None
        if not self.device_present():
            self.stop("device removed")
        elif not self.uapi.socket_file_present():
            self.stop("socket file removed")
        else:
            self._refresh_mtu()

    def _refresh_mtu(self) -> None:
        """Follow MTU changes (wg-quick sets it after start) for the core's padding cap."""
        request = struct.pack("16si", self.ifname.encode(), 0)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                reply = fcntl.ioctl(probe.fileno(), SIOCGIFMTU, request)
        except OSError:
            return
        mtu = struct.unpack_from("i", reply, 16)[0]
        with self.lock:
            if mtu != self.device.mtu:
                self.device.mtu = mtu

    # ---------------------------------------------------------------- the loop
    def _select_timeout(self, now: float) -> float:
        """How long the loop may sleep: until the core's next timer, at most LIVENESS_INTERVAL."""
        with self.lock:
            deadline = self.device.next_deadline()
        if deadline is None:
            return LIVENESS_INTERVAL
        return max(0.0, min(LIVENESS_INTERVAL, deadline - now))

    def run(self, *, threads: bool | None = None) -> str:
        """Serve until stopped; returns why it stopped.

        ``threads`` (default: ``$TUNKIT_WG_THREADS == "1"``) runs TUN->UDP and UDP->TUN on
        two threads, with timers and liveness checks on the calling thread.
        """
        assert self.tun is not None and self.udp is not None and self.uapi is not None
        self.uapi.start()
        if threads is None:
            threads = os.environ.get("TUNKIT_WG_THREADS") == "1"
        if threads:
            return self._run_threaded()
        # select.epoll directly, not selectors: after an idle spell every layer of Python
        # between the wake-up and the packet runs with cold caches (tens of µs each)
        poller = select.epoll()
        tun_fd = self.tun.fileno()
        udp_fd = self.udp.fileno()
        wake_fd = self._wake_r
        for fd in (tun_fd, wake_fd, udp_fd):
            poller.register(fd, select.EPOLLIN)
        poll = poller.poll
        monotonic = time.monotonic
        next_liveness = 0.0
        try:
            while self._stop_reason is None:
                now = monotonic()
                for fd, _mask in poll(self._select_timeout(now)):
                    if fd in (tun_fd, udp_fd):
                        which = "tun" if fd == tun_fd else "udp"
                        try:
                            if fd == tun_fd:
                                self._read_tun()
                            else:
                                self._pump_udp()
                        except Exception:  # keep the data plane alive; the error is logged
                            self.counters[f"{which}_pump_errors"] += 1
                            log.exception("%s pump failed", which)
                    else:
                        with contextlib.suppress(OSError):
                            os.read(wake_fd, 4096)
                if self.udp.fileno() != udp_fd:  # rebound by UAPI listen_port
                    with contextlib.suppress(OSError):
                        poller.unregister(udp_fd)
                    udp_fd = self.udp.fileno()
                    poller.register(udp_fd, select.EPOLLIN)
                now = monotonic()
                with self.lock:
                    deadline = self.device.next_deadline()
                    if deadline is not None and deadline <= now:
                        self._execute(self.device.on_timer(now) or ())
                if now >= next_liveness:
                    next_liveness = now + LIVENESS_INTERVAL
                    self._check_liveness()
        finally:
            poller.close()
        return self._stop_reason or "stopped"

    def _read_tun(self) -> None:
        """Drain up to BATCH reads from TUN into the core.

        A TSO super-packet is read into a reusable buffer and handed to the core at once
        (:meth:`Device.send_split` seals all its segments into one buffer); plain packets are
        collected and sent as one batch (before the next super-packet, to keep order)."""
        assert self.tun is not None
        fd = self.tun.fileno()
        packets: list[bytes] = []
        offload = self.offload
        buffer = self._tx_buffer
        view = self._tx_view
        more = self._tun_more
        bulk = False
        for i in range(BATCH):
            # After one ordinary packet, ask poll() before the second read: on the idle
            # path (one ping) the answer is no, and that costs far less than the EAGAIN
            # exception.  After a super-packet (bulk traffic) just read on.
            if i == 1 and not bulk and not more(0):
                break
            try:
                if offload:
                    size = os.readv(fd, (buffer,))
                else:
                    data = os.read(fd, TUN_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.EBADFD, errno.EIO, errno.ENXIO, errno.ENODEV):
                    self.stop("device removed")
                else:
                    self.counters["tun_rx_errors"] += 1
                break
            if not offload:
                packets.append(data)
                continue
            try:
                if size <= VNET_HDR_LEN:
                    raise MalformedPacketError("short read")
                flags, gso_type = buffer[0], buffer[1]
                if gso_type == GSO_NONE:
                    if flags & NEEDS_CSUM:
                        packets.extend(gso_split(decode_vnet_hdr(buffer), view[VNET_HDR_LEN:size]))
                    else:
                        packets.append(bytes(view[VNET_HDR_LEN:size]))
                    continue
                bulk = True
                hdr = decode_vnet_hdr(buffer)
                packet = view[VNET_HDR_LEN:size]
                split = plan_tcp_split(hdr.gso_type, hdr.gso_size, packet)
                if split is None:  # UDP_L4 or an odd layout: split into packets
                    packets.extend(gso_split(hdr, packet))
                    continue
            except (MalformedPacketError, IndexError, ValueError):
                self.counters["tun_rx_malformed"] += 1
                continue
            if packets:
                self._send_packets(packets)
                packets = []
            self.counters["tun_rx_packets"] += split.count
            self.counters["tun_rx_super_packets"] += 1
            now = self.now()
            with self.lock:
                try:
                    actions = self.device.send_split(split, packet, now)
                except Exception:  # the core must never take the daemon down
                    self.counters["tun_rx_errors"] += 1
                    log.exception("send_split failed")
                    continue
            self._execute(actions)
        if packets:
            self._send_packets(packets)

    def _write_tun(self, packets: list[bytes]) -> None:
        """Write decrypted IP packets; with offloads, TCP runs go in as GRO super-packets."""
        assert self.tun is not None
        fd = self.tun.fileno()
        written = 0
        if self.offload:
            items = coalesce_for_tun(packets) if len(packets) > 1 else [(ZERO_VNET_HDR, packets[0])]
            for hdr, packet in items:
                try:
                    os.writev(fd, (hdr, packet))
                    written += 1
                except OSError:
                    self.counters["tun_tx_errors"] += 1
        else:
            for packet in packets:
                try:
                    os.write(fd, packet)
                    written += 1
                except OSError:
                    self.counters["tun_tx_errors"] += 1
        self.counters["tun_tx_packets"] += len(packets)
        self.counters["tun_tx_writes"] += written

    def _pump_tun(self) -> None:
        self._read_tun()

    def _send_packets(self, packets: list[bytes]) -> None:
        self.counters["tun_rx_packets"] += len(packets)
        now = self.now()
        with self.lock:
            try:
                actions = self.device.send_packets(packets, now)
            except Exception:  # the core must never take the daemon down
                self.counters["tun_rx_errors"] += 1
                log.exception("send_packets failed")
                return
        self._execute(actions)

    def _udp_more(self, timeout: int) -> bool:
        """Whether another datagram is waiting (``poll``; follows a UAPI rebind)."""
        assert self.udp is not None
        fd = self.udp.fileno()
        if fd != self._udp_poll_fd:
            self._udp_poll = select.poll()
            self._udp_poll.register(fd, select.POLLIN)
            self._udp_poll_fd = fd
        return bool(self._udp_poll.poll(timeout))

    def _pump_udp(self) -> None:
        """Drain the UDP socket into one preallocated buffer, then hand each run of
        datagrams to the core in one call (:meth:`Device.receive_segments`).

        Reads land back to back.  A GRO read is a run already; single datagrams (from a
        peer without UDP GSO, such as an older wireguard-go, over a link without GRO), and
        GRO reads of the same size, join the run before them when they can
        (:func:`merge_single_datagrams`): GRO done here, so the core's per-run costs are
        paid once for many datagrams.  At most ``BATCH`` GRO reads or ``SINGLE_READS``
        reads in all per call."""
        assert self.udp is not None and self.tun is not None
        udp = self.udp
        view = self._rx_view
        limit = len(view) - RX_SLOT_BYTES
        reads: list[tuple[int, int, int, Endpoint]] = []  # (offset, nbytes, gso size, source)
        offset = 0
        handshakes = 0
        datagrams = 0
        syscalls = gro_reads = 0
        while offset <= limit and syscalls < SINGLE_READS:
            if syscalls == 1 and not gro_reads and not self._udp_more(0):
                break  # see _read_tun: poll() before the second read, unless bulk
            got = udp.receive_into(view[offset : offset + RX_SLOT_BYTES])
            if got is None:
                break
            syscalls += 1
            nbytes, segment, source = got
            if nbytes < 0:
                continue
            size = segment or nbytes
            count = -(-nbytes // size) if nbytes else 1
            datagrams += count
            if size in _HANDSHAKE_SIZES and view[offset] in (1, 2):
                handshakes += count
            reads.append((offset, nbytes, segment, source))
            offset += nbytes
            if segment:
                gro_reads += 1
                if gro_reads >= BATCH:
                    break
        if not reads:
            return
        reads = merge_single_datagrams(reads)
        self.counters["udp_rx_datagrams"] += datagrams
        self.counters["udp_rx_runs"] += len(reads)
        now = self.now()
        under_load = self._load.observe(handshakes, now)
        packets: list[bytes] = []
        actions: list[Any] = []
        with self.lock:
            device = self.device
            device.under_load = under_load
            try:
                for start, nbytes, segment, source in reads:
                    if nbytes:
                        device.receive_segments(view[start : start + nbytes], segment, source,
                                                now, packets, actions)
                    else:
                        got_packets, got_actions = device.receive_datagrams([(b"", source)], now)
                        packets += got_packets
                        actions += got_actions
            except Exception:
                self.counters["udp_rx_errors"] += 1
                log.exception("receive_segments failed")
                return
        if actions:
            self._execute(actions)
        if packets:
            self._write_tun(packets)

    def _execute(self, actions: Iterable[Any]) -> None:
        """Perform the core's actions in order; datagrams to one endpoint go out as batches."""
        assert self.tun is not None and self.udp is not None
        pending: list[Any] = []
        pending_to: Any = None
        udp = self.udp
        for action in actions:
            kind = type(action)
            if kind is SendDatagrams and action.packed is not None:
                # already one buffer: send it as it is (GSO runs are slices of it)
                if pending:
                    udp.send_batch(pending, endpoint_of(pending_to))
                    pending = []
                if action.segment_size:
                    udp.send_packed(action.packed, action.segment_size,
                                    endpoint_of(action.endpoint))
                else:
                    udp.send_batch(action.datagrams, endpoint_of(action.endpoint),
                                   action.packed)
            elif kind is SendDatagram or kind is SendDatagrams:
                if pending and action.endpoint != pending_to:
                    udp.send_batch(pending, endpoint_of(pending_to))
                    pending = []
                pending_to = action.endpoint
                if kind is SendDatagram:
                    pending.append(action.data)
                else:
                    pending.extend(action.datagrams)
            elif kind is WriteToTunnel:
                self._write_tun([action.packet])
            else:
                self._note_event(action)
        if pending:
            udp.send_batch(pending, endpoint_of(pending_to))

    def _note_event(self, event: Any) -> None:
        name = type(event).__name__
        self.counters[f"event_{name}"] += 1
        log.info("%s: %s", self.ifname, name)

    # ---------------------------------------------------------------- UAPI-side I/O
    def set_listen_port(self, port: int) -> int:
        """Rebind UDP (called by the UAPI glue with the lock held); returns the bound port."""
        assert self.udp is not None
        self.udp.rebind(port)
        self.stop_wake()
        return self.udp.port

    def set_fwmark(self, mark: int) -> None:
        assert self.udp is not None
        self.udp.set_fwmark(mark)

    def stop_wake(self) -> None:
        """Wake the loop so it re-reads deadlines and sockets."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"w")

    # ---------------------------------------------------------------- teardown
    def close(self) -> None:
        if self.uapi is not None:
            self.uapi.close()
            self.uapi = None
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        if self.tun is not None:
            self.tun.close()
            self.tun = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> WireGuardService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(ifname: str, *, ready: Any = None, mtu: int = DEFAULT_MTU) -> str:
    """Create the interface, call ``ready(error_or_None)``, serve until stopped."""
    try:
        service = WireGuardService(ifname, mtu=mtu)
    except DeviceError as exc:
        if ready is not None:
            ready(str(exc))
        raise
    with service:
        service.install_signal_handlers()
        if ready is not None:
            ready(None)
        profile_to = os.environ.get("TUNKIT_WG_PROFILE")
        if profile_to:  # developer aid: cProfile the loop, dump stats on exit
            import cProfile

            profiler = cProfile.Profile()
            reason = profiler.runcall(service.run)
            profiler.dump_stats(f"{profile_to}.{ifname}")
        else:
            reason = service.run()
        service.log_stats()
        log.info("%s: exiting (%s)", ifname, reason)
        return reason
