"""TUN/TAP devices through /dev/net/tun: create or attach, multi-queue, vnet_hdr, offloads.

Contract:

* :func:`open_tun` returns a :class:`TunDevice` holding one fd per queue. The device lives in
  the network namespace of the *calling thread* (so create it inside a lab namespace).
* ``attach=True`` never creates a device: a missing name is ``DeviceError("no such device:
  NAME")``. Without ``attach`` an existing TUN/TAP device of that name is attached to and
  ``created`` is False.
* Reads reuse the caller's buffer (:meth:`TunDevice.read_into`); writes take any bytes-like
  object. In non-blocking mode a read with nothing queued raises ``BlockingIOError``.
* Every failure is a one-line ``DeviceError`` or ``PermissionDeniedError`` (tunkit.errors).
* With ``vnet_hdr`` every packet read or written starts with a 10-byte virtio_net_hdr;
  ``device.offloads`` records the TUN_F_* bits the kernel actually accepted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Sequence
from typing import Literal

from tunkit.errors import ConfigError, DeviceError, PermissionDeniedError

TUN_PATH = "/dev/net/tun"

# ioctl numbers (x86_64, also the asm-generic value on arm64)
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8
TUNSETQUEUE = 0x400454D9

# ifreq flags
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NAPI = 0x0010
IFF_NAPI_FRAGS = 0x0020
IFF_NO_CARRIER = 0x0040
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400
IFF_PERSIST = 0x0800
IFF_NO_PI = 0x1000
IFF_ONE_QUEUE = 0x2000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000

# TUNSETOFFLOAD bits
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

DEFAULT_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6
VNET_HDR_LEN = 10
PI_HDR_LEN = 4
IFNAMSIZ = 16
MAX_QUEUES = 256
# Large enough for a GSO super-packet (64 KiB + headers) plus the vnet header.
DEFAULT_READ_SIZE = 65535 + 256

_IFREQ = struct.Struct("16sH22x")

FLAG_NAMES = {
    IFF_TUN: "TUN", IFF_TAP: "TAP", IFF_NAPI: "NAPI", IFF_NAPI_FRAGS: "NAPI_FRAGS",
    IFF_NO_CARRIER: "NO_CARRIER", IFF_MULTI_QUEUE: "MULTI_QUEUE", IFF_ATTACH_QUEUE: "ATTACH_QUEUE",
    IFF_DETACH_QUEUE: "DETACH_QUEUE", IFF_NO_PI: "NO_PI", IFF_VNET_HDR: "VNET_HDR",
    IFF_TUN_EXCL: "TUN_EXCL",
}


def offload_fallbacks(wanted: int) -> list[int]:
    """The offload sets to try, best first: as asked, without USO, without TSO, none."""
    steps = [wanted]
    for drop in (TUN_F_USO4 | TUN_F_USO6 | TUN_F_UFO, TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN):
        reduced = steps[-1] & ~drop
        if reduced != steps[-1]:
            steps.append(reduced)
    if steps[-1] != 0:
        steps.append(0)
    return steps


def describe_features(mask: int) -> str:
    """``"TUN|TAP|NO_PI|..."`` for a TUNGETFEATURES mask."""
    return "|".join(name for bit, name in FLAG_NAMES.items() if mask & bit) or "none"


def link_exists(name: str) -> bool:
    """Whether ``name`` exists in the calling thread's namespace.

    Uses SIOCGIFINDEX (``if_nametoindex``) rather than /sys/class/net, because sysfs shows
    the namespace it was mounted in, not the one a setns()'d thread lives in.
    """
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _encode_name(name: str) -> bytes:
    raw = name.encode()
    if len(raw) > IFNAMSIZ - 1:
        raise DeviceError(f"interface name too long: {name!r} is {len(raw)} bytes (max 15)")
    if "/" in name or "\0" in name or any(c.isspace() for c in name) or name in (".", ".."):
        raise DeviceError(f"invalid interface name: {name!r}")
    return raw


def _open_control() -> int:
    try:
        return os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DeviceError(
            f"no {TUN_PATH}: load the tun module (modprobe tun) or run with access to it"
        ) from None
    except PermissionError:
        raise PermissionDeniedError(f"cannot open {TUN_PATH}: permission denied (run as root)") from None
    except OSError as exc:
        raise DeviceError(f"cannot open {TUN_PATH}: {exc.strerror}") from None


def probe_features() -> int:
    """The TUNGETFEATURES mask: which IFF_* flags this kernel's tun driver supports."""
    fd = _open_control()
    try:
        buf = bytearray(4)
        fcntl.ioctl(fd, TUNGETFEATURES, buf)
        return int(struct.unpack("I", buf)[0])
    except OSError as exc:
        raise DeviceError(f"TUNGETFEATURES failed: {exc.strerror}") from None
    finally:
        os.close(fd)


