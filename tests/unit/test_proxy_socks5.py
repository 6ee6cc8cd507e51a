"""SOCKS5 client and server state machines wired together in memory, plus UDP headers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.errors import LocalProtocolError, MalformedPacketError, RemoteProtocolError
from tunkit.proxy.sansio import NEED_DATA
from tunkit.proxy.socks5 import (
    Command,
    Connected,
    Failed,
    ReplyCode,
    RequestReceived,
    Socks5Client,
    Socks5Server,
    UdpAssociated,
    UdpDatagram,
    decode_udp_datagram,
    encode_udp_datagram,
)


def handshake(
    client: Socks5Client, server: Socks5Server, reply: ReplyCode = ReplyCode.SUCCEEDED,
    bound: tuple[str, int] = ("192.0.2.7", 40000), chunk: int = 1000,
) -> tuple[object, RequestReceived | Failed | None]:
    """Run the exchange, byte chunks of ``chunk``; return (client event, server event)."""
    to_server = client.initial_bytes()
    server_event: RequestReceived | Failed | None = None
    for _ in range(10):
        for i in range(0, len(to_server), chunk):
            server.receive_data(to_server[i : i + chunk])
            event = server.next_event()
            if event is not NEED_DATA:
                assert isinstance(event, RequestReceived | Failed)
                server_event = event
        to_client = server.data_to_send()
        if isinstance(server_event, RequestReceived):
            to_client += server.send_reply(reply, *bound)
        for i in range(0, len(to_client), chunk):
            client.receive_data(to_client[i : i + chunk])
            client_event = client.next_event()
            if client_event is not NEED_DATA:
                return client_event, server_event
        to_server = client.data_to_send()
    raise AssertionError("handshake did not finish")


def test_no_auth_connect_by_domain() -> None:
    client = Socks5Client(Command.CONNECT, "some-name.test", 80)
    server = Socks5Server()
    event, request = handshake(client, server)
    assert request == RequestReceived(Command.CONNECT, "some-name.test", 80, None)
    assert event == Connected("192.0.2.7", 40000)


def test_no_auth_connect_by_ipv6_byte_by_byte() -> None:
    client = Socks5Client(Command.CONNECT, "2001:db8::5", 443)
    event, request = handshake(client, Socks5Server(), bound=("2001:db8::1", 1), chunk=1)
    assert request == RequestReceived(Command.CONNECT, "2001:db8::5", 443, None)
    assert event == Connected("2001:db8::1", 1)


def test_exact_wire_bytes_of_a_no_auth_ipv4_connect() -> None:
    client = Socks5Client(Command.CONNECT, "10.1.2.3", 8080)
    assert client.initial_bytes() == b"\x05\x01\x00"
    client.receive_data(b"\x05\x00")
    assert client.next_event() is NEED_DATA
    assert client.data_to_send() == b"\x05\x01\x00\x01\x0a\x01\x02\x03\x1f\x90"
    client.receive_data(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38early")
    assert client.next_event() == Connected("127.0.0.1", 1080)
    assert client.trailing_data == b"early"


def test_userpass_ok() -> None:
    client = Socks5Client(Command.CONNECT, "example.com", 443, username="alice", password="pw")
    server = Socks5Server({"alice": "pw"})
    event, request = handshake(client, server)
    assert isinstance(request, RequestReceived) and request.username == "alice"
    assert event == Connected("192.0.2.7", 40000)
    assert "pw" not in repr(client)


def test_userpass_rejected() -> None:
    client = Socks5Client(Command.CONNECT, "example.com", 443, username="alice", password="bad")
    server = Socks5Server({"alice": "pw"})
    event, request = handshake(client, server)
    assert request == Failed(None, "authentication rejected")
    assert event == Failed(None, "authentication rejected")


def test_server_requiring_auth_refuses_client_without_credentials() -> None:
    client = Socks5Client(Command.CONNECT, "example.com", 443)
    event, request = handshake(client, Socks5Server({"alice": "pw"}))
    assert isinstance(request, Failed) and isinstance(event, Failed)
    assert event.message == "no acceptable authentication method"


def test_connect_refused_reply_code() -> None:
    client = Socks5Client(Command.CONNECT, "example.com", 1)
    event, _ = handshake(client, Socks5Server(), reply=ReplyCode.CONNECTION_REFUSED)
    assert event == Failed(5, "connection refused")


def test_udp_associate() -> None:
    client = Socks5Client(Command.UDP_ASSOCIATE, "0.0.0.0", 0)
    event, request = handshake(client, Socks5Server(), bound=("10.9.0.1", 5555))
    assert request == RequestReceived(Command.UDP_ASSOCIATE, "0.0.0.0", 0, None)
    assert event == UdpAssociated("10.9.0.1", 5555)


def test_api_misuse_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Socks5Client(Command.CONNECT, "x" * 300, 1)
    with pytest.raises(LocalProtocolError):
        Socks5Client(Command.CONNECT, "a.test", 1, username="u")
    with pytest.raises(LocalProtocolError):
        Socks5Client(Command.BIND, "a.test", 1)
    client = Socks5Client(Command.CONNECT, "a.test", 1)
    with pytest.raises(LocalProtocolError):
        client.next_event()
    server = Socks5Server()
    with pytest.raises(LocalProtocolError):
        server.send_reply(0)


def test_server_chose_unoffered_method_is_remote_error() -> None:
    client = Socks5Client(Command.CONNECT, "a.test", 1)
    client.initial_bytes()
    client.receive_data(b"\x05\x02")
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_udp_datagram_roundtrip_and_exact_bytes() -> None:
    wire = encode_udp_datagram("1.2.3.4", 53, b"query")
    assert wire == b"\x00\x00\x00\x01\x01\x02\x03\x04\x00\x35query"
    assert decode_udp_datagram(wire) == UdpDatagram("1.2.3.4", 53, b"query", 0)
    named = encode_udp_datagram("dns.test", 53, b"q", frag=0)
    assert decode_udp_datagram(named) == UdpDatagram("dns.test", 53, b"q")
    for bad in (b"", b"\x00\x00\x00", b"\x01\x00\x00\x01" + bytes(6), b"\x00\x00\x00\x09abcdef",
                b"\x00\x00\x00\x01\x01\x02"):
        with pytest.raises(MalformedPacketError):
            decode_udp_datagram(bad)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_fuzz_client_receive_data(chunks: list[bytes]) -> None:
    client = Socks5Client(Command.CONNECT, "a.test", 80, username="u", password="p")
    client.initial_bytes()
    try:
        for chunk in chunks:
            client.receive_data(chunk)
            event = client.next_event()
            client.data_to_send()
            if event is not NEED_DATA:
                assert isinstance(event, Connected | Failed)
                return
    except RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6), st.booleans())
def test_fuzz_server_receive_data(chunks: list[bytes], with_users: bool) -> None:
    server = Socks5Server({"u": "p"} if with_users else None)
    try:
        for chunk in chunks:
            server.receive_data(chunk)
            event = server.next_event()
            server.data_to_send()
            if event is not NEED_DATA:
                assert isinstance(event, RequestReceived | Failed)
                return
    except RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_udp_datagram(data: bytes) -> None:
    try:
        datagram = decode_udp_datagram(data)
    except MalformedPacketError:
        return
    again = encode_udp_datagram(datagram.host, datagram.port, datagram.payload, datagram.frag)
    if data[3] != 3:  # IP literals round-trip exactly; a domain that looks like an IP may not
        assert again == data
    reparsed = decode_udp_datagram(again)
    assert (reparsed.port, reparsed.payload, reparsed.frag) == (
        datagram.port, datagram.payload, datagram.frag)


def test_relay_address_falls_back_to_server_host() -> None:
    from tunkit.proxy.socks5 import relay_address

    assert relay_address(UdpAssociated("0.0.0.0", 7000), "10.9.0.1") == ("10.9.0.1", 7000)
    assert relay_address(UdpAssociated("::", 7000), "fd00::1") == ("fd00::1", 7000)
    assert relay_address(UdpAssociated("10.9.0.2", 7000), "10.9.0.1") == ("10.9.0.2", 7000)
