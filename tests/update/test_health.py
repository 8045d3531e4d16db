"""The commit decision for a trial boot: only a system that controls is made permanent."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.update.health import (
    COMMIT_AFTER_S,
    FAILSAFE_GRACE_S,
    MAX_DECISION_GAP_S,
    Observation,
    Streak,
    devices_silent,
    judge,
    observe,
)


def obs(now: float, **kw: object) -> Observation:
    base: dict[str, object] = dict(
        now=now,
        ready=True,
        setup_mode=False,
        meter_configured=True,
        meter_answered=True,
        inverters_configured=2,
        inverter_answered=True,
        last_decision=now,
    )
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def run(samples: list[Observation]) -> tuple[Streak, bool, str]:
    streak = Streak()
    verdict = None
    for o in samples:
        streak = observe(streak, o)
        verdict = judge(streak, o)
    assert verdict is not None
    return streak, verdict.healthy, verdict.reason


def test_two_minutes_of_decisions_with_devices_answering_commit():
    _, healthy, reason = run([obs(float(t)) for t in range(0, 121)])
    assert healthy, reason
    assert "decided for 120 s" in reason


def test_one_second_short_of_two_minutes_does_not_commit():
    _, healthy, reason = run([obs(float(t)) for t in range(0, 120)])
    assert not healthy
    assert reason == "the control loop has decided for 119 s of 120 s"


def test_not_ready_never_commits():
    _, healthy, reason = run([obs(float(t), ready=False) for t in range(0, 400)])
    assert not healthy and reason == "the service is not READY yet"


def test_a_silent_meter_blocks_the_commit():
    _, healthy, reason = run([obs(float(t), meter_answered=False) for t in range(0, 400)])
    assert not healthy and reason == "the meter has not answered in 60 s"


def test_no_inverter_answering_blocks_the_commit():
    _, healthy, reason = run([obs(float(t), inverter_answered=False) for t in range(0, 400)])
    assert not healthy and reason == "no inverter has answered in 60 s"


def test_a_site_without_devices_commits_after_two_ready_minutes_in_setup_mode():
    samples = [
        obs(float(t), setup_mode=True, meter_configured=False, inverters_configured=0,
            meter_answered=False, inverter_answered=False, last_decision=None)
        for t in range(0, 121)
    ]  # fmt: skip
    _, healthy, reason = run(samples)
    assert healthy and "setup mode" in reason


def test_setup_mode_over_a_configuration_it_cannot_use_never_commits():
    """A release that refuses the site's existing configuration (a migration bug) waits in setup
    mode with no devices and no control: it was READY at once and committed as "no devices
    yet"; it is rolled back, and the reason says why."""
    samples = [
        obs(float(t), setup_mode=True, meter_configured=False, inverters_configured=0,
            meter_answered=False, inverter_answered=False, last_decision=None,
            config_problem="meter.host: unknown key")
        for t in range(0, 400)
    ]  # fmt: skip
    streak, healthy, reason = run(samples)
    assert not healthy and streak == Streak()
    assert reason == "setup mode: the configuration could not be used (meter.host: unknown key)"


def test_a_controller_held_in_its_fail_safe_is_not_controlling():
    """Deciding every second, but in the fail-safe (no usable meter reading: a new release's
    meter decoding broken) is holding back, not controlling: the two minutes start after it."""
    samples = [obs(float(t), controller_mode="failsafe") for t in range(0, 300)]
    samples += [obs(float(t), controller_mode="normal") for t in range(300, 421)]
    streak, healthy, reason = run(samples)
    assert streak.since == 300.0 and healthy, reason
    _, healthy, reason = run(samples[:300])
    assert not healthy and "fail-safe" in reason


def test_a_short_fail_safe_spell_does_not_restart_the_two_minutes():
    """The meter silent for a few RS485 polls puts the controller in its fail-safe for seconds:
    restarting the two minutes then rolled good releases back near the 4-minute deadline."""
    samples = [obs(float(t)) for t in range(0, 60)]
    samples += [obs(float(t), controller_mode="failsafe") for t in range(60, 75)]
    samples += [obs(float(t)) for t in range(75, 121)]
    streak, healthy, reason = run(samples)
    assert streak.since == 0.0 and healthy, reason


