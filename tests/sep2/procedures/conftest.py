"""Shared fixtures for the official CSIP-AUS client test procedures, run against our simulator.

The procedures (PyPI ``cactus-test-definitions``, ``client/procedures/*.yaml``) are read straight
out of the wheel in ``$DYNEXPORT_WHEELS`` (default ``<repo>/build/wheels``); a test whose
procedure cannot be read is skipped with the reason. Each test names the procedure's steps it
mirrors, and `procedure()` fails if one of them is not in the YAML any more, so a changed
procedure is noticed.

Harness checks: every simulator made here (`new_server`, the ``server`` fixture) expects the
client's mRIDs to end in `PEN`, and after each test the simulator must have recorded no
``violations`` (mRID/PEN, minute-aligned readings, poll timing, response sequences, XSD: see
`dynexport.sim.utility_core`) except those the test provokes on purpose and names with
`allow_violations`, as the official harness grades a run beyond the procedure's steps.

Time: the client and the simulator share a fake wall clock (`FakeClock`) that `Harness.run_for`
moves from one client wake-up to the next, as `Sep2Client.run` would sleep, so the procedures'
minutes take milliseconds. Path mapping: the harness serves programs under ``/edev/1/derp/N``
and responses at ``/edev/1/rsps/...``; our simulator serves them at ``/derp/N`` and ``/rsp``.
"""

from __future__ import annotations

import itertools
import os
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dynexport.sep2 import schema
from dynexport.sep2.client import ClientOptions, Sep2Client
from dynexport.sep2.controls import ControlType, doe_modes_supported, enforced_controls
from dynexport.sep2.flow import DerInfo
from dynexport.sep2.resources import MirrorUsagePoint
from dynexport.sep2.telemetry import Sample
from dynexport.sim.utility_core import CHECKS, Violation
from dynexport.sim.utility_server import RecordedRequest, UtilityServer
from tests.sep2.fakes import T0, FakeClock, utility_config

PEN = 46273
"""The Private Enterprise Number the client is configured with and the simulator expects (as
the harness is given the PEN under test); any value up to 99,999,999 works."""
RATED_W = 5000.0
MAX_EXPORT_W = RATED_W
"""The harness's $(maxExportW): the DER's rtgMaxW as reported in DERCapability."""
PROCEDURES = "cactus_test_definitions/client/procedures/"
WHEEL = "cactus_test_definitions-*.whl"

REPO = Path(__file__).resolve().parents[3]


def wheels_dir() -> Path:
    return Path(os.environ.get("DYNEXPORT_WHEELS") or REPO / "build" / "wheels")


def _wheel() -> Path | None:
    found = sorted(wheels_dir().glob(WHEEL))
    return found[-1] if found else None


def procedure(pid: str, *steps: str) -> str:
    """The YAML text of procedure ``pid``; skips when the wheel is absent, fails when one of
    ``steps`` (the step names the test mirrors) is no longer in it."""
    wheel = _wheel()
    if wheel is None:
        pytest.skip(
            f"the official procedures are not here: no {WHEEL} in {wheels_dir()} "
            "(run `make` to download it, or set DYNEXPORT_WHEELS)"
        )
    with zipfile.ZipFile(wheel) as zf:
        try:
            text = zf.read(f"{PROCEDURES}{pid}.yaml").decode()
        except KeyError:
            pytest.fail(f"{wheel.name} has no procedure {pid}")
    missing = [s for s in steps if f"{s}:" not in text]
    assert not missing, f"{pid} no longer has the steps {missing}: update this test"
    return text


needs_schema = pytest.mark.skipif(
    not schema.schema_available(), reason="the simulator validates with the CSIP-AUS XSD"
)
"""Every module's ``pytestmark``: the simulator validates request bodies with the XSD."""


def set_comms_rate(srv: UtilityServer, seconds: int = 60) -> None:
    """The harness's set-comms-rate as every procedure starts: 60 s everywhere."""
    srv.poll_rate_s = seconds
    srv.post_rate_s = seconds
    srv.poll_rates.clear()


def standard_preconditions(srv: UtilityServer) -> None:
    """create-der-program + set-default-der-control(opModImpLimW 0, opModExpLimW 0,
    setGradW 27), the preconditions most procedures share."""
    srv.set_default(export_limit_w=0, import_limit_w=0, set_grad_w=27)


