"""Shared pieces of the sans-IO protocol cores of tunkit.proxy (h11 style).

:data:`NEED_DATA` is the explicit "feed me more bytes" return value of every ``next_event()``.
"""

from __future__ import annotations

from typing import Final


class NeedData:
    """More bytes from the peer are needed before the next event."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()
