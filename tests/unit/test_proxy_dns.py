"""Fake-IP DNS core: fake A/AAAA answers, forwarding, PTR, errors, TCP framing, fuzzing."""

from __future__ import annotations

import ipaddress
import struct

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.errors import LocalProtocolError, RemoteProtocolError
from tunkit.proxy.dns import DnsTcpFramer, Drop, FakeDnsResolver, Forward, Reply
from tunkit.proxy.fakeip import FakeIpPool

PREFIX4 = ipaddress.IPv4Network("198.18.0.0/15")
PREFIX6 = ipaddress.IPv6Network("fc00:18::/64")


def resolver(v6: bool = False, filters: tuple[str, ...] = ()) -> FakeDnsResolver:
    pool6 = FakeIpPool(PREFIX6, reserved=("fc00:18::1",)) if v6 else None
    return FakeDnsResolver(FakeIpPool(PREFIX4, reserved=("198.18.0.1",)), pool6,
                           filter_suffixes=filters)


def ask(r: FakeDnsResolver, name: str, rdtype: str, now: float = 0.0) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, id=4321)
    decision = r.answer(query.to_wire(), now)
    assert isinstance(decision, Reply), decision
    reply = dns.message.from_wire(decision.wire)
    assert reply.id == 4321 and reply.flags & dns.flags.QR
    return reply


def test_a_query_gets_fake_address_in_prefix_with_short_ttl() -> None:
    r = resolver()
    reply = ask(r, "Some-Name.test.", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    (rrset,) = reply.answer
    assert rrset.rdtype == dns.rdatatype.A and rrset.ttl == 1
    (rdata,) = list(rrset)
    ip = ipaddress.IPv4Address(rdata.address)
    assert ip in PREFIX4 and str(ip) != "198.18.0.1"
    assert r.pool4.domain_for(ip) == "some-name.test"
    again = ask(r, "some-name.test", "A", 5.0)
    assert next(iter(again.answer[0])).address == rdata.address


def test_aaaa_without_v6_pool_is_empty_noerror() -> None:
    reply = ask(resolver(), "example.com", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []


def test_aaaa_with_v6_pool() -> None:
    reply = ask(resolver(v6=True), "example.com", "AAAA")
    (rdata,) = list(reply.answer[0])
    assert ipaddress.IPv6Address(rdata.address) in PREFIX6


def test_https_and_svcb_are_answered_empty() -> None:
    for rdtype in ("HTTPS", "SVCB"):
        reply = ask(resolver(), "example.com", rdtype)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []


def test_other_types_are_forwarded_unchanged() -> None:
    query = dns.message.make_query("example.com", "MX").to_wire()
    assert resolver().answer(query, 0.0) == Forward(query)


def test_filtered_domains_are_forwarded_by_suffix() -> None:
    r = resolver(filters=("Corp.Example.",))
    for name in ("corp.example", "a.b.corp.example"):
        query = dns.message.make_query(name, "A").to_wire()
        assert r.answer(query, 0.0) == Forward(query)
    reply = ask(r, "notcorp.example", "A")
    assert reply.answer and len(r.pool4) == 1


def test_single_label_names_are_forwarded() -> None:
    query = dns.message.make_query("localhost", "A").to_wire()
    assert resolver().answer(query, 0.0) == Forward(query)


def test_ptr_of_fake_address_answered_locally() -> None:
    r = resolver()
    ip = r.pool4.ip_for("web.test", 0.0)
    reply = ask(r, dns.reversename.from_address(str(ip)).to_text(), "PTR")
    (rdata,) = list(reply.answer[0])
    assert rdata.target.to_text() == "web.test."
    unknown = ask(r, dns.reversename.from_address("198.18.200.1").to_text(), "PTR")
    assert unknown.rcode() == dns.rcode.NXDOMAIN
    real = dns.message.make_query(dns.reversename.from_address("8.8.8.8"), "PTR").to_wire()
    assert r.answer(real, 0.0) == Forward(real)


def test_edns_is_echoed() -> None:
    query = dns.message.make_query("example.com", "A", use_edns=0, payload=1232)
    decision = resolver().answer(query.to_wire(), 0.0)
    assert isinstance(decision, Reply)
    assert dns.message.from_wire(decision.wire).edns == 0


def test_garbage_with_header_gets_formerr_and_short_garbage_is_dropped() -> None:
    wire = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\xff\xff"
    decision = resolver().answer(wire, 0.0)
    assert isinstance(decision, Reply)
    ident, flags, *counts = struct.unpack("!HHHHHH", decision.wire)
    assert counts == [0, 0, 0, 0]
    assert ident == 0xBEEF and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR
    assert flags & 0x0100  # RD echoed
    assert isinstance(resolver().answer(b"\x00\x01", 0.0), Drop)


def test_responses_are_dropped() -> None:
    query = dns.message.make_query("example.com", "A")
    response = dns.message.make_response(query).to_wire()
    assert isinstance(resolver().answer(response, 0.0), Drop)


def test_non_query_opcode_gets_notimp() -> None:
    query = dns.message.make_query("example.com", "A")
    query.set_opcode(dns.opcode.NOTIFY)
    decision = resolver().answer(query.to_wire(), 0.0)
    assert isinstance(decision, Reply)
    assert dns.message.from_wire(decision.wire).rcode() == dns.rcode.NOTIMP


def test_tcp_framer_reassembles_split_messages() -> None:
    msgs = [dns.message.make_query(f"n{i}.test", "A").to_wire() for i in range(3)]
    stream = b"".join(DnsTcpFramer.frame(m) for m in msgs)
    framer = DnsTcpFramer()
    got: list[bytes] = []
    for i in range(0, len(stream), 5):
        framer.receive_data(stream[i : i + 5])
        while (m := framer.next_message()) is not None:
            got.append(m)
    assert got == msgs and framer.pending == 0
    with pytest.raises(LocalProtocolError):
        DnsTcpFramer.frame(b"")
    framer.receive_data(b"\x00\x00")
    with pytest.raises(RemoteProtocolError):
        framer.next_message()


FUZZ_RESOLVER = resolver(v6=True, filters=("filtered.test",))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    decision = FUZZ_RESOLVER.answer(data, 0.0)
    assert isinstance(decision, Reply | Forward | Drop)
    if isinstance(decision, Reply):
        assert len(decision.wire) >= 12


@settings(max_examples=300, deadline=None)
@given(
    name=st.lists(st.from_regex(r"[a-zA-Z0-9-]{1,20}", fullmatch=True), min_size=1, max_size=4),
    rdtype=st.sampled_from(["A", "AAAA", "MX", "TXT", "PTR", "HTTPS", "ANY", "SRV"]),
    flip=st.integers(0, 400),
    value=st.integers(0, 255),
)
def test_fuzz_mutated_queries(name: list[str], rdtype: str, flip: int, value: int) -> None:
    wire = bytearray(dns.message.make_query(".".join(name), rdtype, use_edns=0).to_wire())
    if flip < len(wire):
        wire[flip] = value
    decision = FUZZ_RESOLVER.answer(bytes(wire), 0.0)
    assert isinstance(decision, Reply | Forward | Drop)
    if isinstance(decision, Reply):
        reply = dns.message.from_wire(decision.wire)
        for rrset in reply.answer:
            for rdata in rrset:
                if rrset.rdtype == dns.rdatatype.A:
                    assert ipaddress.IPv4Address(rdata.address) in PREFIX4
