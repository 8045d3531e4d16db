"""Errors of the Modbus transport.

Callers mostly catch :class:`ModbusError`; the subclasses exist because they call for different
reactions: an exception response is the device's considered answer (never retried), the others
are transport trouble (retried a bounded number of times, then reported).
"""

from __future__ import annotations

EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusError(Exception):
    """Base of every error the Modbus transport raises."""


class ModbusTimeout(ModbusError):
    """No (complete) answer arrived in time."""


class ModbusExceptionResponse(ModbusError):
    """The device answered with a Modbus exception code: it understood and refused."""

    def __init__(
        self, unit: int, function: int, address: int, code: int, endpoint: str | None = None
    ) -> None:
        self.unit = unit
        self.function = function
        self.address = address
        self.code = code
        self.endpoint = endpoint
        name = EXCEPTION_NAMES.get(code, "unknown exception code")
        where = f" from {endpoint}" if endpoint else ""
        super().__init__(
            f"unit {unit} function {function} address {address}: exception {code} ({name}){where}"
        )


class ModbusFrameError(ModbusError):
    """Garbage, a bad CRC, a wrong transaction id, unit or function, or a malformed frame."""


class ModbusConnectionError(ModbusError):
    """Cannot connect, the connection was lost, or the serial port cannot be opened."""
