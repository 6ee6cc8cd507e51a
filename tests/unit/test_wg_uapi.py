"""tunkit.wireguard.uapi: the xplatform UAPI text protocol.

WG_SETCONF_BYTES was captured from the real `wg setconf` (wireguard-tools v1.0.20210914) talking
to a fake UAPI socket; the get reply below was fed back to `wg show dump` / `wg showconf`, which
accepted it. The errno sign was checked the same way: `errno=-22` makes wg print
"Invalid argument", `errno=22` makes it print "Unknown error -22".
"""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.errors import RemoteProtocolError
from tunkit.wireguard.uapi import (
    ERRNO_INVALID,
    ERRNO_IO,
    ERRNO_PROTOCOL,
    NEED_DATA,
    DeviceSnapshot,
    InterfaceChanges,
    PeerChanges,
    PeerSnapshot,
    SetRequest,
    UapiError,
    UapiRequestReader,
    format_endpoint,
    format_errno,
    format_get_reply,
    format_set_request,
    parse_endpoint,
    parse_get_reply,
    parse_set,
)

A = ipaddress.ip_address
N = ipaddress.ip_network
K1 = bytes.fromhex("57ca37c54bfd2d83ab023f8af6efb4bd7686f11879c79f5858db1c3415843113")
P1 = bytes.fromhex("70b6663693fc54240e5ba4a4d6ab9f0fa62f6ba2e5ca970d24998c348dc49771")
P2 = bytes.fromhex("8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f")
PSK = bytes(range(32))

WG_SETCONF_BYTES = (
    "set=1\n"
    "private_key=57ca37c54bfd2d83ab023f8af6efb4bd7686f11879c79f5858db1c3415843113\n"
    "listen_port=51820\n"
    "fwmark=32\n"
    "replace_peers=true\n"
    "public_key=70b6663693fc54240e5ba4a4d6ab9f0fa62f6ba2e5ca970d24998c348dc49771\n"
    "preshared_key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
    "endpoint=192.0.2.7:51820\n"
    "persistent_keepalive_interval=25\n"
    "replace_allowed_ips=true\n"
    "allowed_ip=10.0.0.2/32\n"
    "allowed_ip=10.1.0.1/16\n"
    "allowed_ip=::/0\n"
    "public_key=8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f\n"
    "endpoint=[fd00::1]:9\n"
    "replace_allowed_ips=true\n"
    "\n"
)


def body(text: str) -> list[str]:
    return text.split("\n")[1:]


def test_parse_wg_setconf_request() -> None:
    req = parse_set(body(WG_SETCONF_BYTES))
    assert req.interface == InterfaceChanges(
        private_key=K1, listen_port=51820, fwmark=32, replace_peers=True
    )
    first, second = req.peers
    assert first.public_key == P1 and first.preshared_key == PSK
    assert first.endpoint == (A("192.0.2.7"), 51820)
    assert first.persistent_keepalive_interval == 25
    assert first.replace_allowed_ips is True
    assert first.allowed_ips == [N("10.0.0.2/32"), N("10.1.0.0/16"), N("::/0")]  # masked
    assert second == PeerChanges(
        public_key=P2, endpoint=(A("fd00::1"), 9), replace_allowed_ips=True
    )


def test_errno_values_are_negative_like_wireguard_go() -> None:
    assert (ERRNO_INVALID, ERRNO_PROTOCOL, ERRNO_IO) == (-22, -71, -5)
    assert format_errno(ERRNO_INVALID) == "errno=-22\n\n"
    assert issubclass(UapiError, RemoteProtocolError)


