"""The WireGuard daemon's I/O edge on real devices: batched UDP (GSO/GRO, and the zero-copy
send_packed/receive_into paths) across a veth pair, dual-stack endpoints, SO_MARK, nft tables
owned and removed by us, the UAPI socket rules."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time

import pytest

from tunkit.errors import DeviceError
from tunkit.io.nft import NftTable, list_tables
from tunkit.io.udp import SO_MARK, UdpTransport, format_endpoint, parse_endpoint
from tunkit.lab import Lab

pytestmark = pytest.mark.e2e

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)


@pytest.fixture
def pair():
    with Lab("tkio") as lab:
        a, b = lab.add_host("a"), lab.add_host("b")
        lab.link(a, b, "192.168.61.1/24", "192.168.61.2/24", v6=("fd61::1/64", "fd61::2/64"))
        yield lab, a, b


def _drain(receiver: UdpTransport, want: int, timeout: float = 3.0):
    got, sources = [], set()
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        batches = list(receiver.receive_many())
        if not batches:
            time.sleep(0.01)
        for datagrams, source in batches:
            got.extend(datagrams)
            sources.add(source)
    return got, sources


@pytest.mark.parametrize("server", ["192.168.61.2", "fd61::2"])
def test_gso_batch_crosses_veth_intact_and_in_order(pair, server):
    _lab, a, b = pair
    with b.inside():
        receiver = UdpTransport(0)
    with a.inside():
        sender = UdpTransport(0)
    try:
        datagrams = [bytes([i % 256]) * 1200 + i.to_bytes(4, "big") for i in range(100)]
        datagrams.append(b"tail" * 10)
        sender.send_batch(datagrams, (server, receiver.port))
        got, sources = _drain(receiver, len(datagrams))
        assert got == datagrams
        client = "192.168.61.1" if "." in server else "fd61::1"
        assert sources == {(client, sender.port)}
        # 101 datagrams of 1204 bytes: at most 64 per GSO send -> 3 syscalls (2 groups + tail)
        assert sender.tx_datagrams == 101
        assert sender.tx_syscalls <= 3, sender.tx_syscalls
    finally:
        sender.close()
        receiver.close()


def test_dual_stack_socket_reports_plain_ipv4_sources(pair):
    _lab, a, b = pair
    with b.inside():
        receiver = UdpTransport(0)
    with a.inside():
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        plain.sendto(b"hello", ("192.168.61.2", receiver.port))
        got, sources = _drain(receiver, 1)
        assert got == [b"hello"]
        ((host, port),) = sources
        assert host == "192.168.61.1" and port == plain.getsockname()[1]
        assert receiver.dual_stack
    finally:
        plain.close()
        receiver.close()


def test_fwmark_is_applied_and_rebind_keeps_it(pair):
    _lab, a, _b = pair
    with a.inside():
        transport = UdpTransport(0, fwmark=51820)
    try:
        assert transport._sock.getsockopt(socket.SOL_SOCKET, SO_MARK) == 51820
        transport.rebind(0)
        assert transport._sock.getsockopt(socket.SOL_SOCKET, SO_MARK) == 51820
    finally:
        transport.close()


def test_port_in_use_is_a_device_error(pair):
    _lab, a, _b = pair
    with a.inside():
        first = UdpTransport(0)
        try:
            with pytest.raises(DeviceError, match="in use"):
                UdpTransport(first.port)
        finally:
            first.close()


def test_endpoint_text_round_trip():
    for text in ("1.2.3.4:51820", "[fd00::1]:1"):
        assert format_endpoint(parse_endpoint(text)) == text
    assert parse_endpoint("[::ffff:1.2.3.4]:5") == ("1.2.3.4", 5)


def test_nft_table_apply_is_atomic_and_delete_leaves_nothing(pair):
    _lab, a, _b = pair
    before = list_tables(netns=a.netns)
    table = NftTable("inet", "tunkit-test", netns=a.netns)
    with table:
        table.apply("  chain c { type filter hook input priority 0; udp dport 9 counter drop; }")
        table.apply("  chain c { type filter hook input priority 0; udp dport 10 drop; }")
        assert table.exists()
        with pytest.raises(DeviceError, match="nft failed"):
            table.apply("  chain c { this is not nft }")
        # a failed apply leaves the previous content in place
        out = a.run(["nft", "list", "table", "inet", "tunkit-test"]).stdout
        assert "dport 10" in out and "dport 9" not in out
    assert list_tables(netns=a.netns) == before
    table.delete()  # idempotent


def test_uapi_socket_is_root_only_and_survives_garbage(tmp_path):
    from tunkit.services.uapi_server import UapiServer, uapi_call
    from tunkit.wireguard.uapi import DeviceSnapshot, UapiError

    class Handler:
        def __init__(self):
            self.sets = []

        def snapshot(self):
            return DeviceSnapshot(listen_port=4242)

        def apply_set(self, request):
            if request.interface.listen_port == 1:
                raise UapiError(-98, "in use")
            self.sets.append(request)

    handler = Handler()
    server = UapiServer("tkt0", handler, directory=str(tmp_path / "wg"))
    server.start()
    try:
        assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "wg").st_mode) == 0o755
        d = str(tmp_path / "wg")
        assert uapi_call("tkt0", "get=1\n\n", directory=d) == "listen_port=4242\nerrno=0\n\n"
        assert uapi_call("tkt0", "set=1\nlisten_port=7\n\n", directory=d) == "errno=0\n\n"
        assert uapi_call("tkt0", "set=1\nlisten_port=1\n\n", directory=d) == "errno=-98\n\n"
        assert uapi_call("tkt0", "set=1\nbogus=1\n\n", directory=d) == "errno=-22\n\n"
        assert uapi_call("tkt0", "set=1\nprivate_key=zz\n\n", directory=d) == "errno=-22\n\n"
        assert uapi_call("tkt0", "get=1\nx\n", directory=d).startswith("errno=-22")
        assert uapi_call("tkt0", "hello\n", directory=d).startswith("errno=")
        # two requests on one connection are both answered, in order
        two = uapi_call("tkt0", "set=1\nfwmark=5\n\nget=1\n\n", directory=d)
        assert two.startswith("errno=0\n\n")
        # a client that connects and says nothing does not block others
        idle = socket.socket(socket.AF_UNIX)
        idle.connect(server.path)
        t = threading.Thread(target=lambda: uapi_call("tkt0", "get=1\n\n", directory=d))
        t.start()
        t.join(3)
        assert not t.is_alive()
        idle.close()
        assert [r.interface.listen_port for r in handler.sets] == [7, None]
        assert server.socket_file_present()
    finally:
        server.close()
    assert not os.path.exists(server.path)


def test_genkey_pubkey_match_wg_tools():
    import subprocess
    import sys

    def tunkit(*argv: str, stdin: str = "") -> str:
        return subprocess.run([sys.executable, "-m", "tunkit", *argv], input=stdin, text=True,
                              capture_output=True, check=True).stdout

    for _ in range(3):
        private = tunkit("genkey")
        assert len(private.strip()) == 44
        ours = tunkit("pubkey", stdin=private)
        theirs = subprocess.run(["wg", "pubkey"], input=private, text=True, capture_output=True,
                                check=True).stdout
        assert ours == theirs
        wg_private = subprocess.run(["wg", "genkey"], text=True, capture_output=True,
                                    check=True).stdout
        assert tunkit("pubkey", stdin=wg_private) == subprocess.run(
            ["wg", "pubkey"], input=wg_private, text=True, capture_output=True, check=True
        ).stdout
    bad = subprocess.run([sys.executable, "-m", "tunkit", "pubkey"], input="not a key\n",
                         text=True, capture_output=True)
    assert bad.returncode != 0 and bad.stderr.startswith("tunkit: error:")
    assert len(tunkit("genpsk").strip()) == 44


@pytest.mark.parametrize("server", ["192.168.61.2", "fd61::2"])
def test_send_packed_and_receive_into_round_trip(pair, server):
    _lab, a, b = pair
    with b.inside():
        receiver = UdpTransport(0)
    with a.inside():
        sender = UdpTransport(0)
    try:
        size = 1452
        datagrams = [bytes([i % 256]) * (size - 4) + i.to_bytes(4, "big") for i in range(100)]
        datagrams.append(b"short tail")
        sender.send_packed(b"".join(datagrams), size, (server, receiver.port))
        assert sender.tx_datagrams == 101
        # 65000 // 1452 = 44 datagrams per GSO send: 44 + 44 + 13
        assert sender.tx_syscalls == 3, sender.tx_syscalls
        got: list[bytes] = []
        sources = set()
        buffer = memoryview(bytearray(65535 + 64))
        deadline = time.monotonic() + 3.0
        while len(got) < len(datagrams) and time.monotonic() < deadline:
            read = receiver.receive_into(buffer)
            if read is None:
                time.sleep(0.01)
                continue
            nbytes, segment, source = read
            sources.add(source)
            step = segment or nbytes
            got += [bytes(buffer[k : min(k + step, nbytes)]) for k in range(0, nbytes, step)]
        assert got == datagrams
        client = "192.168.61.1" if "." in server else "fd61::1"
        assert sources == {(client, sender.port)}
    finally:
        sender.close()
        receiver.close()
