"""control/storage_target.py: a CSIP-AUS v1.3 storage target within the reserve, the rates and
the limits in force (the export limit always wins)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.control.battery import BatterySettings, BatteryState
from dynexport.control.storage_target import storage_target_power

SETTINGS = BatterySettings(max_soc_pct=95.0, reserve_soc_pct=20.0, taper_pct=3.0)


def battery(
    soc: float | None = 50.0,
    *,
    bid: str = "bat1",
    power_w: float = 0.0,
    online: bool = True,
    controllable: bool = True,
    rate_w: float = 5000.0,
) -> BatteryState:
    return BatteryState(
        id=bid,
        online=online,
        controllable=controllable,
        capacity_wh=10_000.0,
        max_charge_w=rate_w,
        max_discharge_w=rate_w,
        soc_pct=soc,
        power_w=power_w,
    )


def test_a_discharge_target_is_followed_when_nothing_limits() -> None:
    d = storage_target_power(
        3000.0, [battery()], SETTINGS, site_export_w=0.0, export_limit_w=None, import_limit_w=None
    )
    assert d.setpoints == (("bat1", 3000.0),)
    assert d.expected_export_w == 3000.0


def test_the_export_limit_cuts_the_target() -> None:
    """STO-03's shape: target = setMaxDischargeRateW but export must stay within the limit."""
    d = storage_target_power(
        5000.0,
        [battery()],
        SETTINGS,
        site_export_w=500.0,
        export_limit_w=2000.0,
        import_limit_w=None,
    )
    assert d.total_w == 1500.0  # 500 W base + 1500 W = the 2000 W limit
    assert "export limit" in d.reason


def test_the_export_limit_wins_even_into_charging() -> None:
    """A 0 W export limit with 3 kW of surplus: the target (discharge) becomes a 3 kW charge."""
    d = storage_target_power(
        1500.0,
        [battery()],
        SETTINGS,
        site_export_w=3000.0,
        export_limit_w=0.0,
        import_limit_w=None,
    )
    assert d.total_w == -3000.0 and d.expected_export_w == 0.0


def test_a_charge_target_never_imports_beyond_the_import_limit() -> None:
    """Charging at 5 kW from a site already importing 1 kW under a 2 kW import limit: 1 kW."""
    d = storage_target_power(
        -5000.0,
        [battery()],
        SETTINGS,
        site_export_w=-1000.0,
        export_limit_w=None,
        import_limit_w=2000.0,
    )
    assert d.total_w == -1000.0 and d.expected_export_w == -2000.0
    assert "import limit" in d.reason


def test_no_discharge_at_or_below_the_reserve() -> None:
    d = storage_target_power(
        5000.0,
        [battery(20.0)],
        SETTINGS,
        site_export_w=0.0,
        export_limit_w=None,
        import_limit_w=None,
    )
    assert d.total_w == 0.0
    assert "reserve" in d.reason


def test_no_charge_at_the_maximum_soc() -> None:
    d = storage_target_power(
        -5000.0,
        [battery(95.0)],
        SETTINGS,
        site_export_w=0.0,
        export_limit_w=None,
        import_limit_w=None,
    )
    assert d.total_w == 0.0


def test_rates_bound_the_target_and_it_is_shared_by_rate() -> None:
    bats = [battery(bid="a", rate_w=2000.0), battery(bid="b", rate_w=6000.0)]
    d = storage_target_power(
        10_000.0, bats, SETTINGS, site_export_w=0.0, export_limit_w=None, import_limit_w=None
    )
    assert dict(d.setpoints) == {"a": 2000.0, "b": 6000.0}
    d = storage_target_power(
        4000.0, bats, SETTINGS, site_export_w=0.0, export_limit_w=None, import_limit_w=None
    )
    assert dict(d.setpoints) == {"a": 1000.0, "b": 3000.0}


def test_offline_unknown_soc_and_uncontrollable_batteries_take_no_part() -> None:
    bats = [
        battery(bid="off", online=False),
        battery(None, bid="unknown"),
        battery(bid="ro", controllable=False),
    ]
    d = storage_target_power(
        3000.0, bats, SETTINGS, site_export_w=0.0, export_limit_w=None, import_limit_w=None
    )
    assert d.setpoints == ()
    assert "off offline" in d.reason and "unknown state of charge unknown" in d.reason


def test_the_present_battery_power_is_taken_out_of_the_export() -> None:
    """Site exports 2 kW while the battery discharges 1.5 kW: 500 W without it, so a 1 kW
    export limit allows 500 W of discharge, not 0."""
    d = storage_target_power(
        5000.0,
        [battery(power_w=1500.0)],
        SETTINGS,
        site_export_w=2000.0,
        export_limit_w=1000.0,
        import_limit_w=None,
    )
    assert d.total_w == 500.0


