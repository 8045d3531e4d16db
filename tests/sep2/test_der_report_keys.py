"""Which DER report a change of `DerInfo` makes due (`flow.der_report_key`, `flow.soc_due`), and
the refusal rule readings share with responses (`flow.reading_outcome`)."""

from __future__ import annotations

from dataclasses import replace

from dynexport.sep2 import flow

BATTERY = flow.DerInfo(rated_w=5000, rated_wh=10_000, state_of_charge_pct=50.0, storage_mode=0)


def test_a_soc_change_moves_no_key_but_the_soc_itself() -> None:
    before = flow.der_report_key(BATTERY, 27)
    after = flow.der_report_key(replace(BATTERY, state_of_charge_pct=50.07), 27)
    assert (after.capability, after.settings, after.status) == (
        before.capability,
        before.settings,
        before.status,
    )
    assert (before.soc, after.soc) == (5000, 5007)


def test_each_change_moves_the_key_of_the_report_that_shows_it() -> None:
    base = flow.der_report_key(BATTERY, 27)
    changed = {
        "connect": flow.der_report_key(replace(BATTERY, connected=False), 27),
        "mode": flow.der_report_key(replace(BATTERY, operational_mode=1), 27),
        "alarm": flow.der_report_key(replace(BATTERY, alarm_status=2), 27),
        "rating": flow.der_report_key(replace(BATTERY, rated_w=4000, max_w=5000), 27),
        "setGradW": flow.der_report_key(BATTERY, 50),
    }
    for what in ("connect", "mode", "alarm"):
        key = changed[what]
        assert key.status != base.status, what
        assert (key.capability, key.settings) == (base.capability, base.settings), what
    assert changed["rating"].capability != base.capability
    assert changed["rating"].status == base.status
    assert changed["setGradW"].settings != base.settings
    assert changed["setGradW"].capability == base.capability


def test_the_soc_is_due_at_once_after_a_point_else_at_the_post_rate() -> None:
    assert not flow.soc_due(5000, 0.0, 5000, 1000.0, 60)
    assert not flow.soc_due(5000, 0.0, 5099, 59.0, 60)
    assert flow.soc_due(5000, 0.0, 5099, 60.0, 60)
    assert flow.soc_due(5000, 0.0, 5100, 1.0, 60)
    assert flow.soc_due(5000, 0.0, 4900, 1.0, 60)
    assert flow.soc_due(None, 0.0, 5000, 1.0, 60)  # a battery appears
    assert flow.soc_due(5000, 0.0, None, 1.0, 60)  # or goes


def test_a_readings_post_refused_three_times_running_is_dropped() -> None:
    assert flow.reading_outcome(201, 0) is flow.SendOutcome.SENT
    for status in (400, 403, 409, 413, 415, 422):
        assert flow.reading_outcome(status, 2) is flow.SendOutcome.RETRY
        assert flow.reading_outcome(status, 3) is flow.SendOutcome.DROP
    for status in (404, 408, 429, 500, 503):  # later, or the mirror is gone: never dropped
        assert flow.reading_outcome(status, 10) is flow.SendOutcome.RETRY
