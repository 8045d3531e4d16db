"""The CSIP-AUS client's decisions, without I/O: what is due, what to send, what an answer means.

The trio adapter (`client.py`) fetches and posts; everything it has to *decide* lives here as
functions of plain data and a ``now`` passed in, so it is tested without sockets or clocks:

* when each resource is due again, given its own ``pollRate`` (IEEE 2030.5 default 900 s);
* the clock offset from the server's Time resource (applied to every schedule decision);
* finding our EndDevice or building the one to POST (in-band registration);
* whether the Registration PIN matches, and what that means for acting on controls;
* the ConnectionPoint, DERCapability/DERSettings/DERStatus, MirrorUsagePoint, reading and
  DERControlResponse bodies;
* what an HTTP status on a response or readings POST means (sent, retry later, give up).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

from dynexport.httpio.client import InvalidUrl, join_url, origin_of
from dynexport.sep2 import schedule
from dynexport.sep2.controls import (
    ENFORCED_CONTROLS,
    ControlType,
    ProgramControls,
    ResponseStatus,
    vpp_modes_supported,
)
from dynexport.sep2.identity import sfdi_from_lfdi
from dynexport.sep2.resources import (
    ConnectionPoint as ConnectionPointResource,
)
from dynexport.sep2.resources import (
    DateTimeInterval,
    DERCapability,
    DERSettings,
    DERStatus,
    EndDevice,
    MirrorMeterReading,
    MirrorMeterReadingList,
    MirrorReadingSet,
    MirrorUsagePoint,
    PowerFactor,
    Reading,
    ReadingType,
    Registration,
    Scaled,
    StatusValue,
)
from dynexport.sep2.resources import (
    DERControlResponse as DERControlResponseResource,
)
from dynexport.sep2.responses import PendingResponse
from dynexport.sep2.telemetry import DER as DER_ROLE
from dynexport.sep2.telemetry import SITE as SITE_ROLE
from dynexport.sep2.telemetry import IntervalReading
from dynexport.sep2.xml import CSIPAUS_NS, CSIPAUS_NS_13

DEFAULT_POLL_S = 900
"""IEEE 2030.5 default pollRate when a resource does not carry one."""
MIN_POLL_S = 10
"""Floor on any pollRate, so a server answering ``pollRate 0`` cannot make us hammer it."""
CLOCK_WARN_S = schedule.CLOCK_WARN_S
"""A clock offset beyond this is logged as a warning (the offset is applied regardless)."""
SERVER_TIME_MIN = 1_577_836_800
"""2020-01-01T00:00:00Z: a server Time before this is refused (`server_time_problem`)."""
SERVER_TIME_MAX = 4_102_444_800
"""2100-01-01T00:00:00Z: a server Time from this on is refused."""
CLOCK_STEP_S = 5.0
"""wall − monotonic moving by more than this between two looks is a wall-clock step: the
server's Time is read again at once."""
DEFAULT_POST_S = 300
"""Telemetry post rate when neither the MirrorUsagePoint nor the EndDevice gives one."""
PAGE_SIZE = 100
MAX_PAGES = 100
"""A list longer than PAGE_SIZE × MAX_PAGES is refused rather than followed forever."""

# DERControlType bits (sep.xsd) for DERCapability.modesSupported / DERSettings.modesEnabled.
MODE_CONNECT = 1 << 2
MODE_ENERGIZE = 1 << 3
MODE_MAX_LIM_W = 1 << 20
# CSIP-AUS doeModesSupported bits.
DOE_EXPORT = 1 << 0
DOE_IMPORT = 1 << 1
DOE_GENERATION = 1 << 2
DOE_LOAD = 1 << 3
DEFAULT_DOE_MODES = DOE_EXPORT | DOE_GENERATION
"""What the controller enforces unless told otherwise: export and generation limits only."""

DEVICE_CATEGORY_PV = 1 << 21
"""DeviceCategoryType bit 21: Photovoltaic System."""
DER_TYPE_PV = 4
"""DERType 4: Photovoltaic system."""

SITE_ROLE_FLAGS = 0x03
"""isMirror | isPremisesAggregationPoint."""
DER_ROLE_FLAGS = 0x49
"""isMirror | isDER | isSubmeter."""
KIND_POWER = 37
KIND_ENERGY = 12
"""KindType (sep.xsd): 37 power, 12 energy (the DER's stored energy)."""
# DataQualifierType (sep.xsd): 0 not applicable, 2 Average, 8 Maximum, 9 Minimum.
QUALIFIER_NOT_APPLICABLE = 0
QUALIFIER_AVERAGE = 2
QUALIFIER_MAXIMUM = 8
QUALIFIER_MINIMUM = 9
STATISTICS = ("average", "minimum", "maximum")
"""What each interval reading is mirrored as, each its own MirrorMeterReading."""
QUALIFIER = {
    "average": QUALIFIER_AVERAGE,
    "minimum": QUALIFIER_MINIMUM,
    "maximum": QUALIFIER_MAXIMUM,
    "instantaneous": QUALIFIER_NOT_APPLICABLE,
}
UOM = {"W": 38, "var": 63, "V": 29, "Hz": 33, "Wh": 72}
POWER_OF_TEN = {"W": 0, "var": 0, "V": -1, "Hz": -2, "Wh": 0}
"""Fixed per quantity so the ReadingType never changes; V in 0.1 V, Hz in 0.01 Hz."""
STORED_ENERGY = "Wh"
"""The DER's stored energy (a battery's state of charge × capacity, Wh). The CSIP-AUS storage
procedures (STO-01, 03, 04, 06: check ``readings-der-stored-energy``) look for a DER mirror
series of uom 72 (Wh), kind 12 (energy) and dataQualifier 0 ("instantaneous"): one value per
interval, the interval's mean, never min/max series. State of charge in per cent has no
IEEE 2030.5 UomType; it goes to the utility as DERStatus.stateOfChargeStatus."""
KIND = {STORED_ENERGY: KIND_ENERGY}
"""KindType per quantity where it is not power."""
MANDATORY_QUANTITIES = ("W", "var", "V")
# PhaseCode (sep.xsd): 0 not applicable, 128 A, 64 B, 32 C; 129 AN, 65 BN, 33 CN. Powers are per
# phase (A, B, C); voltages are phase to neutral (AN, BN, CN).
PHASE_CODE = {"": 0, "A": 128, "B": 64, "C": 32}
PHASE_TO_NEUTRAL_CODE = {"": 0, "A": 129, "B": 65, "C": 33}
PHASED_QUANTITIES = ("W", "var", "V")
"""Quantities that may come per phase (frequency is one for the whole site)."""


