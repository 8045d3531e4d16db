"""The service: one trio nursery holding the device links, the utility link, the controller, the
web server and the watchdog. This is the only module where the utility side and the device side
meet; it owns the current readings, limits and commands and hands snapshots to the others.

Shutdown (SIGTERM, or any task failing) leaves every controllable inverter at its fail-safe
limit, written with a revert timeout, before the process exits.
"""

from __future__ import annotations

import itertools
import logging
import math
import signal
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from datetime import time as dtime
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from dynexport.control import battery as battery_law
from dynexport.control import law
from dynexport.control.average import RollingMean
from dynexport.control.limits import EffectiveLimits, LimitsConfig, UtilityLimits, merge_limits
from dynexport.control.meter_watch import Counters, MeterWatch, watch_meter
from dynexport.integrations.limitsources import apply_extra_limits
from dynexport.integrations.service import Integrations, integrations_status
from dynexport.modbus.client import BusPool
from dynexport.sep2 import controls as sep2_controls
from dynexport.sep2.controls import ControlType
from dynexport.sep2.identity import device_lfdi
from dynexport.sep2.schedule import ActiveControls, ScheduleSnapshot
from dynexport.sep2.state import LinkStore
from dynexport.sep2.telemetry import Sample
from dynexport.sunspec.links import (
    DEVICE_ERRORS,
    BatteryDesired,
    BatteryLink,
    Desired,
    InverterLink,
    InverterState,
    MeterLink,
)
from dynexport.sunspec.storage import StorageConvention
from dynexport.sunspec.views import site_ratings
from dynexport.system.clock import kernel_clock_synchronised
from dynexport.system.config import BatteryConfig, Config, UtilityConfig
from dynexport.system.latest_writer import LatestWriter
from dynexport.system.memory import collect_garbage
from dynexport.system.storage import atomic_write
from dynexport.system.supervise import FaultLog, supervised
from dynexport.system.watchdog import Notifier, ProgressTracker, watchdog_interval_s

if TYPE_CHECKING:
    from dynexport.sep2.client import Sep2Client
    from dynexport.sep2.flow import DerInfo
    from dynexport.update.auto import UpdateChecker
    from dynexport.update.service import UpdateStatus

log = logging.getLogger("dynexport.app")

SAMPLE_EVERY_S = 5.0
"""Telemetry samples for the utility: CSIP-AUS asks for at least one every 5 s."""
READY_AFTER_S = 30.0
"""Tell systemd we are up after this long even if a device is still missing (it is retried
forever, and the controller fails safe meanwhile); never being ready would loop restarts."""
MAX_PLAUSIBLE_SITE_W = 1_000_000.0
"""A site meter reading beyond ±1 MW is not a home's (a 100 A three-phase connection carries
about 70 kW): it is ignored, not averaged in. One such sample (+3.2 MW) read the load as 1.6 MW
and released the inverters for two seconds, exporting kilowatts over a 0 W limit."""
ASK = math.nan
"""`App._window_time`'s ``shift`` when the caller has none: ask the clock (a NaN is never an
offset)."""
FALLBACK_SOURCE = "utility fallback"
"""The source named for ``utility.fallbackExportW`` when the utility has no usable schedule."""
SHUTDOWN_BUDGET_S = 4.0
"""SIGTERM must end within 5 s: this much is spent leaving inverters at their fail-safe."""
OPERATING_W = 10.0
"""An inverter or battery whose power is within this of 0 W counts as not operating in DERStatus
(standby draws and a meter's noise are not generation or consumption)."""
AFTER_FIRST_LIMITS_S = 10.0
"""The utility link, the web server and the update tasks start once the first limits are written,
or after this long if they are not (none waits on a stuck controller or an inverter that refuses
writes)."""

LINK_RETRY_S = (5.0, 15.0, 60.0, 300.0)
"""A utility link that cannot be built (its key or certificate unreadable) is built again after
these waits (the last repeated), the stored schedule obeyed meanwhile."""


@dataclass
class AppOptions:
    """How this process runs (what the command line decides, not the site's configuration)."""

    data_dir: Path
    config_path: Path | None = None
    """Where the configuration lives (the web API writes it there); None: not writable."""
    web_host: str | None = None
    web_port: int | None = None
    """None: no web server."""
    wall_clock: Callable[[], float] = time.time
    """Unix seconds; local times (daily windows) are taken from it in the site's time zone."""
    clock_synchronised: Callable[[], bool | None] | None = None
    """Has a time server set ``wall_clock``? None: the kernel's state with the real clock,
    always with a fake one (``system/clock.py``; the utility link's `time_verified`)."""
    utility_ssl_context: Any = None
    """For the demo and tests only: a prepared client context for the utility link."""
    notifier: Notifier = field(default_factory=Notifier)


NO_PROGRAM = "the utility lists no DER program for this site"
"""Why the fallback export limit applies when the utility's schedule has no program."""


