"""tunkit.wireguard.keys against vectors computed with the real `wg pubkey` (wireguard-tools
v1.0.20210914) on this machine."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunkit.errors import ConfigError
from tunkit.wireguard.keys import (
    clamp_private_key,
    decode_key,
    encode_key,
    generate_preshared_key,
    generate_private_key,
    hex_key,
    key_from_hex,
    public_key_from_private,
)

# (private, public) pairs: `wg genkey | tee priv | wg pubkey`, and `echo PRIV | wg pubkey`
# for hand-made (even unclamped) private keys.
WG_PUBKEY_VECTORS = [
    (
        "cLZmNpP8VCQOW6Sk1qufD6Yva6LlypcNJJmMNI3El3E=",
        "V8o3xUv9LYOrAj+K9u+0vXaG8Rh5x59YWNscNBWEMRM=",
    ),
    (
        "V8o3xUv9LYOrAj+K9u+0vXaG8Rh5x59YWNscNBWEMRM=",
        "36N8+Bwx2HIuT6S0FgEdv9FgKGRo9ERlaFPDLwI5JGc=",
    ),
    (
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "j0DFrbaPJWJK5bIU6nZ6bslNgp09e14a0bpvPiE4KF8=",
    ),
    (
        "//////////////////////////////////////////8=",
        "hHwNLDdSNPNl5mCVUYejc1oPdhPRYJ06ak2MU66qWiI=",
    ),
]


@pytest.mark.parametrize(("private", "public"), WG_PUBKEY_VECTORS)
def test_public_key_matches_wg_pubkey(private: str, public: str) -> None:
    assert encode_key(public_key_from_private(decode_key(private))) == public


def test_generate_private_key_clamps_like_wg_genkey() -> None:
    key = generate_private_key(rng=lambda n: b"\xff" * n)
    assert key == b"\xf8" + b"\xff" * 30 + b"\x7f"
    key = generate_private_key(rng=lambda n: bytes(n))
    assert key == bytes(31) + b"\x40"
    # clamping does not change the public key (X25519 clamps too), as with `wg pubkey`
    raw = bytes(range(32))
    assert public_key_from_private(clamp_private_key(raw)) == public_key_from_private(raw)


def test_generated_keys_are_fresh_and_clamped() -> None:
    a, b = generate_private_key(), generate_private_key()
    assert a != b and len(a) == 32
    assert a[0] & 7 == 0 and a[31] & 0x80 == 0 and a[31] & 0x40
    assert len(generate_preshared_key()) == 32
    assert generate_preshared_key(rng=lambda n: b"\x01" * n) == b"\x01" * 32


@pytest.mark.parametrize(
    "text",
    [
        "",
        "AAAA",
        "V8o3xUv9LYOrAj+K9u+0vXaG8Rh5x59YWNscNBWEMRM",  # 43, no padding
        "V8o3xUv9LYOrAj+K9u+0vXaG8Rh5x59YWNscNBWEMRM==",  # 45
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=",  # non-canonical trailing bits
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==",  # 44 chars but 31 bytes
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdH!8=",  # bad character
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxw dHh8=",  # inner space
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8é",
    ],
)
def test_decode_key_rejects_what_wg_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match=r"invalid key: .*\(expected 44 base64 characters\)"):
        decode_key(text)


def test_decode_key_error_does_not_echo_a_secret() -> None:
    almost = "V8o3xUv9LYOrAj+K9u+0vXaG8Rh5x59YWNscNBWEMRM"
    with pytest.raises(ConfigError) as info:
        decode_key(almost)
    assert "V8o3x" not in str(info.value) and "43 characters" in str(info.value)


def test_hex_round_trip_and_strictness() -> None:
    key = bytes(range(32))
    assert hex_key(key) == "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    assert key_from_hex(hex_key(key)) == key
    assert key_from_hex(hex_key(key).upper()) == key
    for bad in [
        "",
        "00" * 31,
        "00" * 33,
        "0g" + "00" * 31,
        " " + "00" * 31 + "0",
        "00 " * 21 + "0",
    ]:
        with pytest.raises(ConfigError, match="64 hexadecimal"):
            key_from_hex(bad)


def test_wrong_length_bytes_are_config_errors() -> None:
    for func in (encode_key, hex_key, public_key_from_private, clamp_private_key):
        with pytest.raises(ConfigError):
            func(b"\x00" * 31)


@given(st.binary(min_size=32, max_size=32))
def test_base64_round_trip(key: bytes) -> None:
    text = encode_key(key)
    assert len(text) == 44 and text == base64.b64encode(key).decode()
    assert decode_key(text) == key


@given(st.text(max_size=60))
def test_decode_key_fuzz(text: str) -> None:
    with contextlib.suppress(ConfigError):
        assert len(decode_key(text)) == 32


@given(st.text(max_size=70))
def test_key_from_hex_fuzz(text: str) -> None:
    with contextlib.suppress(ConfigError):
        assert len(key_from_hex(text)) == 32
