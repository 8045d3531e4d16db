"""Long-running device tasks: one per inverter or meter, owning its SunSpecDevice.

A link discovers its device (retrying with backoff while it is unreachable), polls it fast
(power, about every second) and slowly (nameplate and settings, every few minutes), and for an
inverter applies the generation limit the controller asks for. A limit is written when it
changes and rewritten well before its revert timeout, so that the inverter falls back by itself
if this process stops. The app reads each link's ``state`` snapshot; nothing else touches the
device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import trio

from dynexport.modbus.client import Backoff
from dynexport.modbus.errors import ModbusError
from dynexport.sunspec.bus import RegisterBus
from dynexport.sunspec.control import (
    CommandError,
    LimitCommand,
    NotControllableError,
    rewrite_interval,
)
from dynexport.sunspec.device import SunSpecDevice, VerifyError
from dynexport.sunspec.discovery import DiscoveryError, NotSunSpecError
from dynexport.sunspec.views import CommonInfo, InverterReading, MeterReading

log = logging.getLogger("dynexport.sunspec")

DEVICE_ERRORS = (
    ModbusError,
    DiscoveryError,
    NotSunSpecError,
    VerifyError,
    CommandError,
    ValueError,
)
"""What a device can do wrong; any of these marks it offline and is retried, never fatal."""


@dataclass(frozen=True)
class DeviceInfo:
    manufacturer: str | None = None
    model: str | None = None
    serial: str | None = None
    version: str | None = None
    models: tuple[int, ...] = ()

    @classmethod
    def from_common(cls, common: CommonInfo | None, models: tuple[int, ...]) -> DeviceInfo:
        if common is None:
            return cls(models=models)
        return cls(common.manufacturer, common.model, common.serial, common.version, models)


@dataclass(frozen=True)
class InverterState:
    """What the controller and the UI know of one inverter, replaced as a whole on each change."""

    id: str
    online: bool = False
    controllable: bool | None = None
    """None until discovery says; False with ``not_controllable`` explaining why."""
    not_controllable: str | None = None
    rated_w: float | None = None
    """Rated active power (W, not VA): what the controller splits limits by."""
    w_max: float | None = None
    """What WMaxLimPct is a percent of."""
    power_w: float | None = None
    reading: InverterReading | None = None
    limit_pct: float | None = None
    """The limit as last read back from the inverter; None = no limit in force."""
    commanded_pct: float | None = None
    connected: bool | None = None
    last_reading: float | None = None
    """trio clock time of the last good fast poll."""
    last_write: float | None = None
    error: str | None = None
    info: DeviceInfo = DeviceInfo()


@dataclass(frozen=True)
class MeterState:
    id: str
    online: bool = False
    reading: MeterReading | None = None
    last_reading: float | None = None
    error: str | None = None
    info: DeviceInfo = DeviceInfo()

    @property
    def site_w(self) -> float | None:
        return None if self.reading is None else self.reading.site_w


@dataclass(frozen=True)
class Desired:
    """The command the controller wants in force on one inverter."""

    pct: float | None
    """Generation limit in percent of WMax; None = no limit."""
    connect: bool = True


class _Link:
    def __init__(
        self,
        id: str,
        bus: RegisterBus,
        unit: int,
        *,
        fast_s: float,
        slow_s: float,
        request_timeout: float | None,
        backoff: Backoff,
        on_update: Callable[[], None] | None,
    ) -> None:
        self.id = id
        self.device = SunSpecDevice(bus, unit, request_timeout=request_timeout)
        self.fast_s = fast_s
        self.slow_s = slow_s
        self.backoff = backoff
        self._on_update = on_update
        self._failures = 0
        self.last_activity: float | None = None
        """trio time of the last poll attempt, good or bad: proof the task is not stuck."""
        self._wake = trio.Event()
        self._poll_requested = False

    def request_poll(self) -> None:
        """Asks for a fast poll now (the controller reads the meter and the inverters together,
        just before it decides, so that its inputs are fresh and taken at the same moment)."""
        self._poll_requested = True
        self._wake.set()

    async def _idle_until(self, deadline: float) -> None:
        """Waits until ``deadline`` or until woken by a command or a poll request."""
        with trio.move_on_at(deadline):
            await self._wake.wait()
        self._wake = trio.Event()

    def _changed(self) -> None:
        self.last_activity = trio.current_time()
        if self._on_update is not None:
            self._on_update()

    async def _discover(self) -> bool:
        try:
            await self.device.discover()
        except DEVICE_ERRORS as exc:
            await self._failed(f"not found: {exc}")
            return False
        self._failures = 0
        return True

    async def _failed(self, message: str) -> None:
        self.last_activity = trio.current_time()
        self._failures += 1
        self._offline(message)
        if self._failures == 1 or self._failures % 30 == 0:
            log.warning("%s: %s", self.id, message)
        await trio.sleep(self.backoff.delay(self._failures))

    def _offline(self, message: str) -> None:
        raise NotImplementedError


class InverterLink(_Link):
    """Polls one inverter and keeps the controller's limit in force on it."""

    def __init__(
        self,
        id: str,
        bus: RegisterBus,
        unit: int,
        *,
        revert_s: int = 60,
        fast_s: float = 1.0,
        slow_s: float = 300.0,
        request_timeout: float | None = None,
        backoff: Backoff | None = None,
        on_update: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            id,
            bus,
            unit,
            fast_s=fast_s,
            slow_s=slow_s,
            request_timeout=request_timeout,
            backoff=backoff or Backoff(initial=1.0, maximum=30.0),
            on_update=on_update,
        )
        self.revert_s = revert_s
        self.state = InverterState(id=id)
        self._desired: Desired | None = None
        self._written: Desired | None = None

    def command(self, desired: Desired) -> None:
        """Asks for a limit; it is applied promptly by :meth:`run` (the caller never waits)."""
        if desired != self._desired:
            self._desired = desired
            self._wake.set()

    def _offline(self, message: str) -> None:
        self.state = replace(self.state, online=False, error=message)
        self._written = None  # unknown after an outage: write again when it answers
        self._changed()

    async def run(self) -> None:
        """Runs until cancelled: discover, then poll and command forever."""
        while not await self._discover():
            pass
        self._after_discovery()
        next_slow = trio.current_time()
        next_fast = trio.current_time()
        while True:
            now = trio.current_time()
            try:
                if now >= next_slow:
                    await self._poll_slow()
                    next_slow = now + self.slow_s
                if now >= next_fast or self._poll_requested:
                    self._poll_requested = False
                    await self._poll_fast()
                    next_fast = now + self.fast_s
                await self._apply()
            except DEVICE_ERRORS as exc:
                await self._failed(str(exc))
                next_fast = trio.current_time()
                continue
            self._failures = 0
            await self._idle_until(min(next_fast, self._rewrite_due()))

    def _after_discovery(self) -> None:
        try:
            self.device.control_model()
            controllable, reason = True, None
        except NotControllableError as exc:
            controllable, reason = False, str(exc)
            log.warning("%s: %s", self.id, reason)
        self.state = replace(
            self.state,
            controllable=controllable,
            not_controllable=reason,
            info=DeviceInfo.from_common(self.device.common, tuple(self.device.map.ids)),
        )
        self._changed()

    async def _poll_slow(self) -> None:
        slow = await self.device.poll_slow()
        self.state = replace(
            self.state,
            rated_w=slow.rated_w,
            w_max=slow.w_max,
            limit_pct=slow.limit_pct,
        )
        self._changed()

    async def _poll_fast(self) -> None:
        fast = await self.device.poll_fast()
        reading = fast.inverter
        self.state = replace(
            self.state,
            online=True,
            error=None,
            reading=reading,
            power_w=None if reading is None else reading.w,
            connected=None if reading is None else reading.connected,
            last_reading=trio.current_time(),
        )
        self._changed()

    def _rewrite_due(self) -> float:
        last = self.state.last_write
        if last is None or self._written is None or self._written.pct is None:
            return math.inf
        return last + rewrite_interval(self.revert_s)

    async def _apply(self) -> None:
        desired = self._desired
        if desired is None or not self.state.controllable:
            return
        due = trio.current_time() >= self._rewrite_due()
        if desired == self._written and not due:
            return
        await self.write(desired)

    def _connect_due(self) -> bool:
        return trio.current_time() >= self._rewrite_due()

    async def write(self, desired: Desired) -> None:
        """Writes ``desired`` now (limit and connection), verified by reading it back."""
        if desired.pct is not None and desired.pct < 0:
            raise CommandError(f"limit {desired.pct}% is negative")
        pct = None if desired.pct is None else min(100.0, desired.pct)
        previous = self._written
        # Connection is only written on a change (or a first disconnect): many inverters have no
        # connect control, and Conn's own revert timer reconnects one this process left off.
        was_connected = True if previous is None else previous.connect
        if desired.connect != was_connected or (not desired.connect and self._connect_due()):
            await self.device.set_connected(desired.connect, revert_s=self.revert_s)
        result = await self.device.set_limit(LimitCommand(pct=pct, revert_s=self.revert_s))
        readback = result.readback.get("WMaxLimPct")
        self._written = desired
        self.state = replace(
            self.state,
            commanded_pct=pct,
            limit_pct=float(readback) if isinstance(readback, int | float) else pct,
            last_write=trio.current_time(),
        )
        self._changed()


