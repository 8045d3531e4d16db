"""Links against the simulated plant on trio's mock clock: a device that loses what was written
(a reset) is written again at once, a reconnect whose Conn write fails is counted at the limit it
cleared, and a map that keeps changing is rediscovered with backoff."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from dynexport.modbus.client import Backoff
from dynexport.modbus.errors import ModbusExceptionResponse, ModbusTimeout
from dynexport.sim import profiles
from dynexport.sim.sunspec_device import Battery, Inverter, Site
from dynexport.sunspec.links import (
    CONN_SETTLE_S,
    BatteryDesired,
    BatteryLink,
    Desired,
    InverterLink,
)
from dynexport.sunspec.storage import StorageConvention
from tests.sunspec.sitebus import SiteBus
from tests.sunspec.test_link_control import running, settle

AGAIN = "writing it again"


def link_to(site: Site, bus: SiteBus | None = None, **kwargs: float) -> InverterLink:
    return InverterLink(
        "inverter 1",
        bus or SiteBus(site),
        1,
        backoff=Backoff(initial=0.5, maximum=2.0),
        **{"fast_s": 1.0, **kwargs},  # type: ignore[arg-type]
    )


def reset(inv: Inverter) -> None:
    """The inverter restarts: its controls are back to their defaults (no limit, no revert
    timer, connected)."""
    inv.step(trio.current_time())
    inv.set(123, "WMaxLim_Ena", 0)
    inv.set(123, "WMaxLimPct", 100.0)
    inv.set(123, "WMaxLimPct_RvrtTms", 0)
    inv.set(123, "Conn", 1)
    inv.set(123, "Conn_RvrtTms", 0)
    inv._limit_timer.deadline = None
    inv._conn_timer.deadline = None


def warnings_of(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


LIMIT_LOST = "inverter 1: the 10 % limit written reads no limit (reset?); writing it again"


def assert_written_again(site: Site, link: InverterLink, model: int, enable: str) -> None:
    """Unit 1's 10 % limit is in force again, and the link reads it so."""
    assert site.get(1, model, enable) == 1
    assert site.get(1, model, "WMaxLimPct") == pytest.approx(10.0)
    assert link.state.limit_pct == pytest.approx(10.0)


# -- a reset seen by a poll is written again at once --------------------------------------------


@pytest.mark.parametrize("model", [123, 704])
async def test_a_limit_a_reset_cleared_is_written_again_within_a_fast_poll(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, model: int
) -> None:
    """revertS 3600: the rewrite is 20 minutes away, and the slow poll (which alone read the
    limit in force) 5 minutes; an inverter back from a reset without its limit made full power
    until then. The fast poll reads the control model's limit (704, else 123) too."""
    if model == 123:
        site, unit, enable = profiles.fronius_gateway(tau_s=0.5), 1, "WMaxLim_Ena"
    else:
        site, unit, enable = profiles.der2018_inverter(tau_s=0.5), 1, "WMaxLimPctEna"
    link = link_to(site, revert_s=3600)
    async with running(link):
        link.command(Desired(pct=10.0))
        await settle(10)
        assert site.get(unit, model, enable) == 1 and not warnings_of(caplog, AGAIN)
        site.inverters[unit].step(trio.current_time())
        site.inverters[unit].set(model, enable, 0)  # the reset: its limit off, the rest kept
        await settle(2)  # a fast poll, not the slow one (300 s)
        assert_written_again(site, link, model, enable)
        await settle(30)
    assert warnings_of(caplog, AGAIN) == [LIMIT_LOST]


