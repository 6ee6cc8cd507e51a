"""The WireGuard subcommands of ``tunkit``: ``wg``, ``up``, ``down``, ``save``, ``strip``,
``genkey``, ``genpsk``, ``pubkey``.

Contract: :func:`add_wg_parsers` adds the parsers to ``tunkit``'s subparsers; each sets
``func(args) -> int``. ``tunkit wg IFNAME`` is ``tunkit-wg IFNAME``; ``genkey``/``genpsk``/
``pubkey`` read and print exactly what ``wg genkey``/``wg genpsk``/``wg pubkey`` do (base64,
one line), so the two tools' outputs can be mixed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tunkit.errors import ConfigError


def _cmd_wg(args: argparse.Namespace) -> int:
    from tunkit.wg_daemon import run_daemon

    return run_daemon(args.ifname, foreground=args.foreground, verbose=args.verbose, mtu=args.mtu)


def _require_root(what: str) -> None:
    from tunkit.cli import require_root

    require_root(what)


def _cmd_up(args: argparse.Namespace) -> int:
    from tunkit.services import wgquick

    _require_root("tunkit up")
    wgquick.configure_cli_logging()
    wgquick.up(args.config)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from tunkit.services import wgquick

    _require_root("tunkit down")
    wgquick.configure_cli_logging()
    wgquick.down(args.config)
    return 0


def _cmd_save(args: argparse.Namespace) -> int:
    from tunkit.services import wgquick

    _require_root("tunkit save")
    wgquick.configure_cli_logging()
    path = wgquick.save(args.config)
    print(f"[#] saved the running configuration to {path}", file=sys.stderr)
    return 0


def _cmd_strip(args: argparse.Namespace) -> int:
    from tunkit.services import wgquick

    sys.stdout.write(wgquick.strip(args.config))
    return 0


def _cmd_genkey(args: argparse.Namespace) -> int:
    from tunkit.wireguard.keys import encode_key, generate_private_key

    print(encode_key(generate_private_key()))
    return 0


def _cmd_genpsk(args: argparse.Namespace) -> int:
    from tunkit.wireguard.keys import encode_key, generate_preshared_key

    print(encode_key(generate_preshared_key()))
    return 0


def _cmd_pubkey(args: argparse.Namespace) -> int:
    from tunkit.wireguard.keys import decode_key, encode_key, public_key_from_private

    text = sys.stdin.read(1024)
    stripped = text.strip()
    if not stripped:
        raise ConfigError("pubkey: no private key on standard input")
    print(encode_key(public_key_from_private(decode_key(stripped))))
    return 0


def add_wg_parsers(subparsers: Any) -> None:
    from tunkit.wg_daemon import add_daemon_arguments

    wg = subparsers.add_parser(
        "wg", help="run the userspace WireGuard daemon (same as tunkit-wg)",
        description="Userspace WireGuard daemon, compatible with wireguard-go: configure it "
        "with `wg` or `tunkit up`.",
    )
    add_daemon_arguments(wg)
    wg.set_defaults(func=_cmd_wg)

    for name, func, verb in (("up", _cmd_up, "bring up"), ("down", _cmd_down, "tear down")):
        parser = subparsers.add_parser(
            name, help=f"{verb} a WireGuard interface from a wg-quick config",
            description=f"{verb.capitalize()} a WireGuard interface like wg-quick {name}. "
            "CONFIG is a path to IFNAME.conf, or IFNAME for /etc/wireguard/IFNAME.conf.",
        )
        parser.add_argument("config", metavar="CONFIG|NAME")
        parser.set_defaults(func=func)

    for name, func, text in (
        ("save", _cmd_save, "write a running WireGuard interface's configuration back to "
         "its wg-quick config, like wg-quick save"),
        ("strip", _cmd_strip, "print a wg-quick config with only the keys `wg setconf` "
         "accepts, like wg-quick strip"),
    ):
        parser = subparsers.add_parser(
            name, help=text.split(",")[0], description=text.capitalize() + ". "
            "CONFIG is a path to IFNAME.conf, or IFNAME for /etc/wireguard/IFNAME.conf.")
        parser.add_argument("config", metavar="CONFIG|NAME")
        parser.set_defaults(func=func)

    for name, func, text in (
        ("genkey", _cmd_genkey, "print a new private key (base64), like `wg genkey`"),
        ("genpsk", _cmd_genpsk, "print a new preshared key (base64), like `wg genpsk`"),
        ("pubkey", _cmd_pubkey, "read a private key on stdin, print its public key"),
    ):
        parser = subparsers.add_parser(name, help=text, description=text)
        parser.set_defaults(func=func)
