"""A site meter reading no home connection could carry is not averaged into the load estimate:
one +3.2 MW sample (a value read with the wrong scale factor) read the load as 1.6 MW and
released the inverters for two seconds, kilowatts over a 0 W limit."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from dynexport.app import MAX_PLAUSIBLE_SITE_W
from dynexport.system.config import Config
from tests.app.conftest import make_app


def feed(app: object, t: float, site_w: float) -> None:
    """A meter link whose latest reading (at ``t``) is ``site_w``, fed to the app."""
    state = SimpleNamespace(last_reading=t, site_w=site_w, reading=None)  # no energy counters
    app.meter = SimpleNamespace(state=state)  # type: ignore[attr-defined]
    app._feed_meter()  # type: ignore[attr-defined]


@pytest.mark.parametrize("absurd", [3.2e6, -5e6, MAX_PLAUSIBLE_SITE_W * 1.0001])
def test_an_absurd_meter_reading_is_ignored_and_said(
    tmp_path: Path, absurd: float, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(Config(), tmp_path)
    feed(app, 1.0, -20.0)
    with caplog.at_level(logging.WARNING, logger="dynexport"):
        feed(app, 1.3, absurd)
    feed(app, 1.6, 15.0)  # all three within the 1 s averaging window
    assert [v for _, v in app.meter_mean.samples] == [-20.0, 15.0]
    assert "ignored: no home connection carries 1 MW" in caplog.text


def test_a_large_but_possible_reading_is_used(tmp_path: Path) -> None:
    app = make_app(Config(), tmp_path)
    feed(app, 1.0, 70_000.0)  # a 100 A three-phase connection flat out
    feed(app, 1.5, -MAX_PLAUSIBLE_SITE_W)
    assert [v for _, v in app.meter_mean.samples] == [70_000.0, -MAX_PLAUSIBLE_SITE_W]