_SERVERS: list[UtilityServer] = []
"""The simulators the running test made (reset per test by `_harness_checks`)."""
_ALLOWED: dict[int, set[str]] = {}


_LISTING = {"envoy": False}
"""How the simulators of the running test list DERControls (`listing`)."""


@pytest.fixture(autouse=True, params=["simulator", "envoy"])
def listing(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every procedure runs twice: against the simulator's own listing (every control stays
    listed) and as envoy, the harness's server, lists (only controls still to end; a new
    control supersedes the overlapping ones of its program: `UtilityCore.envoy_listing`).
    An event envoy dropped at its scheduled end while its randomized tail ran had sent the
    site to its default in ALL-22, and only this second run shows such a thing."""
    _LISTING["envoy"] = request.param == "envoy"
    yield request.param
    _LISTING["envoy"] = False


def new_server(pki_dir: Path, clock: Callable[[], float], **kwargs: Any) -> UtilityServer:
    """A simulator expecting `PEN`, at the 60 s comms rate, listing as the running test's
    `listing` says, whose violations are checked when the test ends."""
    kwargs.setdefault("expected_pen", PEN)
    srv = UtilityServer(pki_dir=pki_dir, clock=clock, **kwargs)
    srv.envoy_listing = _LISTING["envoy"]
    set_comms_rate(srv)
    _SERVERS.append(srv)
    return srv


def allow_violations(srv: UtilityServer, *checks: str) -> None:
    """The test provokes these harness-check breaches on purpose (an outage makes poll misses;
    a 429 storm makes gaps), so they do not fail it. Anything else still does."""
    unknown = set(checks) - set(CHECKS)
    assert not unknown, f"no such checks {unknown}; known: {CHECKS}"
    _ALLOWED.setdefault(id(srv), set()).update(checks)


def unexpected_violations(srv: UtilityServer) -> list[Violation]:
    allowed = _ALLOWED.get(id(srv), set())
    return [v for v in srv.violations if v.check not in allowed]


@pytest.fixture(autouse=True)
def _harness_checks() -> Iterator[None]:
    """Fails the test when a simulator it made saw a breach the harness would fail it for."""
    _SERVERS.clear()
    _ALLOWED.clear()
    yield
    found = [f"{v}" for srv in _SERVERS for v in unexpected_violations(srv)]
    _SERVERS.clear()
    _ALLOWED.clear()
    if found:
        pytest.fail("the harness would fail this run:\n" + "\n".join(found[:20]))


@pytest.fixture
async def server(pki_dir: Path, clock: FakeClock, listing: str) -> AsyncIterator[UtilityServer]:
    srv = new_server(pki_dir, clock)
    async with srv.running():
        yield srv


def make_client(
    srv: UtilityServer,
    clock: Callable[[], float],
    data_dir: Path | None,
    *,
    retries: int = 0,
    der: DerInfo | None = None,
    **config: object,
) -> Sep2Client:
    return Sep2Client(
        utility_config(srv, **{"pen": PEN, **config}),
        data_dir,
        der=der or DerInfo(rated_w=RATED_W),
        clock=clock,
        options=ClientOptions(http_timeout=5.0, http_retries=retries),
    )


def typical_sample(t: float, *, export_w: float = 2500.0) -> Sample:
    """A site exporting ``export_w`` from a DER making 1.2 × that (a small load)."""
    values: dict[tuple[str, str], float | None] = {
        ("site", "W"): -export_w,
        ("site", "var"): 120.0,
        ("site", "V"): 241.0,
        ("der", "W"): export_w * 1.2,
        ("der", "var"): 0.0,
        ("der", "V"): 241.5,
    }
    return Sample(t=t, values=values)


@dataclass
class Harness:
    """A client and the simulator on one fake clock, driven like `Sep2Client.run` would be."""

    server: UtilityServer
    client: Sep2Client
    clock: FakeClock
    sampler: Callable[[float], Sample] | None = None
    """When set, a sample is fed every ``sample_every`` s (the meter side)."""
    sample_every: float = 5.0
    _next_sample: float | None = field(default=None, init=False)

    async def step(self) -> float:
        return await self.client.step()

    async def run_for(self, seconds: float) -> None:
        """Step the client from wake-up to wake-up for ``seconds`` of fake time."""
        end = self.clock.t + seconds
        while True:
            self._feed()
            wake = await self.client.step()
            if self.clock.t >= end:
                return
            target = min(max(wake, self.clock.t + 0.5), end)
            if self.sampler is not None and self._next_sample is not None:
                target = min(target, max(self._next_sample, self.clock.t + 0.5))
            self.clock.t = target

    async def run_to(self, t: float) -> None:
        """Run the client through every wake-up until fake time ``t`` (never a jump over its
        polls: the simulator would rightly count those as missed)."""
        await self.run_for(max(0.0, t - self.clock.t))

    async def run_until(self, condition: Callable[[], bool], limit_s: float, what: str) -> float:
        """Run until ``condition()`` holds; returns the fake seconds it took, fails after
        ``limit_s``."""
        start = self.clock.t
        while not condition():
            if self.clock.t - start > limit_s:
                pytest.fail(f"{what}: not seen within {limit_s} s")
            await self.run_for(1.0)
        return self.clock.t - start

    def _feed(self) -> None:
        if self.sampler is None:
            return
        if self._next_sample is None:
            self._next_sample = self.clock.t
        while self._next_sample <= self.clock.t:
            self.client.add_sample(self.sampler(self._next_sample))
            self._next_sample += self.sample_every

    def value(self, kind: ControlType) -> float | bool | None:
        active = self.client.active_controls()
        return None if active is None else active.value(kind)

    async def close(self) -> None:
        await self.client.http.aclose()


MAX_IMPORT_W = RATED_W
"""The harness's $(maxImportW) for our battery site: its charge rating (rtgMaxChargeRateW)."""
CAPACITY_WH = 10_000.0
BATTERY_DER = DerInfo(
    rated_w=RATED_W,
    der_type=83,  # PV and storage
    rated_charge_w=MAX_IMPORT_W,
    rated_discharge_w=MAX_IMPORT_W,
    rated_wh=CAPACITY_WH,
    state_of_charge_pct=50.0,
    storage_mode=2,
    enforced=enforced_controls(True),
    doe_modes_supported=doe_modes_supported(enforced_controls(True)),
)
"""What the app reports with a 10 kWh, 5 kW battery configured (App._storage_der_fields): import
and load limits are enforced and advertised."""