class App:
    MIN_DECISION_GAP_S = 0.25
    """Decisions woken early (a new limit, a command, a price) start at least this far apart
    (or ``intervalS`` apart, when shorter): a publisher sending ever-changing commands, or any
    other flood of wake-ups, cannot drive the control loop and the inverter writes faster."""
    CONTROLLER_MAX_SILENCE_S = 10.0
    """A controller silent for longer is stuck: the watchdog pings stop and systemd restarts us.
    With a long control interval the bound is two intervals and a second (``intervalS`` may be
    up to 10 s, and a cycle is its interval plus the wait for fresh readings)."""

    def __init__(self, config: Config, options: AppOptions, *, setup_mode: bool = False) -> None:
        self.config = config
        self.options = options
        self.notifier = options.notifier
        self.settings = _settings(config)
        self.setup_mode = setup_mode
        """No configuration yet: only the web server runs (the first-boot setup)."""
        self._restart = trio.Event()
        self._limits_changed = trio.Event()
        self.meter_mean = RollingMean(window_s=self.settings.average_s)
        self._absurd_meter_readings = 0
        self.meter_watch = MeterWatch()
        """Is the meter's reading frozen (``control/meter_watch.py``)?"""
        self._failsafe_batteries: dict[str, battery_law.BatteryCommand] = {}
        """The batteries' fail-safe, worked out with the inverters' (``_failsafe_commands``)."""
        self.controller = law.ControllerState()
        self.output: law.ControlOutput | None = None
        self.limits = EffectiveLimits()
        self.progress = ProgressTracker()
        self.inverters: list[InverterLink] = []
        self.batteries: list[BatteryLink] = []
        self.battery = BatteryBook()
        """The batteries' plan, production seen today and energy stored instead of curtailed."""
        self.meter: MeterLink | None = None
        self.bus_pool: BusPool | None = None
        """This generation's buses: the web's device scan of a serial port the links hold goes
        through its bus (the service has the port's exclusive lock)."""
        self.utility: Sep2Client | None = None
        self.utility_starting = False
        """The configured utility link is not built yet: it is built once the first limits are
        written (its XML stack takes a second or more to import on a Pi), and until then the
        stored schedule is obeyed, as a new link obeys it until its first poll."""
        self._decided = trio.Event()
        """Set by the first control decision of the running generation."""
        self._first_limits = trio.Event()
        """Set once the running generation's first limits are written (`_watch_first_limits`):
        what the site's control does not need starts then."""
        self.ready = False
        self.started = 0.0
        self.web_port: int | None = None
        self._last_meter_t: float | None = None
        self._last_mode: str = "normal"
        self.utility_error: str | None = None
        """Why the configured utility link could not start (None when it runs or is absent)."""
        self._stored_schedule: ScheduleSnapshot | None = None
        self._stored_seed = ""
        self.config_problems: list[str] = []
        """Why the configuration file was refused at start (the service then waits in setup
        mode for a valid one rather than exiting into a restart loop)."""
        self.config_unreadable = False
        """The configuration file could not be read at the start (an I/O error, not its
        content): it is read again every ``CONFIG_REREAD_S`` until it can."""
        self.integrations: Integrations | None = None
        """MQTT and the price source: created with the first generation, kept across them."""
        self.faults = FaultLog()
        """Unexpected exceptions of supervised tasks (each restarts with backoff)."""
        self.utility_fallback: str | None = None
        """Why the utility's fallback export limit is in force (None when it is not)."""
        self.pv_writer: LatestWriter[battery_law.PvMemory] = pv_memory_writer(
            options.data_dir / PV_MEMORY_FILE, self.battery
        )
        """Saves the planner's ``pv-memory.json`` off the event loop (latest state wins)."""

    @cached_property
    def update_check(self) -> UpdateChecker:
        """The optional update URL (docs/update.md): idle unless ``update`` is configured."""
        from dynexport.update.auto import UpdateChecker  # with the update tasks: after the start

        return UpdateChecker(
            lambda: self.config.update, self.options.data_dir, wall_clock=self.options.wall_clock
        )

    @cached_property
    def update_status(self) -> UpdateStatus:
        """The last update's fate, re-read only when its files change (``status()["update"]``)."""
        from dynexport.update.service import UpdateStatus

        return UpdateStatus(self.options.data_dir)

    # -- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Runs until cancelled; on the way out, leaves the inverters at their fail-safe.

        The device links, the utility link and the controller run as one *generation*; a
        configuration change that touches them ends the generation and starts the next with the
        new configuration, while the web server and the watchdog keep running.
        """
        self.options.data_dir.mkdir(parents=True, exist_ok=True)
        self.started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervised, "watchdog", self._watchdog_loop, self.faults)
            # pv-memory.json when the planner has news; on the way out, what is unwritten
            nursery.start_soon(supervised, "pv memory", self.pv_writer.run, self.faults)
            # a full garbage collection every minute: the garbage and free lists that wait for
            # one no longer keep the resident set rising for hours (system/memory)
            nursery.start_soon(supervised, "memory", collect_garbage, self.faults)
            if self.config_unreadable:
                nursery.start_soon(
                    supervised, "configuration", self._reread_unreadable_config, self.faults
                )
            # The links and the controller first: the update tasks and the web server start once
            # the first limits are written, and a web server that cannot start never holds up
            # control (docs/architecture.md, "Start order").
            await nursery.start(self._generations)
            nursery.start_soon(self._update_tasks)
            if self.options.web_port is not None:
                await self._after_first_limits()
                self.web_port = await nursery.start(self._web_task)
                if self.web_port is not None:
                    log.info("web server on %s:%s", self.options.web_host, self.web_port)
            task_status.started(self)

    CONFIG_REREAD_S = 30.0
    """An unreadable configuration file (an I/O error) is read again this often (seconds)."""

    async def _reread_unreadable_config(self) -> None:
        """Reads a configuration file that could not be read at the start again, every
        ``CONFIG_REREAD_S``, and applies it once it can be read: a moment's error of the card
        must not leave the site in setup mode, without limits, until someone comes by. Ends when
        it was applied, when its content is what is wrong (only the installer can fix that), or
        when the installer saved a configuration meanwhile."""
        from dynexport.system.config import ConfigError
        from dynexport.system.config_file import load_site_config

        path = self.options.config_path
        while self.config_unreadable and path is not None:
            await trio.sleep(self.CONFIG_REREAD_S)
            if not self.setup_mode:
                break  # the installer saved one through the web UI
            try:
                config, notices = await trio.to_thread.run_sync(load_site_config, path)
            except ConfigError as exc:
                if isinstance(exc.__cause__, OSError):
                    continue  # still unreadable
                self.config_problems = list(exc.problems)
                log.error("%s: readable again, but invalid: %s", path, "; ".join(exc.problems))
                break
            log.warning("%s: readable again: applying it", path)
            self.apply_config(config)
            self.config_problems = notices
        self.config_unreadable = False

    async def _update_tasks(self) -> None:
        """From the first limits on: commits a trial boot of a new update once healthy, reboots
        into an installed one at a quiet moment (after leaving every inverter at its
        fail-safe), and checks the optional update URL. A trial boot is noted at once, though
        (``_note_trial_boot``)."""
        await trio.to_thread.run_sync(_note_trial_boot, self.options.data_dir)
        await self._after_first_limits()
        from dynexport.update.service import commit_when_healthy

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                supervised,
                "update",
                partial(
                    commit_when_healthy,
                    self,
                    self.options.data_dir,
                    wall_clock=self.options.wall_clock,
                ),
                self.faults,
            )
            nursery.start_soon(supervised, "update check", self.update_check.run, self.faults)

    async def _generations(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Generation after generation; started once the first one runs its tasks."""
        first = True
        while True:
            self._restart = trio.Event()
            await self._generation(task_status if first else trio.TASK_STATUS_IGNORED)
            first = False
            log.info("configuration changed: restarting the links")

    async def _after_first_limits(self) -> None:
        """Waits for the running generation's first limits (`_watch_first_limits`)."""
        await self._first_limits.wait()

    async def _watch_first_limits(self, decided: trio.Event, done: trio.Event) -> None:
        """Sets ``done`` once the generation's controller has decided and every inverter has
        its first limit written, or cannot take one (not controllable, or not reachable after
        trying); or after `AFTER_FIRST_LIMITS_S`, or when the generation ends first. What the
        site's control does not need waits for this: importing the utility link's XML stack
        and the web server holds the event loop for a second or more on a Pi at boot."""
        try:
            with trio.move_on_after(AFTER_FIRST_LIMITS_S):
                await decided.wait()
                # the links' states carry no event (polled the way _fresh_readings polls them)
                while not all(  # noqa: ASYNC110
                    st.last_write is not None
                    or st.controllable is False
                    or (st.error is not None and not st.online)
                    for st in (link.state for link in self.inverters)
                ):
                    await trio.sleep(0.01)
        finally:
            done.set()  # never left unset: a waiter of an ended generation goes on

    async def _web_task(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The web server, restarted with backoff if it ever fails; the first start reports the
        bound port, a restart binds the same port again."""
        from dynexport.web.server import serve_web

        status = [_ReportedOnce(task_status)]

        async def serve() -> None:
            first = status.pop() if status else _ReportedOnce(trio.TASK_STATUS_IGNORED)
            port = self.web_port if self.web_port is not None else self.options.web_port
            try:
                await serve_web(
                    self,
                    host=self.options.web_host or "127.0.0.1",
                    port=port or 0,
                    task_status=first,
                )
            finally:
                # A first start that failed (its port taken) reports no port, so the start goes
                # on while the restarts retry: it waited for a port for ever, and App.run never
                # said it had started (the demo never printed its banner).
                if not first.reported:
                    first.started(None)

        await supervised("web server", serve, self.faults)

    async def _generation(self, task_status: Any) -> None:
        """One run of the links and the controller, until cancelled or the config changes."""
        self._decided, self._first_limits = trio.Event(), trio.Event()
        if self.config.utility is not None and (
            self.utility is None or self.utility.config != self.config.utility
        ):
            self._obey_stored_schedule(self.config.utility)
            self.utility_starting = True
        elif self.config.utility is None:
            self.utility = None
            self.utility_starting = False
            self.utility_error = None
            self._stored_schedule = None
        self.settings = _settings(self.config)
        async with BusPool(timeout=1.0, retries=1) as pool:
            self.bus_pool = pool
            self._make_links(pool)
            cancelled = True
            try:
                async with trio.open_nursery() as nursery:
                    # Every task is supervised: an unexpected exception in one is logged with
                    # its traceback and that task restarts with backoff; the others go on.
                    for link in self.inverters:
                        nursery.start_soon(supervised, link.id, link.run, self.faults)
                    for bat in self.batteries:
                        nursery.start_soon(supervised, bat.id, bat.run, self.faults)
                    if self.meter is not None:
                        nursery.start_soon(supervised, "meter", self.meter.run, self.faults)
                    if self.config.utility is not None:
                        nursery.start_soon(
                            supervised,
                            "utility link",
                            partial(self._utility_link, self.config.utility),
                            self.faults,
                        )
                    nursery.start_soon(
                        partial(
                            supervised,
                            "controller",
                            self._control_loop,
                            self.faults,
                            on_fault=self._controller_fault,
                        )
                    )
                    nursery.start_soon(supervised, "telemetry", self._telemetry_loop, self.faults)
                    if self.integrations is None:  # kept across generations
                        self.integrations = Integrations(
                            lambda: self.config,
                            self.status,
                            wake=lambda: self._limits_changed.set(),
                        )
                    for name, task in self.integrations.tasks():
                        nursery.start_soon(supervised, name, task, self.faults)
                    nursery.start_soon(self._watch_first_limits, self._decided, self._first_limits)
                    task_status.started(self)
                    await self._restart.wait()
                    cancelled = False
                    nursery.cancel_scope.cancel()
            finally:
                if cancelled:
                    with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_BUDGET_S):
                        await self.leave_fail_safe()
                self.bus_pool = None

    async def _utility_link(self, utility: UtilityConfig) -> None:
        """The utility link of this generation: built once the first limits are written, then
        run. Importing it (lxml, the resources, the flow) takes a second or more on a Pi at
        boot; the first limits need not wait for that, because until its first poll a new link
        obeys exactly the stored schedule, as this app does meanwhile (`_obey_stored_schedule`)."""
        if self.utility is None or self.utility.config != utility:
            await self._after_first_limits()
            # Its files unusable (a key or certificate unreadable, not there yet): tried again
            # with backoff, the stored schedule obeyed meanwhile. Once, it stayed off until the
            # configuration changed, however soon the file could be read again.
            for attempt in itertools.count():
                self._start_utility_link(utility)
                self._limits_changed.set()  # decide again with the link's view of the schedule
                if self.utility is not None:
                    break
                await trio.sleep(LINK_RETRY_S[min(attempt, len(LINK_RETRY_S) - 1)])
        link = self.utility
        if link is not None:  # it is: built above, or kept from the last generation
            await link.run()

    def _obey_stored_schedule(self, utility: UtilityConfig) -> None:
        """No link: obey the schedule the link stored last, randomized with the device's seed
        (the LFDI, if the certificate is readable), running out into its stored default."""
        self.utility = None
        try:
            self._stored_schedule = LinkStore(self.options.data_dir / "sep2").load_schedule()
        except Exception:  # the loader sets a damaged file aside; anything else: the fallback
            # Raised here, at every start before any device link exists, it stopped the service
            # and systemd's start limit rebooted the appliance over and over, no limit written.
            log.exception("the stored schedule cannot be read; the fallback export limit applies")
            self._stored_schedule = None
        try:
            self._stored_seed = device_lfdi(utility.cert)
        except Exception:  # unreadable: randomization without the device's seed
            self._stored_seed = ""

    def _start_utility_link(self, utility: UtilityConfig) -> None:
        """Builds the utility link; if its files are unusable, obey the stored schedule instead.

        A broken key or certificate must not crash the service (systemd would restart it into
        the same error until it reboots the appliance, over and over). The site keeps following
        what the utility last sent, running out into its stored default, and the status says why
        the link is down until the configuration is fixed.
        """
        from dynexport.sep2.client import Sep2Client  # the XML stack: after the first limits

        self.utility_starting = False
        try:
            self.utility = Sep2Client(
                utility,
                self.options.data_dir / "sep2",
                clock=self.options.wall_clock,
                monotonic=time.monotonic,
                clock_synchronised=self.options.clock_synchronised,
                ssl_context=self.options.utility_ssl_context,
                stored_schedule=self._stored_schedule,  # read as this generation started
            )
        except (OSError, ValueError) as exc:
            # self.utility stays None: the stored schedule this generation read stays in force
            self.utility_error = f"utility link not started: {exc}"
            log.error("%s; obeying the stored schedule", self.utility_error)
        else:
            self.utility_error = None
            self._stored_schedule = None

    def apply_config(self, config: Config) -> None:
        """Makes ``config`` the running configuration, without a restart of the process.

        Limits and the utility's schedule are re-read every control cycle, and the controller
        is woken at once, so a change of ``limits`` applies immediately; a change of devices,
        the utility or control timing restarts the links (the inverters' revert timers cover
        the second this takes). Web server changes apply at the next start of the service.
        """
        old = self.config
        self.config = config
        self.setup_mode = False
        self.config_problems = []
        self._limits_changed.set()  # limits and windows apply at once, not at the next tick
        relinked = (
            old.inverters != config.inverters
            or old.meter != config.meter
            or old.utility != config.utility
            or old.control != config.control
            or old.batteries != config.batteries
        )
        if relinked:
            self._restart.set()

    def _make_links(self, pool: BusPool) -> None:
        for name in list(self.progress.limits):
            self.progress.unregister(name)
        revert = self.config.control.revert_s
        self.inverters = [
            InverterLink(
                f"inverter {i + 1}",
                pool.get(inv.endpoint),
                inv.unit,
                revert_s=revert,
                # The controller asks for a poll every interval; this is the fallback pace.
                fast_s=2 * self.config.control.interval_s,
            )
            for i, inv in enumerate(self.config.inverters)
        ]
        for link in self.inverters:
            self.progress.register(link.id, 120.0, trio.current_time())
        self.batteries = [
            self._battery_link(pool, i, b) for i, b in enumerate(self.config.batteries)
        ]
        for bat in self.batteries:
            self.progress.register(bat.id, 120.0, trio.current_time())
        self.meter = None  # a meter removed from the configuration must not linger
        if self.config.meter is not None:
            self.meter = MeterLink(
                "meter",
                pool.get(self.config.meter.endpoint),
                self.config.meter.unit,
                fast_s=2 * self.config.control.interval_s,
            )
            self.progress.register("meter", 60.0, trio.current_time())
        interval = self.config.control.interval_s
        silence = max(self.CONTROLLER_MAX_SILENCE_S, 2 * interval + 1.0)
        self.progress.register("controller", silence, trio.current_time())

    async def _control_loop(self) -> None:
        interval = self.config.control.interval_s
        gap = min(self.MIN_DECISION_GAP_S, interval)
        next_t = trio.current_time()
        while True:
            started = trio.current_time()
            await self._fresh_readings(budget=min(0.5 * interval, 0.8))
            self.control_once(trio.current_time())
            now = trio.current_time()
            while next_t <= now:  # the next regular tick (after a slow cycle: no burst)
                next_t += interval
            # A new limit is acted on when it starts, not up to an interval later: wake at the
            # next change of the utility's schedule or of a daily window, or when the
            # configuration changes.
            wake_at = min(next_t, now + self._seconds_to_next_limit_change(interval))
            with trio.move_on_at(wake_at) as waited:
                await self._limits_changed.wait()
            self._limits_changed = trio.Event()
            if not waited.cancelled_caught:  # woken early: only then can the gap delay it
                await trio.sleep_until(started + gap)

    async def _controller_fault(self, exc: BaseException) -> None:
        """The control law or its inputs failed: command every inverter's fail-safe at once.

        The links keep rewriting the last command before its revert timer runs out, so a dead
        controller must not leave its last (possibly generous) limit in force. If even the
        fail-safe cannot be computed, 0 % is commanded: no export is always within the limit.
        """
        del exc
        try:
            commands = self._failsafe_commands()
        except Exception:
            log.exception("fail-safe limits could not be computed: commanding 0 %")
            commands = [law.InverterCommand(link.id, 0.0) for link in self.inverters]
        by_id = {link.id: link for link in self.inverters}
        for cmd in commands:
            by_id[cmd.id].command(Desired(pct=cmd.limit_pct, connect=cmd.connect))
        for bat in self.batteries:
            bat.command(self._failsafe_battery(bat))

    def _failsafe_battery(self, bat: BatteryLink) -> BatteryDesired:
        """A battery's fail-safe, the law's for a quiet meter (worked out with the inverters'
        by ``_failsafe_commands``): "charge only" if AC-coupled (its own mode's discharge would
        take over the load the inverters' cap gives up), held if it cannot be told that (model
        704), its own mode if a hybrid's (its inverter's limit holds its output)."""
        cmd = self._failsafe_batteries.get(bat.id)
        if cmd is None:  # not worked out (unreachable, or its state could not be read)
            return BatteryDesired(None, charge_only=bat.ac_coupled)
        return BatteryDesired(cmd.setpoint_w, cmd.charge_only)

    def _failsafe_commands(self) -> list[law.InverterCommand]:
        """What each controllable inverter gets when the meter cannot be trusted: total
        generation within the export limit in force (safe at zero load). The limits are merged
        afresh, so a fail-safe taken before the first control cycle still has them. The
        batteries' comes with it (``_failsafe_battery``); none until it is worked out."""
        self._failsafe_batteries = {}  # a law that raises below must not leave an old one
        limits = self.limits
        try:
            limits = self._merged_limits(self._utility_limits())
            limits = apply_extra_limits(limits, self.integrations, trio.current_time())
        except Exception:
            log.exception("limits could not be merged for the fail-safe; using the last ones")
        now = trio.current_time()
        states = [self._law_state(link, now) for link in self.inverters]
        # The batteries' discharge (an unreachable one's last setpoint) comes off the cap, as in
        # the law's own fail-safe; if they cannot be read, the inverters' cap is computed alone.
        try:
            batteries = [self._battery_state(b, now) for b in self.batteries]
        except Exception:
            log.exception("the batteries' states could not be read for the fail-safe")
            batteries = []
        out = law.control_step(
            RollingMean(), states, limits, law.ControllerState(), now, self.settings, batteries,
            self._battery_settings(),
        )  # fmt: skip
        self._failsafe_batteries = {c.id: c for c in out.battery_commands}
        return list(out.commands)

    def _seconds_to_next_limit_change(self, horizon_s: float) -> float:
        """Seconds until the effective limits next change, if within ``horizon_s``; else inf."""
        outlook = self.limits_outlook(hours=horizon_s / 3600)
        if len(outlook) < 2:
            return math.inf
        return max(0.0, outlook[1][0] - self.options.wall_clock())

    async def _fresh_readings(self, budget: float) -> None:
        """Polls the meter and every inverter now, and waits (at most ``budget`` s) for them.

        Deciding on readings taken together, just now, keeps the load estimate (meter + DER)
        consistent and removes up to a whole interval of latency; a device that does not answer
        in time is simply used as last seen (the law and the fail-safe judge its age).
        """
        asked = trio.current_time()
        links: list[InverterLink | MeterLink | BatteryLink] = [*self.inverters, *self.batteries]
        if self.meter is not None:
            links.append(self.meter)
        waiting = [link for link in links if link.state.online]
        for link in links:
            link.request_poll()
        with trio.move_on_after(budget):
            while any((link.state.last_reading or -1.0) < asked for link in waiting):
                await trio.sleep(0.01)
                waiting = [link for link in waiting if link.state.online]

    def control_once(self, now: float) -> law.ControlOutput:
        """One control decision: gather readings and limits, run the law, command inverters."""
        self._feed_meter()
        self.limits = self._merged_limits(self._utility_limits())
        self.limits = apply_extra_limits(self.limits, self.integrations, now)
        states = [self._law_state(link, now) for link in self.inverters]
        out = law.control_step(
            self.meter_mean, states, self.limits, self.controller, now, self.settings,
            [self._battery_state(b, now) for b in self.batteries],
            self._battery_settings(), self._charge_plan(now),
        )  # fmt: skip
        self.controller = out.state
        was_blind = self.output.blind if self.output is not None else ()
        for inv_id in set(out.blind) - set(was_blind):
            log.warning(
                "%s answers, but its output cannot be read (its power register says 'not "
                "implemented'): it is held at its share of the fail-safe limit until it can",
                inv_id,
            )
        previous = self.output.not_following if self.output is not None else ()
        for inv_id in set(out.not_following) - set(previous):
            log.warning(
                "%s makes more than the limit it reads back, for %.0f s now: the other inverters "
                "are held lower to make room (check its remote-control settings and the rating "
                "its limit is a percentage of)",
                inv_id,
                self.settings.follow_s,
            )
        self.output = out
        self._command_batteries(out, now)
        by_id = {link.id: link for link in self.inverters}
        for cmd in out.commands:
            pct = self.tested_pct(cmd.id, cmd.limit_pct, now)  # installer tools: a ceiling
            by_id[cmd.id].command(Desired(pct=pct, connect=cmd.connect))
        commanded = {cmd.id for cmd in out.commands}
        for link in self.inverters:
            # One the law gives no command while it answers (no rating) was still opened by a
            # disconnect: its link would rewrite that for good, so it is connected again.
            wish = link.desired
            if link.id not in commanded and link.state.online and wish and not wish.connect:
                link.command(Desired(pct=None, connect=True))
        if out.mode != "normal" and out.mode != self._last_mode:
            log.warning("controller mode: %s (%s)", out.mode, out.source or "no source")
        self._last_mode = out.mode
        self.progress.progress("controller", now)
        self._decided.set()
        return out

    def _feed_meter(self) -> None:
        if self.meter is None:
            return
        st = self.meter.state
        if st.last_reading is not None and st.last_reading != self._last_meter_t:
            self._last_meter_t = st.last_reading
            w = st.site_w
            if w is None or not math.isfinite(w):
                return
            if abs(w) > MAX_PLAUSIBLE_SITE_W:
                self._absurd_meter_readings += 1
                count = self._absurd_meter_readings
                if count in (1, 10) or count % 1000 == 0:
                    log.warning(
                        "meter reading %.0f W ignored: no home connection carries %.0f MW "
                        "(a value read with the wrong scale factor?); %d so far",
                        w,
                        MAX_PLAUSIBLE_SITE_W / 1e6,
                        count,
                    )
                return  # not in the mean; a meter that says only this goes stale (fail-safe)
            was_frozen = self.meter_watch.frozen
            r = st.reading
            counters = None if r is None else Counters(r.import_wh, r.export_wh, r.energy_step_wh)
            self.meter_watch = watch_meter(
                self.meter_watch, st.last_reading, w, self._site_output_w(), counters
            )
            watch = self.meter_watch
            if watch.frozen:
                if not was_frozen and watch.why == "energy":
                    log.warning(
                        "the meter's reading has stayed at %.0f W, and its energy counter at "
                        "%.0f Wh, for %.0f s: power that flows moves them, so it is taken as "
                        "frozen (a gateway serving its last values?), and the fail-safe limits "
                        "apply until it moves again",
                        w,
                        watch.energy_wh or 0.0,
                        st.last_reading - max(watch.since or 0.0, watch.energy_since or 0.0),
                    )
                elif not was_frozen:
                    log.warning(
                        "the meter's reading has stayed at %.0f W for %.0f s while the site's "
                        "output moved by %.0f W: taken as frozen (a gateway serving its last "
                        "values?), so the fail-safe limits apply until it moves again",
                        w,
                        st.last_reading - (watch.since or st.last_reading),
                        watch.der_high_w - watch.der_low_w,
                    )
                return  # kept out of the mean: it goes stale, and the fail-safe follows
            if was_frozen:
                log.warning("the meter's reading moves again: control from the meter resumes")
            self.meter_mean = self.meter_mean.add(st.last_reading, w)

    def _site_output_w(self) -> float | None:
        """What the inverters and the AC-coupled batteries make now, as read (None: nothing
        read): the movement a frozen meter reading does not follow."""
        inverters = self._der_w()
        batteries = [
            link.state.reading.power_w
            for link in self.batteries
            if link.ac_coupled
            and link.state.online
            and link.state.reading is not None
            and link.state.reading.power_w is not None
        ]
        if inverters is None and not batteries:
            return None
        return (inverters or 0.0) + sum(batteries)

    def _utility_limits(self) -> UtilityLimits | None:
        """The utility's controls in force; its fallback export limit when it has none usable.

        A configured utility that has no schedule to obey (no signed certificate yet, a PIN
        mismatch, a lost or corrupt state file with no network) must not leave the site
        unlimited: dynexport fails closed at ``utility.fallbackExportW``.
        """
        utility = self.config.utility
        if utility is None:
            self.utility_fallback = None
            return None
        try:
            why, limits = self._utility_schedule_limits()
        except Exception as exc:
            why, limits = f"its schedule could not be evaluated ({exc})", None
            if why != self.utility_fallback:  # once, not at every control cycle
                log.exception("the utility's schedule could not be evaluated")
        if limits is not None:
            self.utility_fallback = None
            return limits
        if why != self.utility_fallback:
            log.warning(
                "utility: %s; applying the fallback export limit %.0f W",
                why,
                utility.fallback_export_w,
            )
        self.utility_fallback = why
        return UtilityLimits(export_w=utility.fallback_export_w, label=FALLBACK_SOURCE)

    def _utility_schedule_limits(self) -> tuple[str, UtilityLimits | None]:
        if self.utility is None:
            if self._stored_schedule is None:
                if self.utility_starting:  # what the new link will say until its first poll
                    return "no schedule has been received from the utility yet", None
                return self.utility_error or "the utility link is not running", None
            # No link (its files are unusable): the stored schedule, randomized with the same
            # seed as the link would use (the LFDI, if the certificate itself is readable).
            wall, snapshot = self.options.wall_clock(), self._stored_schedule
            if not snapshot.programs:
                return NO_PROGRAM, None
            if self._stored_time_verified():
                stored = snapshot.active_controls(wall, self._stored_seed)
            else:  # the clock is not known to be right: the strictest of the schedule ahead
                stored = snapshot.strictest_ahead(wall, self._stored_seed)
            return "", utility_limits(stored, self.limit_rating_w())
        if not self.utility.acting:
            return "the utility's registration does not match the configured PIN", None
        active = self.utility.active_controls(self.options.wall_clock())
        if active is None:
            listed = self.utility.snapshot
            if listed is not None and not listed.programs:
                return NO_PROGRAM, None
            return "no schedule has been received from the utility yet", None
        return "", utility_limits(active, self.limit_rating_w())

    def _stored_time_verified(self) -> bool:
        """Without a link (its files unusable), is the stored schedule's time known? As the
        link decides before the server's Time is read (``sep2.flow.time_verified``)."""
        from dynexport.sep2.schedule import time_verified  # imported with the snapshot

        offset = 0 if self._stored_schedule is None else self._stored_schedule.clock_offset
        return time_verified(False, self._clock_synchronised(), offset)

    def _clock_synchronised(self) -> bool | None:
        """Has a time server set the wall clock (None: cannot tell)? Always with a fake one."""
        probe = self.options.clock_synchronised
        if probe is None:
            probe = kernel_clock_synchronised if self.options.wall_clock is time.time else None
        return True if probe is None else probe()

    def _ratings(self) -> list[float | None]:
        """Each inverter's WMax (its rating without one); None: not read yet."""
        return [link.state.w_max or link.state.rated_w for link in self.inverters]

    def site_rated_w(self) -> float | None:
        """The site's setMaxW: the sum of every inverter's WMax, once all have been read."""
        known = self._ratings()
        if not known or any(w is None for w in known):
            return None
        return float(sum(w or 0.0 for w in known))

    def limit_rating_w(self) -> float | None:
        """What a utility's opModMaxLimW is a percentage of, to enforce it: the site's setMaxW,
        or while an inverter has not been read (asleep, unreachable since the start, just
        relinked) the sum of those that have, a lower limit in W and so a safe one (0 W when
        none has). Waiting for all of them dropped the limit: no generation limit at all for
        as long as one inverter was silent, while the event was answered as performed.
        None: no inverters configured."""
        if not self.inverters:
            return None
        ratings = self._ratings()
        return float(sum(w for w in ratings if w is not None and math.isfinite(w) and w > 0))

    def _merged_limits(
        self, util: UtilityLimits | None, t: float | None = None, shift: float | None = ASK
    ) -> EffectiveLimits:
        """The utility's limits merged with the installer's and its daily windows at wall-clock
        time ``t`` (default now); every window applies while the time of day is not known.
        ``shift``: `_window_offset` when the caller has it already (one clock probe for many
        times)."""
        local = self._window_time(t, shift)
        return merge_limits(util, self.config.limits, local, every_window=local is None)

    def _window_offset(self) -> float | None:
        """Seconds to add to the wall clock to judge daily windows by, or None while the time
        of day is not known: a Pi has no real-time clock and restarts from its last saved time
        after a power cut, behind by as long as it was off, until a time server sets it; a
        window read at that clock was missed (a 0 W window from 10:00 obeyed from 12:00 after a
        two-hour cut). Known once a time server has set the clock, or the utility's Time was
        read (the wall clock plus the measured offset)."""
        if not self.config.limits.windows:
            return 0.0
        return self._clock_offset()

    def _clock_offset(self) -> float | None:
        """Seconds to add to the wall clock for the true time: 0 once a time server has set
        the clock, the measured offset once the utility's Time was read; None before either
        (the clock may be hours behind after a power cut: `_window_offset`)."""
        if self._clock_synchronised():
            return 0.0
        utility = self.utility
        if utility is not None and utility.time_verified:
            return float(utility.clock_offset)
        return None

    def _window_time(self, t: float | None = None, shift: float | None = ASK) -> dtime | None:
        """The site's local time of day at wall-clock time ``t`` (default now) for the daily
        windows; None while it is not known (`_window_offset`, unless given as ``shift``)."""
        offset = self._window_offset() if shift is ASK else shift
        if offset is None:
            return None
        wall = self.options.wall_clock() if t is None else t
        return self.local_datetime(wall + offset).time()

    def local_datetime(self, t: float | None = None) -> datetime:
        """Wall-clock time ``t`` (default now) in the site's time zone."""
        return datetime.fromtimestamp(
            self.options.wall_clock() if t is None else t, self.time_zone()
        )

    def time_zone(self) -> tzinfo | None:
        """The site's zone (``site.timeZone``); None: the system's own."""
        name = self.config.site.time_zone
        if name is None:
            return None
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            return None  # validated when loaded; a zone database removed since: system zone

    def limits_outlook(self, hours: float = 24.0) -> list[tuple[float, EffectiveLimits]]:
        """The effective limits from now on: (local epoch seconds, limits) at every change.

        Merges the utility's stored schedule with the installer's limits and daily windows, the
        same way the controller does each second, so the outlook shows what will be obeyed.
        """
        now = self.options.wall_clock()
        end = now + hours * 3600
        segments = []
        offset = 0
        try:
            if self.utility is not None and self.utility.acting:
                segments = self.utility.schedule(hours, local=now)
                offset = self.utility.clock_offset
            elif self.utility is None and self._stored_schedule is not None:
                # No link (not built yet, or its files are unusable): the stored schedule, as
                # _utility_schedule_limits obeys it (the controller's wake-ups, the charge plan
                # and GET /api/limits saw the fallback everywhere meanwhile).
                segments = self._stored_schedule.schedule(int(now), int(end), self._stored_seed)
        except Exception:
            # As _utility_limits: a schedule that cannot be evaluated is the fallback limit
            # (logged there); raised here, it stopped the controller at every cycle.
            segments, offset = [], 0
        times = {now}
        times.update(seg.start - offset for seg in segments if now < seg.start - offset < end)
        shift = self._window_offset()  # None: every window applies throughout, no edges
        if shift is not None:
            edges = _window_edges(self.config.limits, now + shift, end + shift, self.time_zone())
            times.update(e - shift for e in edges)
        outlook: list[tuple[float, EffectiveLimits]] = []
        for t in sorted(times):
            server_t = t + offset
            seg = next((g for g in segments if g.start <= server_t < g.end), None)
            util = None if seg is None else utility_limits(seg.controls, self.limit_rating_w())
            if seg is None and self.config.utility is not None:
                util = UtilityLimits(
                    export_w=self.config.utility.fallback_export_w, label=FALLBACK_SOURCE
                )
            limits = self._merged_limits(util, t, shift)
            if not outlook or outlook[-1][1] != limits:
                outlook.append((t, limits))
        return outlook

    # -- batteries (docs/control.md "Batteries") -----------------------------------------------

    def _battery_link(self, pool: BusPool, i: int, cfg: BatteryConfig) -> BatteryLink:
        hybrid = any(
            inv.endpoint == cfg.endpoint and inv.unit == cfg.unit for inv in self.config.inverters
        )
        return BatteryLink(
            f"battery {i + 1}",
            pool.get(cfg.endpoint),
            cfg.unit,
            revert_s=self.config.control.revert_s,
            fast_s=2 * self.config.control.interval_s,
            ac_coupled=not hybrid,
            convention=StorageConvention(cfg.convention),
            discharge_positive=cfg.discharge_positive,
            capacity_wh=cfg.capacity_wh,
        )

    def _battery_state(self, link: BatteryLink, now: float) -> battery_law.BatteryState:
        st, r = link.state, link.state.reading
        ready = st.online and r is not None and r.power_w is not None
        # A hybrid's battery belongs to the inverter at its endpoint and unit (the law holds
        # its charge to that inverter's PV and shares the budget knowing it).
        dev = link.device
        owner = next(
            (i.id for i in self.inverters if i.device.bus is dev.bus and i.device.unit == dev.unit),
            None,
        )
        return battery_law.BatteryState(
            id=link.id,
            online=ready,
            controllable=bool(st.controllable),
            capacity_wh=float((r.capacity_wh if r else None) or 0.0),
            max_charge_w=float((r.max_charge_w if r else None) or 0.0),
            max_discharge_w=float((r.max_discharge_w if r else None) or 0.0),
            soc_pct=None if r is None else r.soc_pct,
            power_w=float((r.power_w if r else None) or 0.0),
            ac_coupled=link.ac_coupled,
            sampled_t=st.last_reading,
            written_t=st.last_sent,
            setpoint_w=st.setpoint_w,
            setpoint_expires_t=st.setpoint_expires,
            charge_only=st.charge_only,
            charge_only_possible=st.charge_only_possible is not False,
            inverter_id=None if link.ac_coupled else owner,
        )

    def _battery_settings(self) -> battery_law.BatterySettings:
        """The strictest of the configured batteries' owner settings."""
        bats = self.config.batteries
        if not bats:
            return battery_law.BatterySettings()
        return battery_law.BatterySettings(
            max_soc_pct=min(b.max_soc_pct for b in bats),
            reserve_soc_pct=max(b.reserve_soc_pct for b in bats),
        )

    def _charge_plan(self, now: float) -> battery_law.ChargePlan | None:
        """The planner's allowance, worked out every few minutes (pure: control/battery.py)."""
        if not self.batteries or not any(b.plan for b in self.config.batteries):
            return None
        book = self.battery
        if now - book.plan_t < PLAN_EVERY_S and book.plan_t > -math.inf:
            return book.plan
        book.plan_t = now
        try:
            book.plan = self._make_plan(now)
        except Exception:  # a planner bug must never stop the controller: no hold back
            log.exception("battery plan failed; charging is not held back")
            book.plan = None
        return book.plan

    def _make_plan(self, now: float) -> battery_law.ChargePlan | None:
        wall = self.options.wall_clock()
        offset = self._clock_offset()
        if offset is None:
            # The sun's hours and today's date read off a clock hours behind would hold the
            # charging back at the wrong hours, and file today's sun under the wrong hours (or
            # yesterday) in the memory the next days' plans start from: no plan, nothing kept.
            return battery_law.ChargePlan(None, reason="the time of day is not known yet")
        local = self.local_datetime(wall + offset)  # the sun's time; the limits' is the wall's
        hour = local.hour + local.minute / 60.0 + local.second / 3600.0
        book = self.battery
        path = self.options.data_dir / PV_MEMORY_FILE
        if book.pv is None:  # once per process: the previous days' sun, from the data partition
            book.pv = book.pv_saved = load_pv_memory(path)
        latitude = battery_law.latitude_for(self.config.site.time_zone)
        peak = self.site_rated_w() or 0.0
        states = [self._battery_state(b, now) for b in self.batteries]
        free = [i.state for i in self.inverters if i.state.online and i.state.limit_pct is None]
        if free and len(free) == len(self.inverters):  # unlimited: production shows the sun
            # PV: the inverters' AC output plus what a hybrid's battery takes before it.
            made = sum(st.power_w or 0.0 for st in free)
            made -= sum(b.power_w for b in states if b.online and not b.ac_coupled)
            book.observed.append((hour, made))
            book.observed = book.observed[-12:]
            book.pv = book.pv.record(local.date(), hour, made, peak, latitude)
        if book.pv != book.pv_saved and now - book.pv_saved_t >= PV_SAVE_EVERY_S:
            # Written by the pv-memory task in a worker thread: a hung SD card must not hold
            # up the control cycle this runs in (the state lives on in RAM meanwhile).
            book.pv_saved_t = now
            book.pv_saved = book.pv
            self.pv_writer.submit(book.pv)
        ready = [b for b in states if b.online and b.soc_pct is not None]
        if not ready:
            return None
        total = battery_law.BatteryState(
            id="site",
            online=True,
            controllable=True,
            capacity_wh=sum(b.capacity_wh for b in ready),
            max_charge_w=sum(b.max_charge_w for b in ready),
            max_discharge_w=sum(b.max_discharge_w for b in ready),
            soc_pct=sum((b.soc_pct or 0.0) * b.capacity_wh for b in ready)
            / max(sum(b.capacity_wh for b in ready), 1e-9),
            power_w=sum(b.power_w for b in ready),
        )
        limits = [(t, lim.export_w) for t, lim in self.limits_outlook(24.0)]
        load = self.output.load_estimate_w if self.output else None
        if load is not None and math.isfinite(load):
            book.loads = [*book.loads[-23:], max(load, 0.0)]
        # The least the household drew in the last two hours: a cautious guess (a breakfast
        # peak must not make the midday surplus look small).
        base_load = min(book.loads) if book.loads else 300.0
        steps = battery_law.forecast(
            wall, hour, local.timetuple().tm_yday, latitude, peak, base_load, limits,
            book.observed, yesterday_ratio=book.pv.prior_ratio(local.date()),
        )  # fmt: skip
        evening = [b.evening_soc_pct for b in self.config.batteries if b.evening_soc_pct]
        return battery_law.plan_charge(
            wall, total, steps, self._battery_settings(), max(evening) if evening else None
        )

    def _command_batteries(self, out: law.ControlOutput, now: float) -> None:
        by_id = {b.id: b for b in self.batteries}
        for cmd in out.battery_commands:
            by_id[cmd.id].command(BatteryDesired(cmd.setpoint_w, cmd.charge_only))
        book = self.battery
        dt = 0.0 if book.last_t is None else min(max(now - book.last_t, 0.0), 5.0)
        book.last_t = now
        if not self.batteries:
            return
        # A status count, no decision: by the wall clock while the true time is not known (a
        # site without any time source still starts a new count each day), and then only
        # forwards (a site whose clock only the utility corrects falls back to a date behind
        # while its link is rebuilt: no new day for that).
        offset = self._clock_offset()
        today = self.local_datetime(self.options.wall_clock() + (offset or 0.0)).date()
        if book.day is None or today > book.day or (offset is not None and today != book.day):
            book.day, book.observed, book.stored_wh = today, [], 0.0
        if "export limit" in out.battery_reason:
            charging = sum(
                max(-(b.state.reading.power_w or 0.0), 0.0)
                for b in self.batteries
                if b.state.reading is not None
            )
            book.stored_wh += charging * dt / 3600.0

    def batteries_status(self) -> dict[str, Any]:
        """The ``battery`` section of the status (docs/api.md): SoC, power, what it does."""
        out = self.output
        readings = [b.state.reading for b in self.batteries if b.state.reading is not None]
        caps = [r.capacity_wh for r in readings if r.capacity_wh and r.soc_pct is not None]
        soc = None
        if caps and len(caps) == len(readings):
            soc = sum((r.soc_pct or 0.0) * (r.capacity_wh or 0.0) for r in readings) / sum(caps)
        plan = self.battery.plan
        return {
            "configured": bool(self.batteries),
            "socPct": soc,
            "powerW": sum(r.power_w or 0.0 for r in readings) if readings else None,
            "mode": None if out is None else out.battery_mode,
            "setpointW": None if out is None else out.battery_w,
            "reason": None if out is None else out.battery_reason or None,
            "storedInsteadOfCurtailedTodayWh": self.battery.stored_wh,
            "plan": None if plan is None else {
                "maxChargeW": plan.max_charge_w, "needWh": plan.need_wh,
                "roomWh": plan.room_wh, "reason": plan.reason,
            },
            "devices": [
                {
                    "id": b.id,
                    "online": b.state.online,
                    "controllable": b.state.controllable,
                    "notControllable": b.state.not_controllable,
                    "socPct": None if b.state.reading is None else b.state.reading.soc_pct,
                    "powerW": None if b.state.reading is None else b.state.reading.power_w,
                    "capacityWh": None if b.state.reading is None else b.state.reading.capacity_wh,
                    "setpointW": b.state.setpoint_w,
                    "chargeOnly": b.state.charge_only,
                    "manufacturer": b.state.info.manufacturer,
                    "model": b.state.info.model,
                    "error": b.state.error,
                }
                for b in self.batteries
            ],
        }  # fmt: skip

    @staticmethod
    def _law_state(link: InverterLink, now: float | None = None) -> law.InverterState:
        st = link.state
        reference = st.w_max or st.rated_w
        # As it is: the law tells an inverter it cannot read (NaN) or size (0) from one it
        # cannot reach, and still commands one that answers but whose output it cannot read.
        return law.InverterState(
            id=st.id,
            online=st.online,
            controllable=bool(st.controllable),
            rated_w=float(reference or 0.0),
            power_w=math.nan if st.power_w is None else float(st.power_w),
            limit_pct=st.limit_pct,
            sampled_t=st.last_reading,
            written_t=st.last_sent,
            # What an unreachable inverter may make: its last verified limit until that limit's
            # revert timer lets it go (then its rating), on the same trio clock as ``now``.
            last_limit_pct=st.limit_pct,
            limit_expires_t=(
                None
                if st.last_write is None or st.limit_pct is None
                else st.last_write + link.revert_s
            ),
        )

    async def _telemetry_loop(self) -> None:
        while True:
            await trio.sleep(SAMPLE_EVERY_S)
            if self.utility is None:
                continue
            self.utility.add_sample(self.sample(self.options.wall_clock()))
            der = self.der_info()
            if der is not None:
                self.utility.update_der(der)

    def sample(self, t: float) -> Sample:
        """Site and DER readings for the utility's telemetry: totals keyed (role, quantity),
        and per phase (role, quantity, "A" | "B" | "C") where more than one phase is known (on a
        single-phase site phase A is the total, so it is not sent twice)."""
        values: dict[tuple[str, ...], float | None] = {}

        def phases(role: str, quantity: str, per_phase: tuple[float | None, ...]) -> None:
            known = [v for v in per_phase if v is not None and math.isfinite(v)]
            if len(known) < 2:
                return
            for name, value in zip(("A", "B", "C"), per_phase, strict=False):
                if value is not None and math.isfinite(value):
                    values[(role, quantity, name)] = value

        # a meter that has stopped answering keeps its last reading: never posted as current
        meter = None
        if self.meter is not None and self.meter.state.online:
            meter = self.meter.state.reading
        if meter is not None:
            values[("site", "W")] = meter.site_w
            values[("site", "var")] = meter.var
            values[("site", "V")] = _mean(meter.phase_v)
            values[("site", "Hz")] = meter.hz
            phases("site", "W", meter.phase_w)
            phases("site", "var", meter.phase_var)
            phases("site", "V", meter.phase_v)
        readings = [
            link.state.reading
            for link in self.inverters
            if link.state.online and link.state.reading is not None
        ]
        if readings:
            values[("der", "W")] = sum(r.w or 0.0 for r in readings if r is not None)
            values[("der", "var")] = sum(r.var or 0.0 for r in readings if r is not None)
            values[("der", "V")] = _mean(
                tuple(v for r in readings if r is not None for v in r.phase_v)
            )
            values[("der", "Hz")] = _mean(tuple(r.hz for r in readings if r is not None))
            # per-phase DER voltage: the mean over the inverters that report that phase
            phases(
                "der",
                "V",
                tuple(
                    _mean(tuple(r.phase_v[i] for r in readings if r is not None)) for i in range(3)
                ),
            )
        # The batteries' stored energy (SoC × capacity), which the storage procedures check;
        # only when every online battery reports both, so a partial sum is never posted.
        stored = [
            b.state.reading
            for b in self.batteries
            if b.state.online and b.state.reading is not None
        ]
        if stored and all(r.soc_pct is not None and r.capacity_wh for r in stored):
            values[("der", "Wh")] = sum(
                (r.soc_pct or 0.0) / 100.0 * (r.capacity_wh or 0.0) for r in stored
            )
        return Sample(t=t, values=values)

    def der_info(self) -> DerInfo | None:
        """The site's DER as one device (CSIP-AUS: multi-inverter sites report totals)."""
        from dynexport.sep2.flow import MODE_CONNECT, DerInfo  # loaded with the utility link

        known = [link.state for link in self.inverters if link.state.rated_w is not None]
        if not known or len(known) != len(self.inverters):
            return None
        rated = sum(st.rated_w or 0.0 for st in known)
        w_max = sum((st.w_max or st.rated_w or 0.0) for st in known)
        controllable = any(st.controllable for st in known)
        # A battery adds import and load limits to what is enforced (and advertised).
        enforced = sep2_controls.enforced_controls(bool(self.batteries))
        modes = sep2_controls.modes_supported(enforced) if controllable else 0
        if not all(st.can_disconnect for st in known if st.controllable):
            # one that cannot open its contactor would only be limited to 0 %
            modes &= ~MODE_CONNECT
        # VA/var/PF: totals only when every inverter says, PF of the least capable one
        rtg = site_ratings([st.ratings for st in known])
        lim = site_ratings([st.set_limits for st in known])
        return DerInfo(
            rated_w=rated,
            max_w=w_max,
            rated_va=rtg.va,
            rated_var=rtg.var_inj,
            rated_var_neg=rtg.var_abs,
            rated_pf_over=rtg.pf_over,
            rated_pf_under=rtg.pf_under,
            set_va=lim.va,
            set_var=lim.var_inj,
            set_var_neg=lim.var_abs,
            set_pf_over=lim.pf_over,
            set_pf_under=lim.pf_under,
            # advertised from the one set of controls the client enforces (and answers 2/3 for)
            modes_supported=modes,
            doe_modes_supported=(
                sep2_controls.doe_modes_supported(enforced) if controllable else 0
            ),
            **self._der_state(known),
            **self._storage_der_fields(enforced),
        )

    def _der_state(self, known: list[InverterState]) -> dict[str, Any]:
        """DERStatus's genConnectStatus bits and operationalModeStatus for the site as one DER
        (CSIP-AUS ALL-07, ALL-08, ALL-12, MUL-01): connected and available while an inverter that
        answers is on the grid and no disconnect (opModConnect false) is in force; operating
        while an inverter or a battery generates or consumes beyond ``OPERATING_W``;
        operational mode 2 while operating, else 1 (off). Before, an
        inverter opened by the disconnect still counted as available, one tripped inverter
        of two said the whole site was disconnected, inverters gone silent were connected on
        their last word, and the mode was always 2."""
        live = [st for st in known if st.online]
        opened = self.output is not None and self.output.mode == "disconnected"
        on_grid = not opened and any(st.connected is not False for st in live)
        # generating or consuming (a hybrid charging from the grid, a battery discharging while
        # the PV makes nothing: ALL-08 says "generating or consuming"), beyond standby noise
        flows = [st.power_w for st in live]
        flows += [
            b.state.reading.power_w
            for b in self.batteries
            if b.state.online and b.state.reading is not None
        ]
        operating = any(w is not None and abs(w) > OPERATING_W for w in flows)
        return {
            "connected": on_grid,
            "available": on_grid,
            "operating": operating,
            "operational_mode": 2 if operating else 1,
        }

    def _storage_der_fields(self, enforced: frozenset[ControlType]) -> dict[str, Any]:
        """DerInfo's storage fields (DERCapability/Settings/Status) from the batteries."""
        from dynexport.sep2.flow import DER_TYPE_PV_AND_STORAGE, DER_TYPE_STORAGE, storage_mode_of

        readings = [b.state.reading for b in self.batteries if b.state.reading is not None]
        if not self.batteries or not readings:
            return {"enforced": enforced}
        bs = self.batteries_status()
        return {
            "enforced": enforced,
            "der_type": DER_TYPE_PV_AND_STORAGE if self.inverters else DER_TYPE_STORAGE,
            "rated_charge_w": sum(r.max_charge_w or 0.0 for r in readings),
            "rated_discharge_w": sum(r.max_discharge_w or 0.0 for r in readings),
            "rated_wh": sum(r.capacity_wh or 0.0 for r in readings) or None,
            "state_of_charge_pct": bs["socPct"],
            "storage_mode": storage_mode_of(bs["powerW"]),
            # CSIP-AUS v1.3 setMinWh: the energy kept at the owner's reserve (docs/sep2.md)
            "min_wh": sum(
                (b.state.reading.capacity_wh or 0.0) * c.reserve_soc_pct / 100.0
                for b, c in zip(self.batteries, self.config.batteries, strict=False)
                if b.state.reading is not None
            ),
        }

    async def _watchdog_loop(self) -> None:
        interval = watchdog_interval_s() or 2.0
        next_status = 0.0
        failsafe_for_stuck = False
        while True:
            now = trio.current_time()
            self._note_device_activity(now)
            if not self.ready and (self._devices_answered() or now - self.started > READY_AFTER_S):
                self.ready = True
                self.notifier.ready(self.summary())
                log.info("ready: %s", self.summary())
            stuck = self.progress.stuck(now)
            controller_stuck = self.progress.is_stuck("controller", now)
            if controller_stuck and not failsafe_for_stuck:
                # Hung in an await, it raised nothing: the links would keep rewriting its last
                # (possibly generous) limit until systemd's watchdog kills the process, whose
                # shutdown then writes nothing (killed by SIGABRT). Its fail-safe, now.
                log.error("the controller is stuck: commanding every inverter's fail-safe")
                await self._controller_fault(RuntimeError("the controller is stuck"))
                failsafe_for_stuck = True
            elif not controller_stuck:
                failsafe_for_stuck = False  # deciding again: its own commands rule
            if not stuck:
                self.notifier.watchdog()
            elif self.ready:
                log.error("not pinging the watchdog: stuck %s", ", ".join(stuck))
            if now >= next_status:
                self.notifier.status(self.summary() if not stuck else "stuck: " + ", ".join(stuck))
                next_status = now + 10.0
            await trio.sleep(min(interval, 2.0))

    def _note_device_activity(self, now: float) -> None:
        for link in self.inverters:
            if link.last_activity is not None:
                self.progress.progress(link.id, link.last_activity)
        for bat in self.batteries:
            if bat.last_activity is not None:
                self.progress.progress(bat.id, bat.last_activity)
        if self.meter is not None and self.meter.last_activity is not None:
            self.progress.progress("meter", self.meter.last_activity)

    def _devices_answered(self) -> bool:
        """The configured meter and an inverter have answered (a site without devices: at
        once). Counted against the configuration, not the links: the watchdog loop's first pass
        can come before the first generation has made them (while the web server starts), and
        no links is not "every device answered" (READY, the slot confirmation and ap-rule
        would all follow a service that has read nothing yet)."""
        if self.config.meter is not None and (
            self.meter is None or self.meter.state.last_reading is None
        ):
            return False
        return not self.config.inverters or any(i.state.last_reading for i in self.inverters)

    async def leave_fail_safe(self) -> None:
        """Writes every reachable controllable inverter's fail-safe limit (with revert timeout).

        Inverters this generation's links have not tried to reach yet (a stop just after a
        configuration change restarted them) are discovered first, for at most half the
        shutdown's budget, so they get theirs too; one already found silent is not waited for."""

        async def reach(link: InverterLink) -> None:
            try:
                await link.reach()
            except DEVICE_ERRORS as exc:
                log.warning("%s: not reached for its fail-safe limit: %s", link.id, exc)
            except Exception:
                log.exception("%s: not reached for its fail-safe limit", link.id)

        with trio.move_on_after(SHUTDOWN_BUDGET_S / 2):
            async with trio.open_nursery() as nursery:
                for link in self.inverters:
                    if link.state.controllable is None and link.state.error is None:
                        nursery.start_soon(reach, link)
        try:
            commands = self._failsafe_commands()
        except Exception:
            log.exception("fail-safe limits could not be computed: writing 0 %")
            commands = [law.InverterCommand(link.id, 0.0) for link in self.inverters]
        by_id = {link.id: link for link in self.inverters}

        async def write(cmd: law.InverterCommand) -> None:
            link = by_id[cmd.id]
            try:
                await link.write(Desired(pct=cmd.limit_pct, connect=cmd.connect))
                log.info("%s: left at fail-safe limit %s", link.id, _pct(cmd.limit_pct))
            except DEVICE_ERRORS as exc:
                log.warning("%s: could not write its fail-safe limit: %s", link.id, exc)
            except Exception:  # one inverter's bug must not leave the others unwritten
                log.exception("%s: could not write its fail-safe limit", link.id)

        # All at once: one after another, two silent inverters (2 s of timeouts each) used up
        # the shutdown's budget before a reachable one later in the list was written.
        async with trio.open_nursery() as nursery:
            for cmd in commands:
                nursery.start_soon(write, cmd)

        async def release(bat: BatteryLink) -> None:
            # Its fail-safe, as the law's ("charge only", or held): its own mode would cover the
            # load the inverters' fail-safe caps give up, and send it out when that load falls.
            # Its revert timer returns it to its own mode; a hybrid's is released to it now.
            try:
                await bat.write(self._failsafe_battery(bat))
            except Exception as exc:
                log.warning("%s: could not leave it at its fail-safe: %s", bat.id, exc)

        # After the inverters, the batteries to their own mode (their reverts would too), also
        # all at once: one after another, silent ones used up the budget before a reachable one.
        async with trio.open_nursery() as nursery:
            for bat in self.batteries:
                nursery.start_soon(release, bat)
        self.notifier.stopping("inverters left at their fail-safe limits")

    # -- views --------------------------------------------------------------------------------

    def summary(self) -> str:
        site = self.meter.state.site_w if self.meter is not None else None
        online = sum(1 for link in self.inverters if link.state.online)
        limit = self.limits.export_w
        parts = [
            f"site {_watts(site)}",
            f"export limit {_watts(limit)} ({self.limits.sources.get('export_w', 'none')})"
            if limit is not None
            else "no export limit",
            f"{online}/{len(self.inverters)} inverters online",
        ]
        if self.output is not None and self.output.mode != "normal":
            parts.append(self.output.mode)
        return ", ".join(parts)

    def status(self) -> dict[str, Any]:
        """The status API document (docs/api.md); names are relied on by installers' tools."""
        meter = self.meter.state if self.meter is not None else None
        out = self.output
        der_w = [link.state.power_w for link in self.inverters if link.state.online]
        utility: dict[str, Any] = {
            "configured": self.config.utility is not None,
            "connected": False,
            "lastError": self.utility_error,
            "storageError": None,
            "starting": self.utility_starting,
        }
        if self.utility is not None:
            st = self.utility.state()
            utility.update(
                connected=st.connected,
                lfdi=st.lfdi,
                sfdi=st.sfdi,
                lastPoll=_iso(st.last_poll),
                acting=st.acting,
                clockOffsetS=st.clock_offset,
                pendingResponses=st.pending_responses,
                telemetryBacklog=st.telemetry_backlog,
                telemetryDropped=st.telemetry_dropped,
                telemetryUnverifiedSamples=st.telemetry_unverified_samples,
                telemetryLateSamples=st.telemetry_late_samples,
                telemetryRefused=st.telemetry_refused,
                lastError=st.last_error,
                storageError=self.utility.store.write_error,
                clockAlert=st.clock_alert,
                timeVerified=st.time_verified,
                csipAusVersion=self.utility.csipaus_version,
            )
        elif self._stored_schedule is not None:  # no link: the stored schedule is obeyed
            utility["timeVerified"] = self._stored_time_verified()
        utility["fallback"] = self.utility_fallback
        utility["clockSynchronised"] = self._clock_synchronised()
        return {
            "site": {
                "powerW": None if meter is None else meter.site_w,
                "meterOnline": bool(meter and meter.online),
                "meterFrozen": self.meter_watch.frozen,
                "meterError": None if meter is None else meter.error,
            },
            "der": {
                "powerW": sum(w for w in der_w if w is not None) if der_w else None,
                "availableW": self._available_w(),  # installer tools section
            },
            "limits": {
                "exportW": self.limits.export_w,
                "generationW": self.limits.generation_w,
                "importW": self.limits.import_w,
                "loadW": self.limits.load_w,
                "connect": self.limits.connect,
                "energize": self.limits.energize,
                "storageTargetW": self.limits.storage_target_w,
                "source": dict(self.limits.sources),
                "notEnforced": list(out.not_enforced) if out else [],
                "windowTimeKnown": self._window_offset() is not None,
            },
            "control": {
                "mode": None if out is None else out.mode,
                "targetW": None if out is None else out.target_w,
                "loadEstimateW": None if out is None else out.load_estimate_w,
                "boundBy": None if out is None else out.source,
            },
            "inverters": [
                {
                    "id": link.id,
                    "online": link.state.online,
                    "controllable": link.state.controllable,
                    "notControllable": link.state.not_controllable,
                    "powerW": link.state.power_w,
                    "ratedW": link.state.rated_w,
                    "limitPct": link.state.limit_pct,
                    "revertTimer": link.state.revert_timer,
                    "followsLimit": None if out is None else link.id not in out.not_following,
                    "skipped": None if out is None else out.skipped.get(link.id),
                    "unread": None if out is None else link.id in out.blind,
                    "manufacturer": link.state.info.manufacturer,
                    "model": link.state.info.model,
                    "serial": link.state.info.serial,
                    "error": link.state.error,
                }
                for link in self.inverters
            ],
            "utility": utility,
            "battery": self.batteries_status(),
            "faults": [
                {"task": f.task, "error": f.error, "count": f.count}
                for f in self.faults.active(trio.current_time())
            ],
            "ready": self.ready,
            "setupMode": self.setup_mode,
            "configProblems": list(self.config_problems),
            "integrations": integrations_status(self.integrations),
            "update": {**self.update_status(), **self.update_check.status()},
        }

    # -- installer tools (the web page's test limit, meter-direction check, commissioning report)
    # docs/web.md "Installer tools". A test limit is only ever a ceiling below the controller's
    # own command (control_once takes the lower of the two), so it can never defeat the export
    # limit; it ends by itself, and the link's revert timer covers a crash meanwhile.

    @property
    def tools(self) -> InstallerTools:
        found: InstallerTools | None = self.__dict__.get("_installer_tools")
        if found is None:
            found = InstallerTools()
            self.__dict__["_installer_tools"] = found
        return found

    def reload_utility(self) -> None:
        """Restarts the utility link with its files as they are now (a signed certificate was
        just saved): the next generation builds it afresh."""
        self.utility = None
        self._restart.set()

    def test_limit(self, inverter_id: str, pct: float, seconds: float) -> dict[str, Any]:
        """Limits one inverter to ``pct`` % for ``seconds`` (never above the controller's own
        limit); raises KeyError for an unknown inverter, ValueError for bad numbers."""
        link = next((i for i in self.inverters if i.id == inverter_id), None)
        if link is None:
            raise KeyError(inverter_id)
        if not (math.isfinite(pct) and 0 <= pct <= 100):
            raise ValueError("pct must be 0..100")
        if not (math.isfinite(seconds) and TEST_MIN_S <= seconds <= TEST_MAX_S):
            raise ValueError(f"seconds must be {TEST_MIN_S:.0f}..{TEST_MAX_S:.0f}")
        now = trio.current_time()
        test = LimitTest(
            inverter=inverter_id,
            pct=pct,
            started=now,
            until=now + seconds,
            started_at=self.options.wall_clock(),
            before_w=link.state.power_w,
        )
        self.tools.tests[inverter_id] = test
        self.tools.results.append(test)
        del self.tools.results[:-10]
        self._limits_changed.set()  # applied at once, by the next control decision
        return test.to_json(now)

    def tested_pct(self, inverter_id: str, pct: float | None, now: float) -> float | None:
        """The controller's ``pct`` for ``inverter_id``, lowered by a running test limit."""
        test = self.tools.tests.get(inverter_id)
        if test is None:
            return pct
        if now >= test.until:
            del self.tools.tests[inverter_id]
            return pct
        link = next((i for i in self.inverters if i.id == inverter_id), None)
        if link is not None and link.state.power_w is not None:
            test.lowest_w = min(test.lowest_w, link.state.power_w)
        return test.pct if pct is None else min(pct, test.pct)

    async def check_meter_direction(
        self, *, settle_s: float = 30.0, min_change_w: float = 200.0
    ) -> dict[str, Any]:
        """Limits every inverter to 0 % for a moment and checks the meter sees the site import
        rise by about what the inverters stopped making (else its CT or sign is reversed, or
        it is not at the grid connection). Control goes on meanwhile; the test limits end at
        once afterwards."""
        meter = self.meter
        if meter is None or meter.state.site_w is None:
            return self.tools.record_meter(None, "no meter reading: cannot check", self)
        der_before = self._der_w()
        if der_before is None or der_before < min_change_w:
            text = (
                f"cannot check now: the inverters make {_watts(der_before)}; the check needs at "
                f"least {min_change_w:.0f} W to switch off"
            )
            return self.tools.record_meter(None, text, self)
        site_before = meter.state.site_w
        for link in self.inverters:
            self.test_limit(link.id, 0.0, settle_s + 5.0)
        try:
            with trio.move_on_after(settle_s):
                while True:
                    await trio.sleep(1.0)
                    now_der = self._der_w()
                    if now_der is not None and der_before - now_der >= 0.8 * der_before:
                        await trio.sleep(2.0)  # the meter's next reading
                        break
        finally:
            for link in self.inverters:
                self.tools.tests.pop(link.id, None)
            self._limits_changed.set()
        ok, text = meter_verdict(
            site_before, meter.state.site_w, der_before, self._der_w(), min_change_w
        )
        return self.tools.record_meter(ok, text, self)

    def _available_w(self) -> float | None:
        """What the online inverters could make now (model 122 WAval; an inverter that does not
        say counts at its output): None when none says."""
        readings = [i.state.reading for i in self.inverters if i.state.online]
        if not any(r is not None and r.available_w is not None for r in readings):
            return None
        total = 0.0
        for r in readings:
            if r is None:
                continue
            made = r.w if r.w is not None and math.isfinite(r.w) else 0.0
            aval = r.available_w
            total += max(made, aval) if aval is not None and math.isfinite(aval) else made
        return total

    def _der_w(self) -> float | None:
        known = [i.state.power_w for i in self.inverters if i.state.online]
        values = [w for w in known if w is not None]
        return sum(values) if values else None

    def tools_status(self) -> dict[str, Any]:
        now = trio.current_time()
        return {
            "tests": [t.to_json(now) for t in self.tools.tests.values() if now < t.until],
            "meterCheck": self.tools.meter_check,
        }

    def commissioning_report(self) -> dict[str, Any]:
        """What the installer prints and leaves with the site records (docs/web.md)."""
        u = self.config.utility
        st = self.utility.state() if self.utility is not None else None
        now = trio.current_time()
        devices = [
            {
                "role": "inverter",
                "id": link.id,
                "manufacturer": link.state.info.manufacturer,
                "model": link.state.info.model,
                "serial": link.state.info.serial,
                "firmware": link.state.info.version,
                "ratedW": link.state.rated_w,
                "controllable": link.state.controllable,
                "online": link.state.online,
            }
            for link in self.inverters
        ]
        for bat in self.batteries:
            info = bat.state.info
            devices.append(
                {
                    "role": "battery",
                    "id": bat.id,
                    "manufacturer": info.manufacturer,
                    "model": info.model,
                    "serial": info.serial,
                    "firmware": info.version,
                    "capacityWh": None
                    if bat.state.reading is None
                    else bat.state.reading.capacity_wh,
                    "controllable": bat.state.controllable,
                    "online": bat.state.online,
                }
            )
        if self.meter is not None:
            info = self.meter.state.info
            devices.append(
                {
                    "role": "meter",
                    "id": self.meter.id,
                    "manufacturer": info.manufacturer,
                    "model": info.model,
                    "serial": info.serial,
                    "firmware": info.version,
                    "online": self.meter.state.online,
                }
            )
        return {
            "generated": _iso(self.options.wall_clock()),
            "timeZone": self.config.site.time_zone,
            "nmi": None if u is None else u.nmi,
            "utilityServer": None if u is None else u.server,
            "lfdi": None if st is None else st.lfdi,
            "sfdi": None if st is None else st.sfdi,
            "utilityConnected": None if st is None else st.connected,
            "devices": devices,
            "limitsInForce": {
                "exportW": self.limits.export_w,
                "generationW": self.limits.generation_w,
                "source": dict(self.limits.sources),
            },
            "tests": [t.to_json(now) for t in self.tools.results],
            "meterCheck": self.tools.meter_check,
        }


