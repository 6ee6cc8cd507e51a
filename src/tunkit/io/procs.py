"""Process liveness checks for crash recovery (is the owner of a state file still running?)."""

from __future__ import annotations

import os


def pid_alive(pid: int | None) -> bool:
    """True if a process with ``pid`` exists (even one we may not signal); False for None/0."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
