"""The command line on ordinary bad input and ordinary site states: a clear line, no traceback.

A missing file, an unreachable inverter, an out-of-range number are the installer's everyday,
not faults of ours: each ends with one line naming the problem and a non-zero status (argparse's
2 for a bad option), never a Python traceback, and never a hang."""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynexport.cli import build_parser, main, sole_exception
from dynexport.sep2 import cert_cli
from tests.ports import refusing_port

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main`` points the root logger at this test's stderr; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Parses ``argv`` as the command line would; returns argparse's complaint (exit 2)."""
    with pytest.raises(SystemExit) as stop:
        build_parser(argv).parse_args(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


# --- dynexport demo ------------------------------------------------------------------------------


def test_demo_every_zero_is_refused_instead_of_spinning_forever() -> None:
    """--every 0 made the simulated utility's step loop never advance: the process spun,
    allocating, until killed (Ctrl-C could not reach it)."""

    def limit_memory() -> None:  # a runaway must not take the machine with it
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("JOURNAL_STREAM", None)
    argv = ["demo", "--every", "0", "--seconds", "1", "--port", "0"]
    try:
        got = subprocess.run(
            [sys.executable, "-m", "dynexport", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            preexec_fn=limit_memory,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("dynexport demo --every 0 never ended") from None
    assert got.returncode == 2, got.stderr[-2000:]
    assert "--every" in got.stderr
    assert "Traceback" not in got.stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--every", "-5"),
        ("--every", "0"),
        ("--port", "99999"),
        ("--port", "-1"),
        ("--seconds", "-1"),
        ("--seconds", "nan"),
    ],
)
def test_demo_refuses_an_out_of_range_option_naming_it(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refused(["demo", option, value], capsys)
    assert f"argument {option}:" in err


def test_demo_still_takes_port_0_one_second_steps_and_zero_seconds() -> None:
    args = build_parser(["demo"]).parse_args(
        ["demo", "--port", "0", "--every", "1", "--seconds", "0"]
    )
    assert (args.port, args.every, args.seconds) == (0, 1, 0.0)


def test_demo_with_a_data_folder_it_cannot_create_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    data = tmp_path / "a-file" / "demo"
    status = main(["demo", "--data", str(data), "--port", "0", "--seconds", "1"])
    err = capsys.readouterr().err
    assert status == 1
    assert "--data" in err and str(data.parent) in err, err
    assert "Traceback" not in err


def test_demo_that_cannot_write_its_data_folder_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder exists, but the simulated utility's PKI cannot be written into it."""
    (tmp_path / "pki").write_text("")
    status = main(["demo", "--data", str(tmp_path), "--port", "0", "--seconds", "1"])
    err = capsys.readouterr().err
    assert status == 1
    assert f"dynexport demo: cannot run: {tmp_path / 'pki'}" in err, err
    assert "Traceback" not in err


# --- dynexport run -------------------------------------------------------------------------------


def test_run_refuses_a_web_port_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    """99999 was taken, and the web server listened on 99999 - 65536 instead."""
    assert "argument --port:" in _refused(["run", "--port", "99999"], capsys)


# --- dynexport cert ------------------------------------------------------------------------------


