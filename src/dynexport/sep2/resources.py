"""IEEE 2030.5 / CSIP-AUS resources as frozen dataclasses, parsed from and written to XML bytes.

Each resource has a *shape*: its XML attributes and child elements in XSD sequence order. One
reader and one writer walk the shapes, so element order on output is the XSD's by construction
(servers answer HTTP 400 to out-of-order elements) and every resource is parsed the same way.
Sans-I/O: bytes in, dataclasses out, and back.

Units are kept as on the wire (`Scaled` power values, hexBinary flags as ints) except in
DERControlBase, which becomes the shared `controls.ControlBase` in watts and percent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar, cast

from lxml import etree

from dynexport.sep2.controls import (
    ControlBase,
    DefaultControl,
    DERControlEvent,
    EventStatus,
    ProgramControls,
)
from dynexport.sep2.xml import (
    CSIPAUS_NAMESPACES,
    CSIPAUS_NS,
    DEFAULT_MAX_BYTES,
    NS,
    WRONG_NAMESPACE,
    Sep2ParseError,
    format_hex_int,
    format_id,
    key_of,
    next_page_start,
    normalize_id,
    nsmap_for,
    parse_bool,
    parse_hex_int,
    parse_int,
    parse_xml,
    qname,
    split_tag,
)

T = TypeVar("T")
log = logging.getLogger("dynexport.sep2")

# --- value types -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    href: str


@dataclass(frozen=True)
class ListLink:
    href: str
    all: int | None = None


@dataclass(frozen=True)
class Scaled:
    """A value × 10^multiplier quantity (ActivePower, VoltageRMS, ...), exact as on the wire."""

    value: int
    multiplier: int = 0

    @property
    def real(self) -> float:
        if self.multiplier >= 0:
            return float(self.value * 10**self.multiplier)
        return self.value / float(10**-self.multiplier)

    @classmethod
    def from_real(cls, x: float, *, signed: bool = True) -> Scaled:
        """The exact (value, multiplier) pair for ``x`` with value in Int16 (or UInt16) range.

        Prefers multiplier 0 and exact representations; when none is exact, the smallest
        non-negative multiplier that fits (the loss is then below one part in 3000).
        """
        lo, hi = (-32768, 32767) if signed else (0, 65535)
        if not math.isfinite(x) or (not signed and x < 0):
            raise ValueError(
                f"{x} cannot be written as a {'signed' if signed else 'unsigned'} value"
            )
        for m in (*range(10), -1, -2, -3):
            r = round(x / 10**m) if m >= 0 else round(x * 10**-m)
            if lo <= r <= hi and math.isclose(cls(r, m).real, x, rel_tol=1e-12, abs_tol=1e-9):
                return cls(r, m)
        for m in range(10):
            r = round(x / 10**m)
            if lo <= r <= hi:
                return cls(r, m)
        raise ValueError(f"{x} is too large for a power-of-ten quantity")


@dataclass(frozen=True)
class PowerFactor:
    displacement: int
    multiplier: int = 0


@dataclass(frozen=True)
class DateTimeInterval:
    start: int
    duration: int


@dataclass(frozen=True)
class StatusValue:
    """DERStatus sub-status: a value and when it was read (ConnectStatus value is a bit field)."""

    value: int
    date_time: int


@dataclass(frozen=True)
class EventStatusInfo:
    current_status: EventStatus
    date_time: int
    potentially_superseded: bool = False
    potentially_superseded_time: int | None = None
    reason: str | None = None


# --- resources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceCapability:
    href: str | None = None
    poll_rate: int | None = None
    der_program_list_link: ListLink | None = None
    response_set_list_link: ListLink | None = None
    time_link: Link | None = None
    usage_point_list_link: ListLink | None = None
    end_device_list_link: ListLink | None = None
    mirror_usage_point_list_link: ListLink | None = None
    self_device_link: Link | None = None


@dataclass(frozen=True)
class Time:
    current_time: int
    dst_end_time: int
    dst_offset: int
    dst_start_time: int
    quality: int
    tz_offset: int
    local_time: int | None = None
    href: str | None = None
    poll_rate: int | None = None


@dataclass(frozen=True)
class EndDevice:
    sfdi: int
    changed_time: int
    lfdi: str | None = None
    """Uppercase as read; written as 40 uppercase hex digits."""
    device_category: int | None = None
    enabled: bool | None = None
    post_rate: int | None = None
    href: str | None = None
    subscribable: int | None = None
    configuration_link: Link | None = None
    der_list_link: ListLink | None = None
    device_information_link: Link | None = None
    device_status_link: Link | None = None
    log_event_list_link: ListLink | None = None
    function_set_assignments_list_link: ListLink | None = None
    registration_link: Link | None = None
    subscription_list_link: ListLink | None = None
    connection_point_link: Link | None = None
    """csipaus:ConnectionPointLink: where to PUT the NMI."""


@dataclass(frozen=True)
class Registration:
    date_time_registered: int
    pin: int
    href: str | None = None
    poll_rate: int | None = None


@dataclass(frozen=True)
class ConnectionPoint:
    """csipaus:ConnectionPoint; ``connection_point_id`` is the NMI."""

    connection_point_id: str
    href: str | None = None


@dataclass(frozen=True)
class DER:
    href: str | None = None
    subscribable: int | None = None
    associated_der_program_list_link: ListLink | None = None
    associated_usage_point_link: Link | None = None
    current_der_program_link: Link | None = None
    der_availability_link: Link | None = None
    der_capability_link: Link | None = None
    der_settings_link: Link | None = None
    der_status_link: Link | None = None


@dataclass(frozen=True)
class DERCapability:
    """What the DER can do. ``modes_supported``: DERControlType bits; ``doe_modes_supported``:
    CSIP-AUS bits 0 export, 1 import, 2 generation, 3 load limit."""

    modes_supported: int
    rtg_max_w: Scaled
    der_type: int
    doe_modes_supported: int
    href: str | None = None
    rtg_abnormal_category: int | None = None
    rtg_max_a: Scaled | None = None
    rtg_max_ah: Scaled | None = None
    rtg_max_charge_rate_va: Scaled | None = None
    rtg_max_charge_rate_w: Scaled | None = None
    rtg_max_discharge_rate_va: Scaled | None = None
    rtg_max_discharge_rate_w: Scaled | None = None
    rtg_max_v: Scaled | None = None
    rtg_max_va: Scaled | None = None
    rtg_max_var: Scaled | None = None
    rtg_max_var_neg: Scaled | None = None
    rtg_max_wh: Scaled | None = None
    rtg_min_pf_over_excited: PowerFactor | None = None
    rtg_min_pf_under_excited: PowerFactor | None = None
    rtg_min_v: Scaled | None = None
    rtg_normal_category: int | None = None
    rtg_v_nom: Scaled | None = None
    vpp_modes_supported: int | None = None
    """csipaus:vppModesSupported (CSIP-AUS v1.3 only): bit 0 opModStorageTargetW."""


@dataclass(frozen=True)
class DERSettings:
    """``set_grad_w`` in hundredths of a percent of setMaxW per second."""

    set_grad_w: int
    set_max_w: Scaled
    updated_time: int
    href: str | None = None
    subscribable: int | None = None
    modes_enabled: int | None = None
    set_es_delay: int | None = None
    set_es_high_freq: int | None = None
    set_es_high_volt: int | None = None
    set_es_low_freq: int | None = None
    set_es_low_volt: int | None = None
    set_es_ramp_tms: int | None = None
    set_es_random_delay: int | None = None
    set_max_a: Scaled | None = None
    set_max_ah: Scaled | None = None
    set_max_charge_rate_va: Scaled | None = None
    set_max_charge_rate_w: Scaled | None = None
    set_max_discharge_rate_va: Scaled | None = None
    set_max_discharge_rate_w: Scaled | None = None
    set_max_v: Scaled | None = None
    set_max_va: Scaled | None = None
    set_max_var: Scaled | None = None
    set_max_var_neg: Scaled | None = None
    set_max_wh: Scaled | None = None
    set_min_pf_over_excited: PowerFactor | None = None
    set_min_pf_under_excited: PowerFactor | None = None
    set_min_v: Scaled | None = None
    set_soft_grad_w: int | None = None
    set_v_nom: Scaled | None = None
    set_v_ref: Scaled | None = None
    set_v_ref_ofs: Scaled | None = None
    doe_modes_enabled: int | None = None
    vpp_modes_enabled: int | None = None
    """csipaus:vppModesEnabled (CSIP-AUS v1.3 only): bit 0 opModStorageTargetW."""
    set_min_wh: Scaled | None = None
    """csipaus:setMinWh (CSIP-AUS v1.3 only, WattHour): the energy the storage keeps (the
    owner's reserve)."""


@dataclass(frozen=True)
class DERStatus:
    reading_time: int
    href: str | None = None
    subscribable: int | None = None
    alarm_status: int | None = None
    gen_connect_status: StatusValue | None = None
    """Bits: 0 connected, 1 available, 2 operating, 3 test, 4 fault/error."""
    inverter_status: StatusValue | None = None
    local_control_mode_status: StatusValue | None = None
    operational_mode_status: StatusValue | None = None
    state_of_charge_status: StatusValue | None = None
    storage_mode_status: StatusValue | None = None
    stor_connect_status: StatusValue | None = None


@dataclass(frozen=True)
class FunctionSetAssignments:
    mrid: str
    description: str | None = None
    version: int | None = None
    href: str | None = None
    subscribable: int | None = None
    der_program_list_link: ListLink | None = None
    response_set_list_link: ListLink | None = None
    time_link: Link | None = None


@dataclass(frozen=True)
class DERProgram:
    mrid: str
    primacy: int
    description: str | None = None
    version: int | None = None
    href: str | None = None
    subscribable: int | None = None
    active_der_control_list_link: ListLink | None = None
    default_der_control_link: Link | None = None
    der_control_list_link: ListLink | None = None
    der_curve_list_link: ListLink | None = None


@dataclass(frozen=True)
class DERControl:
    mrid: str
    creation_time: int
    event_status: EventStatusInfo
    interval: DateTimeInterval
    base: ControlBase
    description: str | None = None
    version: int | None = None
    href: str | None = None
    reply_to: str | None = None
    response_required: int | None = None
    subscribable: int | None = None
    randomize_duration: int | None = None
    randomize_start: int | None = None
    device_category: int | None = None


@dataclass(frozen=True)
class DefaultDERControl:
    mrid: str
    base: ControlBase
    description: str | None = None
    version: int | None = None
    href: str | None = None
    subscribable: int | None = None
    set_es_delay: int | None = None
    set_es_high_freq: int | None = None
    set_es_high_volt: int | None = None
    set_es_low_freq: int | None = None
    set_es_low_volt: int | None = None
    set_es_ramp_tms: int | None = None
    set_es_random_delay: int | None = None
    set_grad_w: int | None = None
    set_soft_grad_w: int | None = None


@dataclass(frozen=True)
class ReadingType:
    """How to read a mirrored value: uom 38 W, 63 var, 29 V, 33 Hz, 72 Wh; kind 37 power, 12
    energy; dataQualifier 2 average, 8 maximum, 9 minimum, 0 none (stored energy is sent as
    uom 72, kind 12, dataQualifier 0, as the CSIP-AUS checker counts it)."""

    href: str | None = None
    accumulation_behaviour: int | None = None
    commodity: int | None = None
    data_qualifier: int | None = None
    flow_direction: int | None = None
    interval_length: int | None = None
    kind: int | None = None
    max_number_of_intervals: int | None = None
    phase: int | None = None
    power_of_ten_multiplier: int | None = None
    sub_interval_length: int | None = None
    uom: int | None = None


@dataclass(frozen=True)
class Reading:
    value: int | None = None
    time_period: DateTimeInterval | None = None
    quality_flags: int | None = None
    local_id: int | None = None
    href: str | None = None
    subscribable: int | None = None


@dataclass(frozen=True)
class MirrorReadingSet:
    mrid: str
    time_period: DateTimeInterval
    readings: tuple[Reading, ...] = ()
    description: str | None = None
    version: int | None = None
    href: str | None = None


@dataclass(frozen=True)
class MirrorMeterReading:
    mrid: str
    description: str | None = None
    version: int | None = None
    href: str | None = None
    last_update_time: int | None = None
    mirror_reading_sets: tuple[MirrorReadingSet, ...] = ()
    next_update_time: int | None = None
    reading: Reading | None = None
    reading_type: ReadingType | None = None


@dataclass(frozen=True)
class MirrorUsagePoint:
    """``role_flags`` bits: 0 isMirror, 1 isPremisesAggregationPoint, 3 isDER, 6 isSubmeter;
    CSIP-AUS uses 0x03 for the site and 0x49 for a DER."""

    mrid: str
    role_flags: int
    service_category_kind: int
    status: int
    device_lfdi: str
    description: str | None = None
    version: int | None = None
    href: str | None = None
    mirror_meter_readings: tuple[MirrorMeterReading, ...] = ()
    post_rate: int | None = None


@dataclass(frozen=True)
class DERControlResponse:
    """``status``: `controls.ResponseStatus`; ``subject``: the DERControl's mRID."""

    end_device_lfdi: str
    subject: str
    status: int | None = None
    created_date_time: int | None = None
    href: str | None = None


# --- lists -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceList(Generic[T]):
    """One page of a list resource. ``all`` counts the whole list, ``results`` this page."""

    all: int
    results: int
    items: tuple[T, ...] = ()
    href: str | None = None
    poll_rate: int | None = None
    subscribable: int | None = None

    @classmethod
    def of(cls, items: Sequence[T], **kwargs: Any) -> Self:
        """A complete one-page list of ``items`` (what a client POSTs)."""
        return cls(all=len(items), results=len(items), items=tuple(items), **kwargs)

    def next_start(self, start: int) -> int | None:
        """Where the next page begins if this page was requested from ``start``; None at end."""
        return next_page_start(start, self.results, self.all)


@dataclass(frozen=True)
class EndDeviceList(ResourceList[EndDevice]):
    pass


@dataclass(frozen=True)
class DERList(ResourceList[DER]):
    pass


@dataclass(frozen=True)
class FunctionSetAssignmentsList(ResourceList[FunctionSetAssignments]):
    pass


@dataclass(frozen=True)
class DERProgramList(ResourceList[DERProgram]):
    pass


@dataclass(frozen=True)
class DERControlList(ResourceList[DERControl]):
    """Also what an ActiveDERControlListLink returns (same root element)."""


@dataclass(frozen=True)
class MirrorUsagePointList(ResourceList[MirrorUsagePoint]):
    pass


@dataclass(frozen=True)
class MirrorMeterReadingList(ResourceList[MirrorMeterReading]):
    pass


# --- shapes: XSD order of attributes and elements --------------------------------------------

_INT_RANGES: dict[str, tuple[int, int]] = {
    "u8": (0, 0xFF),
    "u16": (0, 0xFFFF),
    "u32": (0, 0xFFFFFFFF),
    "u40": (0, (1 << 40) - 1),
    "i8": (-128, 127),
    "i16": (-32768, 32767),
    "i32": (-(1 << 31), (1 << 31) - 1),
    "i48": (-(1 << 47), 1 << 47),
    "time": (-(1 << 63), (1 << 63) - 1),
}
_HEX_BYTES = {"hex8": 1, "hex16": 2, "hex32": 4}
_ID_BYTES = {"mrid": 16, "lfdi": 20}


class _Codec:
    """A hand-written element type (DERControlBase); subclasses read and write one element."""

    def read(self, element: etree._Element, where: str) -> object:
        raise NotImplementedError

    def write(self, element: etree._Element, value: Any, ns: str) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class _Attr:
    name: str
    attr: str
    kind: str
    required: bool = False


@dataclass(frozen=True)
class _Field:
    key: str
    """Local name; ``csipaus:`` prefix for CSIP-AUS elements."""
    attr: str
    kind: str | _Shape[Any] | _Codec
    required: bool = False
    many: bool = False
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Shape(Generic[T]):
    cls: Callable[..., T]
    attrs: tuple[_Attr, ...]
    fields: tuple[_Field, ...]


def _f(key: str, attr: str, kind: str | _Shape[Any] | _Codec, req: bool = False) -> _Field:
    return _Field(key, attr, kind, required=req)


_HREF = _Attr("href", "href", "str")
_SUB = _Attr("subscribable", "subscribable", "u8")
_POLL = _Attr("pollRate", "poll_rate", "u32")

_SCALED_I16 = _Shape(
    Scaled, (), (_f("multiplier", "multiplier", "i8", True), _f("value", "value", "i16", True))
)
_SCALED_U16 = _Shape(
    Scaled, (), (_f("multiplier", "multiplier", "i8", True), _f("value", "value", "u16", True))
)
_PF = _Shape(
    PowerFactor,
    (),
    (_f("displacement", "displacement", "u16", True), _f("multiplier", "multiplier", "i8", True)),
)
_INTERVAL = _Shape(
    DateTimeInterval,
    (),
    (_f("duration", "duration", "u32", True), _f("start", "start", "time", True)),
)
_STATUS_HEX = _Shape(
    StatusValue, (), (_f("dateTime", "date_time", "time", True), _f("value", "value", "hex8", True))
)
_STATUS_U8 = _Shape(
    StatusValue, (), (_f("dateTime", "date_time", "time", True), _f("value", "value", "u8", True))
)
_STATUS_PCT = _Shape(
    StatusValue, (), (_f("dateTime", "date_time", "time", True), _f("value", "value", "u16", True))
)
_EVENT_STATUS = _Shape(
    EventStatusInfo,
    (),
    (
        _f("currentStatus", "current_status", "event_status", True),
        _f("dateTime", "date_time", "time", True),
        _f("potentiallySuperseded", "potentially_superseded", "bool", True),
        _f("potentiallySupersededTime", "potentially_superseded_time", "time"),
        _f("reason", "reason", "str"),
    ),
)

_IDENTIFIED = (
    _f("mRID", "mrid", "mrid", True),
    _f("description", "description", "str"),
    _f("version", "version", "u16"),
)
_FSA_BASE_LINKS = (
    _f("DERProgramListLink", "der_program_list_link", "listlink"),
    _f("ResponseSetListLink", "response_set_list_link", "listlink"),
    _f("TimeLink", "time_link", "link"),
    _f("UsagePointListLink", "usage_point_list_link", "listlink"),
)


class _ControlBaseCodec(_Codec):
    """DERControlBase ⇄ `ControlBase`: ActivePower to watts, opModMaxLimW (PerCent, hundredths
    of a percent on the wire) to percent. IEEE elements first, then the CSIP-AUS extension ones,
    as the CSIP-AUS schema's xs:redefine orders them."""

    _POWER = (
        ("csipaus:opModImpLimW", "import_limit_w"),
        ("csipaus:opModExpLimW", "export_limit_w"),
        ("csipaus:opModGenLimW", "generation_limit_w"),
        ("csipaus:opModLoadLimW", "load_limit_w"),
        ("csipaus:opModStorageTargetW", "storage_target_w"),  # v1.3 namespace only
    )
    _MODELLED = frozenset(
        {"opModConnect", "opModEnergize", "opModMaxLimW", "rampTms", *(k for k, _ in _POWER)}
    )
    """Every other IEEE / CSIP-AUS child (opModFixedW, opModVoltVar, an opModStorageTargetW in
    the 1.2 namespace, ...) is a control dynexport does not perform: its name goes to
    ``ControlBase.unsupported``."""

    def read(self, element: etree._Element, where: str) -> ControlBase:
        found: dict[str, etree._Element] = {}
        for child in element:
            key = key_of(child)
            if key is not None:
                found.setdefault(key, child)
        values: dict[str, Any] = {}
        if (el := found.get("opModConnect")) is not None:
            values["connect"] = parse_bool(el.text, where, "opModConnect")
        if (el := found.get("opModEnergize")) is not None:
            values["energize"] = parse_bool(el.text, where, "opModEnergize")
        if (el := found.get("opModMaxLimW")) is not None:
            values["max_limit_pct"] = parse_int(el.text, where, "opModMaxLimW", 0, 0xFFFF) / 100
        if (el := found.get("rampTms")) is not None:
            values["ramp_tms"] = parse_int(el.text, where, "rampTms", 0, 0xFFFF)
        for key, attr in self._POWER:
            if (el := found.get(key)) is not None:
                scaled = _read(el, _SCALED_I16, f"{where}/{key}")
                values[attr] = scaled.real
        unsupported = set(found) - self._MODELLED
        for key in unsupported:
            if key.endswith(WRONG_NAMESPACE) and key not in _WARNED:
                _WARNED.add(key)
                log.warning(
                    "%s: %s is a CSIP-AUS v1.3 element but came in the 1.2 namespace; not "
                    "read as one (the control is answered as one this site cannot perform)",
                    where,
                    key.removesuffix(WRONG_NAMESPACE),
                )
        if unsupported:
            # named as the element is (the namespace problem went to the log)
            names = {k.removesuffix(WRONG_NAMESPACE) for k in unsupported}
            values["unsupported"] = tuple(sorted(names))
        return ControlBase(**values)

    def write(self, element: etree._Element, value: Any, ns: str) -> None:
        base = cast(ControlBase, value)
        if base.connect is not None:
            _text(element, "opModConnect", "true" if base.connect else "false", ns)
        if base.energize is not None:
            _text(element, "opModEnergize", "true" if base.energize else "false", ns)
        if base.max_limit_pct is not None:
            _text(element, "opModMaxLimW", str(round(base.max_limit_pct * 100)), ns)
        if base.ramp_tms is not None:
            _text(element, "rampTms", str(base.ramp_tms), ns)
        for key, attr in self._POWER:
            watts = getattr(base, attr)
            if watts is not None:
                child = etree.SubElement(element, qname(key, ns))
                _write(child, Scaled.from_real(watts), _SCALED_I16, ns)


_WARNED: set[str] = set()
"""Wrong-namespace elements already logged (once per process, not on every poll)."""


_CONTROL_BASE = _ControlBaseCodec()

_DCAP = _Shape(
    DeviceCapability,
    (_HREF, _POLL),
    (
        *_FSA_BASE_LINKS,
        _f("EndDeviceListLink", "end_device_list_link", "listlink"),
        _f("MirrorUsagePointListLink", "mirror_usage_point_list_link", "listlink"),
        _f("SelfDeviceLink", "self_device_link", "link"),
    ),
)
_TIME = _Shape(
    Time,
    (_HREF, _POLL),
    (
        _f("currentTime", "current_time", "time", True),
        _f("dstEndTime", "dst_end_time", "time", True),
        _f("dstOffset", "dst_offset", "i32", True),
        _f("dstStartTime", "dst_start_time", "time", True),
        _f("localTime", "local_time", "time"),
        _f("quality", "quality", "u8", True),
        _f("tzOffset", "tz_offset", "i32", True),
    ),
)
_EDEV = _Shape(
    EndDevice,
    (_HREF, _SUB),
    (
        _f("ConfigurationLink", "configuration_link", "link"),
        _f("DERListLink", "der_list_link", "listlink"),
        _f("deviceCategory", "device_category", "hex32"),
        _f("DeviceInformationLink", "device_information_link", "link"),
        _f("DeviceStatusLink", "device_status_link", "link"),
        # Some servers spell it LFDI; the schema says lFDI.
        _Field("lFDI", "lfdi", "lfdi", aliases=("LFDI",)),
        _f("LogEventListLink", "log_event_list_link", "listlink"),
        _f("sFDI", "sfdi", "u40", True),
        _f("changedTime", "changed_time", "time", True),
        _f("enabled", "enabled", "bool"),
        _f("FunctionSetAssignmentsListLink", "function_set_assignments_list_link", "listlink"),
        _f("postRate", "post_rate", "u32"),
        _f("RegistrationLink", "registration_link", "link"),
        _f("SubscriptionListLink", "subscription_list_link", "listlink"),
        _f("csipaus:ConnectionPointLink", "connection_point_link", "link"),
    ),
)
_REG = _Shape(
    Registration,
    (_HREF, _POLL),
    (_f("dateTimeRegistered", "date_time_registered", "time", True), _f("pIN", "pin", "u32", True)),
)
_CP = _Shape(
    ConnectionPoint,
    (_HREF,),
    (
        _Field(
            "csipaus:connectionPointId",
            "connection_point_id",
            "str",
            True,
            aliases=("connectionPointId",),
        ),
    ),
)
_DER = _Shape(
    DER,
    (_HREF, _SUB),
    (
        _f("AssociatedDERProgramListLink", "associated_der_program_list_link", "listlink"),
        _f("AssociatedUsagePointLink", "associated_usage_point_link", "link"),
        _f("CurrentDERProgramLink", "current_der_program_link", "link"),
        _f("DERAvailabilityLink", "der_availability_link", "link"),
        _f("DERCapabilityLink", "der_capability_link", "link"),
        _f("DERSettingsLink", "der_settings_link", "link"),
        _f("DERStatusLink", "der_status_link", "link"),
    ),
)
_DERCAP = _Shape(
    DERCapability,
    (_HREF,),
    (
        _f("modesSupported", "modes_supported", "hex32", True),
        _f("rtgAbnormalCategory", "rtg_abnormal_category", "u8"),
        _f("rtgMaxA", "rtg_max_a", _SCALED_U16),
        _f("rtgMaxAh", "rtg_max_ah", _SCALED_U16),
        _f("rtgMaxChargeRateVA", "rtg_max_charge_rate_va", _SCALED_U16),
        _f("rtgMaxChargeRateW", "rtg_max_charge_rate_w", _SCALED_I16),
        _f("rtgMaxDischargeRateVA", "rtg_max_discharge_rate_va", _SCALED_U16),
        _f("rtgMaxDischargeRateW", "rtg_max_discharge_rate_w", _SCALED_I16),
        _f("rtgMaxV", "rtg_max_v", _SCALED_U16),
        _f("rtgMaxVA", "rtg_max_va", _SCALED_U16),
        _f("rtgMaxVar", "rtg_max_var", _SCALED_I16),
        _f("rtgMaxVarNeg", "rtg_max_var_neg", _SCALED_I16),
        _f("rtgMaxW", "rtg_max_w", _SCALED_I16, True),
        _f("rtgMaxWh", "rtg_max_wh", _SCALED_U16),
        _f("rtgMinPFOverExcited", "rtg_min_pf_over_excited", _PF),
        _f("rtgMinPFUnderExcited", "rtg_min_pf_under_excited", _PF),
        _f("rtgMinV", "rtg_min_v", _SCALED_U16),
        _f("rtgNormalCategory", "rtg_normal_category", "u8"),
        _f("rtgVNom", "rtg_v_nom", _SCALED_U16),
        _f("type", "der_type", "u8", True),
        _f("csipaus:doeModesSupported", "doe_modes_supported", "hex8", True),
        _f("csipaus:vppModesSupported", "vpp_modes_supported", "hex8"),
    ),
)
_DERG = _Shape(
    DERSettings,
    (_HREF, _SUB),
    (
        _f("modesEnabled", "modes_enabled", "hex32"),
        _f("setESDelay", "set_es_delay", "u32"),
        _f("setESHighFreq", "set_es_high_freq", "u16"),
        _f("setESHighVolt", "set_es_high_volt", "i16"),
        _f("setESLowFreq", "set_es_low_freq", "u16"),
        _f("setESLowVolt", "set_es_low_volt", "i16"),
        _f("setESRampTms", "set_es_ramp_tms", "u32"),
        _f("setESRandomDelay", "set_es_random_delay", "u32"),
        _f("setGradW", "set_grad_w", "u16", True),
        _f("setMaxA", "set_max_a", _SCALED_U16),
        _f("setMaxAh", "set_max_ah", _SCALED_U16),
        _f("setMaxChargeRateVA", "set_max_charge_rate_va", _SCALED_U16),
        _f("setMaxChargeRateW", "set_max_charge_rate_w", _SCALED_I16),
        _f("setMaxDischargeRateVA", "set_max_discharge_rate_va", _SCALED_U16),
        _f("setMaxDischargeRateW", "set_max_discharge_rate_w", _SCALED_I16),
        _f("setMaxV", "set_max_v", _SCALED_U16),
        _f("setMaxVA", "set_max_va", _SCALED_U16),
        _f("setMaxVar", "set_max_var", _SCALED_I16),
        _f("setMaxVarNeg", "set_max_var_neg", _SCALED_I16),
        _f("setMaxW", "set_max_w", _SCALED_I16, True),
        _f("setMaxWh", "set_max_wh", _SCALED_U16),
        _f("setMinPFOverExcited", "set_min_pf_over_excited", _PF),
        _f("setMinPFUnderExcited", "set_min_pf_under_excited", _PF),
        _f("setMinV", "set_min_v", _SCALED_U16),
        _f("setSoftGradW", "set_soft_grad_w", "u16"),
        _f("setVNom", "set_v_nom", _SCALED_U16),
        _f("setVRef", "set_v_ref", _SCALED_U16),
        _f("setVRefOfs", "set_v_ref_ofs", _SCALED_U16),
        _f("updatedTime", "updated_time", "time", True),
        _f("csipaus:doeModesEnabled", "doe_modes_enabled", "hex8"),
        _f("csipaus:vppModesEnabled", "vpp_modes_enabled", "hex8"),
        _f("csipaus:setMinWh", "set_min_wh", _SCALED_U16),
    ),
)
_DERS = _Shape(
    DERStatus,
    (_HREF, _SUB),
    (
        _f("alarmStatus", "alarm_status", "hex32"),
        _f("genConnectStatus", "gen_connect_status", _STATUS_HEX),
        _f("inverterStatus", "inverter_status", _STATUS_U8),
        _f("localControlModeStatus", "local_control_mode_status", _STATUS_U8),
        _f("operationalModeStatus", "operational_mode_status", _STATUS_U8),
        _f("readingTime", "reading_time", "time", True),
        _f("stateOfChargeStatus", "state_of_charge_status", _STATUS_PCT),
        _f("storageModeStatus", "storage_mode_status", _STATUS_U8),
        _f("storConnectStatus", "stor_connect_status", _STATUS_HEX),
    ),
)
_FSA = _Shape(
    FunctionSetAssignments,
    (_HREF, _SUB),
    (
        _f("DERProgramListLink", "der_program_list_link", "listlink"),
        _f("ResponseSetListLink", "response_set_list_link", "listlink"),
        _f("TimeLink", "time_link", "link"),
        *_IDENTIFIED,
    ),
)
_DERP = _Shape(
    DERProgram,
    (_HREF, _SUB),
    (
        *_IDENTIFIED,
        _f("ActiveDERControlListLink", "active_der_control_list_link", "listlink"),
        _f("DefaultDERControlLink", "default_der_control_link", "link"),
        _f("DERControlListLink", "der_control_list_link", "listlink"),
        _f("DERCurveListLink", "der_curve_list_link", "listlink"),
        _f("primacy", "primacy", "u8", True),
    ),
)
_DERC = _Shape(
    DERControl,
    (
        _HREF,
        _Attr("replyTo", "reply_to", "str"),
        _Attr("responseRequired", "response_required", "hex8"),
        _SUB,
    ),
    (
        *_IDENTIFIED,
        _f("creationTime", "creation_time", "time", True),
        _f("EventStatus", "event_status", _EVENT_STATUS, True),
        _f("interval", "interval", _INTERVAL, True),
        _f("randomizeDuration", "randomize_duration", "i16"),
        _f("randomizeStart", "randomize_start", "i16"),
        _f("DERControlBase", "base", _CONTROL_BASE, True),
        _f("deviceCategory", "device_category", "hex32"),
    ),
)
_DDERC = _Shape(
    DefaultDERControl,
    (_HREF, _SUB),
    (
        *_IDENTIFIED,
        _f("DERControlBase", "base", _CONTROL_BASE, True),
        _f("setESDelay", "set_es_delay", "u32"),
        _f("setESHighFreq", "set_es_high_freq", "u16"),
        _f("setESHighVolt", "set_es_high_volt", "i16"),
        _f("setESLowFreq", "set_es_low_freq", "u16"),
        _f("setESLowVolt", "set_es_low_volt", "i16"),
        _f("setESRampTms", "set_es_ramp_tms", "u32"),
        _f("setESRandomDelay", "set_es_random_delay", "u32"),
        _f("setGradW", "set_grad_w", "u16"),
        _f("setSoftGradW", "set_soft_grad_w", "u16"),
    ),
)
_READING_TYPE = _Shape(
    ReadingType,
    (_HREF,),
    (
        _f("accumulationBehaviour", "accumulation_behaviour", "u8"),
        _f("commodity", "commodity", "u8"),
        _f("dataQualifier", "data_qualifier", "u8"),
        _f("flowDirection", "flow_direction", "u8"),
        _f("intervalLength", "interval_length", "u32"),
        _f("kind", "kind", "u8"),
        _f("maxNumberOfIntervals", "max_number_of_intervals", "u8"),
        _f("phase", "phase", "u8"),
        _f("powerOfTenMultiplier", "power_of_ten_multiplier", "i8"),
        _f("subIntervalLength", "sub_interval_length", "u32"),
        _f("uom", "uom", "u8"),
    ),
)
_READING = _Shape(
    Reading,
    (_HREF, _SUB),
    (
        _f("qualityFlags", "quality_flags", "hex16"),
        _f("timePeriod", "time_period", _INTERVAL),
        _f("value", "value", "i48"),
        _f("localID", "local_id", "hex16"),
    ),
)
_MRS = _Shape(
    MirrorReadingSet,
    (_HREF,),
    (
        *_IDENTIFIED,
        _f("timePeriod", "time_period", _INTERVAL, True),
        _Field("Reading", "readings", _READING, many=True),
    ),
)
_MMR = _Shape(
    MirrorMeterReading,
    (_HREF,),
    (
        *_IDENTIFIED,
        _f("lastUpdateTime", "last_update_time", "time"),
        _Field("MirrorReadingSet", "mirror_reading_sets", _MRS, many=True),
        _f("nextUpdateTime", "next_update_time", "time"),
        _f("Reading", "reading", _READING),
        _f("ReadingType", "reading_type", _READING_TYPE),
    ),
)
_MUP = _Shape(
    MirrorUsagePoint,
    (_HREF,),
    (
        *_IDENTIFIED,
        _f("roleFlags", "role_flags", "hex16", True),
        _f("serviceCategoryKind", "service_category_kind", "u8", True),
        _f("status", "status", "u8", True),
        _f("deviceLFDI", "device_lfdi", "lfdi", True),
        _Field("MirrorMeterReading", "mirror_meter_readings", _MMR, many=True),
        _f("postRate", "post_rate", "u32"),
    ),
)
_RSP = _Shape(
    DERControlResponse,
    (_HREF,),
    (
        _f("createdDateTime", "created_date_time", "time"),
        _f("endDeviceLFDI", "end_device_lfdi", "lfdi", True),
        _f("status", "status", "u8"),
        _f("subject", "subject", "mrid", True),
    ),
)

_ALL = _Attr("all", "all", "u32", True)
_RESULTS = _Attr("results", "results", "u32", True)


def _list_shape(
    cls: Callable[..., T], item: str, shape: _Shape[Any], attrs: tuple[_Attr, ...]
) -> _Shape[T]:
    return _Shape(cls, (_HREF, *attrs, _ALL, _RESULTS), (_Field(item, "items", shape, many=True),))


_SHAPES: dict[type, tuple[str, _Shape[Any]]] = {
    DeviceCapability: ("DeviceCapability", _DCAP),
    Time: ("Time", _TIME),
    EndDevice: ("EndDevice", _EDEV),
    EndDeviceList: ("EndDeviceList", _list_shape(EndDeviceList, "EndDevice", _EDEV, (_SUB, _POLL))),
    Registration: ("Registration", _REG),
    ConnectionPoint: ("csipaus:ConnectionPoint", _CP),
    DER: ("DER", _DER),
    DERList: ("DERList", _list_shape(DERList, "DER", _DER, (_POLL,))),
    DERCapability: ("DERCapability", _DERCAP),
    DERSettings: ("DERSettings", _DERG),
    DERStatus: ("DERStatus", _DERS),
    FunctionSetAssignments: ("FunctionSetAssignments", _FSA),
    FunctionSetAssignmentsList: (
        "FunctionSetAssignmentsList",
        _list_shape(FunctionSetAssignmentsList, "FunctionSetAssignments", _FSA, (_SUB, _POLL)),
    ),
    DERProgram: ("DERProgram", _DERP),
    DERProgramList: (
        "DERProgramList",
        _list_shape(DERProgramList, "DERProgram", _DERP, (_SUB, _POLL)),
    ),
    DERControl: ("DERControl", _DERC),
    DERControlList: ("DERControlList", _list_shape(DERControlList, "DERControl", _DERC, (_SUB,))),
    DefaultDERControl: ("DefaultDERControl", _DDERC),
    MirrorUsagePoint: ("MirrorUsagePoint", _MUP),
    MirrorUsagePointList: (
        "MirrorUsagePointList",
        _list_shape(MirrorUsagePointList, "MirrorUsagePoint", _MUP, (_POLL,)),
    ),
    MirrorMeterReading: ("MirrorMeterReading", _MMR),
    MirrorMeterReadingList: (
        "MirrorMeterReadingList",
        _list_shape(MirrorMeterReadingList, "MirrorMeterReading", _MMR, ()),
    ),
    ReadingType: ("ReadingType", _READING_TYPE),
    DERControlResponse: ("DERControlResponse", _RSP),
}
_BY_ROOT: dict[str, type] = {root: cls for cls, (root, _) in _SHAPES.items()}


# --- the reader ------------------------------------------------------------------------------


def _scalar(text: str | None, kind: str, where: str, name: str) -> object:
    if kind in _INT_RANGES:
        lo, hi = _INT_RANGES[kind]
        return parse_int(text, where, name, lo, hi)
    if kind in _HEX_BYTES:
        return parse_hex_int(text, where, name, _HEX_BYTES[kind])
    if kind in _ID_BYTES:
        value = normalize_id(text)
        if not value:
            raise Sep2ParseError(where, f"{name}: empty identifier")
        return value
    if kind == "bool":
        return parse_bool(text, where, name)
    if kind == "str":
        return text or ""
    if kind == "event_status":
        raw = parse_int(text, where, name, 0, 0xFF)
        try:
            return EventStatus(raw)
        except ValueError:
            raise Sep2ParseError(where, f"{name}: unknown event status {raw}") from None
    raise AssertionError(f"unknown kind {kind}")


def _read_link(element: etree._Element, kind: str, where: str, name: str) -> Link | ListLink:
    href = element.get("href")
    if href is None or not href.strip():
        raise Sep2ParseError(where, f"{name}: link without href")
    if kind == "link":
        return Link(href.strip())
    all_ = element.get("all")
    count = None if all_ is None else parse_int(all_, where, f"{name}@all", 0, 0xFFFFFFFF)
    return ListLink(href.strip(), count)


def _read_value(element: etree._Element, field: _Field, where: str, name: str) -> object:
    kind = field.kind
    if isinstance(kind, _Shape):
        return _read(element, kind, f"{where}/{name}")
    if isinstance(kind, _Codec):
        return kind.read(element, f"{where}/{name}")
    if kind in ("link", "listlink"):
        return _read_link(element, kind, where, name)
    if len(element):
        raise Sep2ParseError(where, f"{name}: expected a simple value, found child elements")
    return _scalar(element.text, kind, where, name)


def _read(element: etree._Element, shape: _Shape[T], where: str) -> T:
    values: dict[str, Any] = {}
    for attr in shape.attrs:
        raw = element.get(attr.name)
        if raw is None:
            if attr.required:
                raise Sep2ParseError(where, f"missing required attribute {attr.name}")
            continue
        values[attr.attr] = _scalar(raw, attr.kind, where, "@" + attr.name)
    children: dict[str, list[etree._Element]] = {}
    for child in element:
        key = key_of(child)
        if key is not None:
            children.setdefault(key, []).append(child)
    for field in shape.fields:
        found = children.get(field.key)
        for alias in field.aliases:
            found = found or children.get(alias)
        if not found:
            if field.required:
                raise Sep2ParseError(where, f"missing required element {field.key}")
            continue
        if field.many:
            values[field.attr] = tuple(
                _read_value(c, field, where, f"{field.key}[{i}]") for i, c in enumerate(found)
            )
        else:
            values[field.attr] = _read_value(found[0], field, where, field.key)
    return shape.cls(**values)


# --- the writer ------------------------------------------------------------------------------


def _format(value: Any, kind: str, name: str) -> str:
    if kind in _INT_RANGES:
        lo, hi = _INT_RANGES[kind]
        number = int(value)
        if not lo <= number <= hi:
            raise ValueError(f"{name}: {number} out of range {lo}..{hi}")
        return str(number)
    if kind in _HEX_BYTES:
        return format_hex_int(int(value), _HEX_BYTES[kind])
    if kind in _ID_BYTES:
        return format_id(str(value), _ID_BYTES[kind])
    if kind == "bool":
        return "true" if value else "false"
    if kind == "str":
        return str(value)
    if kind == "event_status":
        return str(int(value))
    raise AssertionError(f"unknown kind {kind}")


def _text(parent: etree._Element, key: str, text: str, ns: str) -> etree._Element:
    child = etree.SubElement(parent, qname(key, ns))
    child.text = text
    return child


def _write(element: etree._Element, obj: Any, shape: _Shape[Any], ns: str) -> None:
    for attr in shape.attrs:
        value = getattr(obj, attr.attr)
        if value is None:
            if attr.required:
                raise ValueError(f"{type(obj).__name__}.{attr.attr} is required")
            continue
        element.set(attr.name, _format(value, attr.kind, attr.name))
    for field in shape.fields:
        value = getattr(obj, field.attr)
        if value is None:
            if field.required:
                raise ValueError(f"{type(obj).__name__}.{field.attr} is required")
            continue
        for item in value if field.many else (value,):
            kind = field.kind
            if isinstance(kind, _Shape):
                _write(etree.SubElement(element, qname(field.key, ns)), item, kind, ns)
            elif isinstance(kind, _Codec):
                kind.write(etree.SubElement(element, qname(field.key, ns)), item, ns)
            elif kind in ("link", "listlink"):
                link = etree.SubElement(element, qname(field.key, ns))
                if kind == "listlink" and item.all is not None:
                    link.set("all", str(int(item.all)))
                link.set("href", item.href)
            else:
                _text(element, field.key, _format(item, kind, field.key), ns)


# --- public API ------------------------------------------------------------------------------


def _root_key(root: etree._Element, resource: str) -> str:
    tag = root.tag
    if not isinstance(tag, str):
        raise Sep2ParseError(resource, "no root element")
    ns, local = split_tag(tag)
    if ns == NS:
        return local
    if ns in CSIPAUS_NAMESPACES:
        return "csipaus:" + local
    known = local in _BY_ROOT or f"csipaus:{local}" in _BY_ROOT
    if known:
        raise Sep2ParseError(resource, f"root <{local}> is in namespace {ns!r}, expected {NS!r}")
    raise Sep2ParseError(resource, f"unexpected root element <{local}> in namespace {ns!r}")


def parse_as(cls: type[T], data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> T:
    """Parse ``data`` as resource class ``cls`` (e.g. `Time`), or raise `Sep2ParseError`."""
    root_name, shape = _SHAPES[cls]
    resource = root_name.removeprefix("csipaus:")
    root = parse_xml(data, resource, max_bytes=max_bytes)
    key = _root_key(root, resource)
    if key != root_name:
        raise Sep2ParseError(resource, f"wrong root element <{key}>, expected <{root_name}>")
    return cast(T, _read(root, shape, resource))


def parse_resource(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> object:
    """Parse any modelled resource, choosing the model by its root element."""
    root = parse_xml(data, "resource", max_bytes=max_bytes)
    key = _root_key(root, "resource")
    cls = _BY_ROOT.get(key)
    if cls is None:
        raise Sep2ParseError("resource", f"unsupported root element <{key}>")
    return _read(root, _SHAPES[cls][1], key.removeprefix("csipaus:"))


def to_xml(resource: object, *, csipaus_ns: str = CSIPAUS_NS) -> bytes:
    """Serialize a resource model as UTF-8 XML in XSD element order (no XML declaration), its
    CSIP-AUS elements in ``csipaus_ns`` (the server's version: 1.2 unless it speaks v1.3).

    A v1.3-only field (vppModes*, setMinWh, a storage target) set while writing 1.2 is a
    ValueError: a 1.2 server's XSD refuses it, so the caller must leave it out."""
    entry = _SHAPES.get(type(resource))
    if entry is None:
        raise TypeError(f"cannot serialize {type(resource).__name__}")
    root_name, shape = entry
    root = etree.Element(qname(root_name, csipaus_ns), nsmap=nsmap_for(csipaus_ns))
    _write(root, resource, shape, csipaus_ns)
    etree.cleanup_namespaces(root, top_nsmap={"csipaus": csipaus_ns})
    return etree.tostring(root, encoding="UTF-8", xml_declaration=False)


def parse_device_capability(data: bytes) -> DeviceCapability:
    return parse_as(DeviceCapability, data)


def parse_time(data: bytes) -> Time:
    return parse_as(Time, data)


def parse_end_device_list(data: bytes) -> EndDeviceList:
    return parse_as(EndDeviceList, data)


def parse_end_device(data: bytes) -> EndDevice:
    return parse_as(EndDevice, data)


def parse_registration(data: bytes) -> Registration:
    return parse_as(Registration, data)


def parse_connection_point(data: bytes) -> ConnectionPoint:
    return parse_as(ConnectionPoint, data)


def parse_der_list(data: bytes) -> DERList:
    return parse_as(DERList, data)


def parse_der(data: bytes) -> DER:
    return parse_as(DER, data)


def parse_der_capability(data: bytes) -> DERCapability:
    return parse_as(DERCapability, data)


def parse_der_settings(data: bytes) -> DERSettings:
    return parse_as(DERSettings, data)


def parse_der_status(data: bytes) -> DERStatus:
    return parse_as(DERStatus, data)


def parse_fsa_list(data: bytes) -> FunctionSetAssignmentsList:
    return parse_as(FunctionSetAssignmentsList, data)


def parse_der_program_list(data: bytes) -> DERProgramList:
    return parse_as(DERProgramList, data)


def parse_der_program(data: bytes) -> DERProgram:
    return parse_as(DERProgram, data)


def parse_der_control_list(data: bytes) -> DERControlList:
    """A DERControlList or an ActiveDERControlList (same element)."""
    return parse_as(DERControlList, data)


def parse_der_control(data: bytes) -> DERControl:
    return parse_as(DERControl, data)


def parse_default_der_control(data: bytes) -> DefaultDERControl:
    return parse_as(DefaultDERControl, data)


def parse_mirror_usage_point_list(data: bytes) -> MirrorUsagePointList:
    return parse_as(MirrorUsagePointList, data)


def parse_mirror_usage_point(data: bytes) -> MirrorUsagePoint:
    return parse_as(MirrorUsagePoint, data)


def parse_mirror_meter_reading(data: bytes) -> MirrorMeterReading:
    return parse_as(MirrorMeterReading, data)


def parse_der_control_response(data: bytes) -> DERControlResponse:
    return parse_as(DERControlResponse, data)


# --- conversion to the scheduler's data ------------------------------------------------------


def der_control_event(
    control: DERControl, program: DERProgram, program_href: str | None = None
) -> DERControlEvent:
    """One DERControl as the scheduler sees it, carrying its program's primacy.

    ``program_href`` defaults to the program's own href; pass the resolved URL when the
    caller resolves links.
    """
    return DERControlEvent(
        mrid=control.mrid,
        creation_time=control.creation_time,
        start=control.interval.start,
        duration=control.interval.duration,
        base=control.base,
        primacy=program.primacy,
        program_href=program_href if program_href is not None else (program.href or ""),
        href=control.href,
        status=control.event_status.current_status,
        randomize_start=control.randomize_start or 0,
        randomize_duration=control.randomize_duration or 0,
        response_required=control.response_required or 0,
        reply_to=control.reply_to,
        description=control.description or "",
    )


def default_control(
    default: DefaultDERControl, program: DERProgram, program_href: str | None = None
) -> DefaultControl:
    """A program's DefaultDERControl as the scheduler sees it."""
    return DefaultControl(
        base=default.base,
        primacy=program.primacy,
        program_href=program_href if program_href is not None else (program.href or ""),
        mrid=default.mrid,
        set_grad_w=default.set_grad_w,
        es_delay=default.set_es_delay,
        es_randomize=default.set_es_random_delay,
    )


def program_controls(
    program: DERProgram,
    controls: Iterable[DERControl] = (),
    default: DefaultDERControl | None = None,
    program_href: str | None = None,
) -> ProgramControls:
    """Everything one DERProgram contributes, for the scheduler."""
    href = program_href if program_href is not None else (program.href or "")
    return ProgramControls(
        href=href,
        primacy=program.primacy,
        events=tuple(der_control_event(c, program, href) for c in controls),
        default=None if default is None else default_control(default, program, href),
        mrid=program.mrid,
        description=program.description or "",
    )
