"""The site's VA, var and PF ratings as the utility hears them (CSIP-AUS STO-02/05
rtgMaxVA/Var/VarNeg, rtgMinPF*, set* twins): App.der_info's totals over the inverters, and end to
end from the simulated inverters' model 120 through the service to the simulated utility."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.app import App
from dynexport.modbus.client import BusPool
from dynexport.sep2.flow import DerInfo, der_capability, der_settings, power_factor
from dynexport.sep2.resources import DERCapability, DERSettings, PowerFactor
from dynexport.sim.utility_server import UtilityServer
from dynexport.sunspec.links import InverterLink, InverterState
from dynexport.sunspec.views import NO_RATINGS, DerRatings
from dynexport.system.config import parse_config
from tests.app.conftest import make_app, simulated_site, site_document, utility_section, wait_for

A = DerRatings(va=5000.0, var_inj=3000.0, var_abs=3000.0, pf_over=0.8, pf_under=0.85)
B = DerRatings(va=8200.0, var_inj=4920.0, var_abs=4000.0, pf_over=0.9, pf_under=0.8)


@pytest.fixture
def app(tmp_path: Path) -> App:
    """An App that is never run, with two inverter links on a closed loopback port: der_info
    only reads the links' state, which each test sets."""
    raw = {
        "inverters": [{"tcp": "127.0.0.1:1", "unit": 1}, {"tcp": "127.0.0.1:1", "unit": 2}],
        "meter": {"tcp": "127.0.0.1:1", "unit": 240},
    }
    a = make_app(parse_config(raw), tmp_path)
    pool = BusPool()
    a.inverters = [
        InverterLink(f"inverter {i + 1}", pool.get(inv.endpoint), inv.unit)
        for i, inv in enumerate(a.config.inverters)
    ]
    return a


def _set(app: App, *ratings: tuple[DerRatings, DerRatings]) -> DerInfo:
    for n, (link, (rtg, lim)) in enumerate(zip(app.inverters, ratings, strict=True)):
        link.state = InverterState(
            id=f"inverter {n + 1}",
            online=True,
            controllable=True,
            rated_w=5000.0,
            ratings=rtg,
            set_limits=lim,
        )
    info = app.der_info()
    assert info is not None
    return info


def test_site_ratings_are_the_sums_and_the_least_capable_pf(app: App) -> None:
    info = _set(app, (A, A), (B, B))
    assert (info.rated_va, info.rated_var, info.rated_var_neg) == (13200.0, 7920.0, 7000.0)
    assert (info.rated_pf_over, info.rated_pf_under) == (0.9, 0.85)
    assert (info.set_va, info.set_var, info.set_var_neg) == (13200.0, 7920.0, 7000.0)


def test_one_inverter_without_a_rating_means_no_site_rating_not_a_partial_sum(app: App) -> None:
    partial = DerRatings(va=8200.0, var_inj=None, var_abs=4000.0, pf_over=0.9, pf_under=None)
    info = _set(app, (A, A), (partial, partial))
    assert info.rated_va == 13200.0 and info.rated_var_neg == 7000.0
    assert info.rated_var is None and info.rated_pf_under is None
    info = _set(app, (A, A), (NO_RATINGS, NO_RATINGS))
    assert (info.rated_va, info.rated_var, info.rated_var_neg) == (None, None, None)
    assert (info.rated_pf_over, info.rated_pf_under) == (None, None)
    cap = der_capability(info)
    assert cap.rtg_max_va is None and cap.rtg_max_var_neg is None
    assert cap.rtg_min_pf_over_excited is None


def test_settings_are_summed_separately_from_the_ratings(app: App) -> None:
    lower = DerRatings(va=4000.0, var_inj=2000.0, var_abs=2000.0, pf_over=0.95, pf_under=0.9)
    info = _set(app, (A, lower), (B, B))
    assert info.rated_va == 13200.0 and info.set_va == 12200.0
    assert info.set_pf_over == 0.95 and info.rated_pf_over == 0.9
    settings_ = der_settings(info, None, 1000)
    assert settings_.set_max_va is not None and settings_.set_max_va.real == 12200.0
    assert settings_.set_max_var_neg is not None and settings_.set_max_var_neg.real == -6000.0


