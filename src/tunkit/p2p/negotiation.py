"""How two ends agree on compat or fast framing without ever confusing a stock simpletun peer.

The problem.  simpletun has no hello: either end may send a frame as soon as the TCP
connection is up, and whatever arrives is read as ``u16 length || packet`` and written to the
device.  simpletun reads into a 2000-byte buffer without a bound check and exits on a failed
device write.  So we must never send it a length it cannot hold (a magic such as ``\\xff\\xff``
would overflow it) nor a packet the kernel refuses (a write error kills it).

The design (``--mode auto``, the default; ``--mode fast`` is the same exchange but refuses to
fall back; ``--mode compat`` sends no probe at all and is byte-exact simpletun).

1. The client's first frame is a *valid simpletun frame* carrying a **probe packet**: a packet
   the peer's kernel accepts on write and then silently drops:

   * TUN: an IPv4 header with TTL 0, protocol 253 (RFC 3692 experimental) and a deliberately
     wrong header checksum; ``ip_rcv`` drops it (counted as a checksum error).
   * TAP: an Ethernet frame from and to ``00:00:00:00:00:00`` with ethertype 0x88B5 (IEEE local
     experimental).  It is not addressed to the host, and a bridge drops an all-zero source.

   The payload after the header is ``b"TUNKIT-P2P"``, a version, a role (offer/accept) and
   capability flags (TAP, vnet_hdr).
2. A tunkit server waits up to :data:`SERVER_WAIT` for the client's first frame.  An offer →
   it answers with an *accept* probe (also a valid simpletun frame) and both switch to fast
   framing for every later byte.  Any other frame → compat (that frame is a real packet and is
   delivered).  Nothing within the wait → compat.  A stock simpletun client thus meets a
   compat server after at most :data:`SERVER_WAIT`.
3. The client waits up to :data:`CLIENT_WAIT` (longer than the server's) for the answer.  The
   accept → fast.  Any other frame, or the timeout → compat (a stock simpletun server wrote our
   offer to its device, where it was dropped, and never answers).
4. Probes that arrive once the mode is decided are recognised with :func:`parse_probe` and
   dropped.  A late *accept* on a client that already fell back means the ends disagree: the
   client closes and reconnects, and the next attempt agrees.

Both roles are pure state machines driven by the caller with ``now`` and the frames it read.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Final

from tunkit.errors import LocalProtocolError, RemoteProtocolError
from tunkit.p2p.framing import compat_frame

PROBE_MAGIC: Final = b"TUNKIT-P2P"
PROBE_VERSION: Final = 1
SERVER_WAIT: Final = 0.5
CLIENT_WAIT: Final = 2.0
PROBE_ETHERTYPE: Final = 0x88B5
PROBE_IP_PROTOCOL: Final = 253

FLAG_TAP: Final = 0x01
FLAG_VNET_HDR: Final = 0x02

_TRAILER = struct.Struct("!10sBBB")  # magic, version, role, flags
_IPV4 = struct.Struct("!BBHHHBBH4s4s")


class Mode(enum.Enum):
    """The user's choice on the command line."""

    COMPAT = "compat"
    FAST = "fast"
    AUTO = "auto"


class Framing(enum.Enum):
    """What was agreed for the rest of the connection."""

    COMPAT = "compat"
    FAST = "fast"


class Role(enum.IntEnum):
    OFFER = 1
    ACCEPT = 2


class NegotiationError(RemoteProtocolError):
    """The peer cannot or did not agree to what ``--mode`` demands."""


@dataclass(frozen=True)
class Probe:
    """A decoded probe packet."""

    version: int
    role: Role
    tap: bool
    vnet_hdr: bool


def _ipv4_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_probe(role: Role, tap: bool, vnet_hdr: bool = True) -> bytes:
    """The probe packet (not yet framed) for this role and device kind."""
    flags = (FLAG_TAP if tap else 0) | (FLAG_VNET_HDR if vnet_hdr else 0)
    trailer = _TRAILER.pack(PROBE_MAGIC, PROBE_VERSION, int(role), flags)
    if tap:
        zero_mac = bytes(6)
        return zero_mac + zero_mac + struct.pack("!H", PROBE_ETHERTYPE) + trailer
    total = _IPV4.size + len(trailer)
    header = _IPV4.pack(0x45, 0, total, 0, 0, 0, PROBE_IP_PROTOCOL, 0, bytes(4), bytes(4))
    wrong = _ipv4_checksum(header) ^ 0x5A5A  # never the right value: the kernel must drop it
    return header[:10] + struct.pack("!H", wrong) + header[12:] + trailer


