"""The utility link's clocks: a wall-clock step, and an absurd server time, change nothing they
must not.

A Pi has no RTC: NTP may step its wall clock by hours at any time. The link schedules on an
injected monotonic clock and keeps the server's time anchored to it, so a step neither freezes
polling nor shifts the events in force, and the server's Time is read again at once. A server
whose Time is absurd (±2^62 s, 1970) is refused: the last good offset stays. End to end over
mutual TLS against the simulator; the server, the wall clock and the monotonic clock are three
fake clocks moved by hand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from dynexport.sep2 import schema
from dynexport.sep2.client import ClientOptions, Sep2Client
from dynexport.sep2.controls import ControlType
from dynexport.sep2.flow import DerInfo
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import T0, FakeClock, utility_config

pytestmark = pytest.mark.skipif(
    not schema.schema_available(), reason="the simulator validates with the CSIP-AUS XSD"
)

LIMIT_W = 1500
DEFAULT_W = 5000
TWO_HOURS = 7200


@dataclass
class Clocks:
    server: FakeClock
    wall: FakeClock
    mono: FakeClock

    def advance(self, seconds: float) -> None:
        """Real time passes: every clock moves."""
        for clock in (self.server, self.wall, self.mono):
            clock.advance(seconds)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks(FakeClock(T0), FakeClock(T0), FakeClock(1000.0))


@pytest.fixture
async def server(pki_dir: Path, clocks: Clocks) -> AsyncIterator[UtilityServer]:
    srv = UtilityServer(pki_dir=pki_dir, clock=clocks.server)
    srv.add_control(start=int(T0) - 10, duration=3 * 3600, export_limit_w=LIMIT_W)
    srv.set_default(export_limit_w=DEFAULT_W)
    async with srv.running():
        yield srv


def make_client(
    srv: UtilityServer,
    clocks: Clocks,
    data_dir: Path,
    clock_synchronised: Callable[[], bool | None] | None = None,
) -> Sep2Client:
    return Sep2Client(
        utility_config(srv),
        data_dir,
        der=DerInfo(rated_w=5000),
        clock=clocks.wall,
        monotonic=clocks.mono,
        options=ClientOptions(http_timeout=5.0, http_retries=0),
        clock_synchronised=clock_synchronised,
    )


def export_limit(client: Sep2Client, local: float) -> float | bool | None:
    """What the app would enforce: it asks with its own wall clock."""
    active = client.active_controls(local)
    return None if active is None else active.value(ControlType.EXPORT_LIMIT_W)


def gets(srv: UtilityServer, path: str) -> int:
    return len([r for r in srv.requests_for(path) if r.method == "GET" and r.path == path])


async def test_a_wall_clock_step_back_keeps_the_event_and_polling_and_rereads_the_time(
    server, clocks, tmp_path
):
    client = make_client(server, clocks, tmp_path)
    await client.step()
    assert export_limit(client, clocks.wall()) == LIMIT_W
    clocks.advance(5)
    clocks.wall.advance(-TWO_HOURS)  # NTP steps the wall clock back two hours
    # at once, before the server is asked: server time rides on the monotonic clock
    assert export_limit(client, clocks.wall()) == LIMIT_W
    assert client.clock_offset == pytest.approx(TWO_HOURS, abs=1)
    tm = gets(server, "/tm")
    await client.step()
    assert gets(server, "/tm") == tm + 1  # the step was noticed: the offset re-measured now
    assert client.state().clock_offset == pytest.approx(TWO_HOURS, abs=1)
    # polling carries on at the pollRate (60 s), not two hours later
    for _ in range(3):
        dcap = gets(server, "/dcap")
        clocks.advance(61)
        await client.step()
        assert gets(server, "/dcap") == dcap + 1
        assert export_limit(client, clocks.wall()) == LIMIT_W
    assert client.state().connected
    await client.http.aclose()


async def test_a_retry_after_is_timed_on_the_monotonic_clock_across_a_wall_step(
    server, clocks, tmp_path
):
    client = make_client(server, clocks, tmp_path)
    await client.step()
    clocks.advance(61)
    server.inject_fault(path_prefix="/dcap", status=429, retry_after="40")
    await client.step()
    assert [r.status for r in server.requests_for("/dcap")][-1] == 429
    asked = gets(server, "/dcap")
    clocks.wall.advance(TWO_HOURS)  # a step forward must not cut the server's Retry-After short
    clocks.advance(30)
    await client.step()
    assert gets(server, "/dcap") == asked
    clocks.advance(31)  # past the first on-schedule poll after the 40 s block
    await client.step()
    assert gets(server, "/dcap") == asked + 1
    assert client.state().connected
    await client.http.aclose()


async def test_response_retries_are_timed_on_the_monotonic_clock(server, clocks, tmp_path):
    server.inject_fault(path_prefix="/rsp", status=500, count=10)
    client = make_client(server, clocks, tmp_path)
    await client.step()  # every response refused: retried after 5 s (monotonic)
    assert server.responses == [] and client.state().pending_responses > 0
    server.clear_faults()
    clocks.wall.advance(-TWO_HOURS)  # a step back must not postpone the retry by two hours
    clocks.advance(6)
    await client.step()
    assert server.responses != [] and client.state().pending_responses == 0
    await client.http.aclose()


@pytest.mark.parametrize(
    "server_offset", [2.0**62, -(2.0**62), -T0], ids=["+2^62", "-2^62", "1970"]
)
async def test_an_absurd_server_time_is_refused_and_the_control_stays_in_force(
    server, clocks, tmp_path, server_offset
):
    client = make_client(server, clocks, tmp_path)
    await client.step()
    assert export_limit(client, clocks.wall()) == LIMIT_W
    server.clock_offset_s = server_offset
    clocks.advance(61)
    await client.step()
    state = client.state()
    assert gets(server, "/tm") == 2  # it was read, and refused
    assert state.clock_offset == 0  # the last good offset
    assert state.clock_alert is not None and "2020" in state.clock_alert
    assert state.last_error == state.clock_alert  # the status shows it
    assert any("refused" in w for w in state.warnings)
    assert export_limit(client, clocks.wall()) == LIMIT_W
    # the server's clock is fixed: the alert clears
    server.clock_offset_s = 30
    clocks.advance(61)
    await client.step()
    assert client.state().clock_alert is None
    assert client.state().clock_offset == 30
    await client.http.aclose()


def unsynchronised() -> bool:
    """The kernel's clock has not been set by a time server since the start."""
    return False