async def test_a_limit_the_slow_poll_finds_gone_is_written_again_at_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The same found by the slow poll (fast polls 1000 s apart here): acted on at once too."""
    site = profiles.fronius_gateway(tau_s=0.5)
    link = link_to(site, revert_s=3600, slow_s=5.0, fast_s=1000.0)
    async with running(link):
        link.command(Desired(pct=10.0))
        await settle(10)
        assert site.get(1, 123, "WMaxLim_Ena") == 1 and not warnings_of(caplog, AGAIN)
        reset(site.inverters[1])
        await settle(6)  # one slow poll
        assert_written_again(site, link, 123, "WMaxLim_Ena")
        await settle(30)
    assert warnings_of(caplog, AGAIN) == [LIMIT_LOST]


async def test_a_disconnect_a_reset_closed_is_opened_again_within_a_fast_poll(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    site = profiles.fronius_gateway(tau_s=0.5)
    link = link_to(site, revert_s=60)
    async with running(link):
        link.command(Desired(pct=0.0, connect=False))
        await settle(CONN_SETTLE_S + 2)
        assert site.get(1, 123, "Conn") == 0 and link.state.disconnect_method == "conn"
        reset(site.inverters[1])
        await settle(2)
        assert site.get(1, 123, "Conn") == 0 and site.get(1, 123, "WMaxLim_Ena") == 1
        assert link.state.connected is False
    assert len(warnings_of(caplog, "reports itself connected while a disconnect")) == 1


async def test_a_battery_back_in_its_own_mode_gets_its_setpoint_again_at_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    site = profiles.fronius_battery_site(soc_pct=40.0, window=True)
    bat = site.devices[3]
    assert isinstance(bat, Battery)
    link = BatteryLink(
        "battery", SiteBus(site), 3, revert_s=60, fast_s=1.0,
        convention=StorageConvention.WINDOW, backoff=Backoff(initial=0.5, maximum=2.0),
    )  # fmt: skip
    async with running(link):  # type: ignore[arg-type]
        await settle(5)
        link.command(BatteryDesired(-2000.0))
        await settle(5)
        assert site.get(3, 124, "StorCtl_Mod") == 3
        bat.step(trio.current_time())
        bat.set(124, "StorCtl_Mod", 0)  # a restart: its own mode, no timer
        bat._storctl_timer.deadline = None
        await settle(2)
        assert site.get(3, 124, "StorCtl_Mod") == 3
        assert link.state.setpoint_w == pytest.approx(-2000.0, abs=50.0)
    assert len(warnings_of(caplog, "reads its own mode while a setpoint")) == 1


class ConnedStatus(SiteBus):
    """122 ECPConn reads "connected" for ``lag_s`` after each Conn 0 write (a relay still
    opening; ``math.inf``: an inverter whose status never follows Conn)."""

    def __init__(self, site: Site, lag_s: float) -> None:
        super().__init__(site)
        self.lag_s = lag_s
        self.opened_t = -float("inf")
        self.conn_writes = 0

    async def read_holding_registers(self, unit, address, count, *, timeout=None):  # noqa: ASYNC109
        regs = await super().read_holding_registers(unit, address, count, timeout=timeout)
        at = self.site.devices[unit].point_address(122, "ECPConn")
        if trio.current_time() < self.opened_t + self.lag_s and address <= at < address + count:
            regs = list(regs)
            regs[at - address] |= 1
        return regs

    async def write_registers(
        self,
        unit: int,
        address: int,
        values: Sequence[int],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        await super().write_registers(unit, address, values, timeout=timeout)
        conn = self.written_to(unit, address, values, 123, "Conn")
        if conn is not None:
            self.conn_writes += 1
            if conn == 0:
                self.opened_t = trio.current_time()


async def test_a_relay_still_opening_is_not_taken_for_a_reset(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    site = profiles.fronius_gateway(tau_s=0.5)
    bus = ConnedStatus(site, lag_s=CONN_SETTLE_S - 2)
    link = link_to(site, bus, revert_s=60)
    async with running(link):
        link.command(Desired(pct=0.0, connect=False))
        await settle(CONN_SETTLE_S + 5)
        assert link.state.connected is False
    assert bus.conn_writes == 1 and not warnings_of(caplog, AGAIN)


async def test_an_inverter_that_keeps_contradicting_is_logged_once_not_at_every_rewrite(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Its status never follows Conn: written again at the 1st, 2nd, 4th, 8th... contradicting
    poll (each once CONN_SETTLE_S has passed since Conn opened it), never at every fast poll;
    logged at the 1st and the 30th."""
    site = profiles.fronius_gateway(tau_s=0.5)
    bus = ConnedStatus(site, lag_s=float("inf"))
    link = link_to(site, bus, revert_s=3600)
    async with running(link):
        link.command(Desired(pct=0.0, connect=False))
        await settle(10 * CONN_SETTLE_S)
    assert 3 <= bus.conn_writes <= 8, bus.conn_writes  # not at every fast poll (about 90)
    assert len(warnings_of(caplog, AGAIN)) == 2


# -- a reconnect whose Conn write fails ---------------------------------------------------------


