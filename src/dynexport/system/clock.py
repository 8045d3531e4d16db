"""Whether the kernel's clock has been set by a time server, asked without privileges.

A Raspberry Pi has no real-time clock: after a power cut it starts from the last time saved
(systemd-timesyncd's clock file), behind by however long the power was off, until NTP sets it.
The utility's schedule is in server time, so until the clock is known to be right the link
cannot tell which of its stored events is in force (``sep2/client.py``, docs/sep2.md "A clock
that is not known to be right"). ``adjtimex`` asked for nothing (modes 0) returns TIME_ERROR
while the kernel's clock is unsynchronised (STA_UNSYNC), whichever daemon disciplines it
(systemd-timesyncd, chrony, ntpd); ``timedatectl``'s "System clock synchronized" is the same bit.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

TIME_ERROR = 5
"""adjtimex's return value while the clock is not synchronised."""

_ADJTIMEX: dict[str, Any] = {}
"""libc's adjtimex, looked up once (asked at every control decision until the time is known)."""

_TIMEX_BYTES = 512
"""Room for ``struct timex`` (208 bytes on 64-bit Linux, less on 32-bit), zeroed: modes 0 asks
the kernel for nothing but its state."""


def kernel_clock_synchronised() -> bool | None:
    """True: a time server has set the clock and keeps it; False: not (yet, or no longer);
    None: this system cannot say (not Linux, or the call failed), which callers treat as not
    synchronised."""
    if not sys.platform.startswith("linux"):
        return None
    adjtimex = _ADJTIMEX.get(sys.platform)
    if adjtimex is None:
        try:
            adjtimex = _ADJTIMEX[sys.platform] = ctypes.CDLL(None, use_errno=True).adjtimex
        except (OSError, AttributeError):
            return None
    state = int(adjtimex(ctypes.create_string_buffer(_TIMEX_BYTES)))
    if state < 0:
        return None
    return state != TIME_ERROR