def _note_trial_boot(data_dir: Path) -> None:
    """In a worker thread, at the start: notes this boot as the one that began an update's
    trial (``update.service.note_trial_boot``), so that a reset before the first limits reads as
    a failed trial at U-Boot's next attempt of the slot, not as a first trial to check and
    commit. The update code is imported only when the record says a trial is under way: it
    is not on the controller's path to its first limits (docs/architecture.md)."""
    from dynexport.update.state import STATE_FILE

    try:
        under_way = b'"trial"' in (data_dir / STATE_FILE).read_bytes()
    except OSError:
        return
    if under_way:
        from dynexport.update.service import note_trial_boot

        note_trial_boot(data_dir)


class _ReportedOnce:
    """A task status that knows whether it has reported (``started`` may be called once)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reported = False

    def started(self, value: object = None) -> None:
        self.reported = True
        self.inner.started(value)


def utility_limits(active: ActiveControls, rated_w: float | None = None) -> UtilityLimits:
    """The utility's controls in force, as the limits the controller merges.

    ``opModMaxLimW`` is a percent of the site's setMaxW (``rated_w``, the sum of the inverters'
    WMax, which is what DERSettings reports; ``App.limit_rating_w``: of those read so far, until
    all have been): it becomes a generation limit in W, merged with ``opModGenLimW`` as the lower
    of the two. ``rated_w`` None: a site without inverters, nothing to limit.
    """

    def power(kind: ControlType) -> float | None:
        v = active.value(kind)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    def flag(kind: ControlType) -> bool | None:
        v = active.value(kind)
        return v if isinstance(v, bool) else None

    # (value in W, its rampTms) of each generation limit in force
    limits: list[tuple[float, int | None]] = []
    generation = power(ControlType.GENERATION_LIMIT_W)
    if generation is not None:
        limits.append((generation, active.ramp_tms(ControlType.GENERATION_LIMIT_W)))
    max_pct = power(ControlType.MAX_LIMIT_PCT)
    if max_pct is not None and rated_w is not None and math.isfinite(rated_w) and rated_w >= 0:
        as_w = max(max_pct, 0.0) / 100.0 * rated_w
        limits.append((as_w, active.ramp_tms(ControlType.MAX_LIMIT_PCT)))
    generation = min((w for w, _ in limits), default=None)
    # Each limit follows its own rampTms (0: a step; None: absent, so setGradW): the export
    # limit's, and the generation limit's from the control that sets it, the lower of the two
    # (of a tie, the quicker). The larger of both ramped a 1000 W opModGenLimW step (rampTms 0)
    # over another event's opModMaxLimW rampTms of 600 s.
    binding = [r for w, r in limits if w == generation and r is not None]
    return UtilityLimits(
        export_w=power(ControlType.EXPORT_LIMIT_W),
        import_w=power(ControlType.IMPORT_LIMIT_W),
        generation_w=generation,
        load_w=power(ControlType.LOAD_LIMIT_W),
        connect=flag(ControlType.CONNECT),
        energize=flag(ControlType.ENERGIZE),
        ramp_tms=active.ramp_tms(ControlType.EXPORT_LIMIT_W),
        generation_ramp_tms=min(binding, default=None),
        set_grad_w=active.set_grad_w,
        storage_target_w=power(ControlType.STORAGE_TARGET_W),
    )


def _window_edges(
    limits: LimitsConfig, start: float, end: float, zone: tzinfo | None = None
) -> list[float]:
    """Epoch seconds in (start, end) where a daily window may begin or end, in ``zone``'s local
    time (None: the system's).

    Windows are judged on the local wall clock, so around a daylight-saving change a window
    edge can fall in the skipped hour (the window then starts when the clocks jump) or happen
    twice (an hour repeats). Both readings of each wall time and the instants where the clocks
    jump are candidates; the caller evaluates the limits at each and keeps only real changes.
    """
    if not limits.windows:
        return []
    edges: set[float] = set(_offset_changes(start, end, zone))
    day = datetime.fromtimestamp(start, zone).date()
    for offset_days in range(-1, 3):
        date = day + timedelta(days=offset_days)
        for window in limits.windows:
            for minute in (window.start_min, window.end_min):
                wall = datetime.combine(date, dtime(minute // 60, minute % 60), tzinfo=zone)
                for fold in (0, 1):
                    t = wall.replace(fold=fold).timestamp()
                    if start < t < end:
                        edges.add(t)
    return sorted(edges)


def _offset_changes(start: float, end: float, zone: tzinfo | None) -> list[float]:
    """The instants in (start, end) where ``zone``'s UTC offset changes, to the second."""

    def offset(t: float) -> timedelta | None:
        return datetime.fromtimestamp(t, zone).astimezone(zone).utcoffset()

    changes = []
    step = 1800.0
    t = start
    while t < end:
        nxt = min(t + step, end)
        if offset(t) != offset(nxt):
            lo, hi = t, nxt  # offset(lo) is the old one, offset(hi) the new one
            while hi - lo > 1.0:
                mid = (lo + hi) / 2
                if offset(mid) == offset(lo):
                    lo = mid
                else:
                    hi = mid
            changes.append(float(math.ceil(hi)))
        t = nxt
    return [c for c in changes if start < c < end]


PLAN_EVERY_S = 300.0
"""How often the battery planner looks ahead again (its inputs move slowly)."""


@dataclass
class BatteryBook:
    """What the app keeps for the batteries between control cycles."""

    plan: battery_law.ChargePlan | None = None
    plan_t: float = -math.inf
    observed: list[tuple[float, float]] = field(default_factory=list)
    """(local hour, W) of unlimited production today, for the PV expectation."""
    loads: list[float] = field(default_factory=list)
    """The load estimate at each plan (every 5 minutes), the last two hours."""
    day: Any = None
    stored_wh: float = 0.0
    """Energy charged today while the export limit would otherwise have curtailed it."""
    last_t: float | None = None
    pv: battery_law.PvMemory | None = None
    """The previous days' sun and today's so far (``pv-memory.json``); None until loaded."""
    pv_saved: battery_law.PvMemory | None = None
    pv_saved_t: float = -math.inf
    pv_save_error: str | None = None


PV_MEMORY_FILE = "pv-memory.json"
"""The planner's memory of the previous days' sun, on the data partition."""
PV_SAVE_EVERY_S = 1800.0
"""Saved at most this often (a restart loses at most half an hour of today's samples)."""
PV_FLUSH_S = 2.0
"""At shutdown the unsaved memory gets this long (beside the fail-safe, not after it)."""


def load_pv_memory(path: Path) -> battery_law.PvMemory:
    """The stored PV memory; a missing file is a first day, an unreadable or corrupt one is
    ignored with a log line (the planner then starts from today's production alone)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return battery_law.PvMemory()
    except OSError as exc:
        log.error("cannot read %s (%s); the planner starts without the previous days' sun",
                  path, exc)  # fmt: skip
        return battery_law.PvMemory()
    try:
        return battery_law.PvMemory.from_json(raw)
    except ValueError as exc:
        log.error("%s is unusable (%s); the planner starts without the previous days' sun",
                  path, exc)  # fmt: skip
        return battery_law.PvMemory()


def pv_memory_writer(path: Path, book: BatteryBook) -> LatestWriter[battery_law.PvMemory]:
    """The writer of ``pv-memory.json``: atomic writes in a worker thread; a full or failing
    partition is logged once per episode (``book.pv_save_error``) and the memory lives on in
    RAM, tried again with backoff and at the next save."""

    def failed(exc: BaseException) -> None:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        error = f"cannot save {path.name}: {reason}"
        if book.pv_save_error is None:
            log.error("%s; the battery planner carries on from memory", error)
        book.pv_save_error = error

    def saved() -> None:
        if book.pv_save_error is not None:
            log.info("saving %s works again", path.name)
        book.pv_save_error = None

    return LatestWriter(
        path.name,
        lambda memory: atomic_write(path, memory.to_json().encode()),
        on_error=failed,
        on_ok=saved,
        exit_flush_s=PV_FLUSH_S,
    )


def _settings(config: Config) -> law.ControlSettings:
    return law.ControlSettings(
        interval_s=config.control.interval_s,
        stale_s=config.control.meter_stale_s,
        failsafe_generation_w=config.control.failsafe_generation_w,
    )


def _mean(values: tuple[float | None, ...]) -> float | None:
    got = [v for v in values if v is not None and math.isfinite(v)]
    return sum(got) / len(got) if got else None


def _watts(w: float | None) -> str:
    return "unknown" if w is None else f"{w:.0f} W"


def _pct(p: float | None) -> str:
    return "none (100 %)" if p is None else f"{p:.1f} %"


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


async def run_until_signalled(app: App) -> None:
    """Runs the app until SIGTERM or SIGINT, then lets it leave the inverters safe and return."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

            async def watch() -> None:
                async for signum in signals:
                    log.info("received %s: stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            await app.run()


TEST_MIN_S = 5.0
TEST_MAX_S = 300.0
"""A test limit lasts 5 s to 5 min: long enough to watch the output follow, short enough that a
forgotten one costs nothing."""


@dataclass
class LimitTest:
    """One installer test limit (a ceiling below the controller's command)."""

    inverter: str
    pct: float
    started: float
    until: float
    started_at: float
    before_w: float | None
    lowest_w: float = math.inf

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "inverter": self.inverter,
            "pct": self.pct,
            "at": _iso(self.started_at),
            "seconds": round(self.until - self.started, 1),
            "remainingS": max(0.0, round(self.until - now, 1)),
            "beforeW": self.before_w,
            "lowestW": None if math.isinf(self.lowest_w) else self.lowest_w,
        }


@dataclass
class InstallerTools:
    tests: dict[str, LimitTest] = field(default_factory=dict)
    results: list[LimitTest] = field(default_factory=list)
    meter_check: dict[str, Any] | None = None

    def record_meter(self, ok: bool | None, text: str, app: App) -> dict[str, Any]:
        self.meter_check = {"ok": ok, "text": text, "at": _iso(app.options.wall_clock())}
        return self.meter_check


def meter_verdict(
    site_before: float,
    site_after: float | None,
    der_before: float,
    der_after: float | None,
    min_change_w: float = 200.0,
) -> tuple[bool | None, str]:
    """Did the meter see the inverters switch off the right way round? (pure)

    Site power is positive for import: when the inverters stop making ``drop`` W the site must
    import about ``drop`` W more. Moving the other way means a reversed CT or sign; hardly
    moving means the meter is not at the grid connection (or measures something else)."""
    if site_after is None or der_after is None:
        return None, "the meter or the inverters stopped answering during the check"
    drop = der_before - der_after
    if drop < min_change_w:
        return None, (
            f"the inverters' output fell by only {drop:.0f} W: cannot judge (is the inverter "
            "accepting limits?)"
        )
    change = site_after - site_before
    if change >= 0.5 * drop:
        return True, (
            f"direction right: solar fell by {drop:.0f} W and the meter saw import rise by "
            f"{change:.0f} W"
        )
    if change <= -0.5 * drop:
        return False, (
            f"the meter reads the wrong way round: solar fell by {drop:.0f} W but the site "
            f"reading fell by {-change:.0f} W (positive must be import: check the CT direction "
            "or the meter's sign setting)"
        )
    return False, (
        f"the meter hardly moved ({change:+.0f} W) while solar fell by {drop:.0f} W: is it at "
        "the grid connection, measuring the whole site?"
    )