# --------------------------------------------------------------------------------------------
# Poll rates


def poll_rate(value: int | None, inherited: int | None = None) -> int:
    """The effective pollRate: the resource's own, else its list's, else the spec default."""
    rate = value if value is not None else inherited
    if rate is None:
        return DEFAULT_POLL_S
    return max(MIN_POLL_S, rate)


@dataclass(frozen=True)
class Fetched:
    """When a URL was last fetched (local clock) and how often it wants to be polled."""

    at: float
    rate: int

    @property
    def due(self) -> float:
        return self.at + self.rate


@dataclass
class PollBook:
    """Per-URL fetch times, so each resource is re-fetched at its own pollRate.

    Keyed by resolved URL, never by role: when a parent lists a child under a new href, the new
    URL is unknown here and therefore fetched at once (hrefs are never cached across a change).
    """

    entries: dict[str, Fetched] = field(default_factory=dict)

    def is_due(self, url: str, now: float) -> bool:
        entry = self.entries.get(url)
        return entry is None or now >= entry.due

    def record(self, url: str, now: float, rate: int) -> None:
        self.entries[url] = Fetched(now, rate)

    def next_due(self) -> float | None:
        return min((e.due for e in self.entries.values()), default=None)

    def keep_only(self, urls: Iterable[str]) -> None:
        """Forgets URLs no longer linked from the tree (their resources vanished)."""
        keep = set(urls)
        self.entries = {u: e for u, e in self.entries.items() if u in keep}

    def forget(self) -> None:
        self.entries.clear()


# --------------------------------------------------------------------------------------------
# URLs


def resolve_url(base: str, href: str, server: str) -> str:
    """An href (or ``Location``, ``replyTo``) from the server, resolved against the URL of the
    resource it came in, and kept only when it is on the utility server's own origin (scheme,
    host and port of ``server``, the DeviceCapability URL).

    Raises `InvalidUrl` (an ``HttpError``) for an href urllib cannot parse (``http://[::1/x``),
    one with characters a request cannot carry, or one on another origin: the link never
    follows the server's data to another host with our client certificate, and never lets a
    bad href escape as a bare ``ValueError``.
    """
    url = join_url(base, href)
    if origin_of(url) != origin_of(server):
        raise InvalidUrl(
            f"{href.strip()[:200]!r} points to another origin than the utility server "
            f"({url[:200]} is not on {server}); refused"
        )
    return url


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
"""A URL's scheme (RFC 3986): a colon later on (in a query, a fragment) is not one."""


def anchored_reply_to(reply_to: str | None, list_url: str) -> str | None:
    """A control's ``replyTo`` as the absolute path it names.

    A relative reference (``rsp/1``, ``../rsp``) is relative to the document it came in, the
    DERControlList, not to the DeviceCapability the responses are later posted from (its URL
    is all the pending response keeps). Absolute paths and URLs are left as they are (the
    origin check is the sender's), and so is one that cannot be resolved: the sender refuses it
    with its reason.
    """
    if reply_to is None:
        return None
    ref = reply_to.strip()
    if not ref or ref.startswith("/") or _SCHEME.match(ref):
        return reply_to  # an absolute path, a URL, or nothing
    try:
        parts = urlsplit(join_url(list_url, ref))
    except InvalidUrl:
        return reply_to
    return urlunsplit(("", "", parts.path, parts.query, ""))


# --------------------------------------------------------------------------------------------
# Clock


def clock_offset(server_time: int, local_sent: float, local_received: float) -> int:
    """Seconds to add to the local clock to get the server's: the midpoint of the exchange."""
    return round(server_time - (local_sent + local_received) / 2)


def server_anchor(server_time: int, mono_sent: float, mono_received: float) -> float:
    """Server time minus the monotonic clock at the midpoint of the GET of Time.

    Server time is then ``anchor + monotonic()``: a step of the wall clock (a Pi without RTC
    whose NTP corrects it) cannot move it, unlike ``wall + offset``.
    """
    return server_time - (mono_sent + mono_received) / 2


def server_time_problem(server_time: int) -> str | None:
    """Why a server's ``Time.currentTime`` cannot be believed, or None when it is plausible.

    A time before 2020 or from 2100 on is a server fault (an int64 of ±2^63, a zeroed clock), not
    a reason to shift every schedule decision by centuries: the link keeps its last good offset.
    The local clock is *not* judged: a Pi without RTC may rightly be decades behind the server.
    """
    if SERVER_TIME_MIN <= server_time < SERVER_TIME_MAX:
        return None
    return (
        f"the utility server's clock says {server_time} s since 1970, outside "
        f"{SERVER_TIME_MIN}..{SERVER_TIME_MAX} (2020-2100); refused, keeping the last good "
        "clock offset"
    )


