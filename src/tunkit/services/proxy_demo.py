"""The proxy section of ``tunkit demo``: fake-IP DNS and curl through the TUN to SOCKS5.

Builds the :mod:`tunkit.services.proxy_lab` topology (client, upstream with microsocks, server
with a web and a DNS server), starts ``tunkit proxy`` in the client namespace, shows ``dig``
returning a fake IP, ``curl http://some-name.test/`` arriving through the TUN at microsocks
*by name*, a hashed download, a rejected name failing fast, and ``tunkit proxy status``.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time

from tunkit.demo import Tour, register_section, stop
from tunkit.errors import TunkitError


def section_proxy(t: Tour) -> None:
    from tunkit.services import proxy_lab as pl

    for tool in ("microsocks", "curl", "dig"):
        if shutil.which(tool) is None:
            raise TunkitError(f"{tool} is not installed (scripts/setup.sh installs it)")
    lab = pl.build(t.lab, big_mib=16)
    t.say(f"lab: client {pl.CLIENT_IP} -> upstream {pl.UPSTREAM_IP} (microsocks :1080) -> "
          f"server {pl.SERVER_IP} (web :80, DNS :53)")
    rules = lab.workdir / "rules.txt"
    rules.write_text("domain-keyword ads reject\nfinal default\n")
    tun = t.ifname("tkp")
    argv = ["--upstream", f"socks5://{pl.UPSTREAM_IP}:{pl.SOCKS_PORT}", "--dns-upstream",
            pl.SERVER_IP, "--rules", str(rules), "--state", str(lab.workdir / "fakeip.sqlite")]
    t.cmd("client", f"tunkit proxy --tun {tun} {' '.join(argv)}")
    proc = lab.start_proxy(*argv, tun=tun)
    try:
        t.cmd("client", "dig +short @198.18.0.1 some-name.test")
        out = lab.client.run(["dig", "+short", "@198.18.0.1", "some-name.test"], check=False)
        fake = out.stdout.strip()
        t.say(f"  {fake}    (a fake IP from 198.18.0.0/16; the real one is {pl.SERVER_IP})")
        if not fake.startswith("198.18."):
            raise TunkitError(f"dig did not return a fake IP: {out.stdout!r} {out.stderr!r}")
        t.cmd("client", "curl http://some-name.test/")
        got = lab.run_client(["curl", "-sS", "-m", "10", "http://some-name.test/"])
        t.say(f"  {got.stdout.strip()}")
        if got.returncode != 0:
            raise TunkitError(f"curl failed: {got.stderr.strip()}")
        seen = [ln for ln in lab.socks_log.read_text().splitlines() if "some-name.test" in ln]
        t.say(f"  microsocks log: {seen[-1] if seen else '(nothing)'}")
        if not seen:
            raise TunkitError("microsocks did not see a CONNECT by domain name")
        t.cmd("client", "curl -o - http://big.test/big.bin | sha256sum")
        started = time.monotonic()
        big = lab.run_client(["curl", "-sS", "-m", "30", "http://big.test/big.bin"],
                             text=False, timeout=60)
        took = time.monotonic() - started
        body: bytes = big.stdout  # type: ignore[assignment]  # run with text=False
        ok = hashlib.sha256(body).hexdigest() == lab.big_sha256
        t.say(f"  {len(body) >> 20} MiB in {took:.2f}s "
              f"({len(body) * 8 / took / 1e9:.2f} Gbit/s incl. curl start), sha256 "
              f"{'matches' if ok else 'DIFFERS'}")
        if not ok:
            raise TunkitError("the download through the proxy was corrupted")
        t.cmd("client", "curl http://ads.example.test/    (rule: domain-keyword ads reject)")
        started = time.monotonic()
        rej = lab.run_client(["curl", "-sS", "-m", "5", "http://ads.example.test/"])
        t.say(f"  exit {rej.returncode} after {time.monotonic() - started:.2f}s: "
              f"{rej.stderr.strip()}")
        t.cmd("client", "tunkit proxy status")
        status = lab.client.run([sys.executable, "-m", "tunkit", "proxy", "status"], check=False)
        for line in status.stdout.splitlines()[:6]:
            t.say(f"  {line}")
    finally:
        stop(proc)
        shutil.rmtree(lab.workdir, ignore_errors=True)


register_section("tun2socks proxy: fake-IP DNS + SOCKS5", section_proxy)
