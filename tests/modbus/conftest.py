"""Fixtures for the Modbus transport tests: real pymodbus peers, stopped after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.modbus.servers import (
    PymodbusServer,
    pymodbus_rtu_server,
    pymodbus_tcp_server,
    socat_pty_pair,
)


@pytest.fixture
def tcp_server() -> Iterator[PymodbusServer]:
    with pymodbus_tcp_server() as server:
        yield server


@pytest.fixture
def pty_pair() -> Iterator[tuple[str, str]]:
    with socat_pty_pair() as pair:
        yield pair


@pytest.fixture
def rtu_server(pty_pair: tuple[str, str]) -> Iterator[tuple[PymodbusServer, str]]:
    """A pymodbus RTU server on one pty; the test's client opens the returned other one."""
    server_end, client_end = pty_pair
    with pymodbus_rtu_server(server_end) as server:
        yield server, client_end