def wall_clock_step(previous_skew: float | None, skew: float) -> float | None:
    """The size of a wall-clock step, or None: ``skew`` is wall − monotonic at one observation,
    ``previous_skew`` at the one before. Both clocks run at the same rate, so a change of more
    than `CLOCK_STEP_S` means the wall clock was set (NTP, an installer, a late RTC)."""
    if previous_skew is None:
        return None
    step = skew - previous_skew
    return step if abs(step) > CLOCK_STEP_S else None


def clock_warning(offset: int) -> str | None:
    if abs(offset) > CLOCK_WARN_S:
        return (
            f"local clock differs from the utility server's by {offset:+d} s; "
            "schedules follow the server's clock"
        )
    return None


# --------------------------------------------------------------------------------------------
# EndDevice and registration


def find_end_device(devices: Iterable[EndDevice], lfdi: str) -> EndDevice | None:
    """Our EndDevice by LFDI (case-insensitive), else by the SFDI derived from it."""
    want = lfdi.strip().upper()
    sfdi = sfdi_from_lfdi(want)
    listed = list(devices)
    for device in listed:
        if device.lfdi is not None and device.lfdi.upper() == want:
            return device
    for device in listed:
        if device.lfdi is None and device.sfdi == sfdi:
            return device
    return None


def new_end_device(lfdi: str, now: int, device_category: int = DEVICE_CATEGORY_PV) -> EndDevice:
    """The EndDevice to POST for in-band registration: uppercase LFDI, its SFDI, our category."""
    want = lfdi.strip().upper()
    return EndDevice(
        sfdi=sfdi_from_lfdi(want), changed_time=now, lfdi=want, device_category=device_category
    )


class RegistrationOutcome(StrEnum):
    OK = "ok"
    """The PIN matches the configured one."""
    NOT_CHECKED = "not-checked"
    """Nothing to compare: no PIN configured, or the server offers no Registration (CSIP-AUS
    ALL-05: an EndDevice without a RegistrationLink carries on; the message says so)."""
    PIN_MISMATCH = "pin-mismatch"


@dataclass(frozen=True)
class RegistrationCheck:
    outcome: RegistrationOutcome
    message: str
    server_pin: int | None = None
    warning: bool = False
    """True when the installer should hear about it (a configured PIN that could not be
    checked), although the controls are applied."""

    @property
    def acting(self) -> bool:
        """Whether this server's controls may be obeyed."""
        return self.outcome in (RegistrationOutcome.OK, RegistrationOutcome.NOT_CHECKED)


def check_registration(registration: Registration | None, pin: int | None) -> RegistrationCheck:
    """Compares the server's Registration PIN with the installer's.

    A mismatch means we are talking to a server (or an EndDevice record) that is not the one the
    installer registered with: its controls are not obeyed. Only a Registration whose PIN
    differs refuses: a server that offers no Registration (no RegistrationLink, or a 404 on it)
    is followed, as CSIP-AUS ALL-05 expects, with a warning that the PIN could not be checked.
    """
    server_pin = None if registration is None else registration.pin
    if pin is None:
        found = "no Registration" if registration is None else f"PIN {server_pin:06d}"
        return RegistrationCheck(
            RegistrationOutcome.NOT_CHECKED, f"no PIN configured (server: {found})", server_pin
        )
    if registration is None:
        return RegistrationCheck(
            RegistrationOutcome.NOT_CHECKED,
            f"the server offers no Registration for this device, so PIN {pin:06d} cannot be "
            "checked; carrying on without the check",
            warning=True,
        )
    if registration.pin != pin:
        return RegistrationCheck(
            RegistrationOutcome.PIN_MISMATCH,
            f"registration PIN mismatch: the server has {registration.pin:06d}, the installer "
            f"configured {pin:06d}; this server's controls are not applied",
            server_pin,
        )
    return RegistrationCheck(RegistrationOutcome.OK, f"PIN {pin:06d} matches", server_pin)


def connection_point_update(
    current: ConnectionPointResource | None, nmi: str, *, already_put: bool
) -> ConnectionPointResource | None:
    """The ConnectionPoint to PUT, or None when the server already holds our NMI.

    Put once per start even if it looks right (the server may have reset it between polls
    without changing what it shows), then only when it differs.
    """
    want = nmi.strip().upper()
    if already_put and current is not None and current.connection_point_id.upper() == want:
        return None
    return ConnectionPointResource(connection_point_id=want)


# --------------------------------------------------------------------------------------------
# DER reports


