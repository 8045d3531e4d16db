"""Finding a device's SunSpec map: the 'SunS' marker, then the chain of [id, length] blocks.

The walk is a sans-I/O state machine (:class:`Discovery`): it says which registers to read next
and is fed what came back, so every branch (marker at 50000 or 0, refusals, a chain without an
end marker, a corrupt length) is tested without a device. :func:`discover` drives it over a bus.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from dynexport.modbus.errors import ModbusExceptionResponse
from dynexport.sunspec.bus import RegisterBus
from dynexport.sunspec.models import END_MODEL_ID

log = logging.getLogger("dynexport.sunspec")

SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
DEFAULT_BASES = (40000, 50000, 0)
MAX_MODELS = 128
LAST_HEADER_AT = 0x10000 - 2
"""The last register a model header ([id, L], two registers) can start at."""
GATEWAY_NO_DEVICE = (10, 11)
"""Exception codes a gateway answers for a unit id with nothing behind it."""


class NotSunSpecError(Exception):
    """The device answers but has no 'SunS' marker at any base address."""


class DiscoveryError(Exception):
    """The model chain is corrupt (a length running past the register space, a loop...)."""


@dataclass(frozen=True)
class ReadRequest:
    address: int
    count: int


@dataclass(frozen=True)
class ModelHeader:
    """Where a model sits: ``address`` holds its id, ``length`` is its L register."""

    id: int
    address: int
    length: int

    @property
    def end(self) -> int:
        """First register after the model."""
        return self.address + 2 + self.length


@dataclass(frozen=True)
class SunSpecMap:
    base: int
    models: tuple[ModelHeader, ...]

    def find(self, model_id: int) -> ModelHeader | None:
        """The first model with this id (a device may repeat e.g. meters or MPPT blocks)."""
        for m in self.models:
            if m.id == model_id:
                return m
        return None

    def first_of(self, ids: Sequence[int]) -> ModelHeader | None:
        """The first model, in the order of ``ids``' preference, that the device has."""
        for mid in ids:
            m = self.find(mid)
            if m is not None:
                return m
        return None

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self.models]


ROLE_MODELS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("inverter", (101, 102, 103, 111, 112, 113, 701)),
    ("meter", (201, 202, 203, 204, 211, 212, 213, 214)),
    ("battery", (124, 713, 802)),
)
"""What a device is, by the models it offers (a hybrid inverter is an inverter and a battery)."""


def device_roles(ids: Sequence[int]) -> tuple[str, ...]:
    """ "inverter", "meter", "battery" for the models found, in that order (pure): what
    ``dynexport sunspec scan`` and the web setup call a device."""
    present = set(ids)
    return tuple(role for role, models in ROLE_MODELS if present.intersection(models))


