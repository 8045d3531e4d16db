"""The battery in the web API: alerts, history (with a database from the previous version) and
the setup scan offering a storage device as a battery."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.sim.modbus_server import serve_tcp
from dynexport.sim.profiles import battery, fronius_battery_site
from dynexport.sim.sunspec_device import Site
from dynexport.system.config import Config
from dynexport.web.api import alerts
from dynexport.web.history import History, Row, row_from_status
from tests.web.conftest import Web, logged_in

NOW = 1_780_000_000.0
T0 = 1_750_000_500  # a multiple of 900 s


def battery_status(*devices: dict[str, Any], configured: bool = True) -> dict[str, Any]:
    return {
        "battery": {
            "configured": configured,
            "socPct": 62.5,
            "powerW": -2400.0,
            "mode": "engaged",
            "devices": list(devices),
        }
    }


def device(**kw: Any) -> dict[str, Any]:
    return {"id": "battery 1", "online": True, "controllable": True, "notControllable": None, **kw}


def codes(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {a["code"]: (a["level"], a["text"]) for a in alerts(status, Config(), NOW)}


# -- alerts -------------------------------------------------------------------------------------


def test_an_offline_battery_is_an_error_naming_it_and_why() -> None:
    got = codes(battery_status(device(online=False, error="timed out")))
    assert got["battery-offline"] == ("error", "battery 1: offline (timed out)")


def test_a_battery_that_refuses_commands_is_an_error_with_the_reason() -> None:
    got = codes(battery_status(device(controllable=False, notControllable="no model 124 or 704")))
    assert got["battery-not-controllable"] == (
        "error",
        "battery 1 cannot be controlled: no model 124 or 704",
    )
    got = codes(battery_status(device(controllable=False)))
    assert "does not accept" in got["battery-not-controllable"][1]


def test_a_healthy_battery_or_none_configured_raises_no_battery_alert() -> None:
    assert not [c for c in codes(battery_status(device())) if c.startswith("battery")]
    assert not [c for c in codes(battery_status(configured=False)) if c.startswith("battery")]
    assert not [c for c in codes({}) if c.startswith("battery")]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"online": st.booleans(), "controllable": st.sampled_from([True, False, None])}
        ),
        max_size=4,
    )
)
def test_every_battery_that_cannot_be_steered_is_an_error(devs: list[dict[str, Any]]) -> None:
    """The owner is told of each battery dynexport cannot use: offline or not controllable."""
    status = battery_status(*(device(id=f"battery {i}", **d) for i, d in enumerate(devs)))
    errors = [a for a in alerts(status, Config(), NOW) if a["code"].startswith("battery-")]
    bad = [d for d in devs if not d["online"] or d["controllable"] is False]
    assert len(errors) == len(bad) and all(a["level"] == "error" for a in errors)


# -- history ------------------------------------------------------------------------------------


def test_a_status_with_a_battery_records_its_soc_and_power_and_none_without() -> None:
    row = row_from_status(battery_status(device()), T0)
    assert row.values["battery_soc"] == 62.5 and row.values["battery"] == -2400.0
    row = row_from_status(battery_status(configured=False), T0)
    assert row.values["battery_soc"] is None and row.values["battery"] is None


def battery_row(t: int, soc: float | None, w: float | None) -> Row:
    return Row(
        t,
        {
            "site": 100.0,
            "der": 3000.0,
            "export_limit": 1500.0,
            "gen_limit": None,
            "battery_soc": soc,
            "battery": w,
        },
        {"inverter 1": 3000.0},
    )


async def test_history_returns_the_battery_soc_and_power_means(tmp_path: Path) -> None:
    h = History(tmp_path / "h.sqlite")
    await h.open()
    for i in range(120):
        h.add(battery_row(T0 + i, 50.0 + i / 60, -1000.0 - i))
    await h.flush(T0 + 120, partial=True)  # all on disk
    got = await h.query(T0, T0 + 120, 60, now=T0 + 120)
    assert got["t"] == [T0, T0 + 60]
    assert got["batterySocPct"] == [50.5, 51.5]
    assert got["batteryW"] == [-1029.5, -1089.5]
    await h.close()


OLD_SCHEMA = """
CREATE TABLE samples (
    res INTEGER NOT NULL,
    t INTEGER NOT NULL,
    site REAL, der REAL, export_limit REAL, gen_limit REAL,
    inverters TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (res, t)
) WITHOUT ROWID
"""
"""The history schema of the version before batteries (git b434132^)."""


def old_insert(path: Path, t: int) -> None:
    """A row written the way the previous version writes (after a rollback, too)."""
    db = sqlite3.connect(path)
    db.execute(
        "INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)",
        (60, t, 700.0, 2000.0, 5000.0, None, '{"inverter 1": 2000.0}'),
    )
    db.commit()
    db.close()


async def test_a_history_file_from_the_previous_version_opens_keeps_its_rows_and_gains_the_battery(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    db.execute(OLD_SCHEMA)
    db.commit()
    db.close()
    old_insert(path, T0)

    h = History(path)
    await h.open()
    for i in range(60):
        h.add(battery_row(T0 + 60 + i, 80.0, -500.0))
    await h.flush(T0 + 120, partial=True)
    got = await h.query(T0, T0 + 120, 60, now=T0 + 120)
    assert got["t"] == [T0, T0 + 60]
    assert got["siteW"] == [700.0, 100.0]  # the old row is still there
    assert got["batterySocPct"] == [None, 80.0] and got["batteryW"] == [None, -500.0]
    await h.close()

    # rolled back to the previous version: it still writes its rows into the same file
    old_insert(path, T0 + 180)
    h = History(path)
    await h.open()
    got = await h.query(T0, T0 + 240, 60, now=T0 + 240)
    assert got["t"] == [T0, T0 + 60, T0 + 180]
    assert got["batteryW"] == [None, -500.0, None]
    await h.close()


async def test_battery_rows_follow_the_samples_retention(tmp_path: Path) -> None:
    h = History(tmp_path / "h.sqlite")
    await h.open()
    for i in range(120):
        h.add(battery_row(T0 + i, 50.0, -1000.0))
    await h.flush(T0 + 120)
    await h.flush(T0 + 2 * 86400)  # the 1 s rows are gone, battery values with them
    db = sqlite3.connect(tmp_path / "h.sqlite")
    assert db.execute("SELECT COUNT(*) FROM battery WHERE res = 1").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM battery WHERE res = 60").fetchone()[0] == 1
    db.close()
    await h.close()


async def test_the_history_api_and_csv_carry_the_battery_columns(web: Web) -> None:
    c = await logged_in(web)
    now = int(web.app.options.wall_clock())
    status, doc = await c.json("GET", f"/api/history?from={now - 60}&to={now + 2}&step=1")
    assert status == 200 and "batterySocPct" in doc and "batteryW" in doc
    resp = await c.request("GET", f"/api/history.csv?from={now - 60}&to={now + 2}&step=1")
    header = resp.body.decode().splitlines()[0].split(",")
    assert header[:7] == [
        "time",
        "siteW",
        "derW",
        "exportLimitW",
        "generationLimitW",
        "batterySocPct",
        "batteryW",
    ]


# -- setup scan ---------------------------------------------------------------------------------


async def test_a_scan_offers_a_storage_device_as_a_battery(web: Web) -> None:
    c = await logged_in(web)
    # a generic SunSpec battery (not a Fronius): the standard 124 sign convention
    with serve_tcp(fronius_battery_site(window=False)) as sim:
        status, doc = await c.json(
            "POST", "/api/devices/scan", {"tcp": f"127.0.0.1:{sim.port}", "units": [1, 3, 240]}
        )
    assert status == 200
    found = {d["unit"]: d for d in doc["devices"]}
    # the AC battery also shows its AC power (model 103) but has no inverter control model
    assert found[3]["roles"] == ["inverter", "battery"]
    assert found[3]["controllable"] is False and "usable as a battery" in found[3]["warning"]
    assert found[3]["batteryConfig"] == {
        "type": "sunspec",
        "tcp": f"127.0.0.1:{sim.port}",
        "unit": 3,
    }
    assert found[1]["roles"] == ["inverter"] and found[1]["batteryConfig"] is None
    assert found[240]["roles"] == ["meter"] and found[240]["batteryConfig"] is None


async def test_a_fronius_storage_device_is_offered_with_the_gen24_charge_window(web: Web) -> None:
    c = await logged_in(web)
    site = Site({7: battery(mn="Fronius", md="Primo GEN24 6.0 Plus", unit=7, window=True)})
    with serve_tcp(site) as sim:
        status, doc = await c.json(
            "POST", "/api/devices/scan", {"tcp": f"127.0.0.1:{sim.port}", "units": [7]}
        )
    assert status == 200
    (found,) = doc["devices"]
    assert found["batteryConfig"]["convention"] == "window"
    assert "convention" not in found["config"]  # the inverter entry takes no battery keys
