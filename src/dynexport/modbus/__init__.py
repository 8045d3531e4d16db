"""Modbus transport: trio I/O for TCP and RTU, frames encoded and decoded by pymodbus.

Import from here: ``from dynexport.modbus import BusPool, ModbusBus, ModbusError, open_bus``.
"""

from dynexport.modbus.client import Backoff, BusPool, ModbusBus, open_bus
from dynexport.modbus.errors import (
    ModbusConnectionError,
    ModbusError,
    ModbusExceptionResponse,
    ModbusFrameError,
    ModbusTimeout,
)

__all__ = [
    "Backoff",
    "BusPool",
    "ModbusBus",
    "ModbusConnectionError",
    "ModbusError",
    "ModbusExceptionResponse",
    "ModbusFrameError",
    "ModbusTimeout",
    "open_bus",
]