class Discovery:
    """Sans-I/O discovery: call :meth:`next_request`, do the read, then :meth:`feed` the
    registers or :meth:`refused` for a Modbus exception response; repeat until it returns None,
    then take :attr:`result`."""

    def __init__(self, bases: Sequence[int] = DEFAULT_BASES, max_models: int = MAX_MODELS) -> None:
        if not bases:
            raise ValueError("at least one base address is needed")
        self._bases = list(bases)
        self._base_index = 0
        self._max_models = max_models
        self._walk_at: int | None = None
        self._models: list[ModelHeader] = []
        self._done = False
        self._result: SunSpecMap | None = None

    @property
    def _base(self) -> int:
        return self._bases[self._base_index]

    def next_request(self) -> ReadRequest | None:
        if self._done:
            return None
        if self._walk_at is None:
            return ReadRequest(self._base, 2)
        return ReadRequest(self._walk_at, 2)

    def feed(self, registers: Sequence[int]) -> None:
        if self._done:
            raise RuntimeError("discovery already finished")
        if len(registers) < 2:
            raise DiscoveryError(f"short read: {len(registers)} registers instead of 2")
        if self._walk_at is None:
            if tuple(registers[:2]) == SUNS_MARKER:
                self._walk_at = self._base + 2
            else:
                self._next_base()
            return
        mid, length = registers[0], registers[1]
        if mid == END_MODEL_ID:
            self._finish()
            return
        if mid == 0:
            log.warning("model chain at %d ends with id 0 instead of 0xFFFF", self._walk_at)
            self._finish()
            return
        header = ModelHeader(mid, self._walk_at, length)
        if header.end > 0x10000:
            raise DiscoveryError(
                f"model {mid} at {self._walk_at} has length {length}, which runs past register "
                "65535: the device's SunSpec map is corrupt"
            )
        if header.end > LAST_HEADER_AT:
            # The next header (or end marker) would start at 65535 or past it: it cannot be read
            # (two registers from 65535 run past the register space), so the chain has no end.
            raise DiscoveryError(
                f"model {mid} at {self._walk_at} has length {length}, which ends at register "
                f"{header.end - 1}: no room is left for the next header or the end marker "
                "(the chain has no end): the device's SunSpec map is corrupt"
            )
        self._models.append(header)
        if len(self._models) >= self._max_models:
            raise DiscoveryError(f"more than {self._max_models} models: the chain does not end")
        self._walk_at = header.end

    @property
    def walking(self) -> bool:
        """Past the 'SunS' marker: walking the model chain."""
        return self._walk_at is not None

    def refused(self) -> None:
        """The device answered the last read with an exception (usually illegal address)."""
        if self._done:
            raise RuntimeError("discovery already finished")
        if self._walk_at is None:
            self._next_base()
        else:
            log.warning(
                "device refused reading model header at %d; treating as the end of the chain",
                self._walk_at,
            )
            self._finish()

    def _next_base(self) -> None:
        self._base_index += 1
        if self._base_index >= len(self._bases):
            self._done = True

    def _finish(self) -> None:
        self._result = SunSpecMap(self._base, tuple(self._models))
        self._done = True

    @property
    def done(self) -> bool:
        return self._done

    @property
    def result(self) -> SunSpecMap:
        if not self._done:
            raise RuntimeError("discovery has not finished")
        if self._result is None:
            tried = ", ".join(str(b) for b in self._bases)
            raise NotSunSpecError(f"no 'SunS' marker at register {tried}: not a SunSpec device")
        return self._result


DEVICE_NOT_READY = frozenset({4, 5, 6})
"""Modbus exception codes that say the device could not answer now (server device failure,
acknowledge, server device busy), not that the register is not there."""
NOT_READY_TRIES = 10
NOT_READY_WAIT_S = 1.0
"""A read answered with one of DEVICE_NOT_READY is asked again this many times in all, this far
apart, before the answer is taken for what it is (the end of the chain past the last model)."""


async def discover(
    bus: RegisterBus,
    unit: int,
    *,
    bases: Sequence[int] = DEFAULT_BASES,
    request_timeout: float | None = None,
) -> SunSpecMap:
    """Find unit's SunSpec map. Timeouts and connection errors propagate (no device there), and
    so do the exceptions of a device that cannot answer now (`DEVICE_NOT_READY`); other
    exception responses move on to the next base address, or end the model chain."""
    d = Discovery(bases)
    not_ready = 0
    while (req := d.next_request()) is not None:
        try:
            regs = await bus.read_holding_registers(
                unit, req.address, req.count, timeout=request_timeout
            )
        except ModbusExceptionResponse as exc:
            if exc.code in GATEWAY_NO_DEVICE:
                raise NotSunSpecError(f"unit {unit}: the gateway reports no such device") from exc
            if exc.code in DEVICE_NOT_READY:
                # Not an answer about the map (busy, starting): asked again, a little later; a
                # chain cut short here would leave an inverter without its controls. Some
                # devices answer so for good past their last model (no end marker): after
                # NOT_READY_TRIES answers at one register, that is the end of their chain.
                not_ready += 1
                if not_ready < NOT_READY_TRIES:
                    await trio.sleep(NOT_READY_WAIT_S)
                    continue
                if not d.walking:
                    raise DiscoveryError(
                        f"unit {unit}: the device could not answer at register {req.address} "
                        f"({exc}); discovery is tried again"
                    ) from exc
            not_ready = 0
            d.refused()
        else:
            not_ready = 0
            d.feed(regs)
    result = d.result
    log.debug("unit %d: SunSpec map at %d with models %s", unit, result.base, result.ids)
    return result
