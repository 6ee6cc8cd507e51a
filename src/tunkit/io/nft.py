"""nftables tables that tunkit owns, applied atomically with ``nft -f``.

Contract:

* An :class:`NftTable` names one table (family + name) that belongs to us. :meth:`apply`
  replaces its whole content in one nft transaction (``add table; delete table; table {...}``),
  so the ruleset never shows a half-built table, and re-applying is idempotent.
* :meth:`delete` removes the table and succeeds if it is already gone; use the table as a
  context manager to delete it on exit.
* We never touch tables that are not ours. Errors from nft raise :class:`DeviceError` with nft's
  first error line; a missing ``nft`` binary raises :class:`DeviceError` too.
* ``netns`` runs nft inside a named network namespace (``ip netns exec``).
"""

from __future__ import annotations

import shutil
import subprocess
from types import TracebackType

from tunkit.errors import DeviceError

FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")


def _nft_command(netns: str | None) -> list[str]:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    return ["ip", "netns", "exec", netns, nft] if netns else [nft]


def run_nft(script: str, *, netns: str | None = None) -> str:
    """Run an nft script (``nft -f -``) in one transaction; return stdout."""
    try:
        proc = subprocess.run(
            [*_nft_command(netns), "-f", "-"], input=script, capture_output=True, text=True,
            timeout=30, check=False,
        )
    except FileNotFoundError as exc:
        raise DeviceError("nft not found: install nftables") from exc
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["unknown error"])[0]
        raise DeviceError(f"nft failed: {first}")
    return proc.stdout


def list_tables(*, netns: str | None = None) -> list[tuple[str, str]]:
    """Every table in the namespace as (family, name)."""
    proc = subprocess.run(
        [*_nft_command(netns), "list", "tables"], capture_output=True, text=True, check=False
    )
    tables = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table":
            tables.append((parts[1], parts[2]))
    return tables


class NftTable:
    """One nftables table owned by tunkit."""

    def __init__(self, family: str, name: str, *, netns: str | None = None) -> None:
        if family not in FAMILIES:
            raise DeviceError(f"unknown nft family {family!r}")
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise DeviceError(f"bad nft table name {name!r}")
        self.family = family
        self.name = name
        self.netns = netns

    def __repr__(self) -> str:
        return f"NftTable({self.family} {self.name})"

    def apply(self, body: str) -> None:
        """Replace the table's content with ``body`` (chains and rules, nft syntax)."""
        head = f"{self.family} {self.name}"
        script = f"add table {head}\ndelete table {head}\ntable {head} {{\n{body}\n}}\n"
        run_nft(script, netns=self.netns)

    def exists(self) -> bool:
        return (self.family, self.name) in list_tables(netns=self.netns)

    def delete(self) -> None:
        """Remove the table; no error if it does not exist."""
        head = f"{self.family} {self.name}"
        run_nft(f"add table {head}\ndelete table {head}\n", netns=self.netns)

    def __enter__(self) -> NftTable:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()