def battery_sample(t: float, *, soc_pct: float = 50.0) -> Sample:
    """`typical_sample` plus the battery's stored energy (SoC × capacity), as App.sample adds."""
    values: dict[tuple[str, ...], float | None] = {
        tuple(k): v for k, v in typical_sample(t).values.items()
    }
    values[("der", "Wh")] = soc_pct / 100.0 * CAPACITY_WH
    return Sample(t=t, values=values)


@pytest.fixture
async def battery_link(
    server: UtilityServer, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Harness]:
    """`link` for a site with a battery (`BATTERY_DER`), its stored energy sampled."""
    standard_preconditions(server)
    client = make_client(server, clock, tmp_path, der=BATTERY_DER)
    harness = Harness(server, client, clock, sampler=battery_sample)
    try:
        yield harness
    finally:
        await harness.close()


@pytest.fixture
async def link(server: UtilityServer, clock: FakeClock, tmp_path: Path) -> AsyncIterator[Harness]:
    """A registered client (PIN 111115, NMI 4312345678, rated 5 kW) on the standard server."""
    standard_preconditions(server)
    harness = Harness(server, make_client(server, clock, tmp_path), clock)
    try:
        yield harness
    finally:
        await harness.close()


# --- one limit type through a procedure (GEN-*, LOA-*) -----------------------------------------

LIMIT_FIELDS = {
    ControlType.EXPORT_LIMIT_W: "export_limit_w",
    ControlType.GENERATION_LIMIT_W: "generation_limit_w",
    ControlType.IMPORT_LIMIT_W: "import_limit_w",
    ControlType.LOAD_LIMIT_W: "load_limit_w",
}
"""The simulator's keyword for each limit the GEN and LOA procedures set."""


def now(link: Harness) -> int:
    """The fake time in the whole seconds the simulator schedules controls in."""
    return int(link.clock.t)


def limit(kind: ControlType, watts: float) -> dict[str, float]:
    """``kind`` at ``watts``, as keywords for `UtilityServer.set_default`."""
    return {LIMIT_FIELDS[kind]: watts}


