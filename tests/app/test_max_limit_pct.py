"""The utility's opModMaxLimW (a percentage of the site's setMaxW) while not every inverter has
been read: it is enforced against the ratings known so far (a lower limit in W, so a safe one),
never dropped. Before, one inverter asleep or unreachable since the start meant no generation
limit at all, while the event was answered as performed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dynexport.app import utility_limits
from dynexport.sep2.schedule import active_controls
from dynexport.system.config import Config
from tests.app.conftest import make_app
from tests.sep2.test_schedule import SEED, T0, ev, prog

TWENTY_PCT = active_controls([prog("/derp/1", 0, ev("M", T0, 600, max_pct=20.0))], T0 + 1, SEED)


def link(w_max: float | None, rated_w: float | None = None) -> Any:
    """What App.limit_rating_w reads of an inverter link: its state's WMax and rating."""
    return SimpleNamespace(state=SimpleNamespace(w_max=w_max, rated_w=rated_w))


@pytest.mark.parametrize(
    ("ratings", "expected_w"),
    [
        ([(5000.0, 5000.0), (3000.0, 3000.0)], 1600.0),  # all read: 20 % of 8000 W
        ([(5000.0, 5000.0), (None, None)], 1000.0),  # one silent: 20 % of what is known
        ([(None, 6000.0), (None, None)], 1200.0),  # a rating without WMax counts
        ([(None, None), (None, None)], 0.0),  # none read yet: nothing allowed until they are
    ],
)
def test_max_limit_pct_is_enforced_against_the_inverters_read_so_far(
    tmp_path: Path, ratings: list[tuple[float | None, float | None]], expected_w: float
) -> None:
    app = make_app(Config(), tmp_path)
    app.inverters = [link(w, r) for w, r in ratings]
    limits = utility_limits(TWENTY_PCT, app.limit_rating_w())
    assert limits.generation_w == pytest.approx(expected_w)
    # setMaxW (reported to the utility) still waits for every inverter
    assert app.site_rated_w() == (None if (None, None) in ratings else 8000.0)


def test_a_site_without_inverters_has_nothing_to_limit(tmp_path: Path) -> None:
    app = make_app(Config(), tmp_path)
    assert app.limit_rating_w() is None
    assert utility_limits(TWENTY_PCT, app.limit_rating_w()).generation_w is None
