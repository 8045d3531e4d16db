"""Storage over SunSpec as pure data: decoding models 124/713/802 (and 704 WSet), battery
commands with their revert timeout, read back through the real decoder."""

from __future__ import annotations

import pytest

from dynexport.sunspec.control import CommandError, NotControllableError, RegisterWrite, verify
from dynexport.sunspec.decode import decode_model
from dynexport.sunspec.discovery import ModelHeader, SunSpecMap
from dynexport.sunspec.models import model_def
from dynexport.sunspec.storage import (
    StorageCommand,
    StorageConvention,
    charge_only_from_raw,
    encode_storage,
    is_storage,
    not_controllable_reason,
    percent_base_w,
    read_storage,
    setpoint_from_raw,
    storage_control_model,
)

H124 = ModelHeader(124, 40100, model_def(124).fixed_len - 2)  # type: ignore[union-attr]
H704 = ModelHeader(704, 40200, model_def(704).fixed_len - 2)  # type: ignore[union-attr]


def registers_after(
    header: ModelHeader, writes: tuple[RegisterWrite, ...], sfs: dict[str, int]
) -> list[int]:
    """A model image (ID, L, points) with the scale factors set and the writes applied."""
    regs = [header.id, header.length] + [0] * header.length
    mdef = model_def(header.id)
    assert mdef is not None
    for name, sf in sfs.items():
        regs[mdef.point(name).offset] = sf & 0xFFFF
    for w in writes:
        for k, v in enumerate(w.values):
            regs[w.address - header.address + k] = v
    return regs


def test_storage_models_make_a_device_a_battery() -> None:
    assert is_storage(SunSpecMap(40000, (ModelHeader(1, 40002, 66), ModelHeader(124, 40070, 24))))
    assert is_storage(SunSpecMap(40000, (ModelHeader(713, 40002, 7),)))
    assert not is_storage(
        SunSpecMap(40000, (ModelHeader(1, 40002, 66), ModelHeader(103, 40070, 50)))
    )


def test_the_most_specific_model_wins_and_unknown_stays_none() -> None:
    models = {
        124: {
            "WChaMax": 5000.0,
            "ChaState": 55.0,
            "MinRsvPct": 10.0,
            "StorCtl_Mod": 0,
            "ChaGriSet": 0,
        },
        713: {"WHRtg": 10240.0, "SoC": 57.5},
        802: {
            "WHRtg": 9000.0,
            "SoC": 50.0,
            "WChaRteMax": 4800.0,
            "WDisChaRteMax": 4600.0,
            "W": 1200.0,
        },
    }
    r = read_storage(models)
    assert (r.soc_pct, r.capacity_wh, r.max_charge_w, r.max_discharge_w) == (
        57.5,
        10240.0,
        4800.0,
        4600.0,
    )
    assert r.power_w == 1200.0 and r.min_reserve_pct == 10.0 and r.grid_charging is False
    assert r.own_mode and r.controllable
    assert read_storage(models, w_discharge_positive=False).power_w == -1200.0
    only124 = read_storage({124: {"WChaMax": 3000.0, "ChaState": 40.0}, 103: {"W": -2500.0}})
    assert (only124.soc_pct, only124.max_discharge_w, only124.power_w) == (40.0, 3000.0, -2500.0)
    assert only124.capacity_wh is None
    nothing = read_storage({})
    assert nothing.soc_pct is None and not nothing.controllable
    assert read_storage({713: {"SoC": float("nan")}}).soc_pct is None


