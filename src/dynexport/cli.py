"""The ``dynexport`` command line: one subcommand group per domain.

Each domain owns its subcommands in its own ``cli`` module exposing ``register(subparsers)``;
this module only assembles them, so it stays small and imports a domain only when asked.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from dynexport import __version__
from dynexport.system.logs import setup_logging

# subcommand group -> module whose register(subparsers) adds it
_GROUPS = {
    "sunspec": "dynexport.sunspec.cli",
    "cert": "dynexport.sep2.cert_cli",
    "sep2": "dynexport.sep2.cli",
    "run": "dynexport.app_cli",
    "demo": "dynexport.demo_cli",
    "config": "dynexport.system.config_cli",
    "update": "dynexport.update.cli",
}

Handler = Callable[[argparse.Namespace], int]


def _named_group(argv: Sequence[str]) -> str | None:
    """The subcommand group ``argv`` asks for, if it names one (the first non-option word).

    The global options take no value, so the first word not starting with ``-`` is the group.
    """
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg if arg in _GROUPS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; when ``argv`` names a group, only that group's module is imported.

    ``dynexport run`` then never imports the certificate tools, the simulators or the demo (about
    10 MiB of the service's memory); help and unknown commands still list every group.
    """
    named = _named_group(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="dynexport",
        description="Keeps a solar site within its utility's dynamic export limits.",
    )
    parser.add_argument("--version", action="version", version=f"dynexport {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log detail (repeat for more)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in [_GROUPS[named]] if named else _GROUPS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # that domain's commands are not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last line of defence
        problem = sole_exception(exc)
        log = logging.getLogger("dynexport")
        if isinstance(problem, OSError):
            # A file, a device or a port the machine refuses: its state, not a fault of ours.
            # Each handler says its own; one it did not foresee is still one line (with -v, the
            # traceback too).
            log.debug("%s", type(problem).__name__, exc_info=exc)
        else:  # a fault: the traceback goes to the log, for the report
            log.exception("unexpected %s", type(problem).__name__)
        print(f"dynexport: error: {problem}", file=sys.stderr)
        return 1


def sole_exception(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one, else ``exc`` itself: trio
    wraps a task's error in a group, whose own message ("Exceptions from Trio nursery (1
    sub-exception)") says nothing."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


if __name__ == "__main__":
    raise SystemExit(main())
