"""Long-running device tasks: one per inverter or meter, owning its SunSpecDevice.

A link discovers its device (retrying with backoff while it is unreachable), polls it fast
(power, about every second) and slowly (nameplate and settings, every few minutes), and for an
inverter applies the generation limit the controller asks for. A limit is written when it
changes and rewritten well before its revert timeout, so that the inverter falls back by itself
if this process stops, and at once when a poll finds it lost (a device reset). The app reads
each link's ``state`` snapshot; nothing else touches the device.

A link never dies: device trouble (:data:`DEVICE_ERRORS`) marks it offline and is retried; any
other exception inside its work is a bug or a device doing the unforeseen, and is logged with its
traceback, marks the device offline and not controllable with the cause, and is retried with
backoff after a fresh discovery. ``write`` raises only :data:`DEVICE_ERRORS`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, Literal, NoReturn, TypedDict, TypeVar, Unpack

import trio

from dynexport.modbus.client import Backoff
from dynexport.modbus.errors import ModbusError, ModbusExceptionResponse
from dynexport.sunspec import control, polling, storage
from dynexport.sunspec.bus import RegisterBus
from dynexport.sunspec.control import (
    CommandError,
    LimitCommand,
    NotControllableError,
    rewrite_interval,
)
from dynexport.sunspec.decode import DeviceNotReadyError, MapChangedError
from dynexport.sunspec.device import (
    FastReading,
    LimitResult,
    SlowReading,
    SunSpecDevice,
    VerifyError,
)
from dynexport.sunspec.discovery import DiscoveryError, NotSunSpecError
from dynexport.sunspec.storage import StorageConvention, StorageReading
from dynexport.sunspec.views import (
    NO_RATINGS,
    CommonInfo,
    DerControls,
    DerRatings,
    ImmediateControls,
    InverterReading,
    MeterReading,
)

log = logging.getLogger("dynexport.sunspec")


class LinkFault(Exception):
    """An unexpected error inside a link's own work, already logged with its traceback."""


class Rediscover(Exception):
    """The link starts over with a new discovery, at once: the device's map changed under it,
    or what the last discovery found (the wrong device, no control model) is looked at again."""


NOT_AN_ANSWER = frozenset({4, 5, 6, 10, 11})
"""Modbus exception codes that say nothing about what the device can do (device failure,
acknowledge, busy; a gateway's path unavailable or no response): a write answered so is tried
again, not taken as a refusal. One such answer to a Conn write took the connect control away for
good (the utility's connect mode withdrawn until a restart)."""

NOT_READY_REDISCOVER_S = 30.0
"""A device whose model headers have read zeros for this long is discovered again: not a device
still starting, but a map moved away (its old place reading zeros), which polls at the old
addresses would never find."""

CONN_TRIES = 3
"""A Conn write answered so this many times running is refused after all: an inverter that
always answers "device failure" to it kept its link offline at every disconnect."""

HELD_FOR_S = 60.0
"""The warning about a command found lost starts afresh (logged at once) only once polls have
found it held this long: one poll right after each rewrite found it held, so a device that
drops what it is written a few seconds later was warned about every few seconds for ever. Its
rewrites are not held back by this: a device that holds what is written until it drops it gets
it again at the first poll that finds it lost."""
CONN_SETTLE_S = 10.0
"""A grid connection read this long after 123 Conn was written 0 (the inverter connected until
then) is taken as the inverter's answer: before that, a relay still opening may report itself
connected."""

LOG_EVERY = 30
"""A trouble that repeats (a failure, a map that keeps changing, a command lost) is logged the
first time and every 30th time running."""


def _worth_logging(times: int) -> bool:
    return times == 1 or times % LOG_EVERY == 0


REDISCOVER_S = 60.0
"""A device found to be the wrong one, or an inverter without a control model, is discovered
again this often (a few reads): a map cut short by a device that was still booting (a zero
header, a chain refused half-way) was kept until the service restarted, the inverter never
limited again."""


DEVICE_ERRORS = (
    ModbusError,
    DiscoveryError,
    NotSunSpecError,
    VerifyError,
    CommandError,
    NotControllableError,
    LinkFault,
    ValueError,
)
"""What a link's ``write`` may raise; any of these marks the device offline (or not
controllable) and is retried, never fatal."""

