"""Price-aware export from the Amber Electric API: limit export while feed-in pays too little.

Amber passes the wholesale price through, so the feed-in price can go negative: exporting then
costs the owner money. ``GET /v1/sites/{siteId}/prices/current?next=N`` (Bearer token) returns
the current interval and the next ones, one entry per channel (``general``, ``feedIn``,
``controlledLoad``); for ``feedIn`` Amber's ``perKwh`` is what the owner *pays* per kWh
exported, so it is negative when exporting earns money. Here the feed-in price is what exporting
earns, ``-perKwh`` c/kWh, and export is limited (to ``price.exportW``, default 0 W) while it is
below ``price.belowCents`` (default 0: while exporting costs money).

Polling: every ``price.pollS`` (default 300 s, Amber's price interval is 5 or 30 minutes; the
API allows far more), or sooner when ``price.expiryS`` leaves less than ``POLL_LEAD_S`` after it
for the next poll to complete; honouring ``Retry-After`` on 429. The intervals fetched cover the
next hours, so one missed poll changes nothing; but prices fetched longer ago than
``price.expiryS`` lapse: the source then sets no limit and its status says why. The age of the
prices is judged on trio's monotonic clock (a wall-clock step must not make old prices young
again); the intervals themselves are wall-clock times. A source that has never fetched prices
lapses as soon as a poll has failed (or ``price.expiryS`` has passed without one succeeding), so
a wrong token or site id shows. The prices belong to the site and API they were fetched from: a
changed ``price.siteId`` or ``price.url`` drops them at once (they are another site's prices). A
price is a commercial signal, not a network limit, so when it is unknown the site exports as the
utility and the installer allow, never more.

The parsing and the decision are pure; ``PricePoller`` is the thin trio adapter, using the
project's HTTP client.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import trio

from dynexport.httpio.client import HttpClient, HttpError, parse_retry_after
from dynexport.integrations.limitsources import PRICE_SOURCE, ExtraLimit
from dynexport.system.config import PriceConfig

log = logging.getLogger("dynexport.integrations")

NEXT_INTERVALS = 12
"""Forecast intervals asked for: an hour at 5-minute pricing, six at 30-minute pricing."""
MAX_BODY = 256 * 1024
CONFIG_CHECK_S = 1.0
CONNECT_TIMEOUT_S = 10.0
ANSWER_TIMEOUT_S = 20.0
RETRIES = 1
RETRY_PAUSE_MAX_S = 1.0
"""The HTTP client's longest pause before its retry (its first backoff step)."""
POLL_LEAD_S = (CONNECT_TIMEOUT_S + ANSWER_TIMEOUT_S) * (RETRIES + 1) + RETRY_PAUSE_MAX_S + 1.0
"""Time left before the prices' expiry for the next poll to complete: the longest poll the
client completes within its own timeouts (a retry included) refreshes them before they lapse."""


class AmberError(ValueError):
    """A response that is not the documented price list; the message says what is wrong."""


@dataclass(frozen=True)
class PriceInterval:
    """One priced interval of one channel, times as Unix seconds."""

    start: float
    end: float
    per_kwh: float
    """c/kWh as Amber reports it (for ``feedIn``: what the owner pays per kWh exported)."""
    channel: str
    kind: str
    """``ActualInterval``, ``CurrentInterval`` or ``ForecastInterval``."""


def prices_path(site_id: str) -> str:
    """The request target, relative to the API base (``https://api.amber.com.au/v1/``)."""
    return f"sites/{site_id}/prices/current?next={NEXT_INTERVALS}&previous=0"


