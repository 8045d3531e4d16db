"""Where the site's limits come from, and how they combine: the most restrictive wins.

Three sources can limit the site: the utility (a plain snapshot of its active control, converted
by the caller so this module stays independent of the SEP2 code), the installer's fixed limits in
the configuration, and time-of-day windows in the configuration (two-way tariffs). Each effective
limit remembers which source set it, so the status page and the logs can say *why* the site is
limited, not just that it is.

None always means "no limit". Watts are site totals; positive numbers.

One value is not a limit: the utility's storage target (CSIP-AUS v1.3 opModStorageTargetW, the
aggregate output the site's batteries should aim for, + discharge / − charge). It has one source
(the utility's control in force) and is carried beside the limits with that source, so the law
can follow it (control/battery.py ``decide_batteries``) within the limits, which always win.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time

POWER_KEYS: tuple[tuple[str, str], ...] = (
    ("exportW", "export_w"),
    ("generationW", "generation_w"),
    ("importW", "import_w"),
    ("loadW", "load_w"),
)
"""JSON key → attribute name of the four power limits, in the order they are reported."""

UTILITY_SOURCE = "utility"
FALLBACK_LABEL = "utility fallback"
"""The source name for the fallback export limit the app applies when a utility is configured
but has no usable schedule (fail closed). It starts with "utility" so that the status says the
limit is the utility's business, but it is not the utility's control: no rampTms applies to it,
and a change to or from it is never slowed by the utility's ramps."""


def is_fallback_source(source: str) -> bool:
    """A utility-side label that is the local fallback, not a control the utility sent."""
    return source.startswith(UTILITY_SOURCE) and "fallback" in source


def is_utility_source(source: str) -> bool:
    """A limit set by a control the utility sent (its label starts with "utility")."""
    return source.startswith(UTILITY_SOURCE) and not is_fallback_source(source)


_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class LimitsConfigError(ValueError):
    """Problems in the ``limits`` configuration, each naming its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class UtilityLimits:
    """The utility's active control as plain data (what the SEP2 scheduler decided is in force).

    ``ramp_tms`` is in hundredths of a second and ``set_grad_w`` in hundredths of a percent of
    the site's maximum W per second, both exactly as on the wire, so no unit is converted twice.
    """

    export_w: float | None = None
    import_w: float | None = None
    generation_w: float | None = None
    load_w: float | None = None
    connect: bool | None = None
    energize: bool | None = None
    ramp_tms: int | None = None
    """The export limit's rampTms (None: absent, so setGradW; 0: a step)."""
    generation_ramp_tms: int | None = None
    """The generation limit's rampTms (opModGenLimW or opModMaxLimW; each limit has its own)."""
    set_grad_w: int | None = None
    storage_target_w: float | None = None
    """csipaus:opModStorageTargetW in force (W, + discharge, − charge); None: none."""
    label: str = UTILITY_SOURCE
    """The source name reported for limits this control sets; it should start with "utility".
    ``FALLBACK_LABEL`` marks the fallback limit (no utility schedule): its ramps are ignored."""


@dataclass(frozen=True)
class TimeWindow:
    """Limits that apply every day between two local times; ``start`` > ``end`` crosses midnight."""

    start_min: int
    end_min: int
    export_w: float | None = None
    generation_w: float | None = None
    import_w: float | None = None
    load_w: float | None = None

    @property
    def name(self) -> str:
        return f"window {_hhmm(self.start_min)}-{_hhmm(self.end_min)}"

    def contains(self, minute: int) -> bool:
        """Half-open [start, end): at exactly ``end`` the next window (or none) takes over."""
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min


@dataclass(frozen=True)
class LimitsConfig:
    """The installer's ``limits`` key: fixed limits plus time-of-day windows."""

    export_w: float | None = None
    generation_w: float | None = None
    import_w: float | None = None
    load_w: float | None = None
    connect: bool = True
    windows: tuple[TimeWindow, ...] = ()


