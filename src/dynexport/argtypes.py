"""argparse value types shared by the subcommands: a value out of its range is refused by
argparse itself, naming the option (``argument --every: ...``), before anything connects or
starts. Without them ``demo --every 0`` spun for ever and ``run --port 99999`` listened on
34463."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_in(low: int, high: int | None, what: str) -> Callable[[str], int]:
    """A whole number in ``low..high`` (``high`` None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if v < low or (high is not None and v > high):
            bounds = f"at least {low}" if high is None else f"{low}..{high}"
            raise argparse.ArgumentTypeError(f"{what} must be {bounds}, not {v}")
        return v

    return parse


def number_in(
    low: float, high: float = math.inf, what: str = "the value", *, above: bool = False
) -> Callable[[str], float]:
    """A finite number in ``low..high``; with ``above``, greater than ``low``."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (math.isfinite(v) and (v > low if above else v >= low) and v <= high):
            bounds = f"> {low:g}" if above else f">= {low:g}"
            if high != math.inf:
                bounds = f"{low:g}..{high:g}" if not above else f"{bounds} and <= {high:g}"
            raise argparse.ArgumentTypeError(f"{what} must be {bounds}, not {text}")
        return v

    return parse


PORT = int_in(0, 65535, "the port (0: any free one, or the configuration's)")
"""``--port``: a TCP port, 0 meaning the command's default."""