def _time(value: object, where: str) -> float:
    if not isinstance(value, str):
        raise AmberError(f"{where}: must be an ISO 8601 time, not {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise AmberError(f"{where}: not an ISO 8601 time: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise AmberError(f"{where}: time without a zone: {value[:40]!r}")
    return parsed.timestamp()


def _excerpt(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"


def _json_int(text: str) -> int | float:
    """A JSON integer; one too long for Python's int conversion (over 4300 digits) becomes
    an infinity of its sign, refused by the field's check (which names the field)."""
    try:
        return int(text)
    except ValueError:
        return -math.inf if text.startswith("-") else math.inf


def _number(value: object, where: str) -> float:
    """A finite JSON number as a float; AmberError naming ``where`` and the problem."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AmberError(f"{where}: must be a number, not {_excerpt(value)}")
    try:
        number = float(value)  # an int beyond a float's range raises OverflowError
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        # NaN and Infinity are refused by the JSON parser: this is a number beyond a float
        raise AmberError(f"{where}: number out of range: {_excerpt(value)}")
    return number


def parse_prices(body: bytes) -> tuple[PriceInterval, ...]:
    """The intervals of a ``prices/current`` response; raises AmberError naming the problem."""
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_refuse, parse_int=_json_int)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise AmberError(f"not JSON: {exc}") from None
    if not isinstance(doc, list):
        raise AmberError(f"expected a list of intervals, got {type(doc).__name__}")
    out = []
    for i, item in enumerate(doc):
        where = f"interval [{i}]"
        if not isinstance(item, dict):
            raise AmberError(f"{where}: must be an object")
        price = _number(item.get("perKwh"), f"{where}.perKwh")
        start = _time(item.get("startTime"), f"{where}.startTime")
        end = _time(item.get("endTime"), f"{where}.endTime")
        if end <= start:
            raise AmberError(f"{where}: endTime is not after startTime")
        channel = item.get("channelType")
        if not isinstance(channel, str):
            raise AmberError(f"{where}.channelType: must be a string")
        kind = item.get("type")
        out.append(PriceInterval(start, end, price, channel, str(kind)))
    return tuple(out)


def _refuse(name: str) -> float:
    raise ValueError(f"{name} is not a number")


BOUNDARY_SLACK_S = 2.0
"""Amber's intervals start a second after the previous one ends (02:00:01 to 02:30:00): an
interval counts from this long before its start, or that second had no price, the source lapsed
and a negative-price curtailment was dropped for a second at every boundary."""


def feed_in_price(intervals: tuple[PriceInterval, ...], t: float) -> float | None:
    """What exporting earns at ``t`` in c/kWh (``-perKwh`` of the feed-in interval holding
    ``t``, an interval counting from ``BOUNDARY_SLACK_S`` before its start); None when no
    fetched interval covers it."""
    feed_in = [i for i in intervals if i.channel == "feedIn"]
    for interval in feed_in:
        if interval.start <= t < interval.end:
            return -interval.per_kwh
    for interval in feed_in:
        if interval.start - BOUNDARY_SLACK_S <= t < interval.end:
            return -interval.per_kwh
    return None


@dataclass(frozen=True)
class PriceState:
    """What the poller knows: the last good fetch and the last error (None since a success)."""

    intervals: tuple[PriceInterval, ...] = ()
    fetched_at: float | None = None
    """When the intervals were fetched, on trio's monotonic clock: their age is judged on it."""
    error: str | None = None
    fetched_wall: float | None = None
    """The wall time of that fetch, for the status only."""


@dataclass(frozen=True)
class PriceDecision:
    limit: ExtraLimit | None
    reason: str
    feed_in_cents: float | None
    lapsed: bool


def decide(
    state: PriceState,
    config: PriceConfig,
    now: float,
    wall: float,
    waiting_since: float | None = None,
) -> PriceDecision:
    """The price source's export limit, with the reason in words. ``now`` is trio's monotonic
    clock (the age of the fetch), ``wall`` the wall time (which interval applies);
    ``waiting_since`` (monotonic) is when the source began waiting for its first prices."""
    problem = f" ({state.error})" if state.error else ""
    if state.fetched_at is None:
        if state.error is not None:  # a poll has failed: say so (a wrong token, site id, CA)
            return PriceDecision(
                None, f"lapsed: no prices fetched yet{problem}; no price limit", None, True
            )
        waited = None if waiting_since is None else now - waiting_since
        if waited is not None and waited > config.expiry_s:
            return PriceDecision(
                None,
                f"lapsed: no prices fetched in {waited:.0f} s, over price.expiryS "
                f"{config.expiry_s:g} s; no price limit",
                None,
                True,
            )
        return PriceDecision(None, "no prices fetched yet", None, False)
    age = now - state.fetched_at
    if age > config.expiry_s:
        return PriceDecision(
            None,
            f"lapsed: the last prices were fetched {age:.0f} s ago, over price.expiryS "
            f"{config.expiry_s:g} s{problem}; no price limit",
            None,
            True,
        )
    cents = feed_in_price(state.intervals, wall)
    if cents is None:
        return PriceDecision(
            None, f"lapsed: no feed-in price for now in the last fetch{problem}", None, True
        )
    if cents < config.below_cents:
        return PriceDecision(
            ExtraLimit(PRICE_SOURCE, config.export_w),
            f"feed-in {cents:.2f} c/kWh is below {config.below_cents:g} c/kWh: export limited "
            f"to {config.export_w:.0f} W",
            cents,
            False,
        )
    return PriceDecision(
        None,
        f"feed-in {cents:.2f} c/kWh is not below {config.below_cents:g} c/kWh",
        cents,
        False,
    )


def poll_interval(config: PriceConfig) -> float:
    """Seconds from one poll's end to the next's start: ``pollS``, or less when ``expiryS`` is
    within ``POLL_LEAD_S`` of it (with ``expiryS == pollS`` the prices lapsed for the length of
    every poll)."""
    return min(config.poll_s, config.expiry_s - POLL_LEAD_S)


def describe_status(status: int, body: bytes) -> str:
    """An HTTP error from the price API in words an installer can act on."""
    hint = {
        401: "the token was refused: check price.token",
        403: "the token may not read this site: check price.token and price.siteId",
        404: "no such site: check price.siteId",
        429: "rate limited by the API",
    }.get(status, "")
    excerpt = body[:120].decode("utf-8", "replace")
    return f"HTTP {status} from the price API" + (f": {hint}" if hint else f" ({excerpt!r})")


class PricePoller:
    """Polls the Amber API while ``price`` is configured; the app asks it for its limit."""

    def __init__(
        self,
        get_config: Callable[[], PriceConfig | None],
        *,
        wake: Callable[[], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = trio.current_time,
        ssl_context: ssl.SSLContext | None = None,
        allow_plain_http: bool = False,
    ) -> None:
        """``wall_clock`` places the price intervals, ``clock`` (monotonic: trio's) ages the
        fetched prices. ``ssl_context`` and ``allow_plain_http`` are for tests (the product
        builds its own context from ``price.ca`` and speaks https only)."""
        self._get_config = get_config
        self._wake = wake
        self._wall_clock = wall_clock
        self._clock = clock
        self._ssl_context = ssl_context
        self._allow_plain_http = allow_plain_http
        self.state = PriceState()
        self.polls = 0
        self._waiting_since: float | None = None
        """``clock`` time the configured source began waiting for prices; None: unconfigured."""
        self._source: tuple[str, str] | None = None
        """(url, siteId) that ``state`` belongs to; None: unconfigured."""
        self._source_changes = 0
        """Counts changes of ``_source``: a change and change-back between two of the poller's
        looks at the configuration still dropped the prices, and must fetch them again."""
        self._logged: tuple[bool, str] | None = None
        """(lapsed, reason) last logged; the reason is "" while lapsed (its text holds an age)."""

    def _configured(self) -> PriceConfig | None:
        """The configuration now; a new source (another site or API, or none) starts afresh,
        without the last one's prices or error."""
        config = self._get_config()
        source = None if config is None else (config.url, config.site_id)
        if source != self._source:
            if self._source is not None and self.state != PriceState():
                log.info("price: the source changed: the prices fetched before are dropped")
            self.state = PriceState()
            self._source = source
            self._source_changes += 1
            self._logged = None  # the next decision is logged afresh, not as a recovery
            self._waiting_since = None if config is None else self._clock()
        return config

    def decision(self) -> PriceDecision | None:
        config = self._configured()
        if config is None:
            return None
        return decide(self.state, config, self._clock(), self._wall_clock(), self._waiting_since)

    def extra_limits(self, now: float) -> list[ExtraLimit]:
        """The price limit in force (``now`` is the app's clock; the poller reads its own)."""
        del now
        got = self.decision()
        if got is None:
            return []
        # a lapse is logged once when it begins, and once more when it ends: its reason holds
        # the age of the prices, which changes every second (this runs every control cycle)
        logged = (True, "") if got.lapsed else (False, got.reason)
        if logged != self._logged:
            if got.lapsed:
                log.warning("price: %s", got.reason)
            elif self._logged is not None and self._logged[0]:
                log.info("price: recovered: %s", got.reason)
            else:
                log.info("price: %s", got.reason)
            self._logged = logged
        return [got.limit] if got.limit is not None else []

    def status(self) -> dict[str, Any]:
        got = self.decision()
        if got is None:
            return {"configured": False}
        fetched = self.state.fetched_wall
        return {
            "configured": True,
            "feedInCents": got.feed_in_cents,
            "limitW": None if got.limit is None else got.limit.export_w,
            "lapsed": got.lapsed,
            "reason": got.reason,
            "lastFetch": None if fetched is None else _iso(fetched),
            "error": self.state.error,
        }

    def _context(self, config: PriceConfig) -> ssl.SSLContext:
        if self._ssl_context is not None:
            return self._ssl_context
        return ssl.create_default_context(cafile=str(config.ca) if config.ca else None)

    async def run(self) -> None:
        """Runs for the life of the service; idles while ``price`` is not configured."""
        while True:
            config = self._configured()
            if config is None:
                await trio.sleep(CONFIG_CHECK_S)
                continue
            changes = self._source_changes
            try:
                client = HttpClient(
                    config.url + "/",
                    self._context(config),
                    timeout=ANSWER_TIMEOUT_S,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    retries=RETRIES,
                    max_body=MAX_BODY,
                    content_type="application/json",
                    wait_retry_after=False,
                    allow_plain_http=self._allow_plain_http,
                )
            except (OSError, ssl.SSLError, HttpError) as exc:
                # an unreadable CA file, or a URL no client can use (a port out of range)
                key = "price.url" if isinstance(exc, HttpError) else "price.ca"
                self.state = replace(self.state, error=f"{key}: {exc}")
                await self._wait(config, config.poll_s, changes)
                continue
            async with client:
                while self._unchanged(config, changes):
                    delay = await self.poll_once(client, config)
                    await self._wait(config, delay, changes)

    def _unchanged(self, config: PriceConfig, changes: int) -> bool:
        return self._get_config() == config and self._source_changes == changes

    async def _wait(self, config: PriceConfig, delay: float, changes: int) -> None:
        with trio.move_on_after(delay):
            # the app replaces its configuration without telling its readers: look each second
            while self._unchanged(config, changes):  # noqa: ASYNC110
                await trio.sleep(CONFIG_CHECK_S)

    async def poll_once(self, client: HttpClient, config: PriceConfig) -> float:
        """One poll; returns the seconds until the next one."""
        self.polls += 1
        delay = poll_interval(config)
        try:
            response = await client.get(
                prices_path(config.site_id), headers={"Authorization": f"Bearer {config.token}"}
            )
            if response.status == 200:
                got = PriceState(
                    parse_prices(response.body), self._clock(), None, self._wall_clock()
                )
            else:
                error = describe_status(response.status, response.body)
                if response.status in (429, 503):
                    asked = parse_retry_after(response.header("retry-after"), self._wall_clock())
                    if asked is not None:
                        delay = min(max(asked, 1.0), config.poll_s * 4)
                got = replace(self.state, error=error)
        except (HttpError, AmberError) as exc:
            got = replace(self.state, error=f"price API: {exc}")
        self._configured()
        if self._source != (config.url, config.site_id):
            return delay  # the source changed during the poll: this answer is another site's
        old, self.state = self.state, got
        if self.state.error is not None and self.state.error != old.error:
            log.warning("price: %s", self.state.error)
        if self._wake is not None:
            self._wake()  # the controller applies the new price at once, not a cycle later
        return delay


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")
