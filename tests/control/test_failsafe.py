"""Fail-safe: the quiet meter, the fail-safe generation value, and device-link backoff."""

from __future__ import annotations

from dynexport.control.average import RollingMean
from dynexport.control.failsafe import (
    failsafe_generation_w,
    meter_is_stale,
)
from dynexport.control.limits import EffectiveLimits


def test_a_meter_is_stale_after_the_timeout_and_when_it_never_answered():
    m = RollingMean().add(10.0, -500.0)
    assert not meter_is_stale(m, 15.0, stale_s=5.0)
    assert meter_is_stale(m, 15.01, stale_s=5.0)
    assert meter_is_stale(RollingMean(), 0.0)


def test_default_fail_safe_is_the_export_limit_so_zero_load_stays_compliant():
    limits = EffectiveLimits(export_w=1500, sources={"export_w": "utility"})
    assert failsafe_generation_w(limits) == (1500, "fail-safe")


def test_configured_fail_safe_overrides_the_default_but_not_the_generation_limit():
    limits = EffectiveLimits(export_w=1500, generation_w=2000, sources={"generation_w": "utility"})
    assert failsafe_generation_w(limits, configured_w=3000) == (2000, "utility")
    assert failsafe_generation_w(limits, configured_w=800) == (800, "fail-safe")


def test_no_limits_at_all_means_no_fail_safe_cap():
    assert failsafe_generation_w(EffectiveLimits()) == (None, "")


def test_a_negative_export_limit_gives_zero_generation():
    assert failsafe_generation_w(EffectiveLimits(export_w=-200)) == (0.0, "fail-safe")
