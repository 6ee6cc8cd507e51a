"""``tunkit-wg [-f|--foreground] IFNAME``: the userspace WireGuard daemon, with wireguard-go's contract.

Contract:

* Creates the TUN device IFNAME and the UAPI socket ``/var/run/wireguard/IFNAME.sock``
  (root only), then serves until SIGINT/SIGTERM, the device is deleted, or the socket file
  is deleted; the socket file and device are removed on the way out.
* Without ``-f`` (and without ``WG_PROCESS_FOREGROUND=1``) it daemonizes with a double fork;
  the command returns only once the device and socket exist (so wg-quick's next ``wg setconf``
  finds them), with status 0, or with 1 and the error on stderr if the daemon could not start.
* Logs go to stderr in the foreground; a daemon logs to ``$TUNKIT_WG_LOG`` if set, else nowhere.
* If a ``tunkit up`` state file exists for IFNAME when the daemon exits, whatever ``tunkit up``
  added outside the interface (rules, nft tables, DNS) is removed too. A daemonized instance
  keeps a small supervisor process (the first fork) that does the same, and removes the stale
  socket file, if the daemon itself dies abnormally (crash, SIGKILL).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from tunkit.errors import ConfigError, TunkitError

IFNAMSIZ = 15


def validate_ifname(name: str) -> str:
    if not name or len(name) > IFNAMSIZ or "/" in name or name in (".", "..") or any(
        c.isspace() for c in name
    ):
        raise ConfigError(f"invalid interface name {name!r} (1-15 characters, no '/' or spaces)")
    return name


def build_parser(prog: str = "tunkit-wg") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Userspace WireGuard daemon (wireguard-go compatible)."
    )
    add_daemon_arguments(parser)
    return parser


def add_daemon_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--foreground", action="store_true", help="do not daemonize")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--mtu", type=int, default=1420, help="initial MTU (default 1420)")
    parser.add_argument("ifname", metavar="IFNAME", help="interface name (max 15 characters)")


def _configure_logging(verbose: bool, foreground: bool) -> None:
    level = logging.DEBUG if verbose or os.environ.get("LOG_LEVEL") == "debug" else logging.INFO
    fmt = "%(asctime)s tunkit-wg[%(process)d] %(levelname)s %(message)s"
    target = None if foreground else os.environ.get("TUNKIT_WG_LOG")
    if foreground:
        logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    elif target:
        logging.basicConfig(level=level, format=fmt, filename=target)
    else:
        logging.basicConfig(level=logging.CRITICAL + 1)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)


def _cleanup_tunkit_up_state(ifname: str) -> None:
    try:
        from tunkit.services import wgquick

        wgquick.cleanup_after_daemon(ifname)
    except Exception:  # cleanup must never turn an exit into a crash
        logging.getLogger(__name__).exception("cleanup of tunkit up state failed")


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 1024


def _supervise(ifname: str, daemon_pid: int) -> None:
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    while True:
        try:
            _, status = os.waitpid(daemon_pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            return
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return
    _cleanup_tunkit_up_state(ifname)
    from tunkit.services.uapi_server import remove_stale_socket

    remove_stale_socket(ifname)


def run_daemon(ifname: str, *, foreground: bool, verbose: bool = False, mtu: int = 1420) -> int:
    """Run the daemon (forking unless ``foreground``); returns the caller's exit status."""
    from tunkit.services.wireguard import serve

    validate_ifname(ifname)
    if os.geteuid() != 0:
        from tunkit.errors import PermissionDeniedError

        raise PermissionDeniedError("tunkit-wg needs root (CAP_NET_ADMIN)")
    if foreground:
        _configure_logging(verbose, True)
        try:
            serve(ifname, mtu=mtu)
        finally:
            _cleanup_tunkit_up_state(ifname)
        return 0

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid > 0:  # the original process: wait for the grandchild's verdict
        os.close(write_fd)
        chunks = []
        while True:
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(read_fd)
        # the first child stays alive as the supervisor: do not wait for it
        verdict = b"".join(chunks).decode(errors="replace")
        if verdict == "ok":
            return 0
        print(f"tunkit-wg: error: {verdict or 'daemon died during start-up'}", file=sys.stderr)
        return 1

    # first child: new session, then fork again so the daemon can never regain a terminal.
    # The first child stays as a tiny supervisor: if the daemon dies abnormally (a crash,
    # SIGKILL), it removes what `tunkit up` recorded and the stale socket file.
    os.close(read_fd)
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    # inherited descriptors (a caller's capture pipe) would keep the caller waiting for EOF
    os.closerange(3, write_fd)
    os.closerange(write_fd + 1, _max_fd())
    daemon_pid = os.fork()
    if daemon_pid > 0:
        os.close(write_fd)
        _supervise(ifname, daemon_pid)
        os._exit(0)
    _configure_logging(verbose, False)

    def ready(error: str | None) -> None:
        nonlocal write_fd
        if write_fd < 0:
            return
        os.write(write_fd, b"ok" if error is None else error.encode())
        os.close(write_fd)
        write_fd = -1

    code = 0
    try:
        serve(ifname, ready=ready, mtu=mtu)
    except TunkitError as exc:
        ready(str(exc))
        code = 1
    except BaseException as exc:
        ready(f"{type(exc).__name__}: {exc}")
        logging.getLogger(__name__).exception("daemon failed")
        code = 1
    finally:
        _cleanup_tunkit_up_state(ifname)
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    foreground = args.foreground or os.environ.get("WG_PROCESS_FOREGROUND") == "1"
    try:
        return run_daemon(args.ifname, foreground=foreground, verbose=args.verbose, mtu=args.mtu)
    except TunkitError as exc:
        print(f"tunkit-wg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