def add_limit(
    srv: UtilityServer, kind: ControlType, watts: float, *, start: int, duration: int
) -> str:
    """A DERControl setting only ``kind`` to ``watts``; returns its mRID."""
    return srv.add_control(start=start, duration=duration, **limit(kind, watts))  # type: ignore[arg-type]


async def drops_to_zero_within_a_poll(link: Harness, kind: ControlType, rating: float) -> None:
    """GEN-01/02 and LOA-01/02 once their default is set: a 2 × ``rating`` control is in force
    (GET-DERC-INITIAL, WAIT-CONTROL), a 0 W one added as the next DERProgramList poll arrives is
    in force right after it (GET-DERC-ZERO) and stays (WAIT-REACH-ZERO); both answered 1, 2."""
    srv = link.server
    first = add_limit(srv, kind, 2 * rating, start=int(T0), duration=300)
    await link.run_for(60)  # GET-DERC-INITIAL, WAIT-CONTROL
    assert link.value(kind) == 2 * rating
    zero: list[str] = []

    def add_zero() -> None:
        zero.append(add_limit(srv, kind, 0, start=int(srv.now()), duration=300))

    link.clock.advance(1)
    fired = on_request(srv, "GET", "/edev/1/fsa/1/derp", add_zero)  # GET-DERC-ZERO
    await link.run_until(lambda: bool(fired), 61, "GET-DERC-ZERO")
    await link.run_for(1)
    assert link.value(kind) == 0, "the 0 W control is not in force right after the poll"
    await link.run_for(120)  # WAIT-REACH-ZERO
    assert link.value(kind) == 0
    assert statuses(srv, first)[:2] == [1, 2] and statuses(srv, zero[0])[:2] == [1, 2]


async def default_after_cancel_and_after_end(
    link: Harness,
    kind: ControlType,
    rating: float,
    others: dict[str, float],
    *,
    clear_default: bool,
) -> None:
    """GEN-03/04 and LOA-03/04, with ``others`` the other limits' defaults: a 2 × ``rating``
    control cancelled → the default 30 % at setGradW 167 (1/2/6); a new control, and at its end
    the default again (1/2/3); then a 0 W control (GET-DERC-3) in force, with ``clear_default``
    the default removed as it comes (GEN: set-default-der-control cancelled)."""
    srv = link.server
    srv.set_default(**others, set_grad_w=167)  # type: ignore[arg-type]
    ctl = add_limit(srv, kind, 2 * rating, start=int(T0), duration=900)
    await link.run_for(1)
    assert link.value(kind) == 2 * rating
    srv.set_default(**(others | limit(kind, 0.3 * rating)), set_grad_w=167)  # type: ignore[arg-type]
    await link.run_for(60)  # GET-DEFAULT-DERC, then GET-DERC-1
    srv.cancel_control(ctl)
    await link.run_until(lambda: link.value(kind) == 0.3 * rating, 61, "default 30 %")
    active = link.client.active_controls()
    assert active is not None and active.set_grad_w == 167  # ramp at setGradW
    assert statuses(srv, ctl) == [1, 2, 6]
    await link.run_for(120)  # WAIT-RAMP-DEFAULT-DERC
    second = add_limit(srv, kind, 2 * rating, start=now(link), duration=600)
    await link.run_until(lambda: link.value(kind) == 2 * rating, 61, "GET-DERC-2")
    await link.run_for(600)  # WAIT-CONTROL-END
    assert link.value(kind) == 0.3 * rating, "not back to the default after the control"
    assert statuses(srv, second) == [1, 2, 3]
    add_limit(srv, kind, 0, start=now(link), duration=600)
    if clear_default:
        srv.clear_default()  # set-default-der-control cancelled
    await link.run_until(lambda: link.value(kind) == 0, 61, "GET-DERC-3: 0 W control")


async def cancelled_on_the_next_derc_poll(
    link: Harness, kind: ControlType, mrid: str, *, control_w: float, default_w: float
) -> None:
    """GEN-09 and LOA-09 up to GET-DERC: control ``mrid`` (``control_w``) in force, then
    cancelled as the DERControlList poll arrives: the default ``default_w`` right after it."""
    srv = link.server
    await link.run_for(120)
    assert link.value(kind) == control_w
    fired = on_request(srv, "GET", "/derp/1/derc", lambda: srv.cancel_control(mrid))
    await link.run_until(lambda: bool(fired), 61, "GET-DERC")
    await link.run_for(1)
    assert link.value(kind) == default_w


