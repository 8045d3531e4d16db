"""The CSIP-AUS direct-device client: a thin trio adapter around `flow`, `schedule` and friends.

One task, one loop: each `step` walks whatever part of the resource tree is due (per its own
pollRate, following links every time), advances the response tracker, posts due responses and
telemetry, and says when it next needs to wake. Requests go one at a time over one kept-alive
mutual-TLS connection (`httpio.HttpClient`). A 429 or 503 with Retry-After is not waited out
inside the request: the URL is marked "not before T" and the walk (or the POST) is retried then,
so one throttled resource never holds up the rest of the step. A 429 without Retry-After backs off
from the resource's pollRate, doubling.

What survives a restart (schedule, unsent responses, unsent readings) is written through
`state.LinkStore` before the network is touched again. The app reads `state()` (a frozen
snapshot) and `active_controls()`; it feeds `update_der()` and `add_sample()`. Nothing here
imports the device side.
"""

from __future__ import annotations

import functools
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, TypeVar

import trio

from dynexport.httpio import (
    HttpClient,
    HttpError,
    HttpStatusError,
    Response,
    client_context,
    response_retry_after,
)
from dynexport.httpio.client import InvalidUrl, origin_of
from dynexport.sep2 import discovery, flow, responses
from dynexport.sep2.controls import ENFORCED_CONTROLS, ProgramControls
from dynexport.sep2.discovery import WELL_KNOWN_PATH, DiscoveryError
from dynexport.sep2.flow import DerInfo, PollBook, RegistrationCheck
from dynexport.sep2.identity import device_lfdi, sfdi_from_lfdi
from dynexport.sep2.resources import (
    DER,
    ConnectionPoint,
    DefaultDERControl,
    DERControl,
    DERControlList,
    DERList,
    DERProgramList,
    DeviceCapability,
    EndDevice,
    EndDeviceList,
    FunctionSetAssignmentsList,
    Link,
    MirrorMeterReading,
    MirrorUsagePoint,
    MirrorUsagePointList,
    Registration,
    ResourceList,
    Time,
    parse_as,
    program_controls,
    to_xml,
)
from dynexport.sep2.responses import PendingResponse, ResponseTracker
from dynexport.sep2.schedule import (
    ActiveControls,
    ScheduleSnapshot,
    Segment,
    missing_before_their_end,
    schedule_between,
    time_verified,
)
from dynexport.sep2.schedule import active_controls as schedule_active
from dynexport.sep2.state import LinkStore
from dynexport.sep2.telemetry import DER as DER_ROLE
from dynexport.sep2.telemetry import SITE as SITE_ROLE
from dynexport.sep2.telemetry import IntervalAverager, IntervalReading, Sample
from dynexport.sep2.xml import (
    CSIPAUS_NS,
    CSIPAUS_NS_13,
    CSIPAUS_VERSIONS,
    Sep2ParseError,
    declared_csipaus_namespace,
    page_query,
)
from dynexport.system.clock import kernel_clock_synchronised
from dynexport.system.config import UtilityConfig

log = logging.getLogger("dynexport.sep2.client")

R = TypeVar("R")
L = TypeVar("L", bound=ResourceList[Any])

WALK_RETRY_S = (5.0, 15.0, 30.0, 60.0)
"""Backoff before re-walking after a failed walk (the last value repeats)."""
MAX_ERRORS = 10
MIN_SLEEP_S = 0.05
"""The run loop never sleeps less than this between steps, so no wake-up computed in the past
can make it spin."""
SETTLE_CHECK_S = 1.0
"""While responses wait for responses.json to be written, the link still steps this often."""
PART_RETRY_S = (5.0, 15.0, 60.0, 300.0)
"""Backoff of one part of a step (DER reports, responses, telemetry) after an unexpected
exception in it or a write the server refused (the last value repeats)."""
FLOOR_AHEAD_MAX_S = 86_400
"""An end of closed intervals further than this ahead of the verified server time cannot be
one the link closed (damage): it is forgotten rather than hold back telemetry until then."""
CP_PART, DER_PART, TELEMETRY_PART = "ConnectionPoint", "DER reports", "telemetry"
"""The parts whose writes the server may refuse without stopping the walk (`_write_part`)."""


class StoredSchedule(Enum):
    """`Sep2Client`'s default for ``stored_schedule``: read it from the link's store."""

    READ = "read"


class Sep2Error(Exception):
    """A utility-link failure described for the installer (wraps HTTP, TLS and parse errors)."""


class Refused(Sep2Error):
    """The server answered a write (PUT) with a status that is not 2xx: it is there and
    answers, it does not accept this body. Not a reason to stop reading the limits."""


_ABSENT = object()
"""Cached for a resource the server answered 404 for (`Sep2Client._get_optional`)."""


class Throttled(HttpStatusError):
    """The server answered 429 (or 503 with Retry-After): ``url`` is not asked again before
    ``not_before`` (monotonic time)."""

    def __init__(self, status: int, url: str, body: bytes, not_before: float) -> None:
        super().__init__(status, url, body)
        self.not_before = not_before


@dataclass(frozen=True)
class ClientOptions:
    device_category: int = flow.DEVICE_CATEGORY_PV
    page_size: int = flow.PAGE_SIZE
    telemetry_capacity: int = 2016
    horizon_s: int = 86_400
    max_sleep_s: float = 30.0
    http_timeout: float = 30.0
    http_retries: int = 3
    quantities: tuple[str, ...] = flow.MANDATORY_QUANTITIES
    """Quantities declared when a MirrorUsagePoint is created. Whatever else the samples carry
    (Hz, per-phase values) is mirrored too, declared first (`Sep2Client._declare`)."""
    min_max: bool = True
    """Mirror each interval's minimum and maximum (dataQualifier 9 and 8) besides the average."""
    telemetry_batch: int = 400
    """Interval readings per post (per mirror: one MirrorMeterReadingList, or one POST per
    series when the server takes no lists)."""
    parse_in_thread_bytes: int = 16 * 1024
    """Bodies larger than this are parsed in a worker thread, not on the event loop the
    controller shares (about 0.1 ms per KiB here, a few times that on a Pi: a full 100-control
    page would hold the loop for tens of ms)."""
    parse_threads: int = 1
    """Worker threads parsing at once (bounded: a walk parses one page at a time anyway)."""
    thread_events: int = 1000
    """A program with more events than this is converted for the scheduler in a worker thread."""


@dataclass(frozen=True)
class WalkResult:
    """Everything one walk of the tree found (what `dynexport sep2 walk` prints)."""

    dcap_url: str
    fetched_at: int
    """Server time of the walk."""
    clock_offset: int
    end_device_url: str | None = None
    end_device: EndDevice | None = None
    registration: Registration | None = None
    registration_check: RegistrationCheck | None = None
    connection_point: ConnectionPoint | None = None
    der_url: str | None = None
    programs: tuple[ProgramControls, ...] = ()
    complete: bool = False
    """True when every program list was fetched in full (the result may replace the schedule)."""
    warnings: tuple[str, ...] = ()
    requests: int = 0


@dataclass(frozen=True)
class LinkState:
    """A read-only view of the link for the app and the web UI."""

    connected: bool
    lfdi: str
    sfdi: int
    acting: bool
    """False when the registration check failed: this server's controls are not applied."""
    registration: RegistrationCheck | None
    last_poll: float | None
    """Local time of the last successful walk."""
    clock_offset: int
    active: ActiveControls | None
    schedule: tuple[Segment, ...]
    programs: tuple[ProgramControls, ...]
    pending_responses: int
    telemetry_backlog: int
    telemetry_dropped: int
    last_error: str | None
    errors: tuple[tuple[float, str], ...] = ()
    warnings: tuple[str, ...] = ()
    """The last walk's warnings (clock offset, a PIN that could not be checked, missing links)."""
    clock_alert: str | None = None
    """Set while the server's Time is refused as absurd (before 2020 or from 2100 on): the last
    good offset is kept. Also recorded in ``errors``, so ``last_error`` shows it."""
    time_verified: bool = True
    """False while neither the server's Time (in this process) nor a synchronised kernel clock
    says what time it is: ``active`` is then the strictest of the stored schedule ahead."""
    telemetry_unverified_samples: int = 0
    """Samples not averaged because the time was not verified (their interval is unknown)."""
    telemetry_late_samples: int = 0
    """Samples dated into an interval already closed (the server clock offset moved back):
    dropped, so no interval is reported twice."""
    telemetry_refused: int = 0
    """MirrorReadingSets given up after the server refused them `flow.REFUSALS_BEFORE_DROP`
    times running."""


@dataclass
class _Attempt:
    count: int = 0
    next_try: float = 0.0
    not_before: float = 0.0
    """The server's Retry-After on the last attempt, as a monotonic time."""


@dataclass
class _Telemetry:
    mup_list_url: str | None = None
    mup_urls: dict[str, str] = field(default_factory=dict)
    post_rate: int = flow.DEFAULT_POST_S
    last_post: float | None = None
    retry_at: float = 0.0
    failures: int = 0
    lists: bool | None = None
    """Whether the server takes a MirrorMeterReadingList on POST to a MirrorUsagePoint (None:
    not tried yet). IEEE 2030.5 allows it; a server answering 400/405/415/501 to one gets one
    MirrorMeterReading per POST from then on."""
    refusals: dict[str, int] = field(default_factory=dict)
    """Series mRID → refusals in a row (a 4xx saying the body itself is wrong)."""
    refused_sets: int = 0
    """MirrorReadingSets dropped after `flow.REFUSALS_BEFORE_DROP` refusals in a row."""
    declared: dict[str, dict[str, MirrorMeterReading]] = field(default_factory=dict)
    """Role → series mRID → the series (no readings) our MirrorUsagePoint is known to declare
    (a series posted beyond them is declared first, by POSTing the MirrorUsagePoint again)."""


EXPECTED_ERRORS: tuple[type[Exception], ...] = (HttpError, Sep2ParseError, Sep2Error)
"""What a utility server can cause (logged as one line); anything else is a bug in this code
and is logged with its traceback. Either way the link backs off and carries on."""


