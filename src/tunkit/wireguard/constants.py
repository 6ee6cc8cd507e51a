"""WireGuard protocol constants, named and grouped as in the whitepaper.

Section numbers refer to "WireGuard: Next Generation Kernel Network Tunnel" (Donenfeld),
revision e2da747.  Times are seconds (float), sizes are bytes.  Nothing here is tunable:
changing a value breaks interoperability with wireguard-go and the kernel.
"""

from __future__ import annotations

from typing import Final

# --- §5.4 Protocol & cryptography: fixed strings -----------------------------------------
CONSTRUCTION: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"  # §5.4, 37 bytes
IDENTIFIER: Final = b"WireGuard v1 zx2c4 Jason@zx2c4.com"  # §5.4, 34 bytes
LABEL_MAC1: Final = b"mac1----"  # §5.4.4
LABEL_COOKIE: Final = b"cookie--"  # §5.4.7

# --- §5.4 message types and sizes ---------------------------------------------------------
MESSAGE_INITIATION: Final = 1  # §5.4.2
MESSAGE_RESPONSE: Final = 2  # §5.4.3
MESSAGE_COOKIE_REPLY: Final = 3  # §5.4.7
MESSAGE_TRANSPORT: Final = 4  # §5.4.6

INITIATION_SIZE: Final = 148  # §5.4.2
RESPONSE_SIZE: Final = 92  # §5.4.3
COOKIE_REPLY_SIZE: Final = 64  # §5.4.7
TRANSPORT_HEADER_SIZE: Final = 16  # §5.4.6: type+reserved, receiver, counter
TRANSPORT_MIN_SIZE: Final = 32  # §5.4.6: header + empty payload's 16-byte tag (a keepalive)
KEEPALIVE_SIZE: Final = TRANSPORT_MIN_SIZE  # §6.5: a keepalive is an empty transport message

KEY_SIZE: Final = 32  # §5.4: Curve25519 keys, symmetric keys, hashes
TAG_SIZE: Final = 16  # §5.4: Poly1305 tag
MAC_SIZE: Final = 16  # §5.4.4: mac1 / mac2 are keyed BLAKE2s-128
TIMESTAMP_SIZE: Final = 12  # §5.4.2: TAI64N
COOKIE_SIZE: Final = 16  # §5.4.7
COOKIE_NONCE_SIZE: Final = 24  # §5.4.7: XChaCha20-Poly1305 nonce
PADDING_MULTIPLE: Final = 16  # §5.4.6: plaintext is zero-padded to a multiple of 16

# --- §6.1 Timers & messages (Table: "Constant / Value") -----------------------------------
REKEY_AFTER_MESSAGES: Final = 2**60  # §6.1
REJECT_AFTER_MESSAGES: Final = 2**64 - 2**13 - 1  # §6.1
REKEY_AFTER_TIME: Final = 120.0  # §6.1
REJECT_AFTER_TIME: Final = 180.0  # §6.1
REKEY_ATTEMPT_TIME: Final = 90.0  # §6.1
REKEY_TIMEOUT: Final = 5.0  # §6.1
KEEPALIVE_TIMEOUT: Final = 10.0  # §6.1

# §6.1 / §6.4: retries are jittered by up to 1/3 s (wireguard-go and the kernel: 0..333 ms).
REKEY_TIMEOUT_JITTER_MAX: Final = 0.333
# §6.4: the number of initiations in REKEY_ATTEMPT_TIME (wireguard-go's MaxTimerHandshakes).
MAX_TIMER_HANDSHAKES: Final = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
# §6.1 / §6.3: receive-side rekey ("last minute") threshold for the initiator.
REKEY_ON_RECEIVE_AFTER_TIME: Final = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
# §6.3: all ephemeral keys are erased after this long without a new handshake.
ZERO_KEYS_AFTER_TIME: Final = 3 * REJECT_AFTER_TIME

# --- §5.3 / §5.4.7 DoS mitigation ---------------------------------------------------------
COOKIE_SECRET_MAX_AGE: Final = 120.0  # §5.4.7: the responder rotates its cookie secret
COOKIE_REFRESH_TIME: Final = 120.0  # §6.6: a received cookie is used for mac2 this long
# Not in the whitepaper (§5.1 only asks for replay protection): wireguard-go's
# HandshakeInitationRate, at most 50 accepted initiations per second per peer.
INITIATIONS_PER_SECOND: Final = 50
# §5.3 asks for rate limiting under load; the numbers are wireguard-go's ratelimiter.
RATELIMIT_PACKETS_PER_SECOND: Final = 20
RATELIMIT_BURST: Final = 5
RATELIMIT_GC_INTERVAL: Final = 1.0

# --- queueing: §6.4 queues packets while handshaking; the bound is wireguard-go's -------------
MAX_STAGED_PACKETS: Final = 128
