"""``tunkit lab up|down|status``: a persistent two-host lab to experiment in."""

from __future__ import annotations

import argparse
from typing import Any


def run_lab(args: argparse.Namespace) -> int:
    from tunkit import lab
    from tunkit.cli import require_root

    if args.action == "status":
        print(lab.lab_status(args.prefix))
        return 0
    require_root(f"tunkit lab {args.action}")
    if args.action == "up":
        lab.lab_up(args.prefix)
        print(lab.lab_status(args.prefix))
    else:
        removed = lab.lab_down(args.prefix)
        print(f"removed {', '.join(removed) if removed else 'nothing (already gone)'}")
    return 0


def add_lab_parser(sub: Any) -> None:
    p = sub.add_parser(
        "lab",
        help="create/remove a persistent two-namespace lab (needs root)",
        description="Build two network namespaces a and b linked by a veth pair "
        "(10.77.0.1/24, fd77::1/64 <-> 10.77.0.2/24, fd77::2/64) to try tunkit in.",
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--prefix", default="tklab", help="namespace name prefix (default tklab)")
    p.set_defaults(func=run_lab)
