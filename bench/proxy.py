"""Benchmark ``tunkit proxy`` against curl direct and curl through microsocks, in one lab run.

Topology: :mod:`tunkit.services.proxy_lab` plus a sendfile HTTP server on the server host
(port 8080), so the web server is not the bottleneck.  Measured:

* a large download with curl: direct (no proxy), through microsocks with
  ``curl --socks5-hostname`` (no TUN), and through ``tunkit proxy`` to the same microsocks
  (fake-IP DNS, TUN NAT, SOCKS5 by name); best of ``--repeat`` runs, Gbit/s;
* the same two figures through ``tunkit proxy --upstream direct`` (``tunkit-direct``): the
  TUN NAT and relay alone, without a SOCKS server in the path;
* new connections per second for short requests (``Connection: close``), from ``--workers``
  client processes for ``--seconds``: direct, via microsocks (the client speaks SOCKS5
  itself), and through tunkit (plain connects to the fake IP).  For tunkit also the CPU time
  (utime + stime) of its process per connection, which a shared machine's load disturbs far
  less than the rate, and the rate as a fraction of the direct rate.

Prints each figure with its ratio to microsocks and writes ``bench/results/proxy.json``.
Needs root, microsocks, curl and dig.  Usage: ``python bench/proxy.py [--mib 512]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, print_ratio_table, write_results

from tunkit.lab import Lab
from tunkit.services import proxy_lab as pl

FAST_PORT = 8080

FAST_WEB = r'''
import os, socket, sys, threading
addr, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
size = os.path.getsize(path)
def serve(c):
    try:
        req = b""
        while b"\r\n\r\n" not in req:
            d = c.recv(4096)
            if not d:
                return
            req += d
        if req.split(b" ", 2)[1] == b"/big.bin":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
            with open(path, "rb") as f:
                c.sendfile(f)
        else:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(4096)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''

LOADGEN = r'''
import os, socket, sys, time
mode, host, port, seconds, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
socks = sys.argv[6] if len(sys.argv) > 6 else ""
REQ = b"GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
def one():
    if mode == "socks":
        sh, sp = socks.split(":")
        c = socket.create_connection((sh, int(sp)))
        c.sendall(b"\x05\x01\x00")
        assert c.recv(2) == b"\x05\x00"
        name = host.encode()
        c.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big"))
        r = c.recv(10)
        assert r[1] == 0, r
    else:
        c = socket.create_connection((host, port))
    c.sendall(REQ)
    data = b""
    while True:
        d = c.recv(4096)
        if not d:
            break
        data += d
    c.close()
    assert data.endswith(b"ok\n"), data
pids = []
r, w = os.pipe()
for _ in range(workers):
    pid = os.fork()
    if pid == 0:
        n, errors = 0, 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                one()
                n += 1
            except Exception:
                errors += 1
        os.write(w, f"{n} {errors}\n".encode())
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
os.close(w)
total = errors = 0
for line in os.read(r, 65536).decode().split("\n"):
    if line:
        a, b = line.split()
        total += int(a)
        errors += int(b)
print(total / seconds, errors)
'''


def download_gbps(run, argv: list[str], size: int, repeat: int) -> float:
    best = 0.0
    for _ in range(repeat):
        started = time.monotonic()
        r = run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", *argv])
        took = time.monotonic() - started
        if r.returncode != 0 or int(float(r.stdout.strip() or 0)) != size:
            raise RuntimeError(f"download failed: {r.stderr.strip()} ({r.stdout.strip()})")
        best = max(best, size * 8 / took / 1e9)
    return best


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def conn_rate(run, argv: list[str]) -> float:
    r = run([sys.executable, *argv])
    if r.returncode != 0:
        raise RuntimeError(f"load generator failed: {r.stderr.strip()[-300:]}")
    rate, errors = r.stdout.split()
    if int(errors):
        print(f"  ({errors} failed connections)", file=sys.stderr)
    return float(rate)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=512, help="size of the large download")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="connection-rate duration")
    ap.add_argument("--workers", type=int, default=4, help="connection-rate client processes")
    opts = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, Lab("tkbp") as lab:
        work = Path(tmp)
        work.chmod(0o755)
        plab = pl.build(lab, work / "lab", big_mib=1)
        big = work / "big.bin"
        with open(big, "wb") as f:
            f.truncate(opts.mib << 20)  # sparse: the page cache serves zeros at memory speed
        size = opts.mib << 20
        (work / "fast_web.py").write_text(FAST_WEB)
        (work / "loadgen.py").write_text(LOADGEN)
        big.chmod(0o644)
        plab.server.popen([sys.executable, str(work / "fast_web.py"), pl.SERVER_IP,
                           str(FAST_PORT), str(big)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        plab.server.wait_port(FAST_PORT)

        def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
            return plab.run_client(argv, nameserver="198.18.0.1", timeout=300)

        socks = f"{pl.UPSTREAM_IP}:{pl.SOCKS_PORT}"
        url_ip = f"http://{pl.SERVER_IP}:{FAST_PORT}/big.bin"
        url_name = f"http://bench.test:{FAST_PORT}/big.bin"
        print(f"large download: {opts.mib} MiB, best of {opts.repeat}", flush=True)
        results["direct"] = {"download_gbps": download_gbps(run, [url_ip], size, opts.repeat)}
        results["microsocks"] = {"download_gbps": download_gbps(
            run, ["--socks5-hostname", socks, url_name], size, opts.repeat)}
        loadgen = str(work / "loadgen.py")
        common = [str(opts.seconds), str(opts.workers)]
        print(f"connection rate: {opts.workers} workers, {opts.seconds:g} s", flush=True)
        results["direct"]["conn_per_s"] = conn_rate(
            run, [loadgen, "plain", pl.SERVER_IP, str(FAST_PORT), *common])
        results["microsocks"]["conn_per_s"] = conn_rate(
            run, [loadgen, "socks", "bench.test", str(FAST_PORT), *common, socks])

        # "tunkit": through the TUN to the same microsocks.  "tunkit-direct": the same TUN
        # path with a direct upstream, i.e. the proxy's own ceiling without the SOCKS server.
        for name, upstream in (("tunkit", f"socks5://{socks}"), ("tunkit-direct", "direct")):
            print(f"{name}: tunkit proxy --upstream {upstream}", flush=True)
            proc = plab.start_proxy("--upstream", upstream, "--dns-upstream", pl.SERVER_IP,
                                    "--state", str(work / "fakeip.sqlite"),
                                    "--status-listen", "none")
            try:
                fake = plab.client.run(["dig", "+short", "@198.18.0.1", "bench.test"]
                                       ).stdout.strip()
                results[name] = {"download_gbps": download_gbps(run, [url_name], size,
                                                                opts.repeat)}
                cpu_before = cpu_seconds(proc.pid)
                rate = conn_rate(run, [loadgen, "plain", fake, str(FAST_PORT), *common])
                used = cpu_seconds(proc.pid) - cpu_before
                results[name]["conn_per_s"] = rate
                # load-insensitive: CPU time of the tunkit process per proxied connection
                results[name]["cpu_ms_per_conn"] = used / max(1.0, rate * opts.seconds) * 1e3
                results[name]["conn_vs_direct"] = rate / results["direct"]["conn_per_s"]
            finally:
                proc.terminate()
                proc.wait(10)
    rows = [(name, values) for name, values in results.items()]
    print_ratio_table(rows, "microsocks", ["download_gbps", "conn_per_s"])
    ratio = results["tunkit"]["download_gbps"] / results["microsocks"]["download_gbps"]
    print(f"tunkit / microsocks download: {ratio:.0%} (target >= 50%); "
          f"tunkit connections/s: {results['tunkit']['conn_per_s']:.0f} (target >= 1000)")
    for name in ("tunkit", "tunkit-direct"):
        r = results[name]
        print(f"{name}: {r['cpu_ms_per_conn']:.2f} ms CPU per connection in the tunkit process, "
              f"{r['conn_vs_direct']:.0%} of the direct connection rate")
    path = write_results("proxy", {"machine": machine_info(), "mib": opts.mib,
                                   "results": results, "tunkit_vs_microsocks": ratio})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