DisconnectMethod = Literal["conn", "limit"]


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
    ratings: DerRatings = NO_RATINGS
    """VA/var/PF ratings from the last slow poll (120, else 702); all None until then."""
    set_limits: DerRatings = NO_RATINGS
    """The same from the inverter's settings (121, else 702), else its ratings."""
    power_w: float | None = None
    reading: InverterReading | None = None
    limit_pct: float | None = None
    """The limit as last read back from the inverter; None = no limit in force."""
    commanded_pct: float | None = None
    """The limit last written (0 while disconnected), rounded down to the register step."""
    revert_timer: bool | None = None
    """The inverter implements its limit's revert timer; False: a limit written stays in force
    until written again, also if this appliance stops (None: nothing written yet)."""
    connected: bool | None = None
    """Grid connection as the inverter reports it (701 ConnSt, 122 ECPConn bit 0 or 123 Conn),
    refreshed by every fast poll and right after a connect write; None = it does not say."""
    can_disconnect: bool | None = None
    """The inverter has a connect control with a revert timer (123 Conn): None until the first
    slow poll. Only then may the utility be offered the connect mode."""
    disconnect_method: DisconnectMethod | None = None
    """How the current disconnect command is carried out: ``"conn"`` (opened through 123
    Conn), ``"limit"`` (a 0 % limit: no connect control, or the inverter refused it); None
    while no disconnect is commanded."""
    last_reading: float | None = None
    """trio clock time of the last good fast poll."""
    last_write: float | None = None
    last_sent: float | None = None
    """trio clock time a command was last sent, noted before its first register write, whether
    or not it then read back: from then on the output may move (the load estimate's pairing)."""
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
    """False: disconnect (through 123 Conn where possible) and limit to 0 % in any case."""


class LinkOptions(TypedDict, total=False):
    """What every link takes besides its id, bus and unit (defaults in `_Link`)."""

    fast_s: float
    """Seconds between fast polls (1.0)."""
    request_timeout: float | None
    """Per Modbus request; None: the bus's own."""
    backoff: Backoff | None
    """Delays after failures; None: the link's ``default_backoff``."""
    on_update: Callable[[], None] | None
    """Called on every change of the link's state."""


class _Link:
    default_backoff: ClassVar[Backoff] = Backoff(initial=1.0, maximum=30.0)

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
        self.id = id
        self.device = SunSpecDevice(bus, unit, request_timeout=request_timeout)
        self.fast_s = fast_s
        self.backoff = backoff or self.default_backoff
        self._on_update = on_update
        self._failures = 0
        self.last_activity: float | None = None
        """trio time of the last poll attempt, good or bad: proof the task is not stuck."""
        self._wake = trio.Event()
        self._poll_requested = False
        self._wrong: str | None = None
        """What `_wrong_device` last logged (logged again only when it changes)."""
        self.discovered_at = -math.inf
        """trio time of the last discovery that found the device."""
        self.rediscover_s = REDISCOVER_S
        self._not_ready_since: float | None = None
        """trio time since which every poll has read zeros where the models were."""
        self.not_ready_rediscover_s = NOT_READY_REDISCOVER_S
        self._map_changes = 0
        """MapChangedErrors running, not followed by a good poll."""

    def request_poll(self) -> None:
        """Asks for a fast poll now (the controller reads the meter and the inverters together,
        just before it decides, so that its inputs are fresh and taken at the same moment)."""
        self._poll_requested = True
        self._wake.set()

    async def run(self) -> None:
        """Runs until cancelled and never ends otherwise: an unexpected exception is logged
        with its traceback, marks the device offline, and the link starts over (discovery
        included) after a backoff."""
        while True:
            try:
                await self._serve()
            except Rediscover:
                continue
            except MapChangedError as exc:
                # A map that keeps changing (a firmware answering from two buffers, a device
                # rebooting over and over) is discovered again with the backoff from the second
                # change on, and logged the first time and every 30th: without it, discovery and
                # a poll went round in a tight loop, a warning each time.
                self._map_changes += 1
                if _worth_logging(self._map_changes):
                    log.warning("%s: %s; discovering it again", self.id, exc)
                self._offline(f"{exc}; discovering it again")
                if self._map_changes > 1:
                    self.last_activity = trio.current_time()
                    await trio.sleep(self.backoff.delay(self._map_changes))
                continue
            except LinkFault:
                pass  # raised by write() after it logged the fault and marked the state
            except Exception as exc:  # a link must outlive its bugs
                self._fault(exc)
            await trio.sleep(self.backoff.delay(self._failures))

    async def _serve(self) -> None:
        raise NotImplementedError

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
        self.discovered_at = trio.current_time()
        return True

    async def _discover_until_found(self) -> None:
        """Discovers the device, retrying with backoff while it does not answer."""
        while not await self._discover():
            pass

    idle_heartbeat_s = 10.0
    """While deliberately idle (the wrong device), the link still says it is alive this often."""

    async def _wrong_device(self, message: str) -> NoReturn:
        """The unit answers but is not the device configured: say so and stay offline (a
        retry would find the same device; the configuration has to change). Idle on purpose,
        not stuck: ``last_activity`` keeps moving, or the service's progress check would stop
        the watchdog's pings after a minute, systemd would restart the service, and within
        minutes its start limit would reboot the appliance, again and again, over a meter
        configured at an inverter's unit."""
        if message != self._wrong:
            log.error("%s: %s", self.id, message)
            self._wrong = message
        self._offline(message)
        until = trio.current_time() + self.rediscover_s
        while trio.current_time() < until:
            self.last_activity = trio.current_time()
            await trio.sleep(min(self.idle_heartbeat_s, until - trio.current_time()))
        raise Rediscover  # the same device is found again, or the one now answering

    async def _failed(self, message: str) -> None:
        self.last_activity = trio.current_time()
        self._failures += 1
        self._offline(message)
        if _worth_logging(self._failures):
            log.warning("%s: %s", self.id, message)
        await trio.sleep(self.backoff.delay(self._failures))

    def _fault(self, exc: Exception) -> None:
        """An exception no device error explains: log it with its traceback (the first time
        and every 30th), and say on the state what happened."""
        self.last_activity = trio.current_time()
        self._failures += 1
        message = f"internal error: {type(exc).__name__}: {exc}"
        if _worth_logging(self._failures):
            log.error("%s: %s", self.id, message, exc_info=exc)
        self._offline(message, fault=True)

    def _offline(self, message: str, *, fault: bool = False) -> None:
        raise NotImplementedError

    async def _failed_poll(self, exc: Exception) -> None:
        """A poll's device error: marked and backed off (`_failed`); zeros where the models
        were (`DeviceNotReadyError`) for longer than NOT_READY_REDISCOVER_S start a new
        discovery."""
        now = trio.current_time()
        if isinstance(exc, DeviceNotReadyError):
            if self._not_ready_since is None:
                self._not_ready_since = now
            elif now - self._not_ready_since >= self.not_ready_rediscover_s:
                self._not_ready_since = None
                log.warning("%s: %s for %.0f s; discovering it again", self.id, exc,
                            self.not_ready_rediscover_s)  # fmt: skip
                raise Rediscover
        else:
            self._not_ready_since = None
        await self._failed(str(exc))

    def _polled_ok(self) -> None:
        """A poll went well: the backoffs and the not-ready clock start again."""
        self._failures = 0
        self._not_ready_since = None
        self._map_changes = 0

    def _rediscovery_due(self) -> bool:
        return trio.current_time() >= self.discovered_at + self.rediscover_s


