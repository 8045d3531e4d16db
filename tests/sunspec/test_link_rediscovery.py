"""A link discovers its device again when what it found no longer holds (docs/sunspec.md,
"Discovery"), against the simulated devices behind a real pymodbus server on 127.0.0.1.

Without this, a map read once was kept until the service restarted: after a firmware update
that moved a model, the limit was never written again while the fast poll read values from the
wrong registers and called the inverter online; one "busy" answer while the model chain was
walked, or a device still booting, left an inverter "not controllable" or a meter "the wrong
device" for good.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynexport.sim.profiles import sunspec_inverter, sunspec_meter
from dynexport.sim.sunspec_device import ModbusError, Site
from dynexport.sunspec.links import Desired
from tests.sunspec.running import running_link, wait_until


def first_header_after_common(site: Site, unit: int) -> int:
    """The register of the model header that follows the common model (1)."""
    device = site.devices[unit]
    base = device.base
    common_length = device.read(base + 3, 1)[0]
    return base + 2 + 2 + common_length


class BusyOnce(Site):
    """A site whose device answers "server device busy" (6) at each of ``busy``, until it has
    answered so ``busy_times`` times."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.busy: set[tuple[int, int]] = set()
        self.busy_times = 1
        self.answered_busy = 0

    def read(self, unit: int, address: int, count: int) -> list[int]:
        if (unit, address) in self.busy:
            self.answered_busy += 1
            if self.answered_busy >= self.busy_times:
                self.busy.discard((unit, address))
            raise ModbusError(6, "server device busy")
        return super().read(unit, address, count)


async def test_a_firmware_update_that_moves_the_models_is_discovered_again_and_limited():
    site = Site({1: sunspec_inverter(available_w=4000.0, mppt=False, tau_s=0.1)})
    async with running_link(site) as link:
        link.command(Desired(pct=30.0))
        await wait_until(lambda: link.state.limit_pct == 30.0)
        before = link.state.info.models

        # The inverter reboots into new firmware: its settings and controls now come
        # before its measurements, and an MPPT model was added; the limit it had is gone.
        site.devices[1] = sunspec_inverter(
            available_w=4000.0, mppt=True, order="controls first", tau_s=0.1
        )
        assert site.get(1, 123, "WMaxLim_Ena") == 0
        await wait_until(lambda: link.state.info.models != before)
        assert 160 in link.state.info.models
        await wait_until(lambda: site.get(1, 123, "WMaxLim_Ena") == 1)
        assert site.get(1, 123, "WMaxLimPct") == 30.0
        await wait_until(lambda: link.state.online and link.state.limit_pct == 30.0)
        await wait_until(lambda: (link.state.power_w or 1e9) <= 1500 * 1.02)


async def test_busy_answers_while_the_model_chain_is_walked_do_not_cut_the_map_short():
    """Three "busy" answers in a row at one header (a second or two of a device starting):
    asked again, not taken for the end of the chain."""
    site = BusyOnce({1: sunspec_inverter(available_w=4000.0, tau_s=0.1)})
    site.busy_times = 3
    site.busy.add((1, first_header_after_common(site, 1)))
    async with running_link(site) as link:
        link.command(Desired(pct=20.0))
        await wait_until(lambda: site.get(1, 123, "WMaxLim_Ena") == 1)
        assert site.answered_busy == 3
        assert link.state.controllable is True
        assert 123 in link.state.info.models


async def test_an_inverter_found_without_control_is_looked_at_again_and_limited_once_it_has_it():
    """A device still booting showed no model 123 (or the installer turned Modbus control on
    after the appliance started): it is discovered again every ``rediscover_s``."""
    site = Site({1: sunspec_inverter(available_w=4000.0, control=False, tau_s=0.1)})
    async with running_link(site) as link:
        link.rediscover_s = 1.0
        link.command(Desired(pct=25.0))
        await wait_until(lambda: link.state.controllable is False)
        site.devices[1] = sunspec_inverter(available_w=4000.0, tau_s=0.1)
        await wait_until(lambda: site.get(1, 123, "WMaxLim_Ena") == 1)
        assert link.state.controllable is True
        assert site.get(1, 123, "WMaxLimPct") == 25.0