@dataclass(frozen=True)
class DerInfo:
    """What the device side tells the utility link about the site's DER (totals of all inverters).

    Plain data so the utility link never imports the device code. Powers in W, VA, var.
    """

    rated_w: float
    """Nameplate active power (rtgMaxW), summed over inverters."""
    max_w: float | None = None
    """Configured maximum (setMaxW); the rating when None."""
    rated_va: float | None = None
    """rtgMaxVA (VA), summed over inverters; None unless every inverter says."""
    rated_var: float | None = None
    """rtgMaxVar: var the DER can inject (over-excited), a positive magnitude."""
    rated_var_neg: float | None = None
    """rtgMaxVarNeg: var the DER can absorb (under-excited), a positive magnitude here; sent
    negative as IEEE 2030.5 wants."""
    rated_pf_over: float | None = None
    """rtgMinPFOverExcited: minimum displacement PF injecting var, in (0, 1]."""
    rated_pf_under: float | None = None
    """rtgMinPFUnderExcited: minimum displacement PF absorbing var, in (0, 1]."""
    set_va: float | None = None
    """setMaxVA etc.: the inverters' settings where they have them; the rating when None."""
    set_var: float | None = None
    set_var_neg: float | None = None
    set_pf_over: float | None = None
    set_pf_under: float | None = None
    der_type: int = DER_TYPE_PV
    modes_supported: int = 0
    """DERControlType bits the controller actually enforces (e.g. MODE_CONNECT)."""
    doe_modes_supported: int = DEFAULT_DOE_MODES
    set_grad_w: int = 27
    """setGradW to report while the server's DefaultDERControl gives none (1/100 %/s)."""
    connected: bool = True
    available: bool = True
    operating: bool = True
    fault: bool = False
    operational_mode: int = 2
    """OperationalModeStatusType: 0 unknown, 1 off, 2 operational, 3 test."""
    inverter_status: int | None = None
    alarm_status: int | None = None
    # Storage (a configured battery): IEEE 2030.5 DERCapability rtgMaxChargeRateW,
    # rtgMaxDischargeRateW, rtgMaxWh; DERSettings setMax*; DERStatus stateOfChargeStatus and
    # storageModeStatus. None: no battery, and the fields are left out.
    rated_charge_w: float | None = None
    rated_discharge_w: float | None = None
    rated_wh: float | None = None
    state_of_charge_pct: float | None = None
    storage_mode: int | None = None
    """StorageModeStatusType: 0 charging, 1 discharging, 2 holding."""
    min_wh: float | None = None
    """The energy dynexport never discharges the batteries below (Σ reserve SoC × capacity):
    CSIP-AUS v1.3 csipaus:setMinWh. None: unknown (then 0 Wh is reported on v1.3)."""
    enforced: frozenset[ControlType] = ENFORCED_CONTROLS
    """What the site enforces (controls.enforced_controls): the responses answer events by it,
    and ``doe_modes_supported`` should be ``controls.doe_modes_supported(enforced)``."""


DER_TYPE_STORAGE = 80
DER_TYPE_PV_AND_STORAGE = 83
"""DERType: 80 other storage system, 83 combined PV and storage."""
STORAGE_CHARGING, STORAGE_DISCHARGING, STORAGE_HOLDING = 0, 1, 2


def storage_mode_of(power_w: float | None, deadband_w: float = 50.0) -> int | None:
    """StorageModeStatusType from a battery's power (+ discharging): 0 charging, 1 discharging,
    2 holding (within the dead band)."""
    if power_w is None or not math.isfinite(power_w):
        return None
    if power_w > deadband_w:
        return STORAGE_DISCHARGING
    if power_w < -deadband_w:
        return STORAGE_CHARGING
    return STORAGE_HOLDING


def _opt_power(watts: float | None) -> Scaled | None:
    return None if watts is None or not math.isfinite(watts) else _power(watts)


def _power(watts: float) -> Scaled:
    return Scaled.from_real(float(watts))


def _opt_neg_power(magnitude: float | None) -> Scaled | None:
    """A var-absorbed magnitude as IEEE 2030.5's negative rtgMaxVarNeg/setMaxVarNeg."""
    if magnitude is None or not math.isfinite(magnitude) or magnitude <= 0:
        return None
    return _power(-magnitude)


PF_MULTIPLIER = -4
_PF_SCALE = 10**-PF_MULTIPLIER


def power_factor(pf: float | None, *, under_excited: bool = False) -> PowerFactor | None:
    """A minimum PF as PowerFactor displacement × 10^-4, rounded up (a minimum PF rounded up
    claims slightly less capability, never more). The XSD allows under-excited at most 0.9999,
    so a device claiming 1.0 there is reported as 0.9999. None for anything outside (0, 1]."""
    if pf is None or not math.isfinite(pf) or not 0 < pf <= 1:
        return None
    d = min(math.ceil(round(pf * _PF_SCALE, 6)), _PF_SCALE)
    if under_excited:
        d = min(d, _PF_SCALE - 1)
    return PowerFactor(max(d, 1), PF_MULTIPLIER)


def _or(setting: float | None, rating: float | None) -> float | None:
    return rating if setting is None else setting


def speaks_v13_storage(info: DerInfo, csipaus_ns: str) -> bool:
    """Whether the v1.3 storage fields go out: the server speaks CSIP-AUS v1.3 and the site has
    a controllable battery (it enforces storage targets). Never to a 1.2 server (its XSD refuses
    them), never without a battery (nothing would perform a storage target)."""
    return csipaus_ns == CSIPAUS_NS_13 and ControlType.STORAGE_TARGET_W in info.enforced


def der_capability(info: DerInfo, csipaus_ns: str = CSIPAUS_NS) -> DERCapability:
    """DERCapability advertising exactly what is enforced (modes from the caller); on a v1.3
    server with a battery also csipaus:vppModesSupported (bit 0, storage target)."""
    vpp = vpp_modes_supported(info.enforced) if speaks_v13_storage(info, csipaus_ns) else None
    return DERCapability(
        modes_supported=info.modes_supported,
        rtg_max_w=_power(info.rated_w),
        der_type=info.der_type,
        doe_modes_supported=info.doe_modes_supported,
        rtg_max_va=_opt_power(info.rated_va),
        rtg_max_var=_opt_power(info.rated_var),
        rtg_max_var_neg=_opt_neg_power(info.rated_var_neg),
        rtg_min_pf_over_excited=power_factor(info.rated_pf_over),
        rtg_min_pf_under_excited=power_factor(info.rated_pf_under, under_excited=True),
        rtg_max_charge_rate_w=_opt_power(info.rated_charge_w),
        rtg_max_discharge_rate_w=_opt_power(info.rated_discharge_w),
        rtg_max_wh=_opt_power(info.rated_wh),
        vpp_modes_supported=vpp,
    )