@pytest.mark.parametrize(
    ("lines", "errno"),
    [
        (["listen_port"], ERRNO_PROTOCOL),  # no '='
        (["private_key=00"], ERRNO_INVALID),
        (["private_key=" + "zz" * 32], ERRNO_INVALID),
        (["listen_port=65536"], ERRNO_INVALID),
        (["listen_port=+1"], ERRNO_INVALID),
        (["listen_port=-1"], ERRNO_INVALID),
        (["listen_port= 1"], ERRNO_INVALID),
        (["listen_port="], ERRNO_INVALID),
        (["fwmark=4294967296"], ERRNO_INVALID),
        (["replace_peers=false"], ERRNO_INVALID),
        (["bogus=1"], ERRNO_INVALID),
        (["=1"], ERRNO_INVALID),
        (["public_key=" + "00" * 31], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "listen_port=1"], ERRNO_INVALID),  # device key in peer
        ([f"public_key={P1.hex()}", "remove=1"], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "update_only=yes"], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "replace_allowed_ips=True"], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "protocol_version=2"], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "allowed_ip=10.0.0.1"], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "allowed_ip=10.0.0.0/33"], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "allowed_ip=fe80::/64%eth0"], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "endpoint=fd00::1:51820"], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "endpoint=[1.2.3.4]:51820"], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "endpoint=host.example:51820"], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "endpoint=1.2.3.4:65536"], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "endpoint=1.2.3.4"], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "persistent_keepalive_interval=70000"], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "preshared_key=xyz"], ERRNO_INVALID),
        ([f"public_key={P1.hex()}", "rx_bytes=5"], ERRNO_INVALID),
    ],
)
def test_parse_set_errors_carry_the_reply_errno(lines: list[str], errno: int) -> None:
    with pytest.raises(UapiError) as info:
        parse_set(lines)
    assert info.value.errno == errno


def test_parse_set_accepts_wireguard_go_spellings() -> None:
    req = parse_set(
        [
            "private_key=" + "00" * 32,  # zero = remove the key
            "listen_port=000080",
            f"public_key={P1.hex().upper()}",
            "protocol_version=1",
            "update_only=true",
            "endpoint=[fe80::1%eth0]:51820",
            "persistent_keepalive_interval=0",
        ]
    )
    assert req.interface.private_key == bytes(32) and req.interface.listen_port == 80
    peer = req.peers[0]
    assert peer.public_key == P1 and peer.update_only and peer.protocol_version == 1
    assert peer.endpoint == (A("fe80::1%eth0"), 51820)
    assert peer.persistent_keepalive_interval == 0


def test_replace_allowed_ips_drops_earlier_lines_and_remove_wins() -> None:
    req = parse_set(
        [
            f"public_key={P1.hex()}",
            "allowed_ip=10.0.0.0/8",
            "replace_allowed_ips=true",
            "allowed_ip=10.1.0.0/16",
            f"public_key={P2.hex()}",
            "allowed_ip=10.2.0.0/16",
            "endpoint=1.2.3.4:5",
            "remove=true",
            "allowed_ip=10.3.0.0/16",
            "",
            "this line is after the terminator",
        ]
    )
    assert req.peers[0].replace_allowed_ips and req.peers[0].allowed_ips == [N("10.1.0.0/16")]
    assert req.peers[1] == PeerChanges(public_key=P2, remove=True)


def test_set_request_round_trip() -> None:
    req = parse_set(body(WG_SETCONF_BYTES))
    assert parse_set(body(format_set_request(req))) == req
    assert format_set_request(req).endswith("\n\n")


def test_secrets_are_not_in_repr() -> None:
    req = parse_set(body(WG_SETCONF_BYTES))
    text = repr(req)
    assert K1.hex() not in text and repr(K1) not in text and repr(PSK) not in text


# ---- get ----------------------------------------------------------------------------------

SNAPSHOT = DeviceSnapshot(
    private_key=K1,
    listen_port=51820,
    fwmark=32,
    peers=[
        PeerSnapshot(
            public_key=P1,
            preshared_key=PSK,
            endpoint=(A("192.0.2.7"), 51820),
            last_handshake_time_sec=1700000000,
            last_handshake_time_nsec=5,
            tx_bytes=1234,
            rx_bytes=5678,
            persistent_keepalive_interval=25,
            allowed_ips=[N("10.0.0.2/32"), N("::/0")],
        ),
        PeerSnapshot(public_key=P2, endpoint=(A("fd00::1"), 9)),
    ],
)

GET_REPLY = (
    "private_key=57ca37c54bfd2d83ab023f8af6efb4bd7686f11879c79f5858db1c3415843113\n"
    "listen_port=51820\n"
    "fwmark=32\n"
    "public_key=70b6663693fc54240e5ba4a4d6ab9f0fa62f6ba2e5ca970d24998c348dc49771\n"
    "preshared_key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
    "protocol_version=1\n"
    "endpoint=192.0.2.7:51820\n"
    "last_handshake_time_sec=1700000000\n"
    "last_handshake_time_nsec=5\n"
    "tx_bytes=1234\n"
    "rx_bytes=5678\n"
    "persistent_keepalive_interval=25\n"
    "allowed_ip=10.0.0.2/32\n"
    "allowed_ip=::/0\n"
    "public_key=8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f\n"
    "preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n"
    "protocol_version=1\n"
    "endpoint=[fd00::1]:9\n"
    "last_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\n"
    "tx_bytes=0\n"
    "rx_bytes=0\n"
    "persistent_keepalive_interval=0\n"
    "errno=0\n"
    "\n"
)


