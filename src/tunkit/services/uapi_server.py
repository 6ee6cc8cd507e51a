"""The UAPI unix socket that `wg` talks to: ``/var/run/wireguard/IFNAME.sock``.

Contract (the one wireguard-go follows, see wireguard.com/xplatform):

* The socket is created with mode 0600 in a directory of mode 0755, so only root can talk to
  it. A stale socket file (nobody listening) is replaced; a live one raises DeviceError.
* Each connection carries one or more requests, handled in order: ``get=1\\n\\n`` or
  ``set=1\\n`` + ``key=value`` lines + an empty line. Every request is answered with the body
  (for get) followed by ``errno=N\\n\\n``; N is 0 on success and the handler's (negative, as in
  wireguard-go) error number otherwise.
* Framing and parsing are :class:`tunkit.wireguard.uapi.UapiRequestReader`'s. A refused request
  is answered with its errno and the connection continues; an unknown operation (a stream
  that cannot be resynchronised) is answered with its errno and the connection is closed. A
  client that is too slow (5 s), too large or disconnects is dropped; the server keeps serving.
* The handler (:class:`UapiHandler`) runs on a connection thread, one request at a time across
  all connections (``lock`` serialises them; pass the daemon's own lock); it must not block.
* :meth:`UapiServer.close` stops accepting and removes the socket file (only if it is still ours).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import threading
from typing import Protocol

from tunkit.errors import ConfigError, DeviceError, RemoteProtocolError
from tunkit.wireguard.uapi import (
    ERRNO_IO,
    ERRNO_UNKNOWN,
    NEED_DATA,
    DeviceSnapshot,
    Request,
    SetRequest,
    UapiError,
    UapiRequestReader,
    format_errno,
    format_get_reply,
)

log = logging.getLogger(__name__)

SOCKET_DIRECTORY = "/var/run/wireguard"
CLIENT_TIMEOUT = 5.0

class UapiHandler(Protocol):
    """What the server needs from the daemon. Called with the server's lock held."""

    def snapshot(self) -> DeviceSnapshot:
        """The device state for a ``get=1`` reply."""
        ...

    def apply_set(self, request: SetRequest) -> None:
        """Apply a ``set=1`` request; raise (ideally ``UapiError``) to refuse it."""
        ...


def socket_path(ifname: str, directory: str = SOCKET_DIRECTORY) -> str:
    return os.path.join(directory, f"{ifname}.sock")


def socket_is_live(path: str) -> bool:
    """True if something accepts connections on the UNIX socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def remove_stale_socket(ifname: str, directory: str = SOCKET_DIRECTORY) -> bool:
    """Delete ``IFNAME.sock`` if nobody listens on it any more; True if it was removed."""
    path = socket_path(ifname, directory)
    if os.path.exists(path) and not socket_is_live(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    return False


def errno_of(exc: BaseException) -> int:
    """The UAPI errno for a failed request: the error's own (made negative), else -EIO."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code != 0:
        return code if code < 0 else -code
    if isinstance(exc, (ConfigError, RemoteProtocolError, ValueError)):
        return -errno.EINVAL
    return -errno.EIO


class UapiServer:
    """Listens on the UAPI socket and answers requests with ``handler`` in background threads."""

    def __init__(
        self, ifname: str, handler: UapiHandler, *, directory: str = SOCKET_DIRECTORY,
        lock: threading.RLock | None = None,
    ) -> None:
        self.ifname = ifname
        self.path = socket_path(ifname, directory)
        self._handler = handler
        self._lock = lock if lock is not None else threading.RLock()
        self._closed = False
        os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            if socket_is_live(self.path):
                raise DeviceError(f"{self.path} is in use by another daemon")
            os.unlink(self.path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)
        try:
            self._listener.bind(self.path)
        except OSError as exc:
            self._listener.close()
            raise DeviceError(f"cannot create {self.path}: {exc.strerror}") from exc
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        self._listener.listen(16)
        self.requests_served = 0
        self.requests_failed = 0
        self._thread = threading.Thread(target=self._accept_loop, name="uapi-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def socket_file_present(self) -> bool:
        """False once someone deleted or replaced our socket file (the daemon must exit)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return stat.S_ISSOCK(st.st_mode) and st.st_ino == self._inode

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        if self.socket_file_present():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    # ---------------------------------------------------------------- serving
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                continue
            threading.Thread(
                target=self._serve_connection, args=(conn,), name="uapi-conn", daemon=True
            ).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        conn.settimeout(CLIENT_TIMEOUT)
        reader = UapiRequestReader()
        eof = False
        try:
            while True:
                try:
                    request = reader.next_request()
                except UapiError as err:
                    self.requests_failed += 1
                    log.warning("UAPI request refused: %s", err)
                    # wireguard-go hangs up silently on garbage; we say why first
                    conn.sendall(format_errno(err.errno).encode())
                    if err.close_connection:
                        return
                    continue
                if request is NEED_DATA:
                    if eof:
                        return
                    chunk = conn.recv(65536)
                    if chunk:
                        reader.receive_data(chunk)
                    else:
                        reader.receive_eof()
                        eof = True
                    continue
                conn.sendall(self.answer(request).encode())
        except OSError:
            return
        finally:
            conn.close()

    def answer(self, request: Request) -> str:
        """The reply text for one parsed request (always ends with ``errno=N\n\n``)."""
        op = request[0]
        try:
            with self._lock:
                if request[0] == "get":
                    reply = format_get_reply(self._handler.snapshot())
                else:
                    self._handler.apply_set(request[1])
                    reply = format_errno(0)
        except Exception as exc:
            self.requests_failed += 1
            code = errno_of(exc)
            if code in (ERRNO_IO, ERRNO_UNKNOWN):
                log.exception("UAPI %s failed", op)
            else:
                log.warning("UAPI %s refused: %s", op, exc)
            return format_errno(code)
        self.requests_served += 1
        return reply



def uapi_call(ifname: str, request: str, *, directory: str = SOCKET_DIRECTORY,
              timeout: float = 10.0) -> str:
    """Client side: send one request (``get=1\\n\\n`` or a full ``set=1`` text) and return the
    reply text up to and including ``errno=N\\n\\n``. Raises DeviceError if nobody listens."""
    path = socket_path(ifname, directory)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        try:
            conn.connect(path)
        except OSError as exc:
            raise DeviceError(f"cannot reach {path}: {exc.strerror}") from exc
        conn.sendall(request.encode())
        reply = b""
        while not (reply.startswith(b"errno=") or b"\nerrno=" in reply) or not reply.endswith(
            b"\n\n"
        ):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply.decode(errors="replace")
    finally:
        conn.close()


def reply_errno(reply: str) -> int:
    """The ``errno=N`` value of a reply (-EPROTO if there is none)."""
    for line in reversed(reply.split("\n")):
        if line.startswith("errno="):
            try:
                return int(line[6:])
            except ValueError:
                break
    return -errno.EPROTO
