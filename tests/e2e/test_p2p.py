"""tunkit p2p end to end: two lab namespaces joined by veth, the tunnel run as real processes.

Every mode carries ping and a TCP transfer whose sha256 the receiver checks; the robustness
cases (reconnect, refused certificate, garbage stream, device cleanup) and the byte-exact
simpletun interop (an independent minimal peer written below with raw sockets + struct)
run against the same processes users run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tunkit.lab import Host, Lab

pytestmark = pytest.mark.e2e

UNDERLAY = ("10.77.0.1/24", "10.77.0.2/24")
SERVER_IP, CLIENT_IP = "10.77.0.1", "10.77.0.2"
TUN_A, TUN_B = "10.99.0.1", "10.99.0.2"
PY = sys.executable
TRANSFER_BYTES = 8 * 1024 * 1024


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"missing tool {name}")
    return path


# --------------------------------------------------------------------------- helpers


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if len(re.findall(pattern, text)) >= count:
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} (x{count}) in log:\n{self.text()}")

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


@dataclass
class Pair:
    lab: Lab
    a: Host
    b: Host
    tmp: Path
    procs: list[Proc] = field(default_factory=list)

    def p2p(self, host: Host, args: list[str], name: str) -> Proc:
        log = self.tmp / f"{name}-{len(self.procs)}.log"
        argv = [PY, "-m", "tunkit.services.p2p_cli", "--stats-interval", "0", *args]
        proc = host.popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        p = Proc(proc, log)
        self.procs.append(p)
        return p

    def server(self, extra: list[str], ifname: str = "tkp0") -> Proc:
        p = self.p2p(self.a, ["-i", ifname, "--create", "--address", f"{TUN_A}/24", "-s", *extra],
                     "server")
        p.wait_log(r"listening on")
        return p

    def client(self, extra: list[str], ifname: str = "tkp0") -> Proc:
        return self.p2p(self.b, ["-i", ifname, "--create", "--address", f"{TUN_B}/24",
                                 "-c", SERVER_IP, *extra], "client")


@pytest.fixture
def pair(lab: Lab, tmp_path: Path) -> Iterator[Pair]:
    a, b = lab.add_host("a"), lab.add_host("b")
    lab.link(a, b, *UNDERLAY)
    p = Pair(lab, a, b, tmp_path)
    yield p
    for proc in p.procs:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(5)


def ping(host: Host, addr: str, count: int = 3, timeout: float = 20) -> float:
    """Average RTT in ms; asserts no loss."""
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:  # the tunnel may still be negotiating
        r = host.run(["ping", "-c", "1", "-W", "1", addr], check=False)
        if r.returncode == 0:
            break
        out = r.stdout + r.stderr
    else:
        raise AssertionError(f"no ping reply from {addr}: {out}")
    r = host.run(["ping", "-c", str(count), "-i", "0.2", "-W", "2", addr], check=False)
    assert f"{count} received" in r.stdout, r.stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
    assert m, r.stdout
    return float(m.group(1))


RECEIVER = textwrap.dedent("""
    import hashlib, socket, sys
    lst = socket.socket(); lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((sys.argv[1], 5001)); lst.listen(1); lst.settimeout(30)
    conn, _ = lst.accept(); conn.settimeout(30)
    h = hashlib.sha256(); n = 0
    while chunk := conn.recv(1 << 16):
        h.update(chunk); n += len(chunk)
    print(n, h.hexdigest())
""")

SENDER = textwrap.dedent("""
    import hashlib, random, socket, sys
    data = random.Random(int(sys.argv[3])).randbytes(int(sys.argv[2]))
    s = socket.create_connection((sys.argv[1], 5001), timeout=30)
    s.sendall(data); s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
    print(len(data), hashlib.sha256(data).hexdigest())
