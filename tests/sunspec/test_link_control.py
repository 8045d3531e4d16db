"""Inverter links against the simulated plant on trio's mock clock: disconnect for real (123
Conn with its revert timer) or by a 0 % limit, invalid scale factors, faults inside a link."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from dynexport.modbus.client import Backoff
from dynexport.sim import profiles
from dynexport.sim.sunspec_device import Inverter, Site
from dynexport.sunspec.control import LimitCommand, NotControllableError
from dynexport.sunspec.decode import Value
from dynexport.sunspec.device import FastReading, LimitResult, SlowReading, SunSpecDevice
from dynexport.sunspec.discovery import DEFAULT_BASES, SunSpecMap
from dynexport.sunspec.links import (
    DEVICE_ERRORS,
    Desired,
    InverterLink,
    InverterState,
    LinkFault,
    MeterLink,
)
from tests.sunspec.sitebus import SiteBus

REVERT_S = 30


async def settle(seconds: float = 3.0) -> None:
    """Lets the link work for ``seconds`` of mock time (the clock jumps while all wait)."""
    await trio.sleep(seconds)


@asynccontextmanager
async def running(link: InverterLink | MeterLink) -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        yield nursery
        nursery.cancel_scope.cancel()


def inverter_link(site: Site, unit: int = 1, **kwargs: object) -> InverterLink:
    return InverterLink(
        "inverter 1",
        SiteBus(site),
        unit,
        revert_s=REVERT_S,
        fast_s=1.0,
        backoff=Backoff(initial=0.5, maximum=2.0),
        **kwargs,  # type: ignore[arg-type]
    )


async def disconnect(link: InverterLink) -> None:
    """The controller asks for a disconnect, and the link has time to carry it out."""
    link.command(Desired(pct=0.0, connect=False))
    await settle()


@asynccontextmanager
async def disconnected(site: Site) -> AsyncIterator[InverterLink]:
    """A link to unit 1 running, settled, then told to disconnect; the controller (the link)
    is gone when the block ends."""
    link = inverter_link(site)
    async with running(link):
        await settle()
        await disconnect(link)
        yield link


def state(link: InverterLink) -> InverterState:
    """The link's current snapshot (a call, so type narrowing does not outlive an await)."""
    return link.state


def inverter(site: Site, unit: int = 1) -> Inverter:
    return site.inverters[unit]


# -- 4. disconnect for real ---------------------------------------------------------------------


async def test_disconnect_opens_the_inverter_through_conn_and_reconnect_closes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = profiles.fronius_gateway(tau_s=0.5)
    link = inverter_link(site)
    async with running(link):
        await settle()
        assert state(link).can_disconnect is True
        assert state(link).connected is True

        await disconnect(link)
        assert site.get(1, 123, "Conn") == 0
        assert site.get(1, 123, "Conn_RvrtTms") == REVERT_S
        assert site.get(1, 123, "WMaxLim_Ena") == 1 and site.get(1, 123, "WMaxLimPct") == 0
        assert site.output_w(1) == 0.0
        assert state(link).connected is False  # read back from 122 ECPConn
        assert state(link).disconnect_method == "conn"

        # Rewritten before Conn_RvrtTms expires: still open ten revert periods later.
        await settle(10 * REVERT_S)
        assert site.get(1, 123, "Conn") == 0
        assert state(link).connected is False

        link.command(Desired(pct=None, connect=True))
        await settle()
        assert site.get(1, 123, "Conn") == 1
        assert state(link).connected is True
        assert state(link).disconnect_method is None
        await settle(10)
        assert site.output_w(1) == pytest.approx(4000.0, rel=1e-3)


async def test_an_inverter_left_open_by_a_dead_controller_reconnects_by_its_revert_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = profiles.fronius_gateway(tau_s=0.5)
    async with disconnected(site):
        assert site.get(1, 123, "Conn") == 0
    # The controller is gone: nothing rewrites Conn.
    await trio.sleep(REVERT_S + 1)
    site.step(trio.current_time())
    assert site.get(1, 123, "Conn") == 1
    assert site.get(1, 122, "ECPConn") == 1


async def test_a_later_run_closes_an_inverter_an_earlier_run_left_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = profiles.fronius_gateway(tau_s=0.5)
    dev = site.devices[1]
    site.write(1, dev.point_address(123, "Conn_WinTms"), [0, 3600, 0], 0.0)  # open for an hour
    link = inverter_link(site)
    async with running(link):
        link.command(Desired(pct=None, connect=True))
        await settle()
        assert site.get(1, 123, "Conn") == 1
        assert state(link).connected is True


