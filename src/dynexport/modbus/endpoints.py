"""Where a Modbus device is: a TCP server or a serial (RS485) bus with its line settings.

The transport owns these types so it depends on nothing above it; the configuration builds them
from the file (``system/config.py``) and the scan command from its arguments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Parity = Literal["N", "E", "O"]


@dataclass(frozen=True)
class TcpEndpoint:
    """A Modbus TCP server (an inverter, a meter, or a gateway in front of several)."""

    host: str
    port: int = 502

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class SerialEndpoint:
    """An RS485 bus on a serial port; every device on it shares these line settings."""

    device: str
    baud: int = 9600
    parity: Parity = "N"
    stopbits: int = 1

    def __str__(self) -> str:
        return f"{self.device}@{self.baud}{self.parity}{self.stopbits}"


Endpoint = TcpEndpoint | SerialEndpoint

_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\s\[\]]+))(?::(?P<port>\d+))?$"
)


def parse_tcp(text: str) -> TcpEndpoint:
    """Parses ``HOST[:PORT]`` (``[v6addr]:PORT`` for IPv6); the port defaults to 502."""
    m = _HOST_PORT.match(text.strip())
    if not m:
        raise ValueError(f"must be HOST or HOST:PORT, not {text!r}")
    host = m.group("v6") or m.group("host")
    port = int(m.group("port")) if m.group("port") else 502
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1..65535, not {port}")
    return TcpEndpoint(host=host, port=port)
