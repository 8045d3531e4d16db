"""One simulated site behind a real pymodbus server on 127.0.0.1 and one link to it, running:
what the link tests of this folder share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from dynexport.modbus.client import Backoff, BusPool
from dynexport.modbus.endpoints import TcpEndpoint
from dynexport.sim.modbus_server import serve_tcp
from dynexport.sim.sunspec_device import Site
from dynexport.sunspec.links import InverterLink, MeterLink

QUICK_RETRY = Backoff(initial=0.05, maximum=0.1)


async def wait_until(predicate: Callable[[], bool], within: float = 30.0) -> None:
    """Polls state another task updates; the bound only stops a broken link's test."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)


@asynccontextmanager
async def running_link(
    site: Site, unit: int = 1, *, meter: bool = False, **options: Any
) -> AsyncIterator[Any]:
    """An InverterLink (a MeterLink with ``meter``) to ``unit`` of ``site``, running until the
    block ends; ``options`` go to the link (defaults: a 0.2 s fast poll, a 60 s revert timer,
    quick retries)."""
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0, retries=0) as pool, trio.open_nursery() as nursery:
            bus = pool.get(TcpEndpoint("127.0.0.1", sim.port))
            options = {"fast_s": 0.2, "backoff": QUICK_RETRY, **options}
            link: InverterLink | MeterLink
            if meter:
                link = MeterLink("meter", bus, unit, **options)
            else:
                link = InverterLink("inverter", bus, unit, **{"revert_s": 60, **options})
            nursery.start_soon(link.run)
            yield link
            nursery.cancel_scope.cancel()