def effective_set_grad_w(info: DerInfo, server_default: int | None) -> int:
    """setGradW as reported: the server's DefaultDERControl value wins (harness ALL-13)."""
    return server_default if server_default is not None else info.set_grad_w


def der_settings(
    info: DerInfo, server_set_grad_w: int | None, now: int, csipaus_ns: str = CSIPAUS_NS
) -> DERSettings:
    """DERSettings; on a v1.3 server with a battery also csipaus:vppModesEnabled and
    csipaus:setMinWh (the reserve the batteries keep)."""
    v13 = speaks_v13_storage(info, csipaus_ns)
    min_wh = info.min_wh if info.min_wh is not None and math.isfinite(info.min_wh) else 0.0
    return DERSettings(
        set_grad_w=effective_set_grad_w(info, server_set_grad_w),
        set_max_w=_power(info.max_w if info.max_w is not None else info.rated_w),
        updated_time=now,
        modes_enabled=info.modes_supported,
        set_max_va=_opt_power(_or(info.set_va, info.rated_va)),
        set_max_var=_opt_power(_or(info.set_var, info.rated_var)),
        set_max_var_neg=_opt_neg_power(_or(info.set_var_neg, info.rated_var_neg)),
        set_min_pf_over_excited=power_factor(_or(info.set_pf_over, info.rated_pf_over)),
        set_min_pf_under_excited=power_factor(
            _or(info.set_pf_under, info.rated_pf_under), under_excited=True
        ),
        doe_modes_enabled=info.doe_modes_supported,
        set_max_charge_rate_w=_opt_power(info.rated_charge_w),
        set_max_discharge_rate_w=_opt_power(info.rated_discharge_w),
        set_max_wh=_opt_power(info.rated_wh),
        vpp_modes_enabled=vpp_modes_supported(info.enforced) if v13 else None,
        set_min_wh=_power(max(min_wh, 0.0)) if v13 else None,
    )


def gen_connect_bits(info: DerInfo) -> int:
    """ConnectStatusType bits: 0 connected, 1 available, 2 operating, 4 fault."""
    return (
        (1 if info.connected else 0)
        | (2 if info.available else 0)
        | (4 if info.operating else 0)
        | (16 if info.fault else 0)
    )


def der_status(info: DerInfo, now: int) -> DERStatus:
    return DERStatus(
        reading_time=now,
        alarm_status=info.alarm_status,
        gen_connect_status=StatusValue(gen_connect_bits(info), now),
        inverter_status=(
            None if info.inverter_status is None else StatusValue(info.inverter_status, now)
        ),
        operational_mode_status=StatusValue(info.operational_mode, now),
        state_of_charge_status=(
            None
            if info.state_of_charge_pct is None or not math.isfinite(info.state_of_charge_pct)
            else StatusValue(round(min(max(info.state_of_charge_pct, 0.0), 100.0) * 100), now)
        ),
        storage_mode_status=(
            None if info.storage_mode is None else StatusValue(info.storage_mode, now)
        ),
    )


SOC_STEP_PCT = 1.0
"""A state of charge this far (percentage points) from the one last reported is reported at
once; a smaller change waits for the telemetry post rate."""


@dataclass(frozen=True)
class DerReportKeys:
    """What each DER report says, timestamps excluded: a resource is PUT again when its own
    key changed (or at the DERList pollRate), never because another's did."""

    capability: tuple[object, ...]
    settings: tuple[object, ...]
    status: tuple[object, ...]
    """DERStatus less its state of charge, which varies continuously on a working battery
    (`soc`, `soc_due`)."""
    soc: int | None
    """stateOfChargeStatus as sent (hundredths of a percent), None without a battery."""


def der_report_key(
    info: DerInfo, server_set_grad_w: int | None, csipaus_ns: str = CSIPAUS_NS
) -> DerReportKeys:
    """What, if changed, makes each DER report due again: the bodies as they would be PUT, less
    their timestamps; a change of the server's CSIP-AUS version changes all (the v1.3 fields
    come or go). Built from the bodies, so only a change a body shows counts: a battery's
    state of charge moves DERStatus alone, never DERCapability or DERSettings."""
    status = der_status(info, 0)
    soc = status.state_of_charge_status
    return DerReportKeys(
        capability=(der_capability(info, csipaus_ns), csipaus_ns),
        settings=(der_settings(info, server_set_grad_w, 0, csipaus_ns), csipaus_ns),
        status=(replace(status, state_of_charge_status=None), csipaus_ns),
        soc=None if soc is None else soc.value,
    )


def der_reports_due(
    last_key: object | None,
    last_sent: float | None,
    key: object,
    now: float,
    rate: int,
) -> bool:
    """PUT a DER report at start, on change of its key, and every DERList pollRate."""
    return last_key is None or last_sent is None or key != last_key or now >= last_sent + rate


