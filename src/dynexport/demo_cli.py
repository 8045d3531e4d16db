"""``dynexport demo``: the whole controller against built-in simulators, no hardware needed."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

from dynexport.argtypes import PORT, int_in, number_in
from dynexport.cli import sole_exception
from dynexport.demo import DemoOptions, parse_steps, run_demo

_every = int_in(1, None, "the seconds per limit step")
_seconds = number_in(0, what="the seconds to run")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="run the controller against a simulated site and utility on 127.0.0.1"
    )
    p.add_argument("--port", type=PORT, default=8080, help="web/API port (default 8080)")
    p.add_argument("--data", type=Path, help="keep configuration and state here (default: temp)")
    p.add_argument(
        "--steps", default="5000,1500,0", help="utility export limits in W (default 5000,1500,0)"
    )
    p.add_argument("--every", type=_every, default=120, help="seconds per limit step (default 120)")
    p.add_argument("--seconds", type=_seconds, help="stop after this long (default: until Ctrl-C)")
    p.set_defaults(handler=_demo)


def _os_problem(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename is not None else ""
    return f"{where}{exc.strerror or exc}"


def _demo(args: argparse.Namespace) -> int:
    try:
        steps = tuple(parse_steps(args.steps))
    except ValueError as exc:
        print(f"dynexport demo: --steps: {exc}", file=sys.stderr)
        return 2
    if args.data is not None:
        try:
            args.data.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"dynexport demo: --data: cannot use {_os_problem(exc)}", file=sys.stderr)
            return 1
    options = DemoOptions(port=args.port, data_dir=args.data, steps_w=steps, every_s=args.every)
    try:
        trio.run(partial(_main, options, args.seconds))
    except Exception as exc:
        problem = sole_exception(exc)
        if not isinstance(problem, OSError):
            raise  # a fault of the demo itself: cli.main reports it with its traceback
        # The data folder cannot be written, a simulator's port cannot be opened: the
        # machine's state, not a fault; one line that names it.
        print(f"dynexport demo: cannot run: {_os_problem(problem)}", file=sys.stderr)
        return 1
    return 0


async def _main(options: DemoOptions, seconds: float | None) -> None:
    with trio.open_signal_receiver(*_signals()) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_demo, options)

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            if seconds is not None:
                await trio.sleep(seconds)
                nursery.cancel_scope.cancel()


def _signals() -> tuple[int, ...]:
    import signal

    return (signal.SIGINT, signal.SIGTERM)
