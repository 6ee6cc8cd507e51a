"""The ``tunkit`` command line: one entry point, one subcommand per mode.

Contract: every user error (a bad CIDR, an invalid key, a missing device, not being root)
ends with exactly one line on stderr, ``tunkit: error: <what is wrong>``, and a non-zero exit
status; never a traceback.  Subcommand modules are imported lazily, so ``tunkit --help``
stays fast and one broken mode cannot take the others down.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from tunkit import __version__
from tunkit.errors import PermissionDeniedError, TunkitError

# (module, function adding its parsers).  Each function receives the subparsers object and
# sets ``func`` on the parsers it adds; ``func(args) -> int`` runs the command.
_SUBCOMMAND_PROVIDERS: list[tuple[str, str]] = [
    ("tunkit.services.sniff", "add_sniff_parser"),
    ("tunkit.services.p2p_cli", "add_p2p_parser"),
    ("tunkit.services.wg_cli", "add_wg_parsers"),
    ("tunkit.services.proxy_cli", "add_proxy_parser"),
    ("tunkit.lab_cli", "add_lab_parser"),
    ("tunkit.demo", "add_demo_parser"),
]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors follow the one-line rule."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tunkit",
        description="Linux TUN/TAP toolkit: sniffer, p2p tunnel, WireGuard VPN, tun2socks proxy.",
    )
    parser.add_argument("--version", action="version", version=f"tunkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module_name, function_name in _SUBCOMMAND_PROVIDERS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # mode not built yet
            raise
        add: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
        add = getattr(module, function_name)
        add(sub)
    return parser


def require_root(what: str) -> None:
    """Raise a clear error unless we run with root privileges (CAP_NET_ADMIN)."""
    if os.geteuid() != 0:
        raise PermissionDeniedError(f"{what} needs root (CAP_NET_ADMIN); run it with sudo")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except TunkitError as exc:
        print(f"tunkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. `tunkit sniff | head`): not an error worth a traceback.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
