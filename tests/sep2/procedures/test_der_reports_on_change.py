"""DER reports are PUT when what they say changes, each on its own: a charging battery's state
of charge re-PUT DERCapability, DERSettings and DERStatus every 5 s (the app feeds `update_der`
that often, and every 0.1 % of SoC was a change). Now a change of SoC below 1 point waits for the
telemetry post rate and moves DERStatus alone; a change of connect or operational state, alarms,
ratings or settings is PUT at once, and only in the report that shows it. The CSIP-AUS harness
checks (violations) still hold throughout."""

from __future__ import annotations

from dataclasses import replace

from dynexport.sep2.resources import DERStatus
from tests.sep2.procedures.conftest import BATTERY_DER, Harness, requests

DERS, DERCAP, DERG = "/edev/1/der/1/ders", "/edev/1/der/1/dercap", "/edev/1/der/1/derg"


def puts(link: Harness) -> dict[str, int]:
    return {p: len(requests(link.server, "PUT", p)) for p in (DERS, DERCAP, DERG)}


def last_status(link: Harness) -> DERStatus:
    status = requests(link.server, "PUT", DERS)[-1].resource
    assert isinstance(status, DERStatus)
    return status


def soc_of(link: Harness) -> int:
    value = last_status(link).state_of_charge_status
    assert value is not None
    return value.value


def since(link: Harness, before: dict[str, int]) -> dict[str, int]:
    return {p: n - before[p] for p, n in puts(link).items()}


async def test_a_charging_battery_re_puts_no_report_for_each_tick_of_its_soc(
    battery_link: Harness,
) -> None:
    link = battery_link
    await link.run_for(5)
    before = puts(link)
    soc = 50.0
    for _ in range(60):  # 5 minutes; the app feeds update_der every 5 s, SoC + 0.07 % each
        soc += 0.1 * 5 / 7
        link.client.update_der(replace(BATTERY_DER, state_of_charge_pct=round(soc, 1)))
        await link.run_for(5)
    after = since(link, before)
    # DERList pollRate 60 s: the periodic report, about 5 in 5 minutes; never 60
    assert after[DERCAP] <= 6 and after[DERG] <= 6, after
    assert after[DERS] <= 6 + 4, after  # plus at most one per whole point of SoC (~4.3)
    assert abs(soc_of(link) - round(soc, 1) * 100) < 100


async def test_a_soc_move_of_a_whole_point_is_reported_at_once_and_in_derstatus_only(
    battery_link: Harness,
) -> None:
    link = battery_link
    await link.run_for(5)
    before = puts(link)
    link.client.update_der(replace(BATTERY_DER, state_of_charge_pct=51.0))
    await link.run_for(1)
    assert since(link, before) == {DERS: 1, DERCAP: 0, DERG: 0}
    assert soc_of(link) == 5100


async def test_a_soc_tick_waits_for_the_post_rate_then_goes_in_derstatus(
    battery_link: Harness,
) -> None:
    link = battery_link
    await link.run_for(5)
    before = puts(link)
    link.client.update_der(replace(BATTERY_DER, state_of_charge_pct=50.3))
    await link.run_for(1)
    assert since(link, before)[DERS] == 0  # 0.3 points: not at once
    await link.run_for(60)  # the post rate (60 s) passed: reported
    assert since(link, before)[DERS] >= 1
    assert soc_of(link) == 5030


async def test_a_change_of_state_goes_at_once_and_only_in_its_own_report(
    battery_link: Harness,
) -> None:
    link = battery_link
    await link.run_for(5)
    before = puts(link)
    link.client.update_der(replace(BATTERY_DER, connected=False, available=False))
    await link.run_for(1)
    assert since(link, before) == {DERS: 1, DERCAP: 0, DERG: 0}
    connect = last_status(link).gen_connect_status
    assert connect is not None and connect.value & 0b11 == 0

    before = puts(link)
    link.client.update_der(replace(BATTERY_DER, connected=False, available=False, alarm_status=1))
    await link.run_for(1)
    assert since(link, before) == {DERS: 1, DERCAP: 0, DERG: 0}  # an alarm

    before = puts(link)
    rerated = replace(BATTERY_DER, connected=False, available=False, alarm_status=1)
    link.client.update_der(replace(rerated, rated_w=4000.0, max_w=4000.0))
    await link.run_for(1)
    # rtgMaxW is DERCapability's, setMaxW DERSettings': both, not DERStatus
    assert since(link, before) == {DERS: 0, DERCAP: 1, DERG: 1}