def parse_probe(packet: bytes, tap: bool) -> Probe | None:
    """The probe in ``packet``, or None if it is an ordinary packet."""
    offset = 14 if tap else _IPV4.size
    if len(packet) != offset + _TRAILER.size:
        return None
    if tap:
        if packet[:12] != bytes(12) or packet[12:14] != struct.pack("!H", PROBE_ETHERTYPE):
            return None
    elif packet[0] != 0x45 or packet[9] != PROBE_IP_PROTOCOL or packet[8] != 0:
        return None
    magic, version, role, flags = _TRAILER.unpack_from(packet, offset)
    if magic != PROBE_MAGIC or role not in (Role.OFFER, Role.ACCEPT):
        return None
    return Probe(version, Role(role), bool(flags & FLAG_TAP), bool(flags & FLAG_VNET_HDR))


@dataclass
class Decision:
    """Outcome of one negotiation step.

    ``framing`` is None while still undecided.  ``deliver`` holds packets that turned out to be
    real traffic and must be written to the device; ``send`` holds complete frames to write to
    the peer before anything else.
    """

    framing: Framing | None = None
    deliver: list[bytes] = field(default_factory=list)
    send: list[bytes] = field(default_factory=list)
    reason: str = ""


def _check_caps(probe: Probe, tap: bool) -> None:
    if probe.version != PROBE_VERSION:
        raise NegotiationError(f"peer speaks p2p probe version {probe.version}, we speak 1")
    if probe.tap != tap:
        kinds = ("TUN", "TAP")
        raise NegotiationError(f"peer uses a {kinds[probe.tap]} device, we use {kinds[tap]}")


class _Negotiator:
    def __init__(self, mode: Mode, tap: bool, mtu: int, now: float, wait: float) -> None:
        self.mode = mode
        self.tap = tap
        self.mtu = mtu
        self.deadline = now + wait
        self.framing: Framing | None = Framing.COMPAT if mode is Mode.COMPAT else None

    def _frame(self, packet: bytes) -> bytes:
        return compat_frame(packet, max(self.mtu, len(packet)), self.tap)

    def on_timer(self, now: float) -> Decision:
        """Call when ``deadline`` passed without a decision."""
        if self.framing is not None:
            return Decision(self.framing)
        if now < self.deadline:
            return Decision()
        if self.mode is Mode.FAST:
            raise NegotiationError("peer did not agree to fast mode in time (is it simpletun?)")
        self.framing = Framing.COMPAT
        return Decision(self.framing, reason="no probe answer; using compat framing")


class ClientNegotiator(_Negotiator):
    """The connecting side: offers first, then waits for the accept."""

    def __init__(
        self, mode: Mode, tap: bool, mtu: int, now: float, wait: float = CLIENT_WAIT
    ) -> None:
        super().__init__(mode, tap, mtu, now, wait)

    def start(self) -> Decision:
        """Frames to send right after connecting (nothing in compat mode)."""
        if self.framing is not None:
            return Decision(self.framing)
        return Decision(send=[self._frame(build_probe(Role.OFFER, self.tap))])

    def receive_frame(self, packet: bytes, now: float) -> Decision:
        """Feed one compat frame payload read before the decision."""
        if self.framing is not None:
            raise LocalProtocolError("negotiation already decided")
        probe = parse_probe(packet, self.tap)
        if probe is not None and probe.role is Role.ACCEPT:
            _check_caps(probe, self.tap)
            self.framing = Framing.FAST
            return Decision(self.framing, reason="peer accepted fast mode")
        if self.mode is Mode.FAST:
            raise NegotiationError("peer sent traffic instead of accepting fast mode")
        if probe is not None:
            return Decision()  # a stray offer: not traffic, not an answer
        self.framing = Framing.COMPAT
        return Decision(self.framing, deliver=[packet], reason="peer speaks simpletun framing")


class ServerNegotiator(_Negotiator):
    """The accepting side: waits briefly for an offer, answers it."""

    def __init__(
        self, mode: Mode, tap: bool, mtu: int, now: float, wait: float = SERVER_WAIT
    ) -> None:
        super().__init__(mode, tap, mtu, now, wait)

    def receive_frame(self, packet: bytes, now: float) -> Decision:
        """Feed one compat frame payload read before the decision."""
        if self.framing is not None:
            raise LocalProtocolError("negotiation already decided")
        probe = parse_probe(packet, self.tap)
        if probe is not None and probe.role is Role.OFFER:
            _check_caps(probe, self.tap)
            self.framing = Framing.FAST
            reply = self._frame(build_probe(Role.ACCEPT, self.tap))
            return Decision(self.framing, send=[reply], reason="peer offered fast mode")
        if self.mode is Mode.FAST:
            raise NegotiationError("peer sent traffic instead of offering fast mode")
        if probe is not None:
            return Decision()
        self.framing = Framing.COMPAT
        return Decision(self.framing, deliver=[packet], reason="peer speaks simpletun framing")

