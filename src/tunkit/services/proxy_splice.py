"""Byte relay of ``tunkit proxy``: one epoll thread moves every connection's bytes by splice.

Contract:

* :meth:`SpliceRelay.add` takes a pair of connected TCP sockets (the application side and the
  upstream side), from any thread; from then on the relay owns and closes them.
* Each direction starts in copy mode: ``read`` up to :data:`COPY_CHUNK` bytes, ``write`` them
  (a short request or response costs no pipe).  The first read that fills the buffer marks a
  bulk direction, which from then on goes ``socket -> pipe -> socket`` with non-blocking
  ``splice`` (zero copy in user space; the GIL is released in the syscalls).  A direction
  reads only when its previous read is written, so a slow receiver stops the reader
  (backpressure through TCP windows).
* EOF in one direction becomes ``shutdown(SHUT_WR)`` on the other socket once the pipe is
  drained; when both directions are done both sockets close normally.  An error on either
  socket aborts both with an RST (SO_LINGER 0).
* ``on_bytes(flow_id, up, down)`` is called after each chunk; ``on_close(flow_id)`` once.
* One thread for all connections: no per-connection thread start, no GIL hand-offs between
  relay threads; fairness comes from moving at most a few chunks per wakeup.
* It is also a small reactor for the rest of the proxy's non-blocking work (accepting and
  dialing upstreams): :meth:`SpliceRelay.watch` registers a :class:`Watcher` for an fd,
  :meth:`call_soon` runs a function on the loop thread (thread-safe), :meth:`call_at` runs one
  at a monotonic deadline.  Watchers and timers run on the loop thread and must not block.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import heapq
import itertools
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("tunkit.proxy.relay")

CHUNK = 1 << 18
COPY_CHUNK = 1 << 14
"""Reads start in copy mode (read/write, no pipe); a read that fills this turns on splice."""
F_SETPIPE_SZ = 1031
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_ROUNDS = 4


def abort_socket(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Direction:
    __slots__ = ("data", "dst", "dst_fd", "eof", "pending", "reverse", "rfd", "src", "src_fd",
                 "upward", "wfd")

    def __init__(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.upward = upward
        self.rfd = self.wfd = -1  # no pipe until the direction turns out to be bulk
        self.data: bytes | memoryview = b""
        """Copy mode: bytes read but not yet written."""
        self.pending = 0
        """Bytes read but not yet written (in ``data`` or in the pipe)."""
        self.eof = False
        self.reverse: _Direction = self
        """The other direction of the connection."""

    @property
    def done(self) -> bool:
        return self.eof and not self.pending

    def open_pipe(self) -> None:
        self.rfd, self.wfd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        with contextlib.suppress(OSError):  # a bigger pipe: fewer splice calls
            fcntl.fcntl(self.wfd, F_SETPIPE_SZ, CHUNK)

    def close_pipe(self) -> None:
        for fd in (self.rfd, self.wfd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.rfd = self.wfd = -1


def _half_close(d: _Direction) -> None:
    """Pass an EOF on: FIN to the destination, unless the other direction is done too (then
    the connection closes at once, and close() sends the FIN)."""
    if not d.reverse.done:
        with contextlib.suppress(OSError):
            d.dst.shutdown(socket.SHUT_WR)


class _Connection:
    __slots__ = ("app", "closed", "down", "flow_id", "masks", "up", "upstream")

    def __init__(self, app: socket.socket, upstream: socket.socket, flow_id: int) -> None:
        self.app, self.upstream = app, upstream
        self.flow_id = flow_id
        self.up = _Direction(app, upstream, True)
        self.down = _Direction(upstream, app, False)
        self.up.reverse, self.down.reverse = self.down, self.up
        self.masks: dict[int, int] = {}
        self.closed = False


class Watcher(Protocol):
    def on_event(self, events: int) -> None:
        """Called on the loop thread with the epoll events of the watched fd."""
        ...


class SpliceRelay:
    def __init__(self, on_bytes: Callable[[int, int, int], None],
                 on_close: Callable[[int], None]) -> None:
        self.on_bytes = on_bytes
        self.on_close = on_close
        self.epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll.register(self._wake, select.EPOLLIN)
        self._incoming: collections.deque[tuple[socket.socket, socket.socket, int]] = \
            collections.deque()
        self._by_fd: dict[int, _Connection] = {}
        self._watchers: dict[int, Watcher] = {}
        self._soon: collections.deque[Callable[[], None]] = collections.deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="proxy-relay")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def __len__(self) -> int:
        return len(self._by_fd) // 2

    def add(self, app: socket.socket, upstream: socket.socket, flow_id: int) -> None:
        """Relay between two connected sockets (thread-safe)."""
        self._incoming.append((app, upstream, flow_id))
        os.eventfd_write(self._wake, 1)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread (thread-safe)."""
        self._soon.append(fn)
        os.eventfd_write(self._wake, 1)

    # -- loop-thread API -------------------------------------------------------------------

    def watch(self, fd: int, mask: int, watcher: Watcher) -> None:
        self._watchers[fd] = watcher
        self.epoll.register(fd, mask)

    def rewatch(self, fd: int, mask: int) -> None:
        self.epoll.modify(fd, mask)

    def unwatch(self, fd: int) -> None:
        if self._watchers.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(fd)

    def call_at(self, deadline: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (deadline, next(self._seq), fn))

    def start_relay(self, app: socket.socket, upstream: socket.socket, flow_id: int) -> None:
        """Like :meth:`add`, on the loop thread, at once."""
        self._incoming.append((app, upstream, flow_id))
        self._accept_new()

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop:
                timeout = 1.0
                if self._timers:
                    timeout = min(timeout, max(0.0, self._timers[0][0] - time.monotonic()))
                for fd, events in self.epoll.poll(timeout):
                    if fd == self._wake:
                        with contextlib.suppress(BlockingIOError):
                            os.eventfd_read(self._wake)
                        self._accept_new()
                        self._run_soon()
                        continue
                    conn = self._by_fd.get(fd)
                    if conn is not None:
                        if not conn.closed:
                            self._service(conn, events)
                        continue
                    watcher = self._watchers.get(fd)
                    if watcher is not None:
                        self._guarded(functools.partial(watcher.on_event, events))
                if self._timers:
                    now = time.monotonic()
                    while self._timers and self._timers[0][0] <= now:
                        self._guarded(heapq.heappop(self._timers)[2])
        finally:
            for conn in list(self._by_fd.values()):
                self._finish(conn, abort=True)
            self.epoll.close()
            os.close(self._wake)

    def _run_soon(self) -> None:
        while self._soon:
            self._guarded(self._soon.popleft())

    @staticmethod
    def _guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("proxy reactor callback failed")

    def _accept_new(self) -> None:
        while self._incoming:
            app, upstream, flow_id = self._incoming.popleft()
            try:
                for sock in (app, upstream):
                    if sock.gettimeout() != 0.0:  # each setblocking() is a syscall
                        sock.setblocking(False)
                conn = _Connection(app, upstream, flow_id)
            except OSError as err:
                log.info("relay setup failed: %s", err)
                abort_socket(app)
                abort_socket(upstream)
                self.on_close(flow_id)
                continue
            self._by_fd[conn.up.src_fd] = conn
            self._by_fd[conn.down.src_fd] = conn
            self._service(conn, 0)

    def _service(self, conn: _Connection, events: int) -> None:
        if events & select.EPOLLERR:
            self._finish(conn, abort=True)
            return
        try:
            for direction in (conn.up, conn.down):
                self._move(direction, conn.flow_id)
        except OSError as err:
            log.debug("relay of flow %d aborted: %s", conn.flow_id, err)
            self._finish(conn, abort=True)
            return
        if conn.up.done and conn.down.done:
            self._finish(conn, abort=False)
            return
        if events & select.EPOLLHUP and not (conn.up.pending or conn.down.pending):
            # The hung-up side can neither send nor receive: nothing more can flow.
            self._finish(conn, abort=True)
            return
        self._rearm(conn)

    def _move(self, d: _Direction, flow_id: int) -> None:
        for _ in range(_ROUNDS):
            if d.pending:
                try:
                    if d.data:
                        n = os.write(d.dst_fd, d.data)
                        d.data = d.data[n:] if n < len(d.data) else b""
                    else:
                        n = os.splice(d.rfd, d.dst_fd, d.pending, flags=_FLAGS)
                except BlockingIOError:
                    return
                d.pending -= n
                if d.pending:
                    return
                if d.eof:
                    _half_close(d)
                    return
            if d.eof:
                return
            try:
                if d.rfd < 0:
                    data = os.read(d.src_fd, COPY_CHUNK)
                    n = len(data)
                    if n:
                        d.data = data
                else:
                    n = os.splice(d.src_fd, d.wfd, CHUNK, flags=_FLAGS)
            except BlockingIOError:
                return
            if n == 0:
                d.eof = True
                _half_close(d)
                return
            d.pending = n
            if n == COPY_CHUNK and d.rfd < 0:
                d.open_pipe()  # a full read: a bulk flow, splice from now on
            if d.upward:
                self.on_bytes(flow_id, n, 0)
            else:
                self.on_bytes(flow_id, 0, n)

    def _rearm(self, conn: _Connection) -> None:
        want: dict[int, int] = {conn.up.src_fd: 0, conn.down.src_fd: 0}
        for d in (conn.up, conn.down):
            if not d.eof and not d.pending:
                want[d.src_fd] |= select.EPOLLIN
            if d.pending:
                want[d.dst_fd] |= select.EPOLLOUT
        for fd, mask in want.items():
            old = conn.masks.get(fd)
            if old == mask:
                continue
            if old is None:
                self.epoll.register(fd, mask)
            else:
                self.epoll.modify(fd, mask)
            conn.masks[fd] = mask

    def _finish(self, conn: _Connection, *, abort: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        for fd in (conn.up.src_fd, conn.down.src_fd):
            self._by_fd.pop(fd, None)
            if fd in conn.masks:
                with contextlib.suppress(OSError, ValueError):
                    self.epoll.unregister(fd)
        for d in (conn.up, conn.down):
            d.close_pipe()
        if abort:
            abort_socket(conn.app)
            abort_socket(conn.upstream)
        else:
            conn.app.close()
            conn.upstream.close()
        self.on_close(conn.flow_id)
