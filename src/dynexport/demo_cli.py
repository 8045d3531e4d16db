"""``dynexport demo``: the whole controller against built-in simulators, no hardware needed."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

from dynexport.demo import DemoOptions, parse_steps, run_demo


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="run the controller against a simulated site and utility on 127.0.0.1"
    )
    p.add_argument("--port", type=int, default=8080, help="web/API port (default 8080)")
    p.add_argument("--data", type=Path, help="keep configuration and state here (default: temp)")
    p.add_argument(
        "--steps", default="5000,1500,0", help="utility export limits in W (default 5000,1500,0)"
    )
    p.add_argument("--every", type=int, default=120, help="seconds per limit step (default 120)")
    p.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    try:
        steps = tuple(parse_steps(args.steps))
    except ValueError as exc:
        print(f"dynexport demo: --steps: {exc}", file=sys.stderr)
        return 2
    options = DemoOptions(port=args.port, data_dir=args.data, steps_w=steps, every_s=args.every)
    trio.run(partial(_main, options, args.seconds))
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
