"""Rules file: parsing with file:line errors, first-match-wins order, upstream URLs, fuzzing."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.errors import ConfigError
from tunkit.proxy.rules import RuleSet, Upstream, parse_rules, parse_upstream_url

RULES = """\
# corporate setup
upstream corp socks5://alice:s%40cret@10.1.0.2:1080
upstream web  http://[2001:db8::3]:3128

domain         exact.example       web
domain-suffix  Example.COM.        corp    # and subdomains
domain-keyword ads                 reject
cidr           10.0.0.0/8          direct
cidr           2001:db8::/32       web
port           22                  direct
port           8000-8999           web
proto          udp                 direct
final          corp
"""


@pytest.fixture
def ruleset() -> RuleSet:
    return parse_rules(RULES, "test.rules")


def test_upstreams_are_parsed(ruleset: RuleSet) -> None:
    corp = ruleset.upstreams["corp"]
    assert (corp.scheme, corp.host, corp.port, corp.username, corp.password) == (
        "socks5", "10.1.0.2", 1080, "alice", "s@cret")
    assert "s@cret" not in repr(corp) and "s@cret" not in str(corp)
    assert str(ruleset.upstreams["web"]) == "http://[2001:db8::3]:3128"


@pytest.mark.parametrize(("domain", "ip", "port", "proto", "target"), [
    ("exact.example", "1.1.1.1", 443, "tcp", "web"),
    ("sub.exact.example", "1.1.1.1", 443, "tcp", "corp"),  # falls to final
    ("example.com", "1.1.1.1", 443, "tcp", "corp"),
    ("WWW.example.com.", "1.1.1.1", 443, "tcp", "corp"),
    ("badexample.com", "1.1.1.1", 443, "tcp", "corp"),  # not a suffix match, final
    ("ads.example.com", "1.1.1.1", 443, "tcp", "corp"),  # suffix rule comes first
    ("myads.net", "1.1.1.1", 443, "tcp", "reject"),
    ("intranet.lan", "10.2.3.4", 443, "tcp", "direct"),
    (None, "10.2.3.4", 22, "tcp", "direct"),
    (None, "2001:db8::9", 22, "tcp", "web"),  # cidr before port
    (None, "8.8.8.8", 22, "tcp", "direct"),
    (None, "8.8.8.8", 8080, "tcp", "web"),
    (None, "8.8.8.8", 9000, "udp", "direct"),
    (None, "8.8.8.8", 9000, "tcp", "corp"),
])
def test_first_match_wins(ruleset: RuleSet, domain: str | None, ip: str, port: int, proto: str,
                          target: str) -> None:
    assert ruleset.match(domain, ipaddress.ip_address(ip), port, proto) == target
    assert ruleset.match(domain, ip, port, proto) == target


def test_match_rule_reports_line(ruleset: RuleSet) -> None:
    rule = ruleset.match_rule("myads.net", "1.1.1.1", 1, "tcp")
    assert rule is not None and rule.line == 7
    assert ruleset.match_rule(None, "1.1.1.1", 1, "tcp") is None


def test_empty_rules_default_final() -> None:
    assert parse_rules("").match("a.test", "1.2.3.4", 1, "tcp") == "default"


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("bogus x y", 1, "unknown statement"),
    ("\n\ndomain a.test nowhere", 3, "unknown target"),
    ("cidr 10.0.0.0/33 direct", 1, "10.0.0.0/33"),
    ("port 0 direct", 1, "outside"),
    ("port 9-2 direct", 1, "outside"),
    ("port http direct", 1, "N or N-M"),
    ("proto icmp direct", 1, "tcp or udp"),
    ("final direct\nfinal reject", 2, "twice"),
    ("upstream direct socks5://h:1", 1, "reserved"),
    ("upstream a socks5://h:1\nupstream a socks5://h:2", 2, "declared twice"),
    ("upstream a ftp://h:1", 1, "scheme"),
    ("upstream a socks5://h", 1, "missing port"),
    ("upstream a socks5://h:99999", 1, "out of range"),
    ("upstream a socks5://user:pw@h:1/x", 1, "path"),
    ("domain-suffix a.test", 1, "expected"),
])
def test_errors_name_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(text, "my.rules")
    message = str(info.value)
    assert message.startswith(f"my.rules:{line}: "), message
    assert fragment in message, message


def test_upstream_url_password_is_redacted_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_upstream_url("gopher://bob:hunter2@h:1")
    assert "hunter2" not in str(info.value)


def test_upstream_urls() -> None:
    assert parse_upstream_url("direct") == Upstream("direct")
    assert parse_upstream_url("socks5h://h.test:1080") == Upstream("socks5", "h.test", 1080)
    assert parse_upstream_url("http://u:p@proxy:3128").password == "p"
    with pytest.raises(ConfigError):
        parse_upstream_url("socks5://onlyuser@h:1")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_parser_arbitrary_text(text: str) -> None:
    try:
        parse_rules(text, "fuzz")
    except ConfigError as err:
        assert str(err).startswith("fuzz:")


WORDS = st.sampled_from(["domain", "domain-suffix", "domain-keyword", "cidr", "port", "proto",
                         "final", "upstream", "direct", "reject", "a", "10.0.0.0/8", "80",
                         "1-2", "udp", "socks5://h:1", "http://u:p@h:2", "::/0", "#", "x.test"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(WORDS, max_size=4).map(" ".join), max_size=8))
def test_fuzz_parser_structured(lines: list[str]) -> None:
    try:
        ruleset = parse_rules("\n".join(lines), "fuzz")
    except ConfigError as err:
        assert str(err).startswith("fuzz:")
        return
    target = ruleset.match("x.test", "10.1.1.1", 80, "udp")
    assert target in {"direct", "reject", "default"} | set(ruleset.upstreams)