_CommandT = TypeVar("_CommandT", Desired, "BatteryDesired")
_StateT = TypeVar("_StateT", InverterState, "BatteryLinkState")


class _CommandLink(_Link, Generic[_CommandT, _StateT]):
    """A link that keeps the controller's command in force on its device (an inverter's limit,
    a battery's setpoint), written with a revert timeout of ``revert_s``."""

    state: _StateT

    def __init__(
        self, id: str, bus: RegisterBus, unit: int, *, revert_s: int, **options: Unpack[LinkOptions]
    ) -> None:
        super().__init__(id, bus, unit, **options)
        self.revert_s = revert_s
        self._desired: _CommandT | None = None
        self._written: _CommandT | None = None
        """What was last written and read back; None: unknown, write again."""
        self._contradictions = 0
        """Polls running that read the device no longer holding what was written."""
        self._losses = 0
        """Polls that found it lost since it was last held for ``HELD_FOR_S`` (the warning's)."""
        self._held_since: float | None = None
        """When polls began to find the command held again after one found it lost."""

    @property
    def desired(self) -> _CommandT | None:
        """What was last asked for (None: nothing yet, or forgotten)."""
        return self._desired

    def command(self, desired: _CommandT) -> None:
        """Asks for ``desired``; it is applied promptly by :meth:`run` (the caller never waits)."""
        if desired != self._desired:
            self._desired = desired
            self._wake.set()

    def _held(self, lost: str | None) -> None:
        """A poll compared the device with what was last written: ``lost`` says what it no
        longer holds (None: it holds it). A device reset (its controls back to their defaults)
        was left so until the scheduled rewrite, a third of the revert timeout (20 minutes at
        revertS 3600): now the next apply writes it again at once (backing off only while polls
        in a row find it lost). Logged the first time and every 30th until polls have found it
        held for ``HELD_FOR_S``."""
        if lost is None:
            self._contradictions = 0
            now = trio.current_time()
            if self._held_since is None:
                self._held_since = now
            if now - self._held_since >= HELD_FOR_S:
                self._losses = 0
            return
        self._held_since = None
        self._contradictions += 1
        self._losses += 1
        n = self._contradictions
        if _worth_logging(self._losses):
            log.warning("%s: %s (reset?); writing it again", self.id, lost)
        if n & (n - 1) == 0:
            # written again at the 1st, 2nd, 4th, 8th... poll running that finds it lost: a
            # device that drops what it accepts at once (a battery at its reserve) is not
            # written at every 1 s poll; the scheduled rewrite goes on meanwhile
            self._written = None

    def _offline(self, message: str, *, fault: bool = False) -> None:
        self.state = replace(self.state, online=False, error=message)
        if fault:
            self.state = replace(self.state, controllable=False, not_controllable=message)
        self._written = None  # unknown after an outage: write again when it answers
        self._changed()


