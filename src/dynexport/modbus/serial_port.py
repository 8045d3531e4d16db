"""An RS485 serial port as a trio stream, plus the RTU timing rules.

pyserial knows how to configure a port (baud, parity, stop bits, RS485 direction control where the
driver supports it); trio knows how to wait on a file descriptor. pyserial leaves VMIN=0, which
makes a read with nothing waiting return 0 bytes, and trio reads that as end-of-file; so VMIN is
set to 1 with termios before the fd is wrapped in ``trio.lowlevel.FdStream``.
"""

from __future__ import annotations

import errno
import logging
import os
import termios

import serial
import serial.rs485
import trio

from dynexport.modbus.endpoints import SerialEndpoint
from dynexport.modbus.errors import ModbusConnectionError

log = logging.getLogger("dynexport.modbus")

_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
_LOCKED = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})
"""What pyserial's exclusive lock (``flock``) fails with when another process has the port."""


def char_time(endpoint: SerialEndpoint) -> float:
    """Seconds on the wire per character: start bit, 8 data bits, parity bit, stop bits."""
    bits = 1 + 8 + (0 if endpoint.parity == "N" else 1) + endpoint.stopbits
    return bits / endpoint.baud


def frame_silence(endpoint: SerialEndpoint) -> float:
    """The inter-frame silence: 3.5 characters, fixed at 1.75 ms above 19200 baud (spec 2.5.1.1)."""
    if endpoint.baud > 19200:
        return 0.00175
    return 3.5 * char_time(endpoint)


class SerialPort:
    """An open, configured serial port; ``stream`` reads and writes it without blocking trio."""

    def __init__(self, endpoint: SerialEndpoint, *, rs485: bool = True) -> None:
        self.endpoint = endpoint
        try:
            self._serial = serial.serial_for_url(
                endpoint.device,
                baudrate=endpoint.baud,
                bytesize=serial.EIGHTBITS,
                parity=_PARITY[endpoint.parity],
                stopbits=endpoint.stopbits,
                timeout=0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            if isinstance(exc, OSError) and exc.errno in _LOCKED:
                # pyserial's flock(LOCK_EX | LOCK_NB) failed: another process has the port open
                raise ModbusConnectionError(
                    f"{endpoint}: serial port {endpoint.device} is in use by another program, "
                    "which holds its exclusive lock (the dynexport service, if this port is in "
                    f"its configuration): {exc}"
                ) from exc
            raise ModbusConnectionError(
                f"{endpoint}: cannot open serial port {endpoint.device}: {exc}"
            ) from exc
        try:
            if rs485:
                self._enable_rs485()
            fd = self._serial.fileno()
            attrs = termios.tcgetattr(fd)
            attrs[6][termios.VMIN] = 1
            attrs[6][termios.VTIME] = 0
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            self.stream = trio.lowlevel.FdStream(os.dup(fd))
        except (OSError, termios.error, serial.SerialException) as exc:
            self._serial.close()
            raise ModbusConnectionError(
                f"{endpoint}: cannot configure serial port {endpoint.device}: {exc}"
            ) from exc

    def _enable_rs485(self) -> None:
        """Kernel RS485 mode (RTS drives the transmitter) where the driver has it.

        USB adapters switch direction in hardware and pseudo-terminals have no RS485 at all;
        both refuse the ioctl, which is fine.
        """
        try:
            self._serial.rs485_mode = serial.rs485.RS485Settings()
        except (ValueError, OSError, serial.SerialException, AttributeError) as exc:
            log.debug("%s: no kernel RS485 mode (%s); assuming automatic direction", self, exc)

    def flush_input(self) -> None:
        """Drop whatever the driver has buffered: stale bytes must not start the next answer."""
        try:
            termios.tcflush(self.stream.fileno(), termios.TCIFLUSH)
        except (OSError, termios.error) as exc:
            raise ModbusConnectionError(f"{self.endpoint}: serial port lost: {exc}") from exc

    def close(self) -> None:
        """Close both descriptors now (safe to call twice, and from a cancelled task)."""
        self.stream.close()
        self._serial.close()

    def __str__(self) -> str:
        return str(self.endpoint)
