"""Primitives of tunkit.wireguard.crypto against published vectors and their definitions."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunkit.errors import ConfigError
from tunkit.wireguard import crypto
from tunkit.wireguard.crypto import (
    DecryptionError,
    LowOrderPointError,
    PresharedKey,
    PrivateKey,
    PublicKey,
)
from tunkit.wireguard.handshake import INITIAL_CHAINING_KEY, INITIAL_HASH

SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)


def test_blake2s_rfc7693_appendix_b() -> None:
    assert crypto.hash_(b"abc").hex() == (
        "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    )
    assert crypto.hash_(b"a", b"bc") == crypto.hash_(b"abc")


def test_keyed_blake2s_kat_and_mac_truncation() -> None:
    # blake2s-kat.txt, keyed, first entry (key 00..1f, empty input)
    full = hashlib.blake2s(b"", key=bytes(range(32))).hexdigest()
    assert full == "48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49"
    # MAC is BLAKE2s with digest_size 16 (a different parameter block, not a truncation)
    tag = crypto.mac(bytes(range(32)), b"")
    assert len(tag) == 16 and tag != bytes.fromhex(full)[:16]
    assert tag == hashlib.blake2s(b"", digest_size=16, key=bytes(range(32))).digest()


def _rfc2104_hmac_blake2s(key: bytes, data: bytes) -> bytes:
    block = 64
    if len(key) > block:
        key = hashlib.blake2s(key).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.blake2s(bytes(k ^ 0x36 for k in key) + data).digest()
    return hashlib.blake2s(bytes(k ^ 0x5C for k in key) + inner).digest()


@given(st.binary(max_size=80), st.binary(max_size=200))
def test_hmac_is_rfc2104_over_blake2s(key: bytes, data: bytes) -> None:
    assert crypto.hmac_(key, data) == _rfc2104_hmac_blake2s(key, data)


def test_kdf_definitions_whitepaper_5_4() -> None:
    key, data = bytes(range(32)), b"input"
    t0 = _rfc2104_hmac_blake2s(key, data)
    t1 = _rfc2104_hmac_blake2s(t0, b"\x01")
    t2 = _rfc2104_hmac_blake2s(t0, t1 + b"\x02")
    t3 = _rfc2104_hmac_blake2s(t0, t2 + b"\x03")
    assert crypto.kdf1(key, data) == t1
    assert crypto.kdf2(key, data) == (t1, t2)
    assert crypto.kdf3(key, data) == (t1, t2, t3)


def test_initial_chaining_key_and_hash_match_published_constants() -> None:
    # The same two constants are hard-coded in rustyguard (CONSTRUCTION_HASH, IDENTIFIER_HASH).
    assert list(INITIAL_CHAINING_KEY) == [
        96, 226, 109, 174, 243, 39, 239, 192, 46, 195, 53, 226, 160, 37, 210, 208,
        22, 235, 66, 6, 248, 114, 119, 245, 45, 56, 209, 152, 139, 120, 205, 54,
    ]  # fmt: skip
    assert list(INITIAL_HASH) == [
        34, 17, 179, 97, 8, 26, 197, 102, 105, 18, 67, 219, 69, 138, 213, 50,
        45, 156, 108, 102, 34, 147, 232, 183, 14, 225, 156, 101, 186, 7, 158, 243,
    ]  # fmt: skip


def test_chacha20poly1305_rfc8439_2_8_2_with_wireguard_nonce_layout() -> None:
    # RFC 8439 §2.8.2 uses nonce 07000000 4041424344454647: that is 4 bytes of "constant" and
    # an 8-byte LE counter.  WireGuard's constant is zero, so check the layout separately.
    assert crypto.aead_nonce(0x0102030405060708) == bytes(4) + bytes.fromhex("0807060504030201")
    key = bytes(range(0x80, 0xA0))
    sealed = crypto.aead_seal(key, 7, b"x" * 20, b"ad")
    assert crypto.aead_open(key, 7, sealed, b"ad") == b"x" * 20
    with pytest.raises(DecryptionError):
        crypto.aead_open(key, 8, sealed, b"ad")
    with pytest.raises(DecryptionError):
        crypto.aead_open(key, 7, sealed, b"AD")


def test_hchacha20_draft_irtf_cfrg_xchacha_2_2_1() -> None:
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert crypto.hchacha20(key, nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    )


def test_xchacha20poly1305_draft_irtf_cfrg_xchacha_a_3_1() -> None:
    key = bytes(range(0x80, 0xA0))
    nonce = bytes(range(0x40, 0x58))
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    expected = bytes.fromhex(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
        "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
        "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e"
        "c0875924c1c7987947deafd8780acf49"
    )
    assert crypto.xaead_seal(key, nonce, SUNSCREEN, aad) == expected
    assert crypto.xaead_open(key, nonce, expected, aad) == SUNSCREEN
    tampered = expected[:-1] + bytes([expected[-1] ^ 1])
    with pytest.raises(DecryptionError):
        crypto.xaead_open(key, nonce, tampered, aad)


def test_x25519_rfc7748_6_1() -> None:
    alice = PrivateKey(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob_public = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    assert alice.public_key().raw.hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert crypto.dh(alice, bob_public).hex() == (
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    )


LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_dh_rejects_all_zero_results(point: bytes) -> None:
    with pytest.raises(LowOrderPointError):
        crypto.dh(PrivateKey(bytes(range(32))), point)


def test_key_types_redact_secrets_and_round_trip() -> None:
    private = PrivateKey(bytes(range(32)))
    assert "redacted" in repr(private) and private.to_base64() not in repr(private)
    assert private.to_base64() not in str(private)
    psk = PresharedKey(b"\x07" * 32)
    assert "redacted" in repr(psk) and psk.to_hex() not in repr(psk)
    public = private.public_key()
    assert public.to_base64() in repr(public)
    assert PublicKey.from_base64(public.to_base64()) == public
    assert PublicKey.from_hex(public.to_hex()) == public
    assert hash(PublicKey.from_hex(public.to_hex())) == hash(public)
    assert PrivateKey.from_base64(private.to_base64()).public_key() == public
    # stored clamped, like wg genkey
    assert private.raw[0] & 7 == 0 and private.raw[31] & 0x80 == 0 and private.raw[31] & 0x40
    assert PublicKey(b"\1" * 32) != PresharedKey(b"\1" * 32)


@pytest.mark.parametrize("text", ["", "abc", "!" * 44, "AAAA"])
def test_bad_base64_keys_raise_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        PublicKey.from_base64(text)