class InverterLink(_CommandLink[Desired, InverterState]):
    """Polls one inverter and keeps the controller's limit (and connection) in force on it."""

    def __init__(
        self,
        id: str,
        bus: RegisterBus,
        unit: int,
        *,
        revert_s: int = 60,
        slow_s: float = 300.0,
        **options: Unpack[LinkOptions],
    ) -> None:
        super().__init__(id, bus, unit, revert_s=revert_s, **options)
        self.slow_s = slow_s
        self.state = InverterState(id=id)
        self._model_problem: str | None = None
        """Why discovery found the device not controllable (no control model), if so."""
        self._conn_open = False
        """123 Conn was written (or read) 0: it must be written 1 again on reconnect."""
        self._conn_refused = False
        """The inverter refused a Conn write: disconnect by a 0 % limit from now on."""
        self._conn_not_answered = 0
        """Conn writes answered with one of NOT_AN_ANSWER, running."""
        self._conn_opened_t = -math.inf
        """trio time 123 Conn was last written 0 while the inverter was (last seen) connected."""
        self._next_slow = -math.inf
        self._next_fast = -math.inf
        self._restart = False

    async def _serve(self) -> None:
        """Discover, then poll and command until cancelled (or an unexpected exception)."""
        self._restart = False
        await self._discover_until_found()
        self._after_discovery()
        self._next_slow = self._next_fast = trio.current_time()
        while True:
            if self._restart:  # write() from outside met an unexpected exception
                raise LinkFault("restart after a fault")
            if self._model_problem is not None and self._rediscovery_due():
                raise Rediscover  # no control model: is it still so (a device still booting)?
            try:
                await self.cycle()
            except (LinkFault, MapChangedError):
                raise  # start over, discovery included
            except DEVICE_ERRORS as exc:
                await self._failed_poll(exc)
                self._next_fast = trio.current_time()
                continue
            self._polled_ok()
            await self._idle_until(min(self._next_fast, self._next_slow, self._rewrite_due()))

    async def cycle(self) -> None:
        """One pass: the slow poll if due, the fast poll if due or asked for, then the command
        if it changed or is due for its rewrite. Raises only device errors (and bugs)."""
        now = trio.current_time()
        if now >= self._next_slow:
            await self._poll_slow()
            self._next_slow = now + self.slow_s
        if now >= self._next_fast or self._poll_requested:
            self._poll_requested = False
            await self._poll_fast()
            self._next_fast = now + self.fast_s
        await self._apply()

    async def reach(self) -> None:
        """Discovers the device and reads its ratings, when this link has not yet: a stop that
        comes right after the links were made (a configuration change restarts them, without
        the fail-safe, as control goes on) found no inverter reached, wrote no fail-safe, and
        left each at the old links' last limit for up to its revert time. Call only while
        :meth:`run` is not running; raises the device's errors."""
        if self.device.discovered and self.state.controllable is not None:
            return  # (a discovery cut short after the map was read has not said yet)
        await self.device.discover()
        self.discovered_at = trio.current_time()
        self._after_discovery()
        if self._model_problem is None:
            await self._poll_slow()
            await self._poll_fast()

    def _after_discovery(self) -> None:
        self._conn_refused = False  # new firmware may take Conn: asked again, once
        try:
            self.device.control_model()
            self._model_problem = None
        except NotControllableError as exc:
            if str(exc) != self._model_problem:  # not again at each rediscovery
                log.warning("%s: %s", self.id, exc)
            self._model_problem = str(exc)
        self.state = replace(
            self.state,
            controllable=self._model_problem is None,
            not_controllable=self._model_problem,
            can_disconnect=None if self._model_problem is None else False,
            info=DeviceInfo.from_common(self.device.common, tuple(self.device.map.ids)),
        )
        self._changed()

    def _not_controllable(self, reason: str) -> None:
        if self.state.not_controllable != reason:
            log.warning("%s: %s", self.id, reason)
        self.state = replace(
            self.state, controllable=False, not_controllable=reason, can_disconnect=False
        )
        self._written = None
        self._changed()

    async def _poll_slow(self) -> None:
        slow = await self.device.poll_slow()
        reason = self._model_problem or _limit_sf_problem(slow)
        conn_usable = slow.connect_control and not self._conn_refused
        if slow.controls is not None and slow.controls.conn == 0 and conn_usable:
            self._conn_open = True  # left open (by an earlier run, or the installer): reconnect
        self.state = replace(
            self.state,
            rated_w=slow.rated_w,
            w_max=slow.w_max,
            ratings=slow.ratings,
            set_limits=slow.set_limits,
            limit_pct=slow.limit_pct,
            controllable=reason is None,
            not_controllable=reason,
            can_disconnect=reason is None and conn_usable,
        )
        if reason is not None:
            if reason != self._model_problem:
                log.warning("%s: %s", self.id, reason)
            self._written = None
        elif (
            self._written is not None
            and self.state.revert_timer is False
            and self.device.revert_timer_seen()
        ):
            # written while its revert timer read "not implemented" (a device still booting):
            # again, with the timer, rather than at the scheduled rewrite
            log.info("%s: its limit's revert timer answers now: writing the limit with it", self.id)
            self._written = None
        elif self._written is not None:
            self._held(self._slow_lost(slow))
        self._changed()

    def _slow_lost(self, slow: SlowReading) -> str | None:
        """What of the command written the slow poll finds gone: the limit (disabled, or above
        the one written), or the 123 Conn open of a disconnect."""
        written = self._written
        lost = [self._limit_lost(slow.limit_pct)]
        if (
            written is not None
            and not written.connect
            and self.state.disconnect_method == "conn"
            and slow.controls is not None
            and slow.controls.conn == 1
        ):
            lost.append("123 Conn, written 0 to disconnect, reads 1")
        return "; ".join(filter(None, lost)) or None

    def _limit_lost(self, limit_pct: float | None) -> str | None:
        """What a read of the limit in force (``limit_pct``, None: none) finds lost of the one
        written: disabled, or above it."""
        commanded = self.state.commanded_pct
        if commanded is None or (limit_pct is not None and limit_pct <= commanded + 1e-9):
            return None
        now = "no limit" if limit_pct is None else f"{limit_pct:g} %"
        return f"the {commanded:g} % limit written reads {now}"

    async def _poll_fast(self) -> None:
        fast = await self.device.poll_fast()
        reading = fast.inverter
        self.state = replace(
            self.state,
            online=True,
            error=None,
            reading=reading,
            power_w=None if reading is None else reading.w,
            connected=fast.connected,
            last_reading=trio.current_time(),
        )
        if fast.limit_read and self.state.controllable:
            self.state = replace(self.state, limit_pct=fast.limit_pct)
        self._held_fast(fast)
        self._changed()

    def _held_fast(self, fast: FastReading) -> None:
        """What a fast poll finds of the command written: the limit in force, and the
        connection state while a disconnect through 123 Conn is in force (once its relay had
        CONN_SETTLE_S to open). Counted once per poll; a poll that could not judge all of it
        (the relay still opening) never counts as held, or an inverter whose status never
        follows Conn was written and logged again at every contradiction."""
        written = self._written
        if written is None:
            return
        lost: list[str | None] = []
        settling = False
        if fast.limit_read and self.state.controllable:
            lost.append(self._limit_lost(fast.limit_pct))
        if (
            not written.connect
            and self.state.disconnect_method == "conn"
            and fast.connected is not None
        ):
            if trio.current_time() < self._conn_opened_t + CONN_SETTLE_S:
                settling = True
            else:
                lost.append(
                    "it reports itself connected while a disconnect through 123 Conn is in force"
                    if fast.connected
                    else None
                )
        found = "; ".join(filter(None, lost)) or None
        if found is not None or (lost and not settling):
            self._held(found)

    def _rewrite_due(self) -> float:
        last = self.state.last_write
        written = self._written
        if last is None or written is None or (written.pct is None and written.connect):
            return math.inf  # nothing in force that could expire
        return last + rewrite_interval(self.revert_s)

    async def _apply(self) -> None:
        desired = self._desired
        if desired is None or not self.state.controllable:
            return
        due = trio.current_time() >= self._rewrite_due()
        reconnect = desired.connect and self._conn_open
        # A disconnect done by a 0 % limit before the first slow poll found 123 Conn usable.
        upgrade = (
            not desired.connect
            and self.state.disconnect_method == "limit"
            and self.state.can_disconnect is True
        )
        if desired == self._written and not (due or reconnect or upgrade):
            return
        # Not controllable: the state says why; nothing is written until the device changes.
        with contextlib.suppress(NotControllableError):
            await self.write(desired)

    async def write(self, desired: Desired) -> None:
        """Writes ``desired`` now (limit, then connection), verified by reading it back.

        A disconnect always writes a 0 % limit (with its revert timer) first, then opens the
        inverter through 123 Conn (with Conn_RvrtTms) where it can; where it cannot, or the
        inverter refuses, the 0 % limit is the disconnect. Raises only :data:`DEVICE_ERRORS`.
        """
        try:
            await self._write(desired)
        except DEVICE_ERRORS:
            raise
        except Exception as exc:  # callers get a declared error, the log the traceback
            self._fault(exc)
            self._restart = True  # the run loop starts over, discovery included
            self._wake.set()
            raise LinkFault(f"{self.id}: internal error while writing: {exc!r}") from exc

    async def _write(self, desired: Desired) -> None:
        if desired.pct is not None and not (math.isfinite(desired.pct) and desired.pct >= 0):
            raise CommandError(f"limit {desired.pct}% must be a finite number >= 0")
        if self.state.controllable is not True:
            raise NotControllableError(
                self.state.not_controllable or f"{self.id}: not discovered yet"
            )
        disconnect = not desired.connect
        pct = 0.0 if disconnect else None if desired.pct is None else min(100.0, desired.pct)
        sent = trio.current_time()
        self.state = replace(self.state, last_sent=sent)
        try:
            result = await self.device.set_limit(LimitCommand(pct=pct, revert_s=self.revert_s))
        except NotControllableError as exc:  # e.g. a scale factor outside -10..10
            self._not_controllable(str(exc))
            raise
        except DEVICE_ERRORS:
            self._outcome_unknown(pct)
            raise
        # The limit is in force (read back) whatever becomes of the Conn write that follows: a
        # reconnect whose Conn write then failed was counted at the disconnect's 0 % while the
        # inverter made full power. Its revert timer runs from no later than ``sent`` (noted
        # before the write, so its expiry is never counted late).
        if not result.revert_timer and self.state.revert_timer is not False:
            log.warning(
                "%s: its limit has no revert timer (not implemented): a limit written stays in "
                "force until written again, also if this appliance stops",
                self.id,
            )
        self.state = replace(
            self.state,
            commanded_pct=None if pct is None else _written_pct(result, pct),
            limit_pct=_limit_in_force(result),
            last_write=sent,
            revert_timer=result.revert_timer,
        )
        self._changed()
        method: DisconnectMethod | None = None
        conn_written = False
        if disconnect:
            method = "limit"
            if self.state.can_disconnect and await self._set_conn(False):
                method, conn_written = "conn", True
        elif self._conn_open:
            await self._set_conn(True)
            conn_written = True
        self._written = desired
        self.state = replace(self.state, disconnect_method=method)
        self._changed()
        if conn_written:
            await self._poll_fast()  # the connection state the utility hears, at once

    def _outcome_unknown(self, pct: float | None) -> None:
        """A limit write that failed part-way (no answer to the write or to its read-back): the
        inverter may hold the new limit, with a fresh revert timer, or still the old one. Until
        it answers again it is counted at the higher of the two (None, no limit, if either is),
        up to the old limit's revert time: the envelope of both outcomes. Keeping the old limit
        counted a raised limit that did land (10 % → 80 %) at 10 % while the inverter made 80 %."""
        old = self.state.limit_pct
        higher = None if pct is None or old is None else max(old, pct)
        if higher != old:
            last = self.state.last_write
            self.state = replace(
                self.state,
                limit_pct=higher,
                last_write=trio.current_time() if last is None else last,
            )
            self._changed()

    async def _set_conn(self, connect: bool) -> bool:
        """Writes 123 Conn; when the inverter refuses (exception answer, no read-back, no
        model) returns False: a disconnect is then the 0 % limit already written. An open counts
        from when it is sent: one whose answer is lost (a timeout, a gateway's "no answer") may
        have landed, and a reconnect must close it again rather than leave the inverter off the
        grid until its own revert timer."""
        if not connect:
            self._conn_open = True
        was_connected = self.state.connected is not False
        try:
            await self.device.set_connected(connect, revert_s=self.revert_s)
        except ModbusExceptionResponse as exc:
            if exc.code in NOT_AN_ANSWER:
                self._conn_not_answered += 1
                if self._conn_not_answered < CONN_TRIES:
                    raise  # busy, failed for now, or a gateway that did not reach it: again
            self._conn_not_answered = 0
            self._refuse_conn(connect, exc)
            return False
        except (VerifyError, NotControllableError, CommandError) as exc:
            self._refuse_conn(connect, exc)
            return False
        self._conn_not_answered = 0
        self._conn_open = not connect
        if not connect and was_connected:  # opening now: its relay may take a moment
            self._conn_opened_t = trio.current_time()
        return True

    def _refuse_conn(self, connect: bool, exc: Exception) -> None:
        """The inverter's considered answer, not an outage: never try Conn again on it (a retry
        loop would keep the link offline and block the limit writes), until it is discovered
        again."""
        self._conn_refused = True
        self._conn_open = False
        self.state = replace(self.state, can_disconnect=False)
        log.warning(
            "%s: the inverter refused %s through 123 Conn (%s); %s",
            self.id,
            "to close" if connect else "to open",
            exc,
            "its connection is left as it is"
            if connect
            else "disconnecting by a 0 % limit instead",
        )


