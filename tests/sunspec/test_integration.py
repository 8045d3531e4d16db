"""Against the SunSpec simulator over Modbus TCP, cross-checked with pysunspec2's own client."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from dynexport.modbus.client import open_bus
from dynexport.modbus.endpoints import TcpEndpoint
from dynexport.sim import profiles
from dynexport.sim.modbus_server import SimServer, serve_tcp
from dynexport.sim.sunspec_device import Site
from dynexport.sunspec.cli import DEFAULT_UNITS, scan, scan_json
from dynexport.sunspec.control import LimitCommand, NotControllableError
from dynexport.sunspec.device import SunSpecDevice
from dynexport.sunspec.models import GroupDef, model_def


@contextmanager
def sim(site: Site) -> Iterator[SimServer]:
    with serve_tcp(site) as server:
        yield server


def _endpoint(server: SimServer) -> TcpEndpoint:
    assert server.port is not None
    return TcpEndpoint("127.0.0.1", server.port)


def _theirs(port: int, unit: int) -> dict[int, dict[str, Any]]:
    dev = SunSpecModbusClientDeviceTCP(slave_id=unit, ipaddr="127.0.0.1", ipport=port, timeout=5)
    try:
        dev.scan()
        return {m.model_id: m.get_dict(computed=True) for m in dev.model_list}
    finally:
        dev.close()


def _compare(g: GroupDef, mine: dict[str, Any], theirs: dict[str, Any], where: str) -> int:
    """Every point, energy counters included: the site is held still while both read it."""
    n = 0
    for p in g.points:
        if p.type == "pad":
            continue
        a, b = mine.get(p.name), theirs.get(p.name)
        if isinstance(a, float) or isinstance(b, float):
            assert a is not None and b is not None, f"{where}.{p.name}: {a!r} vs {b!r}"
            assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6), f"{where}.{p.name}: {a} vs {b}"
        else:
            assert a == b, f"{where}.{p.name}: ours {a!r}, pysunspec2 {b!r}"
        n += 1
    for sub in g.groups:
        ours, ref = mine.get(sub.name, []), theirs.get(sub.name, [])
        ref = [ref] if isinstance(ref, dict) else ref
        assert len(ours) == len(ref), f"{where}.{sub.name}"
        for i, (x, y) in enumerate(zip(ours, ref, strict=True)):
            n += _compare(sub, x, y, f"{where}.{sub.name}[{i}]")
    return n


@pytest.mark.parametrize(
    ("make_site", "units"),
    [
        (lambda: profiles.fronius_gateway(tau_s=0), [1, 2, 240]),
        (
            lambda: profiles.fronius_gateway(float_inverters=True, float_meter=True, tau_s=0),
            [1, 2, 240],
        ),
        (lambda: profiles.sma_like(tau_s=0), [126]),
        (lambda: profiles.der2018_inverter(tau_s=0), [1, 240]),
        (lambda: profiles.base0_device(tau_s=0), [1]),
    ],
    ids=["fronius", "fronius-float", "sma", "der2018", "base0"],
)
async def test_scan_matches_pysunspec2(make_site: Callable[[], Site], units: list[int]) -> None:
    """Every point of every model of every device equals what pysunspec2 decodes.

    The two scans happen at different times, so the simulated site is held (its energy
    counters and timers frozen) for the comparison: equal values do not depend on how fast
    this machine runs the two scans."""
    site = make_site()
    site.hold(time.monotonic())
    with sim(site) as server:
        found = await scan(_endpoint(server), DEFAULT_UNITS, request_timeout=0.5)
        assert [d.unit for d, _ in found] == units
        out = scan_json(found)
        json.dumps(out, allow_nan=False)  # the --json shape is plain JSON
        checked = 0
        for dev, models in found:
            assert server.port is not None
            ref = await trio.to_thread.run_sync(_theirs, server.port, dev.unit)
            assert [m.id for m in models] == list(ref)
            for m in models:
                mdef = model_def(m.id)
                assert mdef is not None
                mine = m.to_json()
                flat = dict(mine["points"]) | mine["groups"]
                checked += _compare(mdef.group, flat, ref[m.id], f"unit {dev.unit} model {m.id}")
        assert checked > 100


async def test_limit_via_123_reads_back_and_the_inverter_obeys() -> None:
    with sim(profiles.fronius_gateway(tau_s=0)) as server:
        async with open_bus(_endpoint(server), timeout=2.0) as bus:
            dev = SunSpecDevice(bus, 1)
            await dev.discover()
            assert dev.control_model().id == 123
            res = await dev.set_limit(LimitCommand(pct=40, revert_s=30))
            assert res.readback["WMaxLimPct"] == 40.0
            assert res.readback["WMaxLimPct_RvrtTms"] == 30
            slow = await dev.poll_slow()
            assert slow.limit_pct == 40.0 and slow.w_max == 5000.0
            with trio.fail_after(5):
                while True:
                    fast = await dev.poll_fast()
                    assert fast.inverter is not None and fast.inverter.w is not None
                    if fast.inverter.w <= 2000.0 + 1:
                        break
                    await trio.sleep(0.1)
            res = await dev.set_limit(LimitCommand(pct=None))
            assert res.readback["WMaxLim_Ena"] == 0


async def test_limit_via_704_and_watts() -> None:
    with sim(profiles.der2018_inverter(tau_s=0)) as server:
        async with open_bus(_endpoint(server), timeout=2.0) as bus:
            dev = SunSpecDevice(bus, 1)
            smap = await dev.discover()
            assert smap.base == 50000
            assert dev.control_model().id == 704
            res = await dev.set_limit(LimitCommand(pct=25, revert_s=45))
            assert res.readback["WMaxLimPct"] == 25.0
            assert res.readback["WMaxLimPctRvrtTms"] == 45
            assert res.readback["WMaxLimPctEna"] == 1
            slow = await dev.poll_slow()
            assert slow.der_controls is not None and slow.der_controls.limit_pct == 25.0
            assert slow.rated_w is not None and slow.w_max is not None
            half = await dev.set_limit_watts(slow.w_max / 2, revert_s=60)
            assert half.readback["WMaxLimPct"] == pytest.approx(50.0, abs=0.5)
            fast = await dev.poll_fast()
            assert fast.inverter is not None and fast.inverter.model_id == 701


async def test_meter_reading_from_the_gateway() -> None:
    with sim(profiles.fronius_gateway(tau_s=0, load_w=1500.0)) as server:
        async with open_bus(_endpoint(server), timeout=2.0) as bus:
            dev = SunSpecDevice(bus, 240)
            await dev.discover()
            assert dev.is_meter and not dev.is_inverter
            fast = await dev.poll_fast()
            m = fast.meter
            assert m is not None and m.site_w is not None and m.hz is not None
            # Both inverters produce 4000 + 6000 W against a 1500 W load: the site exports.
            assert m.site_w < 0
            pw = [w for w in m.phase_w if w is not None]
            assert pw and sum(pw) == pytest.approx(m.site_w, abs=3)


async def test_device_without_control_model_is_not_controllable() -> None:
    with sim(profiles.no_control_inverter(tau_s=0)) as server:
        async with open_bus(_endpoint(server), timeout=2.0) as bus:
            dev = SunSpecDevice(bus, 1)
            await dev.discover()
            with pytest.raises(NotControllableError, match="web UI"):
                await dev.set_limit(LimitCommand(pct=50))


def test_cli_scan_and_limit() -> None:
    with sim(profiles.fronius_gateway(tau_s=0)) as server:
        ep = f"127.0.0.1:{server.port}"
        cmd = [sys.executable, "-m", "dynexport", "sunspec"]
        out = subprocess.run(
            [*cmd, "scan", "--tcp", ep, "--unit", "1", "--unit", "240", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        data = json.loads(out.stdout)
        assert [d["unit"] for d in data["devices"]] == [1, 240]
        inv = data["devices"][0]
        assert inv["base"] == 40000
        m103 = next(m for m in inv["models"] if m["id"] == 103)
        assert m103["address"] == 40070 and m103["length"] == 50
        assert isinstance(m103["points"]["W"], float)
        m160 = next(m for m in inv["models"] if m["id"] == 160)
        assert len(m160["groups"]["module"]) == 2
        lim = subprocess.run(
            [*cmd, "limit", "--tcp", ep, "--unit", "1", "--percent", "60", "--revert-s", "20"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "WMaxLimPct " in lim.stdout and " 60" in lim.stdout
        bad = subprocess.run(
            [*cmd, "limit", "--tcp", ep, "--unit", "1", "--percent", "150"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode != 0 and "0..100" in bad.stderr


async def test_scan_and_limit_over_rtu() -> None:
    """RS485 through a socat pty pair: the gateway's devices are found, silent units skipped."""
    from dynexport.modbus.endpoints import SerialEndpoint
    from dynexport.sim.modbus_server import serve_rtu
    from tests.modbus.servers import socat_pty_pair

    with (
        socat_pty_pair() as (sim_end, our_end),
        serve_rtu(profiles.fronius_gateway(tau_s=0), sim_end, baud=115200),
    ):
        ep = SerialEndpoint(our_end, 115200, "N", 1)
        # A bound for the silent unit 3, not a speed: a present device answering after 0.3 s
        # (a loaded CI machine, the pty through socat) was taken for a silent one.
        found = await scan(ep, [1, 3, 240], request_timeout=2.0)
        assert [d.unit for d, _ in found] == [1, 240]
        assert found[0][0].common is not None and found[0][0].common.manufacturer == "Fronius"
        async with open_bus(ep, timeout=1.0) as bus:
            dev = SunSpecDevice(bus, 1)
            await dev.discover()
            res = await dev.set_limit(LimitCommand(pct=70, revert_s=60))
            assert res.readback["WMaxLimPct"] == 70.0


