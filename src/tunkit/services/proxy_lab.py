"""A three-namespace lab for the proxy: used by its demo section, e2e tests and bench.

Topology (all inside one :class:`tunkit.lab.Lab`)::

    client 10.77.1.1 --eth-- 10.77.1.2 upstream 10.77.2.1 --eth-- 10.77.2.2 server
    (tunkit proxy, curl,      (microsocks :1080, with     (web :80, DNS :53,
     dig; default route        user/password :1082,         UDP echo :7)
     via upstream)             danted :1081, HTTP CONNECT
                               proxy :3128; forwards)

The server's DNS answers every ``*.test`` A query with 10.77.2.2 and logs each question
(name, type, client address) to ``dns.log``; microsocks, danted and the HTTP proxy resolve
names through it (their own mount namespace sees a private ``/etc/resolv.conf``; only
``bench.test`` is in their private ``/etc/hosts``).  Clients in the client
namespace can be run with a private resolv.conf naming the proxy's DNS
(:meth:`ProxyLab.run_client`).  Everything is torn down with the lab.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunkit.lab import Host, Lab, wait_for

CLIENT_IP = "10.77.1.1"
UPSTREAM_IP = "10.77.1.2"
UPSTREAM_FAR_IP = "10.77.2.1"
SERVER_IP = "10.77.2.2"
SOCKS_PORT = 1080
DANTE_PORT = 1081
SOCKS_AUTH_PORT = 1082
SOCKS_USER, SOCKS_PASSWORD = "alice", "s3cret"
HTTP_PROXY_PORT = 3128
WEB_PORT = 80
ECHO_PORT = 7

DNS_SERVER = r'''
import socket, socketserver, sys, threading, time
import dns.message, dns.rrset, dns.rcode, dns.rdatatype
ADDR, LOG = sys.argv[1], sys.argv[2]
def answer(wire, client):
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    name = q.question[0].name.to_text().lower()
    with open(LOG, "a") as f:
        f.write(f"{name} {dns.rdatatype.to_text(q.question[0].rdtype)} from {client}\n")
    if name.startswith("sluggish."):  # a resolver that takes its time
        time.sleep(2)
    if name.endswith(".test.") and q.question[0].rdtype == dns.rdatatype.A:
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", ADDR))
    elif not name.endswith(".test."):
        r.set_rcode(dns.rcode.NXDOMAIN)
    return r.to_wire()
class U(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(answer(data, self.client_address[0]), self.client_address)
class T(socketserver.BaseRequestHandler):
    def handle(self):
        n = int.from_bytes(self.request.recv(2), "big")
        data = b""
        while len(data) < n:
            data += self.request.recv(n - len(data))
        out = answer(data, self.client_address[0])
        self.request.sendall(len(out).to_bytes(2, "big") + out)
socketserver.ThreadingUDPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.allow_reuse_address = True
u = socketserver.ThreadingUDPServer((ADDR, 53), U)
t = socketserver.ThreadingTCPServer((ADDR, 53), T)
threading.Thread(target=t.serve_forever, daemon=True).start()
u.serve_forever()
'''

HTTP_PROXY = r'''
import socket, sys, threading
addr, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def pump(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def serve(c):
    head = b""
    while b"\r\n\r\n" not in head:
        d = c.recv(4096)
        if not d:
            return c.close()
        head += d
    line = head.split(b"\r\n", 1)[0].decode()
    method, target, _ = line.split(" ", 2)
    with open(log, "a") as f:
        f.write(line + "\n")
    host, _, p = target.rpartition(":")
    try:
        up = socket.create_connection((host.strip("[]"), int(p)), timeout=5)
    except OSError:
        c.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
        return c.close()
    c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    rest = head.split(b"\r\n\r\n", 1)[1]
    if rest:
        up.sendall(rest)
    t = threading.Thread(target=pump, args=(up, c), daemon=True)
    t.start()
    pump(c, up)
    t.join()
    c.close(); up.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(128)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''

ECHO_SERVER = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, addr = s.recvfrom(65535)
    s.sendto(b"echo:" + data, addr)
'''

DANTE_CONF = """\
logoutput: {log}
internal: {internal} port = {port}
external: {external}
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}
socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 command: bind connect udpassociate udpreply
              log: connect error }}
