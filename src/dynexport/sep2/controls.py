"""The plain data the utility's controls boil down to, shared by the XML models and the scheduler.

These are what `resources` produces from DERControl / DefaultDERControl XML and what `schedule`
decides between. Times are integers: seconds since the Unix epoch in the *server's* clock (the
clock offset is applied by whoever asks the scheduler a question, never baked into the data).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import IntEnum, StrEnum
from typing import Any


class ControlType(StrEnum):
    """The quantities a control can set; the scheduler decides each one independently.

    IEEE 2030.5 §12.1.3 resolves overlapping events per control mode: an event that sets only the
    export limit does not end another program's generation limit.
    """

    EXPORT_LIMIT_W = "export_limit_w"  # csipaus:opModExpLimW
    IMPORT_LIMIT_W = "import_limit_w"  # csipaus:opModImpLimW
    GENERATION_LIMIT_W = "generation_limit_w"  # csipaus:opModGenLimW
    LOAD_LIMIT_W = "load_limit_w"  # csipaus:opModLoadLimW
    STORAGE_TARGET_W = "storage_target_w"  # csipaus:opModStorageTargetW (CSIP-AUS v1.3 only)
    MAX_LIMIT_PCT = "max_limit_pct"  # opModMaxLimW, percent of setMaxW
    CONNECT = "connect"  # opModConnect
    ENERGIZE = "energize"  # opModEnergize


class EventStatus(IntEnum):
    """EventStatus.currentStatus as the server reports it."""

    SCHEDULED = 0
    ACTIVE = 1
    CANCELLED = 2
    CANCELLED_WITH_RANDOMIZATION = 3
    SUPERSEDED = 4


class ResponseStatus(IntEnum):
    """DERControlResponse.status values a client sends (IEEE 2030.5 Table 27).

    252..254 as the CSIP-AUS reference server (envoy-schema ``ResponseType``) names them:
    252 REJECTED_CONTROL_PARAM_NOT_APPLICABLE, 253 REJECTED_INVALID_EVENT,
    254 REJECTED_EVENT_RECEIVED_LATE.
    """

    RECEIVED = 1
    STARTED = 2
    COMPLETED = 3
    OPTED_OUT = 4
    OPTED_IN = 5
    CANCELLED = 6
    SUPERSEDED = 7
    REJECTED_NOT_APPLICABLE = 252
    """The event's control parameters are not applicable to this device: it cannot perform it."""
    REJECTED_INVALID = 253
    REJECTED_LATE = 254


@dataclass(frozen=True)
class ControlBase:
    """DERControlBase: each field None when the control does not set it.

    Power limits are in watts (ActivePower value × 10^multiplier already applied).
    ``ramp_tms`` is in hundredths of a second, as on the wire.
    """

    export_limit_w: float | None = None
    import_limit_w: float | None = None
    generation_limit_w: float | None = None
    load_limit_w: float | None = None
    storage_target_w: float | None = None
    """csipaus:opModStorageTargetW (v1.3): the aggregate output the site's storage should aim
    for, in W; positive discharges (output), negative charges."""
    max_limit_pct: float | None = None
    connect: bool | None = None
    energize: bool | None = None
    ramp_tms: int | None = None
    unsupported: tuple[str, ...] | None = None
    """DERControlBase elements the server set that dynexport does not model (``opModFixedW``, a
    v1.3 element in the 1.2 namespace...), sorted: kept so the event can be answered honestly.
    None when there are none (a tuple, not a set, so ``vars()`` of a base stays JSON-able)."""

    def get(self, kind: ControlType) -> float | bool | None:
        value: float | bool | None = getattr(self, _FIELD_OF[kind])
        return value

    def types(self) -> frozenset[ControlType]:
        """The control types this base sets (computed once: the scheduler asks very often)."""
        key = id(self)
        hit = _TYPES.get(key)
        if hit is not None and hit[0]() is self:
            return hit[1]
        kinds = frozenset(t for t, name in _FIELD_OF.items() if getattr(self, name) is not None)
        if len(_TYPES) >= _TYPES_MAX:
            _TYPES.clear()
        _TYPES[key] = (weakref.ref(self, functools.partial(_forget_types, key)), kinds)
        return kinds

    def is_empty(self) -> bool:
        return not self.types()

    def merged_over(self, fallback: ControlBase) -> ControlBase:
        """This base's values, with ``fallback`` filling whatever this one leaves unset."""
        values: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "unsupported":
                names = set(self.unsupported or ()) | set(fallback.unsupported or ())
                values[f.name] = tuple(sorted(names)) or None
                continue
            mine = getattr(self, f.name)
            values[f.name] = mine if mine is not None else getattr(fallback, f.name)
        return ControlBase(**values)


_FIELD_OF: dict[ControlType, str] = {t: t.value for t in ControlType}
"""ControlType → ControlBase field name (a plain dict: Enum.value is slow in hot loops)."""
_TYPES: dict[int, tuple[weakref.ref[ControlBase], frozenset[ControlType]]] = {}
_TYPES_MAX = 20_000
"""`ControlBase.types` memo by identity (the scheduler asks each base many times per walk);
kept outside the instance so ``vars(base)`` is exactly its fields. An entry holds its base
weakly and leaves with it (`_forget_types`): every poll parses new bases, and when entries kept
them alive the memo grew with traffic for hours, up to the bound (about 10 MiB of bases nobody
used any more). The bound stays as a backstop (the 10,000 controls the pager accepts, twice)."""


def _forget_types(key: int, ref: weakref.ref[ControlBase]) -> None:
    """Drops the memo entry of a base being freed (its id may be reused from now on)."""
    hit = _TYPES.get(key)
    if hit is not None and hit[0] is ref:
        del _TYPES[key]


