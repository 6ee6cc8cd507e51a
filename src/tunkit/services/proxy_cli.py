"""``tunkit proxy``: command line of the tun2socks transparent proxy.

Contract: :func:`add_proxy_parser` registers ``tunkit proxy [options]`` (run the proxy until
SIGTERM/SIGINT, then remove everything it added), ``tunkit proxy status`` (query a running
proxy's status endpoint) and ``tunkit proxy exec --bypass -- CMD`` (run CMD outside the
capture).  User errors raise :class:`tunkit.errors.TunkitError` subclasses (one line).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType
from typing import Any

from tunkit.errors import ConfigError

DESCRIPTION = """\
Transparent proxy on a TUN (tun2socks with the kernel's own TCP stack).

Traffic routed into the TUN (the fake-IP prefix, or everything with --auto-route) is
rewritten to a local listener; each connection goes to its upstream: a SOCKS5 server (by
domain name for fake IPs), an HTTP CONNECT proxy, direct, or is rejected, as the rules say.
The built-in DNS server answers A (and AAAA with --prefix6) queries with fake IPs from the
prefix; other queries, and --filter-domain names, are forwarded to --dns-upstream.

rules file (--rules): one statement a line, first match wins, e.g.
  upstream corp socks5://user:pass@10.1.0.2:1080
  domain-suffix example.com corp
  domain-keyword ads reject
  cidr 10.0.0.0/8 direct
  port 22 direct
  proto udp direct
  final default            # default: the --upstream
"""


def _hostport(default_port: int) -> Any:
    from tunkit.services.proxy_state import parse_hostport

    def parse(text: str) -> tuple[str, int]:
        try:
            return parse_hostport(text, default_port)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _status_address(text: str) -> tuple[str, int] | None:
    if text.lower() in ("", "none", "off"):
        return None
    result: tuple[str, int] = _hostport(7475)(text)
    return result


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def add_proxy_parser(sub: Any) -> None:
    from tunkit.services.proxy_state import DEFAULT_PREFIX, DEFAULT_STATUS, DEFAULT_TUN

    p = sub.add_parser("proxy", help="transparent tun2socks proxy with fake-IP DNS (needs root)",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", choices=["run", "status", "exec"], default="run",
                   help="run (default), status of a running proxy, exec --bypass -- CMD")
    p.add_argument("--upstream", metavar="URL",
                   help="socks5://[user:pass@]host:port, http://host:port, direct or reject")
    p.add_argument("--tun", default=DEFAULT_TUN, metavar="NAME",
                   help=f"TUN device to create (default {DEFAULT_TUN})")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, metavar="CIDR",
                   help=f"IPv4 fake-IP + NAT prefix (default {DEFAULT_PREFIX})")
    p.add_argument("--prefix6", metavar="CIDR", help="IPv6 prefix, e.g. fc00:18::/64 (AAAA)")
    p.add_argument("--dns-listen", action="append", type=_hostport(53), metavar="ADDR",
                   help="DNS server address[:port] (default: the TUN address, port 53)")
    p.add_argument("--dns-upstream", type=_hostport(53), metavar="ADDR",
                   help="resolver for forwarded queries and direct flows to fake IPs")
    p.add_argument("--filter-domain", action="append", default=[], metavar="SUFFIX",
                   help="domains answered with real addresses (repeatable)")
    p.add_argument("--rules", metavar="FILE", help="rules file (see above)")
    p.add_argument("--auto-route", action="store_true",
                   help="capture the namespace's default route (table + policy rules)")
    p.add_argument("--table", type=_int, default=7475, help="routing table for --auto-route")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--fwmark", type=_int, metavar="N", help="SO_MARK of our own sockets")
    out.add_argument("--interface", metavar="IFACE", help="bind our own sockets to IFACE")
    p.add_argument("--state", metavar="FILE.sqlite",
                   help="persist the fake-IP pool here (default /run/tunkit/proxy-NETNS-TUN.sqlite)")
    p.add_argument("--status-listen", default=DEFAULT_STATUS, metavar="ADDR",
                   help=f"HTTP status endpoint (default {DEFAULT_STATUS}; 'none' disables)")
    p.add_argument("--mtu", type=int, default=9000, help="TUN MTU (default 9000)")
    p.add_argument("--queues", type=int, default=1,
                   help="TUN queues (default 1, served on the relay thread; each further "
                        "queue gets a NAT thread)")
    p.add_argument("--udp-timeout", type=float, default=60.0, help="UDP session idle timeout")
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.add_argument("--bypass", action="store_true", help="exec: run outside the capture")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=run_proxy_command)


def run_proxy_command(args: argparse.Namespace) -> int:
    if args.action == "status":
        from tunkit.services.proxy_status import fetch_status

        # Options after "status" land in the exec remainder; parse them here.
        late = argparse.ArgumentParser(prog="tunkit proxy status", add_help=False)
        late.add_argument("--json", action="store_true")
        late.add_argument("--status-listen")
        extra, unknown = late.parse_known_args(args.command)
        if unknown:
            raise ConfigError(f"unexpected arguments: {' '.join(unknown)}")
        args.json = args.json or extra.json
        args.status_listen = extra.status_listen or args.status_listen

        address = _status_address(args.status_listen)
        if address is None:
            raise ConfigError("proxy status needs a --status-listen address")
        sys.stdout.write(fetch_status(address, as_json=args.json))
        if args.json:
            sys.stdout.write("\n")
        return 0
    if args.action == "exec":
        from tunkit.services.proxy_route import exec_bypassed

        rest = list(args.command)
        head, argv = (rest[: rest.index("--")], rest[rest.index("--") + 1 :]) if "--" in rest \
            else ([], rest)
        late = argparse.ArgumentParser(prog="tunkit proxy exec", add_help=False)
        late.add_argument("--bypass", action="store_true")
        late.add_argument("--tun")
        extra, unknown = late.parse_known_args(head)
        if unknown:
            raise ConfigError(f"unexpected arguments: {' '.join(unknown)}")
        if not (args.bypass or extra.bypass):
            raise ConfigError("proxy exec needs --bypass (run CMD outside the capture)")
        exec_bypassed(extra.tun or args.tun, argv)
        return 1
    if args.command:
        raise ConfigError(f"unexpected arguments: {' '.join(args.command)}")
    return run_proxy(args)


def build_config(args: argparse.Namespace) -> Any:
    from tunkit.proxy.rules import parse_upstream_url
    from tunkit.services.proxy_state import ProxyConfig, netns_id

    if not args.upstream:
        raise ConfigError("--upstream is required (socks5://host:port, http://host:port, direct)")
    try:
        status = _status_address(args.status_listen)
    except argparse.ArgumentTypeError as err:
        raise ConfigError(str(err)) from None
    return ProxyConfig(
        upstream=parse_upstream_url(args.upstream),
        tun=args.tun,
        prefix=args.prefix,
        prefix6=args.prefix6,
        dns_listen=list(args.dns_listen or []),
        dns_upstream=args.dns_upstream,
        rules_file=args.rules,
        auto_route=args.auto_route,
        fwmark=args.fwmark,
        interface=args.interface,
        state_file=args.state or f"/run/tunkit/proxy-{netns_id()}-{args.tun}.sqlite",
        status_listen=status,
        table=args.table,
        filter_domains=tuple(args.filter_domain),
        udp_timeout=args.udp_timeout,
        mtu=args.mtu,
        queues=args.queues,
    )


def run_proxy(args: argparse.Namespace) -> int:
    from tunkit.cli import require_root
    from tunkit.services.proxy import ProxyService

    config = build_config(args)
    require_root("tunkit proxy")
    level = logging.WARNING - 10 * min(args.verbose, 2) + 10
    logging.basicConfig(level=min(level, logging.INFO) if args.verbose else logging.INFO,
                        format="tunkit proxy: %(message)s", stream=sys.stderr)
    if args.verbose >= 2:
        logging.getLogger().setLevel(logging.DEBUG)
    service = ProxyService(config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        service.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    service.run()
    return 0
