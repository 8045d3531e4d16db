"""When a trial boot of a new root slot may be committed (pure: data and times passed in).

An update is committed (``rauc status mark-good``) only when the new system does its job: the
service is READY, the meter and an inverter are answering (or the site has no devices yet), and
the control loop has been deciding, not in its fail-safe, without a gap for two minutes. Until
then the previous slot stays the one a reset boots, so a system that is up but not controlling
never becomes permanent. Setup mode counts as "no devices yet" only on a true first boot: a
release that cannot use the site's configuration also waits in setup mode, with no control.
"""

from __future__ import annotations

from dataclasses import dataclass

COMMIT_AFTER_S = 120.0
"""How long the control loop (or, without devices, the ready service) must run before commit."""
ANSWER_FRESH_S = 60.0
"""A device "is answering" when its latest reading is at most this old: one that answered once
and then went silent (a new release's link broken after its first poll) is not. Longer than an
inverter link's longest back-off (30 s) and a few RS485 timeouts, so a brief lapse does not
restart the two minutes (and roll a good release back)."""
FAILSAFE_GRACE_S = 20.0
"""A controller in its fail-safe for longer than this (with a meter configured) is not
controlling: the run starts again. A shorter spell (the meter silent for a few polls) is not."""
MAX_DECISION_GAP_S = 10.0
"""A controller silent for longer has stalled (App.CONTROLLER_MAX_SILENCE_S): the run restarts.
The default of ``Observation.max_decision_gap_s``."""


@dataclass(frozen=True)
class Observation:
    """What the health check sees of the App at one moment (monotonic seconds)."""

    now: float
    ready: bool
    setup_mode: bool
    """No configuration yet: no devices, no control loop; the web UI is the whole service."""
    meter_configured: bool
    meter_answered: bool
    inverters_configured: int
    inverter_answered: bool
    last_decision: float | None
    """Time of the control loop's latest decision (None: none yet)."""
    config_problem: str | None = None
    """In setup mode, why there is no configuration to run on (it exists but could not be used);
    None for a true first boot."""
    controller_mode: str | None = None
    """The control loop's latest mode ("normal", "failsafe"...; None before its first)."""
    max_decision_gap_s: float = MAX_DECISION_GAP_S
    """The longest silence of a controller that still runs: the App's bound for its own
    watchdog (longer with a long ``control.intervalS``)."""


@dataclass(frozen=True)
class Streak:
    """An unbroken run of control decisions (or of readiness, without devices)."""

    since: float | None = None
    last: float | None = None
    failsafe_since: float | None = None
    """When the controller's current fail-safe spell began (None: not in its fail-safe)."""


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str
    """Why not yet (for the status and the rollback report), or what was seen when healthy."""


def observe(streak: Streak, obs: Observation) -> Streak:
    """The streak after one more observation."""
    if not obs.ready:
        return Streak()
    if obs.setup_mode:
        if obs.config_problem is not None:
            return Streak()  # a configuration it cannot use: no control at all
        return Streak(since=obs.now if streak.since is None else streak.since, last=obs.now)
    if (obs.meter_configured and not obs.meter_answered) or (
        obs.inverters_configured and not obs.inverter_answered
    ):
        return Streak()  # deciding without its inputs is not controlling: the run starts later
    held = None
    if obs.meter_configured and obs.controller_mode == "failsafe":
        # the meter's readings are not used: holding back, not controlling. Without a meter the
        # controller is always in its fail-safe, by design: that is its control.
        held = obs.now if streak.failsafe_since is None else streak.failsafe_since
        if obs.now - held > FAILSAFE_GRACE_S:
            return Streak(failsafe_since=held)
    t = obs.last_decision
    gap = obs.max_decision_gap_s
    if t is None or obs.now - t > gap:
        return Streak(failsafe_since=held)
    if streak.since is None or streak.last is None or t - streak.last > gap:
        return Streak(since=t, last=t, failsafe_since=held)
    return Streak(since=streak.since, last=max(streak.last, t), failsafe_since=held)


def judge(streak: Streak, obs: Observation) -> Verdict:
    """Whether the trial boot may be committed now, and why (not)."""
    if not obs.ready:
        return Verdict(False, "the service is not READY yet")
    if obs.setup_mode and obs.config_problem is not None:
        return Verdict(
            False, f"setup mode: the configuration could not be used ({obs.config_problem})"
        )
    if not obs.setup_mode:
        silent = devices_silent(obs)
        if silent is not None:
            return Verdict(False, silent)
        if obs.meter_configured and obs.controller_mode == "failsafe" and streak.since is None:
            return Verdict(False, "the controller is in its fail-safe (no usable meter reading)")
    what = "the service has been ready" if obs.setup_mode else "the control loop has decided"
    if streak.since is None or streak.last is None:
        return Verdict(False, "the control loop is not deciding")
    run = streak.last - streak.since
    if run < COMMIT_AFTER_S:
        return Verdict(False, f"{what} for {run:.0f} s of {COMMIT_AFTER_S:.0f} s")
    if obs.setup_mode:
        return Verdict(True, f"healthy: ready for {run:.0f} s (setup mode: no devices yet)")
    return Verdict(True, f"healthy: meter and inverters answered, {what} for {run:.0f} s")


def devices_silent(obs: Observation) -> str | None:
    """Which of the devices the health check needs is not answering (None: they answer, or the
    site has none yet). A trial boot started while it is so (inverters asleep at night) would be
    rolled back for it, and that version never installed automatically again: the reboot into
    an installed update waits for them (``service.reboot_when_quiet``)."""
    if obs.setup_mode:
        return None
    if obs.meter_configured and not obs.meter_answered:
        return f"the meter has not answered in {ANSWER_FRESH_S:.0f} s"
    if obs.inverters_configured and not obs.inverter_answered:
        return f"no inverter has answered in {ANSWER_FRESH_S:.0f} s"
    return None