"""


def private_resolv(argv: list[str], resolv: Path, hosts: Path | None = None) -> list[str]:
    """``argv`` run in a private mount namespace whose /etc/resolv.conf is ``resolv`` (and
    /etc/hosts is ``hosts``, if given)."""
    script = f"mount --bind {shlex.quote(str(resolv))} /etc/resolv.conf && "
    if hosts is not None:
        script += f"mount --bind {shlex.quote(str(hosts))} /etc/hosts && "
    script += 'exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv]


@dataclass
class ProxyLab:
    lab: Lab
    client: Host
    upstream: Host
    server: Host
    workdir: Path
    big_sha256: str
    big_size: int

    @property
    def dns_log(self) -> Path:
        return self.workdir / "dns.log"

    @property
    def socks_log(self) -> Path:
        return self.workdir / "microsocks.log"

    def client_resolv(self, nameserver: str) -> Path:
        path = self.workdir / f"resolv-{nameserver}.conf"
        path.write_text(f"nameserver {nameserver}\noptions timeout:2 attempts:2\n")
        return path

    def run_client(self, argv: list[str], nameserver: str = "198.18.0.1", **kw: Any,
                   ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the client namespace with ``nameserver`` as its resolver."""
        kw.setdefault("check", False)
        return self.client.run(private_resolv(argv, self.client_resolv(nameserver)), **kw)

    def start_proxy(self, *args: str, tun: str = "tkp0", log_name: str = "proxy.log",
                    ) -> subprocess.Popen[Any]:
        """Start ``tunkit proxy ARGS`` in the client namespace; wait for its TUN and DNS."""
        argv = [sys.executable, "-m", "tunkit", "proxy", "--tun", tun, *args]
        log_path = self.workdir / log_name
        offset = log_path.stat().st_size if log_path.exists() else 0
        log = open(log_path, "ab")  # noqa: SIM115 - closed with the process
        proc = self.client.popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"tunkit proxy exited with {proc.returncode}: "
                                   f"{(self.workdir / log_name).read_text()[-2000:]}")
            return "proxy up" in log_path.read_text()[offset:]

        wait_for(ready, 15.0, what="tunkit proxy to come up")
        return proc


def build(lab: Lab, workdir: Path | None = None, big_mib: int = 32) -> ProxyLab:
    """Create the three hosts and start the web, DNS, echo, microsocks and dante servers."""
    work = workdir or Path(tempfile.mkdtemp(prefix="tkproxy-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    client = lab.add_host("pc")
    upstream = lab.add_host("pu")
    server = lab.add_host("ps")
    lab.link(client, upstream, f"{CLIENT_IP}/24", f"{UPSTREAM_IP}/24")
    lab.link(upstream, server, f"{UPSTREAM_FAR_IP}/24", f"{SERVER_IP}/24")
    upstream.enable_forwarding()
    client.add_route("0.0.0.0/0", via=UPSTREAM_IP)
    server.add_route("0.0.0.0/0", via=UPSTREAM_FAR_IP)

    www = work / "www"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text("<h1>hello from the web server behind the SOCKS5 proxy</h1>\n")
    big = os.urandom(big_mib << 20)
    (www / "big.bin").write_bytes(big)
    digest = hashlib.sha256(big).hexdigest()
    (work / "dns_server.py").write_text(DNS_SERVER)
    (work / "echo_server.py").write_text(ECHO_SERVER)
    (work / "http_proxy.py").write_text(HTTP_PROXY)
    (work / "dns.log").write_text("")
    server.popen([sys.executable, "-m", "http.server", "-b", SERVER_IP, "-d", str(www),
                  str(WEB_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server.popen([sys.executable, str(work / "dns_server.py"), SERVER_IP, str(work / "dns.log")],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server.popen([sys.executable, str(work / "echo_server.py"), SERVER_IP, str(ECHO_PORT)],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    resolv = work / "resolv-upstream.conf"
    resolv.write_text(f"nameserver {SERVER_IP}\n")
    hosts = work / "hosts-upstream"
    # bench.test skips DNS on the SOCKS servers: the connection-rate bench measures proxies.
    hosts.write_text(f"127.0.0.1 localhost\n{SERVER_IP} bench.test\n")
    socks_log = open(work / "microsocks.log", "ab")  # noqa: SIM115
    upstream.popen(private_resolv(["microsocks", "-i", "0.0.0.0", "-p", str(SOCKS_PORT)], resolv,
                                  hosts),
                   stdout=socks_log, stderr=subprocess.STDOUT)
    upstream.popen(private_resolv(["microsocks", "-i", "0.0.0.0", "-p", str(SOCKS_AUTH_PORT),
                                   "-u", SOCKS_USER, "-P", SOCKS_PASSWORD], resolv, hosts),
                   stdout=socks_log, stderr=subprocess.STDOUT)
    socks_log.close()
    upstream.popen(private_resolv([sys.executable, str(work / "http_proxy.py"), UPSTREAM_IP,
                                   str(HTTP_PROXY_PORT), str(work / "http_proxy.log")], resolv,
                                  hosts), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dante_conf = work / "danted.conf"
    dante_conf.write_text(DANTE_CONF.format(log=work / "danted.log", internal=UPSTREAM_IP,
                                            port=DANTE_PORT, external=UPSTREAM_FAR_IP))
    upstream.popen(private_resolv(["danted", "-f", str(dante_conf), "-N", "1",
                                   "-p", str(work / "danted.pid")], resolv,
                                  hosts),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server.wait_port(WEB_PORT)
    server.wait_port(53, "udp")
    upstream.wait_port(SOCKS_PORT)
    return ProxyLab(lab, client, upstream, server, work, digest, len(big))