async def variable_limits(link: Harness, kind: ControlType, rating: float) -> None:
    """GEN-11/12 and LOA-11/12: five 120 s controls at 200, 100, 40, 25 and 0 % of ``rating``,
    scheduled as GET-DER-CONTROLS arrives: each in force in its window, each answered 1/2/3."""
    srv = link.server
    shares = [2, 1, 0.4, 0.25, 0]
    mrids: list[str] = []

    def schedule() -> None:
        start = int(srv.now())
        for i, share in enumerate(shares):
            mrids.append(add_limit(srv, kind, share * rating, start=start + 120 * i, duration=120))

    fired = on_request(srv, "GET", "/edev/1/fsa/1/derp", schedule)  # GET-DER-CONTROLS
    await link.run_for(1)
    assert fired
    start = fired[0]
    for i, share in enumerate(shares):
        await link.run_to(start + 120 * i + 60)
        assert link.value(kind) == pytest.approx(share * rating), f"DERC{i + 1}"
    await link.run_to(start + 601)
    for i, mrid in enumerate(mrids):
        assert statuses(srv, mrid) == [1, 2, 3], f"DERC{i + 1}"


# --- what the server saw ---------------------------------------------------------------------


def requests(
    srv: UtilityServer, method: str, path: str, *, prefix: bool = False
) -> list[RecordedRequest]:
    """Requests with exactly this path (or under it, with ``prefix``), oldest first."""
    return [
        r
        for r in srv.received
        if r.method == method and (r.path.startswith(path) if prefix else r.path == path)
    ]


def first_time(srv: UtilityServer, method: str, path: str) -> float:
    found = requests(srv, method, path)
    assert found, f"no {method} {path} seen; got {[(r.method, r.path) for r in srv.received]}"
    return found[0].t


def statuses(srv: UtilityServer, mrid: str) -> list[int]:
    return [r.status for r in srv.responses if r.subject == mrid and r.status is not None]


def response_times(srv: UtilityServer, mrid: str) -> dict[int, float]:
    """Status → the server time its POST arrived (first one)."""
    found: dict[int, float] = {}
    for r in requests(srv, "POST", "/rsp"):
        body = r.resource
        subject = getattr(body, "subject", None)
        status = getattr(body, "status", None)
        if subject == mrid and status is not None and 200 <= r.status < 300:
            found.setdefault(int(status), r.t)
    return found


def poll_problems(
    srv: UtilityServer, paths: list[str], interval: float, start: float, end: float
) -> list[str]:
    """The harness's all-polls-at-correct-time, as we read it: every endpoint GET at least once
    per 1.5 × ``interval`` through [start, end], and not more than once per half interval on
    average (no hammering)."""
    problems = []
    for path in paths:
        times = [r.t for r in requests(srv, "GET", path) if start <= r.t <= end]
        if not times:
            problems.append(f"{path}: never polled")
            continue
        edges = [start, *times, end]
        worst = max(b - a for a, b in itertools.pairwise(edges))
        if worst > 1.5 * interval:
            problems.append(f"{path}: a {worst:.0f} s gap (poll interval {interval:.0f} s)")
        if len(times) > 2 * (end - start) / interval + 1:
            problems.append(f"{path}: {len(times)} polls in {end - start:.0f} s")
    return problems


def on_request(
    srv: UtilityServer, method: str, path: str, action: Callable[[], object]
) -> list[float]:
    """Run ``action`` once, just before the first ``method path`` request is answered (the
    harness's "event → actions" with the default serve order); returns a list that gets the
    server time it fired at."""
    fired: list[float] = []

    def hook(m: str, p: str) -> None:
        if not fired and m == method and p == path:
            fired.append(srv.now())
            action()

    srv.on_request.append(hook)
    return fired


def mirrors(srv: UtilityServer) -> dict[int, str]:
    """roleFlags → mRID of the MirrorUsagePoints the client POSTed."""
    found: dict[int, str] = {}
    for r in requests(srv, "POST", "/mup"):
        if isinstance(r.resource, MirrorUsagePoint) and r.resource.role_flags is not None:
            found[r.resource.role_flags] = r.resource.mrid
    return found