async def test_a_meter_unit_that_answered_as_another_device_is_looked_at_again():
    site = Site({240: sunspec_inverter(unit=240, tau_s=0.1)}, load_w=2500.0)
    async with running_link(site, 240, meter=True) as meter:
        meter.rediscover_s = 1.0
        await wait_until(lambda: "has no SunSpec meter model" in (meter.state.error or ""))
        assert meter.state.online is False
        site.devices[240] = sunspec_meter()
        await wait_until(lambda: meter.state.online and meter.state.site_w is not None)
        assert meter.state.error is None


class Booting(Site):
    """While ``booting``, every register from ``cut`` on reads zeros (an inverter starting up
    shows its common model before the rest)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.booting = False
        self.cut = 0

    def read(self, unit: int, address: int, count: int) -> list[int]:
        regs = super().read(unit, address, count)
        if self.booting:
            return [0 if address + i >= self.cut else r for i, r in enumerate(regs)]
        return regs


async def test_an_inverter_reading_zeros_while_it_reboots_is_limited_again_once_it_is_up():
    """Zeros where a model was are a device starting, not a new map: rediscovered then, its
    chain ended at the first zero header, and it stayed "not controllable" (no limit) until
    the next rediscovery."""
    site = Booting({1: sunspec_inverter(available_w=4000.0, mppt=False, tau_s=0.1)})
    site.cut = first_header_after_common(site, 1)
    async with running_link(site) as link:
        link.command(Desired(pct=30.0))
        await wait_until(lambda: link.state.limit_pct == 30.0)
        site.devices[1] = sunspec_inverter(available_w=4000.0, mppt=False, tau_s=0.1)
        site.booting = True  # it reboots (its limit gone), the rest of its map reading zeros
        await wait_until(lambda: "not ready" in (link.state.error or ""))
        site.booting = False
        await wait_until(lambda: site.get(1, 123, "WMaxLim_Ena") == 1)
        assert site.get(1, 123, "WMaxLimPct") == 30.0
        assert link.state.controllable is True


class NoEndMarker(Site):
    """Its device answers "server device failure" (4) to any read from ``end`` on, where its
    chain's end marker would be."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.end = 1 << 16

    def read(self, unit: int, address: int, count: int) -> list[int]:
        if address >= self.end:
            raise ModbusError(4, "server device failure")
        return super().read(unit, address, count)


async def test_a_device_answering_device_failure_past_its_last_model_is_still_discovered():
    site = NoEndMarker({1: sunspec_inverter(available_w=4000.0, tau_s=0.1)})
    device = site.devices[1]
    at = device.base + 2
    while device.read(at, 1)[0] != 0xFFFF:
        at += 2 + device.read(at + 1, 1)[0]
    site.end = at
    async with running_link(site) as link:
        link.command(Desired(pct=30.0))
        # its discovery asks the last read again ten times, a second apart, before it ends
        await wait_until(lambda: site.get(1, 123, "WMaxLim_Ena") == 1, within=90.0)
        assert link.state.controllable is True


class MovedAway(Site):
    """Once ``moved``, its device's old map reads zeros and the map answers at ``base`` (a
    firmware update that moved SunSpec's base address, leaving zeros behind)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.moved: Site | None = None

    def read(self, unit: int, address: int, count: int) -> list[int]:
        if self.moved is None:
            return super().read(unit, address, count)
        new = self.moved.devices[unit]
        if address >= new.base:
            return self.moved.read(unit, address, count)
        return [0] * count

    def write(self, unit: int, address: int, values: Sequence[int], now: float) -> None:
        if self.moved is None:
            super().write(unit, address, values, now)
        else:
            self.moved.write(unit, address, values, now)


async def test_zeros_that_last_where_a_moved_map_was_lead_to_a_new_discovery():
    """Zeros for a moment are a device starting; zeros that last may be where a moved map left
    nothing: polled at its old addresses for ever, the inverter was never limited again."""
    site = MovedAway({1: sunspec_inverter(available_w=4000.0, tau_s=0.1)})
    async with running_link(site) as link:
        link.not_ready_rediscover_s = 1.0
        link.command(Desired(pct=30.0))
        await wait_until(lambda: link.state.limit_pct == 30.0)
        moved = Site({1: sunspec_inverter(available_w=4000.0, base=50000, tau_s=0.1)})
        site.moved = moved
        await wait_until(lambda: moved.get(1, 123, "WMaxLim_Ena") == 1)
        assert moved.get(1, 123, "WMaxLimPct") == 30.0
        assert link.state.controllable is True
