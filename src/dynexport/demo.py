"""The demo: the real service against a simulated site and a simulated utility, all on 127.0.0.1.

Nothing here is special-cased in the product: the controller reaches the simulated inverters and
meter over Modbus TCP and the simulated utility over mutual TLS, with a configuration file written
like an installer's. The site follows a compressed daily PV curve with a noisy household load;
the utility steps the export limit (5000 → 1500 → 0 W and back by default).
"""

from __future__ import annotations

import json
import logging
import math
import random
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from dynexport.app import App, AppOptions
from dynexport.sep2.schema import schema_available
from dynexport.sim.modbus_server import SimServer, serve_tcp
from dynexport.sim.profiles import fronius_battery_site
from dynexport.sim.sunspec_device import Site
from dynexport.sim.utility_server import UtilityServer, roll_steps
from dynexport.system.config import Config, load_config
from dynexport.system.watchdog import Notifier
from dynexport.web.auth import PasswordStore

log = logging.getLogger("dynexport.demo")
SIM_LOGGERS = ("dynexport.sim", "pymodbus")
"""The simulators' request logs: at debug level (``-v``), so the banner stays in view."""


@dataclass(frozen=True)
class DemoOptions:
    port: int = 8080
    data_dir: Path | None = None
    steps_w: tuple[float, ...] = (5000.0, 1500.0, 0.0)
    every_s: int = 120
    day_s: float = 1800.0
    """Length of one simulated day: PV rises and falls over this many seconds."""
    seed: int = 1
    poll_rate_s: int = 10
    print_every_s: float = 5.0


class SiteDriver:
    """Moves the simulated weather and household: PV along a daily curve, a noisy load."""

    def __init__(self, site: Site, day_s: float, seed: int) -> None:
        self.site = site
        self.day_s = day_s
        self.rng = random.Random(seed)
        self.load_w = 700.0
        self.kettle_until = -math.inf
        self.cloud = 1.0

    def step(self, t: float) -> None:
        # The day starts mid-morning so the demo shows limits biting straight away.
        phase = (t / self.day_s + 0.3) % 1.0
        sun = max(0.0, math.sin(math.pi * min(phase / 0.8, 1.0))) if phase < 0.8 else 0.0
        self.cloud = min(1.0, max(0.6, self.cloud + self.rng.gauss(0, 0.02)))
        for unit, inverter in self.site.inverters.items():
            rating = inverter.limit_w() if hasattr(inverter, "limit_w") else 5000.0
            peak = {1: 4800.0, 2: 7800.0}.get(unit, rating)
            self.site.set_available(unit, peak * sun * self.cloud)
        self.load_w = min(2500.0, max(300.0, self.load_w + self.rng.gauss(0, 40)))
        if self.rng.random() < 1 / 240:
            self.kettle_until = t + 90.0
        kettle = 2200.0 if t < self.kettle_until else 0.0
        self.site.set_load(self.load_w + kettle + self.rng.gauss(0, 25))


def write_config(
    folder: Path, modbus_port: int, utility: UtilityServer, web_port: int
) -> tuple[Path, Config]:
    """An installer-style configuration for the simulated site and utility."""
    files = utility.pki.files
    endpoint = f"127.0.0.1:{modbus_port}"
    document: dict[str, Any] = {
        "inverters": [
            {"type": "sunspec", "tcp": endpoint, "unit": 1},
            {"type": "sunspec", "tcp": endpoint, "unit": 2},
        ],
        "meter": {"type": "sunspec", "tcp": endpoint, "unit": 240, "location": "feedin"},
        "batteries": [{"type": "sunspec", "tcp": endpoint, "unit": 3, "convention": "window"}],
        "utility": {
            "type": "csip-aus",
            "server": utility.url,
            "dcap": "/dcap",
            "ca": str(files["serca"]),
            "cert": str(files["device_chain"]),
            "key": str(files["device_key"]),
            "nmi": "4312345678",
            "pin": 111115,
        },
        "limits": {"exportW": None, "generationW": None},
        "control": {"intervalS": 1, "revertS": 60},
    }
    if web_port:  # 0: an ephemeral port chosen at start (tests); nothing to write down
        document["web"] = {"host": "127.0.0.1", "port": web_port}
    path = folder / "config.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path, load_config(path)


