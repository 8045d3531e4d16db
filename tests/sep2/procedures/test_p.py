"""Provisional CSIP-AUS client procedures P-04..P-06: no href caching across a program
relocation, and backing off on HTTP 429 with and without Retry-After (docs/csip-aus-procedures.md).

P-05/P-06 run the client's own `run()` loop on trio's MockClock (its waits for a Retry-After or a
429 backoff are real trio sleeps), with the wall clock of both sides derived from it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from dynexport.sep2.client import ClientOptions, Sep2Client
from dynexport.sep2.flow import DerInfo
from dynexport.sim.utility_core import POLL_MISS
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import T0, utility_config
from tests.sep2.procedures.conftest import (
    MAX_EXPORT_W,
    PEN,
    RATED_W,
    Harness,
    allow_violations,
    needs_schema,
    new_server,
    procedure,
    requests,
    standard_preconditions,
    statuses,
)

pytestmark = needs_schema


async def test_p_04_relocated_program_is_rediscovered_through_the_program_list(
    link: Harness,
) -> None:
    procedure(
        "P-04",
        "GET-DERC-1",
        "POST-DERC1-RESPONSE-COMPLETED",
        "GET-UPDATED-DERP-LIST",
        "FAIL-OLD-DERP-ACCESS",
        "FAIL-OLD-DERC-ACCESS",
        "GET-DERC-2",
        "POST-DERC2-RESPONSE-COMPLETED",
    )
    srv = link.server
    big = {"export_limit_w": 2 * MAX_EXPORT_W, "import_limit_w": 2 * MAX_EXPORT_W}
    derc1 = srv.add_control(start=int(T0), duration=120, **big)  # type: ignore[arg-type]
    await link.run_until(lambda: statuses(srv, derc1) == [1, 2, 3], 200, "DERC1 1, 2, 3")
    # relocation: DERP1 leaves the FSA, DERP2 takes its place
    srv.remove_program("1")
    derp2 = srv.add_program(1, description="DERP2")
    srv.set_default(program=derp2, export_limit_w=0, import_limit_w=0, set_grad_w=27)
    moved = len(srv.received)
    derc2_list = f"/derp/{derp2}/derc"
    await link.run_until(
        lambda: bool(requests(srv, "GET", derc2_list)), 300, "REDISCOVERY (GET-DERC-2)"
    )
    after = srv.received[moved:]
    derp_list = next(
        i for i, r in enumerate(after) if r.method == "GET" and r.path == "/edev/1/fsa/1/derp"
    )
    stale = [r.path for r in after[derp_list:] if r.path in ("/derp/1", "/derp/1/derc")]
    assert stale == [], f"old hrefs used after the DERProgramList changed: {stale}"
    derc2 = srv.add_control(program=derp2, start=int(srv.now()), duration=120, **big)  # type: ignore[arg-type]
    await link.run_until(lambda: statuses(srv, derc2) == [1, 2, 3], 200, "DERC2 1, 2, 3")


class TrioWallClock:
    """Wall time for both sides: T0 plus trio's (mock) time."""

    def __call__(self) -> float:
        return T0 + trio.current_time()


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    # pytest-trio runs a test on a Clock passed to it as an argument. Jump only after 10 ms of
    # real idleness, so loopback TLS traffic is never mistaken for waiting.
    return trio.testing.MockClock(autojump_threshold=0.01)


@pytest.fixture
async def mock_server(
    pki_dir: Path, mock_clock: trio.testing.MockClock
) -> AsyncIterator[UtilityServer]:
    srv = new_server(pki_dir, TrioWallClock())
    standard_preconditions(srv)
    async with srv.running():
        yield srv


def production_client(srv: UtilityServer, data_dir: Path) -> Sep2Client:
    """The client with the options the appliance runs with (a long timeout only, so that a
    mock-clock jump can never time a request out)."""
    return Sep2Client(
        utility_config(srv, pen=PEN),
        data_dir,
        der=DerInfo(rated_w=RATED_W),
        clock=TrioWallClock(),
        options=ClientOptions(http_timeout=10_000.0),
    )


