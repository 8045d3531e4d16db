"""Whether the kernel's clock has been set by a time server, asked without privileges.

A Raspberry Pi has no real-time clock: after a power cut it starts from the last time saved
(systemd-timesyncd's clock file), behind by however long the power was off, until NTP sets it.
The utility's schedule is in server time, so until the clock is known to be right the link
cannot tell which of its stored events is in force (``sep2/client.py``, docs/sep2.md "A clock
that is not known to be right"). ``adjtimex`` asked for nothing (modes 0) returns TIME_ERROR
while the kernel's clock is unsynchronised (STA_UNSYNC), whichever daemon disciplines it
(systemd-timesyncd, chrony, ntpd); ``timedatectl``'s "System clock synchronized" is the same bit.

The appliance's service runs with ``ProtectClock=yes`` (systemd/dynexport.service), whose
seccomp filter refuses adjtimex outright, even the read-only call. There the answer is
systemd-timesyncd's own: it creates ``/run/systemd/timesync/synchronized`` once it has set the
clock (systemd 239 and later; the image's time daemon, docs/image.md), and that file can be
read by anyone.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

TIME_ERROR = 5
"""adjtimex's return value while the clock is not synchronised."""

_ADJTIMEX: dict[str, Any] = {}
"""libc's adjtimex, looked up once (asked at every control decision until the time is known)."""

_TIMEX_BYTES = 512
"""Room for ``struct timex`` (208 bytes on 64-bit Linux, less on 32-bit), zeroed: modes 0 asks
the kernel for nothing but its state."""


TIMESYNCD_SYNCHRONISED = Path("/run/systemd/timesync/synchronized")
"""Created by systemd-timesyncd once it has set the clock from a time server (this boot)."""


def kernel_clock_synchronised(timesyncd_flag: Path = TIMESYNCD_SYNCHRONISED) -> bool | None:
    """True: a time server has set the clock and keeps it; False: not (yet, or no longer);
    None: this system cannot say (not Linux, or adjtimex refused and no timesyncd flag), which
    callers treat as not synchronised.

    The kernel's state when adjtimex answers; where it is refused (``ProtectClock=``), whether
    systemd-timesyncd has said it set the clock."""
    if not sys.platform.startswith("linux"):
        return None
    state = _adjtimex_state()
    if state is not None:
        return state != TIME_ERROR
    try:
        timesyncd_flag.stat()
    except OSError:
        return None
    return True


def _adjtimex_state() -> int | None:
    """adjtimex's answer to "nothing to change", or None where it cannot be asked."""
    adjtimex = _ADJTIMEX.get(sys.platform)
    if adjtimex is None:
        try:
            adjtimex = _ADJTIMEX[sys.platform] = ctypes.CDLL(None, use_errno=True).adjtimex
        except (OSError, AttributeError):
            return None
    state = int(adjtimex(ctypes.create_string_buffer(_TIMEX_BYTES)))
    return None if state < 0 else state