class TunDevice:
    """An open TUN or TAP device: one fd per queue. Use as a context manager or close()."""

    def __init__(
        self, name: str, kind: Literal["tun", "tap"], fds: list[int], *, vnet_hdr: bool,
        packet_info: bool, offloads: int, created: bool, multi_queue: bool,
    ) -> None:
        self.name = name
        self.kind = kind
        self.fds = fds
        self.vnet_hdr = vnet_hdr
        self.packet_info = packet_info
        self.offloads = offloads
        self.created = created
        self.multi_queue = multi_queue
        self.closed = False

    # -- fds
    @property
    def queues(self) -> int:
        return len(self.fds)

    def fileno(self, queue: int = 0) -> int:
        if self.closed:
            raise DeviceError(f"device {self.name} is closed")
        try:
            return self.fds[queue]
        except IndexError:
            raise DeviceError(f"device {self.name} has no queue {queue} ({len(self.fds)} queues)") from None

    def set_blocking(self, flag: bool) -> None:
        for fd in self.fds:
            os.set_blocking(fd, flag)

    # -- I/O
    def read_into(self, buf: bytearray | memoryview, queue: int = 0) -> int:
        """Read one packet into ``buf``; returns its length (the packet is truncated if
        ``buf`` is too small). Non-blocking and nothing queued: ``BlockingIOError``."""
        return os.readv(self.fileno(queue), [buf])

    def read(self, queue: int = 0, size: int = DEFAULT_READ_SIZE) -> bytes:
        """Read one packet into a new bytes object (convenience; prefer read_into)."""
        return os.read(self.fileno(queue), size)

    def write(self, data: bytes | bytearray | memoryview, queue: int = 0) -> int:
        """Write one packet (with its vnet/PI header if the device has one)."""
        return os.write(self.fileno(queue), data)

    def writev(self, parts: Sequence[bytes | bytearray | memoryview], queue: int = 0) -> int:
        """Write one packet gathered from ``parts`` (e.g. vnet header + IP packet)."""
        return os.writev(self.fileno(queue), parts)

    def set_offloads(self, wanted: int) -> int:
        """Change the TUN_F_* offloads (vnet_hdr devices); returns the bits the kernel took,
        falling back to smaller sets as :func:`open_tun` does."""
        applied = _apply_offloads(self.fileno(), wanted, self.name)
        for fd in self.fds[1:]:
            _apply_offloads(fd, applied, self.name)
        self.offloads = applied
        return applied

    # -- lifetime
    def set_persist(self, flag: bool) -> None:
        try:
            fcntl.ioctl(self.fileno(), TUNSETPERSIST, int(flag))
        except OSError as exc:
            raise _ioctl_error(exc, f"set persist on {self.name}") from None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.fds)} queue(s)"
        return (
            f"TunDevice(name={self.name!r}, kind={self.kind!r}, {state}, vnet_hdr={self.vnet_hdr}, "
            f"offloads={self.offloads:#x}, created={self.created})"
        )


def _ioctl_error(exc: OSError, what: str) -> DeviceError | PermissionDeniedError:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return PermissionDeniedError(f"{what}: operation not permitted (needs root / CAP_NET_ADMIN)")
    return DeviceError(f"{what}: {exc.strerror}")


