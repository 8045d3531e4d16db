"""Shared pieces for service tests: a simulated site served over Modbus TCP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from dynexport.app import App, AppOptions
from dynexport.sim.modbus_server import SimServer, serve_tcp
from dynexport.sim.profiles import fronius_gateway
from dynexport.sim.sunspec_device import Site
from dynexport.sim.utility_server import UtilityServer
from dynexport.system.config import Config, parse_config
from dynexport.system.watchdog import Notifier


@dataclass
class SimSite:
    """One simulated site served by several Modbus TCP servers, so a test can cut one off."""

    site: Site
    servers: dict[str, SimServer] = field(default_factory=dict)

    def endpoint(self, name: str) -> str:
        return f"127.0.0.1:{self.servers[name].port}"

    def export_w(self) -> float:
        return -self.site.site_w()


@contextmanager
def simulated_site(
    names: tuple[str, ...] = ("main",),
    *,
    load_w: float = 1000.0,
    tau_s: float = 0.3,
    control_channel: bool = False,
) -> Iterator[SimSite]:
    """A Fronius-like site (5000 W + 8200 W inverters, meter at 240) with plenty of sun."""
    site = fronius_gateway(load_w=load_w, tau_s=tau_s)
    site.set_available(1, 5000.0)
    site.set_available(2, 8200.0)
    with ExitStack() as stack:
        sim = SimSite(site)
        for name in names:
            sim.servers[name] = stack.enter_context(
                serve_tcp(site, control_port=0 if control_channel else None)
            )
        yield sim


def site_config(
    sim: SimSite,
    *,
    inverter_servers: tuple[str, str] = ("main", "main"),
    meter_server: str = "main",
    extra: dict[str, Any] | None = None,
) -> Config:
    raw: dict[str, Any] = {
        "inverters": [
            {"tcp": sim.endpoint(inverter_servers[0]), "unit": 1},
            {"tcp": sim.endpoint(inverter_servers[1]), "unit": 2},
        ],
        "meter": {"tcp": sim.endpoint(meter_server), "unit": 240},
        "control": {"intervalS": 1, "revertS": 30, "meterStaleS": 3},
    }
    raw.update(extra or {})
    return parse_config(raw)


def utility_section(utility: UtilityServer, **extra: Any) -> dict[str, Any]:
    """The ``utility`` configuration for a running simulated utility and its test PKI."""
    files = utility.pki.files
    return {
        "server": utility.url,
        "ca": str(files["serca"]),
        "cert": str(files["device_chain"]),
        "key": str(files["device_key"]),
        "nmi": "4312345678",
        **extra,
    }


def site_document(sim: SimSite, server: str = "main") -> dict[str, Any]:
    """Both inverters and the meter of ``sim`` on one server, with the tests' control timing."""
    return {
        "inverters": [
            {"tcp": sim.endpoint(server), "unit": 1},
            {"tcp": sim.endpoint(server), "unit": 2},
        ],
        "meter": {"tcp": sim.endpoint(server), "unit": 240},
        "control": {"intervalS": 1, "revertS": 30, "meterStaleS": 3},
    }


def make_app(config: Config, data_dir: Path, **options: Any) -> App:
    return App(config, AppOptions(data_dir=data_dir, notifier=Notifier(), **options))


async def wait_for(predicate: Callable[[], bool], within: float = 60.0) -> None:
    """Polls state other tasks (and the simulator thread) change; fails after ``within`` s: a
    bound for a hung test on a loaded machine (CI runs the system test's VMs beside the suite),
    not a speed requirement."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.05)


async def wait_settled(
    measure: Callable[[], float], target: float, tolerance: float, within: float = 30.0
) -> None:
    """Waits until ``measure()`` has stayed within ``tolerance`` of ``target`` for 2 s."""
    with trio.fail_after(within):
        inside_since: float | None = None
        while True:
            now = trio.current_time()
            if abs(measure() - target) <= tolerance:
                inside_since = now if inside_since is None else inside_since
                if now - inside_since >= 2.0:
                    return
            else:
                inside_since = None
            await trio.sleep(0.05)


STORED_CONTROL_W = 2000.0
"""The utility's control that `store_a_schedule` leaves on the data partition (the fallback
export limit is 1500 W, so the two cannot be mistaken for each other)."""


async def store_a_schedule(utility: UtilityServer, raw: dict[str, Any], data_dir: Path) -> None:
    """Puts a `STORED_CONTROL_W` export control in force for an hour (over a 5000 W default)
    and runs an app with ``raw`` until it obeys it: its link has stored the schedule."""
    now = int(utility.now())
    utility.add_control(start=now - 5, duration=3600, export_limit_w=STORED_CONTROL_W)
    utility.set_default(export_limit_w=5000)
    app = make_app(parse_config(raw), data_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(app.run)
        await wait_for(lambda: app.status()["limits"]["exportW"] == STORED_CONTROL_W)
        nursery.cancel_scope.cancel()
