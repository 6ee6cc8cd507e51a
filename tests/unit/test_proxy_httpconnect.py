"""HTTP CONNECT client: request bytes, 200 / 407 / garbage, bounded parser, fuzzing."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.errors import LocalProtocolError, RemoteProtocolError
from tunkit.proxy.httpconnect import (
    MAX_HEADER_BYTES,
    Connected,
    Failed,
    HttpConnectClient,
    HttpConnectState,
)
from tunkit.proxy.sansio import NEED_DATA


def test_request_bytes_with_basic_auth() -> None:
    client = HttpConnectClient("example.com", 443, username="alice", password="s3cret")
    request = client.initial_bytes()
    token = base64.b64encode(b"alice:s3cret").decode()
    assert request == (
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nUser-Agent: tunkit\r\n"
        f"Proxy-Authorization: Basic {token}\r\n\r\n"
    ).encode()
    assert "s3cret" not in repr(client)


def test_ipv6_target_is_bracketed() -> None:
    request = HttpConnectClient("2001:db8::1", 80).initial_bytes()
    assert request.startswith(b"CONNECT [2001:db8::1]:80 HTTP/1.1\r\n")


def test_200_split_across_chunks_with_trailing_data() -> None:
    client = HttpConnectClient("example.com", 443)
    client.initial_bytes()
    response = b"HTTP/1.1 200 Connection established\r\nVia: test\r\n\r\nHELLO"
    events = []
    for i in range(len(response)):
        client.receive_data(response[i : i + 1])
        events.append(client.next_event())
        if events[-1] is not NEED_DATA:
            break
    assert events[-1] == Connected(200, (("via", "test"),))
    assert all(e is NEED_DATA for e in events[:-1])
    assert client.state is HttpConnectState.ESTABLISHED
    client2 = HttpConnectClient("example.com", 443)
    client2.initial_bytes()
    client2.receive_data(response)
    assert isinstance(client2.next_event(), Connected)
    assert client2.trailing_data == b"HELLO"


def test_interim_100_is_skipped() -> None:
    client = HttpConnectClient("a.test", 1)
    client.initial_bytes()
    client.receive_data(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\n")
    assert client.next_event() == Connected(200, ())


def test_407_is_failed() -> None:
    client = HttpConnectClient("example.com", 443, username="a", password="wrong")
    client.initial_bytes()
    client.receive_data(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                        b"Proxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n")
    assert client.next_event() == Failed(407, "Proxy Authentication Required")
    assert client.state is HttpConnectState.FAILED
    with pytest.raises(LocalProtocolError):
        client.receive_data(b"more")


@pytest.mark.parametrize("garbage", [
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/2 200\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
])
def test_garbage_is_remote_error(garbage: bytes) -> None:
    client = HttpConnectClient("a.test", 1)
    client.initial_bytes()
    client.receive_data(garbage)
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_header_block_is_bounded() -> None:
    client = HttpConnectClient("a.test", 1)
    client.initial_bytes()
    client.receive_data(b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * MAX_HEADER_BYTES)
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_bad_targets_are_local_errors() -> None:
    for host, port in (("a b", 1), ("", 1), ("a.test", 0), ("a\r\nX: y", 1)):
        with pytest.raises(LocalProtocolError):
            HttpConnectClient(host, port)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=6))
def test_fuzz_response_parser(chunks: list[bytes]) -> None:
    client = HttpConnectClient("a.test", 443)
    client.initial_bytes()
    try:
        for chunk in chunks:
            client.receive_data(chunk)
            event = client.next_event()
            if event is not NEED_DATA:
                assert isinstance(event, Connected | Failed)
                return
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(100, 599), st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                      max_size=30))
def test_fuzz_status_lines(status: int, reason: str) -> None:
    client = HttpConnectClient("a.test", 443)
    client.initial_bytes()
    client.receive_data(f"HTTP/1.1 {status} {reason}\r\n\r\n".encode())
    event = client.next_event()
    if status < 200:
        assert event is NEED_DATA
    elif status < 300:
        assert event == Connected(status, ())
    else:
        assert event == Failed(status, reason)