def test_power_factor_encoding() -> None:
    assert power_factor(0.8) == PowerFactor(8000, -4)
    assert power_factor(1.0) == PowerFactor(10000, -4)
    assert power_factor(1.0, under_excited=True) == PowerFactor(9999, -4), "XSD: <= 0.9999"
    assert power_factor(0.80004) == PowerFactor(8001, -4), "rounded up: never more capable"
    for bad in (None, 0.0, -0.8, 1.2, math.nan, math.inf):
        assert power_factor(bad) is None


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True), st.booleans())
def test_an_encoded_pf_never_claims_more_than_the_device_and_fits_the_xsd(
    pf: float, under: bool
) -> None:
    """Safety: an encoded minimum PF is never below the device's (that would claim var the
    DER cannot give), is a UInt16 displacement in (0, 1] (under-excited <= 0.9999), or None
    for anything that is not a PF."""
    enc = power_factor(pf, under_excited=under)
    if not (math.isfinite(pf) and 0 < pf <= 1):
        assert enc is None
        return
    assert enc is not None and 0 < enc.displacement <= 65535 and -9 <= enc.multiplier <= 9
    real = enc.displacement / 10**-enc.multiplier
    assert real <= (0.9999 if under else 1.0)
    assert real >= pf or (under and real == 0.9999)
    assert real - pf < 2e-4


async def test_the_simulated_inverters_ratings_reach_the_simulated_utility(
    tmp_path: Path,
) -> None:
    """End to end: the two simulated Fronius inverters' model 120 (5000 and 8200 VA, var
    0.6 × rating both ways, PF 0.8 in Q1 and -0.8 in Q4) polled by the service and PUT as
    DERCapability and DERSettings to the simulated utility (which validates them)."""
    server = UtilityServer(pki_dir=tmp_path / "pki", poll_rate_s=10, expected_pen=46273)
    async with server.running() as utility:
        utility.set_default(export_limit_w=5000)
        with simulated_site() as sim:
            raw = {**site_document(sim), "utility": utility_section(utility, pen=46273)}
            app = make_app(parse_config(raw), tmp_path / "data")
            async with trio.open_nursery() as nursery:
                await nursery.start(app.run)

                def last(path: str) -> object:
                    got = [r for r in utility.received if r.method == "PUT" and r.path == path]
                    return got[-1] if got else None

                def rated() -> bool:
                    # both PUTs, each with the ratings: the link sends them one after the other,
                    # and on a loaded machine the second can come well after the first
                    cap = getattr(last("/edev/1/der/1/dercap"), "resource", None)
                    settings_ = getattr(last("/edev/1/der/1/derg"), "resource", None)
                    return (
                        isinstance(cap, DERCapability)
                        and cap.rtg_max_va is not None
                        and isinstance(settings_, DERSettings)
                        and settings_.set_max_va is not None
                    )

                await wait_for(rated, within=120)
                nursery.cancel_scope.cancel()
        cap_req = last("/edev/1/der/1/dercap")
        set_req = last("/edev/1/der/1/derg")
        assert getattr(cap_req, "status", None) == 204 and getattr(set_req, "status", None) == 204
        cap = getattr(cap_req, "resource", None)
        settings_ = getattr(set_req, "resource", None)
        assert isinstance(cap, DERCapability) and isinstance(settings_, DERSettings)
        assert cap.rtg_max_va is not None and cap.rtg_max_va.real == 13200.0
        assert cap.rtg_max_var is not None and cap.rtg_max_var.real == 7920.0
        assert cap.rtg_max_var_neg is not None and cap.rtg_max_var_neg.real == -7920.0
        assert cap.rtg_min_pf_over_excited == PowerFactor(8000, -4)
        assert cap.rtg_min_pf_under_excited == PowerFactor(8000, -4)
        assert settings_.set_max_va is not None and settings_.set_max_va.real == 13200.0
        assert settings_.set_max_var_neg is not None and settings_.set_max_var_neg.real == -7920.0
        assert settings_.set_min_pf_under_excited == PowerFactor(8000, -4)
        assert [v.message for v in utility.violations] == []