def synchronised() -> bool:
    return True


async def test_after_a_power_cut_the_stored_schedule_is_obeyed_at_its_strictest_until_time_is_known(
    pki_dir, tmp_path
):
    """A Pi has no real-time clock: back from a power cut it starts from its last saved time,
    behind by the cut. Here a 1.5 kW event stored before a 65-minute cut began 35 minutes
    into it; read at the Pi's clock (5 minutes into the cut), the stored schedule said the 5 kW
    default, and with the utility out of reach the site would follow that for the half hour
    the clock lags. Until the server's Time is read (or NTP sets the clock), the link obeys the
    strictest of the stored schedule ahead, decides no event response, and says so."""
    clocks = Clocks(FakeClock(T0), FakeClock(T0), FakeClock(1000.0))
    srv = UtilityServer(pki_dir=pki_dir, clock=clocks.server)
    srv.add_control(start=int(T0) + 1800, duration=3 * 3600, export_limit_w=LIMIT_W)
    srv.set_default(export_limit_w=DEFAULT_W)
    async with srv.running():
        first = make_client(srv, clocks, tmp_path)
        await first.step()  # the schedule is stored, with the event ahead
        assert export_limit(first, clocks.wall()) == DEFAULT_W
        await first.http.aclose()
        answered = len(srv.responses)

        clocks.advance(300)  # the power goes off here, for 65 minutes; the Pi's clock with it
        clocks.server.advance(3900)
        clocks.mono.advance(3900)
        after = make_client(srv, clocks, tmp_path, clock_synchronised=unsynchronised)
        assert not after.state().time_verified
        assert export_limit(after, clocks.wall()) == LIMIT_W  # the event, though the clock says
        assert after.state().active is not None  # it has not begun
        srv.inject_fault(path_prefix="/", status=503, count=50)  # the utility out of reach
        await after.step()
        assert not after.state().connected and not after.state().time_verified
        assert after.state().pending_responses == 0  # nothing decided on a clock not known
        assert export_limit(after, clocks.wall()) == LIMIT_W

        srv.clear_faults()
        clocks.advance(61)
        clocks.mono.advance(60)  # past the walk's retry
        await after.step()  # the server's Time is read: time is known
        state = after.state()
        assert state.connected and state.time_verified
        assert export_limit(after, clocks.wall()) == LIMIT_W  # now as the event in force
        assert state.active is not None
        assert (state.active.origin(ControlType.EXPORT_LIMIT_W) or "").startswith("event")
        started = [r for r in srv.responses[answered:] if r.status == 2]
        assert started and all(
            r.created_date_time is not None and r.created_date_time >= int(T0) + 1800
            for r in started
        )  # answered at the server's time, after the event began
        await after.http.aclose()


async def test_an_offset_stored_against_a_wrong_clock_is_not_trusted_on_a_clock_set_since(
    pki_dir, tmp_path
):
    """A run whose clock was 2 h behind (NTP blocked) read the server's Time and stored a +2 h
    offset. At the next start NTP has set the clock, the utility is out of reach: wall + 2 h
    put the site 2 h ahead, past the end of the 0 W event in force (the 5 kW default obeyed,
    and the event answered "completed" while it ran). An offset that large is not trusted on a
    set clock: the strictest of the schedule ahead is obeyed, nothing is decided, until the
    server's Time is read again."""
    clocks = Clocks(FakeClock(T0), FakeClock(T0 - TWO_HOURS), FakeClock(1000.0))
    srv = UtilityServer(pki_dir=pki_dir, clock=clocks.server)
    srv.add_control(start=int(T0) - 10, duration=3600, export_limit_w=0)
    srv.set_default(export_limit_w=DEFAULT_W)
    async with srv.running():
        first = make_client(srv, clocks, tmp_path)
        await first.step()
        assert first.clock_offset == pytest.approx(TWO_HOURS, abs=1)
        assert export_limit(first, clocks.wall()) == 0
        await first.http.aclose()

        clocks.advance(600)
        clocks.wall.advance(TWO_HOURS)  # NTP has set the clock at the next start
        after = make_client(srv, clocks, tmp_path, clock_synchronised=synchronised)
        assert not after.state().time_verified
        assert export_limit(after, clocks.wall()) == 0
        srv.inject_fault(path_prefix="/", status=503, count=50)
        await after.step()
        assert after.state().pending_responses == 0
        assert not [r for r in srv.responses if r.status == 3]  # never "completed" early

        srv.clear_faults()
        clocks.advance(61)
        await after.step()
        assert after.state().time_verified
        assert after.clock_offset == pytest.approx(0, abs=1)
        assert export_limit(after, clocks.wall()) == 0
        assert not [r for r in srv.responses if r.status == 3]
        await after.http.aclose()
