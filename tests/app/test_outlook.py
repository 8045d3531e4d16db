"""The limits outlook merges the utility's schedule with installer limits and daily windows."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from pathlib import Path

import trio

from dynexport.sim.utility_server import UtilityServer
from dynexport.system.config import parse_config
from tests.app.conftest import make_app, wait_for


def hhmm(t: datetime) -> str:
    return t.strftime("%H:%M")


async def test_outlook_shows_utility_steps_config_limits_and_windows_with_sources(
    tmp_path: Path,
):
    server = UtilityServer(pki_dir=tmp_path / "pki", poll_rate_s=10)
    async with server.running() as utility:
        now = int(utility.now())
        utility.add_control(start=now + 600, duration=1200, export_limit_w=1500)
        utility.set_default(export_limit_w=5000)
        start = (datetime.now() + timedelta(hours=2)).replace(second=0, microsecond=0)
        end = start + timedelta(hours=1)
        files = utility.pki.files
        config = parse_config(
            {
                "utility": {
                    "server": utility.url,
                    "ca": str(files["serca"]),
                    "cert": str(files["device_chain"]),
                    "key": str(files["device_key"]),
                    "nmi": "4312345678",
                },
                "limits": {
                    "exportW": 4000,
                    "windows": [{"from": hhmm(start), "to": hhmm(end), "exportW": 0}],
                },
            }
        )
        app = make_app(config, tmp_path / "data")
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: app.status()["utility"].get("lastPoll") is not None)
            outlook = app.limits_outlook(hours=24)
            steps = [(round(t), lim.export_w, lim.sources.get("export_w")) for t, lim in outlook]
            # now: the installer's 4000 W is tighter than the utility's default 5000 W
            assert steps[0][1:] == (4000.0, "config")
            # in 10 minutes the utility's 1500 W event, for 20 minutes
            assert (1500.0, "utility") in [s[1:] for s in steps]
            event = next(s for s in steps if s[1] == 1500.0)
            # at the times the utility gave (not the outlook's own start: on a loaded machine
            # the app took more than 2 s to start and poll after the event was added)
            assert abs(event[0] - (now + 600)) <= 1
            after = steps[steps.index(event) + 1]
            assert after[1:] == (4000.0, "config") and abs(after[0] - (now + 1800)) <= 1
            # the daily window, at local times
            window = next(s for s in steps if s[1] == 0.0)
            assert window[2] == f"window {hhmm(start)}-{hhmm(end)}"
            assert abs(window[0] - start.timestamp()) <= 1
            # neighbours always differ: the outlook lists changes only
            assert all(a[1:] != b[1:] for a, b in itertools.pairwise(steps))
            nursery.cancel_scope.cancel()