@dataclass(frozen=True)
class EffectiveLimits:
    """What the site must obey now. ``sources`` maps each set field name to who set it."""

    export_w: float | None = None
    generation_w: float | None = None
    import_w: float | None = None
    load_w: float | None = None
    connect: bool = True
    energize: bool = True
    ramp_tms: int | None = None
    """The utility's rampTms for the export limit (None: absent; 0: a step)."""
    generation_ramp_tms: int | None = None
    """The utility's rampTms for the generation limit."""
    set_grad_w: int | None = None
    storage_target_w: float | None = None
    """The utility's storage target (W, + discharge, − charge), not a limit: see the module
    docstring. None: no target, the batteries follow the law's own rules."""
    sources: dict[str, str] = field(default_factory=dict, compare=True, hash=False)

    def power(self, name: str) -> float | None:
        value = getattr(self, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, float | int)):
            # an explicit check (the service runs with -OO, which strips asserts): a power
            # limit that is not a number must stop the law, whose fault hook fails safe
            raise TypeError(f"{name} is not a power limit: {value!r}")
        return value


# --------------------------------------------------------------------------------------
# Merging


def merge_limits(
    utility: UtilityLimits | None,
    config: LimitsConfig | None,
    local_time: time | int | None = None,
    *,
    every_window: bool = False,
) -> EffectiveLimits:
    """The most restrictive of every source, each value labelled with its source.

    ``local_time`` is the site's local wall time (a ``datetime.time`` or minutes since local
    midnight); the caller converts, so daylight saving stays out of this pure code. Without it no
    window applies; with ``every_window`` (the time of day is not known: a clock that restarted
    behind after a power cut) every window applies, the strictest reading of all. On a tie the
    earlier source in the order utility, config, windows is named.
    A utility value that is not a finite number is ignored by the merge only if it is +inf; NaN
    or -inf becomes 0 W (fail closed): the utility asked for *something* and it is unreadable.
    """
    candidates: list[tuple[str, Mapping[str, float | None]]] = []
    if utility is not None:
        candidates.append((utility.label, _powers(utility)))
    if config is not None:
        candidates.append(("config", _powers(config)))
        minute = _minute_of(local_time)
        for window in config.windows:
            if every_window or (minute is not None and window.contains(minute)):
                candidates.append((window.name, _powers(window)))

    values: dict[str, float | None] = {}
    sources: dict[str, str] = {}
    for _, attr in POWER_KEYS:
        best: float | None = None
        for source, powers in candidates:
            value = powers[attr]
            if value is not None and (best is None or value < best):
                best = float(value)
                sources[attr] = source
        values[attr] = best

    connect = True
    if config is not None and not config.connect:
        connect = False
        sources["connect"] = "config"
    if utility is not None and utility.connect is False and connect:
        connect = False
        sources["connect"] = utility.label
    energize = True
    if utility is not None and utility.energize is False:
        energize = False
        sources["energize"] = utility.label

    ramp_tms = generation_ramp_tms = set_grad_w = None
    if utility is not None:
        # rampTms shapes the utility's own changes; the fallback is not one (fail closed at once).
        fallback = is_fallback_source(utility.label)
        if utility.ramp_tms is not None and utility.ramp_tms >= 0 and not fallback:
            ramp_tms = utility.ramp_tms
            sources["ramp_tms"] = utility.label
        gen_tms = utility.generation_ramp_tms
        if gen_tms is not None and gen_tms >= 0 and not fallback:
            generation_ramp_tms = gen_tms
            sources["generation_ramp_tms"] = utility.label
        if utility.set_grad_w is not None and utility.set_grad_w > 0:
            set_grad_w = utility.set_grad_w
            sources["set_grad_w"] = utility.label

    storage_target_w = None
    if utility is not None and not is_fallback_source(utility.label):
        target = utility.storage_target_w
        # an unreadable target is no target (the batteries keep the law's own rules); unlike
        # a limit there is no safe side to fail to
        if target is not None and math.isfinite(target):
            storage_target_w = float(target)
            sources["storage_target_w"] = utility.label

    return EffectiveLimits(
        storage_target_w=storage_target_w,
        export_w=values["export_w"],
        generation_w=values["generation_w"],
        import_w=values["import_w"],
        load_w=values["load_w"],
        connect=connect,
        energize=energize,
        ramp_tms=ramp_tms,
        generation_ramp_tms=generation_ramp_tms,
        set_grad_w=set_grad_w,
        sources=sources,
    )


def _powers(obj: UtilityLimits | LimitsConfig | TimeWindow) -> dict[str, float | None]:
    return {attr: _usable(getattr(obj, attr)) for _, attr in POWER_KEYS}


