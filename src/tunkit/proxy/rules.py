"""Routing rules of the proxy: a small line-based file format, parsed and matched purely.

Format (one statement per line; ``#`` starts a comment; blank lines are ignored)::

    # upstream NAME URL   -- declare a named upstream
    upstream corp   socks5://alice:s3cret@10.1.0.2:1080
    upstream web    http://proxy.example:3128

    # MATCHER VALUE TARGET  -- the first rule that matches decides
    domain          intranet.example   direct   # exactly this name
    domain-suffix   example.com        corp     # example.com and *.example.com
    domain-keyword  ads                reject   # the name contains "ads"
    cidr            10.0.0.0/8         direct   # destination address (IPv4 or IPv6)
    port            22                 direct   # destination port, or a range 8000-8999
    proto           udp                direct   # tcp or udp

    final           corp                        # when nothing matched (default: "default")

Targets: a declared upstream, or a built-in: ``direct`` (connect without a proxy), ``reject``
(refuse fast: RST / ICMP unreachable) or ``default`` (the upstream given on the command line).
Names are ``[A-Za-z0-9_.-]+``; built-in names cannot be redeclared.  Domain values are
lower-cased and a trailing dot is dropped.  Domain matchers never match a flow whose
destination has no known domain (a real IP, not a fake one).

Upstream URLs: ``socks5://[user:pass@]host:port`` (``socks5h`` is accepted as a synonym),
``http://[user:pass@]host:port``, ``direct``, ``reject``.  User and password may be
percent-encoded.  IPv6 hosts go in brackets.

Errors are :class:`ConfigError` with ``file:line: message``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

from tunkit.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DIRECT: Final = "direct"
REJECT: Final = "reject"
DEFAULT: Final = "default"
BUILTIN_TARGETS: Final = frozenset({DIRECT, REJECT, DEFAULT})
MATCHERS: Final = ("domain", "domain-suffix", "domain-keyword", "cidr", "port", "proto")
_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")


@dataclass(frozen=True)
class Upstream:
    """A parsed upstream URL.  The password never appears in repr or str."""

    scheme: str
    """``socks5``, ``http`` or ``direct`` / ``reject``."""
    host: str = ""
    port: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        if self.scheme in (DIRECT, REJECT):
            return self.scheme
        user = f"{self.username}:***@" if self.username is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}"


def parse_upstream_url(url: str) -> Upstream:
    """Parse ``socks5://[u:p@]host:port``, ``http://[u:p@]host:port``, ``direct``, ``reject``."""
    text = url.strip()
    if text in (DIRECT, REJECT):
        return Upstream(text)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise ConfigError(f"upstream {_redact(text)!r}: {err}") from None
    scheme = parts.scheme.lower()
    if scheme == "socks5h":
        scheme = "socks5"
    if scheme not in ("socks5", "http"):
        raise ConfigError(f"upstream {_redact(text)!r}: scheme must be socks5://, http://, "
                          "direct or reject")
    if not parts.hostname:
        raise ConfigError(f"upstream {_redact(text)!r}: missing host")
    if port is None or port == 0:
        raise ConfigError(f"upstream {_redact(text)!r}: missing port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"upstream {_redact(text)!r}: unexpected path or query")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if (username is None) != (password is None) and scheme == "socks5":
        raise ConfigError(f"upstream {_redact(text)!r}: SOCKS5 needs user:password")
    return Upstream(scheme, parts.hostname, port, username, password)


def _redact(url: str) -> str:
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", url)


@dataclass(frozen=True)
class Rule:
    matcher: str
    value: str
    target: str
    line: int
    """Line number in the rules file (for ``tunkit proxy status`` and error messages)."""
    network: IPNetwork | None = None
    ports: tuple[int, int] | None = None

    def matches(self, domain: str | None, dst_ip: IPAddress, dst_port: int, proto: str) -> bool:
        kind = self.matcher
        if kind == "domain":
            return domain == self.value
        if kind == "domain-suffix":
            return domain is not None and (domain == self.value
                                           or domain.endswith("." + self.value))
        if kind == "domain-keyword":
            return domain is not None and self.value in domain
        if kind == "cidr":
            assert self.network is not None
            return dst_ip.version == self.network.version and dst_ip in self.network
        if kind == "port":
            assert self.ports is not None
            return self.ports[0] <= dst_port <= self.ports[1]
        return proto == self.value


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    final: str = DEFAULT

    def match(
        self, domain: str | None, dst_ip: IPAddress | str, dst_port: int, proto: str
    ) -> str:
        """The target name for a flow: the first matching rule's, else :attr:`final`."""
        ip = ipaddress.ip_address(dst_ip) if isinstance(dst_ip, str) else dst_ip
        name = _normalise_domain(domain) if domain else None
        for rule in self.rules:
            if rule.matches(name, ip, dst_port, proto):
                return rule.target
        return self.final

    def match_rule(
        self, domain: str | None, dst_ip: IPAddress | str, dst_port: int, proto: str
    ) -> Rule | None:
        """The first matching rule itself, or None (then :attr:`final` applies)."""
        ip = ipaddress.ip_address(dst_ip) if isinstance(dst_ip, str) else dst_ip
        name = _normalise_domain(domain) if domain else None
        return next((r for r in self.rules if r.matches(name, ip, dst_port, proto)), None)


def _normalise_domain(domain: str) -> str:
    name = domain.strip().lower()
    return name[:-1] if name.endswith(".") else name


def parse_rules(text: str, filename: str = "<rules>") -> RuleSet:
    """Parse a rules file; raises :class:`ConfigError` naming ``filename:line``."""
    upstreams: dict[str, Upstream] = {}
    pending: list[tuple[str, str, str, int]] = []
    final: tuple[str, int] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        where = f"{filename}:{number}"
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        keyword = words[0].lower()
        if keyword == "upstream":
            if len(words) != 3:
                raise ConfigError(f"{where}: expected 'upstream NAME URL'")
            name, url = words[1], words[2]
            if not _NAME.match(name) or name in BUILTIN_TARGETS:
                raise ConfigError(f"{where}: invalid or reserved upstream name {name!r}")
            if name in upstreams:
                raise ConfigError(f"{where}: upstream {name!r} declared twice")
            try:
                upstreams[name] = parse_upstream_url(url)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
        elif keyword == "final":
            if len(words) != 2:
                raise ConfigError(f"{where}: expected 'final TARGET'")
            if final is not None:
                raise ConfigError(f"{where}: 'final' given twice (first on line {final[1]})")
            final = (words[1], number)
        elif keyword in MATCHERS:
            if len(words) != 3:
                raise ConfigError(f"{where}: expected '{keyword} VALUE TARGET'")
            pending.append((keyword, words[1], words[2], number))
        else:
            raise ConfigError(f"{where}: unknown statement {words[0]!r} "
                              f"(expected upstream, final or one of {', '.join(MATCHERS)})")
    rules = tuple(_build_rule(k, v, t, n, filename, upstreams) for k, v, t, n in pending)
    final_target = DEFAULT
    if final is not None:
        _check_target(final[0], upstreams, f"{filename}:{final[1]}")
        final_target = final[0]
    return RuleSet(rules, upstreams, final_target)


def _check_target(target: str, upstreams: dict[str, Upstream], where: str) -> None:
    if target not in BUILTIN_TARGETS and target not in upstreams:
        raise ConfigError(f"{where}: unknown target {target!r} (declare it with 'upstream')")


def _build_rule(
    kind: str, value: str, target: str, line: int, filename: str, upstreams: dict[str, Upstream]
) -> Rule:
    where = f"{filename}:{line}"
    _check_target(target, upstreams, where)
    if kind in ("domain", "domain-suffix", "domain-keyword"):
        name = _normalise_domain(value)
        if not name:
            raise ConfigError(f"{where}: empty domain")
        return Rule(kind, name, target, line)
    if kind == "cidr":
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
        return Rule(kind, str(network), target, line, network=network)
    if kind == "port":
        low, sep, high = value.partition("-")
        try:
            ports = (int(low), int(high) if sep else int(low))
        except ValueError:
            raise ConfigError(f"{where}: port must be N or N-M, not {value!r}") from None
        if not 0 < ports[0] <= ports[1] <= 65535:
            raise ConfigError(f"{where}: port range {value!r} outside 1-65535")
        return Rule(kind, value, target, line, ports=ports)
    proto = value.lower()
    if proto not in ("tcp", "udp"):
        raise ConfigError(f"{where}: proto must be tcp or udp, not {value!r}")
    return Rule(kind, proto, target, line)
