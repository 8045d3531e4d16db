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

import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import trio

from dynexport.httpio import (
    HttpClient,
    HttpError,
    HttpStatusError,
    Response,
    client_context,
    parse_retry_after,
)
from dynexport.sep2 import flow, responses
from dynexport.sep2.certs import lfdi as cert_lfdi
from dynexport.sep2.certs import load_certificates, sfdi_from_lfdi
from dynexport.sep2.controls import ProgramControls
from dynexport.sep2.flow import DerInfo, PollBook, RegistrationCheck
from dynexport.sep2.resources import (
    DER,
    ConnectionPoint,
    DefaultDERControl,
    DERControlList,
    DERList,
    DERProgramList,
    DeviceCapability,
    EndDevice,
    EndDeviceList,
    FunctionSetAssignmentsList,
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
    next_change,
    schedule_between,
)
from dynexport.sep2.schedule import active_controls as schedule_active
from dynexport.sep2.state import LinkStore
from dynexport.sep2.telemetry import DER as DER_ROLE
from dynexport.sep2.telemetry import SITE as SITE_ROLE
from dynexport.sep2.telemetry import IntervalAverager, IntervalReading, Sample
from dynexport.sep2.xml import Sep2ParseError, page_query, resolve_href
from dynexport.system.config import UtilityConfig

log = logging.getLogger("dynexport.sep2.client")

R = TypeVar("R")
L = TypeVar("L", bound=ResourceList[Any])

WALK_RETRY_S = (5.0, 15.0, 30.0, 60.0)
"""Backoff before re-walking after a failed walk (the last value repeats)."""
MAX_ERRORS = 10


class Sep2Error(Exception):
    """A utility-link failure described for the installer (wraps HTTP, TLS and parse errors)."""


class Throttled(HttpStatusError):
    """The server answered 429 (or 503 with Retry-After): ``url`` is not asked again before
    ``not_before`` (local time)."""

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
    (Hz, per-phase values) is mirrored too: its first post creates it on the server."""
    min_max: bool = True
    """Mirror each interval's minimum and maximum (dataQualifier 9 and 8) besides the average."""
    telemetry_batch: int = 400
    """Interval readings per post (per mirror: one MirrorMeterReadingList, or one POST per
    series when the server takes no lists)."""


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


@dataclass
class _Attempt:
    count: int = 0
    next_try: float = 0.0
    not_before: float = 0.0
    """The server's Retry-After on the last attempt, as a local time."""


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


def device_lfdi(cert_file: str | Any) -> str:
    """The LFDI of the first certificate in the configured chain (our device certificate)."""
    with open(cert_file, "rb") as fh:
        certs = load_certificates(fh.read())
    return cert_lfdi(certs[0])


def describe_error(exc: BaseException) -> str:
    """One line an installer can act on."""
    if isinstance(exc, Throttled):
        return f"server answered HTTP {exc.status} for {exc.url} (asking again later)"
    if isinstance(exc, HttpStatusError):
        return f"server answered HTTP {exc.status} for {exc.url}"
    if isinstance(exc, Sep2ParseError):
        return f"server sent an unusable body: {exc}"
    return f"{type(exc).__name__}: {exc}"