def test_without_a_meter_the_fail_safe_is_the_control_and_commits():
    """A site without a meter runs in the fail-safe for good, by design: its trials commit."""
    samples = [
        obs(float(t), controller_mode="failsafe", meter_configured=False, meter_answered=False)
        for t in range(0, 121)
    ]
    _, healthy, reason = run(samples)
    assert healthy and reason.startswith("healthy: "), reason


def test_a_stall_in_the_control_loop_restarts_the_two_minutes():
    samples = [obs(float(t)) for t in range(0, 100)]
    # the loop stalls: the last decision stays at t=99 while time goes on past the gap
    samples += [obs(float(t), last_decision=99.0) for t in range(100, 115)]
    samples += [obs(float(t)) for t in range(115, 200)]
    streak, healthy, reason = run(samples)
    assert streak.since == 115.0
    assert not healthy and "decided for 84 s" in reason


def test_a_long_control_interval_is_not_a_stall():
    """control.intervalS up to 10 s: decisions 10.5 s apart. Under the App's bound for such a
    controller (two intervals and a second) the two minutes run; under the fixed 10 s they never
    did, and every update of such a site was rolled back."""
    samples = [obs(t * 10.5, max_decision_gap_s=21.0) for t in range(0, 13)]
    _, healthy, reason = run(samples)
    assert healthy, reason
    fixed = [obs(t * 10.5 + 0.4, last_decision=t * 10.5) for t in range(0, 13)]
    assert not run(fixed)[1]


def test_no_decision_yet_is_named():
    _, healthy, reason = run([obs(0.0, last_decision=None)])
    assert not healthy and reason == "the control loop is not deciding"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.1, max_value=30.0),  # time step
            st.booleans(),  # ready
            st.booleans(),  # meter answered
            st.booleans(),  # an inverter answered
            st.booleans(),  # the controller decided at this sample
            st.booleans(),  # the controller is in its fail-safe
        ),
        min_size=1,
        max_size=300,
    ),
    st.sampled_from([MAX_DECISION_GAP_S, 21.0]),  # the App's bound: 2 intervals + 1 s, or 10 s
)
def test_commit_only_after_ready_answered_and_two_unbroken_minutes(steps, gap):
    """Safety: a commit is never allowed unless ready, devices answered, the decisions seen
    span at least two minutes with no gap longer than the App's bound for its controller, and
    the controller is not in a fail-safe spell longer than the grace."""
    streak = Streak()
    now = 0.0
    last_decision: float | None = None
    decisions: list[float] = []
    spell: float | None = None  # when the current fail-safe spell began
    for dt, ready, meter, inverter, decided, failsafe in steps:
        now += dt
        if decided:
            last_decision = now
            decisions.append(now)
        spell = (now if spell is None else spell) if failsafe else None
        o = obs(now, ready=ready, meter_answered=meter, inverter_answered=inverter,
                last_decision=last_decision, max_decision_gap_s=gap,
                controller_mode="failsafe" if failsafe else "normal")  # fmt: skip
        streak = observe(streak, o)
        if judge(streak, o).healthy:
            assert ready and meter and inverter
            assert spell is None or now - spell <= FAILSAFE_GRACE_S
            assert now - decisions[-1] <= gap
            run_start = decisions[-1]
            for earlier in reversed(decisions[:-1]):
                if run_start - earlier > gap:
                    break
                run_start = earlier
            assert decisions[-1] - run_start >= COMMIT_AFTER_S


@settings(max_examples=300, deadline=None)
@given(
    setup_mode=st.booleans(),
    meter=st.sampled_from([None, True, False]),
    inverters=st.integers(0, 3),
    inverter_answered=st.booleans(),
)
def test_the_reboot_waits_for_exactly_the_devices_a_trial_would_be_refused_without(
    setup_mode, meter, inverters, inverter_answered
):
    """``devices_silent`` (what the update reboot waits for) names a device exactly when the
    health check, READY and deciding for two minutes, refuses to commit for that device."""
    samples = [
        obs(
            float(t),
            setup_mode=setup_mode,
            meter_configured=meter is not None,
            meter_answered=bool(meter),
            inverters_configured=inverters,
            inverter_answered=inverter_answered and inverters > 0,
        )
        for t in range(0, 200)
    ]
    _, healthy, reason = run(samples)
    silent = devices_silent(samples[-1])
    if silent is None:
        assert healthy, reason
    else:
        assert not healthy and reason == silent
        assert silent in (
            "the meter has not answered in 60 s", "no inverter has answered in 60 s"
        )  # fmt: skip