def describe_error(exc: BaseException) -> str:
    """One line an installer can act on."""
    if isinstance(exc, Throttled):
        return f"server answered HTTP {exc.status} for {exc.url} (asking again later)"
    if isinstance(exc, HttpStatusError):
        return f"server answered HTTP {exc.status} for {exc.url}"
    if isinstance(exc, Sep2ParseError):
        return f"server sent an unusable body: {exc}"
    if isinstance(exc, InvalidUrl):
        return f"refused a URL from the server: {exc}"
    if isinstance(exc, EXPECTED_ERRORS):
        return f"{type(exc).__name__}: {exc}"
    return f"internal error ({type(exc).__name__}: {exc}); retrying, the stored schedule applies"


EMPTY_LISTING_RECHECK_S = 10
"""After one read listing no program where the schedule had some, the lists are read again
this soon (a fresh read must agree before the schedule is dropped)."""


class Sep2Client:
    """The utility link of one appliance: walks, obeys (via the app), responds, reports."""

    def __init__(
        self,
        config: UtilityConfig,
        data_dir: str | Any | None = None,
        *,
        der: DerInfo | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
        http: HttpClient | None = None,
        ssl_context: ssl.SSLContext | None = None,
        options: ClientOptions | None = None,
        read_only: bool = False,
        store: LinkStore | None = None,
        stored_schedule: ScheduleSnapshot | StoredSchedule | None = StoredSchedule.READ,
        clock_synchronised: Callable[[], bool | None] | None = None,
    ) -> None:
        """``read_only``: never PUT or POST (the installer's walk).

        ``store`` keeps the link's files (default: a `LinkStore` of ``data_dir``, which writes
        them in worker threads while `run` runs). ``stored_schedule`` is what its
        ``schedule.json`` holds when the caller has just read it (the app, which obeys it while
        the link is built); by default the link reads it.

        ``clock`` is the local wall time (``time.time``): used only for what is wall time by
        nature (the server clock offset, sample times, log timestamps). ``monotonic`` times
        everything the link schedules (polls, retries, Retry-After, posts); it defaults to
        ``time.monotonic`` with the real wall clock, and to ``clock`` itself when a fake wall
        clock is injected without one (a test clock that never steps).

        ``clock_synchronised`` says whether a time server has set the local clock (default: the
        kernel's own state with the real wall clock, always with a fake one); until the server's
        Time is read, a clock not known to be right makes the link obey the strictest of its
        stored schedule ahead (`time_verified`).
        """
        self.config = config
        self.options = options or ClientOptions()
        self.read_only = read_only
        self._clock = clock
        if monotonic is None:
            monotonic = time.monotonic if clock is time.time else clock
        self._mono = monotonic
        if clock_synchronised is None:
            clock_synchronised = kernel_clock_synchronised if clock is time.time else _always
        self._synchronised = clock_synchronised
        self.lfdi = device_lfdi(config.cert)
        self.sfdi = sfdi_from_lfdi(self.lfdi)
        if http is None:
            ctx = ssl_context or client_context(
                ca_files=[config.ca],
                cert_file=config.cert,
                key_file=config.key,
                check_hostname=config.check_hostname,
                extra_ciphers=config.ciphers,
            )
            http = HttpClient(
                config.server,
                ctx,
                timeout=self.options.http_timeout,
                retries=self.options.http_retries,
                wall_clock=clock,
                # the link schedules Retry-After itself; the one-shot installer walk just waits
                wait_retry_after=read_only,
            )
        self.http = http
        self.dcap_url = http.url_for(config.dcap)
        self._configured_dcap = self.dcap_url
        self._dcap_discovered = False
        """Whether the server's /.well-known/csipaus was asked this run (`_discover_dcap`)."""
        self.store = LinkStore(data_dir) if store is None else store
        self.snapshot: ScheduleSnapshot | None = (
            self.store.load_schedule()
            if stored_schedule is StoredSchedule.READ
            else stored_schedule
        )
        self._saved_schedule: ScheduleSnapshot | None = self.snapshot
        """What ``schedule.json`` holds (to skip rewriting it when a poll changed nothing)."""
        self.tracker: ResponseTracker = self.store.load_responses()
        self.outbox = self.store.load_outbox(self.options.telemetry_capacity)
        self.averager = IntervalAverager(flow.DEFAULT_POST_S, floor=self.outbox.closed_until)
        self._settled_saved = set(self.outbox.settled)
        """``outbox.settled`` as last saved."""
        self._late_samples = 0
        """Late samples counted by averagers since replaced (a change of interval length)."""
        self._unverified_samples = 0
        """Samples not filed because the time was not verified."""
        self.der = der
        self._stored_offset = 0 if self.snapshot is None else self.snapshot.clock_offset
        """The wall-clock offset until the server's Time is first read in this process."""
        self._anchor: float | None = None
        """Server time − monotonic, from the last good Time (None: not read yet)."""
        self._skew: float | None = None
        """wall − monotonic at the last look (a change is a wall-clock step)."""
        self._retime = False
        """A wall-clock step was seen: read the server's Time at once."""
        self.clock_alert: str | None = None
        self._part_failures: dict[str, int] = {}
        self._part_retry: dict[str, float] = {}
        """Step part → monotonic time before which it is not run again after an unexpected
        exception (so a bug in one part neither spins nor blocks the others)."""
        self._parse_limiter = trio.CapacityLimiter(max(1, self.options.parse_threads))
        self.registration: RegistrationCheck | None = None
        self.connected = False
        self.last_poll: float | None = None
        self.last_walk: WalkResult | None = None
        self.errors: list[tuple[float, str]] = []
        self._book = PollBook()
        self._cache: dict[str, object] = {}
        self._walk_failures = 0
        self._walk_retry_at = 0.0
        self._walked = False
        self._no_time_resource = False
        """The server's DeviceCapability, as last read, has no TimeLink."""
        self._empty_since: float | None = None
        """When (monotonic) a complete read first listed no program where the schedule had
        some; not believed until a read ``EMPTY_LISTING_RECHECK_S`` later agrees."""
        self._missing_since: float | None = None
        self._missing_seen: frozenset[str] = frozenset()
        """Events of the schedule a complete read found gone before their end, and when, not
        yet believed (`_missing_events_kept`)."""
        self._default_gone: set[str] = set()
        """DefaultDERControl URLs answered 404 once where there was one (kept until a re-read)."""
        self._requests = 0
        self._edev_url: str | None = None
        self._registered_url: str | None = None
        """Where our EndDevice was registered by this process (ALL-24: never POST it twice)."""
        self._dcap: DeviceCapability | None = None
        self._edev: EndDevice | None = None
        self._edev_list_rate: int | None = None
        self._cp_put = False
        self._der: DER | None = None
        self._der_url: str | None = None
        self._der_rate = flow.DEFAULT_POLL_S
        self._der_sent: dict[str, tuple[object, float]] = {}
        """DER report → (its key, monotonic time) at its last accepted PUT."""
        self._der_soc: int | None = None
        """stateOfChargeStatus at the last accepted DERStatus PUT."""
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self._not_before: dict[str, tuple[int, float]] = {}
        """URL → (status, monotonic time) before which it is not asked again (429/503)."""
        self._throttles: dict[str, int] = {}
        """URL → consecutive 429s without Retry-After (the backoff doubles with each)."""
        self._telemetry = _Telemetry()
        self._wake = trio.Event()
        self.store.on_progress = lambda: self._wake.set()
        self._csipaus_seen: str | None = None
        """The CSIP-AUS namespace the server's last body declaring one used (None: none yet)."""

    # -- what the app reads and feeds ---------------------------------------------------------

    @property
    def clock_offset(self) -> int:
        """Seconds to add to the local wall clock to get the server's.

        Once the server's Time was read, derived from the monotonic clock (server time =
        anchor + monotonic), so a step of the wall clock changes it at once, before the server
        is even asked again; until then the offset stored with the schedule."""
        if self._anchor is None:
            return self._stored_offset
        return round(self._anchor + self._mono() - self._clock())

    def server_now(self, local: float | None = None) -> int:
        """Server time now, or at local wall time ``local``."""
        if local is None and self._anchor is not None:
            return int(self._anchor + self._mono())
        return int(self._clock() if local is None else local) + self.clock_offset

    def _server_at(self, mono: float) -> float:
        """Server time at monotonic time ``mono``."""
        if self._anchor is not None:
            return self._anchor + mono
        return self._clock() + self._stored_offset + (mono - self._mono())

    def _observe_clocks(self) -> None:
        """Notices a wall-clock step (wall − monotonic moved): the server's Time is read again
        at once, so the offset is re-measured rather than trusted across the step."""
        skew = self._clock() - self._mono()
        step = flow.wall_clock_step(self._skew, skew)
        self._skew = skew
        if step is not None:
            log.warning(
                "the local wall clock stepped by %+.0f s; reading the server's time again", step
            )
            self._retime = True

    @property
    def acting(self) -> bool:
        return self.registration is None or self.registration.acting

    def programs(self) -> tuple[ProgramControls, ...]:
        return () if self.snapshot is None else self.snapshot.programs

    @property
    def time_verified(self) -> bool:
        """Is server time known? Yes once the server's Time was read in this process (it then
        rides on the monotonic clock); before that, only while the kernel's clock is set by a
        time server and the stored offset is one such a clock could have measured (within
        ``flow.CLOCK_WARN_S``: a larger one was measured against a clock that was wrong, or
        the server's is, and which cannot be told). A Pi has no real-time clock: after a power
        cut it starts behind by the time the power was off, and until NTP or the utility
        answers, the stored schedule's event in force is unknown."""
        anchored = self._anchor is not None
        return time_verified(anchored, self._synchronised(), self._stored_offset)

    def active_controls(self, local: float | None = None) -> ActiveControls | None:
        """The controls in force now (server clock applied), or None when none may be obeyed.

        While the time is not verified, the strictest of the stored schedule ahead of the local
        clock (`ScheduleSnapshot.strictest_ahead`)."""
        if not self.acting or self.snapshot is None or not self.snapshot.programs:
            return None  # no program listed (twice in a row): no schedule, the fallback applies
        if not self.time_verified:
            wall = self._clock() if local is None else local
            return self.snapshot.strictest_ahead(wall, self.lfdi)
        return self.snapshot.active_at(self.server_now(local), self.lfdi)

    def schedule(self, hours: float = 24.0, local: float | None = None) -> list[Segment]:
        if not self.acting or self.snapshot is None:
            return []
        start = self.server_now(local)
        return self.snapshot.schedule(start, start + int(hours * 3600), self.lfdi)

    def state(self) -> LinkState:
        return LinkState(
            connected=self.connected,
            lfdi=self.lfdi,
            sfdi=self.sfdi,
            acting=self.acting,
            registration=self.registration,
            last_poll=self.last_poll,
            clock_offset=self.clock_offset,
            active=self.active_controls(),
            schedule=tuple(self.schedule(self.options.horizon_s / 3600)),
            programs=self.programs(),
            pending_responses=len(self.tracker.pending),
            telemetry_backlog=len(self.outbox.pending),
            telemetry_dropped=self.outbox.dropped,
            last_error=self.errors[-1][1] if self.errors else None,
            errors=tuple(self.errors),
            warnings=() if self.last_walk is None else self.last_walk.warnings,
            clock_alert=self.clock_alert,
            time_verified=self.time_verified,
            telemetry_unverified_samples=self._unverified_samples,
            telemetry_late_samples=self._late_samples + self.averager.late,
            telemetry_refused=self._telemetry.refused_sets,
        )

    @property
    def csipaus_ns(self) -> str:
        """The namespace our CSIP-AUS elements are written in: ``utility.csipAusVersion`` when
        forced, else the one the server's bodies declare (v1.2 until one is seen)."""
        forced = CSIPAUS_VERSIONS.get(getattr(self.config, "csipaus_version", "auto"))
        return forced or self._csipaus_seen or CSIPAUS_NS

    @property
    def csipaus_version(self) -> str:
        """ "1.2" or "1.3", for the status."""
        return "1.3" if self.csipaus_ns == CSIPAUS_NS_13 else "1.2"

    def _observe_csipaus(self, body: bytes) -> None:
        """Learns the server's CSIP-AUS version from a body it served (a change is logged and
        makes the DER reports due again, with or without the v1.3 storage fields)."""
        seen = declared_csipaus_namespace(body)
        if seen is None or seen == self._csipaus_seen:
            return
        log.info("the utility server speaks CSIP-AUS in %s", seen)
        self._csipaus_seen = seen

    def update_der(self, info: DerInfo) -> None:
        """New DER facts; DERCapability/Settings/Status are re-PUT if they changed."""
        if info != self.der:
            self.der = info
            self._wake.set()

    def add_sample(self, sample: Sample) -> None:
        """A measurement taken at local time ``sample.t``; averaged in the server's clock.

        Dropped (and counted) while the time is not verified: a Pi without RTC after a power
        cut would file it hours from its true interval, and nothing later can say by how much
        exactly (the wall clock may have been stepped in between). A sample dated into an
        interval already closed is dropped by the averager (a closed interval never reopens).
        """
        if not self.time_verified and not self._local_clock_for_telemetry():
            if self._unverified_samples == 0:
                log.warning("telemetry: the time is not verified yet; samples are not averaged")
            self._unverified_samples += 1
            return
        late = self.averager.late
        shifted = Sample(t=sample.t + self._exact_offset(), values=sample.values)
        floor = self.averager.floor
        if floor is not None and floor > shifted.t + FLOOR_AHEAD_MAX_S:
            # Intervals close only once their end has passed in server time: a day ahead of
            # the verified time, the mark is damage (telemetry.json), not an interval sent.
            log.warning(
                "telemetry: intervals marked closed until %d, %.0f s ahead of the server's "
                "time; forgotten",
                floor,
                floor - shifted.t,
            )
            self.averager.floor = None
        self._file(self.averager.add(shifted))
        if self.averager.late > late and (self._late_samples + late) % 100 == 0:
            log.warning(
                "telemetry: a sample dated into an interval already closed was dropped "
                "(the server clock offset moved back); %d so far",
                self._late_samples + self.averager.late,
            )

    def _local_clock_for_telemetry(self) -> bool:
        """A server reached that cannot tell the time (no Time resource, or one refused as
        absurd: ``clock_alert``): telemetry is filed by the local clock, as the walk says it
        uses it, unless the kernel says that clock is not set (then nothing can date them).
        Waiting for a verified time there dropped every sample for the life of the process (no
        NTP either: only the utility's network reachable, or a clock whose synchronisation
        cannot be told)."""
        if self._synchronised() is False:  # known wrong (no RTC, no NTP yet): not that clock
            return False
        return self._no_time_resource or self.clock_alert is not None

    def _exact_offset(self) -> float:
        """Server minus local wall time, unrounded: the mapping `_post_telemetry` closes
        intervals by (`_server_at`), so a sample and the flush never disagree by a rounding."""
        now = self._mono()
        return self._server_at(now) - self._clock()

    def _file(self, closed: list[IntervalReading]) -> None:
        if closed:
            self.outbox.extend(closed)
            self.store.save_outbox(self.outbox)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Runs the link until cancelled.

        No exception from one step ends it: `step` confines each part's failures, and anything
        that still gets here (a bug) is logged with its traceback, recorded in `state()`, and
        retried after a backoff; the stored schedule stays in force throughout.
        """
        failures = 0
        try:
            async with trio.open_nursery() as writers:
                await writers.start(self.store.run)  # files written in threads, not on the loop
                task_status.started()
                while True:
                    try:
                        wake_at = await self.step()
                        delay = wake_at - self._mono()
                        failures = 0
                    except Exception as exc:
                        log.exception("utility link: unexpected error in a step; retrying")
                        self._record_error(describe_error(exc))
                        self.connected = False
                        delay = PART_RETRY_S[min(failures, len(PART_RETRY_S) - 1)]
                        failures += 1
                    delay = min(self.options.max_sleep_s, max(MIN_SLEEP_S, delay))
                    self._wake = trio.Event()
                    with trio.move_on_after(delay):
                        await self._wake.wait()
        finally:
            # the store's writers wrote what was unwritten on their way out, within a bound
            with trio.CancelScope(shield=True):
                await self.http.aclose()

    async def step(self) -> float:
        """Does whatever is due now; returns the monotonic time at which something is next due.

        Each part (walk, DER reports, responses, telemetry) is guarded on its own: a failure is
        recorded and backed off, and the other parts still run.
        """
        self._observe_clocks()
        now = self._mono()
        due = self._book.next_due()
        walk_due = not self._walked or self._retime or (due is not None and now >= due)
        if walk_due and now >= self._walk_retry_at:
            await self.poll()
        if self.acting and not self.read_only:
            if self.connected and self._der is not None:
                # DER facts changed since the walk: report now, not at the next poll
                await self._guarded(DER_PART, self._report_der_now)
            await self._guarded("responses", self._respond)
            await self._guarded(TELEMETRY_PART, self._post_telemetry)
        return self._next_wake()

    async def _report_der_now(self) -> None:
        await self._report_der(self.programs())

    async def _respond(self) -> None:
        await self._advance_responses()
        await self._send_responses()

    async def _guarded(self, part: str, action: Callable[[], Awaitable[None]]) -> None:
        """Runs one part of a step; what it raises is recorded (with its traceback when it is
        not a server's doing) and the part is backed off, never propagated."""
        if self._mono() < self._part_retry.get(part, 0.0):
            return
        try:
            await action()
        except Refused as exc:  # the server answers: this part waits, the link stays up
            self._part_refused(part, exc)
            return
        except EXPECTED_ERRORS as exc:
            self._fail(exc)
            return
        except Exception as exc:
            log.exception("utility link: unexpected error in %s; retrying later", part)
            self._record_error(describe_error(exc))
            count = self._part_failures.get(part, 0)
            self._part_failures[part] = count + 1
            delay = PART_RETRY_S[min(count, len(PART_RETRY_S) - 1)]
            self._part_retry[part] = self._mono() + delay
            return
        self._part_done(part)

    async def _write_part(self, part: str, action: Callable[[], Awaitable[None]]) -> None:
        """A write the walk makes (DER reports, creating the mirrors): refused by the server,
        it is recorded and backed off like the step's own parts, and the walk goes on. One
        refused PUT stopped the walk: the mirrors were never made (no telemetry ever), and
        each failed walk forgot every poll time, so the whole tree was read again every
        minute whatever its pollRates. A transport failure still fails the walk."""
        if self._mono() < self._part_retry.get(part, 0.0):
            return
        try:
            await action()
        except Refused as exc:
            self._part_refused(part, exc)
        else:
            self._part_done(part)

    def _part_refused(self, part: str, exc: Refused) -> None:
        count = self._part_failures.get(part, 0)
        self._part_failures[part] = count + 1
        delay = PART_RETRY_S[min(count, len(PART_RETRY_S) - 1)]
        self._part_retry[part] = self._mono() + delay
        message = describe_error(exc)
        log.warning("utility link: %s; tried again in %.0f s", message, delay)
        self._record_error(message)

    def _part_done(self, part: str) -> None:
        self._part_failures.pop(part, None)
        self._part_retry.pop(part, None)

    def _next_wake(self) -> float:
        now = self._mono()
        candidates = [now + self.options.max_sleep_s]
        due = self._book.next_due()
        if self._retime or not self._walked:
            candidates.append(max(now, self._walk_retry_at))
        elif due is not None:
            candidates.append(max(due, self._walk_retry_at))
        elif self._walk_retry_at:
            candidates.append(self._walk_retry_at)
        if self.acting and not self.read_only:
            if self.tracker.pending and self.store.settled():
                first = min((a.next_try for a in self._attempts.values()), default=now)
                candidates.append(max(first, self._part_retry.get("responses", 0.0)))
            elif self.tracker.pending:  # the store wakes the link once written; look anyway
                candidates.append(now + SETTLE_CHECK_S)
            tele = self._telemetry
            if tele.last_post is not None:
                post_at = max(tele.last_post + tele.post_rate, tele.retry_at)
                candidates.append(max(post_at, self._part_retry.get(TELEMETRY_PART, 0.0)))
        if self.snapshot is not None:
            server_now = self._server_at(now)
            change = self.snapshot.next_change(int(server_now), self.lfdi)
            if change is not None:
                candidates.append(now + (change - server_now))
        return min(candidates)

    async def poll(self) -> WalkResult | None:
        """One walk; failures are recorded (the stored schedule keeps applying) and backed off.

        Never raises (but for cancellation): a server's fault is logged as one line, anything
        else with its traceback."""
        try:
            result = await self.walk_once()
        except EXPECTED_ERRORS as exc:
            self._fail(exc)
            return None
        except Exception as exc:
            log.exception("utility link: unexpected error during the walk; retrying")
            self._fail(exc, logged=True)
            return None
        self._walk_failures = 0
        self._walk_retry_at = 0.0
        return result

    def _record_error(self, message: str) -> None:
        self.errors = [*self.errors, (self._clock(), message)][-MAX_ERRORS:]

    def _fail(self, exc: BaseException, *, logged: bool = False) -> None:
        message = describe_error(exc)
        if not logged:
            log.warning("utility link: %s", message)
        self.connected = False
        self._record_error(message)
        delay = WALK_RETRY_S[min(self._walk_failures, len(WALK_RETRY_S) - 1)]
        self._walk_failures += 1
        self._walk_retry_at = self._mono() + delay
        if isinstance(exc, Throttled):  # not before the server (or our backoff) allows
            self._walk_retry_at = max(self._walk_retry_at, exc.not_before)
        self._book.forget()  # after an outage walk everything again (links may have changed)
        self._walked = False

    # -- HTTP helpers -------------------------------------------------------------------------

    def _url(self, base: str, href: str) -> str:
        """An href from the server, resolved; `InvalidUrl` (an HttpError, so a failed walk or
        post, logged as a warning) when it is unparseable or on another origin."""
        return flow.resolve_url(base, href, self.dcap_url)

    async def _parse(self, cls: type[R], body: bytes) -> R:
        """Parses a body; a large one in a worker thread (bounded), so the controller sharing
        this event loop is not held up by a long list (10,000 controls: ~1 s of parsing)."""
        if len(body) <= self.options.parse_in_thread_bytes:
            return parse_as(cls, body)
        return await trio.to_thread.run_sync(
            functools.partial(parse_as, cls, body), limiter=self._parse_limiter
        )

    async def _get(
        self, url: str, cls: type[R], inherited: int | None = None, *, force: bool = False
    ) -> R:
        """The resource at ``url``: fetched when due (its pollRate) or new, else the cached one."""
        now = self._mono()
        cached = self._cache.get(url)
        if not force and isinstance(cached, cls) and not self._book.is_due(url, now):
            return cached
        response = await self._get_response(url, url, cached, inherited)
        obj = await self._parse(cls, response.body)
        self._cache[url] = obj
        # when the answer arrived, not when it was asked: a slow answer is not due again at once
        rate = flow.poll_rate(getattr(obj, "poll_rate", None), inherited)
        self._book.record(url, self._mono(), rate)
        return obj

    async def _get_response(
        self, target: str, url: str, cached: object, inherited: int | None
    ) -> Response:
        """GET ``target`` (``url`` or one of its pages), honouring and recording throttling."""
        held = self._not_before.get(url)
        if held is not None and self._mono() < held[1]:
            raise Throttled(held[0], url, b"", held[1])
        response = await self.http.get(target)
        self._requests += 1
        rate = flow.poll_rate(getattr(cached, "poll_rate", None), inherited)
        known = cached is not None or inherited is not None  # its poll schedule is known
        throttled = self._throttle(url, response, rate, polled=known)
        if throttled is not None:
            raise throttled
        response.raise_for_status()
        self._observe_csipaus(response.body)
        self._not_before.pop(url, None)
        self._throttles.pop(url, None)
        return response

    def _throttle(
        self, url: str, response: Response, rate: int | None, *, polled: bool = False
    ) -> Throttled | None:
        """For a 429, or a 503 with Retry-After: marks ``url`` "not before T" and says so.

        T is the server's Retry-After (capped as the HTTP client caps it), rounded up to the
        resource's next on-schedule poll when it is ``polled`` at ``rate``; without one (a 429),
        ``rate`` (the resource's pollRate) doubling with each 429 in a row. None otherwise, and
        for a 429 without Retry-After when no ``rate`` is known (POST/PUT: their callers back
        off)."""
        if response.status not in (429, 503):
            return None
        now = self._mono()  # "not before" is scheduled on the monotonic clock
        asked = response_retry_after(response, self._clock())
        if asked is not None:
            wait = min(asked, self.http.retry_after_cap)
            if rate is not None and polled:
                # A resource on a poll schedule resumes at its first on-schedule poll after the
                # block, not the instant it lifts:
                # never earlier than the schedule, and no race with the block's own end (the
                # harness's P-06 expects exactly one request after a 180 s Retry-After at 60 s).
                wait = rate * (math.floor(wait / rate) + 1)
        elif response.status == 429 and rate is not None:
            count = self._throttles.get(url, 0)
            self._throttles[url] = count + 1
            wait = flow.throttle_delay(rate, count)
        else:
            return None
        log.info("%s: HTTP %d; not asking again for %.0f s", url, response.status, wait)
        self._not_before[url] = (response.status, now + wait)
        return Throttled(response.status, url, response.body, now + wait)

    async def _get_list(
        self, url: str, cls: type[L], inherited: int | None = None, *, force: bool = False
    ) -> L:
        """Every page of a list, merged into one (paging by ``s``/``l``)."""
        now = self._mono()
        cached = self._cache.get(url)
        if not force and isinstance(cached, cls) and not self._book.is_due(url, now):
            return cached
        items: list[Any] = []
        first: L | None = None
        start = 0
        for _ in range(flow.MAX_PAGES):
            target = page_query(url, start, self.options.page_size)
            response = await self._get_response(target, url, cached, inherited)
            page = await self._parse(cls, response.body)
            if page.results != len(page.items):
                # Items we could not read (e.g. in a foreign namespace) must not look like
                # events that vanished: that would cancel them. Refuse the list instead, so the
                # last valid schedule stays in force.
                raise Sep2Error(
                    f"{url}: {cls.__name__} says results={page.results} but {len(page.items)} "
                    "items could be read; keeping the last valid data"
                )
            if first is not None and page.all != first.all:
                # the list changed between its pages: items shifted across a page boundary are
                # read twice or never (an event never read would be taken as cancelled)
                raise Sep2Error(
                    f"{url}: {cls.__name__} changed while its pages were read (all={first.all}, "
                    f"then {page.all}); keeping the last valid data"
                )
            first = first or page
            items.extend(page.items)
            following = page.next_start(start)
            if following is None:
                break
            start = following
        else:
            raise Sep2Error(f"{url}: more than {flow.MAX_PAGES} pages; refusing to follow")
        assert first is not None
        if len(items) < first.all:
            raise Sep2Error(
                f"{url}: {cls.__name__} says all={first.all} but only {len(items)} items arrived"
            )
        merged = replace(first, items=tuple(items), results=len(items))
        self._cache[url] = merged
        # when the last page arrived, not when the first was asked (a held request is not
        # due again at once)
        self._book.record(url, self._mono(), flow.poll_rate(first.poll_rate, inherited))
        return merged

    async def _get_optional(
        self, url: str, cls: type[R], inherited: int | None = None, *, force: bool = False
    ) -> R | None:
        """Like `_get`, but a 404 means "not there (yet)", until the resource is due again.

        The 404 replaces what was cached: a DefaultDERControl (or Registration) the server has
        removed came back from the cache at every walk before its next poll (a walk is due
        whenever any resource is), so a removed default limit applied most of the time."""
        absent = self._cache.get(url) is _ABSENT
        if absent and not force and not self._book.is_due(url, self._mono()):
            return None
        try:
            return await self._get(url, cls, inherited, force=force)
        except HttpStatusError as exc:
            if exc.status == 404:
                self._cache[url] = _ABSENT
                self._book.record(url, self._mono(), flow.poll_rate(None, inherited))
                return None
            raise

    async def _send(self, method: str, url: str, body: bytes) -> Response:
        response = await self.http.request(method, url, body=body)
        self._requests += 1
        return response

    def _refused(self, what: str, url: str, response: Response) -> Exception:
        """The error for a write the server did not accept (Throttled for 429/503 with
        Retry-After, so the retry waits for it)."""
        return self._throttle(url, response, None) or Refused(
            f"{what} {url}: HTTP {response.status}"
        )

    # -- the walk -----------------------------------------------------------------------------

    async def walk_once(self, *, force: bool = False) -> WalkResult:
        """Walks dcap → tm → edev → rg → cp → fsa → derp → derc/dderc (→ DER reports).

        Parts not yet due are taken from the previous fetch; links are followed every time, so
        a changed href is fetched at once. Raises on failure; the stored schedule is untouched.
        """
        force = force or not self._walked or self.read_only
        self._requests = 0
        warnings: list[str] = []
        visited: set[str] = set()
        if not self._dcap_discovered:
            await self._discover_dcap(warnings)
        try:
            dcap = await self._get(self.dcap_url, DeviceCapability, force=force)
        except HttpStatusError as exc:
            if exc.status in (404, 410):  # moved: the well-known file is asked again next walk
                self._dcap_discovered = False
            raise
        visited.add(self.dcap_url)
        dcap_rate = flow.poll_rate(dcap.poll_rate)

        if dcap.time_link is not None:
            self._no_time_resource = False
            tm_url = self._url(self.dcap_url, dcap.time_link.href)
            visited.add(tm_url)
            if force or self._retime or self._book.is_due(tm_url, self._mono()):
                await self._read_time(tm_url, dcap_rate, warnings)
        else:
            self._retime = False
            self._no_time_resource = True
            warnings.append("the server offers no Time resource; using the local clock")

        result = WalkResult(
            dcap_url=self.dcap_url, fetched_at=self.server_now(), clock_offset=self.clock_offset
        )
        if dcap.end_device_list_link is None:
            raise Sep2Error("DeviceCapability has no EndDeviceListLink")
        edev_list_url = self._url(self.dcap_url, dcap.end_device_list_link.href)
        visited.add(edev_list_url)
        edevs = await self._get_list(edev_list_url, EndDeviceList, dcap_rate, force=force)
        edev = flow.find_end_device(edevs.items, self.lfdi)
        edev_url: str | None = None
        if edev is None and self._registered_url is not None and not self.read_only:
            # registered earlier in this process but not (yet) listed: ask it, do not POST again
            edev = await self._get_optional(
                self._registered_url, EndDevice, edevs.poll_rate, force=True
            )
            edev_url = None if edev is None else self._registered_url
        if edev is None:
            if self.read_only:
                warnings.append(
                    f"no EndDevice with LFDI {self.lfdi} on the server: not registered yet "
                    "(the appliance registers itself when it runs)"
                )
                return self._finish_walk(replace(result, warnings=tuple(warnings)), visited)
            edev_url, edev = await self._register(edev_list_url, edevs.poll_rate)
        elif edev_url is None:
            edev_url = self._url(edev_list_url, edev.href) if edev.href else None
        if edev_url is None:
            raise Sep2Error("our EndDevice has no href")
        visited.add(edev_url)
        self._edev_url = edev_url
        self._edev_list_rate = edevs.poll_rate
        result = replace(result, end_device_url=edev_url, end_device=edev)

        registration = None
        if edev.registration_link is not None:
            rg_url = self._url(edev_url, edev.registration_link.href)
            visited.add(rg_url)
            registration = await self._get_optional(
                rg_url, Registration, edevs.poll_rate, force=force
            )
        check = flow.check_registration(registration, self.config.pin)
        if check != self.registration:
            level = log.warning if check.warning else log.info if check.acting else log.error
            level("registration: %s", check.message)
        self.registration = check
        result = replace(result, registration=registration, registration_check=check)
        if check.warning:
            warnings.append(check.message)
        if not check.acting:
            warnings.append(check.message)
            self.connected = True
            return self._finish_walk(replace(result, warnings=tuple(warnings)), visited)

        if edev.connection_point_link is not None:
            cp_url = self._url(edev_url, edev.connection_point_link.href)
            visited.add(cp_url)
            cp = await self._get_optional(cp_url, ConnectionPoint, edevs.poll_rate, force=force)
            update = (
                None
                if self.read_only
                else flow.connection_point_update(cp, self.config.nmi, already_put=self._cp_put)
            )
            if update is not None and self._mono() >= self._part_retry.get(CP_PART, 0.0):
                response = await self._send(
                    "PUT", cp_url, to_xml(update, csipaus_ns=self.csipaus_ns)
                )
                try:
                    if not 200 <= response.status < 300:
                        raise self._refused("PUT ConnectionPoint", cp_url, response)
                except Refused as exc:  # the limits are read all the same; the PUT retried
                    self._part_refused(CP_PART, exc)
                    warnings.append(str(exc))
                else:
                    self._part_done(CP_PART)
                    self._cp_put = True
                    cp = update
                    self._cache.pop(cp_url, None)
            result = replace(result, connection_point=cp)
        else:
            warnings.append("our EndDevice has no csipaus:ConnectionPointLink; NMI not sent")

        programs, complete = await self._walk_programs(edev, edev_url, edevs, force, visited)
        # The listing is as the server had it when its lists were read, at the end of the
        # walk: an event the server removed at its end, read just after it, was stamped before
        # it and reported cancelled (6) instead of completed (3).
        result = replace(result, programs=programs, complete=complete, fetched_at=self.server_now())
        # both asked (each notes what it saw): an empty listing misses every event too
        empty_kept = self._empty_listing_kept(complete, programs, warnings)
        missing_kept = self._missing_events_kept(complete, programs, result.fetched_at, warnings)
        if empty_kept or missing_kept:
            result = replace(result, complete=False)
            complete = False
        if complete:
            # Stored now, not after the walk: a later GET (DER list, mirrors) that fails must
            # not lose a cancellation already read (CSIP-AUS ALL-30, comms cut mid-walk).
            await self._store_programs(result)

        if edev.der_list_link is not None:
            der_list_url = self._url(edev_url, edev.der_list_link.href)
            visited.add(der_list_url)
            ders = await self._get_list(der_list_url, DERList, edevs.poll_rate, force=force)
            self._der_rate = flow.poll_rate(ders.poll_rate)
            if ders.items:
                der = ders.items[0]
                self._der = der
                self._der_url = self._url(der_list_url, der.href) if der.href else der_list_url
                result = replace(result, der_url=self._der_url)
                if not self.read_only:
                    await self._write_part(DER_PART, functools.partial(self._report_der, programs))
        else:
            warnings.append("our EndDevice has no DERListLink; DER reports not sent")

        self._dcap, self._edev = dcap, edev
        if not self.read_only:
            mirrors = functools.partial(
                self._ensure_mirrors, dcap, edev, force=force, visited=visited
            )
            await self._write_part(TELEMETRY_PART, mirrors)
        self.connected = True
        return self._finish_walk(replace(result, warnings=tuple(warnings)), visited)

    async def _discover_dcap(self, warnings: list[str]) -> None:
        """The DeviceCapability URL from the server's ``/.well-known/csipaus`` (CSIP-AUS v1.3;
        `discovery`), else the configured ``utility.dcap``. Asked at the link's first walk and
        again after the DeviceCapability answered 404 or 410. A server that cannot answer now
        (connection error, timeout, 5xx, 408, 429) is asked again at the next walk: falling
        back to ``/dcap`` then would read a path a v1.3 server may not serve for our version."""
        url = self.http.url_for(WELL_KNOWN_PATH)
        held = self._not_before.get(url)
        if held is not None and self._mono() < held[1]:
            raise Throttled(held[0], url, b"", held[1])
        # a well-known URI may redirect (RFC 8615): followed on the server's own origin
        response = await self.http.get(
            url, headers={"Accept": "application/json"}, follow_redirects=True
        )
        self._requests += 1
        throttled = self._throttle(url, response, None)
        if throttled is not None:  # 429 or 503 with Retry-After: not asked again before it
            raise throttled
        if response.status >= 500 or response.status in (408, 429):
            response.raise_for_status()
        problem: str | None = None
        found = None
        if 300 <= response.status < 400:
            # to another server (a login portal), or with no Location: it never changes, so
            # asking again would keep the link down for good (found by review)
            problem = f"{url}: HTTP {response.status}, a redirect the link does not follow"
        elif not 200 <= response.status < 300:
            # 404, 410 (v1.2 does not guarantee the file; the test server says 410), 403 ...
            log.info("%s: HTTP %d; DeviceCapability at the configured %s", url, response.status,
                     self._configured_dcap)  # fmt: skip
        else:
            versions = discovery.versions_for(getattr(self.config, "csipaus_version", "auto"))
            try:
                found = discovery.choose_dcap(response.body, versions, origin_of(url))
            except DiscoveryError as exc:
                problem = f"{url}: {exc}"
            else:
                if found is None:
                    problem = f"{url} names no DeviceCapability for {' or '.join(versions)}"
        self.dcap_url = self._configured_dcap
        if found is not None:
            try:
                self.dcap_url = self._url(url, found.path)
            except InvalidUrl as exc:
                problem = f"{url}: {exc}"
            else:
                log.info("DeviceCapability for %s found at %s (%s)", found.version,
                         self.dcap_url, url)  # fmt: skip
        if problem is not None:
            problem += f"; using the configured {self._configured_dcap}"
            warnings.append(problem)
            log.warning("%s", problem)
        self._dcap_discovered = True

    async def _read_time(self, tm_url: str, rate: int, warnings: list[str]) -> None:
        """GET Time and re-anchor server time on the monotonic clock, unless the server's time
        is absurd: then the last good offset stays and `clock_alert` says why."""
        sent = self._mono()
        tm = await self._get(tm_url, Time, rate, force=True)
        received = self._mono()
        self._retime = False
        problem = flow.server_time_problem(tm.current_time)
        if problem is not None:
            if problem != self.clock_alert:
                log.error("%s", problem)
                self._record_error(problem)
            self.clock_alert = problem
            warnings.append(problem)
            return
        if self.clock_alert is not None:
            log.info("the utility server's clock is plausible again")
        self.clock_alert = None
        self._anchor = flow.server_anchor(tm.current_time, sent, received)
        warning = flow.clock_warning(self.clock_offset)
        if warning:
            log.warning("%s", warning)
            warnings.append(warning)

    def _finish_walk(self, result: WalkResult, visited: set[str]) -> WalkResult:
        self._walked = True
        self.last_poll = self._clock()  # shown to the installer: wall time
        self._book.keep_only(visited)
        self._cache = {u: o for u, o in self._cache.items() if u in visited}
        self._default_gone &= visited
        now = self._mono()
        self._not_before = {u: v for u, v in self._not_before.items() if v[1] > now}
        result = replace(result, requests=self._requests)
        self.last_walk = result
        return result

    async def _store_programs(self, result: WalkResult) -> None:
        """Every program list was read in full: they become the schedule (saved atomically)."""
        # Built from the previous snapshot, so the memory of events finished for good (reported
        # cancelled, superseded or completed) carries over: they never come back into force.
        build = functools.partial(
            ScheduleSnapshot.first,
            result.programs,
            result.fetched_at,
            self.clock_offset,
            self.lfdi,
            previous=self.snapshot,
        )
        self.snapshot = await self._pure(build, _event_count(result.programs))
        if not self.read_only and schedule_needs_saving(self._saved_schedule, self.snapshot):
            self.store.save_schedule(self.snapshot)
            self._saved_schedule = self.snapshot

    async def _register(self, edev_list_url: str, rate: int | None) -> tuple[str, EndDevice]:
        """In-band registration: POST our EndDevice, then look it up again before deciding
        anything (CSIP-AUS ALL-24): the list read before the POST is stale by definition.

        2xx with a usable ``Location``: that EndDevice is read. Otherwise (no or a refused
        Location, or 409 "already registered": lFDI/sFDI conflict) the list is read again and
        the EndDevice listed under our LFDI is used. Never POSTs twice in one walk: if it is
        still not found, the walk fails and is retried after the usual backoff.
        """
        body = to_xml(
            flow.new_end_device(self.lfdi, self.server_now(), self.options.device_category)
        )
        response = await self._send("POST", edev_list_url, body)
        # whatever the answer, the cached list predates it
        self._cache.pop(edev_list_url, None)
        self._book.entries.pop(edev_list_url, None)
        if response.status == 409:
            log.info("the server says our EndDevice exists already (409); looking it up")
        elif not 200 <= response.status < 300:
            raise self._refused("registering our EndDevice: POST", edev_list_url, response)
        location = response.header("location") if response.status != 409 else None
        if location:
            try:
                url = self._url(edev_list_url, location)
            except InvalidUrl as exc:
                log.warning("registration: %s; looking our EndDevice up in the list", exc)
            else:
                log.info("registered EndDevice %s at %s", self.lfdi, url)
                self._registered_url = url
                return url, await self._get(url, EndDevice, rate, force=True)
        edevs = await self._get_list(edev_list_url, EndDeviceList, rate, force=True)
        found = flow.find_end_device(edevs.items, self.lfdi)
        if found is None or not found.href:
            what = "exists (409)" if response.status == 409 else "was accepted"
            raise Sep2Error(f"the server says our EndDevice {what} but does not list it")
        url = self._url(edev_list_url, found.href)
        self._registered_url = url
        return url, found

    async def _walk_programs(
        self,
        edev: EndDevice,
        edev_url: str,
        edevs: EndDeviceList,
        force: bool,
        visited: set[str],
    ) -> tuple[tuple[ProgramControls, ...], bool]:
        if edev.function_set_assignments_list_link is None:
            return (), True
        fsa_url = self._url(edev_url, edev.function_set_assignments_list_link.href)
        visited.add(fsa_url)
        fsas = await self._get_list(
            fsa_url, FunctionSetAssignmentsList, edevs.poll_rate, force=force
        )
        found: list[ProgramControls] = []
        for fsa in fsas.items:
            if fsa.der_program_list_link is None:
                continue
            base = self._url(fsa_url, fsa.href) if fsa.href else fsa_url
            derp_url = self._url(base, fsa.der_program_list_link.href)
            visited.add(derp_url)
            derps = await self._get_list(derp_url, DERProgramList, fsas.poll_rate, force=force)
            rate = flow.poll_rate(derps.poll_rate, fsas.poll_rate)
            for program in derps.items:
                program_url = self._url(derp_url, program.href) if program.href else derp_url
                controls: tuple[Any, ...] = ()
                if program.der_control_list_link is not None:
                    derc_url = self._url(program_url, program.der_control_list_link.href)
                    visited.add(derc_url)
                    dercs = await self._get_list(derc_url, DERControlList, rate, force=force)
                    controls = tuple(_anchored(c, derc_url) for c in dercs.items)
                default = None
                if program.default_der_control_link is not None:
                    dderc_url = self._url(program_url, program.default_der_control_link.href)
                    visited.add(dderc_url)
                    before = self._cache.get(dderc_url)
                    default = await self._get_optional(
                        dderc_url, DefaultDERControl, rate, force=force
                    )
                    default = self._default_kept(dderc_url, before, default)
                convert = functools.partial(
                    program_controls, program, controls, default, program_url
                )
                if len(controls) > self.options.thread_events:  # off the controller's loop
                    found.append(
                        await trio.to_thread.run_sync(convert, limiter=self._parse_limiter)
                    )
                else:
                    found.append(convert())
        return flow.merge_programs(found), True

    def _empty_listing_kept(
        self, complete: bool, programs: tuple[ProgramControls, ...], warnings: list[str]
    ) -> bool:
        """Whether a complete read of the program lists is not believed yet: one listing no
        program where the schedule had some (an empty list from a server glitch) lifted every
        utility limit and cancelled every stored event for good. The schedule is kept until a
        read ``EMPTY_LISTING_RECHECK_S`` later agrees (`_recheck_lists`)."""
        if not complete:  # says nothing either way (a failed walk does not restart the wait)
            return False
        if programs or self.snapshot is None or not self.snapshot.programs:
            self._empty_since = None
            return False
        now = self._mono()
        if self._empty_since is None:
            self._empty_since = now
            problem = "the server lists no DER program now; the last schedule is kept until "
            problem += "a fresh read agrees"
            warnings.append(problem)
            log.warning("%s", problem)
        elif now - self._empty_since >= EMPTY_LISTING_RECHECK_S:
            return False  # a fresh read agrees: believed
        self._recheck_lists((FunctionSetAssignmentsList, DERProgramList), self._empty_since)
        return True

    def _missing_events_kept(
        self,
        complete: bool,
        programs: tuple[ProgramControls, ...],
        now: int,
        warnings: list[str],
    ) -> bool:
        """Whether a complete read is not believed yet because events of the schedule are gone
        from it before their end. Gone, they are cancelled for good (6, CSIP-AUS ALL-22), but
        one read can lose them by a glitch: one empty DERControlList, one FSA missing, a list
        that changed between two of its pages (an event removed at the front and one added at
        the end shift every item: the one on the page boundary is never read). The schedule
        is kept until a read ``EMPTY_LISTING_RECHECK_S`` later agrees (`_recheck_lists`)."""
        if not complete:  # says nothing either way (a failed walk does not restart the wait)
            return False
        missing: frozenset[str] = frozenset()
        if self.snapshot is not None:
            missing = missing_before_their_end(
                self.snapshot.programs, programs, now, self.lfdi, self.snapshot.memory
            )
        if not missing:
            self._missing_since, self._missing_seen = None, frozenset()
            return False
        mono = self._mono()
        if self._missing_since is None or not missing <= self._missing_seen:
            self._missing_since, self._missing_seen = mono, missing
            problem = (
                f"{len(missing)} event(s) of the schedule are no longer listed before their end "
                f"({', '.join(sorted(missing)[:3])}); kept until a fresh read agrees"
            )
            warnings.append(problem)
            log.warning("%s", problem)
        elif mono - self._missing_since >= EMPTY_LISTING_RECHECK_S:
            self._missing_since, self._missing_seen = None, frozenset()
            return False  # a fresh read agrees: believed
        kinds = (FunctionSetAssignmentsList, DERProgramList, DERControlList)
        self._recheck_lists(kinds, self._missing_since)
        return True

    def _recheck_lists(self, kinds: tuple[type, ...], since: float) -> None:
        """The cached lists of ``kinds`` are due again ``EMPTY_LISTING_RECHECK_S`` after
        ``since`` (when a doubtful read was refused), whatever their pollRate: that read decides.
        Until then a walk (for another resource coming due) takes them from the cache, so no
        earlier read, nor the cached glitch itself, counts as the one that agrees."""
        for url, obj in self._cache.items():
            if isinstance(obj, kinds):
                self._book.record(url, since, EMPTY_LISTING_RECHECK_S)

    def _read_again_soon(self, url: str) -> None:
        """``url`` is due ``EMPTY_LISTING_RECHECK_S`` from now, whatever its pollRate."""
        self._book.record(url, self._mono(), EMPTY_LISTING_RECHECK_S)

    def _default_kept(
        self, url: str, before: object, got: DefaultDERControl | None
    ) -> DefaultDERControl | None:
        """The DefaultDERControl to use: one 404 where there was one (a server glitch) lifted
        the site's default limit until the next poll; it is kept until a fresh read
        ``EMPTY_LISTING_RECHECK_S`` later agrees that it is gone."""
        if got is not None and got is before:
            return got  # from the cache (read twice in one walk, or a walk for another
            # resource): not a fresh read, so it neither confirms nor clears a 404
        if got is not None or not isinstance(before, DefaultDERControl):
            self._default_gone.discard(url)
            return got
        if url in self._default_gone:  # a fresh read agrees: it is gone
            self._default_gone.discard(url)
            return None
        self._default_gone.add(url)
        self._cache[url] = before
        self._read_again_soon(url)
        log.warning("%s: not found (404); the default control is kept until a read agrees", url)
        return before

    # -- DER reports --------------------------------------------------------------------------

    def _server_set_grad_w(self, programs: tuple[ProgramControls, ...]) -> int | None:
        memory = self.snapshot.memory if self.snapshot is not None else None
        return schedule_active(programs, self.server_now(), self.lfdi, memory).set_grad_w

    async def _report_der(self, programs: tuple[ProgramControls, ...]) -> None:
        """PUTs each of DERCapability, DERSettings and DERStatus at start, when what it says
        changed, and at the DERList pollRate; DERStatus also when the state of charge moved
        1 point, or less at the telemetry post rate (`flow.soc_due`). Only the report whose
        content changed is PUT: a charging battery re-PUT all three every 5 s."""
        if self.der is None or self._der is None or self._der_url is None:
            return
        info = self.der
        grad = self._server_set_grad_w(programs)
        ns = self.csipaus_ns
        keys = flow.der_report_key(info, grad, ns)
        now = self._mono()
        server_now = self.server_now()
        reports: tuple[tuple[str, Link | None, object, object], ...] = (
            ("DERCapability", self._der.der_capability_link, keys.capability,
             flow.der_capability(info, ns)),
            ("DERSettings", self._der.der_settings_link, keys.settings,
             flow.der_settings(info, grad, server_now, ns)),
            ("DERStatus", self._der.der_status_link, keys.status,
             flow.der_status(info, server_now)),
        )  # fmt: skip
        for name, link, key, body in reports:
            last_key, last_time = self._der_sent.get(name, (None, None))
            due = flow.der_reports_due(last_key, last_time, key, now, self._der_rate)
            if name == "DERStatus":
                post_rate = self._telemetry.post_rate
                due = due or flow.soc_due(self._der_soc, last_time, keys.soc, now, post_rate)
            if not due:
                continue
            if link is not None:
                url = self._url(self._der_url, link.href)
                response = await self._send("PUT", url, to_xml(body, csipaus_ns=ns))
                if not 200 <= response.status < 300:
                    raise self._refused(f"PUT {name}", url, response)
            self._der_sent[name] = (key, now)
            if name == "DERStatus":
                self._der_soc = keys.soc

    # -- responses ----------------------------------------------------------------------------

    async def _pure(self, work: Callable[[], R], events: int) -> R:
        """Runs pure scheduling work; with thousands of events, in a worker thread, so that
        the controller (same event loop) is not held up for the ~100 ms resolving takes."""
        if events > self.options.thread_events:
            return await trio.to_thread.run_sync(work, limiter=self._parse_limiter)
        return work()

    async def _advance_responses(self) -> None:
        """Answers events by what the site enforces (``DerInfo.enforced``: a configured battery
        adds import and load limits), so such an event is performed (2, 3) with a battery and
        answered "not applicable" (252) without one."""
        if self.snapshot is None or not self.time_verified:
            return  # which event started or ended is not known yet: decided once it is
        update = functools.partial(
            responses.update,
            self.tracker,
            self.snapshot.programs,
            self.server_now(),
            self.lfdi,
            memory=self.snapshot.memory,
            enforced=self.der.enforced if self.der is not None else ENFORCED_CONTROLS,
        )
        updated = await self._pure(update, _event_count(self.snapshot.programs))
        if updated != self.tracker:
            self.tracker = updated
            self.store.save_responses(updated)  # persisted before anything is sent

    async def _send_responses(self) -> None:
        """Posts due responses; loops so that 1 → 2 → 3 reached together go out in one step."""
        for _ in range(10):
            if not await self._send_responses_once():
                break
        live = {(p.mrid, int(p.status)) for p in self.tracker.pending}
        self._attempts = {k: v for k, v in self._attempts.items() if k in live}

    async def _send_responses_once(self) -> bool:
        progressed = False
        for pending in responses.sendable(self.tracker):
            key = (pending.mrid, int(pending.status))
            attempt = self._attempts.setdefault(key, _Attempt())
            if self._mono() < attempt.next_try:
                continue
            if not self.store.settled():
                # the state that lists this response is not on disk yet: sent now, it could be
                # sent twice after a restart. It stays pending; the store wakes the link.
                return progressed
            outcome = await self._post_response(pending, attempt)
            if outcome is flow.SendOutcome.RETRY:
                backoff = self._mono() + flow.retry_delay(attempt.count)
                attempt.next_try = max(backoff, attempt.not_before)
                if attempt.count == 1 or attempt.count % 10 == 0:
                    log.warning(
                        "response %s for %s not accepted yet (attempt %d)",
                        int(pending.status),
                        pending.mrid,
                        attempt.count,
                    )
                continue
            if outcome is flow.SendOutcome.DROP:
                log.error(
                    "response %s for %s refused by the server %d times; giving up",
                    int(pending.status),
                    pending.mrid,
                    attempt.count,
                )
            elif outcome is flow.SendOutcome.UNWRITABLE:
                log.error(
                    "response %s for %r not sent: the event's mRID is not hexBinary, so no "
                    "valid response can name it; dropped",
                    int(pending.status),
                    pending.mrid[:200],
                )
            elif outcome is flow.SendOutcome.REFUSED:
                log.warning(
                    "response %s for %s not sent: its replyTo %r is unusable; dropped",
                    int(pending.status),
                    pending.mrid,
                    pending.reply_to[:200],
                )
            self.tracker = responses.mark_sent(self.tracker, pending.mrid, pending.status)
            self.store.save_responses(self.tracker)  # persisted as soon as the server accepted
            self._attempts.pop(key, None)
            progressed = True
        return progressed

    async def _post_response(self, pending: PendingResponse, attempt: _Attempt) -> flow.SendOutcome:
        try:
            url = self._url(self.dcap_url, pending.reply_to)
        except InvalidUrl as exc:
            log.warning("refusing a response's replyTo: %s", exc)
            return flow.SendOutcome.REFUSED
        attempt.count += 1
        try:
            body = to_xml(flow.response_body(pending, self.lfdi))
        except ValueError as exc:  # the server's mRID (read leniently) is not hexBinary
            self._record_error(f"response {int(pending.status)} for {pending.mrid!r}: {exc}")
            return flow.SendOutcome.UNWRITABLE
        try:
            response = await self._send("POST", url, body)
        except HttpError as exc:
            log.debug("response POST failed: %s", exc)
            return flow.SendOutcome.RETRY
        throttled = self._throttle(url, response, None)
        attempt.not_before = 0.0 if throttled is None else throttled.not_before
        return flow.send_outcome(response.status, attempt.count)

    # -- telemetry ----------------------------------------------------------------------------

    async def _ensure_mirrors(
        self,
        dcap: DeviceCapability,
        edev: EndDevice,
        *,
        force: bool = False,
        visited: set[str] | None = None,
    ) -> None:
        """Reads the MirrorUsagePointList at its own pollRate (CSIP-AUS ALL-06 GET-MUP-2): finds
        or creates our site and DER MirrorUsagePoints (again after a 404) and applies the
        postRate the server gives them on every fetch (ALL-10)."""
        tele = self._telemetry
        if dcap.mirror_usage_point_list_link is None:
            return
        tele.mup_list_url = self._url(self.dcap_url, dcap.mirror_usage_point_list_link.href)
        if visited is not None:
            visited.add(tele.mup_list_url)
        missing = not all(role in tele.mup_urls for role in (SITE_ROLE, DER_ROLE))
        mups = await self._get_list(
            tele.mup_list_url, MirrorUsagePointList, dcap.poll_rate, force=force or missing
        )
        interval = self.averager.interval_s
        for role in (SITE_ROLE, DER_ROLE):
            wanted = flow.mirror_usage_point(
                self.lfdi,
                role,
                interval,
                self.options.quantities,
                min_max=self.options.min_max,
                pen=self.config.pen,
            )
            existing = next((m for m in mups.items if m.mrid == wanted.mrid), None)
            if existing is not None and existing.href:
                tele.mup_urls[role] = self._url(tele.mup_list_url, existing.href)
                if role not in tele.declared:
                    # ours, made with what `wanted` declares (a listing need not show them)
                    tele.declared[role] = _series(
                        wanted.mirror_meter_readings + existing.mirror_meter_readings
                    )
                self._set_post_rate(existing, edev)
                continue
            if role in tele.mup_urls:
                continue  # not listed (yet): a 404 on posting is what makes us re-create it
            response = await self._send("POST", tele.mup_list_url, to_xml(wanted))
            if not 200 <= response.status < 300:
                what = f"creating the {role} MirrorUsagePoint: POST"
                raise self._refused(what, tele.mup_list_url, response)
            url = await self._created_mirror_url(role, wanted.mrid, response)
            tele.mup_urls[role] = url
            tele.declared[role] = _series(wanted.mirror_meter_readings)
            created = await self._get_optional(url, MirrorUsagePoint, force=True)
            self._book.entries.pop(url, None)
            self._set_post_rate(created, edev)
        if tele.last_post is None:
            tele.last_post = self._mono()

    async def _created_mirror_url(self, role: str, mrid: str, response: Response) -> str:
        """Where a MirrorUsagePoint we POSTed lives: its ``Location`` when usable, else (none,
        unparseable or on another origin: refused with a warning) the list, read again, by
        mRID. Raises Sep2Error when neither says (retried with the telemetry backoff)."""
        tele = self._telemetry
        assert tele.mup_list_url is not None
        location = response.header("location")
        if location:
            try:
                return self._url(tele.mup_list_url, location)
            except InvalidUrl as exc:
                log.warning("the %s MirrorUsagePoint's Location: %s", role, exc)
        mups = await self._get_list(tele.mup_list_url, MirrorUsagePointList, force=True)
        listed = next((m for m in mups.items if m.mrid == mrid and m.href), None)
        if listed is None or listed.href is None:
            raise Sep2Error(
                f"creating the {role} MirrorUsagePoint: HTTP {response.status} without a usable "
                "Location, and the list does not show it"
            )
        return self._url(tele.mup_list_url, listed.href)

    def _set_post_rate(self, mup: MirrorUsagePoint | None, edev: EndDevice) -> None:
        rate = flow.post_rate(None if mup is None else mup.post_rate, edev.post_rate)
        if rate != self._telemetry.post_rate:
            log.info("telemetry post rate %d s", rate)
        self._telemetry.post_rate = rate
        interval = flow.interval_for(rate)
        if interval != self.averager.interval_s:
            # the partial interval is dropped; the closed ones stay closed (no interval of the
            # new length starts before the end of the last one closed)
            old = self.averager
            self._late_samples += old.late
            self.averager = IntervalAverager(interval, floor=old.floor)

    async def _post_telemetry(self) -> None:
        tele = self._telemetry
        now = self._mono()
        self._file(self.averager.flush(self._server_at(now)))
        if tele.last_post is None or now < tele.last_post + tele.post_rate or now < tele.retry_at:
            return
        if len(tele.mup_urls) < 2 and self._dcap is not None and self._edev is not None:
            try:  # one was forgotten by the server (404 on post): create it again
                await self._ensure_mirrors(self._dcap, self._edev)
            except (HttpError, Sep2Error, Sep2ParseError) as exc:
                self._telemetry_backoff(now, exc)
                log.debug("re-creating a MirrorUsagePoint failed: %s", exc)
                return
        batch = self.outbox.batch(self.options.telemetry_batch)
        if not batch:
            tele.last_post = now
            return
        # Each MirrorReadingSet is settled as the server accepts it (or after repeated
        # refusals, drops it); a reading leaves the outbox once all its sets are settled, so a
        # failure on one mirror or one series neither loses nor re-sends the others.
        failure: Exception | None = None
        refused = False
        try:
            for role in (SITE_ROLE, DER_ROLE):
                mine = [r for r in batch if r.role == role]
                url = tele.mup_urls.get(role)
                if mine and url is None and tele.mup_list_url is not None:
                    raise Sep2Error(f"no {role} MirrorUsagePoint yet")
                if mine and url is not None:
                    refused |= await self._post_readings(role, url, mine)
        except (HttpError, Sep2Error) as exc:
            failure = exc
        self._acknowledge(batch)
        if failure is not None:
            self._telemetry_backoff(now, failure)
            log.debug("telemetry post failed: %s", failure)
            return
        if refused:  # retried soon (and dropped after the last refusal), not at the postRate
            self._telemetry_backoff(now, None)
            return
        tele.failures = 0
        tele.last_post = now

    def _telemetry_backoff(self, now: float, exc: Exception | None) -> None:
        tele = self._telemetry
        tele.failures += 1
        tele.retry_at = now + flow.retry_delay(tele.failures, base=10.0)
        if isinstance(exc, Throttled):
            tele.retry_at = max(tele.retry_at, exc.not_before)

    def _acknowledge(self, batch: list[IntervalReading]) -> None:
        """Removes the readings whose every set is settled (readings of no known role, for a
        server without mirrors, or that `flow.meter_readings` leaves out, have none)."""
        tele = self._telemetry
        done: list[IntervalReading] = []
        waiting: set[str] = set()
        for reading in batch:
            url = tele.mup_urls.get(reading.role)
            if reading.role not in (SITE_ROLE, DER_ROLE):
                done.append(reading)  # no mirror of that role: nowhere to go
                continue
            if url is None:
                if tele.mup_list_url is None:
                    done.append(reading)  # a server without mirrors: nowhere to go
                continue  # else its mirror is not there yet
            sets = self._set_mrids(reading)
            if all(m in self.outbox.settled for m in sets):
                done.append(reading)
            else:
                waiting.update(sets)
        # only the readings still waiting can have settled sets worth remembering; kept in
        # telemetry.json with them, so a restart before the rest of an interval is accepted
        # posts none of its accepted sets again
        settled = self.outbox.settled & waiting
        if done or settled != self._settled_saved:
            self.outbox.settled = settled
            self.outbox.acknowledge(done)
            self.store.save_outbox(self.outbox)
            self._settled_saved = set(settled)

    def _set_mrids(self, reading: IntervalReading) -> tuple[str, ...]:
        return flow.reading_set_mrids(
            self.lfdi, reading, min_max=self.options.min_max, pen=self.config.pen
        )

    async def _post_readings(self, role: str, url: str, readings: list[IntervalReading]) -> bool:
        """Posts one mirror's unsettled readings: one MirrorMeterReadingList per interval
        length, or (for a server that takes no lists) one MirrorMeterReading per series.
        Returns whether a series was refused (and kept for a retry); raises on anything that
        means "later" (5xx, 408, 429, transport), what was accepted so far being settled."""
        tele = self._telemetry
        mmrs = [
            kept
            for mmr in flow.meter_readings(
                self.lfdi, role, readings, min_max=self.options.min_max, pen=self.config.pen
            )
            if (kept := flow.without_sets(mmr, self.outbox.settled)) is not None
        ]
        if not mmrs:
            return False
        await self._declare(role, mmrs)
        refused = False
        for group in flow.by_interval_length(mmrs):
            if tele.lists is not False:
                refused |= await self._post_list(role, url, group)
            else:
                for mmr in group:
                    refused |= await self._post_series(role, url, [mmr])
        return refused

    async def _post_list(self, role: str, url: str, mmrs: list[MirrorMeterReading]) -> bool:
        """One MirrorMeterReadingList; split in two on a 413; a list refused otherwise is
        posted series by series, so the series at fault is found, counted and in the end
        dropped, and the others go through."""
        tele = self._telemetry
        response = await self._send("POST", url, to_xml(flow.meter_reading_list(mmrs)))
        status = response.status
        if 200 <= status < 300:
            tele.lists = True
            for mmr in mmrs:  # accepted: each series counts its refusals afresh
                tele.refusals.pop(mmr.mrid, None)
            self._settle(mmrs)
            return False
        if tele.lists is None and status in (400, 405, 415, 501):
            log.info(
                "%s: HTTP %d to a MirrorMeterReadingList; posting one MirrorMeterReading at a time",
                url,
                status,
            )
            tele.lists = False
        elif status == 413 and (parts := flow.halves(mmrs)) is not None:
            first = await self._post_list(role, url, parts[0])
            return await self._post_list(role, url, parts[1]) or first
        else:
            self._check_reading_post(role, url, response)  # raises unless refused for good
        refused = False
        for mmr in mmrs:
            refused |= await self._post_series(role, url, [mmr])
        return refused

    async def _post_series(self, role: str, url: str, mmrs: list[MirrorMeterReading]) -> bool:
        """One MirrorMeterReading (``mmrs`` holds one series); split on a 413; refused as wrong
        in itself `flow.REFUSALS_BEFORE_DROP` times running, its sets are dropped and logged.
        Returns whether it was refused and kept for a retry."""
        tele = self._telemetry
        (mmr,) = mmrs
        response = await self._send("POST", url, to_xml(mmr))
        status = response.status
        if 200 <= status < 300:
            tele.refusals.pop(mmr.mrid, None)
            self._settle(mmrs)
            return False
        if status == 413 and (parts := flow.halves(mmrs)) is not None:
            first = await self._post_series(role, url, parts[0])
            return await self._post_series(role, url, parts[1]) or first
        self._check_reading_post(role, url, response)  # raises unless refused for good
        count = tele.refusals.get(mmr.mrid, 0) + 1
        tele.refusals[mmr.mrid] = count
        message = f"posting readings: POST {url}: HTTP {status} for series {mmr.description}"
        if flow.reading_outcome(status, count) is flow.SendOutcome.DROP:
            # The series stays one refusal from a drop: its next interval is tried once, not
            # three times (a series the server never takes cost three POSTs an interval);
            # accepted once, it counts afresh.
            tele.refusals[mmr.mrid] = flow.REFUSALS_BEFORE_DROP - 1
            tele.refused_sets += len(mmr.mirror_reading_sets)
            log.error(
                "%s, %d times running; its %d interval(s) dropped",
                message,
                count,
                len(mmr.mirror_reading_sets),
            )
            self._record_error(f"{message}: dropped")
            self._settle(mmrs)
            return False
        if count == 1:  # logged once a run of refusals; recorded when it is dropped
            log.warning("%s; retrying (dropped if refused %d times running)", message,
                        flow.REFUSALS_BEFORE_DROP)  # fmt: skip
        return True

    def _settle(self, mmrs: Iterable[MirrorMeterReading]) -> None:
        self.outbox.settled.update(s.mrid for m in mmrs for s in m.mirror_reading_sets)

    def _check_reading_post(self, role: str, url: str, response: Response) -> None:
        """Raises for an answer that means "later" (5xx, 408, 429) or "mirror gone" (404);
        returns for a refusal of the body itself (`flow.reading_refused`)."""
        if response.status == 404:
            log.warning("the server forgot our %s MirrorUsagePoint; recreating", role)
            self._telemetry.mup_urls.pop(role, None)
            self._telemetry.declared.pop(role, None)
            raise Sep2Error("MirrorUsagePoint gone")
        if not flow.reading_refused(response.status):
            raise self._refused("posting readings: POST", url, response)

    async def _declare(self, role: str, mmrs: list[MirrorMeterReading]) -> None:
        """Makes our MirrorUsagePoint declare every series about to be posted (CSIP-AUS: a
        MirrorUsagePoint declares its MirrorMeterReadings and their ReadingTypes; a series
        only found in the samples, Hz or one phase, was posted under one that never declared
        it): the MirrorUsagePoint is POSTed again, same mRID, declaring all its series so far.
        A refusal of that body is logged and the readings are posted all the same (the
        series' own refusals then decide); "later" (5xx, 408, 429) raises."""
        tele = self._telemetry
        url = tele.mup_list_url
        declared = tele.declared.setdefault(role, {})
        missing = _series(m for m in mmrs if m.mrid not in declared)
        if not missing or url is None:
            return
        wanted = flow.mirror_usage_point(
            self.lfdi,
            role,
            self.averager.interval_s,
            self.options.quantities,
            min_max=self.options.min_max,
            pen=self.config.pen,
        )
        series = _series(wanted.mirror_meter_readings) | declared | missing
        body = replace(wanted, mirror_meter_readings=tuple(series.values()))
        names = ", ".join(m.description or m.mrid for m in missing.values())
        response = await self._send("POST", url, to_xml(body))
        if 200 <= response.status < 300:
            log.info("the %s MirrorUsagePoint now declares %s", role, names)
        elif flow.reading_refused(response.status):
            log.warning("declaring %s: HTTP %d; posting them all the same", names, response.status)
        else:
            raise self._refused(f"declaring {role} series: POST", url, response)
        declared.update(missing)


def _series(mmrs: Iterable[MirrorMeterReading]) -> dict[str, MirrorMeterReading]:
    """Series by mRID, as a MirrorUsagePoint declares them: ReadingType, no readings (the
    first one of an mRID wins)."""
    out: dict[str, MirrorMeterReading] = {}
    for mmr in mmrs:
        out.setdefault(mmr.mrid, replace(mmr, mirror_reading_sets=(), reading=None))
    return out


SCHEDULE_RESAVE_S = 900
"""An unchanged schedule is written again after this long (server seconds), so the stored copy's
fetch time is never much older than the last complete read."""


def schedule_needs_saving(saved: ScheduleSnapshot | None, new: ScheduleSnapshot) -> bool:
    """Whether ``new`` must be written over what ``schedule.json`` holds (``saved``).

    Every complete read of the program lists makes a new snapshot, once a minute or more often;
    rewriting the file each time (hundreds of KiB after a day of events) wears an SD card for
    nothing. It is written when the programs, the memory of finished events or its extras
    changed, when the clock offset moved by more than 2 s, and at least every 15 minutes.
    """
    if saved is None:
        return True
    if new.fetched_at - saved.fetched_at >= SCHEDULE_RESAVE_S or new.fetched_at < saved.fetched_at:
        return True
    if abs(new.clock_offset - saved.clock_offset) > 2:
        return True
    return (new.programs, new.memory, new.extra) != (saved.programs, saved.memory, saved.extra)


def _anchored(control: DERControl, list_url: str) -> DERControl:
    """The control with its replyTo resolved against its list's URL (docs/sep2.md)."""
    reply_to = flow.anchored_reply_to(control.reply_to, list_url)
    return control if reply_to == control.reply_to else replace(control, reply_to=reply_to)


def _event_count(programs: Iterable[ProgramControls]) -> int:
    return sum(len(p.events) for p in programs)


async def walk(config: UtilityConfig, *, clock: Callable[[], float] = time.time) -> WalkResult:
    """The installer's check: one read-only walk (no PUT, no POST), then close."""
    options = ClientOptions(http_retries=1, http_timeout=15.0)
    client = Sep2Client(config, None, clock=clock, read_only=True, options=options)
    try:
        return await client.walk_once(force=True)
    finally:
        await client.http.aclose()


def result_schedule(result: WalkResult, lfdi: str, hours: float = 24.0) -> list[Segment]:
    start = result.fetched_at
    return schedule_between(result.programs, start, start + int(hours * 3600), lfdi)


def _always() -> bool:
    """A fake wall clock (tests, the installer's walk) is right by definition."""
    return True
