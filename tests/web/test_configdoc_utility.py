"""The configuration the web page writes back keeps every utility key the installer set."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynexport.system.config import parse_config
from dynexport.web.configdoc import config_document

SITE = {
    "inverters": [{"type": "sunspec", "tcp": "127.0.0.1:1502", "unit": 1}],
    "meter": {"type": "sunspec", "tcp": "127.0.0.1:1502", "unit": 240, "location": "feedin"},
}


def utility(**extra: object) -> dict[str, object]:
    return {
        "type": "csip-aus",
        "server": "https://127.0.0.1:8443",
        "dcap": "/dcap",
        "ca": "/d/ca.pem",
        "cert": "/d/cert.pem",
        "key": "/d/key.pem",
        "nmi": "4123456789",
        **extra,
    }


@pytest.mark.parametrize("version", ["auto", "1.2", "1.3"])
def test_the_csip_aus_version_override_survives_a_save_from_the_web_page(version: str) -> None:
    raw = {**SITE, "utility": utility(csipAusVersion=version)}
    config = parse_config(raw, base_dir=Path("/d"))
    assert config.utility is not None and config.utility.csipaus_version == version
    doc = config_document(config)
    assert parse_config(doc, base_dir=Path("/d")) == config
    # "auto" is the default: written only when the installer forced a version
    assert ("csipAusVersion" in doc["utility"]) == (version != "auto")
