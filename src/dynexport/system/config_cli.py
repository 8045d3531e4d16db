"""``dynexport config check FILE``: validate a configuration file and say what is wrong."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dynexport.system.config import ConfigError, load_config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("config", help="configuration file tools")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = csub.add_parser("check", help="validate a configuration file")
    check.add_argument("file", help="the JSON configuration file")
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    if config.cautions:
        # `dynexport run` runs on such a file (an earlier release accepted it) and shows these
        print(f"{args.file}: usable, but to be fixed", file=sys.stderr)
        for caution in config.cautions:
            print(f"  {caution}", file=sys.stderr)
        return 1
    print(
        f"{args.file}: OK ({len(config.inverters)} inverter(s), meter: {config.meter is not None})"
    )
    return 0
