"""The configuration loader: accepted shapes, and errors that name the key path and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynexport.cli import main
from dynexport.modbus.endpoints import SerialEndpoint, TcpEndpoint, parse_tcp
from dynexport.system.config import ConfigError, load_config, parse_config
from dynexport.system.config_file import load_site_config

ISSUE_EXAMPLE = {
    "inverters": [
        {"type": "sunspec", "tcp": "192.168.1.50:502", "unit": 1},
        {"type": "sunspec", "rtu": "/dev/ttyUSB0", "baud": 9600, "parity": "N", "unit": 2},
    ],
    "meter": {"type": "sunspec", "tcp": "192.168.1.50:502", "unit": 240, "location": "feedin"},
}


def problems_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=Path("/etc/dynexport"))
    return info.value.problems


def test_the_documented_example_loads_with_every_field():
    config = parse_config(ISSUE_EXAMPLE, base_dir=Path("/etc/dynexport"))
    assert config.inverters[0].endpoint == TcpEndpoint("192.168.1.50", 502)
    assert config.inverters[0].unit == 1
    assert config.inverters[1].endpoint == SerialEndpoint("/dev/ttyUSB0", 9600, "N", 1)
    assert config.inverters[1].unit == 2
    assert config.meter is not None
    assert config.meter.unit == 240
    assert config.meter.location == "feedin"
    assert config.control.revert_s == 60


def test_devices_naming_the_same_endpoint_share_one_connection():
    config = parse_config(ISSUE_EXAMPLE, base_dir=Path("/"))
    endpoints = config.endpoints()
    assert endpoints == [
        TcpEndpoint("192.168.1.50", 502),
        SerialEndpoint("/dev/ttyUSB0", 9600, "N", 1),
    ]


def test_unit_out_of_range_names_the_path_and_range():
    data = json.loads(json.dumps(ISSUE_EXAMPLE))
    data["inverters"][1]["unit"] = 300
    assert problems_of(data) == ["inverters[1].unit: must be 1..247"]


def test_every_problem_is_reported_at_once():
    data = {
        "inverters": [{"tcp": "host:99999", "unit": 0}, {"unit": 3}],
        "meter": {"tcp": "m", "unit": "two", "location": "consumption"},
        "colour": "blue",
    }
    problems = problems_of(data)
    assert "colour: unknown key" in problems
    assert "inverters[0].tcp: port must be 1..65535, not 99999" in problems
    assert "inverters[0].unit: must be 1..247" in problems
    assert any(p.startswith('inverters[1]: needs exactly one of "tcp"') for p in problems)
    assert "meter.unit: must be a whole number 1..247, not the string 'two'" in problems


def test_consumption_meter_is_refused_with_the_reason():
    data = {"meter": {"tcp": "10.0.0.2", "unit": 240, "location": "consumption"}}
    (problem,) = problems_of(data)
    assert problem.startswith('meter.location: must be "feedin"')


def test_misspelt_key_suggests_the_right_one():
    data = {"inverters": [{"tcp": "10.0.0.2", "Unit": 1}]}
    problems = problems_of(data)
    assert "inverters[0].Unit: unknown key (did you mean 'unit'?)" in problems
    assert "inverters[0].unit: is required (the Modbus unit id, 1..247)" in problems


def test_line_settings_only_apply_to_serial_devices():
    data = {"inverters": [{"tcp": "10.0.0.2", "unit": 1, "baud": 9600}]}
    assert problems_of(data) == ['inverters[0].baud: only applies to "rtu" devices']


def test_bad_serial_settings_are_named():
    data = {"inverters": [{"rtu": "/dev/ttyUSB0", "unit": 1, "baud": 9601, "parity": "X"}]}
    problems = problems_of(data)
    assert any(p.startswith("inverters[0].baud: must be one of 1200, 2400") for p in problems)
    assert "inverters[0].parity: must be one of 'N', 'E', 'O', not 'X'" in problems


def test_one_rs485_bus_cannot_have_two_line_settings():
    data = {
        "inverters": [
            {"rtu": "/dev/ttyUSB0", "unit": 1, "baud": 9600},
            {"rtu": "/dev/ttyUSB0", "unit": 2, "baud": 19200},
        ]
    }
    (problem,) = problems_of(data)
    assert problem.startswith("inverters[1]: uses /dev/ttyUSB0")
    assert "share its settings" in problem


def test_the_same_device_twice_is_an_error():
    data = {
        "inverters": [{"tcp": "10.0.0.2", "unit": 1}],
        "meter": {"tcp": "10.0.0.2:502", "unit": 1},
    }
    assert problems_of(data) == ["meter: is the same device (10.0.0.2:502 unit 1) as inverters[0]"]


def test_top_level_must_be_an_object():
    assert problems_of([1, 2]) == ["(top level): must be an object, not a list"]


def test_relative_serial_paths_resolve_against_the_files_folder(tmp_path: Path):
    path = tmp_path / "conf" / "dynexport.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"inverters": [{"rtu": "ttyV0", "unit": 1}]}))
    config = load_config(path)
    endpoint = config.inverters[0].endpoint
    assert isinstance(endpoint, SerialEndpoint)
    assert endpoint.device == str(tmp_path / "conf" / "ttyV0")
    assert config.base_dir == path.parent


def test_invalid_json_names_line_and_column(tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "inverters": [,]\n}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith("not valid JSON at line 2 column")
    assert str(path) in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "absent.json")


def test_revert_timeout_is_bounded():
    assert problems_of({"control": {"revertS": 5}}) == ["control.revertS: must be 10..3600"]
    assert parse_config({"control": {"revertS": 120}}).control.revert_s == 120


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("10.0.0.5", "10.0.0.5", 502),
        ("inverter.local:1502", "inverter.local", 1502),
        ("[fe80::1]:5020", "fe80::1", 5020),
    ],
)
def test_tcp_endpoints_parse_with_default_port(text: str, host: str, port: int):
    assert parse_tcp(text) == TcpEndpoint(host, port)


def test_config_check_command_lists_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"inverters": [{"tcp": "h", "unit": 999}]}))
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "inverters[0].unit: must be 1..247" in err
    path.write_text(json.dumps(ISSUE_EXAMPLE))
    assert main(["config", "check", str(path)]) == 0


UTILITY = {
    "type": "csip-aus",
    "server": "https://host:8443",
    "dcap": "/dcap",
    "ca": "serca.pem",
    "cert": "device-chain.pem",
    "key": "/data/keys/device-key.pem",
    "nmi": "4312345678",
    "pin": 111115,
}


def test_utility_section_loads_with_paths_resolved_against_the_config_folder():
    config = parse_config({"utility": UTILITY}, base_dir=Path("/etc/dx"))
    u = config.utility
    assert u is not None
    assert u.server == "https://host:8443"
    assert u.ca == Path("/etc/dx/serca.pem")
    assert u.cert == Path("/etc/dx/device-chain.pem")
    assert u.key == Path("/data/keys/device-key.pem")
    assert (u.nmi, u.pin, u.dcap, u.check_hostname, u.ciphers) == (
        "4312345678",
        111115,
        "/dcap",
        True,
        (),
    )


def test_utility_problems_name_their_keys():
    bad = dict(UTILITY, server="http://host", nmi="12", pin=-1, ciphers="ALL")
    del bad["ca"]
    problems = problems_of({"utility": bad})
    assert "utility.server: must be https://HOST[:PORT], not 'http://host'" in problems
    assert "utility.nmi: must be the site's 10 or 11 character NMI" in problems
    assert "utility.pin: must be 0..999999" in problems
    assert "utility.ca: must be a non-empty string, not null" in problems
    assert "utility.ciphers: must be a list of OpenSSL cipher names" in problems


def test_limits_control_and_web_sections_load():
    config = parse_config(
        {
            "limits": {
                "exportW": 5000,
                "generationW": None,
                "importW": None,
                "loadW": None,
                "connect": True,
                "windows": [{"from": "10:00", "to": "16:00", "exportW": 0}],
            },
            "control": {"intervalS": 0.5, "meterStaleS": 4, "failsafeGenerationW": 1500},
            "web": {"host": "127.0.0.1", "port": 8080},
        }
    )
    assert config.limits.export_w == 5000
    assert config.limits.windows[0].export_w == 0
    assert config.control.interval_s == 0.5
    assert config.control.failsafe_generation_w == 1500
    assert (config.web.host, config.web.port) == ("127.0.0.1", 8080)


def test_limit_problems_join_the_other_problems_with_their_paths():
    problems = problems_of(
        {
            "limits": {"exportw": 5000, "windows": [{"from": "25:00", "to": "16:00"}]},
            "control": {"intervalS": 30},
            "web": {"port": 0},
        }
    )
    assert any(p.startswith("limits.exportw: unknown key") for p in problems)
    assert any(p.startswith("limits.windows[0].from:") for p in problems)
    assert "control.intervalS: must be 0.2..10" in problems
    assert "web.port: must be 1..65535" in problems


def test_revert_timeout_must_cover_several_control_intervals():
    assert problems_of({"control": {"intervalS": 5, "revertS": 12}}) == [
        "control.revertS: must be at least three control intervals"
    ]


def test_a_pen_must_fit_the_eight_decimal_digits_that_end_every_mrid() -> None:
    base = {"server": "https://u", "ca": "a", "cert": "b", "key": "c", "nmi": "4312345678"}
    assert parse_config({"utility": {**base, "pen": 99_999_999}}).utility.pen == 99_999_999  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as err:
        parse_config({"utility": {**base, "pen": 100_000_000}})
    assert err.value.problems == ["utility.pen: must be 0..99999999"]
    assert parse_config({"utility": base}).utility.fallback_export_w == 1500  # type: ignore[union-attr]


def test_a_key_given_twice_is_named_and_refused_by_config_check_but_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A hand-edited file with ``"limits"`` twice: the JSON decoder kept the last copy, so the
    first one's 0 W export limit vanished (no limit at all) and `config check` said OK. Now it
    is named; `config check` fails on it, while `run` (which an earlier release ran on it)
    goes on with the last copy and shows the problem: an update never takes limits away."""
    path = tmp_path / "config.json"
    path.write_text(
        '{"version": 1,\n'
        ' "limits": {"exportW": 0},\n'
        ' "site": {"timeZone": "Australia/Brisbane"},\n'
        ' "limits": {"windows": [{"from": "10:00", "to": "16:00", "exportW": 3000}]}}\n'
    )
    twice = "limits: given twice (only the last would count); running with its last value"
    assert load_config(path).cautions == (twice,)
    config, notices = load_site_config(path)
    assert notices == [twice] and config.limits.windows
    assert f"config.json: {twice}" in caplog.text  # a headless site says so in its journal
    assert main(["config", "check", str(path)]) == 1
    assert f"usable, but to be fixed\n  {twice}" in capsys.readouterr().err
    path.write_text('{"inverters": [{"tcp": "127.0.0.1:502", "unit": 1, "unit": 2}],'
                    ' "limits": {"exportW": 0, "exportW": null}}')  # fmt: skip
    assert [c.split(":")[0] for c in load_config(path).cautions] == [
        "inverters[0].unit",
        "limits.exportW",
    ]


@pytest.mark.parametrize("host", ["192.168.1.1OO", "dynexport-setup", "0.0.0.0.0"])
def test_a_web_host_that_is_not_an_ip_address_is_named(host: str) -> None:
    """Any string passed: at the next start the web server could not bind it, was restarted
    with backoff for ever, and the web UI needed to put it right was gone."""
    assert parse_config({"web": {"host": host}}).cautions == (
        f"web.host: must be an IP address (0.0.0.0: every one), not {host!r}",
    )
    assert parse_config({"web": {"host": "::"}}).cautions == ()


@pytest.mark.parametrize("server", ["https://sep2.example:99999", "https://sep2.example:x"])
def test_a_utility_server_port_out_of_range_is_named(server: str) -> None:
    """`config check` said OK; the link was never built (InvalidUrl) and the fallback export
    limit held for good without the configuration saying why."""
    utility = {"server": server, "ca": "a", "cert": "b", "key": "c", "nmi": "4312345678"}
    assert parse_config({"utility": utility}).cautions == (
        f"utility.server: its port must be 1..65535, not {server!r}",
    )