def _limit_sf_problem(slow: SlowReading) -> str | None:
    try:
        control.limit_sf(slow.limit_sf)
    except NotControllableError as exc:
        return str(exc)
    return None


def _limit_in_force(result: LimitResult) -> float | None:
    """The limit the inverter reports after the write (None = disabled or unknown)."""
    if result.model_id == 704:
        return DerControls.from_points(result.readback).limit_pct
    return ImmediateControls.from_points(result.readback).limit_pct


def _written_pct(result: LimitResult, asked: float) -> float:
    value = result.readback.get("WMaxLimPct")
    return float(value) if isinstance(value, int | float) else asked


class MeterLink(_Link):
    """Polls the site meter."""

    default_backoff = Backoff(initial=0.5, maximum=10.0)

    def __init__(
        self, id: str, bus: RegisterBus, unit: int, **options: Unpack[LinkOptions]
    ) -> None:
        super().__init__(id, bus, unit, **options)
        self.state = MeterState(id=id)

    def _offline(self, message: str, *, fault: bool = False) -> None:
        self.state = replace(self.state, online=False, error=message)
        self._changed()

    async def _serve(self) -> None:
        await self._discover_until_found()
        if not self.device.is_meter:
            ids = self.device.map.ids
            await self._wrong_device(f"unit {self.device.unit} has no SunSpec meter model ({ids})")
        self.state = replace(
            self.state, info=DeviceInfo.from_common(self.device.common, tuple(self.device.map.ids))
        )
        while True:
            started = trio.current_time()
            self._poll_requested = False
            try:
                fast = await self.device.poll_fast()
            except MapChangedError:
                raise
            except DEVICE_ERRORS as exc:
                await self._failed_poll(exc)
                continue
            self._polled_ok()
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


