"""The simulator served over Modbus, checked with independent clients (pysunspec2, pymodbus)."""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sunspec2.modbus.client as ss_client
import trio
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from dynexport.sim import profiles
from dynexport.sim.modbus_server import (
    CONTROL_LINE_LIMIT,
    control_reply,
    send_control,
    serve_rtu,
    serve_tcp,
)
from dynexport.sim.sunspec_device import Site

ACCUMULATING = re.compile(r"Wh|WH")  # energy counters move between two reads


def iter_points(group: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, point in group.points.items():
        yield prefix + name, point
    for gname, sub in group.groups.items():
        if isinstance(sub, list):
            for i, g in enumerate(sub):
                yield from iter_points(g, f"{gname}[{i}].")
        else:
            yield from iter_points(sub, f"{gname}[0].")


def assert_same_values(client_device, site: Site, unit: int) -> None:
    """Every point pysunspec2 decodes equals the simulator's value (None = not implemented)."""
    device = site.devices[unit]
    found = [m for m in client_device.models if isinstance(m, int)]
    assert found == list(device.model_addresses)
    for model_id in found:
        model = client_device.models[model_id][0]
        assert model.error_info == ""
        for path, point in iter_points(model):
            if ACCUMULATING.search(path) or point.pdef["type"] == "pad":
                continue
            ours = site.get(unit, model_id, path)
            theirs = point.cvalue
            if isinstance(ours, float) or isinstance(theirs, float):
                assert theirs == pytest.approx(ours, rel=1e-6, abs=1e-9), (model_id, path)
            else:
                assert theirs == ours, (model_id, path)


def scan_tcp(port: int, unit: int):
    dev = ss_client.SunSpecModbusClientDeviceTCP(
        slave_id=unit, ipaddr="127.0.0.1", ipport=port, timeout=2
    )
    dev.scan()
    return dev


def wait_for(predicate, timeout: float = 15.0) -> None:
    """Poll until ``predicate()`` holds; fail (not hang) if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached")
        time.sleep(0.02)


@pytest.mark.parametrize("name", sorted(profiles.PROFILES))
def test_pysunspec2_decodes_every_served_profile(name):
    site = profiles.PROFILES[name]()
    with serve_tcp(site) as server:
        assert server.port
        for unit, device in site.devices.items():
            client = scan_tcp(server.port, unit)
            try:
                assert client.base_addr == device.base
                assert_same_values(client, site, unit)
            finally:
                client.close()


def test_pysunspec2_limit_through_model_123_reduces_power():
    site = profiles.fronius_gateway(tau_s=0.05)
    with serve_tcp(site) as server:
        client = scan_tcp(server.port, 2)
        try:
            controls = client.models[123][0]
            controls.WMaxLimPct.cvalue = 25.0  # of 8200 W
            controls.WMaxLimPct_RvrtTms.value = 60
            controls.WMaxLim_Ena.value = 1
            controls.write()
            wait_for(lambda: site.output_w(2) < 2050 * 1.01)
            inverter = client.models[103][0]
            wait_for(lambda: (inverter.read(), inverter.W.cvalue)[1] <= 2071)
            controls.read()
            assert controls.WMaxLim_Ena.value == 1
            assert controls.WMaxLimPct.cvalue == pytest.approx(25.0)
            assert site.output_w(1) == pytest.approx(4000.0)
            meter = scan_tcp(server.port, 240)
            try:
                assert meter.models[203][0].W.cvalue > 1500 - 4000 - 6000
            finally:
                meter.close()
        finally:
            client.close()


def test_pysunspec2_limit_through_model_704_reduces_power():
    site = profiles.der2018_inverter(tau_s=0.05)
    with serve_tcp(site) as server:
        client = scan_tcp(server.port, 1)
        try:
            ctl = client.models[704][0]
            ctl.WMaxLimPct.cvalue = 10.0  # of 6000 W
            ctl.WMaxLimPctRvrtTms.value = 120
            ctl.WMaxLimPctEna.value = 1
            ctl.write()
            wait_for(lambda: site.output_w(1) < 600 * 1.01)
            ctl.read()
            assert ctl.WMaxLimPctEna.value == 1
            assert 0 < ctl.WMaxLimPctRvrtRem.value <= 120
        finally:
            client.close()


@pytest.fixture
def tcp_client() -> Iterator[tuple[Any, Site]]:
    site = profiles.fronius_gateway()
    with serve_tcp(site) as server:
        client: Any = ModbusTcpClient("127.0.0.1", port=server.port, timeout=1, retries=0)
        assert client.connect()
        try:
            yield client, site
        finally:
            client.close()


def test_exception_codes_over_tcp(tcp_client):
    client, site = tcp_client
    inv = site.devices[1]
    read_only = client.write_register(inv.point_address(103, "W"), 1, device_id=1)
    assert read_only.isError() and read_only.exception_code == 2
    beyond = client.read_holding_registers(inv.end, count=1, device_id=1)
    assert beyond.isError() and beyond.exception_code == 2
    too_high = client.write_register(inv.point_address(123, "WMaxLimPct"), 12000, device_id=1)
    assert too_high.isError() and too_high.exception_code == 3
    coils = client.read_coils(0, count=1, device_id=1)
    assert coils.isError() and coils.exception_code == 1
    unknown_unit = client.read_holding_registers(40000, count=2, device_id=7)
    assert unknown_unit.isError() and unknown_unit.exception_code == 0x0B
    ok = client.write_register(inv.point_address(123, "WMaxLim_Ena"), 1, device_id=1)
    assert not ok.isError()
    assert site.get(1, 123, "WMaxLim_Ena") == 1


def test_input_register_reads_serve_the_same_image(tcp_client):
    client, _site = tcp_client
    holding = client.read_holding_registers(40000, count=4, device_id=240)
    inputs = client.read_input_registers(40000, count=4, device_id=240)
    assert holding.registers == inputs.registers == [0x5375, 0x6E53, 1, 66]


def test_silent_missing_unit_gets_no_answer():
    with serve_tcp(profiles.no_control_inverter(), silent_missing_units=True) as server:
        client: Any = ModbusTcpClient("127.0.0.1", port=server.port, timeout=0.3, retries=0)
        assert client.connect()
        try:
            with pytest.raises(ModbusIOException):
                client.read_holding_registers(40000, count=2, device_id=9)
            assert client.read_holding_registers(40000, count=2, device_id=1).registers == [
                0x5375,
                0x6E53,
            ]
        finally:
            client.close()


def test_server_stops_and_frees_its_port():
    server = serve_tcp(profiles.sma_like())
    port = server.port
    server.stop()
    server.stop()  # idempotent
    client: Any = ModbusTcpClient("127.0.0.1", port=port, timeout=0.3, retries=0)
    try:
        assert not client.connect()
    finally:
        client.close()


def test_setters_are_seen_by_clients():
    site = profiles.fronius_gateway(tau_s=0.05)
    with serve_tcp(site) as server:
        site.set_load(20000.0)
        site.set_available(1, 1000.0)
        wait_for(lambda: site.get(240, 203, "W") == pytest.approx(20000 - 7000, abs=2))
        meter = scan_tcp(server.port, 240)
        try:
            assert meter.models[203][0].W.cvalue == pytest.approx(13000, abs=2)
        finally:
            meter.close()


async def test_usable_from_trio():
    site = profiles.sma_like()
    with serve_tcp(site) as server:
        client = await trio.to_thread.run_sync(scan_tcp, server.port, 126)
        try:
            assert client.models[1][0].Mn.value == "SMA"
            assert client.models[103][0].W.cvalue == pytest.approx(5000)
        finally:
            client.close()


@pytest.fixture
def pty_pair() -> Iterator[tuple[str, str]]:
    proc = subprocess.Popen(
        ["socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        paths: list[str] = []
        while len(paths) < 2:
            line = proc.stderr.readline()
            assert line, "socat exited"
            m = re.search(r"PTY is (\S+)", line)
            if m:
                paths.append(m.group(1))
        yield paths[0], paths[1]
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_rtu_through_a_pty_pair(pty_pair):
    server_end, client_end = pty_pair
    site = profiles.fronius_gateway(tau_s=0.05)
    with serve_rtu(site, server_end, baud=19200, parity="N"):
        for unit in (1, 240):
            client = ss_client.SunSpecModbusClientDeviceRTU(
                slave_id=unit, name=client_end, baudrate=19200, parity="N", timeout=2
            )
            try:
                client.scan()
                assert client.base_addr == 40000
                assert_same_values(client, site, unit)
                if unit == 1:
                    controls = client.models[123][0]
                    controls.Conn.value = 0
                    controls.write()
                    wait_for(lambda: math.isclose(site.output_w(1), 0.0, abs_tol=1.0))
            finally:
                client.close()


def test_command_line_serves_until_interrupted():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dynexport.sim.modbus_server",
            "--profile",
            "sma_like",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert m, line
        client = scan_tcp(int(m.group(1)), 126)
        try:
            assert client.models[1][0].Mn.value == "SMA"
        finally:
            client.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_reg(port: int, unit: int, address: int) -> int:
    client: Any = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    try:
        assert client.connect()
        return int(client.read_holding_registers(address, count=1, device_id=unit).registers[0])
    finally:
        client.close()


def test_control_channel_trips_an_inverter_seen_over_modbus():
    """ALL-07/08 drivers: the inverter leaves the grid on its own, a Modbus client sees it."""
    site = profiles.fronius_gateway(tau_s=0.05)
    with serve_tcp(site, control_port=0) as server:
        assert server.control_port is not None
        ecp_conn = site.devices[1].point_address(122, "ECPConn")
        assert _read_reg(server.port, 1, ecp_conn) == 1
        answer = send_control(server.control_port, {"unit": 1, "set": {"connected": False}})
        assert answer["ok"] is True
        assert answer["state"]["inverters"]["1"]["connected"] is False
        assert answer["state"]["inverters"]["1"]["outputW"] == 0.0
        assert _read_reg(server.port, 1, ecp_conn) == 0
        assert send_control(server.control_port, {"set": {"connected": True}})["ok"]
        assert _read_reg(server.port, 1, ecp_conn) == 1
        state = send_control(server.control_port, {})["state"]
        assert set(state["inverters"]) == {"1", "2"}


def test_control_channel_answers_bad_input_with_an_error_and_keeps_serving():
    site = profiles.sma_like()
    with serve_tcp(site, control_port=0) as server:
        assert server.control_port is not None
        with socket.create_connection(("127.0.0.1", server.control_port), timeout=5) as sock:
            stream = sock.makefile("rwb")
            for line in (b"not json\n", b'{"set": {"loadW": "lots"}}\n', b"[]\n", b'{"set": {}}\n'):
                stream.write(line)
                stream.flush()
                answers = json.loads(stream.readline())
                if line == b'{"set": {}}\n':
                    assert answers["ok"] is True
                else:
                    assert answers["ok"] is False and answers["error"]
            stream.write(b"x" * (CONTROL_LINE_LIMIT + 10) + b"\n")
            stream.flush()
            assert json.loads(stream.readline()) == {"ok": False, "error": "line too long"}
        assert send_control(server.control_port, {"set": {"loadW": 10}})["state"]["loadW"] == 10


def test_control_channel_is_served_only_when_asked():
    with serve_tcp(profiles.sma_like()) as server:
        assert server.control_port is None


def test_control_reply_never_raises():
    site = profiles.sma_like()
    assert control_reply(site, b"\xff\xfe", 0.0)["ok"] is False
    assert control_reply(site, b'{"unit": 126, "set": {"hold": true}}', 0.0)["ok"] is True
    assert site.held


def test_command_line_serves_the_control_channel():
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "dynexport.sim.modbus_server", "--profile", "sma_like"),
            *("--port", "0", "--control-port", "0"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        m = re.search(r"control channel on 127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert m
        answer = send_control(int(m.group(1)), {"unit": 126, "set": {"operating": False}})
        assert answer["state"]["inverters"]["126"]["operating"] is False
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