@pytest.mark.parametrize("convention", list(StorageConvention))
@pytest.mark.parametrize("setpoint", [-4000.0, -1234.5, 0.0, 2500.0, None])
def test_a_124_command_carries_its_revert_timer_and_reads_back_as_written(
    convention: StorageConvention, setpoint: float | None
) -> None:
    cmd = StorageCommand(setpoint, revert_s=90)
    writes, expected = encode_storage(H124, cmd, max_charge_w=5000.0, sf=-2, convention=convention)
    regs = registers_after(H124, writes, {"InOutWRte_SF": -2})
    back = decode_model(model_def(124), H124.address, regs)
    assert verify(expected, back.raw) == []
    got = setpoint_from_raw(H124, back.raw, max_charge_w=5000.0, sf=-2, convention=convention)
    if setpoint is None:
        assert expected == {"StorCtl_Mod": 0} and got is None
        return
    assert expected["InOutWRte_RvrtTms"] == 90 and expected["StorCtl_Mod"] == 3
    assert got is not None and abs(got) <= abs(setpoint) + 1e-9  # rounded towards zero
    assert got == pytest.approx(setpoint, abs=0.5)  # 0.01 % of 5 kW


def test_the_gen24_window_forces_the_direction_with_a_negative_rate() -> None:
    """GEN24: charge 2 kW of 5 kW → InWRte 40 %, OutWRte −40 %; SunSpec caps: 40 % and 0."""
    _, window = encode_storage(
        H124,
        StorageCommand(-2000.0),
        max_charge_w=5000.0,
        sf=0,
        convention=StorageConvention.WINDOW,
    )
    assert (window["InWRte"], window["OutWRte"]) == (40, -40)
    _, caps = encode_storage(H124, StorageCommand(-2000.0), max_charge_w=5000.0, sf=0)
    assert (caps["InWRte"], caps["OutWRte"]) == (40, 0)
    _, dis = encode_storage(
        H124, StorageCommand(1000.0), max_charge_w=5000.0, sf=0, convention=StorageConvention.WINDOW
    )
    assert (dis["InWRte"], dis["OutWRte"]) == (-20, 20)


@pytest.mark.parametrize("convention", list(StorageConvention))
def test_charge_only_bounds_the_discharge_alone_and_reads_back_as_no_setpoint(
    convention: StorageConvention,
) -> None:
    """The fail-safe's "charge only": the discharge bound alone (StorCtl_Mod 2) at OutWRte 0 %,
    with its revert timer, the enable written last; read back, it is no setpoint (its own mode
    charges) and is told apart from a stale InWRte of an earlier charge setpoint."""
    earlier, _ = encode_storage(
        H124, StorageCommand(-4000.0), max_charge_w=5000.0, sf=-2, convention=convention
    )
    cmd = StorageCommand(None, revert_s=60, charge_only=True)
    writes, expected = encode_storage(H124, cmd, max_charge_w=5000.0, sf=-2, convention=convention)
    assert expected["StorCtl_Mod"] == 2 and expected["OutWRte"] == 0
    assert expected["InOutWRte_RvrtTms"] == 60 and "InWRte" not in expected
    assert list(expected)[-1] == "StorCtl_Mod"
    regs = registers_after(H124, earlier + writes, {"InOutWRte_SF": -2})
    back = decode_model(model_def(124), H124.address, regs)
    assert verify(expected, back.raw) == []
    assert back.raw["InWRte"] == 8000  # the earlier charge's 80 % is still in the register
    assert charge_only_from_raw(H124, back.raw)
    got = setpoint_from_raw(H124, back.raw, max_charge_w=5000.0, sf=-2, convention=convention)
    assert got is None
    # a setpoint is not charge only
    setpoint = registers_after(H124, earlier, {"InOutWRte_SF": -2})
    assert not charge_only_from_raw(H124, decode_model(model_def(124), H124.address, setpoint).raw)


def test_charge_only_is_refused_where_it_cannot_be_said() -> None:
    with pytest.raises(CommandError, match="charge only needs model 124"):
        encode_storage(H704, StorageCommand(None, charge_only=True), max_charge_w=None, sf=0)
    with pytest.raises(CommandError, match="no setpoint"):
        StorageCommand(-1000.0, charge_only=True)