class Sep2Client:
    """The utility link of one appliance: walks, obeys (via the app), responds, reports."""

    def __init__(
        self,
        config: UtilityConfig,
        data_dir: str | Any | None = None,
        *,
        der: DerInfo | None = None,
        clock: Callable[[], float] = time.time,
        http: HttpClient | None = None,
        ssl_context: ssl.SSLContext | None = None,
        options: ClientOptions | None = None,
        read_only: bool = False,
    ) -> None:
        """``read_only``: never PUT or POST (the installer's walk); ``clock``: local wall time."""
        self.config = config
        self.options = options or ClientOptions()
        self.read_only = read_only
        self._clock = clock
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
        self.store = LinkStore(data_dir)
        self.snapshot: ScheduleSnapshot | None = self.store.load_schedule()
        self.tracker: ResponseTracker = self.store.load_responses()
        self.outbox = self.store.load_outbox(self.options.telemetry_capacity)
        self.averager = IntervalAverager(flow.DEFAULT_POST_S)
        self.der = der
        self.clock_offset = 0 if self.snapshot is None else self.snapshot.clock_offset
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
        self._requests = 0
        self._edev_url: str | None = None
        self._dcap: DeviceCapability | None = None
        self._edev: EndDevice | None = None
        self._edev_list_rate: int | None = None
        self._cp_put = False
        self._der: DER | None = None
        self._der_url: str | None = None
        self._der_rate = flow.DEFAULT_POLL_S
        self._der_key: tuple[object, ...] | None = None
        self._der_sent: float | None = None
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self._not_before: dict[str, tuple[int, float]] = {}
        """URL → (status, local time) before which it is not asked again (429/503)."""
        self._throttles: dict[str, int] = {}
        """URL → consecutive 429s without Retry-After (the backoff doubles with each)."""
        self._telemetry = _Telemetry()
        self._wake = trio.Event()

    # -- what the app reads and feeds ---------------------------------------------------------

    def server_now(self, local: float | None = None) -> int:
        return int(self._clock() if local is None else local) + self.clock_offset

    @property
    def acting(self) -> bool:
        return self.registration is None or self.registration.acting

    def programs(self) -> tuple[ProgramControls, ...]:
        return () if self.snapshot is None else self.snapshot.programs

    def active_controls(self, local: float | None = None) -> ActiveControls | None:
        """The controls in force now (server clock applied), or None when none may be obeyed."""
        if not self.acting or self.snapshot is None:
            return None
        return schedule_active(self.snapshot.programs, self.server_now(local), self.lfdi)

    def schedule(self, hours: float = 24.0, local: float | None = None) -> list[Segment]:
        if not self.acting or self.snapshot is None:
            return []
        start = self.server_now(local)
        return schedule_between(self.snapshot.programs, start, start + int(hours * 3600), self.lfdi)

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
        )

    def update_der(self, info: DerInfo) -> None:
        """New DER facts; DERCapability/Settings/Status are re-PUT if they changed."""
        if info != self.der:
            self.der = info
            self._wake.set()

    def add_sample(self, sample: Sample) -> None:
        """A measurement taken at local time ``sample.t``; averaged in the server's clock."""
        shifted = Sample(t=sample.t + self.clock_offset, values=sample.values)
        closed = self.averager.add(shifted)
        if closed:
            self.outbox.extend(closed)
            self.store.save_outbox(self.outbox)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Runs the link until cancelled."""
        task_status.started()
        try:
            while True:
                wake_at = await self.step()
                delay = min(self.options.max_sleep_s, max(0.0, wake_at - self._clock()))
                self._wake = trio.Event()
                with trio.move_on_after(delay):
                    await self._wake.wait()
        finally:
            with trio.CancelScope(shield=True):
                await self.http.aclose()

    async def step(self) -> float:
        """Does whatever is due now; returns the local time at which something is next due."""
        now = self._clock()
        due = self._book.next_due()
        if (not self._walked or (due is not None and now >= due)) and now >= self._walk_retry_at:
            await self.poll()
        if self.acting and not self.read_only:
            if self.connected and self._der is not None:
                try:  # DER facts changed since the walk: report now, not at the next poll
                    await self._report_der(self.programs())
                except (HttpError, Sep2Error) as exc:
                    self._fail(exc)
            self._advance_responses()
            await self._send_responses()
            await self._post_telemetry()
        return self._next_wake()

    def _next_wake(self) -> float:
        now = self._clock()
        candidates = [now + self.options.max_sleep_s]
        due = self._book.next_due()
        if due is not None:
            candidates.append(max(due, self._walk_retry_at))
        elif self._walk_retry_at:
            candidates.append(self._walk_retry_at)
        if self.tracker.pending:
            candidates.append(min((a.next_try for a in self._attempts.values()), default=now))
        if self.snapshot is not None:
            change = next_change(self.snapshot.programs, self.server_now(now), self.lfdi)
            if change is not None:
                candidates.append(change - self.clock_offset)
        if self._telemetry.last_post is not None:
            candidates.append(self._telemetry.last_post + self._telemetry.post_rate)
        return min(candidates)

    async def poll(self) -> WalkResult | None:
        """One walk; failures are recorded (the stored schedule keeps applying) and backed off."""
        try:
            result = await self.walk_once()
        except (HttpError, Sep2ParseError, Sep2Error, ValueError) as exc:
            self._fail(exc)
            return None
        self._walk_failures = 0
        self._walk_retry_at = 0.0
        return result

    def _fail(self, exc: BaseException) -> None:
        message = describe_error(exc)
        log.warning("utility link: %s", message)
        self.connected = False
        self.errors = [*self.errors, (self._clock(), message)][-MAX_ERRORS:]
        delay = WALK_RETRY_S[min(self._walk_failures, len(WALK_RETRY_S) - 1)]
        self._walk_failures += 1
        self._walk_retry_at = self._clock() + delay
        if isinstance(exc, Throttled):  # not before the server (or our backoff) allows
            self._walk_retry_at = max(self._walk_retry_at, exc.not_before)
        self._book.forget()  # after an outage walk everything again (links may have changed)
        self._walked = False

    # -- HTTP helpers -------------------------------------------------------------------------

    async def _get(
        self, url: str, cls: type[R], inherited: int | None = None, *, force: bool = False
    ) -> R:
        """The resource at ``url``: fetched when due (its pollRate) or new, else the cached one."""
        now = self._clock()
        cached = self._cache.get(url)
        if not force and isinstance(cached, cls) and not self._book.is_due(url, now):
            return cached
        response = await self._get_response(url, url, cached, inherited)
        obj = parse_as(cls, response.body)
        self._cache[url] = obj
        # when the answer arrived, not when it was asked: a slow answer is not due again at once
        rate = flow.poll_rate(getattr(obj, "poll_rate", None), inherited)
        self._book.record(url, self._clock(), rate)
        return obj

    async def _get_response(
        self, target: str, url: str, cached: object, inherited: int | None
    ) -> Response:
        """GET ``target`` (``url`` or one of its pages), honouring and recording throttling."""
        held = self._not_before.get(url)
        if held is not None and self._clock() < held[1]:
            raise Throttled(held[0], url, b"", held[1])
        response = await self.http.get(target)
        self._requests += 1
        rate = flow.poll_rate(getattr(cached, "poll_rate", None), inherited)
        known = cached is not None or inherited is not None  # its poll schedule is known
        throttled = self._throttle(url, response, rate, polled=known)
        if throttled is not None:
            raise throttled
        response.raise_for_status()
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
        now = self._clock()
        asked = parse_retry_after(response.header("retry-after"), now)
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
        now = self._clock()
        cached = self._cache.get(url)
        if not force and isinstance(cached, cls) and not self._book.is_due(url, now):
            return cached
        items: list[Any] = []
        first: L | None = None
        start = 0
        for _ in range(flow.MAX_PAGES):
            target = page_query(url, start, self.options.page_size)
            response = await self._get_response(target, url, cached, inherited)
            page = parse_as(cls, response.body)
            if page.results != len(page.items):
                # Items we could not read (e.g. in a foreign namespace) must not look like
                # events that vanished: that would cancel them. Refuse the list instead, so the
                # last valid schedule stays in force.
                raise Sep2Error(
                    f"{url}: {cls.__name__} says results={page.results} but {len(page.items)} "
                    "items could be read; keeping the last valid data"
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
        self._book.record(url, self._clock(), flow.poll_rate(first.poll_rate, inherited))
        return merged

    async def _get_optional(
        self, url: str, cls: type[R], inherited: int | None = None, *, force: bool = False
    ) -> R | None:
        """Like `_get`, but a 404 means "not there (yet)"."""
        try:
            return await self._get(url, cls, inherited, force=force)
        except HttpStatusError as exc:
            if exc.status == 404:
                self._book.record(url, self._clock(), flow.poll_rate(None, inherited))
                return None
            raise

    async def _send(self, method: str, url: str, body: bytes) -> Response:
        response = await self.http.request(method, url, body=body)
        self._requests += 1
        return response

    def _refused(self, what: str, url: str, response: Response) -> Exception:
        """The error for a write the server did not accept (Throttled for 429/503 with
        Retry-After, so the retry waits for it)."""
        return self._throttle(url, response, None) or Sep2Error(
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
        dcap = await self._get(self.dcap_url, DeviceCapability, force=force)
        visited.add(self.dcap_url)
        dcap_rate = flow.poll_rate(dcap.poll_rate)

        if dcap.time_link is not None:
            tm_url = resolve_href(self.dcap_url, dcap.time_link.href)
            visited.add(tm_url)
            if force or self._book.is_due(tm_url, self._clock()):
                sent = self._clock()
                tm = await self._get(tm_url, Time, dcap_rate, force=True)
                self.clock_offset = flow.clock_offset(tm.current_time, sent, self._clock())
                warning = flow.clock_warning(self.clock_offset)
                if warning:
                    log.warning("%s", warning)
                    warnings.append(warning)
        else:
            warnings.append("the server offers no Time resource; using the local clock")

        result = WalkResult(
            dcap_url=self.dcap_url, fetched_at=self.server_now(), clock_offset=self.clock_offset
        )
        if dcap.end_device_list_link is None:
            raise Sep2Error("DeviceCapability has no EndDeviceListLink")
        edev_list_url = resolve_href(self.dcap_url, dcap.end_device_list_link.href)
        visited.add(edev_list_url)
        edevs = await self._get_list(edev_list_url, EndDeviceList, dcap_rate, force=force)
        edev = flow.find_end_device(edevs.items, self.lfdi)
        edev_url: str | None = None
        if edev is None:
            if self.read_only:
                warnings.append(
                    f"no EndDevice with LFDI {self.lfdi} on the server: not registered yet "
                    "(the appliance registers itself when it runs)"
                )
                return self._finish_walk(replace(result, warnings=tuple(warnings)), visited)
            edev_url = await self._register(edev_list_url)
            edev = await self._get(edev_url, EndDevice, edevs.poll_rate, force=True)
        else:
            edev_url = resolve_href(edev_list_url, edev.href) if edev.href else None
        if edev_url is None:
            raise Sep2Error("our EndDevice has no href")
        visited.add(edev_url)
        self._edev_url = edev_url
        self._edev_list_rate = edevs.poll_rate
        result = replace(result, end_device_url=edev_url, end_device=edev)

        registration = None
        if edev.registration_link is not None:
            rg_url = resolve_href(edev_url, edev.registration_link.href)
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
            cp_url = resolve_href(edev_url, edev.connection_point_link.href)
            visited.add(cp_url)
            cp = await self._get_optional(cp_url, ConnectionPoint, edevs.poll_rate, force=force)
            update = (
                None
                if self.read_only
                else flow.connection_point_update(cp, self.config.nmi, already_put=self._cp_put)
            )
            if update is not None:
                response = await self._send("PUT", cp_url, to_xml(update))
                if not 200 <= response.status < 300:
                    raise self._refused("PUT ConnectionPoint", cp_url, response)
                self._cp_put = True
                cp = update
                self._cache.pop(cp_url, None)
            result = replace(result, connection_point=cp)
        else:
            warnings.append("our EndDevice has no csipaus:ConnectionPointLink; NMI not sent")

        programs, complete = await self._walk_programs(edev, edev_url, edevs, force, visited)
        result = replace(result, programs=programs, complete=complete)
        if complete:
            # Stored now, not after the walk: a later GET (DER list, mirrors) that fails must
            # not lose a cancellation already read (CSIP-AUS ALL-30, comms cut mid-walk).
            self._store_programs(result)

        if edev.der_list_link is not None:
            der_list_url = resolve_href(edev_url, edev.der_list_link.href)
            visited.add(der_list_url)
            ders = await self._get_list(der_list_url, DERList, edevs.poll_rate, force=force)
            self._der_rate = flow.poll_rate(ders.poll_rate)
            if ders.items:
                der = ders.items[0]
                self._der = der
                self._der_url = resolve_href(der_list_url, der.href) if der.href else der_list_url
                result = replace(result, der_url=self._der_url)
                if not self.read_only:
                    await self._report_der(programs)
        else:
            warnings.append("our EndDevice has no DERListLink; DER reports not sent")

        self._dcap, self._edev = dcap, edev
        if not self.read_only:
            await self._ensure_mirrors(dcap, edev, force=force, visited=visited)
        self.connected = True
        return self._finish_walk(replace(result, warnings=tuple(warnings)), visited)

    def _finish_walk(self, result: WalkResult, visited: set[str]) -> WalkResult:
        self._walked = True
        self.last_poll = self._clock()
        self._book.keep_only(visited)
        self._cache = {u: o for u, o in self._cache.items() if u in visited}
        now = self._clock()
        self._not_before = {u: v for u, v in self._not_before.items() if v[1] > now}
        result = replace(result, requests=self._requests)
        self.last_walk = result
        return result

    def _store_programs(self, result: WalkResult) -> None:
        """Every program list was read in full: they become the schedule (saved atomically)."""
        self.snapshot = ScheduleSnapshot(
            programs=result.programs,
            fetched_at=result.fetched_at,
            clock_offset=self.clock_offset,
        )
        if not self.read_only:
            self.store.save_schedule(self.snapshot)

    async def _register(self, edev_list_url: str) -> str:
        """In-band registration: POST our EndDevice; its URL comes back in Location."""
        body = to_xml(
            flow.new_end_device(self.lfdi, self.server_now(), self.options.device_category)
        )
        response = await self._send("POST", edev_list_url, body)
        if not 200 <= response.status < 300:
            raise self._refused("registering our EndDevice: POST", edev_list_url, response)
        location = response.header("location")
        if location:
            log.info("registered EndDevice %s at %s", self.lfdi, location)
            return resolve_href(edev_list_url, location)
        edevs = await self._get_list(edev_list_url, EndDeviceList, force=True)
        found = flow.find_end_device(edevs.items, self.lfdi)
        if found is None or not found.href:
            raise Sep2Error("the server accepted our EndDevice but does not list it")
        return resolve_href(edev_list_url, found.href)

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
        fsa_url = resolve_href(edev_url, edev.function_set_assignments_list_link.href)
        visited.add(fsa_url)
        fsas = await self._get_list(
            fsa_url, FunctionSetAssignmentsList, edevs.poll_rate, force=force
        )
        found: list[ProgramControls] = []
        for fsa in fsas.items:
            if fsa.der_program_list_link is None:
                continue
            base = resolve_href(fsa_url, fsa.href) if fsa.href else fsa_url
            derp_url = resolve_href(base, fsa.der_program_list_link.href)
            visited.add(derp_url)
            derps = await self._get_list(derp_url, DERProgramList, fsas.poll_rate, force=force)
            rate = flow.poll_rate(derps.poll_rate, fsas.poll_rate)
            for program in derps.items:
                program_url = resolve_href(derp_url, program.href) if program.href else derp_url
                controls: tuple[Any, ...] = ()
                if program.der_control_list_link is not None:
                    derc_url = resolve_href(program_url, program.der_control_list_link.href)
                    visited.add(derc_url)
                    dercs = await self._get_list(derc_url, DERControlList, rate, force=force)
                    controls = dercs.items
                default = None
                if program.default_der_control_link is not None:
                    dderc_url = resolve_href(program_url, program.default_der_control_link.href)
                    visited.add(dderc_url)
                    default = await self._get_optional(
                        dderc_url, DefaultDERControl, rate, force=force
                    )
                found.append(program_controls(program, controls, default, program_url))
        return flow.merge_programs(found), True

    # -- DER reports --------------------------------------------------------------------------

    def _server_set_grad_w(self, programs: tuple[ProgramControls, ...]) -> int | None:
        return schedule_active(programs, self.server_now(), self.lfdi).set_grad_w

    async def _report_der(self, programs: tuple[ProgramControls, ...]) -> None:
        """PUT DERCapability, DERSettings and DERStatus at start, on change and at the DERList
        pollRate."""
        if self.der is None or self._der is None or self._der_url is None:
            return
        grad = self._server_set_grad_w(programs)
        key = flow.der_report_key(self.der, grad)
        now = self._clock()
        if not flow.der_reports_due(self._der_key, self._der_sent, key, now, self._der_rate):
            return
        server_now = self.server_now(now)
        bodies = (
            (self._der.der_capability_link, flow.der_capability(self.der)),
            (self._der.der_settings_link, flow.der_settings(self.der, grad, server_now)),
            (self._der.der_status_link, flow.der_status(self.der, server_now)),
        )
        for link, body in bodies:
            if link is None:
                continue
            url = resolve_href(self._der_url, link.href)
            response = await self._send("PUT", url, to_xml(body))
            if not 200 <= response.status < 300:
                raise self._refused(f"PUT {type(body).__name__}", url, response)
        self._der_key, self._der_sent = key, now

    # -- responses ----------------------------------------------------------------------------

    def _advance_responses(self) -> None:
        if self.snapshot is None:
            return
        updated = responses.update(
            self.tracker, self.snapshot.programs, self.server_now(), self.lfdi
        )
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
            if self._clock() < attempt.next_try:
                continue
            outcome = await self._post_response(pending, attempt)
            if outcome is flow.SendOutcome.RETRY:
                backoff = self._clock() + flow.retry_delay(attempt.count)
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
            self.tracker = responses.mark_sent(self.tracker, pending.mrid, pending.status)
            self.store.save_responses(self.tracker)  # persisted as soon as the server accepted
            self._attempts.pop(key, None)
            progressed = True
        return progressed

    async def _post_response(self, pending: PendingResponse, attempt: _Attempt) -> flow.SendOutcome:
        url = resolve_href(self.dcap_url, pending.reply_to)
        attempt.count += 1
        try:
            body = to_xml(flow.response_body(pending, self.lfdi))
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
        tele.mup_list_url = resolve_href(self.dcap_url, dcap.mirror_usage_point_list_link.href)
        if visited is not None:
            visited.add(tele.mup_list_url)
        missing = not all(role in tele.mup_urls for role in (SITE_ROLE, DER_ROLE))
        mups = await self._get_list(
            tele.mup_list_url, MirrorUsagePointList, dcap.poll_rate, force=force or missing
        )
        interval = self.averager.interval_s
        for role in (SITE_ROLE, DER_ROLE):
            wanted = flow.mirror_usage_point(
                self.lfdi, role, interval, self.options.quantities, min_max=self.options.min_max
            )
            existing = next((m for m in mups.items if m.mrid == wanted.mrid), None)
            if existing is not None and existing.href:
                tele.mup_urls[role] = resolve_href(tele.mup_list_url, existing.href)
                self._set_post_rate(existing, edev)
                continue
            if role in tele.mup_urls:
                continue  # not listed (yet): a 404 on posting is what makes us re-create it
            response = await self._send("POST", tele.mup_list_url, to_xml(wanted))
            location = response.header("location")
            if not 200 <= response.status < 300:
                what = f"creating the {role} MirrorUsagePoint: POST"
                raise self._refused(what, tele.mup_list_url, response)
            if not location:
                raise Sep2Error(
                    f"creating the {role} MirrorUsagePoint: HTTP {response.status} without a "
                    "Location"
                )
            tele.mup_urls[role] = resolve_href(tele.mup_list_url, location)
            created = await self._get_optional(tele.mup_urls[role], MirrorUsagePoint, force=True)
            self._book.entries.pop(tele.mup_urls[role], None)
            self._set_post_rate(created, edev)
        if tele.last_post is None:
            tele.last_post = self._clock()

    def _set_post_rate(self, mup: MirrorUsagePoint | None, edev: EndDevice) -> None:
        rate = flow.post_rate(None if mup is None else mup.post_rate, edev.post_rate)
        if rate != self._telemetry.post_rate:
            log.info("telemetry post rate %d s", rate)
        self._telemetry.post_rate = rate
        interval = flow.interval_for(rate)
        if interval != self.averager.interval_s:
            self.averager = IntervalAverager(interval)

    async def _post_telemetry(self) -> None:
        tele = self._telemetry
        now = self._clock()
        closed = self.averager.flush(self.server_now(now))
        if closed:
            self.outbox.extend(closed)
            self.store.save_outbox(self.outbox)
        if tele.last_post is None or now < tele.last_post + tele.post_rate or now < tele.retry_at:
            return
        if len(tele.mup_urls) < 2 and self._dcap is not None and self._edev is not None:
            try:  # one was forgotten by the server (404 on post): create it again
                await self._ensure_mirrors(self._dcap, self._edev)
            except (HttpError, Sep2Error, Sep2ParseError) as exc:
                tele.failures += 1
                tele.retry_at = now + flow.retry_delay(tele.failures, base=10.0)
                if isinstance(exc, Throttled):
                    tele.retry_at = max(tele.retry_at, exc.not_before)
                log.debug("re-creating a MirrorUsagePoint failed: %s", exc)
                return
        batch = self.outbox.batch(self.options.telemetry_batch)
        if not batch:
            tele.last_post = now
            return
        # Readings are acknowledged per mirror as it accepts them: a failure on one mirror
        # neither loses nor re-sends the other's.
        done: list[IntervalReading] = []
        try:
            for role in (SITE_ROLE, DER_ROLE):
                mine = [r for r in batch if r.role == role]
                url = tele.mup_urls.get(role)
                if mine and url is None and tele.mup_list_url is not None:
                    raise Sep2Error(f"no {role} MirrorUsagePoint yet")
                if mine and url is not None:
                    await self._post_readings(role, url, mine)
                done.extend(mine)
            # readings of no known role, or for a server without mirrors, have nowhere to go
            done.extend(r for r in batch if r.role not in (SITE_ROLE, DER_ROLE))
        except (HttpError, Sep2Error) as exc:
            tele.failures += 1
            tele.retry_at = now + flow.retry_delay(tele.failures, base=10.0)
            if isinstance(exc, Throttled):
                tele.retry_at = max(tele.retry_at, exc.not_before)
            log.debug("telemetry post failed: %s", exc)
            if done:
                self.outbox.acknowledge(done)
                self.store.save_outbox(self.outbox)
            return
        tele.failures = 0
        tele.last_post = now
        self.outbox.acknowledge(batch)
        self.store.save_outbox(self.outbox)

    async def _post_readings(self, role: str, url: str, readings: list[IntervalReading]) -> None:
        """Posts one mirror's readings: one MirrorMeterReadingList, or (for a server that takes
        no lists) one MirrorMeterReading per series. Raises unless all were accepted."""
        tele = self._telemetry
        mmrs = flow.meter_readings(self.lfdi, role, readings, min_max=self.options.min_max)
        if not mmrs:
            return
        if tele.lists is not False:
            body = to_xml(flow.meter_reading_list(mmrs))
            response = await self._send("POST", url, body)
            if tele.lists is None and response.status in (400, 405, 415, 501):
                log.info(
                    "%s: HTTP %d to a MirrorMeterReadingList; posting one MirrorMeterReading "
                    "at a time",
                    url,
                    response.status,
                )
                tele.lists = False
            else:
                self._check_reading_post(role, url, response)
                tele.lists = True
                return
        for mmr in mmrs:
            self._check_reading_post(role, url, await self._send("POST", url, to_xml(mmr)))

    def _check_reading_post(self, role: str, url: str, response: Response) -> None:
        if response.status == 404:
            log.warning("the server forgot our %s MirrorUsagePoint; recreating", role)
            self._telemetry.mup_urls.pop(role, None)
            raise Sep2Error("MirrorUsagePoint gone")
        if not 200 <= response.status < 300:
            raise self._refused("posting readings: POST", url, response)


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