def test_bad_input_commands_nothing_and_says_why() -> None:
    for kwargs, words in (
        ({"target_w": math.nan, "site_export_w": 0.0}, "not a number"),
        ({"target_w": 1000.0, "site_export_w": None}, "stale"),
        ({"target_w": 1000.0, "site_export_w": math.inf}, "stale"),
    ):
        d = storage_target_power(
            kwargs["target_w"],  # type: ignore[arg-type]
            [battery()],
            SETTINGS,
            site_export_w=kwargs["site_export_w"],
            export_limit_w=None,
            import_limit_w=None,
        )
        assert d.setpoints == () and words in d.reason
    d = storage_target_power(
        1000.0,
        [battery()],
        SETTINGS,
        site_export_w=0.0,
        export_limit_w=-5.0,
        import_limit_w=None,
    )
    assert d.setpoints == () and "export limit" in d.reason


# --- properties --------------------------------------------------------------------------

_watts = st.floats(-20_000, 20_000, allow_nan=False)
_limit = st.none() | st.floats(0, 20_000, allow_nan=False)
_battery = st.builds(
    battery,
    st.none() | st.floats(0, 100),
    bid=st.sampled_from(["a", "b", "c"]),
    power_w=st.floats(-8000, 8000, allow_nan=False),
    online=st.booleans(),
    controllable=st.booleans(),
    rate_w=st.floats(0, 8000, allow_nan=False),
)


@settings(max_examples=400, deadline=None)
@given(
    target=_watts,
    bats=st.lists(_battery, max_size=3, unique_by=lambda b: b.id),
    site=_watts,
    export_limit=_limit,
    import_limit=_limit,
)
def test_storage_target_safety_properties(
    target: float,
    bats: list[BatteryState],
    site: float,
    export_limit: float | None,
    import_limit: float | None,
) -> None:
    """In every state: no battery beyond its rates, none discharged at/below the reserve or
    charged at/above the maximum SoC, none that cannot take part commanded; the export limit
    holds whenever the batteries can hold it; a charge never pushes import beyond the import
    limit (nor beyond what the site already imported); never more than the target unless a
    limit asks for it."""
    d = storage_target_power(
        target,
        bats,
        SETTINGS,
        site_export_w=site,
        export_limit_w=export_limit,
        import_limit_w=import_limit,
    )
    by_id = {b.id: b for b in bats}
    taking = [b for b in bats if b.online and b.controllable and b.soc_pct is not None]
    assert {i for i, _ in d.setpoints} == {b.id for b in taking}
    for bid, w in d.setpoints:
        b = by_id[bid]
        assert b.soc_pct is not None
        assert -b.max_charge_w - 1e-6 <= w <= b.max_discharge_w + 1e-6
        if b.soc_pct <= SETTINGS.reserve_soc_pct:
            assert w <= 1e-9, "discharged at or below the reserve"
        if b.soc_pct >= SETTINGS.max_soc_pct:
            assert w >= -1e-9, "charged at or above the maximum SoC"
    if not taking:
        return
    assert math.isclose(d.total_w, sum(w for _, w in d.setpoints), abs_tol=1e-6)
    base = site - sum(b.power_w for b in taking)
    export = base + d.total_w
    assert d.expected_export_w is not None and math.isclose(
        export, d.expected_export_w, abs_tol=1e-6
    )
    lo = sum(-b.max_charge_w for b in taking)
    if export_limit is not None and base + lo <= export_limit:
        # the batteries can hold it by charging (minus the SoC tapers): then it holds, or they
        # charge as hard as they may
        at_max_charge = all(
            math.isclose(
                w,
                -b.max_charge_w
                * min(max((SETTINGS.max_soc_pct - (b.soc_pct or 0)) / SETTINGS.taper_pct, 0), 1),
                abs_tol=1e-6,
            )
            for b in taking
            for i, w in d.setpoints
            if i == b.id
        )
        assert export <= export_limit + 1e-6 or at_max_charge
    if d.total_w > 1e-6:
        # discharge: only toward the target, or as an import limit needs
        needed_for_import = import_limit is not None and base < -import_limit
        assert d.total_w <= target + 1e-6 or needed_for_import
    if d.total_w < -1e-6:
        # charge: import stays within the import limit, unless the export limit needs it
        # (a charge then only lowers export toward the limit, it never creates import)
        if import_limit is not None and export < -import_limit - 1e-6:
            assert export_limit is not None and base > export_limit
        assert d.total_w >= target - 1e-6 or (export_limit is not None and base > export_limit)