def soc_due(
    last_soc: int | None, last_sent: float | None, soc: int | None, now: float, rate: int
) -> bool:
    """Whether DERStatus is due for its state of charge alone (hundredths of a percent): at once
    when it appears, vanishes or moved `SOC_STEP_PCT` or more since the last PUT; a smaller
    move at the telemetry post rate ``rate``. A charging battery moves 0.1 % every few
    seconds: reported on every move, all three reports were PUT again every 5 s."""
    if soc == last_soc:
        return False
    if soc is None or last_soc is None or last_sent is None:
        return True
    return abs(soc - last_soc) >= SOC_STEP_PCT * 100 or now >= last_sent + rate


# --------------------------------------------------------------------------------------------
# Telemetry


PEN_DIGITS = 8
"""An mRID ends in the PEN written as this many decimal digits (CSIP-AUS TS 5573 §4.2)."""
MAX_PEN = 10**PEN_DIGITS - 1
"""99,999,999: the largest PEN that 8 decimal digits can hold. IANA's PENs are far below it;
a larger one cannot be written the way the harness reads it, so it is refused, not mangled."""


def pen_problem(pen: object) -> str | None:
    """Why ``pen`` cannot end our mRIDs, or None when it can."""
    if isinstance(pen, bool) or not isinstance(pen, int):
        return f"the PEN must be a whole number, not {pen!r}"
    if not 0 <= pen <= MAX_PEN:
        return (
            f"PEN {pen} cannot be written as the {PEN_DIGITS} decimal digits that end every "
            f"mRID (CSIP-AUS reads the last {PEN_DIGITS} characters of an mRID as the PEN in "
            f"decimal); it must be 0 to {MAX_PEN}"
        )
    return None


def mrid_for(lfdi: str, *parts: str, pen: int = 0) -> str:
    """A stable 128-bit mRID for one of our objects: 24 hex digits of a hash of the LFDI and
    what it names, then the PEN as 8 decimal digits (IEEE 2030.5 ends an mRID in the PEN of
    the organisation that made it; CSIP-AUS and its test harness read it in decimal).

    The same LFDI, name and PEN give the same mRID after every restart, so the server finds
    the mirrors it already holds instead of getting duplicates. ValueError for a PEN that 8
    decimal digits cannot hold (see `pen_problem`)."""
    problem = pen_problem(pen)
    if problem is not None:
        raise ValueError(problem)
    digest = hashlib.sha256("\x00".join((lfdi.upper(), *parts)).encode()).hexdigest()
    return f"{digest[: 32 - PEN_DIGITS].upper()}{pen:0{PEN_DIGITS}d}"


def phase_code(quantity: str, phase: str) -> int:
    """The ReadingType phase: 0 for a total, else A/B/C (powers) or AN/BN/CN (voltages)."""
    codes = PHASE_TO_NEUTRAL_CODE if quantity == "V" else PHASE_CODE
    return codes[phase]


def reading_type(
    quantity: str, interval_s: int, statistic: str = "average", phase: str = ""
) -> ReadingType:
    """The ReadingType of one series. Stored energy is a level, not a flow: no flowDirection."""
    return ReadingType(
        data_qualifier=QUALIFIER[statistic],
        flow_direction=None if quantity == STORED_ENERGY else 1,
        interval_length=interval_s,
        kind=KIND.get(quantity, KIND_POWER),
        phase=phase_code(quantity, phase),
        power_of_ten_multiplier=POWER_OF_TEN[quantity],
        uom=UOM[quantity],
    )


def statistics(min_max: bool = True) -> tuple[str, ...]:
    return STATISTICS if min_max else ("average",)


def series_statistics(quantity: str, min_max: bool = True) -> tuple[str, ...]:
    """The series one quantity is mirrored as: stored energy only as its "instantaneous"
    value (what the harness checks), the rest as `statistics`."""
    return ("instantaneous",) if quantity == STORED_ENERGY else statistics(min_max)


def series_mrid(
    lfdi: str, role: str, quantity: str, statistic: str, phase: str, *, pen: int = 0
) -> str:
    """The MirrorMeterReading mRID of one series; a total's average keeps its original mRID."""
    if statistic == "average" and not phase:
        return mrid_for(lfdi, "mmr", role, quantity, pen=pen)
    return mrid_for(lfdi, "mmr", role, quantity, phase, statistic, pen=pen)


def reading_set_mrid(
    lfdi: str, role: str, quantity: str, statistic: str, phase: str, start: int, *, pen: int = 0
) -> str:
    """The MirrorReadingSet mRID of one interval of one series (stable, so a re-post after a
    lost answer names the same set)."""
    if statistic == "average" and not phase:
        return mrid_for(lfdi, "mrs", role, quantity, str(start), pen=pen)
    return mrid_for(lfdi, "mrs", role, quantity, phase, statistic, str(start), pen=pen)


def _series_description(role: str, quantity: str, statistic: str, phase: str) -> str:
    where = f" phase {phase}" if phase else ""
    return f"{role} {quantity}{where} {statistic}"


def mirror_usage_point(
    lfdi: str,
    role: str,
    interval_s: int,
    quantities: Sequence[str] = MANDATORY_QUANTITIES,
    *,
    min_max: bool = True,
    pen: int = 0,
) -> MirrorUsagePoint:
    """The site (roleFlags 03) or DER (49) MirrorUsagePoint, declaring the totals of
    ``quantities`` (average, and minimum and maximum unless ``min_max`` is False). Series found
    later (per phase, Hz) are declared by POSTing it again with them (`Sep2Client._declare`).
    Every mRID ends in ``pen`` (`mrid_for`)."""
    flags = {SITE_ROLE: SITE_ROLE_FLAGS, DER_ROLE: DER_ROLE_FLAGS}[role]
    return MirrorUsagePoint(
        mrid=mrid_for(lfdi, "mup", role, pen=pen),
        role_flags=flags,
        service_category_kind=0,
        status=1,
        device_lfdi=lfdi.upper(),
        description=f"dynexport {role}",
        mirror_meter_readings=tuple(
            MirrorMeterReading(
                mrid=series_mrid(lfdi, role, q, stat, "", pen=pen),
                description=_series_description(role, q, stat, ""),
                reading_type=reading_type(q, interval_s, stat),
            )
            for q in quantities
            for stat in series_statistics(q, min_max)
        ),
    )