def test_cert_show_of_a_missing_file_names_it_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "device-chain.pem"
    assert main(["cert", "show", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"dynexport: error: {missing}: No such file or directory\n"


def test_cert_sign_with_a_missing_csr_names_it_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "device.csr"
    mica = ["--mica-cert", str(tmp_path / "mica.pem"), "--mica-key", str(tmp_path / "key.pem")]
    status = main(["cert", "sign", "--csr", str(missing), *mica, "--out", str(tmp_path / "o.pem")])
    assert status == 2
    assert capsys.readouterr().err == f"dynexport: error: {missing}: No such file or directory\n"


def test_cert_request_into_a_folder_it_cannot_make_says_so_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    folder = tmp_path / "a-file" / "certs"
    assert main(["cert", "request", "--dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynexport: error: ") and "Not a directory" in err, err
    assert "Traceback" not in err


# --- dynexport sep2 walk -------------------------------------------------------------------------


def _pending_chain_config(folder: Path) -> Path:
    """A configuration whose signed chain has not arrived yet (the web accepts it so)."""
    path = folder / "config.json"
    path.write_text(
        json.dumps(
            {
                "inverters": [{"tcp": "127.0.0.1:1502", "unit": 1}],
                "meter": {"tcp": "127.0.0.1:1502", "unit": 240},
                "utility": {
                    "server": "https://127.0.0.1:9",
                    "nmi": "4312345678",
                    "ca": "serca.pem",
                    "cert": "device-chain.pem",
                    "key": "device-key.pem",
                },
            }
        )
    )
    return path


def test_sep2_walk_before_the_signed_chain_arrives_says_so_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _pending_chain_config(tmp_path)
    assert main(["sep2", "walk", "--config", str(config)]) == 1
    got = capsys.readouterr()
    chain = tmp_path / "device-chain.pem"
    assert got.out == (
        f"sep2 walk failed: the device certificate chain {chain} cannot be used: "
        "No such file or directory\n"
    )
    assert "Traceback" not in got.err


def test_sep2_walk_json_before_the_signed_chain_arrives_is_a_json_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _pending_chain_config(tmp_path)
    assert main(["sep2", "walk", "--config", str(config), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["lfdi"] is None
    assert "device-chain.pem" in doc["error"]


def test_sep2_walk_with_a_chain_that_is_not_a_certificate_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _pending_chain_config(tmp_path)
    (tmp_path / "device-chain.pem").write_text("not yet\n")
    assert main(["sep2", "walk", "--config", str(config)]) == 1
    got = capsys.readouterr()
    assert got.out.startswith("sep2 walk failed: the device certificate chain "), got
    assert "Traceback" not in got.err


# --- dynexport sunspec limit ---------------------------------------------------------------------


def test_sunspec_limit_on_an_unreachable_inverter_says_so_without_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with refusing_port() as port:
        where = ["--tcp", f"127.0.0.1:{port}", "--unit", "1"]
        status = main(["sunspec", "limit", *where, "--percent", "50", "--timeout", "0.2"])
    err = capsys.readouterr().err
    assert status == 1
    assert f"limit failed: 127.0.0.1:{port}" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--percent", "150"),
        ("--percent", "-1"),
        ("--percent", "nan"),
        ("--watts", "-1"),
        ("--watts", "inf"),
        ("--revert-s", "0"),
        ("--revert-s", "70000"),
        ("--baud", "0"),
    ],
)
def test_sunspec_limit_refuses_an_out_of_range_option_before_connecting(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    what = [] if option in ("--percent", "--watts") else ["--clear"]
    argv = ["sunspec", "limit", "--tcp", "127.0.0.1:9", "--unit", "1", *what, option, value]
    assert f"argument {option}:" in _refused(argv, capsys)


def test_sunspec_limit_still_takes_the_ends_of_its_ranges() -> None:
    argv = ["sunspec", "limit", "--tcp", "127.0.0.1:9", "--unit", "1", "--percent", "100"]
    args = build_parser(argv).parse_args([*argv, "--revert-s", "65534"])
    assert (args.percent, args.revert_s) == (100.0, 65534)
    argv = ["sunspec", "limit", "--tcp", "127.0.0.1:9", "--unit", "1", "--watts", "0"]
    assert build_parser(argv).parse_args(argv).watts == 0.0


# --- the last line of defence (cli.main) ---------------------------------------------------------


def _raising(exc: BaseException) -> object:
    def handler(args: object) -> int:
        raise exc

    return handler


def test_an_unforeseen_os_error_is_one_line_and_its_traceback_only_with_verbose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An OSError no handler foresaw (here inside trio's group of one) is the machine's state:
    one line naming it; -v adds the traceback."""
    error = PermissionError(13, "Permission denied", "/data/x")
    monkeypatch.setattr(cert_cli, "_show", _raising(ExceptionGroup("nursery", [error])))
    assert main(["cert", "show", "x.pem"]) == 1
    err = capsys.readouterr().err
    assert err == "dynexport: error: [Errno 13] Permission denied: '/data/x'\n"
    assert main(["-v", "cert", "show", "x.pem"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_fault_in_a_group_of_one_keeps_its_traceback_and_says_what_it_was(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fault = RuntimeError("discover() has not run")
    monkeypatch.setattr(cert_cli, "_show", _raising(ExceptionGroup("nursery", [fault])))
    assert main(["cert", "show", "x.pem"]) == 1
    err = capsys.readouterr().err
    assert "unexpected RuntimeError" in err and "Traceback" in err
    assert err.endswith("dynexport: error: discover() has not run\n")


def test_sole_exception_unwraps_only_groups_of_one() -> None:
    inner = OSError("x")
    assert sole_exception(ExceptionGroup("a", [ExceptionGroup("b", [inner])])) is inner
    two = ExceptionGroup("a", [inner, ValueError()])
    assert sole_exception(two) is two
    assert sole_exception(inner) is inner
