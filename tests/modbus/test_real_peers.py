"""The client against real pymodbus servers: Modbus TCP on 127.0.0.1 and RTU over a socat pty."""

from __future__ import annotations

import pytest
import trio

from dynexport.modbus.client import BusPool, ModbusBus, open_bus
from dynexport.modbus.endpoints import Endpoint, SerialEndpoint, TcpEndpoint
from dynexport.modbus.errors import ModbusConnectionError, ModbusExceptionResponse
from tests.modbus.servers import (
    HOLDING_BASE,
    INPUT_BASE,
    REGISTERS,
    PymodbusServer,
    holding_values,
    input_values,
)


def task_count() -> int:
    """Every task in this trio run: a leaked background task would raise it."""

    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return count(root)


async def round_trips(bus: ModbusBus, server: PymodbusServer) -> None:
    """Reads and writes with every function code, checked against the server's contents."""
    assert await bus.read_holding_registers(1, HOLDING_BASE, 125) == holding_values(1)[:125]
    assert await bus.read_holding_registers(2, HOLDING_BASE + 10, 3) == holding_values(2)[10:13]
    assert await bus.read_input_registers(1, INPUT_BASE, 50) == input_values(1)[:50]
    assert await bus.read_input_registers(2, INPUT_BASE + 199, 1) == [input_values(2)[199]]
    await bus.write_register(1, HOLDING_BASE + 5, 0xBEEF)
    await bus.write_registers(1, HOLDING_BASE + 6, [0, 65535, 42])
    await bus.write_registers(2, HOLDING_BASE, list(range(123)))
    expected = holding_values(1)[:10]
    expected[5:9] = [0xBEEF, 0, 65535, 42]
    assert await bus.read_holding_registers(1, HOLDING_BASE, 10) == expected
    assert await bus.read_holding_registers(2, HOLDING_BASE, 123) == list(range(123))
    assert await bus.read_holding_registers(2, HOLDING_BASE + 123, 1) == [holding_values(2)[123]]
    assert server.requests == 10


async def exception_is_reported_once(bus: ModbusBus, server: PymodbusServer) -> None:
    before = server.requests
    with pytest.raises(ModbusExceptionResponse) as err:
        await bus.read_holding_registers(1, HOLDING_BASE + REGISTERS, 2)
    exc = err.value
    assert (exc.unit, exc.function, exc.address, exc.code) == (1, 3, HOLDING_BASE + REGISTERS, 2)
    assert f"unit 1 function 3 address {HOLDING_BASE + REGISTERS}: exception 2" in str(exc)
    assert "illegal data address" in str(exc)
    assert str(bus.endpoint) in str(exc)
    assert server.requests == before + 1, "an exception response must not be retried"
    # The bus is still in step: the next request gets its own answer.
    assert await bus.read_input_registers(2, INPUT_BASE, 2) == input_values(2)[:2]


async def concurrent_requests_each_get_their_answer(bus: ModbusBus) -> None:
    results: dict[int, list[int]] = {}

    async def read(offset: int) -> None:
        results[offset] = await bus.read_holding_registers(2, HOLDING_BASE + offset, 4)

    async with trio.open_nursery() as nursery:
        for offset in range(0, 40, 2):
            nursery.start_soon(read, offset)
    assert results == {o: holding_values(2)[o : o + 4] for o in range(0, 40, 2)}


async def test_tcp_reads_and_writes_every_function_code(tcp_server: PymodbusServer) -> None:
    tasks = task_count()
    with trio.fail_after(10):
        async with open_bus(TcpEndpoint("127.0.0.1", tcp_server.port)) as bus:
            await round_trips(bus, tcp_server)
    assert task_count() == tasks


async def test_tcp_exception_response_names_unit_function_address(
    tcp_server: PymodbusServer,
) -> None:
    with trio.fail_after(10):
        async with open_bus(TcpEndpoint("127.0.0.1", tcp_server.port)) as bus:
            await exception_is_reported_once(bus, tcp_server)


async def test_tcp_concurrent_requests_are_serialized(tcp_server: PymodbusServer) -> None:
    with trio.fail_after(10):
        async with open_bus(TcpEndpoint("127.0.0.1", tcp_server.port)) as bus:
            await concurrent_requests_each_get_their_answer(bus)


async def test_rtu_reads_and_writes_every_function_code(
    rtu_server: tuple[PymodbusServer, str],
) -> None:
    server, device = rtu_server
    tasks = task_count()
    with trio.fail_after(10):
        async with open_bus(SerialEndpoint(device, 115200, "N", 1)) as bus:
            await round_trips(bus, server)
    assert task_count() == tasks


async def test_rtu_exception_response_names_unit_function_address(
    rtu_server: tuple[PymodbusServer, str],
) -> None:
    server, device = rtu_server
    with trio.fail_after(10):
        async with open_bus(SerialEndpoint(device, 115200, "N", 2)) as bus:
            await exception_is_reported_once(bus, server)


async def test_rtu_concurrent_requests_are_serialized(
    rtu_server: tuple[PymodbusServer, str],
) -> None:
    _server, device = rtu_server
    with trio.fail_after(10):
        async with open_bus(SerialEndpoint(device, 115200, "N", 1)) as bus:
            await concurrent_requests_each_get_their_answer(bus)


async def test_pool_shares_one_bus_per_endpoint_and_closes_them(
    tcp_server: PymodbusServer,
) -> None:
    tcp = TcpEndpoint("127.0.0.1", tcp_server.port)
    async with BusPool(timeout=2.0) as pool:
        bus = pool.get(tcp)
        assert pool.get(TcpEndpoint("127.0.0.1", tcp_server.port)) is bus
        assert pool.get(TcpEndpoint("127.0.0.1", 1)) is not bus
        serial: Endpoint = SerialEndpoint("/dev/ttyUSB7", 9600)
        assert pool.get(serial) is pool.get(SerialEndpoint("/dev/ttyUSB7", 9600))
        with pytest.raises(ValueError, match=r"/dev/ttyUSB7 used with different line settings"):
            pool.get(SerialEndpoint("/dev/ttyUSB7", 19200))
        assert await bus.read_holding_registers(1, HOLDING_BASE, 1) == holding_values(1)[:1]
    with pytest.raises(ModbusConnectionError, match="closed"):
        await bus.read_holding_registers(1, HOLDING_BASE, 1)
    with pytest.raises(ModbusConnectionError, match="closed"):
        pool.get(tcp)


async def test_unopenable_serial_port_is_a_connection_error() -> None:
    with trio.fail_after(10):
        async with open_bus(SerialEndpoint("/dev/does-not-exist", 9600), retries=0) as bus:
            with pytest.raises(ModbusConnectionError, match="cannot open serial port"):
                await bus.read_holding_registers(1, 0, 1)


async def test_connection_refused_is_a_connection_error_naming_the_endpoint() -> None:
    with trio.socket.socket() as sock:  # a port that is certainly closed: bound, not listening
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with trio.fail_after(10):
            async with open_bus(TcpEndpoint("127.0.0.1", port), retries=0) as bus:
                with pytest.raises(ModbusConnectionError, match=f"127.0.0.1:{port}"):
                    await bus.read_holding_registers(1, 0, 1)