class ConnFails(SiteBus):
    """Once armed, a write to 123 Conn answers "busy" without landing (``lands`` False), or
    lands and its answer is lost, the device then quiet (``lands`` True)."""

    armed = False
    lands = False

    async def read_holding_registers(self, unit, address, count, *, timeout=None):  # noqa: ASYNC109
        if self.down:
            await trio.sleep(1.0)
            raise ModbusTimeout("no answer")
        return await super().read_holding_registers(unit, address, count, timeout=timeout)

    async def write_registers(
        self,
        unit: int,
        address: int,
        values: Sequence[int],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        if self.down:
            await trio.sleep(1.0)
            raise ModbusTimeout("no answer")
        to_conn = self.written_to(unit, address, values, 123, "Conn") is not None
        if self.armed and to_conn and not self.lands:
            raise ModbusExceptionResponse(unit, 16, address, 6)  # busy
        await super().write_registers(unit, address, values, timeout=timeout)
        if self.armed and to_conn:
            self.down = True
            raise ModbusTimeout("the answer was lost")


@pytest.mark.parametrize("lands", [False, True], ids=["busy", "answer lost"])
async def test_a_reconnect_whose_conn_write_fails_is_counted_at_the_limit_it_cleared(
    autojump_clock: trio.testing.MockClock, lands: bool
) -> None:
    site = profiles.fronius_gateway(tau_s=0.5)
    bus = ConnFails(site)
    bus.lands = lands
    link = link_to(site, bus, revert_s=60)
    async with running(link):
        link.command(Desired(pct=0.0, connect=False))
        await settle(10)
        assert link.state.limit_pct == 0.0 and site.get(1, 123, "Conn") == 0
        bus.armed = True
        link.command(Desired(pct=None, connect=True))
        await settle(0.5)
        assert not link.state.online
        assert site.get(1, 123, "WMaxLim_Ena") == 0  # the limit is cleared
        after = link.state  # (a new name: mypy's narrowing outlives the awaits)
        assert after.limit_pct is None and after.commanded_pct is None


class SlowAnswers(SiteBus):
    """Every request takes a second; notes when the limit's enable is written."""

    enabled_t: float | None = None

    async def read_holding_registers(self, unit, address, count, *, timeout=None):  # noqa: ASYNC109
        await trio.sleep(1.0)
        return await super().read_holding_registers(unit, address, count, timeout=timeout)

    async def write_registers(
        self,
        unit: int,
        address: int,
        values: Sequence[int],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        await trio.sleep(1.0)
        ena = self.written_to(unit, address, values, 123, "WMaxLim_Ena")
        if self.enabled_t is None and ena is not None:
            self.enabled_t = trio.current_time()
        await super().write_registers(unit, address, values, timeout=timeout)


async def test_a_limits_revert_time_is_counted_from_before_its_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The inverter's timer starts when the write lands: the law must not count the limit as
    in force after it may have reverted (last_write was taken after the read-back)."""
    site = profiles.fronius_gateway(tau_s=0.5)
    bus = SlowAnswers(site)
    link = link_to(site, bus, revert_s=60)
    async with running(link):
        await settle(20)
        link.command(Desired(pct=10.0))
        await settle(10)
    assert bus.enabled_t is not None and link.state.last_write is not None
    assert link.state.last_write <= bus.enabled_t


# -- a map that keeps changing ------------------------------------------------------------------


class FlappingHeader(SiteBus):
    """Model 103's L reads one more in every read longer than a header: discovery and the
    polls never agree."""

    reads = 0

    async def read_holding_registers(self, unit, address, count, *, timeout=None):  # noqa: ASYNC109
        self.reads += 1
        regs = await super().read_holding_registers(unit, address, count, timeout=timeout)
        at = self.site.devices[unit].point_address(103, "ID")
        if count > 2 and address <= at + 1 < address + count:
            regs = list(regs)
            regs[at + 1 - address] += 1
        return regs


async def test_a_map_that_keeps_changing_is_rediscovered_with_backoff_and_logged_sparingly(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dynexport.sunspec")
    site = profiles.fronius_gateway(tau_s=0.5)
    bus = FlappingHeader(site)
    link = link_to(site, bus, revert_s=60)
    async with running(link):
        await settle(100)
        assert not link.state.online
        assert "the device's SunSpec map changed" in (link.state.error or "")
    # the backoff reaches its 2 s maximum: about 50 discoveries and polls, some 16 reads each
    assert bus.reads < 1200, bus.reads
    logged = warnings_of(caplog, "discovering it again")
    assert 1 <= len(logged) <= 3, len(logged)


class DropsTheLimitAfterEachWrite(SiteBus):
    """Another controller (or a firmware) that disables the limit a few seconds after each
    write lands, counting the limit writes."""

    def __init__(self, site: Site, after_s: float) -> None:
        super().__init__(site)
        self.after_s = after_s
        self.limit_writes = 0
        self.nursery: trio.Nursery | None = None

    async def write_registers(self, unit, address, values, *, timeout=None):  # noqa: ASYNC109
        await super().write_registers(unit, address, values, timeout=timeout)
        if self.written_to(unit, address, values, 123, "WMaxLim_Ena") == 1:
            self.limit_writes += 1
            assert self.nursery is not None
            self.nursery.start_soon(self._drop)

    async def _drop(self) -> None:
        await trio.sleep(self.after_s)
        self.site.inverters[1].set(123, "WMaxLim_Ena", 0)


@pytest.mark.parametrize("after_s", [2.5, 30.0])
async def test_a_limit_dropped_a_while_after_each_write_is_written_again_at_once_warned_sparingly(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, after_s: float
) -> None:
    """A device that holds each limit written, then drops it: written again at the first poll
    that finds it lost, every time (a first fix made the count start afresh only after a
    minute held, and the gaps without a limit doubled up to the 20-minute rewrite: 920 s of
    1200 unlimited at a drop every 30 s). The warning is what backs off: one poll right after
    each rewrite found it held, and it had come every few seconds for ever."""
    site = profiles.fronius_gateway(tau_s=0.5)
    bus = DropsTheLimitAfterEachWrite(site, after_s)
    link = link_to(site, bus, revert_s=3600)
    unlimited = 0

    async def watch() -> None:
        nonlocal unlimited
        while True:
            await trio.sleep(0.5)
            unlimited += site.get(1, 123, "WMaxLim_Ena") != 1

    async with running(link) as nursery:
        bus.nursery = nursery
        link.command(Desired(pct=10.0))
        await settle(10)
        nursery.start_soon(watch)
        await settle(600)
        nursery.cancel_scope.cancel()
    # each drop lifts the limit until the next 1 s poll and its write (1.5 s at most): the
    # doubling gaps had left it off for most of the time (920 s of 1200 at a drop every 30 s)
    assert unlimited * 0.5 <= 600 / after_s * 1.5, unlimited
    assert len(warnings_of(caplog, AGAIN)) <= 600 // 30 + 1  # the first, then every 30th


async def test_a_limit_a_device_drops_at_once_is_written_again_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A device that drops each limit before the next poll (a battery at its reserve, a
    firmware fighting us) is written at the 1st, 2nd, 4th, 8th... poll running that finds it
    lost, not at every 1 s poll (a storm on a shared bus); the scheduled rewrite goes on."""
    site = profiles.fronius_gateway(tau_s=0.5)
    bus = DropsTheLimitAfterEachWrite(site, 0.2)
    link = link_to(site, bus, revert_s=3600)
    async with running(link) as nursery:
        bus.nursery = nursery
        link.command(Desired(pct=10.0))
        await settle(300)
        nursery.cancel_scope.cancel()
    assert bus.limit_writes <= 12, bus.limit_writes


async def test_reach_after_a_discovery_cut_short_still_readies_the_link_for_its_fail_safe(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop came after the map was read but before the common model and the link's own
    checks: the device said it was discovered, reach() returned at once, and the fail-safe
    write failed with "not discovered yet"."""
    from dynexport.sunspec.decode import DecodedModel
    from dynexport.sunspec.device import SunSpecDevice
    from dynexport.sunspec.discovery import ModelHeader

    site = profiles.fronius_gateway(tau_s=0.5)
    link = link_to(site, revert_s=60)
    read_model = SunSpecDevice.read_model
    blocking = True

    async def slow_common(self: SunSpecDevice, header: ModelHeader) -> DecodedModel:
        if blocking and header.id == 1:
            await trio.sleep(10)  # discovery's read of the common model, when the stop comes
        return await read_model(self, header)

    monkeypatch.setattr(SunSpecDevice, "read_model", slow_common)
    with trio.move_on_after(5):
        await link.run()
    assert link.device.discovered and link.state.controllable is None
    blocking = False
    await link.reach()
    await link.write(Desired(pct=20.0))
    assert site.get(1, 123, "WMaxLimPct") == pytest.approx(20.0)