async def test_der_2018_inverter_without_connect_control_is_disconnected_by_a_zero_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Model 704 and no 703/123: a disconnect must neither raise nor skip the 0 % limit."""
    site = Site({1: profiles.der_inverter(available_w=5000.0, tau_s=0.5, enter_service=False)})
    link = inverter_link(site)
    async with running(link):
        await settle()
        assert state(link).controllable is True
        assert state(link).can_disconnect is False
        await link.write(Desired(pct=0.0, connect=False))  # the app's fail-safe path: no raise
        link.command(Desired(pct=0.0, connect=False))
        await settle(3 * REVERT_S)
        assert site.get(1, 704, "WMaxLimPctEna") == 1
        assert site.get(1, 704, "WMaxLimPct") == 0
        assert state(link).disconnect_method == "limit"
        assert state(link).connected is True  # 701 ConnSt: still on the grid, at 0 W
        assert site.output_w(1) == pytest.approx(0.0, abs=1.0)
        assert state(link).online


async def test_enter_service_is_never_used_to_disconnect_as_it_has_no_revert_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = profiles.der2018_inverter(tau_s=0.5)
    async with disconnected(site) as link:
        assert site.get(1, 703, "ES") == 1
        assert state(link).disconnect_method == "limit"
        assert site.get(1, 704, "WMaxLimPct") == 0


def refuse_conn_writes(inv: Inverter) -> None:
    """Conn and its timers stay implemented (readable) but every write is refused."""
    for path in ("Conn", "Conn_WinTms", "Conn_RvrtTms"):
        slot = inv._by_path[(123, path)]
        inv._by_path[(123, path)] = type(slot)(**{**slot.__dict__, "writable": False})
        for reg in range(slot.address, slot.address + slot.length):
            inv._slots[reg] = inv._by_path[(123, path)]


async def test_an_inverter_refusing_conn_falls_back_to_a_zero_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = profiles.fronius_gateway(tau_s=0.5)
    refuse_conn_writes(inverter(site))
    link = inverter_link(site)
    async with running(link):
        await settle()
        assert state(link).can_disconnect is True
        await disconnect(link)
        assert state(link).disconnect_method == "limit"
        assert state(link).can_disconnect is False
        assert site.get(1, 123, "WMaxLimPct") == 0 and site.get(1, 123, "WMaxLim_Ena") == 1
        assert state(link).online


async def test_an_inverter_refusing_to_close_keeps_its_limit_written_and_stays_online(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = profiles.fronius_gateway(tau_s=0.5)
    dev = site.devices[1]
    site.write(1, dev.point_address(123, "Conn_WinTms"), [0, 3600, 0], 0.0)  # opened by hand
    refuse_conn_writes(inverter(site))
    link = inverter_link(site)
    async with running(link):
        link.command(Desired(pct=40.0))
        await settle(3 * REVERT_S)
        assert state(link).online and state(link).error is None
        assert site.get(1, 123, "WMaxLimPct") == pytest.approx(40.0)
        assert site.get(1, 123, "WMaxLim_Ena") == 1
        assert state(link).connected is False  # the truth, as the inverter reports it
        assert state(link).can_disconnect is False


# -- 1. rounding down, end to end ---------------------------------------------------------------


async def test_a_limit_is_written_rounded_down_and_verifies(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = profiles.fronius_gateway(tau_s=0.5)
    inv = inverter(site)
    inv.set(123, "WMaxLimPct_SF", 0)
    inv.set(123, "WMaxLimPct", 100)
    link = inverter_link(site)
    async with running(link):
        link.command(Desired(pct=2.6))
        await settle(10)
        assert site.get(1, 123, "WMaxLimPct") == 2
        assert state(link).limit_pct == 2.0
        assert state(link).commanded_pct == 2.0
        assert state(link).error is None
        assert site.output_w(1) <= 5000 * 0.026


# -- 3. invalid scale factors ------------------------------------------------------------------


@pytest.mark.parametrize("sf", [400, -400])
async def test_invalid_limit_scale_factor_makes_the_inverter_not_controllable(
    autojump_clock: trio.testing.MockClock, sf: int
) -> None:
    site = profiles.fronius_gateway(tau_s=0.5)
    inverter(site).set(123, "WMaxLimPct_SF", sf)
    link = inverter_link(site)
    async with running(link):
        link.command(Desired(pct=50.0))
        await settle(10)
        assert state(link).controllable is False
        assert state(link).not_controllable == (
            f"not controllable: invalid scale factor (WMaxLimPct_SF={sf})"
        )
        assert state(link).online and state(link).power_w is not None
        assert site.get(1, 123, "WMaxLim_Ena") == 0  # nothing written
        with pytest.raises(NotControllableError, match="invalid scale factor"):
            await link.write(Desired(pct=50.0))  # the shutdown's fail-safe: a declared error
        # The device is repaired: the next slow poll makes it controllable again.
        inverter(site).set(123, "WMaxLimPct_SF", -2)
        await settle(400)
        assert state(link).controllable is True
        assert site.get(1, 123, "WMaxLim_Ena") == 1


# -- 7. faults inside a link --------------------------------------------------------------------


class FaultyDevice(SunSpecDevice):
    """A real device whose ``method`` raises ``exc`` for its first ``times`` calls."""

    def __init__(self, base: SunSpecDevice, method: str, exc: Exception, times: int) -> None:
        super().__init__(base.bus, base.unit)
        self._map, self._fast, self._slow = base._map, base._fast, base._slow
        self.common = base.common
        self.method = method
        self.exc = exc
        self.left = times

    def _maybe_fail(self, name: str) -> None:
        if name == self.method and self.left > 0:
            self.left -= 1
            raise self.exc

    async def discover(self, bases: Sequence[int] = DEFAULT_BASES) -> SunSpecMap:
        self._maybe_fail("discover")
        return await super().discover(bases)

    async def poll_fast(self) -> FastReading:
        self._maybe_fail("poll_fast")
        return await super().poll_fast()

    async def poll_slow(self) -> SlowReading:
        self._maybe_fail("poll_slow")
        return await super().poll_slow()

    async def set_limit(self, cmd: LimitCommand) -> LimitResult:
        self._maybe_fail("set_limit")
        return await super().set_limit(cmd)

    async def set_connected(self, connect: bool, *, revert_s: int = 60) -> dict[str, Value]:
        self._maybe_fail("set_connected")
        return await super().set_connected(connect, revert_s=revert_s)


FAULTS: list[Callable[[], Exception]] = [
    lambda: ZeroDivisionError("float division by zero"),
    lambda: OverflowError("(34, 'Numerical result out of range')"),
    lambda: KeyError("WMaxLimPct"),
    lambda: RuntimeError("boom"),
    lambda: AssertionError(),
    lambda: AttributeError("'NoneType' object has no attribute 'points'"),
    lambda: TypeError("unsupported operand"),
]


@pytest.mark.parametrize("method", ["discover", "poll_fast", "poll_slow", "set_limit"])
@pytest.mark.parametrize("make_exc", FAULTS)
async def test_an_unexpected_exception_is_logged_reported_and_retried_never_fatal(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    method: str,
    make_exc: Callable[[], Exception],
) -> None:
    site = profiles.fronius_gateway(tau_s=0.5)
    link = inverter_link(site)
    exc = make_exc()
    link.device = FaultyDevice(link.device, method, exc, times=3)
    seen: list[tuple[bool, str | None]] = []
    link._on_update = lambda: seen.append((link.state.online, link.state.error))
    caplog.set_level(logging.ERROR, logger="dynexport.sunspec")
    async with running(link):
        link.command(Desired(pct=40.0))
        await settle(120)
        # The task survived and recovered: online, limit written.
        assert state(link).online and state(link).controllable is True
        assert site.get(1, 123, "WMaxLimPct") == pytest.approx(40.0)
    name = type(exc).__name__
    assert (False, f"internal error: {name}: {exc}") in seen
    records = [r for r in caplog.records if f"internal error: {name}" in r.getMessage()]
    assert records and records[0].exc_info is not None  # the traceback is in the log


@pytest.mark.parametrize("make_exc", FAULTS)
async def test_write_raises_only_declared_device_errors(
    autojump_clock: trio.testing.MockClock, make_exc: Callable[[], Exception]
) -> None:
    site = profiles.fronius_gateway(tau_s=0.5)
    link = inverter_link(site)
    async with running(link):
        await settle()
        link.device = FaultyDevice(link.device, "set_limit", make_exc(), times=1)
        with pytest.raises(DEVICE_ERRORS) as err:
            await link.write(Desired(pct=10.0))
        assert isinstance(err.value, LinkFault)
        assert state(link).controllable is False
        assert (state(link).not_controllable or "").startswith("internal error")
        await settle(120)
        assert state(link).controllable is True  # rediscovered after the fault


async def test_write_before_discovery_is_a_declared_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = inverter_link(profiles.fronius_gateway())
    with pytest.raises(NotControllableError, match="not discovered yet"):
        await link.write(Desired(pct=0.0, connect=False))


async def test_meter_link_survives_unexpected_exceptions(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    site = profiles.fronius_gateway(tau_s=0.5)
    meter = MeterLink("meter", SiteBus(site), 240, backoff=Backoff(initial=0.5, maximum=2.0))
    meter.device = FaultyDevice(meter.device, "poll_fast", ZeroDivisionError("x"), times=5)
    errors: list[str | None] = []
    meter._on_update = lambda: errors.append(meter.state.error)
    async with running(meter):
        await settle(60)
        assert meter.state.online and meter.state.site_w is not None
    assert "internal error: ZeroDivisionError: x" in errors