async def run_demo(options: DemoOptions, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Runs the simulators and the service until cancelled; ``task_status`` gets the App."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in SIM_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="dynexport-demo-") as tmp:
        data = options.data_dir or Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        # A 10 kWh AC battery at unit 3 (GEN24-style model 124), a third full: the demo shows
        # it charging under the limit before any PV is cut.
        site = fronius_battery_site(tau_s=1.5, soc_pct=30.0)
        driver = SiteDriver(site, options.day_s, options.seed)
        driver.step(0.0)
        utility = UtilityServer(
            pki_dir=data / "pki",
            poll_rate_s=options.poll_rate_s,
            post_rate_s=60,
            validate=schema_available(),
        )
        with serve_tcp(site, control_port=0) as modbus:
            async with trio.open_nursery() as nursery:
                await nursery.start(utility.serve)
                nursery.start_soon(roll_steps, utility, list(options.steps_w), options.every_s)
                nursery.start_soon(_drive, driver)
                config_path, config = write_config(data, modbus.port, utility, options.port)
                app = App(
                    config,
                    AppOptions(
                        config_path=config_path,
                        data_dir=data / "state",
                        web_host="127.0.0.1",
                        web_port=options.port,
                        notifier=Notifier(),
                    ),
                )
                password = admin_password(data / "state")
                await nursery.start(app.run)
                banner = _announce(app, modbus, utility, data, password)
                nursery.start_soon(_report, app, options.print_every_s, banner)
                task_status.started(app)


async def _drive(driver: SiteDriver) -> None:
    t0 = trio.current_time()
    while True:
        driver.step(trio.current_time() - t0)
        await trio.sleep(1.0)


def admin_password(state: Path) -> str | None:
    """A generated admin password for the demo's page, so the first visitor does not choose
    one for everybody (None: a password was already set in this data folder)."""
    store = PasswordStore(state)
    if store.exists():
        return None
    password = "-".join(secrets.token_urlsafe(4) for _ in range(3))
    state.mkdir(parents=True, exist_ok=True)
    store.create(password)
    return password


def _announce(
    app: App, modbus: SimServer, utility: UtilityServer, data: Path, password: str | None
) -> str:
    """Prints the banner; returns its one-line reminder, repeated among the status lines."""
    ui = f"http://127.0.0.1:{app.web_port or app.options.web_port}/"
    if app.web_port is None:  # its port taken: the web server is retried on it meanwhile
        print(f"\n!!! port {app.options.web_port} is in use: the web UI starts once it is free")
    login = (
        f"admin password: {password}"
        if password is not None
        else "admin password: the one set before in this data folder"
    )
    print(
        f"\n=== dynexport demo: open {ui} in a browser ({login}) ===\n"
        f"  try: watch the utility's export limit step through the demo's steps on the\n"
        f"  dashboard; log in and open Settings, or the installer tools below the dashboard\n"
        f"  (test limit, meter direction check, commissioning report)\n"
        f"  status API: {ui}api/status\n"
        f"  simulated site (Modbus TCP): 127.0.0.1:{modbus.port}, inverters at units 1 and 2, "
        f"meter at 240\n"
        f"  site control channel (JSON lines, docs/modbus.md): 127.0.0.1:{modbus.control_port}, "
        f'e.g. {{"unit": 1, "set": {{"connected": false}}}} trips inverter 1\n'
        f"  simulated utility (CSIP-AUS, mutual TLS): {utility.url}\n"
        f"  configuration and state: {data}\n"
        f"  Ctrl-C stops; the inverters are left at their fail-safe limits.\n",
        flush=True,
    )
    return f"--- web UI {ui} ({login}); Ctrl-C stops ---"


REMIND_EVERY = 12
"""The banner's one-line reminder comes back every this many status lines."""


async def _report(app: App, every_s: float, banner: str = "") -> None:
    lines = 0
    while True:
        await trio.sleep(every_s)
        lines += 1
        if banner and lines % REMIND_EVERY == 0:
            print(banner, flush=True)
        st = app.status()
        limits = st["limits"]
        invs = " ".join(
            f"[{i['id']}: {_w(i['powerW'])} @ {_p(i['limitPct'])}]" for i in st["inverters"]
        )
        source = limits["source"].get("export_w", "-")
        print(
            f"site {_w(st['site']['powerW'])}  der {_w(st['der']['powerW'])}  "
            f"export limit {_w(limits['exportW'])} ({source})  {invs}  "
            f"mode {st['control']['mode']}",
            flush=True,
        )


def _w(v: float | None) -> str:
    return "   ?   " if v is None else f"{v:7.0f} W"


def _p(v: float | None) -> str:
    return "no limit" if v is None else f"{v:.0f} %"


def parse_steps(text: str) -> Sequence[float]:
    steps = [float(x) for x in text.split(",") if x.strip()]
    if not steps or any(not math.isfinite(s) or s < 0 for s in steps):
        raise ValueError(f"need comma-separated non-negative watts, not {text!r}")
    return steps