# --------------------------------------------------------------------------------------
# Batteries (docs/sunspec.md, "Storage")


@dataclass(frozen=True)
class BatteryLinkState:
    """What the controller and the UI know of one battery, replaced as a whole on each change.

    ``setpoint_w`` is the setpoint in force as read back (+ discharge, − charge; None: the
    device's own mode); ``charge_only`` its own mode with its discharge bound at 0 (read back);
    ``setpoint_expires`` (trio time) is when its revert timer returns the battery to its own mode
    if nothing rewrites it."""

    id: str
    online: bool = False
    controllable: bool | None = None
    not_controllable: str | None = None
    reading: StorageReading | None = None
    setpoint_w: float | None = None
    charge_only: bool = False
    charge_only_possible: bool | None = None
    """Its control model can say "charge only" (124); False for 704; None: not read yet."""
    setpoint_expires: float | None = None
    last_reading: float | None = None
    last_write: float | None = None
    last_sent: float | None = None
    """As ``InverterState.last_sent``: a setpoint that landed but did not read back moves
    the output all the same."""
    error: str | None = None
    info: DeviceInfo = DeviceInfo()


@dataclass(frozen=True)
class BatteryDesired:
    """The setpoint the controller wants (W, + discharge); None: the battery's own mode, with
    ``charge_only`` its own mode without discharge (a battery whose control model cannot say
    that, model 704, is left in its own mode: ``BatteryLinkState.charge_only`` stays False)."""

    setpoint_w: float | None
    charge_only: bool = False