async def _throttled(
    srv: UtilityServer, tmp_path: Path, *, retry_after: str | None, block_s: float, test_s: float
) -> tuple[list[float], float]:
    """GET-DERC-INITIAL and the DERControlList requests after it answer 429 for ``block_s``
    (the harness acts before serving, so the first one is refused too); returns the request
    times relative to the first."""
    derc = "/derp/1/derc"
    srv.inject_fault(path_prefix=derc, status=429, retry_after=retry_after, count=10**6)
    # A throttled DERControlList holds the whole walk back (the client backs off the walk it
    # failed in), so the other resources go unpolled for the block: P-05/P-06 do not time
    # polls, the harness would not fail this.
    allow_violations(srv, POLL_MISS)
    client = production_client(srv, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        while not requests(srv, "GET", derc):  # noqa: ASYNC110 (polling the request log)
            await trio.sleep(0.5)
        first = requests(srv, "GET", derc)[0].t
        await trio.sleep(first + block_s - srv.now())
        srv.clear_faults()
        await trio.sleep(first + test_s - srv.now())
        nursery.cancel_scope.cancel()
    return [r.t - first for r in requests(srv, "GET", derc)], block_s


async def test_p_05_429_without_retry_after_backs_off_and_resumes(
    mock_clock: trio.testing.MockClock, mock_server: UtilityServer, tmp_path: Path
) -> None:
    procedure("P-05", "GET-DERC-INITIAL", "WAIT-FOR-RESUME")
    times, block = await _throttled(
        mock_server, tmp_path, retry_after=None, block_s=120, test_s=210
    )
    assert [t for t in times if t > block], "normal polling did not resume"
    assert len(times) <= 9, f"{len(times)} DERControlList requests in 210 s: {times}"


async def test_p_06_429_with_retry_after_is_not_polled_again_before_it_elapses(
    mock_clock: trio.testing.MockClock, mock_server: UtilityServer, tmp_path: Path
) -> None:
    procedure("P-06", "GET-DERC-INITIAL", "WAIT-FOR-RESUME")
    # Retry-After 181 rather than 180: the block lasts 180 s, and a retry at exactly the
    # moment it lifts would race it (in the harness too)
    times, _block = await _throttled(
        mock_server, tmp_path, retry_after="181", block_s=180, test_s=280
    )
    assert times[0] == 0
    assert not [t for t in times[1:] if t < 181 - 0.5], f"re-polled during Retry-After: {times}"
    assert [t for t in times if t >= 181 - 0.5], "polling did not resume after Retry-After"
    got = [r.status for r in requests(mock_server, "GET", "/derp/1/derc")]
    assert got[0] == 429 and got[-1] == 200, got


async def test_p_06_exactly_two_control_list_requests_in_the_harness_window(
    mock_clock: trio.testing.MockClock, mock_server: UtilityServer, tmp_path: Path
) -> None:
    """The harness's criterion: Retry-After 180 at a 60 s pollRate, 280 s observed, and exactly
    2 DERControlList requests: the one answered 429, and one resumed poll after the block."""
    procedure("P-06", "GET-DERC-INITIAL", "WAIT-FOR-RESUME")
    times, _ = await _throttled(mock_server, tmp_path, retry_after="180", block_s=180, test_s=280)
    assert len(times) == 2, f"DERControlList requested at {times}"
    assert times[0] == 0 and times[1] > 180
    got = [r.status for r in requests(mock_server, "GET", "/derp/1/derc")]
    assert got == [429, 200], got


async def test_p_06_resumes_normal_polling_without_a_duplicate_request(
    mock_clock: trio.testing.MockClock, mock_server: UtilityServer, tmp_path: Path
) -> None:
    procedure("P-06", "GET-DERC-INITIAL", "WAIT-FOR-RESUME")
    times, _ = await _throttled(mock_server, tmp_path, retry_after="181", block_s=180, test_s=280)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 59 for g in gaps[1:]), f"DERControlList requested at {times}"