def _usable(value: float | None) -> float | None:
    """+inf is no limit; NaN and -inf fail closed at 0 W (a limit was asked for)."""
    if value is None or math.isfinite(value):
        return value
    return None if value > 0 else 0.0


def _minute_of(local_time: time | int | None) -> int | None:
    if local_time is None:
        return None
    if isinstance(local_time, time):
        return local_time.hour * 60 + local_time.minute
    return int(local_time) % (24 * 60)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


# --------------------------------------------------------------------------------------
# Parsing the ``limits`` configuration key


def parse_limits(raw: object, path: str = "limits") -> LimitsConfig:
    """Validate the ``limits`` object; every problem is collected and names its key path.

    Unknown keys are errors: a misspelt ``exportw`` must never silently mean "no limit".
    """
    problems: list[str] = []
    if raw is None:
        return LimitsConfig()
    if not isinstance(raw, dict):
        raise LimitsConfigError([f"{path}: must be an object, not {_kind(raw)}"])
    allowed = {key for key, _ in POWER_KEYS} | {"connect", "windows"}
    _unknown(raw, allowed, path, problems)
    powers = {attr: _watts(raw.get(key), f"{path}.{key}", problems) for key, attr in POWER_KEYS}
    connect_raw = raw.get("connect", True)
    connect = True
    if isinstance(connect_raw, bool):
        connect = connect_raw
    else:
        problems.append(f"{path}.connect: must be true or false, not {_kind(connect_raw)}")
    windows: list[TimeWindow] = []
    windows_raw = raw.get("windows")
    if windows_raw is not None and not isinstance(windows_raw, list):
        problems.append(f"{path}.windows: must be a list, not {_kind(windows_raw)}")
    elif windows_raw is not None:
        for i, item in enumerate(windows_raw):
            window = _window(item, f"{path}.windows[{i}]", problems)
            if window is not None:
                windows.append(window)
    if problems:
        raise LimitsConfigError(problems)
    return LimitsConfig(connect=connect, windows=tuple(windows), **powers)


def _window(raw: object, path: str, problems: list[str]) -> TimeWindow | None:
    if not isinstance(raw, dict):
        problems.append(f"{path}: must be an object, not {_kind(raw)}")
        return None
    before = len(problems)
    allowed = {key for key, _ in POWER_KEYS} | {"from", "to"}
    _unknown(raw, allowed, path, problems)
    start = _minutes(raw.get("from"), f"{path}.from", problems)
    end = _minutes(raw.get("to"), f"{path}.to", problems)
    powers = {attr: _watts(raw.get(key), f"{path}.{key}", problems) for key, attr in POWER_KEYS}
    if start is not None and end is not None and start == end:
        problems.append(
            f"{path}.to: must differ from from (an empty or all-day window is ambiguous)"
        )
    if all(v is None for v in powers.values()) and len(problems) == before:
        problems.append(f"{path}: must set at least one of exportW, generationW, importW, loadW")
    if len(problems) != before or start is None or end is None:
        return None
    return TimeWindow(start_min=start, end_min=end, **powers)


def _minutes(value: object, path: str, problems: list[str]) -> int | None:
    if not isinstance(value, str) or not (match := _HHMM.match(value)):
        problems.append(f"{path}: must be HH:MM (00:00..23:59), not {_kind(value)}")
        return None
    return int(match.group(1)) * 60 + int(match.group(2))


MAX_WATTS = 1e9
"""No site limit is anywhere near a gigawatt; anything larger is a typing slip."""


def _watts(value: object, path: str, problems: list[str]) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(f"{path}: must be a number of watts or null, not {_kind(value)}")
        return None
    # compared before any float conversion: 10**400 would overflow it
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{path}: must be a number of watts or null, not {_kind(value)}")
        return None
    if value < 0:
        problems.append(f"{path}: must be 0 or more")
        return None
    if value > MAX_WATTS:
        problems.append(f"{path}: must be at most {MAX_WATTS:.0f} W")
        return None
    return float(value)


def _unknown(raw: Mapping[str, object], allowed: set[str], path: str, problems: list[str]) -> None:
    for key in raw:
        if key not in allowed:
            problems.append(f"{path}.{key}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int | float):
        return repr(value)
    return type(value).__name__