class MeterLink(_Link):
    """Polls the site meter."""

    def __init__(
        self,
        id: str,
        bus: RegisterBus,
        unit: int,
        *,
        fast_s: float = 1.0,
        request_timeout: float | None = None,
        backoff: Backoff | None = None,
        on_update: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            id,
            bus,
            unit,
            fast_s=fast_s,
            slow_s=math.inf,
            request_timeout=request_timeout,
            backoff=backoff or Backoff(initial=0.5, maximum=10.0),
            on_update=on_update,
        )
        self.state = MeterState(id=id)

    def _offline(self, message: str) -> None:
        self.state = replace(self.state, online=False, error=message)
        self._changed()

    async def run(self) -> None:
        while not await self._discover():
            pass
        if not self.device.is_meter:
            message = f"unit {self.device.unit} has no SunSpec meter model ({self.device.map.ids})"
            log.error("%s: %s", self.id, message)
            self._offline(message)
            await trio.sleep_forever()
        self.state = replace(
            self.state, info=DeviceInfo.from_common(self.device.common, tuple(self.device.map.ids))
        )
        while True:
            started = trio.current_time()
            self._poll_requested = False
            try:
                fast = await self.device.poll_fast()
            except DEVICE_ERRORS as exc:
                await self._failed(str(exc))
                continue
            self._failures = 0
            self.state = replace(
                self.state,
                online=True,
                error=None,
                reading=fast.meter,
                last_reading=trio.current_time(),
            )
            self._changed()
            if not self._poll_requested:
                await self._idle_until(started + self.fast_s)
