"""Registry of live proxied flows, for ``tunkit proxy status`` and the status endpoint.

The service registers a flow when it dials an upstream, adds byte counts as it relays, and
removes it on close.  :meth:`FlowRegistry.snapshot` copies the state (immutable records),
which :func:`format_status_text` and :func:`format_status_json` render together with the
NAT, fake-IP pool and UDP figures the caller passes in.  Pure: ``now`` is an argument.
Not safe for concurrent use (the service owns it on one loop).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(slots=True)
class _Flow:
    flow_id: int
    proto: str
    source: str
    destination: str
    domain: str | None
    upstream: str
    started: float
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass(frozen=True)
class FlowRecord:
    flow_id: int
    proto: str
    source: str
    """``ip:port`` of the application."""
    destination: str
    """``ip:port`` the application connected to (a fake IP for domains)."""
    domain: str | None
    upstream: str
    """The rules target: an upstream name, ``direct`` or ``default``."""
    started: float
    bytes_up: int
    bytes_down: int


@dataclass(frozen=True)
class FlowTotals:
    opened: int
    closed: int
    bytes_up: int
    """Including the flows already closed."""
    bytes_down: int


def _record(flow: _Flow) -> FlowRecord:
    return FlowRecord(flow.flow_id, flow.proto, flow.source, flow.destination, flow.domain,
                      flow.upstream, flow.started, flow.bytes_up, flow.bytes_down)


class FlowRegistry:
    def __init__(self) -> None:
        self._flows: dict[int, _Flow] = {}
        self._next_id = 1
        self._closed = 0
        self._closed_up = 0
        self._closed_down = 0

    def __len__(self) -> int:
        return len(self._flows)

    def open(
        self, proto: str, source: str, destination: str, domain: str | None, upstream: str,
        now: float,
    ) -> int:
        """Register a flow; returns its id."""
        flow_id = self._next_id
        self._next_id += 1
        self._flows[flow_id] = _Flow(flow_id, proto, source, destination, domain, upstream, now)
        return flow_id

    def add_bytes(self, flow_id: int, up: int = 0, down: int = 0) -> None:
        flow = self._flows.get(flow_id)
        if flow is not None:
            flow.bytes_up += up
            flow.bytes_down += down

    def close(self, flow_id: int) -> FlowRecord | None:
        flow = self._flows.pop(flow_id, None)
        if flow is None:
            return None
        self._closed += 1
        self._closed_up += flow.bytes_up
        self._closed_down += flow.bytes_down
        return _record(flow)

    def snapshot(self) -> list[FlowRecord]:
        """Live flows, oldest first."""
        return [_record(f) for f in self._flows.values()]

    @property
    def totals(self) -> FlowTotals:
        live_up = sum(f.bytes_up for f in self._flows.values())
        live_down = sum(f.bytes_down for f in self._flows.values())
        return FlowTotals(self._next_id - 1, self._closed, self._closed_up + live_up,
                          self._closed_down + live_down)


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def format_status_text(
    flows: list[FlowRecord], now: float, usage: Mapping[str, Mapping[str, Any]] | None = None
) -> str:
    """A human table of flows, then one line per usage section (e.g. ``{"nat": {...}}``)."""
    lines = []
    for section, figures in (usage or {}).items():
        rendered = " ".join(f"{k}={v}" for k, v in figures.items())
        lines.append(f"{section}: {rendered}")
    lines.append(f"flows: {len(flows)}")
    header = ("PROTO", "SOURCE", "DESTINATION", "DOMAIN", "UPSTREAM", "UP", "DOWN", "AGE")
    rows = [header] + [
        (f.proto, f.source, f.destination, f.domain or "-", f.upstream,
         _human_bytes(f.bytes_up), _human_bytes(f.bytes_down), f"{max(0.0, now - f.started):.0f}s")
        for f in flows
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def format_status_json(
    flows: list[FlowRecord], now: float, usage: Mapping[str, Mapping[str, Any]] | None = None
) -> str:
    """The same as JSON: ``{"now": .., "flows": [...], <section>: {...}}``."""
    document: dict[str, Any] = {"now": now, "flows": [asdict(f) for f in flows]}
    for section, figures in (usage or {}).items():
        document[section] = dict(figures)
    return json.dumps(document, sort_keys=True)
