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

A reading frozen while nothing else moves is found by the meter's own energy counters (TotWhImp +
TotWhExp): power flowing moves them, a frozen gateway serves them frozen too. A power reading
unchanged to the last digit, whose counters have not moved for ``FROZEN_ENERGY_AFTER_S`` while it
says at least ``FROZEN_ENERGY_WH`` (and three of the counters' smallest steps seen) went through
the meter meanwhile, is frozen. Both must stand still: a live meter with broken counters still
moves its power reading, and a live meter whose power stays on one value (a coarse register, a
steady site) still moves its counters. A reading frozen near 0 W moves the counters too slowly to
be found (the harm is then bounded by what the household's load falls by meanwhile), and a meter
without counters (absent, or 0: "not implemented") is not checked this way (docs/control.md).
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


FROZEN_ENERGY_AFTER_S = 120.0
"""Counters and power reading both unchanged for this long, at least: meters update their energy
registers every second or few; two minutes is far beyond that."""

FROZEN_ENERGY_WH = 30.0
"""...while the reading says this much energy went through (|W| × time): 30 counter steps of
1 Wh, three of 10 Wh (a coarse TotWh_SF). A step seen larger raises it (three steps)."""


@dataclass(frozen=True)
class MeterWatch:
    """What the watch knows of the meter's current reading (its value, since when it has not
    changed, the span of the site's output meanwhile) and of its energy counters (their sum,
    since when it has not changed, the smallest step seen)."""

    value: float | None = None
    since: float | None = None
    der_low_w: float = math.inf
    der_high_w: float = -math.inf
    frozen: bool = False
    """The reading is frozen: keep it out of the control average until it changes."""
    energy_wh: float | None = None
    energy_since: float | None = None
    step_wh: float | None = None
    why: str = ""
    """How it was found: "output" (the site's output moved under it) or "energy" (its counters
    stood still while it said power flowed)."""


def _energy_frozen(watch: MeterWatch, t: float) -> bool:
    if watch.value is None or watch.since is None or watch.energy_since is None:
        return False
    still_s = t - max(watch.since, watch.energy_since)
    through_wh = abs(watch.value) * still_s / 3600.0
    need_wh = max(FROZEN_ENERGY_WH, 3.0 * (watch.step_wh or 0.0))
    return still_s >= FROZEN_ENERGY_AFTER_S and through_wh >= need_wh


def watch_meter(
    watch: MeterWatch,
    t: float,
    site_w: float,
    der_w: float | None,
    energy_wh: float | None = None,
) -> MeterWatch:
    """The watch after a new reading ``site_w`` at ``t``, with the site's output ``der_w`` read
    then (None: not known, which does not count as movement) and the meter's energy counters'
    sum ``energy_wh`` (None: not implemented)."""
    energy = energy_wh if energy_wh is not None and math.isfinite(energy_wh) else None
    # The counters: since when they stand still, and the smallest step they have made.
    step = watch.step_wh
    if energy is None:
        energy_since = None
    elif watch.energy_wh is None or watch.energy_since is None or energy != watch.energy_wh:
        if watch.energy_wh is not None and energy > watch.energy_wh:
            moved = energy - watch.energy_wh
            step = moved if step is None else min(step, moved)
        energy_since = t
    else:
        energy_since = watch.energy_since
    der = der_w if der_w is not None and math.isfinite(der_w) else None
    if watch.value is None or site_w != watch.value or watch.since is None:
        low, high = (der, der) if der is not None else (math.inf, -math.inf)
        return MeterWatch(site_w, t, low, high, False, energy, energy_since, step)
    low, high = watch.der_low_w, watch.der_high_w
    if der is not None:
        low, high = min(low, der), max(high, der)
    new = replace(
        watch,
        der_low_w=low,
        der_high_w=high,
        energy_wh=energy,
        energy_since=energy_since,
        step_wh=step,
    )
    # Both conditions only grow truer while the reading (and the counters) stand still, so the
    # watch stays frozen until one of them moves.
    if t - watch.since >= FROZEN_AFTER_S and high - low >= FROZEN_DER_SPAN_W:
        return replace(new, frozen=True, why="output")
    if _energy_frozen(new, t):
        return replace(new, frozen=True, why="energy")
    return replace(new, frozen=False, why="")
