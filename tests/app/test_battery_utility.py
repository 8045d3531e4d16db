"""What the utility hears of a site with a battery: the storage fields of DERCapability,
DERSettings and DERStatus (valid against the CSIP-AUS schema), and import/load limits enforced
and advertised only with a battery."""

from __future__ import annotations

import pytest

from dynexport.sep2 import schema
from dynexport.sep2.controls import (
    ENFORCED_CONTROLS,
    ControlBase,
    ControlType,
    can_perform,
    doe_modes_supported,
    enforced_controls,
)
from dynexport.sep2.flow import (
    DER_TYPE_PV_AND_STORAGE,
    DerInfo,
    der_capability,
    der_settings,
    der_status,
    storage_mode_of,
)
from dynexport.sep2.resources import to_xml

STORAGE = DerInfo(
    rated_w=10000.0,
    der_type=DER_TYPE_PV_AND_STORAGE,
    doe_modes_supported=doe_modes_supported(enforced_controls(True)),
    rated_charge_w=5000.0,
    rated_discharge_w=4600.0,
    rated_wh=10240.0,
    state_of_charge_pct=57.34,
    storage_mode=storage_mode_of(-1200.0),
    enforced=enforced_controls(True),
)


def test_storage_ratings_state_of_charge_and_mode_are_reported() -> None:
    cap = der_capability(STORAGE)
    assert cap.rtg_max_charge_rate_w is not None and cap.rtg_max_charge_rate_w.real == 5000.0
    assert cap.rtg_max_discharge_rate_w is not None and cap.rtg_max_wh is not None
    assert cap.rtg_max_wh.real == 10240.0 and cap.doe_modes_supported == 0x0F
    settings = der_settings(STORAGE, None, 1000)
    assert settings.set_max_wh is not None and settings.set_max_charge_rate_w is not None
    assert settings.doe_modes_enabled == 0x0F
    status = der_status(STORAGE, 1000)
    assert status.state_of_charge_status is not None
    assert status.state_of_charge_status.value == 5734  # hundredths of a percent
    assert status.storage_mode_status is not None and status.storage_mode_status.value == 0
    plain = DerInfo(rated_w=5000.0)
    assert der_capability(plain).rtg_max_wh is None
    assert der_status(plain, 1).state_of_charge_status is None
    assert plain.enforced == ENFORCED_CONTROLS


@pytest.mark.skipif(not schema.schema_available(), reason="needs the CSIP-AUS XSD")
def test_the_storage_fields_are_valid_csip_aus() -> None:
    for resource in (
        der_capability(STORAGE),
        der_settings(STORAGE, None, 1000),
        der_status(STORAGE, 1000),
    ):
        schema.validate(to_xml(resource))


def test_import_and_load_limits_are_enforced_only_with_a_battery() -> None:
    assert ControlType.IMPORT_LIMIT_W not in enforced_controls(False)
    assert {ControlType.IMPORT_LIMIT_W, ControlType.LOAD_LIMIT_W} <= enforced_controls(True)
    assert doe_modes_supported(enforced_controls(False)) == 0x05
    assert doe_modes_supported(enforced_controls(True)) == 0x0F
    assert storage_mode_of(2000.0) == 1 and storage_mode_of(10.0) == 2
    assert storage_mode_of(None) is None and storage_mode_of(float("nan")) is None


def test_an_import_limit_event_is_performed_only_with_a_battery() -> None:
    """An event setting only an import limit is answered "not applicable" (252) without a
    battery, and performed with one."""
    base = ControlBase(import_limit_w=2000.0)
    assert not can_perform(base, enforced_controls(False))
    assert can_perform(base, enforced_controls(True))
    assert can_perform(ControlBase(load_limit_w=3000.0), enforced_controls(True))
