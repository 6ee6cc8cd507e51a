"""HTTP status endpoint of ``tunkit proxy`` and the client behind ``tunkit proxy status``.

Contract: :class:`StatusServer` serves ``GET /`` (or ``/status``) as text and
``GET /status.json`` (or ``?format=json``) as JSON: the live flows (source, destination,
domain, upstream, bytes) and the NAT, fake-IP pool, UDP and counter figures.  It reads the
shared state under its lock and never changes it.  :func:`fetch_status` queries it.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tunkit.errors import DeviceError
from tunkit.proxy.flows import format_status_json, format_status_text
from tunkit.services.proxy_state import ProxyState


def usage_of(state: ProxyState, extra: Callable[[], dict[str, Any]] | None = None,
             ) -> dict[str, dict[str, Any]]:
    """The figures shown next to the flows (call with the lock held)."""
    nat = state.nat4.stats
    pool = state.pool4.stats
    usage: dict[str, dict[str, Any]] = {
        "proxy": {"tun": state.config.tun, "prefix": str(state.prefix4),
                  "listener": f"{state.tun_ip4}:{state.listen_port}",
                  "upstream": str(state.config.upstream),
                  "uptime_s": round(time.time() - state.started, 1)},
        "nat": {"live": nat.live, "allocated_total": nat.allocated_total,
                "exhausted": nat.exhausted, "expired": nat.expired, "space": nat.space},
        "pool": {"size": pool.size, "capacity": pool.capacity,
                 "allocated_total": pool.allocated_total, "evicted_total": pool.evicted_total},
        "counters": dict(state.counters),
    }
    totals = state.flows.totals
    usage["flows_total"] = {"opened": totals.opened, "closed": totals.closed,
                            "bytes_up": totals.bytes_up, "bytes_down": totals.bytes_down}
    if extra is not None:
        usage.update(extra())
    return usage


class StatusServer:
    def __init__(self, state: ProxyState, address: tuple[str, int],
                 extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.state = state
        self.extra = extra
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                as_json = path.endswith(".json") or "format=json" in query
                if path not in ("/", "/status", "/status.json"):
                    self.send_error(404)
                    return
                body = outer.render(as_json).encode()
                self.send_response(200)
                self.send_header("Content-Type",
                                 "application/json" if as_json else "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        try:
            self.httpd = ThreadingHTTPServer(address, Handler)
        except OSError as err:
            raise DeviceError(f"status endpoint {address[0]}:{address[1]}: {err.strerror}") from None
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="proxy-status")

    def render(self, as_json: bool) -> str:
        with self.state.lock:
            flows = self.state.flows.snapshot()
            usage = usage_of(self.state, self.extra)
        now = time.time()
        return format_status_json(flows, now, usage) if as_json else \
            format_status_text(flows, now, usage)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def fetch_status(address: tuple[str, int], as_json: bool = False, timeout: float = 5.0) -> str:
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    url = f"http://{host}:{address[1]}/status{'.json' if as_json else ''}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError) as err:
        raise DeviceError(f"no tunkit proxy status at {url}: {err}") from None