class FakeClock:
    """The simulator's time, moved only by the test (revert timers expire when it says)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _until(predicate: Callable[[], bool], what: str) -> None:
    """Waits for a link (real time, real sockets) to see what the simulator did."""
    with trio.move_on_after(30):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)
        return
    raise AssertionError(f"no {what} within 30 s")


async def test_disconnect_over_modbus_tcp_opens_the_inverter_and_its_timer_recloses_it() -> None:
    """Closed loop over Modbus TCP (CSIP-AUS ALL-12/27): opConnect false opens the inverter
    through 123 Conn, the link reads the disconnected state back from the inverter; when the
    controller is gone, the inverter's own revert timer reconnects it."""
    from dynexport.modbus.client import BusPool
    from dynexport.sunspec.links import Desired, InverterLink

    clock = FakeClock()
    site = profiles.fronius_gateway(tau_s=0.5)
    with serve_tcp(site, clock=clock) as server:
        async with BusPool(timeout=5.0) as pool, trio.open_nursery() as nursery:
            link = InverterLink("inverter 1", pool.get(_endpoint(server)), 1, revert_s=60)
            nursery.start_soon(link.run)
            # the slow poll (can_disconnect) and then the fast poll (connected): two reads, so
            # wait for both (seen under load: the state read between them)
            await _until(
                lambda: link.state.can_disconnect is True and link.state.connected is not None,
                "slow and fast poll",
            )
            assert link.state.connected is True

            link.command(Desired(pct=0.0, connect=False))
            await _until(lambda: link.state.disconnect_method == "conn", "disconnect")
            await _until(lambda: link.state.connected is False, "status read back")
            assert site.get(1, 123, "Conn") == 0
            assert site.get(1, 123, "Conn_RvrtTms") == 60
            assert site.output_w(1) == 0.0
            assert site.get(1, 122, "ECPConn") == 0 and site.get(1, 103, "St") == 1  # OFF

            link.command(Desired(pct=None, connect=True))
            await _until(lambda: link.state.connected is True, "reconnect")
            assert site.get(1, 123, "Conn") == 1 and link.state.disconnect_method is None

            link.command(Desired(pct=0.0, connect=False))
            await _until(lambda: link.state.connected is False, "second disconnect")
            nursery.cancel_scope.cancel()  # the controller dies with the inverter open
        clock.now += 61.0  # past Conn_RvrtTms: nobody rewrote it
        await _until(lambda: site.get(1, 123, "Conn") == 1, "revert timer")
        async with open_bus(_endpoint(server), timeout=5.0) as bus:
            dev = SunSpecDevice(bus, 1)
            await dev.discover()
            fast = await dev.poll_fast()
            assert fast.connected is True