def _set_iff(fd: int, name: bytes, flags: int, shown: str, kind: str) -> str:
    ifr = bytearray(_IFREQ.pack(name, flags))
    try:
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise PermissionDeniedError(
                f"cannot open {kind} device {shown}: operation not permitted "
                "(needs root / CAP_NET_ADMIN)"
            ) from None
        if exc.errno == errno.EBUSY:
            raise DeviceError(
                f"device busy: {shown} (already opened by another process, or queue/flag mismatch)"
            ) from None
        if exc.errno == errno.EINVAL:
            raise DeviceError(
                f"cannot open {shown} as {kind}: it exists with other flags or is not a TUN/TAP device"
            ) from None
        raise DeviceError(f"cannot open {kind} device {shown}: {exc.strerror}") from None
    return bytes(ifr[:IFNAMSIZ]).rstrip(b"\0").decode()


def _apply_offloads(fd: int, wanted: int, name: str) -> int:
    last: OSError | None = None
    for candidate in offload_fallbacks(wanted):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, candidate)
        except OSError as exc:
            last = exc
            if exc.errno in (errno.EPERM, errno.EACCES):
                break
            continue
        return candidate
    raise DeviceError(f"TUNSETOFFLOAD on {name} failed: {last.strerror if last else 'unknown'}")


def open_tun(
    name: str = "",
    *,
    tap: bool = False,
    packet_info: bool = False,
    vnet_hdr: bool = False,
    offloads: int | None = None,
    queues: int = 1,
    persist: bool | None = None,
    owner: int | None = None,
    group: int | None = None,
    attach: bool = False,
) -> TunDevice:
    """Create (or attach to) a TUN/TAP device and return it with ``queues`` open fds.

    * ``name=""`` lets the kernel choose (``tun0``, ``tap0``...); ``device.name`` has it.
    * ``packet_info``: keep the 4-byte tun_pi header (otherwise IFF_NO_PI).
    * ``vnet_hdr``: IFF_VNET_HDR; ``offloads`` defaults to CSUM|TSO4|TSO6|USO4|USO6 and
      falls back (no USO, no TSO, none) when the kernel refuses.
    * ``queues > 1``: IFF_MULTI_QUEUE, one fd per queue, same device.
    * ``persist``: None leaves the flag alone; ``owner``/``group``: uid/gid allowed to open it.
    * ``attach``: the device must exist already; it is never created.
    """
    kind: Literal["tun", "tap"] = "tap" if tap else "tun"
    if not isinstance(queues, int) or not 1 <= queues <= MAX_QUEUES:
        raise ConfigError(f"invalid queue count: {queues!r} (1..{MAX_QUEUES})")
    raw = _encode_name(name) if name else b""
    if attach and not name:
        raise DeviceError("attach needs a device name")
    existed = bool(name) and link_exists(name)
    if attach and not existed:
        raise DeviceError(f"no such device: {name}")
    if offloads is not None and not vnet_hdr and offloads:
        raise ConfigError("offloads need vnet_hdr=True")

    flags = IFF_TAP if tap else IFF_TUN
    if not packet_info:
        flags |= IFF_NO_PI
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    if queues > 1:
        flags |= IFF_MULTI_QUEUE

    fds: list[int] = []
    shown = name or f"(new {kind})"
    try:
        for _ in range(queues):
            fd = _open_control()
            fds.append(fd)
            actual = _set_iff(fd, raw, flags, shown, kind)
            raw, shown = actual.encode(), actual
        device_name = raw.decode()
        applied = 0
        if vnet_hdr:
            wanted = DEFAULT_OFFLOADS if offloads is None else offloads
            applied = _apply_offloads(fds[0], wanted, device_name)
        if persist is not None:
            fcntl.ioctl(fds[0], TUNSETPERSIST, int(persist))
        if owner is not None:
            fcntl.ioctl(fds[0], TUNSETOWNER, owner)
        if group is not None:
            fcntl.ioctl(fds[0], TUNSETGROUP, group)
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise _ioctl_error(exc, f"configure {shown}") from None
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return TunDevice(
        device_name, kind, fds, vnet_hdr=vnet_hdr, packet_info=packet_info, offloads=applied,
        created=not existed, multi_queue=queues > 1,
    )
