"""Against the SunSpec simulator over Modbus TCP, cross-checked with pysunspec2's own client."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from dynexport.modbus.client import open_bus
from dynexport.sim import profiles
from dynexport.sim.modbus_server import SimServer, serve_tcp
from dynexport.sim.sunspec_device import Site
from dynexport.sunspec.cli import DEFAULT_UNITS, scan, scan_json
from dynexport.sunspec.control import LimitCommand, NotControllableError
from dynexport.sunspec.device import SunSpecDevice
from dynexport.sunspec.models import GroupDef, model_def
from dynexport.system.config import TcpEndpoint


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


_MOVING = ("acc", "Tms")  # energy counters and timestamps advance between the two reads


def _compare(g: GroupDef, mine: dict[str, Any], theirs: dict[str, Any], where: str) -> int:
    n = 0
    for p in g.points:
        if p.type == "pad" or p.type.startswith("acc") or p.name.endswith("Tms"):
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
    """Every point of every model of every device equals what pysunspec2 decodes."""
    with sim(make_site()) as server:
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
    from dynexport.sim.modbus_server import serve_rtu
    from dynexport.system.config import SerialEndpoint
    from tests.modbus.servers import socat_pty_pair

    with (
        socat_pty_pair() as (sim_end, our_end),
        serve_rtu(profiles.fronius_gateway(tau_s=0), sim_end, baud=115200),
    ):
        ep = SerialEndpoint(our_end, 115200, "N", 1)
        found = await scan(ep, [1, 3, 240], request_timeout=0.3)
        assert [d.unit for d, _ in found] == [1, 240]
        assert found[0][0].common is not None and found[0][0].common.manufacturer == "Fronius"
        async with open_bus(ep, timeout=1.0) as bus:
            dev = SunSpecDevice(bus, 1)
            await dev.discover()
            res = await dev.set_limit(LimitCommand(pct=70, revert_s=60))
            assert res.readback["WMaxLimPct"] == 70.0
