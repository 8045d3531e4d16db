"""rampTms 0 from the utility: a step in 0 s, not an absent rampTms (which means setGradW)."""

from __future__ import annotations

from dynexport.app import utility_limits
from dynexport.control.limits import merge_limits
from dynexport.sep2.controls import ControlBase
from dynexport.sep2.schedule import active_controls
from tests.sep2.test_schedule import SEED, T0, ev, prog


def test_ramp_tms_zero_reaches_the_control_law_as_a_step_not_as_absent() -> None:
    programs = [
        prog(
            "/derp/1",
            1,
            ev("STEP", T0, 600, export=0.0, ramp_tms=0),
            default=ControlBase(export_limit_w=10_000.0),
            set_grad_w=27,
        )
    ]
    active = active_controls(programs, T0 + 1, SEED)
    limits = utility_limits(active, 10_000.0)
    assert limits.ramp_tms == 0
    merged = merge_limits(limits, None)
    # the law ramps by setGradW only without a rampTms: at 27 a 10 kW site took 370 s
    assert (merged.ramp_tms, merged.export_w) == (0, 0.0)


def test_each_limit_follows_its_own_ramp_tms_not_another_kinds() -> None:
    """One rampTms was taken for every limit (the largest): a generation event's 600 s ramped
    an export step asked for with rampTms 0, and a generation event's 0 turned an export change
    without rampTms (setGradW's to shape) into a step."""
    programs = [
        prog("/derp/1", 1, ev("EXP0", T0, 600, export=0.0, ramp_tms=0, program="/derp/1")),
        prog("/derp/2", 2, ev("GEN", T0 - 60, 3600, gen=8000.0, ramp_tms=60000, program="/derp/2")),
    ]
    merged = merge_limits(utility_limits(active_controls(programs, T0 + 1, SEED), 10_000.0), None)
    assert (merged.export_w, merged.ramp_tms) == (0.0, 0)
    assert (merged.generation_w, merged.generation_ramp_tms) == (8000.0, 60000)
    programs = [
        prog(
            "/derp/1",
            1,
            ev("EXP", T0, 600, export=0.0, program="/derp/1"),
            default=ControlBase(export_limit_w=10_000.0),
            set_grad_w=27,
        ),
        prog("/derp/2", 2, ev("GEN", T0 - 60, 3600, gen=8000.0, ramp_tms=0, program="/derp/2")),
    ]
    limits = utility_limits(active_controls(programs, T0 + 1, SEED), 10_000.0)
    assert (limits.ramp_tms, limits.generation_ramp_tms, limits.set_grad_w) == (None, 0, 27)


def test_the_generation_limit_follows_the_ramp_tms_of_the_control_that_sets_it() -> None:
    """opModMaxLimW 50 % (rampTms 600 s) in force, then opModGenLimW 1000 W asked as a step
    (rampTms 0): the larger of both rampTms ramped the 1000 W step over 600 s, the site
    generating far above the utility's limit all that time. Each binds with its own."""
    programs = [
        prog("/derp/1", 1, ev("PCT", T0 - 60, 3600, max_pct=50, ramp_tms=60000, program="/derp/1")),
        prog("/derp/2", 2, ev("GEN", T0, 600, gen=1000.0, ramp_tms=0, program="/derp/2")),
    ]
    merged = merge_limits(utility_limits(active_controls(programs, T0 + 1, SEED), 10_000.0), None)
    assert (merged.generation_w, merged.generation_ramp_tms) == (1000.0, 0)
    programs[1] = prog("/derp/2", 2, ev("GEN", T0, 600, gen=9000.0, ramp_tms=0, program="/derp/2"))
    merged = merge_limits(utility_limits(active_controls(programs, T0 + 1, SEED), 10_000.0), None)
    assert (merged.generation_w, merged.generation_ramp_tms) == (5000.0, 60000)
    # equal limits: the quicker of the two rampTms
    programs[1] = prog("/derp/2", 2, ev("GEN", T0, 600, gen=5000.0, ramp_tms=0, program="/derp/2"))
    merged = merge_limits(utility_limits(active_controls(programs, T0 + 1, SEED), 10_000.0), None)
    assert (merged.generation_w, merged.generation_ramp_tms) == (5000.0, 0)