def test_get_reply_in_wireguard_go_order() -> None:
    assert format_get_reply(SNAPSHOT) == GET_REPLY


def test_get_reply_omits_zero_device_fields() -> None:
    assert format_get_reply(DeviceSnapshot()) == "errno=0\n\n"
    assert format_get_reply(DeviceSnapshot(private_key=bytes(32))) == "errno=0\n\n"


def test_parse_get_reply_round_trip_and_errno() -> None:
    assert parse_get_reply(GET_REPLY) == SNAPSHOT
    with pytest.raises(UapiError) as info:
        parse_get_reply("errno=-22\n\n")
    assert info.value.errno == -22
    for bad in ["", "listen_port=1\n\n", "bogus\nerrno=0\n\n", "tx_bytes=1\nerrno=0\n\n"]:
        with pytest.raises(UapiError):
            parse_get_reply(bad)


@pytest.mark.parametrize(
    ("addr", "port", "text"),
    [
        ("1.2.3.4", 51820, "1.2.3.4:51820"),
        ("fd00::1", 51820, "[fd00::1]:51820"),
        ("::ffff:1.2.3.4", 7, "[::ffff:1.2.3.4]:7"),
        ("fe80::1%eth0", 1, "[fe80::1%eth0]:1"),
    ],
)
def test_endpoint_format_and_parse(addr: str, port: int, text: str) -> None:
    ip = A(addr)
    assert format_endpoint(ip, port) == text
    assert parse_endpoint(text) == (ip, port)


def test_mapped_prefixes_print_like_go() -> None:
    snap = DeviceSnapshot(
        peers=[PeerSnapshot(public_key=P1, allowed_ips=[N("::ffff:10.0.0.0/104")])]
    )
    text = format_get_reply(snap)
    assert "allowed_ip=::ffff:10.0.0.0/104\n" in text
    assert parse_get_reply(text) == snap


# ---- framing ------------------------------------------------------------------------------


def drain(reader: UapiRequestReader) -> list[object]:
    out: list[object] = []
    while True:
        try:
            item = reader.next_request()
        except UapiError as err:
            out.append(("error", err.errno, err.close_connection))
            if err.close_connection:
                return out
            continue
        if item is NEED_DATA:
            return out
        out.append(item[0])


def test_reader_get_and_set_byte_by_byte() -> None:
    reader = UapiRequestReader()
    stream = (WG_SETCONF_BYTES + "get=1\n\n").encode()
    seen: list[object] = []
    for i in range(len(stream)):
        reader.receive_data(stream[i : i + 1])
        seen += drain(reader)
    assert seen == ["set", "get"]


def test_reader_returns_parsed_set() -> None:
    reader = UapiRequestReader()
    reader.receive_data(WG_SETCONF_BYTES.encode())
    item = reader.next_request()
    assert item != NEED_DATA and item[0] == "set"
    assert isinstance(item[1], SetRequest) and item[1] == parse_set(body(WG_SETCONF_BYTES))
    assert reader.next_request() is NEED_DATA


def test_reader_bad_get_terminator_then_keeps_serving() -> None:
    reader = UapiRequestReader()
    reader.receive_data(b"get=1\nxget=1\n\n")
    assert drain(reader) == [("error", -22, False), "get"]


def test_reader_refused_set_is_consumed_whole() -> None:
    reader = UapiRequestReader()
    reader.receive_data(b"set=1\nlisten_port=99999\nprivate_key=00\nbogus\n\nget=1\n\n")
    assert drain(reader) == [("error", -22, False), "get"]


def test_reader_crlf_lines_and_eof_terminated_set() -> None:
    reader = UapiRequestReader()
    reader.receive_data(b"set=1\r\n")  # op line must be exact: this is not an operation
    assert drain(reader) == [("error", ERRNO_PROTOCOL, True)]
    reader = UapiRequestReader()
    reader.receive_data(b"set=1\nlisten_port=5\r\n\r\nset=1\nfwmark=7\nlisten_port=8")
    first = reader.next_request()
    assert first != NEED_DATA and first[1] is not None and first[1].interface.listen_port == 5
    assert reader.next_request() is NEED_DATA
    reader.receive_eof()
    second = reader.next_request()
    assert second != NEED_DATA and second[1] is not None
    assert (second[1].interface.fwmark, second[1].interface.listen_port) == (7, 8)
    assert reader.next_request() is NEED_DATA


