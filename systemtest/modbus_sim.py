#!/usr/bin/env python3
"""The system test's simulated site: ``dynexport.sim.modbus_server`` with a timestamped line per
inverter write, so that the harness can tell when the appliance first commanded a limit.

Each write a simulated inverter accepts prints ``inverter-write <monotonic> unit <N> address <A>``
(CLOCK_MONOTONIC: the same clock as the harness's ``time.monotonic()``). Arguments as
``python -m dynexport.sim.modbus_server``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from dynexport.sim import modbus_server
from dynexport.sim.sunspec_device import Site

_write = Site.write


def _logged_write(self: Site, unit: int, address: int, values: Sequence[int], now: float) -> None:
    _write(self, unit, address, values, now)
    if unit in self.inverters:  # only accepted writes get here (a refused one raised)
        print(f"inverter-write {time.monotonic():.3f} unit {unit} address {address}", flush=True)


Site.write = _logged_write  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(modbus_server.main())