""")


def transfer(receiver_host: Host, sender_host: Host, addr: str, nbytes: int = TRANSFER_BYTES,
             seed: int = 7) -> None:
    """Send nbytes of a seeded pseudo-random stream through the tunnel; the receiver hashes it."""
    import hashlib
    import random

    expected = hashlib.sha256(random.Random(seed).randbytes(nbytes)).hexdigest()
    rx = receiver_host.popen([PY, "-c", RECEIVER, addr], stdout=subprocess.PIPE, text=True)
    receiver_host.wait_port(5001)
    tx = sender_host.run([PY, "-c", SENDER, addr, str(nbytes), str(seed)], timeout=60)
    out, _ = rx.communicate(timeout=60)
    assert tx.stdout.split() == [str(nbytes), expected]
    assert out.split() == [str(nbytes), expected], "receiver saw different bytes"


def make_certs(tmp: Path, name: str) -> dict[str, str]:
    out = tmp / name
    r = subprocess.run([PY, "-m", "tunkit.services.p2p_cli", "gen-certs", str(out)],
                       capture_output=True, text=True, check=True)
    assert "ca.pem" in r.stdout
    return {f: str(out / f) for f in ("ca.pem", "server.pem", "server.key", "client.pem",
                                       "client.key")}


def tls_args(c: dict[str, str], role: str, ca: str | None = None) -> list[str]:
    return ["--tls", "--cert", c[f"{role}.pem"], "--key", c[f"{role}.key"], "--ca", ca or c["ca.pem"]]


def socket_fds(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        n += target.startswith("socket:")
    return n


# --------------------------------------------------------------------------- every mode


MODES: dict[str, Callable[[Path], tuple[list[str], list[str], str]]] = {
    "compat-tun": lambda t: (["--mode", "compat"], ["--mode", "compat", "-d"], "compat framing"),
    "compat-tap": lambda t: (["-a", "--mode", "compat"], ["-a", "--mode", "compat"], "compat framing"),
    "fast": lambda t: (["--mode", "fast"], ["--mode", "fast"], "fast framing"),
    "auto-tap": lambda t: (["-a"], ["-a"], "fast framing"),
    "tls": lambda t: _tls_mode(t),
    "udp": lambda t: (["--udp"], ["--udp"], "UDP peer is now"),
    "udp-tap": lambda t: (["--udp", "-a"], ["--udp", "-a"], "UDP peer is now"),
}


def _tls_mode(t: Path) -> tuple[list[str], list[str], str]:
    c = make_certs(t, "c")
    return tls_args(c, "server"), tls_args(c, "client"), "authenticated as"


@pytest.mark.parametrize("mode", list(MODES))
def test_ping_and_tcp_integrity(pair: Pair, mode: str) -> None:
    need_tool("ping")
    s_args, c_args, marker = MODES[mode](pair.tmp)
    if mode.startswith("udp"):
        server = pair.p2p(pair.a, ["-i", "tkp0", "--create", "--address", f"{TUN_A}/24", "-s",
                                   *s_args], "server")
        server.wait_log("UDP .*listening")
    else:
        server = pair.server(s_args)
    client = pair.client(c_args)
    rtt = ping(pair.b, TUN_A)
    server.wait_log(marker)
    assert rtt < 10, f"tunnel RTT {rtt} ms (Nagle + delayed ACK would show ~40 ms)"
    if "tap" in mode:  # ARP resolved across the tunnel: the neighbour is the peer's TAP MAC
        with pair.a.netlink() as link:
            mac_a = link.get_mac("tkp0")
        neigh = pair.b.run(["ip", "neigh", "show", TUN_A]).stdout
        assert mac_a.lower() in neigh.lower(), neigh
    if "-d" in c_args:  # simpletun-style per-packet lines (ping: 84-byte IPv4 packets)
        text = client.text()
        assert re.search(r"TAP2NET \d+: Read 84 bytes from the tun interface", text), text
        assert re.search(r"TAP2NET \d+: Written 86 bytes to the network", text), text
        assert re.search(r"NET2TAP \d+: Written 84 bytes to the tun interface", text), text
    transfer(pair.a, pair.b, TUN_A)            # client -> server
    transfer(pair.b, pair.a, TUN_B, seed=11)   # server -> client
    assert client.proc.poll() is None and server.proc.poll() is None
    assert client.terminate() == 0
    assert server.terminate() == 0
    assert "Traceback" not in server.text() + client.text()


# --------------------------------------------------------------------------- robustness


def test_client_reconnects_after_server_restart(pair: Pair) -> None:
    server = pair.server([])
    client = pair.client([])
    ping(pair.b, TUN_A)
    server.proc.kill()
    server.proc.wait(5)
    client.wait_log(r"disconnected")
    time.sleep(1.0)
    server2 = pair.server([])
    client.wait_log(r"connected to 10\.77\.0\.1", timeout=20, count=2)
    server2.wait_log("fast framing")
    ping(pair.b, TUN_A)
    transfer(pair.a, pair.b, TUN_A, nbytes=1 << 20)
    assert "reconnecting" in client.text()


def test_bad_client_certificate_is_refused(pair: Pair) -> None:
    good = make_certs(pair.tmp, "c")
    other = make_certs(pair.tmp, "evil")
    server = pair.server(tls_args(good, "server"))
    # a client whose certificate comes from another CA (it trusts the right CA)
    client = pair.client(["--tls", "--cert", other["client.pem"], "--key", other["client.key"],
                          "--ca", good["ca.pem"]])
    server.wait_log(r"refused TLS peer .*certificate verify failed")
    client.wait_log(r"refused us")
    r = pair.b.run(["ping", "-c", "1", "-W", "1", TUN_A], check=False)
    assert r.returncode != 0
    client.proc.kill()
    client.proc.wait(5)
    # a raw client without any certificate: refused, and the server holds no socket for it
    probe = textwrap.dedent(f"""
        import socket, ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False
        ctx.load_verify_locations({good["ca.pem"]!r})
        s = ctx.wrap_socket(socket.create_connection(("{SERVER_IP}", 55555), timeout=5))
        try:
            s.recv(10); print("open")
        except (ssl.SSLError, OSError) as e:
            print("refused", e)
    """)
    out = pair.b.run([PY, "-c", probe], check=False).stdout
    assert out.startswith("refused"), out
    server.wait_log(r"refused TLS peer .*certificate", count=2)
    time.sleep(0.3)
    assert socket_fds(server.proc.pid) == 1  # only the listener
    assert server.proc.poll() is None


def test_garbage_stream_then_good_client(pair: Pair) -> None:
    server = pair.server([])
    garbage = textwrap.dedent(f"""
        import socket
        s = socket.create_connection(("{SERVER_IP}", 55555), timeout=5)
        s.sendall(b"\\xff\\xfe" + bytes(range(256)) * 8)
        print(repr(s.recv(10)))
    """)
    out = pair.b.run([PY, "-c", garbage], check=False).stdout
    assert out.strip() in ("b''", ""), out
    server.wait_log(r"closing connection .*frame length 65534 exceeds the maximum 1500")
    zero = f"import socket; s = socket.create_connection(('{SERVER_IP}', 55555)); s.sendall(bytes(4)); s.recv(1)"
    pair.b.run([PY, "-c", zero], check=False)
    server.wait_log(r"frame with length 0")
    pair.client([])
    ping(pair.b, TUN_A)
    assert server.proc.poll() is None


def test_sigterm_removes_created_device_but_keeps_attached(pair: Pair) -> None:
    pair.a.run(["ip", "tuntap", "add", "dev", "tkkeep", "mode", "tun"])
    pair.a.run(["ip", "link", "set", "tkkeep", "up"])
    attached = pair.p2p(pair.a, ["-i", "tkkeep", "-s", "-p", "55556"], "attached")
    attached.wait_log("attached to TUN device tkkeep")
    created = pair.server([], ifname="tkmade")
    created.wait_log("created TUN device tkmade")
    assert attached.terminate() == 0
    assert created.terminate() == 0
    links = pair.a.run(["ip", "-o", "link"]).stdout
    assert "tkkeep" in links
    assert "tkmade" not in links
    missing = pair.p2p(pair.a, ["-i", "nosuchdev", "-s"], "missing")
    assert missing.proc.wait(10) != 0
    text = missing.text()
    assert "no such device: nosuchdev" in text and "Traceback" not in text


# --------------------------------------------------------------------------- simpletun interop

# An independent minimal simpletun: its own /dev/net/tun ioctl, 2-byte big-endian framing,
# exact reads, like the C original (PROTOCOLS.md §2).  It records every frame it receives.
SIMPLETUN = textwrap.dedent("""
    import fcntl, os, select, socket, struct, subprocess, sys
    role, addr, name, cidr, tap, record = sys.argv[1:7]
    tap = tap == "1"
    fd = os.open("/dev/net/tun", os.O_RDWR)
    flags = (0x0002 if tap else 0x0001) | 0x1000          # IFF_TAP/IFF_TUN | IFF_NO_PI
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", name.encode(), flags))
    subprocess.run(["ip", "addr", "add", cidr, "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    if role == "server":
        lst = socket.socket(); lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("", 55555)); lst.listen(1)
        print("listening", flush=True)
        net, _ = lst.accept()
    else:
        net = socket.create_connection((addr, 55555))
    print("connected", flush=True)
    log = open(record, "ab", buffering=0)

    def read_n(n):
        buf = b""
        while len(buf) < n:
            chunk = net.recv(n - len(buf))
            if not chunk:
                sys.exit(0)
            buf += chunk
        return buf

    while True:
        r, _, _ = select.select([fd, net], [], [])
        if fd in r:
            pkt = os.read(fd, 2000)
            net.sendall(struct.pack("!H", len(pkt)))  # two writes, like the original
            net.sendall(pkt)
        if net in r:
            (n,) = struct.unpack("!H", read_n(2))
            pkt = read_n(n)
            log.write(struct.pack("!H", n) + pkt)
            os.write(fd, pkt)
""")


def _frames(path: Path) -> list[bytes]:
    data = path.read_bytes() if path.exists() else b""
    out, i = [], 0
    while i + 2 <= len(data):
        n = int.from_bytes(data[i : i + 2], "big")
        out.append(data[i + 2 : i + 2 + n])
        i += 2 + n
    return out


@pytest.mark.parametrize("tap", [False, True], ids=["tun", "tap"])
@pytest.mark.parametrize("direction", ["simpletun-client", "simpletun-server"])
@pytest.mark.parametrize("mode", ["compat", "auto"])
def test_interop_with_minimal_simpletun(pair: Pair, tap: bool, direction: str, mode: str) -> None:
    script = pair.tmp / "simpletun.py"
    script.write_text(SIMPLETUN)
    record = pair.tmp / "frames.bin"
    kind = ["-a"] if tap else []
    if direction == "simpletun-client":
        ours = pair.server(["--mode", mode, *kind])
        peer = pair.b.popen([PY, str(script), "client", SERVER_IP, "stun0", f"{TUN_B}/24",
                             str(int(tap)), str(record)], stdout=subprocess.PIPE, text=True)
        ours_host, peer_host, ours_ip, peer_ip = pair.a, pair.b, TUN_A, TUN_B
    else:
        peer = pair.a.popen([PY, str(script), "server", "", "stun0", f"{TUN_A}/24",
                             str(int(tap)), str(record)], stdout=subprocess.PIPE, text=True)
        assert peer.stdout is not None
        assert peer.stdout.readline().strip() == "listening"
        ours = pair.client(["--mode", mode, *kind])
        ours_host, peer_host, ours_ip, peer_ip = pair.b, pair.a, TUN_B, TUN_A
    ping(peer_host, ours_ip)
    ping(ours_host, peer_ip)
    transfer(peer_host, ours_host, peer_ip, nbytes=2 << 20)   # ours -> simpletun
    transfer(ours_host, peer_host, ours_ip, nbytes=2 << 20)   # simpletun -> ours
    assert peer.poll() is None, "the simpletun peer died"
    ours.wait_log("compat framing")
    frames = _frames(record)
    assert len(frames) > 100
    for f in frames:  # every frame the simpletun peer read is one whole packet
        assert 0 < len(f) <= 1518
        if not tap:
            assert f[0] >> 4 in (4, 6)
            if f[0] >> 4 == 4:
                assert int.from_bytes(f[2:4], "big") == len(f), "IPv4 total length != frame length"
    probes = [f for f in frames if b"TUNKIT-P2P" in f]
    if mode == "auto" and direction == "simpletun-server":
        assert len(probes) == 1  # our offer: a valid frame the peer wrote to its device
    else:
        assert probes == []
