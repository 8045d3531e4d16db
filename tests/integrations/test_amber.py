"""Price-aware export from the Amber API, against a simulated Amber server (h11)."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from dynexport.httpio.client import HttpClient
from dynexport.integrations.amber import (
    AmberError,
    PricePoller,
    PriceState,
    decide,
    feed_in_price,
    parse_prices,
)
from dynexport.integrations.limitsources import PRICE_SOURCE
from dynexport.sep2 import certs
from dynexport.system.config import PriceConfig, parse_config
from tests.app.conftest import make_app, simulated_site, site_config, wait_for, wait_settled
from tests.integrations.amber_sim import SITE_ID, TOKEN, AmberSim, prices

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


def test_a_negative_feed_in_price_limits_export_and_a_positive_one_does_not() -> None:
    cfg = price_config("https://x")
    paying = PriceState(parse_prices(json.dumps(prices(NOW, 4.0)).encode()), NOW)
    got = decide(paying, cfg, NOW + 10)
    assert got.limit is not None and (got.limit.source, got.limit.export_w) == (PRICE_SOURCE, 0)
    assert "below 0 c/kWh" in got.reason
    earning = PriceState(parse_prices(json.dumps(prices(NOW, -4.0)).encode()), NOW)
    assert decide(earning, cfg, NOW + 10).limit is None
    # a configured threshold and limit
    cfg2 = price_config("https://x", belowCents=5, exportW=1500)
    limited = decide(earning, cfg2, NOW + 10).limit
    assert limited is not None and limited.export_w == 1500


def test_prices_older_than_the_expiry_lapse_and_say_so() -> None:
    cfg = price_config("https://x", pollS=60, expiryS=120)
    state = PriceState(parse_prices(json.dumps(prices(NOW, 4.0)).encode()), NOW, "HTTP 503")
    assert decide(state, cfg, NOW + 120).limit is not None
    late = decide(state, cfg, NOW + 121)
    assert late.limit is None and late.lapsed
    assert "lapsed" in late.reason and "HTTP 503" in late.reason


async def test_the_poller_reads_the_simulated_api_and_lapses_when_it_goes_down() -> None:
    sim = AmberSim(body=prices(time.time(), feed_in_per_kwh=3.0))
    wall = [time.time()]
    cfg = price_config("", pollS=60, expiryS=180)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        cfg = PriceConfig(**{**cfg.__dict__, "url": f"http://127.0.0.1:{port}/v1"})
        poller = PricePoller(lambda: cfg, wall_clock=lambda: wall[0], allow_plain_http=True)
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
            wall[0] += 60
            await poller.poll_once(client, cfg)
            assert poller.extra_limits(0.0)  # still within its expiry
            wall[0] += 121
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
    assert poller.status()["reason"].startswith("no prices fetched yet")


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
