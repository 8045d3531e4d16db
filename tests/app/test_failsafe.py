"""Losing the meter, an inverter or the utility: the service stays safe."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from dynexport.app import FALLBACK_SOURCE, App
from dynexport.sim.utility_server import UtilityServer
from dynexport.sunspec.links import BatteryLink, InverterLink
from dynexport.system.config import parse_config
from dynexport.web.api import alerts
from tests.app.conftest import (
    STORED_CONTROL_W,
    make_app,
    simulated_site,
    site_config,
    store_a_schedule,
    utility_section,
    wait_for,
    wait_settled,
)


async def test_meter_lost_puts_generation_at_the_fail_safe_within_seconds(tmp_path: Path):
    with simulated_site(("inverters", "meter"), load_w=2000.0) as sim:
        config = site_config(
            sim,
            inverter_servers=("inverters", "inverters"),
            meter_server="meter",
            extra={"limits": {"exportW": 3000}},
        )
        app = make_app(config, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_settled(sim.export_w, 3000, 120)
            # With the load known, generation runs at load + export limit (about 5000 W).
            assert sim.site.output_w(1) + sim.site.output_w(2) > 4000
            sim.servers["meter"].stop()
            cut = trio.current_time()
            await wait_for(lambda: app.status()["control"]["mode"] == "failsafe")
            # Without a meter the load is unknown: generation is held to the export limit,
            # which keeps export within it even if the household load drops to zero.
            await wait_for(lambda: sim.site.output_w(1) + sim.site.output_w(2) <= 3000)
            assert trio.current_time() - cut < 10
            assert app.status()["site"]["meterOnline"] is False
            sim.site.set_load(0.0)
            await trio.sleep(1.0)
            assert sim.export_w() <= 3000
            nursery.cancel_scope.cancel()


async def test_losing_one_inverter_moves_its_share_to_the_other(tmp_path: Path):
    with simulated_site(("a", "b"), load_w=1000.0) as sim:
        config = site_config(
            sim, inverter_servers=("a", "b"), meter_server="a", extra={"limits": {"exportW": 4000}}
        )
        app = make_app(config, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_settled(sim.export_w, 4000, 160)
            share_before = app.status()["inverters"][0]["limitPct"]
            # Inverter 2 stops answering; its revert timer would bring it back to full output,
            # so make the plant honest: it stops producing (a tripped inverter).
            sim.servers["b"].stop()
            sim.site.set_available(2, 0.0)
            await wait_for(lambda: app.status()["inverters"][1]["online"] is False)
            await wait_settled(sim.export_w, 4000, 160)
            share_after = app.status()["inverters"][0]["limitPct"]
            assert share_before is not None
            assert share_after is None or share_after > share_before
            nursery.cancel_scope.cancel()


async def test_utility_limit_reaches_the_inverters_and_outlives_the_utility(tmp_path: Path):
    server = UtilityServer(pki_dir=tmp_path / "pki", poll_rate_s=10)
    async with server.running() as utility:
        now = int(utility.now())
        # not the fallback's 1500 W: a loaded run settled on the fallback before the link's
        # first walk, and passed the limit checks without the utility's limit
        utility.add_control(start=now - 5, duration=3600, export_limit_w=1200)
        utility.set_default(export_limit_w=5000)
        files = utility.pki.files
        with simulated_site() as sim:
            raw = {
                "inverters": [
                    {"tcp": sim.endpoint("main"), "unit": 1},
                    {"tcp": sim.endpoint("main"), "unit": 2},
                ],
                "meter": {"tcp": sim.endpoint("main"), "unit": 240},
                "utility": {
                    "server": utility.url,
                    "ca": str(files["serca"]),
                    "cert": str(files["device_chain"]),
                    "key": str(files["device_key"]),
                    "nmi": "4312345678",
                    "pin": 111115,
                },
            }
            app = make_app(parse_config(raw), tmp_path / "data")
            async with trio.open_nursery() as nursery:
                await nursery.start(app.run)
                await wait_for(lambda: app.status()["limits"]["exportW"] == 1200, within=60)
                await wait_settled(sim.export_w, 1200, 100, within=40)
                status = app.status()
                assert status["limits"]["source"]["export_w"].startswith("utility")
                assert status["limits"]["source"]["export_w"] != FALLBACK_SOURCE
                assert status["utility"]["lfdi"] == utility.pki.device_lfdi
                # The utility goes away: the stored schedule keeps the 1200 W limit in force.
                utility.inject_fault(status=None, drop=True, count=1000)
                await trio.sleep(12)
                assert app.status()["limits"]["exportW"] == 1200
                assert sim.export_w() <= 1200 + 100
                nursery.cancel_scope.cancel()


async def app_with_a_stored_schedule_and_an_unusable_key(tmp_path: Path) -> App:
    """An app whose link stored a schedule (`store_a_schedule`), then whose key file was
    corrupted (a bad SD card, a bad edit), with the utility unreachable: it cannot build its
    link."""
    data = tmp_path / "data"
    server = UtilityServer(pki_dir=tmp_path / "pki", poll_rate_s=10)
    async with server.running() as utility:
        raw = {"utility": utility_section(utility, key=str(tmp_path / "key.pem"))}
        (tmp_path / "key.pem").write_bytes(utility.pki.files["device_key"].read_bytes())
        await store_a_schedule(utility, raw, data)
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n")
    return make_app(parse_config(raw), data)


async def test_unusable_utility_key_does_not_crash_and_the_stored_schedule_is_obeyed(
    tmp_path: Path,
):
    second = await app_with_a_stored_schedule_and_an_unusable_key(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        # the link is tried once the first limits are written (docs/architecture.md)
        await wait_for(lambda: second.status()["utility"]["lastError"] is not None)
        status = second.status()
        assert status["utility"]["configured"] is True
        assert status["utility"]["connected"] is False
        assert "utility link not started" in status["utility"]["lastError"]
        # the schedule stored on the data partition keeps the utility's limit in force
        assert status["limits"]["exportW"] == STORED_CONTROL_W
        assert status["limits"]["source"]["export_w"] != FALLBACK_SOURCE
        nursery.cancel_scope.cancel()


async def test_a_key_unreadable_at_the_start_is_tried_again_until_the_link_can_be_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The link was built once: a key unreadable at that moment (a card slow to mount, a file
    restored a moment later) left it off until the configuration changed. It is built again
    with backoff, the stored schedule obeyed meanwhile."""
    import dynexport.app as app_module

    monkeypatch.setattr(app_module, "LINK_RETRY_S", (0.5,))
    second = await app_with_a_stored_schedule_and_an_unusable_key(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        await wait_for(lambda: second.status()["utility"]["lastError"] is not None)
        assert second.utility is None
        assert second.status()["limits"]["exportW"] == STORED_CONTROL_W
        key = tmp_path / "key.pem"
        await trio.Path(key).write_bytes(
            await trio.Path(tmp_path / "pki" / "device-key.pem").read_bytes()
        )
        await wait_for(lambda: second.utility is not None)
        assert second.status()["utility"]["lfdi"]  # the link's own view now
        nursery.cancel_scope.cancel()


async def test_without_a_link_the_outlook_follows_the_stored_schedule_it_obeys(tmp_path: Path):
    """The outlook (the controller's next wake-up, the charge plan, GET /api/limits) showed the
    fallback everywhere while the stored schedule was obeyed (no link: its key unusable)."""
    second = await app_with_a_stored_schedule_and_an_unusable_key(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        await wait_for(lambda: second.status()["utility"]["lastError"] is not None)
        assert second.utility is None
        outlook = second.limits_outlook(hours=2)
        exports = [limits.export_w for _, limits in outlook]
        assert exports[:2] == [STORED_CONTROL_W, 5000.0]  # the control, then the default
        assert 3500 < outlook[1][0] - outlook[0][0] <= 3600  # when the control ends
        nursery.cancel_scope.cancel()


async def test_a_damaged_stored_schedule_is_set_aside_and_the_fallback_limit_is_written(
    tmp_path: Path,
):
    """The utility out of reach and its stored schedule damaged (valid JSON, a value of the
    wrong type inside): the loader raised AttributeError at every start, before any device
    link existed, so the service exited without writing a limit and systemd's start limit
    rebooted the appliance over and over. It is set aside (kept, named as damaged) and the
    installer's fallback export limit is written, with the link retried meanwhile."""
    data = tmp_path / "data"
    server = UtilityServer(pki_dir=tmp_path / "pki", poll_rate_s=10)
    async with server.running() as utility:
        section = utility_section(utility)
        await store_a_schedule(utility, {"utility": section}, data)
    stored = data / "sep2" / "schedule.json"
    doc = json.loads(stored.read_text())
    doc["programs"][0]["events"][0]["base"] = ""
    stored.write_text(json.dumps(doc))
    with simulated_site(load_w=500.0) as sim:
        app = make_app(site_config(sim, extra={"utility": section}), data)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: app.status()["limits"]["exportW"] == 1500.0)
            assert app.status()["limits"]["source"]["export_w"] == FALLBACK_SOURCE
            await wait_settled(sim.export_w, 1500, 150, within=60)
            nursery.cancel_scope.cancel()
    aside = list((data / "sep2").glob("schedule.json.*.corrupt"))
    assert [json.loads(p.read_text()) for p in aside] == [doc]


@pytest.mark.parametrize("synchronised", [False, True], ids=["clock-not-set", "clock-set"])
async def test_without_a_link_a_clock_not_known_to_be_right_obeys_the_strictest_stored_limit(
    tmp_path: Path, synchronised: bool
):
    """No link (its key unusable) and a clock 2 h behind, as a Pi's is after a 2 h power cut
    until NTP sets it: read at that clock, the stored control in force had not begun and the
    5 kW default was obeyed. While the clock is not known to be right the strictest of the
    stored schedule ahead is obeyed, and the status and an alert say so; once a time server
    has set the clock, the schedule is read at it as before."""
    raw_app = await app_with_a_stored_schedule_and_an_unusable_key(tmp_path)
    behind = make_app(
        raw_app.config,
        tmp_path / "data",
        wall_clock=lambda: time.time() - 2 * 3600,
        clock_synchronised=lambda: synchronised,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(behind.run)
        await wait_for(lambda: behind.status()["utility"]["lastError"] is not None)
        assert behind.utility is None
        status = behind.status()
        codes = [a["code"] for a in alerts(status, behind.config, time.time())]
        if synchronised:  # a set clock is right: 2 h before the control, the default
            assert status["limits"]["exportW"] == 5000.0
            assert status["utility"]["timeVerified"] is True
            assert "clock-unverified" not in codes
        else:
            assert status["limits"]["exportW"] == STORED_CONTROL_W
            assert status["utility"]["timeVerified"] is False
            assert "clock-unverified" in codes
        nursery.cancel_scope.cancel()


async def test_removing_the_meter_from_the_configuration_leaves_no_stale_meter(tmp_path: Path):
    import dataclasses

    with simulated_site() as sim:
        app = make_app(site_config(sim, extra={"limits": {"exportW": 3000}}), tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: app.status()["site"]["meterOnline"] is True)
            app.apply_config(dataclasses.replace(app.config, meter=None))
            await wait_for(lambda: app.meter is None)
            # without a meter the load is unknown: the controller holds the fail-safe
            await wait_for(lambda: app.status()["control"]["mode"] == "failsafe")
            assert app.status()["site"]["powerW"] is None
            nursery.cancel_scope.cancel()


async def one_inverter_one_battery(
    tmp_path: Path, inverter_w: float
) -> tuple[App, BatteryLink, float]:
    """An app with one 5 kW inverter making ``inverter_w`` and one battery under a 1.5 kW export
    limit, their links never run (at a closed port): the test sets their states."""
    from dynexport.modbus.client import BusPool

    closed = "127.0.0.1:1"
    config = parse_config(
        {
            "inverters": [{"tcp": closed, "unit": 1}],
            "batteries": [{"tcp": closed, "unit": 3, "plan": False}],
            "limits": {"exportW": 1500},
        }
    )
    app = make_app(config, tmp_path)
    async with BusPool() as pool:
        app._make_links(pool)
    now = trio.current_time()
    (inv,) = app.inverters
    inv.state = replace(
        inv.state, online=True, controllable=True, rated_w=5000.0, power_w=inverter_w,
        last_reading=now,
    )  # fmt: skip
    (bat,) = app.batteries
    return app, bat, now


async def a_704_battery_charging_2_kw(tmp_path: Path, inverter_w: float) -> tuple[App, BatteryLink]:
    """As ``one_inverter_one_battery``, the battery read: charging 2 kW at 50 %, controlled
    through model 704 (it cannot be told "charge only")."""
    from dynexport.sunspec.storage import StorageReading

    app, bat, now = await one_inverter_one_battery(tmp_path, inverter_w)
    reading = StorageReading(50.0, 10000.0, 5000.0, 5000.0, -2000.0)
    bat.state = replace(
        bat.state, online=True, controllable=True, reading=reading, last_reading=now,
        charge_only_possible=False,
    )  # fmt: skip
    return app, bat


async def test_the_fault_fail_safe_counts_what_an_unreachable_battery_may_discharge(
    tmp_path: Path,
) -> None:
    """The controller's fault path computed its fail-safe without the batteries: an unreachable
    battery still at a 3 kW discharge setpoint under a 1.5 kW limit left the inverter 1.48 kW
    (the law's own fail-safe gives it nothing: the battery alone may export 3 kW)."""
    app, bat, now = await one_inverter_one_battery(tmp_path, 1000.0)
    bat.state = replace(bat.state, online=False, setpoint_w=3000.0, setpoint_expires=now + 600.0)
    (command,) = app._failsafe_commands()
    assert command.limit_pct == 0.0


async def test_a_controller_fault_tells_ac_batteries_charge_only_and_leaves_hybrids_own_mode(
    tmp_path: Path,
) -> None:
    """As the law's own fail-safe: an AC-coupled battery's own mode would discharge into the
    load the inverters' cap gives up (and be counted against it, so it took ever more of it);
    a hybrid's battery is held by its inverter's limit and keeps its own mode."""
    from dynexport.modbus.client import BusPool
    from dynexport.sunspec.links import BatteryDesired

    closed = "127.0.0.1:1"  # the links never run here
    config = parse_config(
        {
            "inverters": [{"tcp": closed, "unit": 1}],
            "batteries": [{"tcp": closed, "unit": 1, "plan": False},
                          {"tcp": closed, "unit": 3, "plan": False}],
            "limits": {"exportW": 1500},
        }
    )  # fmt: skip
    app = make_app(config, tmp_path)
    async with BusPool() as pool:
        app._make_links(pool)
    hybrid, ac = app.batteries
    assert not hybrid.ac_coupled and ac.ac_coupled
    await app._controller_fault(RuntimeError("a bug in the law"))
    assert ac._desired == BatteryDesired(None, charge_only=True)
    assert hybrid._desired == BatteryDesired(None)


async def test_a_controller_fault_holds_a_704_battery_as_the_laws_fail_safe_does(
    tmp_path: Path,
) -> None:
    """A battery that cannot be told "charge only" (model 704) left in its own mode by the fault
    hook took over the load the inverters' cap gave up (and was counted against it, so it took
    ever more). It is held as the law's fail-safe holds it: charging no more than it does and
    than the inverters are still above their cap (2.5 kW against 1480 W), never discharging."""
    from dynexport.control.law import margin_w
    from dynexport.sunspec.links import BatteryDesired

    app, bat = await a_704_battery_charging_2_kw(tmp_path, 2500.0)
    await app._controller_fault(RuntimeError("a bug in the law"))
    cap = 1500.0 - margin_w(1500.0, app.settings)
    assert bat._desired == BatteryDesired(pytest.approx(-(2500.0 - cap)))  # type: ignore[arg-type]
    # and it is what shutdown leaves it at
    assert app._failsafe_battery(bat) == bat._desired


async def test_a_fail_safe_that_cannot_be_worked_out_leaves_no_old_battery_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The law raising again in the fault hook (the fault that brought it there) must not leave
    the batteries an older fail-safe (a 704 battery's held charge, from the grid meanwhile, for
    as long as the fault lasts): they get "charge only", the inverters 0 %."""
    from dynexport.control import law
    from dynexport.sunspec.links import BatteryDesired

    app, bat = await a_704_battery_charging_2_kw(tmp_path, 2500.0)
    await app._controller_fault(RuntimeError("once"))
    assert bat._desired is not None and bat._desired.setpoint_w is not None  # held
    monkeypatch.setattr(law, "control_step", lambda *a, **k: 1 / 0)
    await app._controller_fault(RuntimeError("again"))
    assert bat._desired == BatteryDesired(None, charge_only=True)
    assert [i._desired.pct for i in app.inverters if i._desired] == [0.0]


async def test_at_shutdown_silent_batteries_do_not_keep_a_reachable_one_from_its_fail_safe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One after another, two batteries that do not answer (2.5 s of timeouts each) used up the
    shutdown's budget before a reachable third one was left at its fail-safe."""
    from types import SimpleNamespace

    from dynexport.app import SHUTDOWN_BUDGET_S
    from dynexport.modbus.errors import ModbusTimeout
    from dynexport.sunspec.links import BatteryDesired

    class Battery:
        def __init__(self, id: str, answers_after_s: float | None) -> None:
            self.id, self.after = id, answers_after_s
            self.released: object = None
            self.ac_coupled = True

        async def write(self, desired: object) -> None:
            await trio.sleep(2.5 if self.after is None else self.after)
            if self.after is None:
                raise ModbusTimeout("no answer")
            self.released = desired

    batteries = [Battery("battery 1", None), Battery("battery 2", None), Battery("battery 3", 0.05)]
    app = SimpleNamespace(
        _failsafe_commands=lambda: [],
        _failsafe_batteries={},
        inverters=[],
        batteries=batteries,
        notifier=SimpleNamespace(stopping=lambda message: None),
    )
    app._failsafe_battery = lambda bat: App._failsafe_battery(app, bat)  # type: ignore[arg-type]
    with trio.move_on_after(SHUTDOWN_BUDGET_S):
        await App.leave_fail_safe(app)  # type: ignore[arg-type]
    # Left at "charge only" (an AC battery's own mode would take over the load the inverters'
    # fail-safe caps give up, and send it out when that load falls), until its revert timer.
    assert batteries[2].released == BatteryDesired(None, charge_only=True)


async def test_a_stop_just_after_a_configuration_change_still_leaves_the_fail_safe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change that restarts the links ends the old generation without its fail-safe (control
    goes on); a stop before the new links had reached their inverters (discovery on RS485 takes
    seconds) found none online, wrote nothing, and left each at the old links' limit for up to
    its revert time. The new links reach them on the way out."""
    with simulated_site(load_w=1000.0) as sim:
        config = site_config(sim, extra={"limits": {"exportW": 2640}})
        app = make_app(config, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_settled(sim.export_w, 2640, 120)
            # the new links' discovery takes longer than the time to the stop
            monkeypatch.setattr(InverterLink, "_discover_until_found", _never_found)
            old = list(app.inverters)
            app.apply_config(replace(config, control=replace(config.control, revert_s=45)))
            await wait_for(lambda: app.inverters != old and app.output is not None)
            assert not any(link.state.online for link in app.inverters)
            nursery.cancel_scope.cancel()  # SIGTERM
        # the fail-safe: generation within the export limit, 2640 W of 13 200 W, 20 % each,
        # written by the new links (their revert time)
        for unit in (1, 2):
            assert sim.site.get(unit, 123, "WMaxLimPct") <= 20.0
            assert sim.site.get(unit, 123, "WMaxLimPct_RvrtTms") == 45


async def _never_found(self: InverterLink) -> None:
    await trio.sleep_forever()