def test_reader_unknown_operation_is_fatal() -> None:
    reader = UapiRequestReader()
    reader.receive_data(b"delete=1\n\nget=1\n\n")
    assert drain(reader) == [("error", ERRNO_PROTOCOL, True)]
    with pytest.raises(UapiError):
        reader.next_request()
    reader.receive_data(b"x" * 100000)  # a dead stream is not buffered
    assert len(reader._buffer) == 0


def test_reader_bounds_line_and_request_size() -> None:
    reader = UapiRequestReader(max_line_bytes=100)
    reader.receive_data(b"set=1\n" + b"a" * 101)
    assert drain(reader) == [("error", ERRNO_IO, True)]
    reader = UapiRequestReader(max_line_bytes=100)
    reader.receive_data(b"g" * 101)  # no newline at all: still bounded
    assert drain(reader) == [("error", ERRNO_IO, True)]
    reader = UapiRequestReader(max_request_bytes=1000)
    reader.receive_data(b"set=1\n" + b"listen_port=1\n" * 100)
    assert drain(reader) == [("error", ERRNO_IO, True)]


def test_reader_large_request_in_one_piece() -> None:
    lines = [f"public_key={P1.hex()}", "replace_allowed_ips=true"]
    lines += [f"allowed_ip=10.{i // 256}.{i % 256}.0/24" for i in range(20000)]
    reader = UapiRequestReader()
    reader.receive_data(("set=1\n" + "\n".join(lines) + "\n\n").encode())
    item = reader.next_request()
    assert item != NEED_DATA and item[1] is not None
    assert len(item[1].peers[0].allowed_ips) == 20000
    assert item[1].peers[0].allowed_ips[-1] == N("10.78.31.0/24")


# ---- fuzz ---------------------------------------------------------------------------------

_KEYS = [
    "private_key",
    "listen_port",
    "fwmark",
    "replace_peers",
    "public_key",
    "remove",
    "update_only",
    "preshared_key",
    "endpoint",
    "persistent_keepalive_interval",
    "replace_allowed_ips",
    "allowed_ip",
    "protocol_version",
    "",
    "x",
]
_VALUES = st.one_of(
    st.sampled_from(
        [
            "true",
            "1",
            "0",
            "65535",
            "65536",
            P1.hex(),
            "10.0.0.0/8",
            "[::1]:1",
            "1.2.3.4:5",
            "::/0",
            "fe80::1%1",
            "",
        ]
    ),
    st.text(max_size=20),
)
_LINES = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_KEYS), _VALUES),
    st.text(max_size=30),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINES, max_size=20))
def test_parse_set_fuzz(lines: list[str]) -> None:
    try:
        req = parse_set(lines)
    except UapiError as err:
        assert err.errno in (ERRNO_INVALID, ERRNO_PROTOCOL)
        return
    # whatever parsed must survive a format/parse round trip
    assert parse_set(body(format_set_request(req))) == req


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from(
                [
                    b"get=1\n",
                    b"set=1\n",
                    b"\n",
                    b"\r\n",
                    b"listen_port=1\n",
                    f"public_key={P1.hex()}\n".encode(),
                ]
            ),
        ),
        max_size=30,
    ),
    st.booleans(),
)
def test_reader_fuzz(chunks: list[bytes], eof: bool) -> None:
    reader = UapiRequestReader(max_line_bytes=64, max_request_bytes=512)
    results: list[object] = []
    for chunk in chunks:
        reader.receive_data(chunk)
        results += drain(reader)
        if results and results[-1] == ("error", ERRNO_PROTOCOL, True):
            return
        if results and results[-1] == ("error", ERRNO_IO, True):
            return
    if eof:
        reader.receive_eof()
    results += drain(reader)
    for item in results:
        assert item in ("get", "set") or (isinstance(item, tuple) and item[0] == "error")


@given(st.text(max_size=200))
def test_parse_get_reply_fuzz(text: str) -> None:
    with contextlib.suppress(UapiError):
        parse_get_reply(text)