class BatteryLink(_CommandLink[BatteryDesired, BatteryLinkState]):
    """Polls one battery's storage models and keeps the controller's setpoint in force: written
    with its revert timeout when it changes, verified by reading it back, rewritten at a third
    of the timeout. A release (own mode) is written once: it needs no timer."""

    def __init__(
        self,
        id: str,
        bus: RegisterBus,
        unit: int,
        *,
        revert_s: int = 60,
        ac_coupled: bool = True,
        convention: StorageConvention = StorageConvention.SUNSPEC,
        discharge_positive: bool = True,
        capacity_wh: float | None = None,
        **options: Unpack[LinkOptions],
    ) -> None:
        super().__init__(id, bus, unit, revert_s=revert_s, **options)
        self.ac_coupled = ac_coupled
        self.convention = convention
        self.discharge_positive = discharge_positive
        self.capacity_wh = capacity_wh
        self.state = BatteryLinkState(id=id)
        self._values: dict[int, dict[str, Any]] = {}
        self._next_fast = -math.inf
        self._timed = False
        """What was last written has a revert timer (a setpoint, or charge only)."""

    async def _serve(self) -> None:
        await self._discover_until_found()
        smap = self.device.map
        info = DeviceInfo.from_common(self.device.common, tuple(smap.ids))
        if not storage.is_storage(smap):
            self.state = replace(self.state, info=info)
            await self._wrong_device(
                f"unit {self.device.unit} has no SunSpec storage model ({smap.ids})"
            )
        self.state = replace(self.state, info=info)
        plan = polling.storage_plan(smap)
        while True:
            self._poll_requested = False
            try:
                await self._poll(plan)
                await self._apply()
            except MapChangedError:
                raise
            except DEVICE_ERRORS as exc:
                await self._failed_poll(exc)
                continue
            self._polled_ok()
            await self._idle_until(min(self._next_fast, self._rewrite_due()))

    async def _poll(self, plan: polling.PollPlan) -> None:
        now = trio.current_time()
        values = await self.device.read_plan(plan)
        self._values = values
        reading = storage.read_storage(values, self.discharge_positive, ac_coupled=self.ac_coupled)
        if reading.capacity_wh is None and self.capacity_wh is not None:
            reading = replace(reading, capacity_wh=self.capacity_wh)
        reason = None
        possible = None
        try:
            possible = storage.storage_control_model(self.device.map, values.get(704)).id == 124
        except CommandError as exc:
            reason = str(exc)
        if reason is None:
            reason = storage.not_controllable_reason(
                reading, self.device.map.ids, ac_coupled=self.ac_coupled
            )
        if self._written is not None and self._timed:
            lost = "it reads its own mode while a setpoint with a revert timer is in force"
            self._held(lost if reading.own_mode else None)
        self.state = replace(
            self.state,
            online=True,
            error=None,
            reading=reading,
            controllable=reason is None,
            not_controllable=reason,
            setpoint_w=None if reading.own_mode else self.state.setpoint_w,
            charge_only=False if reading.own_mode else self.state.charge_only,
            charge_only_possible=possible,
            last_reading=trio.current_time(),
        )
        self._next_fast = now + self.fast_s
        self._changed()

    def _offline(self, message: str, *, fault: bool = False) -> None:
        super()._offline(message, fault=fault)
        # A setpoint asked before the outage is stale once the battery answers again (it has
        # gone back to its own mode meanwhile, and the controller decided without it): it waits
        # for the controller's next decision instead of being written again first.
        self._desired = None

    def _rewrite_due(self) -> float:
        last, written = self.state.last_write, self._written
        if last is None or written is None or not self._timed:
            return math.inf
        return last + rewrite_interval(self.revert_s)

    async def _apply(self) -> None:
        desired = self._desired
        if desired is None or not self.state.controllable:
            return
        due = trio.current_time() >= self._rewrite_due()
        if not due and _same_setpoint(desired, self._written):
            return
        await self.write(desired)

    async def write(self, desired: BatteryDesired) -> None:
        """Writes the setpoint now, verified by reading it back. Raises only DEVICE_ERRORS."""
        try:
            await self._write(desired)
        except DEVICE_ERRORS:
            raise
        except Exception as exc:
            self._fault(exc)
            raise LinkFault(f"{self.id}: internal error while writing: {exc!r}") from exc

    async def _write(self, desired: BatteryDesired) -> None:
        reading = self.state.reading
        if self.state.controllable is not True or reading is None:
            raise NotControllableError(self.state.not_controllable or f"{self.id}: not read yet")
        header = storage.storage_control_model(self.device.map, self._values.get(704))
        before = await self.device.read_model(header)
        sf_name = "WSet_SF" if header.id == 704 else "InOutWRte_SF"
        sf = before.raw.get(sf_name)
        rate_base = storage.percent_base_w(header, before.points, reading.max_charge_w)
        # Model 704 has no discharge bound: "charge only" leaves such a battery in its own mode
        # (the controller sees charge_only False and keeps counting its discharge).
        charge_only = desired.charge_only and header.id == 124
        cmd = storage.StorageCommand(
            desired.setpoint_w, revert_s=self.revert_s, charge_only=charge_only
        )
        writes, expected = storage.encode_storage(
            header,
            cmd,
            max_charge_w=rate_base,
            sf=sf,
            convention=self.convention,
            before=before.raw,
        )
        sent = trio.current_time()
        self.state = replace(self.state, last_sent=sent)
        for w in writes:
            await self.device.bus.write_registers(
                self.device.unit, w.address, w.values, timeout=self.device.request_timeout
            )
        after = await self.device.read_model(header)
        problems = control.verify(expected, after.raw)
        if problems:
            raise VerifyError(
                f"unit {self.device.unit} model {header.id}: battery setpoint did not read "
                "back: " + "; ".join(problems)
            )
        setpoint = storage.setpoint_from_raw(
            header,
            after.raw,
            max_charge_w=rate_base,
            sf=sf,
            convention=self.convention,
        )
        bound = storage.charge_only_from_raw(header, after.raw)
        self._written = desired
        self._timed = setpoint is not None or bound
        self.state = replace(
            self.state,
            setpoint_w=setpoint,
            charge_only=bound,
            # its revert timer runs from no later than the first write: never counted late
            setpoint_expires=sent + self.revert_s if self._timed else None,
            last_write=sent,
        )
        self._changed()


SETPOINT_DEADBAND_W = 20.0
"""A battery setpoint this close to the one in force is not rewritten before it is due: the law
moves it by a few watts every second, and each write is three Modbus transactions. 20 W is
within the law's margins (it counts a battery at what it measures, not what it was told)."""


def _same_setpoint(a: BatteryDesired, b: BatteryDesired | None) -> bool:
    if b is None:
        return False
    if a.charge_only != b.charge_only:
        return False
    if a.setpoint_w is None or b.setpoint_w is None:
        return a.setpoint_w is None and b.setpoint_w is None
    return abs(a.setpoint_w - b.setpoint_w) < SETPOINT_DEADBAND_W
