"""The ``batteries`` configuration: shaped like ``inverters``, validated with key paths, the
same device allowed under both for a hybrid inverter, and kept by the web round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynexport.system.config import BatteryConfig, ConfigError, parse_config
from dynexport.web.configdoc import config_document

INVERTER = {"type": "sunspec", "tcp": "127.0.0.1:1502", "unit": 1}


def test_a_battery_list_parses_with_defaults_and_options(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "inverters": [INVERTER],
            "batteries": [
                {**INVERTER},  # the hybrid's own storage models
                {"type": "sunspec", "tcp": "127.0.0.1:1502", "unit": 3, "maxSocPct": 95,
                 "reserveSocPct": 30, "eveningSocPct": 80, "capacityWh": 13500,
                 "convention": "window", "dischargePositive": False, "plan": False},
            ],
        },
        tmp_path,
    )  # fmt: skip
    hybrid, ac = cfg.batteries
    assert isinstance(hybrid, BatteryConfig) and hybrid.unit == 1
    assert (hybrid.max_soc_pct, hybrid.reserve_soc_pct, hybrid.convention, hybrid.plan) == (
        100.0, 20.0, "sunspec", True,
    )  # fmt: skip
    assert (ac.max_soc_pct, ac.reserve_soc_pct, ac.evening_soc_pct, ac.capacity_wh) == (
        95.0, 30.0, 80.0, 13500.0,
    )  # fmt: skip
    assert ac.convention == "window" and not ac.discharge_positive and not ac.plan
    assert len(cfg.endpoints()) == 1  # one connection for all three


def test_bad_battery_settings_name_their_key_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "batteries": [
                    {**INVERTER, "reserveSocPct": 95, "maxSocPct": 90},
                    {**INVERTER, "unit": 2, "convention": "gen24", "maxsocpct": 90},
                    {**INVERTER, "unit": 4, "plan": "yes"},
                ],
            },
            tmp_path,
        )
    text = str(err.value)
    assert "batteries[0].reserveSocPct: must be 0..90" in text
    assert "batteries[1].convention: must be one of 'sunspec', 'window'" in text
    assert "batteries[1]" in text and "maxsocpct" in text
    assert "batteries[2].plan: must be true or false" in text
    with pytest.raises(ConfigError, match=r"batteries\[0\]: is the same device .* as meter"):
        parse_config({"batteries": [INVERTER], "meter": INVERTER}, tmp_path)


def test_the_reserve_must_be_below_the_maximum_and_a_battery_listed_twice_is_refused(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"batteries\[0\].reserveSocPct: must be below maxSocPct"):
        parse_config({"batteries": [{**INVERTER, "reserveSocPct": 60, "maxSocPct": 50}]}, tmp_path)
    with pytest.raises(ConfigError, match=r"batteries\[1\]: is the same battery"):
        parse_config({"inverters": [INVERTER], "batteries": [INVERTER, INVERTER]}, tmp_path)
    with pytest.raises(ConfigError, match=r"batteries\[1\]: is the same device"):
        parse_config({"batteries": [INVERTER, INVERTER]}, tmp_path)


def test_the_web_round_trip_keeps_the_batteries(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "inverters": [INVERTER],
            "batteries": [{**INVERTER, "unit": 3, "eveningSocPct": 70, "convention": "window"}],
        },
        tmp_path,
    )
    again = parse_config(config_document(cfg), tmp_path)
    assert again.batteries == cfg.batteries
    assert "batteries" not in config_document(parse_config({}, tmp_path))
