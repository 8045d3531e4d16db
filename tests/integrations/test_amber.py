"""Price-aware export from the Amber API, against a simulated Amber server (h11)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from hypothesis import given
from hypothesis import strategies as st

from dynexport.httpio.client import HttpClient
from dynexport.integrations.amber import (
    CONFIG_CHECK_S,
    POLL_LEAD_S,
    AmberError,
    PriceInterval,
    PricePoller,
    PriceState,
    decide,
    feed_in_price,
    parse_prices,
    poll_interval,
)
from dynexport.integrations.limitsources import PRICE_SOURCE
from dynexport.sep2 import certs
from dynexport.system.config import PriceConfig, parse_config
from tests.app.conftest import make_app, simulated_site, site_config, wait_for, wait_settled
from tests.integrations.amber_sim import SITE_ID, TOKEN, AmberSim, prices, prices_around

NOW = 1_750_000_000.0


def price_config(url: str, **extra: Any) -> PriceConfig:
    cfg = parse_config(
        {"price": {"siteId": SITE_ID, "token": TOKEN, "url": "https://x", **extra}}
    ).price
    assert cfg is not None
    return PriceConfig(**{**cfg.__dict__, "url": url})


def test_the_documented_response_parses_and_feed_in_is_what_exporting_earns() -> None:
    body = json.dumps(prices(NOW, feed_in_per_kwh=-7.5)).encode()
    intervals = parse_prices(body)
    assert len(intervals) == 6
    assert feed_in_price(intervals, NOW) == 7.5  # Amber: negative feed-in perKwh = earning
    assert feed_in_price(intervals, NOW + 3600) is None


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{}", "expected a list"),
        (b"[1]", r"interval \[0\]: must be an object"),
        (b'[{"perKwh": "5"}]', "perKwh: must be a number"),
        (b'[{"perKwh": NaN}]', "not JSON"),
        (b"\xff", "not JSON"),
        (
            b'[{"perKwh": 1, "startTime": "2025-01-01T00:00:00Z", "endTime": "yesterday",'
            b' "channelType": "feedIn"}]',
            "endTime: not an ISO 8601 time",
        ),
    ],
)
def test_responses_that_are_not_the_documented_shape_are_refused(body: bytes, words: str) -> None:
    with pytest.raises(AmberError, match=words):
        parse_prices(body)


@pytest.mark.parametrize(
    "number",
    [
        "1" * 400,  # an int beyond a float: float() raised OverflowError
        "-" + "9" * 400,
        "7" * 5000,  # beyond Python's 4300-digit int conversion: was "not JSON" without a field
        "1e400",  # a float literal beyond a float: inf
        "-2.5E+999",
    ],
)
def test_a_number_beyond_a_float_is_an_amber_error_naming_the_field_not_an_overflow(
    number: str,
) -> None:
    item = prices(NOW, 4.0)[1]
    text = json.dumps([{**item, "perKwh": 0}]).replace('"perKwh": 0', f'"perKwh": {number}')
    with pytest.raises(AmberError, match=r"interval \[0\]\.perKwh: number out of range") as got:
        parse_prices(text.encode())
    assert len(str(got.value)) < 120  # an excerpt of the number, not all of it


def test_a_negative_feed_in_price_limits_export_and_a_positive_one_does_not() -> None:
    cfg = price_config("https://x")
    paying = PriceState(parse_prices(json.dumps(prices(NOW, 4.0)).encode()), 100.0)
    got = decide(paying, cfg, 110.0, NOW + 10)
    assert got.limit is not None and (got.limit.source, got.limit.export_w) == (PRICE_SOURCE, 0)
    assert "below 0 c/kWh" in got.reason
    earning = PriceState(parse_prices(json.dumps(prices(NOW, -4.0)).encode()), 100.0)
    assert decide(earning, cfg, 110.0, NOW + 10).limit is None
    # a configured threshold and limit
    cfg2 = price_config("https://x", belowCents=5, exportW=1500)
    limited = decide(earning, cfg2, 110.0, NOW + 10).limit
    assert limited is not None and limited.export_w == 1500


def test_prices_older_than_the_expiry_lapse_and_say_so() -> None:
    cfg = price_config("https://x", pollS=60, expiryS=120)
    state = PriceState(parse_prices(json.dumps(prices(NOW, 4.0)).encode()), 100.0, "HTTP 503")
    assert decide(state, cfg, 220.0, NOW + 10).limit is not None
    late = decide(state, cfg, 221.0, NOW + 10)
    assert late.limit is None and late.lapsed
    assert "lapsed" in late.reason and "HTTP 503" in late.reason


def test_the_age_of_prices_is_monotonic_time_and_the_interval_is_wall_time() -> None:
    cfg = price_config("https://x", pollS=60, expiryS=120)
    state = PriceState(parse_prices(json.dumps(prices_around(NOW, 4.0)).encode()), 100.0)
    # the wall clock stepped back an hour while 121 s passed: the prices are 121 s old
    stepped_back = decide(state, cfg, 221.0, NOW - 3600)
    assert stepped_back.limit is None and stepped_back.lapsed
    assert "fetched 121 s ago" in stepped_back.reason
    # the wall clock stepped forward 1000 s while 10 s passed: still young, the price of then
    stepped_on = decide(state, cfg, 110.0, NOW + 1000)
    assert stepped_on.limit is not None and not stepped_on.lapsed


def test_a_source_that_never_fetched_lapses_after_a_failed_poll_or_after_the_expiry() -> None:
    cfg = price_config("https://x", pollS=60, expiryS=120)
    waiting = decide(PriceState(), cfg, 220.0, NOW, waiting_since=100.0)
    assert (waiting.lapsed, waiting.reason) == (False, "no prices fetched yet")
    failed = decide(PriceState(error="HTTP 401: check price.token"), cfg, 101.0, NOW, 100.0)
    assert failed.lapsed and failed.limit is None
    assert "no prices fetched yet (HTTP 401: check price.token)" in failed.reason
    never = decide(PriceState(), cfg, 221.0, NOW, waiting_since=100.0)
    assert never.lapsed and "no prices fetched in 121 s, over price.expiryS 120 s" in never.reason


async def test_the_poller_reads_the_simulated_api_and_lapses_when_it_goes_down() -> None:
    sim = AmberSim(body=prices(time.time(), feed_in_per_kwh=3.0))
    wall, mono = [time.time()], [0.0]
    cfg = price_config("", pollS=60, expiryS=180)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        cfg = PriceConfig(**{**cfg.__dict__, "url": f"http://127.0.0.1:{port}/v1"})
        poller = PricePoller(
            lambda: cfg,
            wall_clock=lambda: wall[0],
            clock=lambda: mono[0],
            allow_plain_http=True,
        )
        async with HttpClient(
            cfg.url + "/", None, allow_plain_http=True, retries=0, content_type="application/json"
        ) as client:
            await poller.poll_once(client, cfg)
            assert sim.requests[-1] == (
                f"/v1/sites/{SITE_ID}/prices/current?next=12&previous=0",
                f"Bearer {TOKEN}",
            )
            limits = poller.extra_limits(0.0)
            assert [(x.source, x.export_w) for x in limits] == [(PRICE_SOURCE, 0.0)]
            assert poller.status()["feedInCents"] == -3.0
            sim.status = 503  # the API goes down
            mono[0] += 60
            await poller.poll_once(client, cfg)
            assert poller.extra_limits(0.0)  # still within its expiry
            mono[0] += 121
            assert poller.extra_limits(0.0) == []
            doc = poller.status()
            assert doc["lapsed"] is True
            assert "lapsed" in doc["reason"] and "HTTP 503" in doc["error"]
        nursery.cancel_scope.cancel()


async def test_a_wrong_token_and_an_unreachable_api_are_reported_in_words(
    refused_port: int,
) -> None:
    sim = AmberSim(body=prices(time.time(), 3.0))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        cfg = price_config(f"http://127.0.0.1:{port}/v1", token="wrong")
        poller = PricePoller(lambda: cfg, allow_plain_http=True)
        async with HttpClient(cfg.url + "/", None, allow_plain_http=True, retries=0) as client:
            await poller.poll_once(client, cfg)
        assert "check price.token" in (poller.state.error or "")
        nursery.cancel_scope.cancel()
    cfg = price_config(f"http://127.0.0.1:{refused_port}/v1")
    poller = PricePoller(lambda: cfg, allow_plain_http=True)
    async with HttpClient(cfg.url + "/", None, allow_plain_http=True, retries=0) as client:
        await poller.poll_once(client, cfg)
    assert "cannot connect" in (poller.state.error or "")
    assert "no prices fetched yet (price API: cannot connect" in poller.status()["reason"]


async def test_a_source_that_never_fetched_reports_lapsed_once_its_first_poll_failed(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A wrong token from day one shows as the dashboard's price-lapsed alert (``lapsed``)."""
    sim = AmberSim(body=prices_around(NOW, 3.0))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        cfg = price_config(f"http://127.0.0.1:{port}/v1", token="wrong")
        poller = PricePoller(lambda: cfg, wall_clock=lambda: NOW, allow_plain_http=True)
        before = poller.status()
        assert (before["lapsed"], before["reason"]) == (False, "no prices fetched yet")
        async with HttpClient(cfg.url + "/", None, allow_plain_http=True, retries=0) as client:
            await poller.poll_once(client, cfg)
        doc = poller.status()
        assert doc["lapsed"] is True and doc["limitW"] is None
        assert "lapsed: no prices fetched yet" in doc["reason"]
        assert "check price.token" in doc["reason"]
        assert poller.extra_limits(0.0) == []
        # the token is put right: the source recovers at its next poll
        cfg = price_config(f"http://127.0.0.1:{port}/v1")
        async with HttpClient(cfg.url + "/", None, allow_plain_http=True, retries=0) as client:
            await poller.poll_once(client, cfg)
        doc = poller.status()
        assert doc["lapsed"] is False and doc["limitW"] == 0.0 and doc["error"] is None
        nursery.cancel_scope.cancel()