def test_704_wset_is_used_where_present_and_reverts_to_the_own_mode() -> None:
    smap = SunSpecMap(40000, (ModelHeader(124, 40070, 24), H704, ModelHeader(713, 40400, 7)))
    assert storage_control_model(smap, {"WSetEna": 0, "WSetRvrtTms": 0}).id == 704
    assert storage_control_model(smap, {"WSetEna": None}).id == 124  # WSet not implemented
    writes, expected = encode_storage(
        H704, StorageCommand(-3000.0, revert_s=60), max_charge_w=None, sf=0
    )
    assert (
        expected["WSetEnaRvrt"] == 0 and expected["WSetRvrtTms"] == 60 and expected["WSetEna"] == 1
    )
    regs = registers_after(H704, writes, {"WSet_SF": 0})
    back = decode_model(model_def(704), H704.address, regs)
    assert verify(expected, back.raw) == []
    assert setpoint_from_raw(H704, back.raw, max_charge_w=None, sf=0) == -3000.0
    _, off = encode_storage(H704, StorageCommand(None), max_charge_w=None, sf=0)
    assert off == {"WSetEna": 0}


def test_bad_commands_are_refused_with_a_reason() -> None:
    with pytest.raises(CommandError, match="every command must expire"):
        StorageCommand(-1000.0, revert_s=0)
    with pytest.raises(CommandError, match="finite"):
        StorageCommand(float("nan"))
    with pytest.raises(CommandError, match="WChaMax"):
        encode_storage(H124, StorageCommand(-1000.0), max_charge_w=None, sf=0)
    with pytest.raises(NotControllableError, match="scale factor"):
        encode_storage(H124, StorageCommand(-1000.0), max_charge_w=5000.0, sf=99)
    with pytest.raises(CommandError, match="no model 124"):
        storage_control_model(SunSpecMap(40000, (ModelHeader(103, 40002, 50),)))


# --- a hybrid without 802 W: shown, not controlled, and the status says why -----------------

HYBRID_NO_802 = {
    103: {"W": 6200.0},  # PV and battery mixed: the inverter's AC output
    124: {"WChaMax": 5000.0, "ChaState": 61.0, "StorCtl_Mod": 0, "InWRte": 100.0},
    713: {"WHRtg": 10000.0, "SoC": 60.5},
    704: {"WSetEna": 0, "WSet": 0.0},
}


def test_a_hybrid_without_802_w_is_not_controlled_and_the_reason_says_so() -> None:
    """124, 713 and 704 give SoC, rating and setpoints but no battery power: a hybrid's AC
    W is not it, so it is not controllable, and the reason names model 802 W and the models
    it does have, plainly."""
    r = read_storage(HYBRID_NO_802, ac_coupled=False)
    assert r.soc_pct == 60.5 and r.max_charge_w == 5000.0 and r.power_w is None
    assert not r.controllable
    why = not_controllable_reason(r, [1, 103, 124, 713, 704], ac_coupled=False)
    assert why is not None
    assert "model 802 W" in why and "no model 802" in why and "1, 103, 124, 713, 704" in why
    assert "left in its own mode" in why and "export is still held" in why
    with_802 = read_storage({**HYBRID_NO_802, 802: {"SoC": 60.0}}, ac_coupled=False)
    why_802 = not_controllable_reason(with_802, [1, 103, 124, 713, 802], ac_coupled=False)
    assert why_802 is not None and "its model 802 does not implement W" in why_802


def test_the_same_models_on_an_ac_battery_are_controllable_and_802_w_makes_a_hybrid_so() -> None:
    ac = read_storage(HYBRID_NO_802, ac_coupled=True)  # its own inverter: 103 W is the battery
    assert ac.controllable and not_controllable_reason(ac, [1, 103, 124, 713]) is None
    hybrid = read_storage({**HYBRID_NO_802, 802: {"W": -3000.0}}, ac_coupled=False)
    assert hybrid.power_w == -3000.0
    assert not_controllable_reason(hybrid, [1, 103, 124, 713, 802], ac_coupled=False) is None


