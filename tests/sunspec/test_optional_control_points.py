"""Inverters whose control model leaves out SunSpec's optional points (a limit's window, ramp and
revert times): the limit is written with what the device implements, read back as in force, and
the missing revert timer is said, not taken for a failed write."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from dynexport.sim import profiles
from dynexport.sunspec.control import LimitCommand
from dynexport.sunspec.device import SunSpecDevice
from dynexport.sunspec.discovery import ModelHeader
from dynexport.sunspec.links import Desired, InverterLink
from dynexport.sunspec.models import model_def
from dynexport.sunspec.storage import StorageCommand, encode_storage
from tests.sunspec.sitebus import SiteBus
from tests.sunspec.test_link_control import inverter_link, running, settle


async def test_a_limit_on_a_123_with_only_mandatory_points_lands_and_reads_back() -> None:
    """It wrote the window, revert and ramp times too: the device refused the write (or ignored
    those registers) and every limit "did not read back", though the limit was in force."""
    site = profiles.mandatory_controls_inverter()
    device = SunSpecDevice(SiteBus(site), 1)
    await device.discover()
    result = await device.set_limit(LimitCommand(pct=30.0, revert_s=60))
    assert result.revert_timer is False
    assert site.get(1, 123, "WMaxLim_Ena") == 1
    assert site.get(1, 123, "WMaxLimPct") == pytest.approx(30.0)
    written = {w.address for w in result.writes}
    header = device.map.find(123)
    assert header is not None
    mdef = model_def(123)
    assert mdef is not None
    for name in ("WMaxLimPct_WinTms", "WMaxLimPct_RvrtTms", "WMaxLimPct_RmpTms"):
        assert header.address + mdef.point(name).offset not in written, name


async def test_a_full_123_still_gets_every_timer_written() -> None:
    site = profiles.fronius_gateway()
    device = SunSpecDevice(SiteBus(site), 1)
    await device.discover()
    result = await device.set_limit(LimitCommand(pct=30.0, revert_s=60))
    assert result.revert_timer is True
    assert site.get(1, 123, "WMaxLimPct_RvrtTms") == 60


async def test_an_inverter_without_a_revert_timer_is_controlled_and_says_so(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The link took it offline for good (a VerifyError at every write) while its limit was in
    force. Now it is online and limited, and the missing timer is logged once and in its state."""
    caplog.set_level(logging.WARNING, "dynexport.sunspec")
    site = profiles.mandatory_controls_inverter(tau_s=0.5)
    link = inverter_link(site)
    async with running(link):
        link.command(Desired(pct=30.0))
        await settle(10)
        state = link.state
        assert state.online and state.controllable and state.error is None
        assert state.limit_pct == pytest.approx(30.0)
        assert state.revert_timer is False
        link.command(Desired(pct=40.0))
        await settle(100)  # the scheduled rewrites too
        assert link.state.limit_pct == pytest.approx(40.0) and link.state.online
    assert site.get(1, 123, "WMaxLimPct") == pytest.approx(40.0)
    logged = [r.getMessage() for r in caplog.records if "no revert timer" in r.getMessage()]
    assert len(logged) == 1


def test_a_battery_command_leaves_out_the_124_timers_the_device_lacks_but_never_its_revert() -> (
    None
):
    """124's InOutWRte_WinTms and _RmpTms are optional: written only where implemented. Its
    revert timer is written (and read back) whatever the device says: a command must expire."""
    header = ModelHeader(124, 40300, 24)
    cmd = StorageCommand(-2000.0, revert_s=60)
    before = {"InOutWRte_WinTms": None, "InOutWRte_RmpTms": None, "InOutWRte_RvrtTms": None}
    _, values = encode_storage(header, cmd, max_charge_w=5000.0, sf=0, before=before)
    assert list(values) == ["InWRte", "OutWRte", "InOutWRte_RvrtTms", "StorCtl_Mod"]
    _, values = encode_storage(header, cmd, max_charge_w=5000.0, sf=0)
    assert "InOutWRte_WinTms" in values and "InOutWRte_RmpTms" in values


async def test_a_revert_timer_read_not_implemented_once_is_written_when_it_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The inverter read its revert timer as 0xFFFF while it booted: the limit went without it,
    and nothing wrote it again before the scheduled rewrite, 20 minutes later at revertS 3600 (a
    dead appliance then left the limit on for good). The slow poll that finds the timer
    answering has the limit written again with it; once seen, the timer is always written."""
    site = profiles.fronius_gateway(tau_s=0.5)
    site.inverters[1].set(123, "WMaxLimPct_RvrtTms", None)  # "not implemented" while it boots
    link = InverterLink("inverter 1", SiteBus(site), 1, revert_s=3600, fast_s=1.0)
    async with running(link):
        link.command(Desired(pct=10.0))
        await settle(5)
        assert _revert_timer(link) is False
        site.inverters[1].set(123, "WMaxLimPct_RvrtTms", 0)  # booted: it answers now
        await settle(300)  # one slow poll
        assert site.get(1, 123, "WMaxLimPct_RvrtTms") == 3600
        assert _revert_timer(link) is True
        site.inverters[1].set(123, "WMaxLimPct_RvrtTms", None)  # one odd read later on
        link.command(Desired(pct=20.0))
        await settle(5)
    assert site.get(1, 123, "WMaxLimPct") == pytest.approx(20.0)
    assert _revert_timer(link) is True  # written with it (the device took it)
    assert site.get(1, 123, "WMaxLimPct_RvrtTms") == 3600


def _revert_timer(link: InverterLink) -> bool | None:
    return link.state.revert_timer


async def test_an_optional_point_seen_once_and_then_refused_is_no_longer_written(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An inverter without a revert timer read it once as 0 (booting): latched as implemented,
    it was written with every limit after, every write refused (illegal data address), the link
    offline and the inverter unlimited for good. A refusal drops the latch."""
    site = profiles.mandatory_controls_inverter(tau_s=0.5)
    site.inverters[1].set(123, "WMaxLimPct_RvrtTms", 0)  # one odd read at boot
    link = InverterLink("inverter 1", SiteBus(site), 1, revert_s=60, fast_s=1.0)
    async with running(link):
        link.command(Desired(pct=10.0))
        await settle(3)  # read (and latched) while it showed 0; the write refused
        site.inverters[1].set(123, "WMaxLimPct_RvrtTms", None)  # it reads "not implemented" now
        await settle(60)
        assert link.state.online and link.state.limit_pct == pytest.approx(10.0)
    assert site.get(1, 123, "WMaxLim_Ena") == 1
