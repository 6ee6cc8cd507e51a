"""Anti-replay sliding window for transport counters (RFC 6479; whitepaper §5.4.6).

The window is a ring of 128 u64 blocks (8192 bits) of which 8128 are usable, the same
as the kernel and wireguard-go: a counter more than 8128 behind the highest seen is too old.
:meth:`ReplayWindow.check_and_update` must only be called with counters from packets whose
AEAD tag already verified; otherwise an attacker could advance the window.

Not safe for concurrent use.  A fresh window accepts every counter below ``limit``.
"""

from __future__ import annotations

from .constants import REJECT_AFTER_MESSAGES

_BLOCK_BITS_LOG = 6
_BLOCK_BITS = 1 << _BLOCK_BITS_LOG  # 64
_RING_BLOCKS = 1 << 7  # 128 blocks = 8192 bits
_BLOCK_MASK = _RING_BLOCKS - 1
_BIT_MASK = _BLOCK_BITS - 1
WINDOW_SIZE = (_RING_BLOCKS - 1) * _BLOCK_BITS  # 8128


class ReplayWindow:
    __slots__ = ("_last", "_ring")

    def __init__(self) -> None:
        self._last = 0
        self._ring = [0] * _RING_BLOCKS

    def reset(self) -> None:
        self._last = 0
        self._ring = [0] * _RING_BLOCKS

    def check_and_update(self, counter: int, limit: int = REJECT_AFTER_MESSAGES) -> bool:
        """Mark ``counter`` seen; False if it is a replay, too old, or ``>= limit``."""
        if counter >= limit:
            return False
        ring = self._ring
        index_block = counter >> _BLOCK_BITS_LOG
        last = self._last
        if counter > last:
            current = last >> _BLOCK_BITS_LOG
            if index_block != current:  # entering new blocks: clear them
                diff = min(index_block - current, _RING_BLOCKS)
                for i in range(current + 1, current + diff + 1):
                    ring[i & _BLOCK_MASK] = 0
            self._last = counter
        elif last - counter > WINDOW_SIZE:
            return False
        index_block &= _BLOCK_MASK
        bit = 1 << (counter & _BIT_MASK)
        old = ring[index_block]
        if old & bit:
            return False
        ring[index_block] = old | bit
        return True