def reading_value(quantity: str, value: float) -> int:
    return round(value * 10.0 ** -POWER_OF_TEN[quantity])


def _statistic(r: IntervalReading, statistic: str) -> float:
    return {
        "average": r.mean,
        "minimum": r.minimum,
        "maximum": r.maximum,
        "instantaneous": r.mean,
    }[statistic]


def _mirrorable(r: IntervalReading) -> bool:
    if r.quantity not in UOM or r.phase not in PHASE_CODE:
        return False
    if r.phase and r.quantity not in PHASED_QUANTITIES:
        return False
    if r.quantity == STORED_ENERGY and r.role != DER_ROLE:
        return False  # stored energy belongs to the DER mirror only
    return all(math.isfinite(v) for v in (r.mean, r.minimum, r.maximum))


def meter_readings(
    lfdi: str,
    role: str,
    readings: Iterable[IntervalReading],
    *,
    min_max: bool = True,
    pen: int = 0,
) -> list[MirrorMeterReading]:
    """MirrorMeterReadings to POST to one MirrorUsagePoint: one per series (quantity, phase and
    statistic: average, minimum, maximum) and interval length, each with one MirrorReadingSet
    per interval (so a backlog after an outage goes in one MirrorMeterReading per series; one
    spanning a postRate change in one per length, each under its own ReadingType, with the
    same series mRID: post them in separate bodies, `by_interval_length`). Every mRID ends in
    ``pen``; a reading whose interval is not whole minutes on a minute boundary is left out
    (`on_minute_grid`: the utility would count it as a fault, and it cannot be fixed later)."""
    groups: dict[tuple[str, str, int], list[IntervalReading]] = {}
    for r in readings:
        if r.role == role and _mirrorable(r) and on_minute_grid(r.start, r.duration):
            groups.setdefault((r.quantity, r.phase, r.duration), []).append(r)
    out = []
    # One MirrorMeterReading per interval length: a ReadingType has one intervalLength, and a
    # backlog spanning a postRate change holds both (a caller posts each length on its own).
    for (quantity, phase, duration), items in sorted(groups.items()):
        items.sort(key=lambda r: r.start)
        for stat in series_statistics(quantity, min_max):
            sets = tuple(
                MirrorReadingSet(
                    mrid=reading_set_mrid(lfdi, role, quantity, stat, phase, r.start, pen=pen),
                    time_period=DateTimeInterval(r.start, r.duration),
                    readings=(
                        Reading(
                            value=reading_value(quantity, _statistic(r, stat)),
                            time_period=DateTimeInterval(r.start, r.duration),
                        ),
                    ),
                )
                for r in items
            )
            out.append(
                MirrorMeterReading(
                    mrid=series_mrid(lfdi, role, quantity, stat, phase, pen=pen),
                    description=_series_description(role, quantity, stat, phase),
                    mirror_reading_sets=sets,
                    reading_type=reading_type(quantity, duration, stat, phase),
                )
            )
    return out


def by_interval_length(mmrs: Iterable[MirrorMeterReading]) -> list[list[MirrorMeterReading]]:
    """``mmrs`` grouped by their ReadingType's intervalLength, the group holding the oldest
    interval first: one body per group, so no body names one series under two ReadingTypes."""
    groups: dict[int | None, list[MirrorMeterReading]] = {}
    for mmr in mmrs:
        length = None if mmr.reading_type is None else mmr.reading_type.interval_length
        groups.setdefault(length, []).append(mmr)

    def oldest(group: list[MirrorMeterReading]) -> int:
        return min((s.time_period.start for m in group for s in m.mirror_reading_sets), default=0)

    return sorted(groups.values(), key=oldest)


def reading_set_mrids(
    lfdi: str, r: IntervalReading, *, min_max: bool = True, pen: int = 0
) -> tuple[str, ...]:
    """The MirrorReadingSet mRIDs `meter_readings` posts ``r`` under (one per statistic); none
    for a reading it leaves out. The reading is done once each was accepted (or dropped)."""
    if not _mirrorable(r) or not on_minute_grid(r.start, r.duration):
        return ()
    return tuple(
        reading_set_mrid(lfdi, r.role, r.quantity, stat, r.phase, r.start, pen=pen)
        for stat in series_statistics(r.quantity, min_max)
    )


def without_sets(mmr: MirrorMeterReading, done: Set[str]) -> MirrorMeterReading | None:
    """``mmr`` less the MirrorReadingSets whose mRID is in ``done`` (None when none is left):
    a series the server accepted is not posted again while another is retried."""
    sets = tuple(s for s in mmr.mirror_reading_sets if s.mrid not in done)
    if len(sets) == len(mmr.mirror_reading_sets):
        return mmr
    return replace(mmr, mirror_reading_sets=sets) if sets else None


