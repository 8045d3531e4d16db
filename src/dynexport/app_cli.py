"""``dynexport run``: the service, as systemd starts it on the appliance."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import trio

from dynexport.app import App, AppOptions, run_until_signalled
from dynexport.argtypes import PORT
from dynexport.system.config import Config, ConfigError
from dynexport.system.config_file import last_good_path, load_site_config

DEFAULT_CONFIG = "/data/dynexport/config.json"
DEFAULT_DATA = "/data/dynexport"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run", help="run the controller service (utility link, devices, controller, web)"
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"(default {DEFAULT_CONFIG})")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"state folder (default {DEFAULT_DATA})")
    p.add_argument("--host", help="web server address (default: the config's web.host)")
    p.add_argument("--port", type=PORT, help="web server port (default: the config's web.port)")
    p.add_argument("--no-web", action="store_true", help="do not start the web server")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    problems: list[str] = []
    unreadable = False
    try:
        # No configuration yet (first boot): start in setup mode, with only the web server,
        # which writes the configuration to --config when the installer finishes the setup.
        # (exists() raises for an I/O or permission error: inside the try, like the read.)
        # A missing file beside a last-good copy is a lost file (a bad card, fsck), not a first
        # boot: setup mode left the inverters on their own settings (load_site_config runs on
        # the copy, with a notice). To begin the setup afresh, both files are deleted.
        config_path = Path(args.config)
        setup_mode = not config_path.exists() and not last_good_path(config_path).exists()
        # A file newer than this release reads (a rolled-back update): the copy kept of this
        # release's version, with a notice (system/config_file.py).
        config, problems = (Config(), []) if setup_mode else load_site_config(args.config)
    except Exception as exc:  # every unreadable configuration leads to setup mode
        problems = (
            list(exc.problems)
            if isinstance(exc, ConfigError)
            else [f"cannot be read: {type(exc).__name__}: {exc}"]
        )
        print(f"{args.config}: invalid configuration", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        if args.no_web:
            return 2
        # Exiting would only make systemd restart us into the same error until it reboots the
        # appliance, again and again. Serve the web UI instead, so the installer can log in and
        # fix it; the inverters meanwhile run on their own settings (their limits revert).
        config, setup_mode = Config(), True
        # An I/O error (not the content): read again until it can be (App.config_unreadable).
        unreadable = isinstance(exc, OSError) or isinstance(exc.__cause__, OSError)
    options = AppOptions(
        config_path=Path(args.config),
        data_dir=Path(args.data),
        web_host=None if args.no_web else (args.host or config.web.host),
        web_port=None if args.no_web else (args.port or config.web.port),
    )
    app = App(config, options, setup_mode=setup_mode)
    app.config_problems = problems
    app.config_unreadable = unreadable
    trio.run(run_until_signalled, app)
    return 0
