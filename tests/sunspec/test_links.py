"""Device links against the simulated Fronius gateway: discovery, polling, limits kept in force."""

from __future__ import annotations

import trio

from dynexport.modbus.client import Backoff, BusPool
from dynexport.modbus.endpoints import TcpEndpoint
from dynexport.sim.modbus_server import serve_tcp
from dynexport.sim.profiles import fronius_gateway, no_control_inverter
from dynexport.sunspec.links import Desired, InverterLink, MeterLink


async def wait_until(predicate, within: float = 5.0) -> None:
    """Polls state that another task updates (the links have no events to wait on)."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)


async def test_inverter_link_reports_rating_power_and_applies_a_verified_limit():
    site = fronius_gateway(tau_s=0.1)
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0) as pool, trio.open_nursery() as nursery:
            bus = pool.get(TcpEndpoint("127.0.0.1", sim.port))
            link = InverterLink("inverter 1", bus, 1, revert_s=60, fast_s=0.2)
            nursery.start_soon(link.run)
            await wait_until(lambda: link.state.online and link.state.rated_w is not None)
            assert link.state.controllable is True
            assert link.state.rated_w == 5000.0
            assert link.state.info.manufacturer == "Fronius"
            assert link.state.power_w is not None and link.state.power_w > 3000

            link.command(Desired(pct=20.0))
            await wait_until(lambda: link.state.limit_pct == 20.0)
            assert site.get(1, 123, "WMaxLim_Ena") == 1
            assert site.get(1, 123, "WMaxLimPct_RvrtTms") == 60
            await wait_until(lambda: (link.state.power_w or 1e9) <= 1000 * 1.02)
            nursery.cancel_scope.cancel()


async def test_a_limit_is_rewritten_before_its_revert_timeout_expires():
    site = fronius_gateway(tau_s=0.1)
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0) as pool, trio.open_nursery() as nursery:
            bus = pool.get(TcpEndpoint("127.0.0.1", sim.port))
            link = InverterLink("inverter 2", bus, 2, revert_s=2, fast_s=0.2)
            nursery.start_soon(link.run)
            link.command(Desired(pct=50.0))
            await wait_until(lambda: link.state.limit_pct == 50.0)
            first_write = link.state.last_write
            # Three revert periods later the simulated inverter still has the limit enabled,
            # because the link rewrote it (a stale limit would have reverted after 2 s).
            await trio.sleep(6.0)
            assert site.get(2, 123, "WMaxLim_Ena") == 1
            assert link.state.last_write is not None and first_write is not None
            assert link.state.last_write > first_write + 2
            nursery.cancel_scope.cancel()


async def test_clearing_the_limit_lets_the_inverter_run_free():
    site = fronius_gateway(tau_s=0.1)
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0) as pool, trio.open_nursery() as nursery:
            bus = pool.get(TcpEndpoint("127.0.0.1", sim.port))
            link = InverterLink("inverter 1", bus, 1, fast_s=0.2)
            nursery.start_soon(link.run)
            link.command(Desired(pct=10.0))
            await wait_until(lambda: link.state.limit_pct == 10.0)
            link.command(Desired(pct=None))
            await wait_until(lambda: site.get(1, 123, "WMaxLim_Ena") == 0)
            await wait_until(lambda: (link.state.power_w or 0) > 3000)
            nursery.cancel_scope.cancel()


async def test_inverter_without_control_model_is_reported_with_the_reason():
    site = no_control_inverter()
    unit = next(iter(site.units()))
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0) as pool, trio.open_nursery() as nursery:
            bus = pool.get(TcpEndpoint("127.0.0.1", sim.port))
            link = InverterLink("inverter 1", bus, unit, fast_s=0.2)
            nursery.start_soon(link.run)
            await wait_until(lambda: link.state.controllable is not None and link.state.online)
            assert link.state.controllable is False
            assert link.state.not_controllable is not None
            assert "control via Modbus is not enabled" in link.state.not_controllable
            link.command(Desired(pct=0.0))  # ignored, never written
            await trio.sleep(0.5)
            assert link.state.last_write is None
            nursery.cancel_scope.cancel()


async def test_unreachable_inverter_is_offline_and_retried_without_raising():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()  # nothing listens on this port now
    async with BusPool(timeout=0.2, retries=0) as pool, trio.open_nursery() as nursery:
        bus = pool.get(TcpEndpoint("127.0.0.1", port))
        link = InverterLink("inverter 1", bus, 1, backoff=Backoff(initial=0.05, maximum=0.1))
        nursery.start_soon(link.run)
        await wait_until(lambda: link.state.error is not None)
        assert link.state.online is False
        assert link.state.error is not None
        assert "not found" in link.state.error
        nursery.cancel_scope.cancel()


async def test_meter_link_reports_site_power_import_positive():
    site = fronius_gateway(load_w=9000.0, tau_s=0.1)
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0) as pool, trio.open_nursery() as nursery:
            bus = pool.get(TcpEndpoint("127.0.0.1", sim.port))
            meter = MeterLink("meter", bus, 240, fast_s=0.2)
            nursery.start_soon(meter.run)
            await wait_until(lambda: meter.state.site_w is not None)
            # load 9000 W and about 10000 W of PV: a small export, i.e. negative site power
            await wait_until(lambda: abs((meter.state.site_w or 0) - site.site_w()) < 300)
            site.set_load(20000.0)
            await wait_until(lambda: (meter.state.site_w or 0) > 5000)
            nursery.cancel_scope.cancel()
