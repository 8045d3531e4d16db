"""One serial port under two names (a /dev/serial/by-id/ link and its tty) is one bus;
a port already open in this process, or locked by another program, is said to be in use."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import pytest
import trio

from dynexport.modbus.client import BusPool, open_bus
from dynexport.modbus.endpoints import SerialEndpoint
from dynexport.modbus.errors import ModbusConnectionError
from dynexport.modbus.serial_port import SerialPort
from tests.modbus.servers import HostilePeer, hostile_rtu_peer, read_answer_pdu, rtu_frame


async def answer_unit(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
    """Every read is answered with [unit, unit]."""
    await stream.send_all(rtu_frame(request[0], read_answer_pdu(request[1], [request[0]] * 2)))


def by_id(tmp_path: Path, target: str) -> str:
    link = tmp_path / "usb-FTDI_FT232R_USB_UART_A10K-if00-port0"
    os.symlink(target, link)
    return str(link)


async def test_a_link_and_its_tty_are_one_bus(tmp_path: Path) -> None:
    tty = tmp_path / "ttyUSB0"
    tty.touch()
    link = by_id(tmp_path, str(tty))
    async with BusPool() as pool:
        bus = pool.get(SerialEndpoint(str(tty), 9600))
        assert pool.get(SerialEndpoint(link, 9600)) is bus
        assert pool.serial_bus(link) is bus and pool.serial_bus(str(tty)) is bus
        assert pool.get(SerialEndpoint(str(tmp_path / "ttyUSB1"), 9600)) is not bus


async def test_devices_named_by_link_and_by_tty_share_the_open_port(
    pty_pair: tuple[str, str], tmp_path: Path
) -> None:
    """A meter configured as the tty and an inverter as its by-id link: before, two buses, and
    the second never took the port's exclusive lock (that device offline for good)."""
    peer_end, client_end = pty_pair
    link = by_id(tmp_path, client_end)
    with trio.fail_after(20):
        async with hostile_rtu_peer(peer_end, answer_unit), BusPool(timeout=2.0) as pool:
            meter = pool.get(SerialEndpoint(client_end, 9600))
            inverter = pool.get(SerialEndpoint(link, 9600))
            assert await meter.read_holding_registers(2, 40000, 2) == [2, 2]
            assert await inverter.read_holding_registers(1, 40000, 2) == [1, 1]


async def test_one_port_by_two_names_at_two_speeds_is_an_error_naming_both(
    pty_pair: tuple[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The config check compares names only (it does not look at the filesystem): the pool
    logs an error naming both names, and the second device's bus fails with it, while the
    first works on."""
    peer_end, client_end = pty_pair
    link = by_id(tmp_path, client_end)
    with trio.fail_after(20):
        async with hostile_rtu_peer(peer_end, answer_unit), BusPool(timeout=2.0) as pool:
            meter = pool.get(SerialEndpoint(client_end, 9600))
            with caplog.at_level(logging.ERROR, logger="dynexport.modbus"):
                inverter = pool.get(SerialEndpoint(link, 19200))
            assert pool.get(SerialEndpoint(link, 19200)) is inverter
            assert await meter.read_holding_registers(2, 40000, 2) == [2, 2]
            with pytest.raises(ModbusConnectionError) as err:
                await inverter.read_holding_registers(1, 40000, 2)
            assert await meter.read_holding_registers(2, 40000, 2) == [2, 2]
    said = str(err.value)
    assert link in said and client_end in said and "same serial port" in said
    assert "exclusively lock" not in said
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(link in m and client_end in m and "line settings" in m for m in errors), errors


async def test_a_second_bus_on_an_open_port_is_told_the_service_has_it(
    pty_pair: tuple[str, str], tmp_path: Path
) -> None:
    """Two buses in one process (say the port's link was not there yet when the pool was
    built): the second fails naming the first, not "could not exclusively lock"; once the
    first closes, the port is free again."""
    peer_end, client_end = pty_pair
    link = by_id(tmp_path, client_end)
    with trio.fail_after(20):
        async with hostile_rtu_peer(peer_end, answer_unit):
            async with open_bus(SerialEndpoint(client_end, 9600), retries=0) as first:
                assert await first.read_holding_registers(2, 40000, 2) == [2, 2]
                async with open_bus(SerialEndpoint(link, 9600), retries=1) as second:
                    with pytest.raises(ModbusConnectionError) as err:
                        await second.read_holding_registers(1, 40000, 2)
            said = str(err.value)
            assert "in use by the running service" in said
            assert f"{client_end}@9600N1" in said and link in said and "same serial port" in said
            async with open_bus(SerialEndpoint(link, 9600), retries=0) as again:
                assert await again.read_holding_registers(1, 40000, 2) == [1, 1]


async def test_a_port_locked_by_another_program_is_said_to_be_in_use(
    pty_pair: tuple[str, str],
) -> None:
    _peer_end, client_end = pty_pair
    fd = os.open(client_end, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the service's process would
        with pytest.raises(ModbusConnectionError, match="in use by another program"):
            SerialPort(SerialEndpoint(client_end, 9600))
    finally:
        os.close(fd)
    SerialPort(SerialEndpoint(client_end, 9600)).close()