async def test_a_source_that_never_completes_a_poll_reports_lapsed_after_the_expiry(
    mock_clock: trio.testing.MockClock,
) -> None:
    cfg = price_config("https://127.0.0.1:1/v1", pollS=60, expiryS=180)
    poller = PricePoller(lambda: cfg, wall_clock=lambda: NOW)
    assert poller.status()["lapsed"] is False  # configured now: waiting for its first prices
    mock_clock.jump(180)
    assert poller.status()["lapsed"] is False
    mock_clock.jump(1)
    doc = poller.status()
    assert doc["lapsed"] is True and doc["lastFetch"] is None
    assert "no prices fetched in 181 s, over price.expiryS 180 s" in doc["reason"]


async def test_a_wall_clock_step_back_does_not_make_old_prices_apply_past_the_expiry(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The age of the prices is judged on trio's clock; the wall clock only picks the interval."""
    sim = AmberSim(body=prices_around(NOW, feed_in_per_kwh=4.0))  # exporting costs 4 c/kWh
    wall = [NOW]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        cfg = price_config(f"http://127.0.0.1:{port}/v1", pollS=60, expiryS=180)
        poller = PricePoller(lambda: cfg, wall_clock=lambda: wall[0], allow_plain_http=True)
        async with HttpClient(cfg.url + "/", None, allow_plain_http=True, retries=0) as client:
            await poller.poll_once(client, cfg)
        assert [x.export_w for x in poller.extra_limits(0.0)] == [0.0]
        wall[0] += 1000  # the wall clock steps forward: the prices are still 0 s old
        assert [x.export_w for x in poller.extra_limits(0.0)] == [0.0]
        assert poller.status()["lapsed"] is False
        mock_clock.jump(181)  # 181 s pass while the wall clock steps back an hour
        wall[0] = NOW + 181 - 3600
        assert poller.extra_limits(0.0) == []
        doc = poller.status()
        assert doc["lapsed"] is True and "fetched 181 s ago" in doc["reason"]
        nursery.cancel_scope.cancel()


@given(
    poll=st.floats(60, 3600),
    extra=st.floats(0, 86400),
    round_trip=st.floats(0, POLL_LEAD_S, exclude_max=True),
)
def test_prices_never_lapse_while_each_poll_completes_within_the_lead(
    poll: float, extra: float, round_trip: float
) -> None:
    """With ``expiryS == pollS`` the prices lapsed for the length of every poll: the next poll
    now starts early enough that one answered within ``POLL_LEAD_S`` refreshes them in time."""
    expiry = min(max(poll, 120.0) + extra, 86400.0)
    cfg = price_config("https://x", pollS=poll, expiryS=expiry)
    state = PriceState(parse_prices(json.dumps(prices_around(NOW, 4.0)).encode()), 0.0)
    refreshed_at = poll_interval(cfg) + round_trip  # the next poll's answer arrives
    got = decide(state, cfg, refreshed_at, NOW)
    assert not got.lapsed and got.limit is not None
    assert poll_interval(cfg) == (poll if expiry - poll >= POLL_LEAD_S else expiry - POLL_LEAD_S)


async def test_a_poll_returns_the_wait_that_keeps_prices_from_lapsing_when_expiry_is_poll(
    mock_clock: trio.testing.MockClock,
) -> None:
    sim = AmberSim(body=prices_around(NOW, 4.0))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        cfg = price_config(f"http://127.0.0.1:{port}/v1", pollS=300, expiryS=300)
        poller = PricePoller(lambda: cfg, wall_clock=lambda: NOW, allow_plain_http=True)
        async with HttpClient(cfg.url + "/", None, allow_plain_http=True, retries=0) as client:
            assert await poller.poll_once(client, cfg) == 300 - POLL_LEAD_S
            cfg = price_config(f"http://127.0.0.1:{port}/v1", pollS=300, expiryS=900)
            assert await poller.poll_once(client, cfg) == 300
        nursery.cancel_scope.cancel()


async def test_a_changed_site_id_drops_the_old_sites_prices_at_once_and_an_answer_in_flight(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The prices are the site's: another site's export must not follow them until the new
    site's first fetch (up to ``pollS`` later), nor an answer the old site's poll brings."""
    sim = AmberSim(body=prices_around(NOW, feed_in_per_kwh=4.0))  # exporting costs 4 c/kWh
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        cfg = [price_config(f"http://127.0.0.1:{port}/v1")]
        poller = PricePoller(lambda: cfg[0], wall_clock=lambda: NOW, allow_plain_http=True)
        async with HttpClient(cfg[0].url + "/", None, allow_plain_http=True, retries=0) as client:
            await poller.poll_once(client, cfg[0])
            assert [x.export_w for x in poller.extra_limits(0.0)] == [0.0]
            cfg[0] = PriceConfig(**{**cfg[0].__dict__, "below_cents": -1.0})
            assert [x.export_w for x in poller.extra_limits(0.0)] == [0.0]  # same site: kept
            cfg[0] = PriceConfig(**{**cfg[0].__dict__, "site_id": "another-site"})
            assert poller.extra_limits(0.0) == []
            doc = poller.status()
            assert (doc["lapsed"], doc["reason"], doc["lastFetch"]) == (
                False,
                "no prices fetched yet",
                None,
            )
            # the new site's first poll is held in flight while the site changes back and forth
            old = cfg[0]
            sim.gate = trio.Event()
            sim.asked = trio.Event()
            async with trio.open_nursery() as polls:
                polls.start_soon(poller.poll_once, client, old)
                await sim.asked.wait()
                cfg[0] = PriceConfig(**{**old.__dict__, "site_id": SITE_ID})
                assert poller.extra_limits(0.0) == []  # the first site afresh: no prices yet
                sim.gate.set()
            assert poller.state.error is None  # the 404 for "another-site" was dropped
            assert poller.status()["reason"] == "no prices fetched yet"
        nursery.cancel_scope.cancel()


async def test_a_site_change_after_a_lapse_is_not_logged_as_a_recovery(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = [price_config("http://127.0.0.1:1/v1", token="wrong")]  # a closed port
    poller = PricePoller(lambda: cfg[0], wall_clock=lambda: NOW, allow_plain_http=True)
    async with HttpClient(cfg[0].url + "/", None, allow_plain_http=True, retries=0) as client:
        await poller.poll_once(client, cfg[0])  # cannot connect, never fetched: lapsed
    caplog.set_level(logging.INFO, logger="dynexport.integrations")
    assert poller.extra_limits(0.0) == [] and poller.status()["lapsed"] is True
    caplog.clear()
    cfg[0] = PriceConfig(**{**cfg[0].__dict__, "site_id": "another-site"})
    assert poller.extra_limits(0.0) == [] and poller.status()["lapsed"] is False
    assert [r.getMessage() for r in caplog.records] == [
        "price: the source changed: the prices fetched before are dropped",
        "price: no prices fetched yet",
    ]


async def test_a_site_changed_and_back_between_the_pollers_looks_is_fetched_again_at_once(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A control cycle that saw the other site dropped the prices; the poller, looking once a
    second, saw the same configuration and slept on: no price limit until the next poll."""
    sim = AmberSim(body=prices_around(NOW, 4.0))  # exporting costs 4 c/kWh: limit 0 W
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        a = price_config(f"http://127.0.0.1:{port}/v1", pollS=300, expiryS=900)
        cfg = [a]
        poller = PricePoller(lambda: cfg[0], wall_clock=lambda: NOW, allow_plain_http=True)
        nursery.start_soon(poller.run)

        async def settled(predicate: Callable[[], bool]) -> bool:
            """Lets every task run until blocked (the clock stands still); ``predicate()``."""
            for _ in range(200):
                if predicate():
                    return True
                await trio.testing.wait_all_tasks_blocked()
                await trio.lowlevel.checkpoint()
            return predicate()

        assert await settled(lambda: poller.state.fetched_at is not None)
        assert [x.export_w for x in poller.extra_limits(0.0)] == [0.0]
        cfg[0] = PriceConfig(**{**a.__dict__, "site_id": "another-site"})
        assert poller.extra_limits(0.0) == []  # a control cycle sees the other site
        cfg[0] = a  # ... and it is put back before the poller's next look
        assert len(sim.requests) == 1
        mock_clock.jump(CONFIG_CHECK_S)  # the poller's next look at the configuration
        assert await settled(lambda: poller.state.fetched_at is not None)
        assert len(sim.requests) == 2
        assert [x.export_w for x in poller.extra_limits(0.0)] == [0.0]
        nursery.cancel_scope.cancel()


async def test_a_huge_price_number_is_a_price_error_in_the_status_not_an_escaping_exception(
    mock_clock: trio.testing.MockClock,
) -> None:
    body = prices_around(NOW, 4.0)
    body[1]["perKwh"] = 10**399  # a 400-digit number
    sim = AmberSim(body=body)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        cfg = price_config(f"http://127.0.0.1:{port}/v1")
        poller = PricePoller(lambda: cfg, wall_clock=lambda: NOW, allow_plain_http=True)
        async with HttpClient(cfg.url + "/", None, allow_plain_http=True, retries=0) as client:
            await poller.poll_once(client, cfg)
        error = poller.status()["error"] or ""
        assert error.startswith("price API: interval [1].perKwh: number out of range: 1000")
        assert poller.status()["lapsed"] is True
        nursery.cancel_scope.cancel()


async def test_a_lapse_is_logged_once_when_it_begins_and_once_when_it_ends_not_every_cycle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The controller asks for the limit every second and a lapse's reason holds the age of the
    prices: a log line per change of that text was a warning per second."""
    caplog.set_level(logging.INFO, logger="dynexport.integrations")
    sim = AmberSim(body=prices_around(NOW, feed_in_per_kwh=4.0))
    mono = [0.0]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        cfg = price_config(f"http://127.0.0.1:{port}/v1", pollS=60, expiryS=180)
        poller = PricePoller(
            lambda: cfg, wall_clock=lambda: NOW, clock=lambda: mono[0], allow_plain_http=True
        )
        async with HttpClient(cfg.url + "/", None, allow_plain_http=True, retries=0) as client:

            def cycles(seconds: int) -> list[str]:
                """The control loop's calls for ``seconds`` s; what the price source logged."""
                caplog.clear()
                for _ in range(seconds):
                    mono[0] += 1.0
                    poller.extra_limits(0.0)
                return [f"{r.levelname} {r.getMessage()}" for r in caplog.records]

            await poller.poll_once(client, cfg)
            assert cycles(60) == [
                "INFO price: feed-in -4.00 c/kWh is below 0 c/kWh: export limited to 0 W"
            ]
            sim.status = 503
            await poller.poll_once(client, cfg)  # logs its own error once
            lapse = cycles(300)  # lapses at 181 s, then stays lapsed for two minutes
            assert len(lapse) == 1 and lapse[0].startswith("WARNING price: lapsed:")
            assert "fetched 181 s ago" in lapse[0]
            assert poller.status()["reason"].startswith("lapsed: the last prices were fetched 360")
            sim.status = 200
            await poller.poll_once(client, cfg)
            assert cycles(60) == [
                "INFO price: recovered: feed-in -4.00 c/kWh is below 0 c/kWh: export limited to 0 W"
            ]
        nursery.cancel_scope.cancel()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("amber-pki")
    return dict(certs.make_test_pki(folder, now=dt.datetime.now(dt.UTC)).files)


@pytest.mark.slow
async def test_a_negative_price_sets_export_to_zero_within_one_control_cycle_of_the_poll(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    """The whole service: simulated site, simulated Amber API over TLS with a private CA."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki["server_chain"], pki["server_key"])
    sim = AmberSim(body=prices(time.time(), feed_in_per_kwh=12.0))  # exporting costs 12 c/kWh
    with simulated_site() as site:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(sim.serve, server_ctx)
            price = {
                "siteId": SITE_ID,
                "token": TOKEN,
                "url": f"https://127.0.0.1:{port}/v1",
                "ca": str(pki["serca"]),
            }
            config = site_config(site, extra={"price": price, "limits": {"exportW": 5000}})
            app = make_app(config, tmp_path / "data")
            decisions: list[tuple[bool, float | None, str | None]] = []
            original = app.control_once

            def recording(now: float) -> Any:
                integrations = getattr(app, "integrations", None)
                polled = (
                    integrations is not None and integrations.price.state.fetched_at is not None
                )
                out = original(now)
                decisions.append((polled, app.limits.export_w, app.limits.sources.get("export_w")))
                return out

            app.control_once = recording  # type: ignore[method-assign]
            await nursery.start(app.run)
            await wait_for(lambda: any(polled for polled, _, _ in decisions))
            before = [d for d in decisions if not d[0]]
            after = [d for d in decisions if d[0]]
            assert all(d[1:] == (5000.0, "config") for d in before)
            # the first control decision after the poll already obeys the price
            assert after[0][1:] == (0.0, PRICE_SOURCE)
            assert app.status()["limits"]["source"]["export_w"] == PRICE_SOURCE
            assert app.status()["integrations"]["price"]["feedInCents"] == -12.0
            await wait_settled(site.export_w, 0.0, tolerance=300.0)
            nursery.cancel_scope.cancel()


def test_the_second_between_two_of_ambers_intervals_has_the_next_ones_price() -> None:
    """Amber's intervals run from hh:mm:01 to the next boundary: the second on each boundary
    had no price, the source lapsed and a negative-price curtailment dropped for a second at
    every boundary (export went out at the owner's cost)."""
    first = PriceInterval(1000.0 + 1, 1000.0 + 1800, 5.0, "feedIn", "CurrentInterval")
    second = PriceInterval(2800.0 + 1, 2800.0 + 1800, 12.0, "feedIn", "ForecastInterval")
    general = PriceInterval(2800.0 - 60, 2800.0 + 1800, 30.0, "general", "ForecastInterval")
    both = (general, first, second)
    assert feed_in_price(both, 2799.5) == -5.0
    assert feed_in_price(both, 2800.0) == -12.0  # on the boundary: the next interval's
    assert feed_in_price(both, 2800.5) == -12.0
    assert feed_in_price(both, 2801.0) == -12.0
    assert feed_in_price(both, 2800.0 + 1800) is None  # past the last: unknown
    assert feed_in_price(both, 1000.0 - 5) is None  # long before the first: unknown


async def test_a_url_no_client_can_use_is_the_sources_error_not_a_task_restarting(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A port out of range passes as a caution (`run` runs on such a file); the poller reports
    it as its error and waits, instead of failing and being restarted for good."""
    cfg = price_config("https://127.0.0.1:99999/v1")
    poller = PricePoller(lambda: cfg, wall_clock=lambda: NOW)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller.run)
        await trio.testing.wait_all_tasks_blocked()
        doc = poller.status()
        assert doc["error"] is not None and doc["error"].startswith("price.url: unusable URL")
        assert doc["lapsed"] is True
        nursery.cancel_scope.cancel()
