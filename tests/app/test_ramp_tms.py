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
