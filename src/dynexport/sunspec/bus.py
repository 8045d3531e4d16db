"""What the SunSpec layer needs from a Modbus transport: two calls.

``dynexport.modbus``'s ``ModbusBus`` satisfies this structurally; keeping the dependency to a
Protocol lets every SunSpec core be tested against in-memory register images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class RegisterBus(Protocol):
    async def read_holding_registers(
        self,
        unit: int,
        address: int,
        count: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[int]: ...

    async def write_registers(
        self,
        unit: int,
        address: int,
        values: Sequence[int],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None: ...


MAX_READ = 125
"""Modbus allows at most 125 registers in one read (function 3)."""
MAX_WRITE = 123
"""... and at most 123 in one write (function 16)."""
