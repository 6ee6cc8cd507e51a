"""``tunkit p2p``: the command line of the point-to-point tunnel (and ``p2p gen-certs DIR``).

Contract: :func:`add_p2p_parser` adds the ``p2p`` subcommand (setting ``func=run_p2p``);
:func:`run_p2p` opens or creates the device, runs :class:`tunkit.services.p2p.P2PService`
until SIGTERM/SIGINT, then removes what it created (a device it only attached to stays).
User errors raise :class:`tunkit.errors.TunkitError` subclasses (one line, non-zero exit).
``python -m tunkit.services.p2p_cli ARGS`` runs the same thing without the top-level CLI.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from tunkit.errors import ConfigError, TunkitError
from tunkit.p2p.negotiation import Mode

# 1500-byte underlay minus IPv6 (40) + UDP (8) headers: tunnelled packets never fragment and
# UDP GSO can be used (it refuses segments larger than the path MTU).
UDP_DEFAULT_MTU = 1452

DESCRIPTION = """\
Point-to-point tunnel between two TUN (or TAP) devices, wire-compatible with simpletun.

modes:
  compat  exactly simpletun's framing (2-byte length + packet, no hello): works against a
          stock simpletun peer on either end.
  fast    tunkit on both ends: 64 KiB TSO super-packets, batched I/O.
  auto    (default) the client offers fast mode with a probe that a simpletun peer accepts as
          an ordinary, harmless packet; both fall back to compat if the peer does not answer.
--tls     TLS 1.3 with mutual certificate authentication (fast framing inside).
--udp     one UDP datagram per packet (UDP GSO/GRO batching; a created device gets MTU 1452
          unless --mtu says otherwise).  PLAINTEXT and unauthenticated: use it only on a
          network you trust, like flannel's UDP backend.

`tunkit p2p gen-certs DIR` writes a test CA plus server and client certificates for --tls.
"""


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["gen-certs"], help=argparse.SUPPRESS)
    p.add_argument("directory", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("-i", dest="ifname", metavar="NAME", help="TUN/TAP device to use")
    role = p.add_mutually_exclusive_group()
    role.add_argument("-s", dest="server", action="store_true", help="run as server")
    role.add_argument("-c", dest="host", metavar="HOST", help="run as client of HOST")
    p.add_argument("-p", dest="port", type=int, default=55555, help="port (default 55555)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("-u", dest="tap", action="store_false", help="TUN device (default)")
    kind.add_argument("-a", dest="tap", action="store_true", help="TAP device")
    p.add_argument("-d", dest="debug", action="store_true", help="per-packet debug lines")
    p.add_argument("--create", action="store_true", help="create the device if missing")
    p.add_argument("--address", metavar="CIDR", help="with --create: address for the device")
    p.add_argument("--mtu", type=int, help="with --create: device MTU")
    p.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.AUTO.value,
                   help="framing: compat, fast or auto (default auto)")
    p.add_argument("--tls", action="store_true", help="TLS 1.3, mutual certificate auth")
    p.add_argument("--cert", metavar="FILE", help="our certificate (PEM)")
    p.add_argument("--key", metavar="FILE", help="our private key (PEM)")
    p.add_argument("--ca", metavar="FILE", help="CA that signed the peer's certificate")
    p.add_argument("--udp", action="store_true", help="UDP transport (plaintext!)")
    p.add_argument("--bind", default="", metavar="ADDR", help="server: listen address")
    p.add_argument("--stats-interval", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between counter lines (0: off)")
    p.set_defaults(func=run_p2p, tap=False)


def add_p2p_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``p2p`` to the top-level CLI's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "p2p", help="simpletun-compatible point-to-point tunnel (compat/fast/TLS/UDP)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s -i NAME (-s | -c HOST) [-p PORT] [-u | -a] [-d] [--create --address CIDR"
              " [--mtu N]] [--mode compat|fast|auto] [--tls --cert F --key F --ca F] [--udp]\n"
              "       %(prog)s gen-certs DIR",
    )
    _add_arguments(p)
    return p


def _validate(args: argparse.Namespace) -> None:
    if not args.ifname:
        raise ConfigError("p2p needs a device: -i NAME")
    if not args.server and not args.host:
        raise ConfigError("p2p needs -s (server) or -c HOST (client)")
    if not 0 < args.port < 65536 and not (args.server and args.port == 0):
        raise ConfigError(f"invalid port: {args.port}")
    if (args.address or args.mtu) and not args.create:
        raise ConfigError("--address and --mtu need --create")
    if args.mtu is not None and not 68 <= args.mtu <= 65535:
        raise ConfigError(f"invalid MTU: {args.mtu} (68..65535)")
    if args.tls and args.udp:
        raise ConfigError("--tls and --udp cannot be combined (UDP mode is plaintext)")
    if args.tls and not (args.cert and args.key and args.ca):
        raise ConfigError("--tls needs --cert FILE --key FILE --ca FILE")
    if not args.tls and (args.cert or args.key or args.ca):
        raise ConfigError("--cert/--key/--ca only make sense with --tls")
    if args.tls and args.mode == "compat":
        raise ConfigError("--tls always uses fast framing; drop --mode compat")


def _setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s p2p: %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("tunkit.p2p")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False


def run_p2p(args: argparse.Namespace) -> int:
    """Run ``tunkit p2p`` with parsed ``args``; returns the exit status."""
    if args.action == "gen-certs":
        from tunkit.services.certs import generate_certs

        if not args.directory:
            raise ConfigError("gen-certs needs a directory: tunkit p2p gen-certs DIR")
        paths = generate_certs(args.directory)
        for name, path in paths.items():
            print(f"{name}: {path}")
        return 0
    _validate(args)
    _setup_logging(args.debug)

    from tunkit.io.netlink import Netlink
    from tunkit.io.tun import open_tun
    from tunkit.services.p2p import P2PConfig, P2PService, TlsFiles

    log = logging.getLogger("tunkit.p2p")
    device = open_tun(args.ifname, tap=args.tap, vnet_hdr=True, offloads=0,
                      attach=not args.create)
    service: P2PService | None = None
    previous: dict[int, Any] = {}
    try:
        with Netlink() as link:
            if args.create and device.created:
                mtu_wanted = args.mtu
                if mtu_wanted is None and args.udp:
                    mtu_wanted = UDP_DEFAULT_MTU
                if mtu_wanted:
                    link.set_mtu(device.name, mtu_wanted)
                if args.address:
                    link.add_address(device.name, args.address)
                link.set_up(device.name)
            mtu = link.get_mtu(device.name)
        log.info("%s %s device %s (mtu %d)", "created" if device.created else "attached to",
                 "TAP" if args.tap else "TUN", device.name, mtu)
        config = P2PConfig(
            server=args.server, host=args.host, port=args.port, tap=args.tap, debug=args.debug,
            mode=Mode(args.mode), udp=args.udp, mtu=mtu, stats_interval=args.stats_interval,
            bind=args.bind,
            tls=TlsFiles(args.cert, args.key, args.ca) if args.tls else None,
        )
        service = P2PService(config, device, set_offloads=device.set_offloads)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("got %s, shutting down", signal.Signals(signum).name)
            assert service is not None
            service.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
        service.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        created = device.created
        device.close()  # a device we created (never persistent) disappears with its fd
        if created:
            log.info("removed device %s", device.name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunkit p2p", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_p2p(args)
    except TunkitError as exc:
        print(f"tunkit p2p: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
