"""The one error hierarchy of tunkit.

Every error that tunkit raises on purpose derives from :class:`TunkitError`.  The CLI turns
any ``TunkitError`` into a single line on stderr and a non-zero exit, never a traceback.

Like h11, protocol errors say whose fault they were:

* :class:`LocalProtocolError`: we (the caller of a pure core) misused the API.
* :class:`RemoteProtocolError`: the peer, or the bytes we were handed, misbehaved.
"""

from __future__ import annotations


class TunkitError(Exception):
    """Base class; ``str(err)`` is a complete one-line message for the user."""

    exit_code: int = 1


class ConfigError(TunkitError):
    """Bad user input: a CIDR, key, file, flag combination or config line."""

    exit_code = 2


class DeviceError(TunkitError):
    """A TUN/TAP device, netlink object or namespace could not be created or used."""


class PermissionDeniedError(TunkitError):
    """The operation needs root (CAP_NET_ADMIN) and we do not have it."""


class LocalProtocolError(TunkitError):
    """The caller used a protocol core in a way the protocol does not allow."""


class RemoteProtocolError(TunkitError):
    """The peer, or the bytes we were given, violated the protocol."""


class MalformedPacketError(RemoteProtocolError):
    """A packet could not be parsed: too short, wrong version, bad lengths."""
