"""Child processes that do not outlive the command that started them."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def die_with_parent() -> None:
    """In a child process: be sent SIGTERM when its parent dies (even by SIGKILL), instead
    of running on with nobody to read its work. Safe between fork and exec (the C library
    was loaded before the fork: no locks taken here); a no-op off Linux."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
