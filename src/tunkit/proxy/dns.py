"""Fake-IP DNS server core: query wire bytes in, a decision out (PROTOCOLS.md §5).

:meth:`FakeDnsResolver.answer` returns one of

* :class:`Reply` - send these bytes back to the client;
* :class:`Forward` - send the query unchanged to the upstream resolver and relay its answer;
* :class:`Drop` - send nothing (unparseable header, or a response rather than a query).

Decisions, in order:

1. Unparseable: FORMERR if the 12-byte header is there (id and opcode echoed), else Drop.
   Messages with QR set are dropped (never answer answers: no loops).
2. Opcode other than QUERY: NOTIMP.  Not exactly one question: FORMERR.  Class not IN: Forward.
3. The name matches the filter list (suffix match on labels: ``example.com`` matches
   ``example.com`` and ``a.example.com``, not ``badexample.com``): Forward, real answers.
4. PTR inside a fake prefix: the pool's domain, or NXDOMAIN if unallocated (other PTR: 9.).
5. The root and single-label names: Forward (they are local names, not Internet domains).
6. A: a fake IPv4 address from the pool.
7. AAAA: a fake IPv6 address if a v6 pool is configured, otherwise an empty NOERROR answer
   (the name exists, it has no AAAA: clients fall back to A at once).
8. HTTPS/SVCB: empty NOERROR.  Forwarding them would hand the client ``ipv4hint``/``ipv6hint``
   real addresses that bypass the fake-IP mapping (and so the rules).
9. Anything else (MX, TXT, SRV, PTR of real addresses, ...): Forward.

Fake answers carry TTL :data:`DEFAULT_TTL` = 1 s (configurable): the pool is persistent, so a
short TTL costs a query per second per name at most, and rule or pool changes apply at once.

:class:`DnsTcpFramer` is the RFC 1035 §4.2.2 two-byte length framing for DNS over TCP.
Pure: ``now`` is an argument (it feeds the pool's LRU).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from tunkit.errors import LocalProtocolError, RemoteProtocolError
from tunkit.proxy.fakeip import FakeIpPool, normalise_domain

DEFAULT_TTL: Final = 1
_HEADER = struct.Struct("!HHHHHH")


@dataclass(frozen=True)
class Reply:
    wire: bytes
    """The complete DNS response to send to the client."""


@dataclass(frozen=True)
class Forward:
    wire: bytes
    """The original query, to be sent to the upstream resolver as is."""


@dataclass(frozen=True)
class Drop:
    reason: str


DnsDecision = Reply | Forward | Drop


def domain_matches(domain: str, suffixes: Iterable[str]) -> bool:
    """Label-wise suffix match of a normalised domain against normalised suffixes."""
    return any(domain == suffix or domain.endswith("." + suffix) for suffix in suffixes)


class FakeDnsResolver:
    def __init__(
        self,
        pool4: FakeIpPool,
        pool6: FakeIpPool | None = None,
        *,
        filter_suffixes: Iterable[str] = (),
        ttl: int = DEFAULT_TTL,
    ) -> None:
        self.pool4 = pool4
        self.pool6 = pool6
        self.filter_suffixes = tuple(normalise_domain(s) for s in filter_suffixes if s.strip("."))
        self.ttl = ttl

    def answer(self, query_wire: bytes, now: float) -> DnsDecision:
        try:
            query = dns.message.from_wire(query_wire)
        except Exception:  # dnspython raises a wide variety; anything unparseable is the peer's
            return _formerr_from_header(query_wire)
        if query.flags & dns.flags.QR:
            return Drop("message is a response")
        if query.opcode() != dns.opcode.QUERY:
            return Reply(_error_response(query, dns.rcode.NOTIMP))
        if len(query.question) != 1:
            return Reply(_error_response(query, dns.rcode.FORMERR))
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN:
            return Forward(query_wire)
        try:
            domain = normalise_domain(question.name.to_text(omit_final_dot=True))
        except (dns.exception.DNSException, UnicodeError):
            return Forward(query_wire)
        if domain_matches(domain, self.filter_suffixes):
            return Forward(query_wire)
        rdtype = question.rdtype
        if rdtype == dns.rdatatype.PTR:
            return self._answer_ptr(query, question.name, query_wire)
        if not _is_fakeable(question.name):
            return Forward(query_wire)
        if rdtype == dns.rdatatype.A:
            return Reply(self._address_response(query, self.pool4, domain, now))
        if rdtype == dns.rdatatype.AAAA:
            if self.pool6 is None:
                return Reply(_response(query).to_wire())
            return Reply(self._address_response(query, self.pool6, domain, now))
        if rdtype in (dns.rdatatype.HTTPS, dns.rdatatype.SVCB):
            return Reply(_response(query).to_wire())
        return Forward(query_wire)

    def _address_response(
        self, query: dns.message.Message, pool: FakeIpPool, domain: str, now: float
    ) -> bytes:
        ip = pool.ip_for(domain, now)
        response = _response(query)
        rdtype = dns.rdatatype.A if ip.version == 4 else dns.rdatatype.AAAA
        name = query.question[0].name
        response.answer.append(dns.rrset.from_text(name, self.ttl, "IN", rdtype, str(ip)))
        return response.to_wire()

    def _answer_ptr(
        self, query: dns.message.Message, name: dns.name.Name, query_wire: bytes
    ) -> DnsDecision:
        try:
            address = dns.reversename.to_address(name)
        except Exception:  # not a well-formed reverse name: not ours
            return Forward(query_wire)
        for pool in (self.pool4, self.pool6):
            if pool is None or not pool.contains(address):
                continue
            domain = pool.domain_for(address)
            response = _response(query)
            if domain is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            else:
                response.answer.append(
                    dns.rrset.from_text(name, self.ttl, "IN", dns.rdatatype.PTR, domain + ".")
                )
            return Reply(response.to_wire())
        return Forward(query_wire)


def _is_fakeable(name: dns.name.Name) -> bool:
    # The root and single labels ("localhost", "printer") are local business: forward them.
    # Names from the wire are absolute, so "example.com." has three labels with the root.
    return len(name.labels) >= 3


def _response(query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    return response


def _error_response(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    response = _response(query)
    response.set_rcode(rcode)
    return response.to_wire()


def _formerr_from_header(wire: bytes) -> DnsDecision:
    if len(wire) < _HEADER.size:
        return Drop("shorter than a DNS header")
    ident, flags, *_ = _HEADER.unpack_from(wire)
    if flags & 0x8000:
        return Drop("message is a response")
    opcode_bits = flags & 0x7800
    rd = flags & 0x0100
    reply_flags = 0x8000 | opcode_bits | rd | 0x0080 | int(dns.rcode.FORMERR)
    return Reply(_HEADER.pack(ident, reply_flags, 0, 0, 0, 0))


class DnsTcpFramer:
    """Two-byte length framing of DNS over TCP, h11-style: feed bytes, pull messages."""

    MAX_MESSAGE: Final = 65535

    def __init__(self) -> None:
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self) -> bytes | None:
        """The next complete message, or None if more data is needed."""
        if len(self._buffer) < 2:
            return None
        (length,) = struct.unpack_from("!H", self._buffer)
        if length == 0:
            raise RemoteProtocolError("DNS over TCP: zero-length message")
        if len(self._buffer) < 2 + length:
            return None
        message = bytes(self._buffer[2 : 2 + length])
        del self._buffer[: 2 + length]
        return message

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buffer)

    @staticmethod
    def frame(message: bytes) -> bytes:
        if not 0 < len(message) <= DnsTcpFramer.MAX_MESSAGE:
            raise LocalProtocolError(f"DNS message of {len(message)} bytes cannot be framed")
        return struct.pack("!H", len(message)) + message
