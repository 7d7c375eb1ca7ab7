"""Whether a process still runs, for the files a process leaves behind (pid file, spill claims, shared metrics)."""

from __future__ import annotations

import os


def is_running(pid: int | str) -> bool:
    """True while `pid` names a live process (ours or another user's); False for a gone one or a non-number.

    Signal 0 checks existence without signalling: PermissionError means it runs under another user.
    """
    if isinstance(pid, str):
        if not pid.isascii() or not pid.isdigit():
            return False
        pid = int(pid)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # alive, and someone else's
    return True