def halves(
    mmrs: Sequence[MirrorMeterReading],
) -> tuple[list[MirrorMeterReading], list[MirrorMeterReading]] | None:
    """``mmrs`` split in two smaller bodies (after a 413): by series, else one series' sets in
    two; None when it is one set already."""
    if len(mmrs) > 1:
        middle = len(mmrs) // 2
        return list(mmrs[:middle]), list(mmrs[middle:])
    if len(mmrs) == 1 and len(mmrs[0].mirror_reading_sets) > 1:
        sets = mmrs[0].mirror_reading_sets
        middle = len(sets) // 2
        return (
            [replace(mmrs[0], mirror_reading_sets=sets[:middle])],
            [replace(mmrs[0], mirror_reading_sets=sets[middle:])],
        )
    return None


def meter_reading_list(readings: Sequence[MirrorMeterReading]) -> MirrorMeterReadingList:
    """Every series of one MirrorUsagePoint in one body (one POST per mirror per postRate)."""
    return MirrorMeterReadingList.of(readings)


def post_rate(mup_rate: int | None, edev_rate: int | None) -> int:
    rate = mup_rate if mup_rate is not None else edev_rate
    return DEFAULT_POST_S if rate is None else max(MIN_POLL_S, rate)


def on_minute_grid(start: int, duration: int) -> bool:
    """Whether a reading's interval starts on a UTC minute boundary and lasts whole minutes, as
    the CSIP-AUS harness requires of every reading (seconds zero; duration > 0, a multiple of
    60)."""
    return start % 60 == 0 and duration > 0 and duration % 60 == 0


def interval_for(post_rate_s: int) -> int:
    """Averaging interval: the post rate when it is whole minutes that divide a day (60 s,
    300 s...), else 300 s. Never anything but whole minutes, so every interval starts on a
    minute boundary (CSIP-AUS harness: readings must align on minutes)."""
    if 0 < post_rate_s <= 3600 and post_rate_s % 60 == 0 and 86400 % post_rate_s == 0:
        return post_rate_s
    return DEFAULT_POST_S


# --------------------------------------------------------------------------------------------
# Responses


def response_body(pending: PendingResponse, lfdi: str) -> DERControlResponseResource:
    return DERControlResponseResource(
        end_device_lfdi=lfdi.upper(),
        subject=pending.mrid,
        status=int(pending.status),
        created_date_time=pending.created,
    )


class SendOutcome(StrEnum):
    SENT = "sent"
    RETRY = "retry"
    DROP = "drop"
    """The server refused it too often: given up."""
    REFUSED = "refused"
    """Never sent: its replyTo is unusable or on another origin (dropped at once, with a
    warning, so a stored bad response cannot block the queue or fail every restart)."""
    UNWRITABLE = "unwritable"
    """Never sent: the event's mRID is not hexBinary, so no valid Response can name it
    (dropped at once, with an error; it blocked every later response, kept in order, before)."""


_HOPELESS = frozenset({400, 403, 404, 405, 410, 413, 415})
REFUSALS_BEFORE_DROP = 3
"""A write the server refuses as wrong in itself this many times running is dropped and
logged (responses, telemetry series): one bad body must not block a queue for ever."""


def send_outcome(status: int, attempts: int, max_attempts: int = 20) -> SendOutcome:
    """What a response POST's status means: 2xx accepted; 429/5xx/timeouts retried; a 4xx that
    says the request itself is wrong (no such replyTo...) is retried a few times, then dropped so
    that one bad subject cannot block the queue forever."""
    if 200 <= status < 300:
        return SendOutcome.SENT
    if status in _HOPELESS and attempts >= min(max_attempts, REFUSALS_BEFORE_DROP):
        return SendOutcome.DROP
    return SendOutcome.RETRY


def reading_refused(status: int) -> bool:
    """Whether a readings POST's status refuses the body itself (any 4xx but 408 and 429, which
    say "later", and 404, which says the mirror is gone): counted towards dropping it."""
    return 400 <= status < 500 and status not in (404, 408, 429)


def reading_outcome(status: int, refusals: int) -> SendOutcome:
    """What a readings POST's status means, ``refusals`` counting this one when refused: 2xx
    accepted; refused as wrong in itself `REFUSALS_BEFORE_DROP` times running, dropped (the
    rule responses follow); anything else (5xx, 408, 429, a refusal not yet repeated) retried
    after the telemetry backoff."""
    if 200 <= status < 300:
        return SendOutcome.SENT
    if reading_refused(status) and refusals >= REFUSALS_BEFORE_DROP:
        return SendOutcome.DROP
    return SendOutcome.RETRY


def retry_delay(attempts: int, base: float = 5.0, cap: float = 300.0) -> float:
    """Backoff before the next attempt after ``attempts`` failures (5 s, 10 s, ... 300 s)."""
    return float(min(cap, base * 2 ** max(0, attempts - 1)))


def throttle_delay(rate: int, count: int, cap: float = DEFAULT_POLL_S) -> float:
    """How long a resource answered 429 without Retry-After is left alone: its pollRate, doubling
    with each further 429 in a row (``count`` before this one), up to ``cap`` (or the pollRate
    itself when that is longer)."""
    return float(min(rate * 2 ** max(0, count), max(rate, cap)))


# --------------------------------------------------------------------------------------------
# Programs


def merge_programs(programs: Iterable[ProgramControls]) -> tuple[ProgramControls, ...]:
    """One entry per program href (a program listed by two FSAs counts once), stable order."""
    seen: dict[str, ProgramControls] = {}
    for program in programs:
        seen.setdefault(program.href, program)
    return tuple(seen.values())


def describe_statuses(statuses: Mapping[str, tuple[ResponseStatus, ...]]) -> dict[str, list[int]]:
    return {m: [int(s) for s in ss] for m, ss in statuses.items()}
