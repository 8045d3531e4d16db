"""One source of truth for what this site performs: responses and DERCapability agree with it."""

from __future__ import annotations

from dynexport.sep2 import resources as r
from dynexport.sep2.controls import (
    DOE_MODE_BITS,
    ENFORCED_CONTROLS,
    ControlBase,
    ControlType,
    ResponseStatus,
    can_perform,
    doe_modes_supported,
    modes_supported,
)
from dynexport.sep2.schedule import active_controls
from tests.sep2.test_schedule import SEED, T0, ev, prog

IEEE = 'xmlns="urn:ieee:std:2030.5:ns"'
CSIP = 'xmlns:csipaus="https://csipaus.org/ns"'


def _control(base_xml: str) -> bytes:
    return f"""<DERControl {IEEE} {CSIP} href="/derc/1" replyTo="/rsp" responseRequired="03">
  <mRID>A1</mRID><creationTime>1700000000</creationTime>
  <EventStatus><currentStatus>0</currentStatus><dateTime>1700000000</dateTime>
    <potentiallySuperseded>false</potentiallySuperseded></EventStatus>
  <interval><duration>300</duration><start>1700000600</start></interval>
  <DERControlBase>{base_xml}</DERControlBase>
</DERControl>""".encode()


def test_enforced_controls_are_what_the_control_law_can_do_with_pv_inverters() -> None:
    assert {
        ControlType.EXPORT_LIMIT_W,
        ControlType.GENERATION_LIMIT_W,
        ControlType.MAX_LIMIT_PCT,
        ControlType.CONNECT,
        ControlType.ENERGIZE,
    } == ENFORCED_CONTROLS
    assert ControlType.IMPORT_LIMIT_W not in ENFORCED_CONTROLS
    assert ControlType.LOAD_LIMIT_W not in ENFORCED_CONTROLS


def test_advertised_modes_come_from_the_same_set() -> None:
    # csipaus DOEControlType: export bit 0, generation bit 2; never import (1) or load (3).
    assert doe_modes_supported() == 0x05
    # DERControlType: opModConnect bit 2, opModEnergize bit 3, opModMaxLimW bit 20.
    assert modes_supported() == (1 << 2) | (1 << 3) | (1 << 20)
    everything = frozenset(ControlType)
    assert doe_modes_supported(everything) == sum(DOE_MODE_BITS.values())
    assert doe_modes_supported({ControlType.EXPORT_LIMIT_W}) == 0x01


def test_can_perform_needs_at_least_one_enforced_control() -> None:
    assert can_perform(ControlBase(export_limit_w=0.0, import_limit_w=10.0))
    assert can_perform(ControlBase(max_limit_pct=50.0))
    assert not can_perform(ControlBase(import_limit_w=10.0, load_limit_w=5.0))
    assert not can_perform(ControlBase(unsupported=("opModFixedW",)))
    assert not can_perform(ControlBase())


def test_unmodelled_controls_are_kept_by_name_not_silently_dropped() -> None:
    control = r.parse_der_control(
        _control(
            "<opModFixedW>50</opModFixedW><opModTargetW><multiplier>0</multiplier>"
            "<value>5</value></opModTargetW>"
            "<csipaus:opModStorageTargetW><multiplier>0</multiplier><value>5</value>"
            "</csipaus:opModStorageTargetW><rampTms>10</rampTms>"
        )
    )
    assert control.base.unsupported == (
        "csipaus:opModStorageTargetW",
        "opModFixedW",
        "opModTargetW",
    )
    assert control.base.types() == frozenset()
    assert not can_perform(control.base)


def test_modelled_controls_leave_nothing_unsupported() -> None:
    control = r.parse_der_control(
        _control(
            "<opModConnect>true</opModConnect><opModMaxLimW>5050</opModMaxLimW>"
            "<csipaus:opModExpLimW><multiplier>0</multiplier><value>0</value></csipaus:opModExpLimW>"
        )
    )
    assert control.base.unsupported is None
    assert control.base.max_limit_pct == 50.5


def test_max_limit_pct_is_exposed_through_active_controls_in_percent() -> None:
    """opModMaxLimW 5050 (hundredths of a percent of setMaxW) is 50.5 in ActiveControls; the app
    turns it into a generation limit of rated W × 50.5 / 100."""
    p = [prog("/derp/1", 0, ev("M", T0, 600, max_pct=50.5))]
    controls = active_controls(p, T0 + 1, SEED)
    assert controls.value(ControlType.MAX_LIMIT_PCT) == 50.5
    assert controls.origin(ControlType.MAX_LIMIT_PCT) == "event M"


def test_response_252_is_named_as_the_reference_server_names_it() -> None:
    assert int(ResponseStatus.REJECTED_NOT_APPLICABLE) == 252
    assert int(ResponseStatus.REJECTED_INVALID) == 253
    assert int(ResponseStatus.REJECTED_LATE) == 254


def test_unsupported_names_survive_the_stored_schedule() -> None:
    from dataclasses import replace

    from dynexport.sep2.schedule import ScheduleSnapshot

    e = replace(ev("U", T0, 60), base=ControlBase(unsupported=("opModFixedW",)))
    snap = ScheduleSnapshot((prog("/derp/1", 0, e),), T0)
    assert ScheduleSnapshot.from_json(snap.to_json()) == snap