# --------------------------------------------------------------------------------------------
# What this appliance performs: one source of truth for responses and DERCapability.

ENFORCED_CONTROLS: frozenset[ControlType] = frozenset(
    {
        ControlType.EXPORT_LIMIT_W,
        ControlType.GENERATION_LIMIT_W,
        ControlType.MAX_LIMIT_PCT,
        ControlType.CONNECT,
        ControlType.ENERGIZE,
    }
)
"""The controls dynexport enforces with PV inverters alone (control/law.py ENFORCED_LIMITS, plus
opModMaxLimW, which the app turns into a generation limit of rated W × percent / 100). Import
and load limits need something controllable on the consumption side, so an event that sets
only those (or only controls not modelled at all) cannot be performed: it is answered 252
(`ResponseStatus.REJECTED_NOT_APPLICABLE`), and they are not advertised."""

ENFORCED_CONTROLS_WITH_BATTERY: frozenset[ControlType] = ENFORCED_CONTROLS | frozenset(
    {ControlType.IMPORT_LIMIT_W, ControlType.LOAD_LIMIT_W, ControlType.STORAGE_TARGET_W}
)
"""With a controllable battery configured, import and load limits are enforced too: the law
discharges it (down to the owner's reserve) and stops its charging (docs/control.md); and so is
a CSIP-AUS v1.3 storage target (control/battery.py ``decide_batteries``: toward the target
within the reserve, the rates and the export/import limits in force)."""


def enforced_controls(battery_configured: bool) -> frozenset[ControlType]:
    """What this site enforces, for responses and DERCapability: the app passes it in (a
    battery in the configuration adds import and load limits)."""
    return ENFORCED_CONTROLS_WITH_BATTERY if battery_configured else ENFORCED_CONTROLS


DOE_MODE_BITS: Mapping[ControlType, int] = {
    ControlType.EXPORT_LIMIT_W: 0x01,
    ControlType.IMPORT_LIMIT_W: 0x02,
    ControlType.GENERATION_LIMIT_W: 0x04,
    ControlType.LOAD_LIMIT_W: 0x08,
}
"""csipaus:DOEControlType bits (csipaus-ext.xsd): 0 opModExpLimW, 1 opModImpLimW,
2 opModGenLimW, 3 opModLoadLimW."""

DER_CONTROL_TYPE_BITS: Mapping[ControlType, int] = {
    ControlType.CONNECT: 1 << 2,
    ControlType.ENERGIZE: 1 << 3,
    ControlType.MAX_LIMIT_PCT: 1 << 20,
}
"""IEEE 2030.5 DERControlType bits (sep.xsd) of the controls modelled here: 2 opModConnect,
3 opModEnergize, 20 opModMaxLimW."""


VPP_MODE_BITS: Mapping[ControlType, int] = {ControlType.STORAGE_TARGET_W: 0x01}
"""csipaus:vppModesSupported / vppModesEnabled bits (CSIP-AUS v1.3, HexBinary8): bit 0
opModStorageTargetW; the others are reserved."""


def vpp_modes_supported(enforced: Iterable[ControlType] = ENFORCED_CONTROLS) -> int:
    """csipaus:vppModesSupported (and vppModesEnabled): the v1.3 VPP controls enforced."""
    return sum(VPP_MODE_BITS.get(kind, 0) for kind in set(enforced))


def doe_modes_supported(enforced: Iterable[ControlType] = ENFORCED_CONTROLS) -> int:
    """csipaus:doeModesSupported (and doeModesEnabled) of DERCapability: DOE limits enforced."""
    return sum(DOE_MODE_BITS.get(kind, 0) for kind in set(enforced))


def modes_supported(enforced: Iterable[ControlType] = ENFORCED_CONTROLS) -> int:
    """DERCapability.modesSupported (DERControlType bits) for the IEEE controls enforced."""
    return sum(DER_CONTROL_TYPE_BITS.get(kind, 0) for kind in set(enforced))


def can_perform(base: ControlBase, enforced: frozenset[ControlType] = ENFORCED_CONTROLS) -> bool:
    """Whether an event with this DERControlBase sets at least one control this site enforces.

    One that does is performed for those controls (responses 2, 3); one that sets only others
    (import/load limits, opModFixedW, volt-var...) is answered "not applicable" (252)."""
    return not base.types().isdisjoint(enforced)


@dataclass(frozen=True)
class DERControlEvent:
    """One DERControl event, with what the scheduler needs of the program that holds it."""

    mrid: str
    """Hex mRID, uppercase; the identity of an event across polls."""
    creation_time: int
    start: int
    duration: int
    base: ControlBase
    primacy: int
    """The owning DERProgram's primacy: lower wins."""
    program_href: str = ""
    href: str | None = None
    status: EventStatus = EventStatus.SCHEDULED
    randomize_start: int = 0
    randomize_duration: int = 0
    response_required: int = 0
    """Bit flags: 0x01 response at receipt... (IEEE 2030.5 responseRequired, hexBinary8)."""
    reply_to: str | None = None
    description: str = ""

    @property
    def end(self) -> int:
        return self.start + self.duration


@dataclass(frozen=True)
class DefaultControl:
    """DefaultDERControl of one program: what applies when no event is active."""

    base: ControlBase
    primacy: int
    program_href: str = ""
    mrid: str = ""
    set_grad_w: int | None = None
    """Ramp rate in hundredths of a percent of max W per second (27 = 0.27 %/s)."""
    es_delay: int | None = None
    es_randomize: int | None = None


@dataclass(frozen=True)
class ProgramControls:
    """Everything one DERProgram contributes: its events and its default."""

    href: str
    primacy: int
    events: tuple[DERControlEvent, ...] = ()
    default: DefaultControl | None = None
    mrid: str = ""
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)