def test_a_battery_missing_soc_or_rating_says_which() -> None:
    why = not_controllable_reason(read_storage({103: {"W": 0.0}}), [1, 103])
    assert why == (
        "not controlled: the battery reports no state of charge (713 SoC, 802 SoC or 124 "
        "ChaState), no charge rating (802 WChaRteMax or 124 WChaMax)"
    )
    no_power = not_controllable_reason(read_storage({124: {"WChaMax": 1.0, "ChaState": 5.0}}), [])
    assert no_power is not None and no_power.endswith(
        "no power (its measurement model's W, 802 W or model 160's StCha/StDisCha modules)"
    )


def test_a_state_of_charge_beyond_0_to_100_is_unknown() -> None:
    """1000 % (a wrong scale factor) was taken at its word: the law discharged to hold an import
    limit whatever the real charge, the owner's reserve protecting nothing."""
    assert read_storage({713: {"SoC": 1000.0}}).soc_pct is None
    assert read_storage({713: {"SoC": -5.0}}).soc_pct is None
    assert read_storage({713: {"SoC": 1000.0}, 802: {"SoC": 60.0}}).soc_pct == 60.0
    assert read_storage({713: {"SoC": 100.0}}).soc_pct == 100.0
    assert read_storage({713: {"SoC": 0.0}}).soc_pct == 0.0


@pytest.mark.parametrize("model", [124, 704])
def test_the_enable_is_written_after_the_setpoint_and_its_revert_timer(model: int) -> None:
    """By address, 704's WSetEna and 124's StorCtl_Mod came first: a link lost before the next
    write left the setpoint in force with no revert timer."""
    header = H704 if model == 704 else ModelHeader(124, 40070, 24)
    writes, expected = encode_storage(
        header, StorageCommand(-3000.0, revert_s=60), max_charge_w=5000.0, sf=0
    )
    enable = "WSetEna" if model == 704 else "StorCtl_Mod"
    timer = "WSetRvrtTms" if model == 704 else "InOutWRte_RvrtTms"

    mdef = model_def(model)
    assert mdef is not None

    def write_of(point: str) -> int:
        address = header.address + mdef.point(point).offset
        return next(
            k for k, w in enumerate(writes) if w.address <= address < w.address + len(w.values)
        )

    assert len(writes) >= 2  # not one block on these models
    assert write_of(enable) == len(writes) - 1 > write_of(timer)
    sfs = {"WSet_SF": 0} if model == 704 else {"InOutWRte_SF": 0}
    regs = registers_after(header, writes, sfs)
    assert verify(expected, decode_model(mdef, header.address, regs).raw) == []


def test_124_percentages_are_of_its_own_wchamax_not_the_802_rating() -> None:
    """Asked for 2500 W with 802 WChaRteMax 5000 W and 124 WChaMax 2500 W: 50 % was written,
    and a device applying it to its WChaMax charged 1250 W (the read-back said 2500)."""
    header = ModelHeader(124, 40070, 24)
    reading = read_storage(
        {124: {"WChaMax": 2500.0, "ChaState": 50.0}, 802: {"WChaRteMax": 5000.0, "SoC": 50.0}}
    )
    assert reading.max_charge_w == 5000.0  # the battery's rating, for the law
    base = percent_base_w(header, {"WChaMax": 2500.0}, reading.max_charge_w)
    assert base == 2500.0
    _, values = encode_storage(header, StorageCommand(-2500.0), max_charge_w=base, sf=0)
    assert values["InWRte"] == 100  # all of its WChaMax
    assert setpoint_from_raw(header, values, max_charge_w=base, sf=0) == -2500.0
    assert percent_base_w(header, {"WChaMax": None}, 5000.0) == 5000.0  # not implemented
    assert percent_base_w(H704, {}, 5000.0) == 5000.0  # 704 takes watts
