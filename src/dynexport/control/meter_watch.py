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

A reading frozen while nothing else moves is found by the meter's energy counters: power that
flows moves the counter of its direction (TotWhImp while importing, TotWhExp while exporting), and a
frozen gateway serves it frozen too. A reading unchanged to the last digit whose counter has not
moved for ``FROZEN_ENERGY_AFTER_S`` (or twice the longest the counter was seen to take to move when
several of its steps had gone through: a register refreshed every few minutes), while the reading
says at least ``FROZEN_ENERGY_WH`` went through (and three of the counter's steps: its register's
resolution, or its smallest move seen), is frozen. Both must stand still: a live meter with broken
counters still moves its power reading, a live meter whose power register repeats (coarse, a
steady site) still moves its counter, and a counter that moves restarts the watch. Not found: a
reading frozen near 0 W (it moves the counter too slowly; the harm is then bounded by what the
household's load falls by meanwhile), or a meter without the counter of that direction (absent,
or 0: "not implemented"). See docs/control.md.
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
"""Counter and power reading both unchanged for this long, at least: meters update their energy
registers every second or few; two minutes is far beyond that."""

FROZEN_ENERGY_WH = 30.0
"""...while the reading says this much energy went through (|W| × time): 30 counter steps of
1 Wh, three of 10 Wh. A coarser counter raises it (three of its steps)."""

REFRESH_CAP_S = 900.0
"""The longest counter refresh learned (twice it is the stillness needed): 15 minutes."""


@dataclass(frozen=True)
class Counters:
    """A meter's energy counters as read (Wh; None: not implemented) and their resolution."""

    import_wh: float | None = None
    export_wh: float | None = None
    step_wh: float | None = None


@dataclass(frozen=True)
class MeterWatch:
    """What the watch knows of the meter's current reading (its value, since when neither it nor
    its counter has changed, the span of the site's output meanwhile) and of its energy counter
    (the one of the reading's direction: its value, since when it has not moved, how coarse it is
    and how slowly it has been seen to refresh)."""

    value: float | None = None
    since: float | None = None
    der_low_w: float = math.inf
    der_high_w: float = -math.inf
    frozen: bool = False
    """The reading is frozen: keep it out of the control average until it changes."""
    why: str = ""
    """How it was found: "output" (the site's output moved under it) or "energy" (its counter
    stood still while it said power flowed)."""
    energy_wh: float | None = None
    energy_since: float | None = None
    step_wh: float | None = None
    """The counter's step: the largest of its register's resolution and its smallest move seen."""
    refresh_s: float = 0.0
    """The longest the counter took to move when several of its steps had gone through."""
    last_t: float | None = None
    unbroken: bool = True
    """No poll gap longer than ``POLL_GAP_S`` since the counter last moved (a move after an
    outage of the link teaches nothing about the counter)."""


POLL_GAP_S = 10.0


def _energy_frozen(w: MeterWatch, t: float) -> bool:
    if w.value is None or w.since is None or w.energy_since is None:
        return False
    still_s = t - max(w.since, w.energy_since)
    need_wh = max(FROZEN_ENERGY_WH, 3.0 * (w.step_wh or 0.0))
    need_s = max(FROZEN_ENERGY_AFTER_S, 2.0 * w.refresh_s)
    return still_s >= need_s and abs(w.value) * still_s / 3600.0 >= need_wh


def _direction(w: float) -> int:
    return 1 if w > 0 else -1 if w < 0 else 0


def watch_meter(
    watch: MeterWatch,
    t: float,
    site_w: float,
    der_w: float | None,
    counters: Counters | None = None,
) -> MeterWatch:
    """The watch after a new reading ``site_w`` at ``t``, with the site's output ``der_w`` read
    then (None: not known, which does not count as movement) and the meter's energy ``counters``
    (None: not read)."""
    c = counters or Counters()
    energy = c.import_wh if site_w > 0 else c.export_wh if site_w < 0 else None
    energy = energy if energy is not None and math.isfinite(energy) and energy > 0 else None
    resolution = c.step_wh if c.step_wh is not None and math.isfinite(c.step_wh) else None
    step, refresh = watch.step_wh, watch.refresh_s
    if resolution is not None and resolution > 0:
        step = max(step or 0.0, resolution)
    same_way = watch.value is not None and _direction(watch.value) == _direction(site_w)
    unbroken = watch.unbroken and watch.last_t is not None and t - watch.last_t <= POLL_GAP_S
    moved = False
    if energy is None:
        energy_since = None
    elif not same_way or watch.energy_wh is None or watch.energy_since is None:
        energy_since, unbroken = t, True
    elif energy != watch.energy_wh:
        moved = energy > watch.energy_wh
        if moved and unbroken and watch.value is not None and not watch.frozen:
            took_s = t - watch.energy_since
            through_wh = abs(watch.value) * took_s / 3600.0
            if through_wh >= 3.0 * (step or 1.0):  # its refresh, not its resolution
                refresh = min(max(refresh, took_s), REFRESH_CAP_S)
            else:
                step = max(min(step or math.inf, energy - watch.energy_wh), resolution or 0.0)
        energy_since, unbroken = t, True
    else:
        energy_since = watch.energy_since
    der = der_w if der_w is not None and math.isfinite(der_w) else None
    if watch.value is None or site_w != watch.value or watch.since is None or moved:
        # A new reading, or a counter that moved: the meter is live; start again from here.
        low, high = (der, der) if der is not None else (math.inf, -math.inf)
        return MeterWatch(
            value=site_w, since=t, der_low_w=low, der_high_w=high, energy_wh=energy,
            energy_since=energy_since, step_wh=step, refresh_s=refresh, last_t=t,
            unbroken=unbroken,
        )  # fmt: skip
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
        refresh_s=refresh,
        last_t=t,
        unbroken=unbroken,
    )
    # Both conditions only grow truer while the reading and the counter stand still, so the
    # watch stays frozen until one of them moves.
    if t - watch.since >= FROZEN_AFTER_S and high - low >= FROZEN_DER_SPAN_W:
        return replace(new, frozen=True, why="output")
    if _energy_frozen(new, t):
        return replace(new, frozen=True, why="energy")
    return replace(new, frozen=False, why="")
