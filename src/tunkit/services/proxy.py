"""``tunkit proxy``: the tun2socks transparent proxy, wired from its parts.

Contract: :class:`ProxyService` owns every resource of one running proxy, in its network
namespace: the TUN (address = first host of ``--prefix``, vnet_hdr with TSO so one rewrite
covers a 64 KiB super-packet), the TCP listener on the TUN address, the fake-IP DNS server,
the UDP relay, the status endpoint, and with ``--auto-route`` the routing table, policy rules,
nft table and bypass cgroup.  :meth:`start` brings everything up (first undoing what a
crashed predecessor left); :meth:`stop` removes everything it added and is idempotent.
:meth:`run` blocks until :meth:`request_stop` (signal handlers call it).

Threads: one reactor thread does the per-connection work: it serves TUN queue 0 (the NAT
loop), accepts, dials upstreams without blocking and relays every connection's bytes (copy,
then splice for bulk).  One thread means no GIL hand-over between NAT and relay for every
packet.  Each further TUN queue (``--queues``, default 1) gets a NAT thread of its own.  A pool
of reused threads serves what must block (uncached name lookups, DNS over TCP); then the DNS
server's loops and forwarding pool, one UDP worker, the status server.  Shared cores are
guarded by ``state.lock`` (see :mod:`tunkit.services.proxy_state`).
"""

from __future__ import annotations

import functools
import gc
import logging
import sys
import threading
from typing import Any

from tunkit.errors import DeviceError
from tunkit.io.netlink import Netlink
from tunkit.io.tun import open_tun
from tunkit.services.proxy_dial import Dialer
from tunkit.services.proxy_dns import DnsServer
from tunkit.services.proxy_relay import TcpRelayServer
from tunkit.services.proxy_route import HostChanges
from tunkit.services.proxy_sockets import OutboundSockets
from tunkit.services.proxy_state import ProxyConfig, ProxyState
from tunkit.services.proxy_status import StatusServer
from tunkit.services.proxy_tun import TunNatLoop
from tunkit.services.proxy_udp import UdpRelay

log = logging.getLogger("tunkit.proxy")


class ProxyService:
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.state = ProxyState(config)
        self.sockets = OutboundSockets(self.state.mark, config.interface)
        self.changes = HostChanges(config.tun)
        self.tun: Any = None
        self.dns: DnsServer | None = None
        self.udp: UdpRelay | None = None
        self.relay: TcpRelayServer | None = None
        self.status: StatusServer | None = None
        self.loop: TunNatLoop | None = None
        self._loop_threads: list[threading.Thread] = []
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        threading.stack_size(512 * 1024)
        # One busy reactor thread and helpers (DNS, UDP, status, extra TUN queues): hand the
        # GIL over more often than every 5 ms, or each of them waits that long.
        sys.setswitchinterval(0.0005)
        # Every connection allocates a few dozen tracked objects and keeps a NAT mapping for
        # its grace period: collect the young generation less often, and keep the objects
        # of start-up (modules, DNS library) out of the full collections.
        gc.set_threshold(10_000, 20, 20)
        self.changes.clean_stale()
        self.changes.start()
        try:
            self._start()
            gc.freeze()
        except OSError as err:
            self.stop()
            raise DeviceError(f"proxy start failed: {err}") from None
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        config, state = self.config, self.state
        self.tun = open_tun(config.tun, vnet_hdr=True, queues=config.queues)
        if not self.tun.created:
            raise DeviceError(f"device {config.tun} already exists; choose another --tun")
        with Netlink() as netlink:
            netlink.set_mtu(self.tun.name, config.mtu)
            netlink.add_address(self.tun.name, f"{state.tun_ip4}/{state.prefix4.prefixlen}")
            if state.tun_ip6 is not None and state.prefix6 is not None:
                netlink.add_address(self.tun.name, f"{state.tun_ip6}/{state.prefix6.prefixlen}",
                                    nodad=True)
            netlink.set_up(self.tun.name)
        dns_listen = config.dns_listen or [(str(state.tun_ip4), 53)]
        self.dns = DnsServer(state, self.sockets, dns_listen, config.dns_upstream)
        self.dns.start()
        self.relay = TcpRelayServer(state, Dialer(self.sockets, self.dns), self.dns)
        self.relay.bind()
        self.loop = TunNatLoop(state, self.tun, udp_sink=None, dns_sink=self.dns.submit)
        self.udp = UdpRelay(state, self.sockets, self.dns, self.loop.write_packet)
        self.loop.udp_sink = self.udp.submit
        self.udp.start()
        self.relay.decisions = self.loop.take_decision
        self.relay.start()
        # queue 0 on the reactor thread; any further queue on a thread of its own
        reactor = self.relay.splice
        reactor.call_soon(functools.partial(self.loop.attach, reactor, 0))
        for queue in range(1, self.tun.queues):
            thread = threading.Thread(target=self.loop.run, args=(queue,), daemon=True,
                                      name=f"proxy-tun{queue}")
            thread.start()
            self._loop_threads.append(thread)
        if config.auto_route:
            assert state.mark is not None
            dns_mark = state.mark + 1
            with Netlink() as netlink:
                self.changes.install_auto_route(netlink, table=config.table, mark=state.mark,
                                                dns_mark=dns_mark, v6=state.tun_ip6 is not None)
            self.changes.install_nft(
                mark=state.mark, dns_mark=dns_mark, tun_prefix=str(state.prefix4),
                bypass_cgroup=config.bypass_cgroup,
                tun_prefix6=str(state.prefix6) if state.prefix6 is not None else None)
        if config.status_listen is not None:
            self.status = StatusServer(state, config.status_listen, self._extra_status)
            self.status.start()
        log.info("proxy up: TUN %s %s, listener %s:%d, DNS %s, upstream %s", self.tun.name,
                 state.prefix4, state.tun_ip4, state.listen_port,
                 ", ".join(f"{h}:{p}" for h, p in dns_listen), config.upstream)

    def _extra_status(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.udp is not None:
            extra["udp"] = self.udp.stats()
        return extra

    def request_stop(self) -> None:
        self.state.stopping.set()

    def run(self) -> None:
        self.start()
        try:
            self.state.stopping.wait()
        finally:
            self.stop()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.state.stopping.set()
        for part in (self.status, self.relay, self.dns, self.udp):
            if part is not None:
                try:
                    part.close()
                except Exception as err:  # keep tearing down whatever happens
                    log.warning("stopping %s: %s", type(part).__name__, err)
        for thread in self._loop_threads:
            thread.join(timeout=2)
        try:
            self.changes.remove()
        except Exception as err:
            log.warning("cleanup failed: %s", err)
        if self.tun is not None:
            self.tun.close()
        self.state.close()
