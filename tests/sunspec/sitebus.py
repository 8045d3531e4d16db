"""An in-process RegisterBus over a simulated ``Site``: the real SunSpec device code, the real
simulated plant, trio's (mock) clock as the plant's clock, and no sockets, so link tests can jump
hours of revert timers in milliseconds and never depend on machine speed."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from dynexport.modbus.errors import ModbusConnectionError, ModbusExceptionResponse
from dynexport.sim.sunspec_device import ModbusError, Site


class SiteBus:
    """Answers like a Modbus TCP gateway in front of ``site``; ``down`` makes it unreachable."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.down = False
        self.writes: list[tuple[int, int, tuple[int, ...]]] = []

    def written_to(
        self, unit: int, address: int, values: Sequence[int], model: int, point: str
    ) -> int | None:
        """The value a write of ``values`` at ``address`` puts in ``model``'s ``point`` of
        ``unit``; None when the write does not cover it."""
        at = self.site.devices[unit].point_address(model, point)
        return values[at - address] if address <= at < address + len(values) else None

    def _now(self) -> float:
        return trio.current_time()

    async def read_holding_registers(
        self,
        unit: int,
        address: int,
        count: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[int]:
        await trio.sleep(0.001)  # a request takes time, and is a checkpoint
        if self.down:
            raise ModbusConnectionError("simulated outage")
        if unit not in self.site.devices:
            raise ModbusExceptionResponse(unit, 3, address, 11)
        self.site.step(self._now())
        try:
            return self.site.read(unit, address, count)
        except ModbusError as exc:
            raise ModbusExceptionResponse(unit, 3, address, exc.code) from None

    async def write_registers(
        self,
        unit: int,
        address: int,
        values: Sequence[int],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        await trio.sleep(0.001)
        if self.down:
            raise ModbusConnectionError("simulated outage")
        try:
            self.site.write(unit, address, list(values), self._now())
        except ModbusError as exc:
            raise ModbusExceptionResponse(unit, 16, address, exc.code) from None
        self.writes.append((unit, address, tuple(values)))
