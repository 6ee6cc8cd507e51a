"""mac1 / mac2 / cookie replies between a CookieGenerator and a CookieChecker."""

from __future__ import annotations

import random

from tunkit.wireguard.cookie import CookieChecker, CookieGenerator, source_bytes
from tunkit.wireguard.crypto import PrivateKey, hash_, mac
from tunkit.wireguard.messages import build_initiation, parse_cookie_reply

RESPONDER = PrivateKey(b"\x05" * 32).public_key()
SRC = source_bytes(("198.51.100.7", 40000))


def _message() -> bytes:
    return build_initiation(42, b"e" * 32, b"s" * 48, b"t" * 28)


def test_source_bytes() -> None:
    assert bytes([198, 51, 100, 7]) + (40000).to_bytes(2, "big") == SRC
    assert source_bytes(("2001:db8::1", 1, 0, 0))[:16] == bytes.fromhex(
        "20010db8" + "0" * 22 + "01"
    )


def test_mac1_definition_and_check() -> None:
    gen = CookieGenerator(RESPONDER)
    checker = CookieChecker(RESPONDER)
    msg = gen.add_macs(_message(), now=0.0)
    assert msg[116:132] == mac(hash_(b"mac1----", RESPONDER.raw), msg[:116])
    assert msg[132:] == bytes(16)  # no cookie yet
    assert checker.check_mac1(msg)
    assert not checker.check_mac1(msg[:20] + b"X" + msg[21:])
    assert not CookieChecker(PrivateKey(b"\x06" * 32).public_key()).check_mac1(msg)
    assert not checker.check_mac2(msg, SRC, now=0.0)


def test_cookie_reply_then_mac2_valid_until_secret_rotates() -> None:
    gen = CookieGenerator(RESPONDER)
    checker = CookieChecker(RESPONDER, rng=random.Random(1).randbytes)
    first = gen.add_macs(_message(), now=0.0)
    reply = checker.create_reply(first, 42, SRC, now=0.0)
    assert len(reply) == 64 and reply[:8] == b"\x03\0\0\0" + (42).to_bytes(4, "little")
    assert gen.consume_reply(parse_cookie_reply(reply), now=1.0)
    assert not gen.consume_reply(parse_cookie_reply(reply), now=1.0)  # only once per mac1
    second = gen.add_macs(_message(), now=2.0)
    assert second[132:] != bytes(16)
    assert checker.check_mac2(second, SRC, now=2.0)
    assert not checker.check_mac2(second, source_bytes(("198.51.100.7", 40001)), now=2.0)
    assert not checker.check_mac2(second, SRC, now=121.0)  # secret older than 120 s
    # the generator stops using a cookie older than 120 s
    assert gen.add_macs(_message(), now=122.0)[132:] == bytes(16)


def test_cookie_reply_for_another_message_is_rejected() -> None:
    gen = CookieGenerator(RESPONDER)
    checker = CookieChecker(RESPONDER)
    gen.add_macs(_message(), now=0.0)
    other = CookieGenerator(RESPONDER).add_macs(
        build_initiation(1, b"x" * 32, b"s" * 48, b"t" * 28), 0.0
    )
    reply = checker.create_reply(other, 42, SRC, now=0.0)
    assert not gen.consume_reply(parse_cookie_reply(reply), now=0.0)
    assert not CookieGenerator(RESPONDER).consume_reply(parse_cookie_reply(reply), now=0.0)
