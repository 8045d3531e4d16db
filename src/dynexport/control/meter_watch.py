"""A meter that answers with a frozen reading: a gateway serving its last values.

A Modbus gateway that has lost its meter (an RS485 link to it broken, the meter restarting) often
keeps answering with the last values it had. Every poll then succeeds, so the meter never looks
stale, and the controller trusts a reading that no longer moves: frozen on import, it raised the
inverters to their full output while the site exported it all.

A live meter's power reading is never the same to the last digit for long while the site's own
output moves by hundreds of watts under it. So a reading unchanged for ``FROZEN_AFTER_S`` while
the inverters' and batteries' output spanned ``FROZEN_DER_SPAN_W`` or more is taken as frozen:
the app then keeps it out of the control average (the fail-safe follows once it is stale), until
the reading moves again. Pure: the app feeds it each new reading with the output it read then.

A reading frozen while nothing else moves is not found this way: the controller then holds what
it had, which the frozen reading called right, so the harm is bounded by what the household's
load falls by meanwhile (docs/control.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

FROZEN_AFTER_S = 15.0
"""A reading unchanged for this long, at least: a meter that updates its registers every few
seconds (the slowest seen) shows the same value over several polls, which is not a fault."""

FROZEN_DER_SPAN_W = 200.0
"""...while the site's output moved by this much under it (W, highest less lowest): far beyond
a meter's resolution and noise, so a live meter cannot have stayed on one value."""


@dataclass(frozen=True)
class MeterWatch:
    """What the watch knows of the meter's current reading (its value, since when it has not
    changed, the span of the site's output meanwhile)."""

    value: float | None = None
    since: float | None = None
    der_low_w: float = math.inf
    der_high_w: float = -math.inf
    frozen: bool = False
    """The reading is frozen: keep it out of the control average until it changes."""


def watch_meter(watch: MeterWatch, t: float, site_w: float, der_w: float | None) -> MeterWatch:
    """The watch after a new reading ``site_w`` at ``t``, with the site's output ``der_w`` read
    then (None: not known, which does not count as movement)."""
    der = der_w if der_w is not None and math.isfinite(der_w) else None
    if watch.value is None or site_w != watch.value or watch.since is None:
        if der is None:
            return MeterWatch(site_w, t)
        return MeterWatch(site_w, t, der, der)
    low, high = watch.der_low_w, watch.der_high_w
    if der is not None:
        low, high = min(low, der), max(high, der)
    frozen = watch.frozen or (t - watch.since >= FROZEN_AFTER_S and high - low >= FROZEN_DER_SPAN_W)
    return replace(watch, der_low_w=low, der_high_w=high, frozen=frozen)
