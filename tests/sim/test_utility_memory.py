"""The utility simulator's memory stays bounded in a long run (the demo, the benchmarks).

Unbounded, every recorded request (with its body and parsed resource), reading, response,
per-control response status and poll miss stayed for the life of the process: about 10 MiB an
hour at the demo's rates. With ``max_records`` each keeps only its latest entries; without it
(tests) everything is kept.
"""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.sep2 import resources as r
from dynexport.sim import utility_server
from dynexport.sim.utility_core import UtilityCore
from dynexport.sim.utility_server import LONG_RUN_MAX_RECORDS, roll_steps

ME = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
NOW = 1_700_000_000


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_core(clock: Clock | None = None, max_records: int | None = None) -> UtilityCore:
    return UtilityCore(
        device_lfdi=ME, clock=clock or Clock(), validate=False, max_records=max_records
    )


def respond(core: UtilityCore, mrid: str, status: int) -> str:
    response = r.DERControlResponse(
        end_device_lfdi=ME, subject=mrid, status=status, created_date_time=NOW
    )
    reply = core.handle("POST", "/rsp", body=r.to_xml(response), lfdi=ME)
    assert reply.status == 201
    location = reply.header("Location")
    assert location is not None
    return location


def test_stored_responses_are_bounded_and_the_newest_still_answers_at_its_own_href() -> None:
    core = make_core(max_records=10)
    mrids = [core.add_control(start=NOW + 60 * i, duration=60, export_limit_w=0) for i in range(40)]
    hrefs = [respond(core, mrid, 1) for mrid in mrids]
    assert len(set(hrefs)) == 40  # an index is never reused after a trim
    assert len(core.responses) <= 10
    newest = core.handle("GET", hrefs[-1], lfdi=ME)
    assert newest.status == 200
    parsed = r.parse_resource(newest.body)
    assert isinstance(parsed, r.DERControlResponse) and parsed.subject == mrids[-1]
    assert core.handle("GET", hrefs[0], lfdi=ME).status == 404  # trimmed long ago


def test_response_sequences_are_still_checked_for_recent_controls_after_a_trim() -> None:
    core = make_core(max_records=10)
    mrids = [core.add_control(start=NOW + 60 * i, duration=60, export_limit_w=0) for i in range(30)]
    for mrid in mrids:
        respond(core, mrid, 1)
    respond(core, mrids[-1], 1)  # sent again: the harness fails this
    assert core.violations[-1].check == "response-sequence"
    assert mrids[-1] in core.violations[-1].message


def test_poll_misses_are_bounded_per_path() -> None:
    clock = Clock()
    core = make_core(clock=clock, max_records=4)
    for i in range(20):
        clock.t = NOW + 1000 * i  # far past 1.5 × the 60 s pollRate every time
        assert core.handle("GET", "/dcap", lfdi=ME).status == 200
    misses = core.poll_misses["/dcap"]
    assert 2 <= len(misses) <= 4
    assert misses[-1].at == NOW + 1000 * 19  # the newest is kept
    assert len(core.violations) <= 4


def test_without_a_cap_everything_is_kept_for_tests() -> None:
    core = make_core()
    for _ in range(300):
        core.handle("GET", "/tm", lfdi=ME)
    assert len(core.received) == 300


@settings(max_examples=40, deadline=None)
@given(
    cap=st.integers(min_value=1, max_value=12),
    requests=st.lists(st.sampled_from(["/tm", "/dcap", "/edev", "/nowhere", "rsp"]), max_size=80),
)
def test_no_record_grows_past_the_cap_and_the_latest_request_is_kept(
    cap: int, requests: list[str]
) -> None:
    clock = Clock()
    core = make_core(clock=clock, max_records=cap)
    mrid = core.add_control(start=NOW, duration=60, export_limit_w=0)
    for n, target in enumerate(requests):
        clock.t = NOW + 500 * n  # every /dcap poll is a miss: violations and poll_misses grow
        if target == "rsp":
            respond(core, mrid, 1 + n % 2)
        else:
            core.handle("GET", target, lfdi=ME)
    for records in (core.received, core.readings, core.responses, core.violations):
        assert len(records) <= cap
    assert all(len(misses) <= cap for misses in core.poll_misses.values())
    if requests:
        last = requests[-1]
        assert core.received[-1].path == ("/rsp" if last == "rsp" else last)


async def test_rolling_steps_bounds_a_server_that_keeps_everything(autojump_clock: object) -> None:
    unbounded = make_core(Clock())
    capped = make_core(Clock(), max_records=50)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(roll_steps, unbounded, [5000, 0], 60)
        nursery.start_soon(roll_steps, capped, [5000, 0], 60)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert unbounded.max_records == LONG_RUN_MAX_RECORDS
    assert capped.max_records == 50  # a cap chosen by the caller is kept


def test_the_command_line_refuses_a_cap_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        utility_server.main(["--pki", "unused", "--max-records", "0"])
    assert exited.value.code == 2
    assert "--max-records must be at least 1" in capsys.readouterr().err
