"""One unit's failure never ends a device scan, and the scan of the RS485 port the
running service has open goes through the service's bus (docs/sunspec.md, Discovery)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from dynexport.modbus.client import BusPool, ModbusBus
from dynexport.modbus.codec import read_request
from dynexport.modbus.endpoints import SerialEndpoint, TcpEndpoint
from dynexport.sim import profiles
from dynexport.sim.modbus_server import serve_rtu
from dynexport.sunspec import cli
from dynexport.sunspec.discovery import DiscoveryError, discover
from tests.modbus.servers import (
    Handler,
    HostilePeer,
    hostile_tcp_peer,
    read_answer_pdu,
    socat_pty_pair,
    tcp_frame,
)

SUNS = {40000: 0x5375, 40001: 0x6E53}
GOOD = {**SUNS, 40002: 1, 40003: 66, 40070: 0xFFFF, 40071: 0}
"""A SunSpec device with only the common model (1, length 66) and the end marker."""


def image_peer_handler(images: dict[int, dict[int, int]], whole: dict[int, str]) -> Handler:
    """Answers each unit's reads from its register image; a unit in ``whole`` answers its
    reads of more than two registers (the whole-model reads) with zeros (``"zeros"``: still
    starting) or with another model length (``"moved"``: its map changed since discovery)."""

    async def answer(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        unit = request[6]
        address = int.from_bytes(request[8:10], "big")
        count = int.from_bytes(request[10:12], "big")
        regs = dict(images.get(unit, {}))
        if count > 2 and whole.get(unit) == "zeros":
            regs = {}
        elif count > 2 and whole.get(unit) == "moved":
            regs[40003] = 50
        values = [regs.get(address + i, 0) for i in range(count)]
        tid = int.from_bytes(request[:2], "big")
        await stream.send_all(tcp_frame(tid, unit, read_answer_pdu(3, values)))

    return answer


async def test_a_unit_that_fails_is_noted_and_the_scan_goes_on() -> None:
    """Unit 1 is still starting (its whole-model read is zeros: DeviceNotReadyError), unit 2's
    map changed between discovery and the read (MapChangedError), unit 3 is fine: before, unit
    1's error ended the scan (units 2 and 3 never probed, a 502 in the web UI). Unit 4's only
    model ends at register 65535, leaving no room for the end marker."""
    images = {1: GOOD, 2: GOOD, 3: GOOD, 4: {**SUNS, 40002: 1, 40003: 0xFFFF - 40004}}
    probed: list[cli.UnitProbe] = []
    with trio.fail_after(30):
        async with hostile_tcp_peer(image_peer_handler(images, {1: "zeros", 2: "moved"})) as peer:
            ep = TcpEndpoint("127.0.0.1", peer.port)
            found = await cli.scan(ep, [1, 2, 4, 3], request_timeout=2.0, progress=probed.append)
    assert [dev.unit for dev, _ in found] == [3]
    assert [(p.unit, p.result) for p in probed] == [
        (1, "error"),
        (2, "error"),
        (4, "error"),
        (3, "found"),
    ]
    assert probed[0].detail.startswith("unit 1: ") and "not ready" in probed[0].detail
    assert probed[1].detail.startswith("unit 2: ") and "map changed" in probed[1].detail
    assert probed[2].detail.startswith("unit 4: model 1 at 40002") and "no room" in probed[2].detail


class ChainBus:
    """SunS at 40000 and one model that ends (its last register + 1) at ``end``; register
    65534 holds an end marker. Refuses a read past the register space as the real bus does."""

    def __init__(self, end: int) -> None:
        self.regs = {**SUNS, 40002: 1, 40003: end - 40004, 0xFFFE: 0xFFFF, 0xFFFF: 0}

    async def read_holding_registers(
        self,
        unit: int,
        address: int,
        count: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[int]:
        read_request(3, unit, address, count)  # ValueError past register 65535, before I/O
        await trio.lowlevel.checkpoint()
        return [self.regs.get(address + i, 0) for i in range(count)]

    async def write_registers(
        self,
        unit: int,
        address: int,
        values: Sequence[int],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        raise AssertionError("discovery writes nothing")


@pytest.mark.parametrize("end", [0xFFFF, 0x10000])
async def test_a_chain_ending_where_no_header_fits_is_a_discovery_error(end: int) -> None:
    """A model ending at register 65534 or 65535 leaves no room for the next header: before,
    the read of that header raised the codec's ValueError ("address 65536: must be 0..65535"),
    which the scan did not catch."""
    with pytest.raises(DiscoveryError, match="no room is left for the next header"):
        await discover(ChainBus(end), 1)


async def test_a_chain_whose_end_marker_fits_in_the_last_two_registers_is_read() -> None:
    smap = await discover(ChainBus(0xFFFE), 1)
    assert smap.ids == [1] and smap.models[0].end == 0xFFFE


async def test_the_cli_scan_reports_a_units_error_and_the_devices_found(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    with trio.fail_after(30):
        async with hostile_tcp_peer(image_peer_handler({1: GOOD, 2: GOOD}, {1: "zeros"})) as peer:
            where = f"127.0.0.1:{peer.port}"
            for fmt in (["--json"], []):
                args = parser.parse_args(
                    ["sunspec", "scan", "--tcp", where, "--unit", "1", "--unit", "2", *fmt]
                )
                # scan_command runs its own trio loop: in a thread, while this one serves
                assert await trio.to_thread.run_sync(args.handler, args) == 0
                out, err = capsys.readouterr()
                if fmt:
                    doc = json.loads(out)
                    assert [d["unit"] for d in doc["devices"]] == [2]
                    assert [e["unit"] for e in doc["errors"]] == [1]
                    assert "not ready" in doc["errors"][0]["error"]
                else:
                    assert "unit 2:" in out and "unit 1: " in err and "not ready" in err


async def test_the_scan_of_the_services_rs485_port_goes_through_its_bus(tmp_path: Path) -> None:
    """The service's bus holds the port's exclusive lock: a scan given the service's pool asks
    through that bus (under the port's name or a link to it), its requests taking turns with
    the running links'; it leaves that bus open. Before, the scan opened the port again and
    always failed."""
    with (
        socat_pty_pair() as (sim_end, our_end),
        trio.fail_after(60),
        serve_rtu(profiles.fronius_gateway(tau_s=0), sim_end, baud=115200),
    ):
        link = tmp_path / "usb-FTDI_FT232R-if00-port0"
        os.symlink(our_end, link)
        ep = SerialEndpoint(our_end, 115200, "N", 1)
        async with BusPool(timeout=2.0, retries=1) as pool:
            bus = pool.get(ep)
            assert await bus.read_holding_registers(240, 40000, 2) == [0x5375, 0x6E53]
            meter_reads: list[list[int]] = []
            scanned = trio.Event()

            async def meter_link() -> None:  # the running service's meter link
                while not scanned.is_set():
                    meter_reads.append(await bus.read_holding_registers(240, 40000, 2))
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(meter_link)
                found = await cli.scan(ep, [1, 240], request_timeout=2.0, pool=pool)
                by_link = await cli.scan(
                    SerialEndpoint(str(link), 115200), [1], request_timeout=2.0, pool=pool
                )
                scanned.set()
            assert [d.unit for d, _ in found] == [1, 240]
            assert [d.unit for d, _ in by_link] == [1]
            assert found[0][0].bus is bus and by_link[0][0].bus is bus
            assert meter_reads and all(r == [0x5375, 0x6E53] for r in meter_reads)
            # the service's bus is still open and still the pool's
            assert pool.serial_bus(our_end) is bus
            assert await bus.read_holding_registers(240, 40000, 2) == [0x5375, 0x6E53]


async def test_a_scan_that_cannot_share_the_services_port_says_it_is_in_use() -> None:
    """At other line settings than the service's (the pool given), or without the service's
    pool: the failure names the running service, not a missing port."""
    with (
        socat_pty_pair() as (sim_end, our_end),
        trio.fail_after(60),
        serve_rtu(profiles.fronius_gateway(tau_s=0), sim_end, baud=115200),
    ):
        ep = SerialEndpoint(our_end, 115200, "N", 1)
        async with BusPool(timeout=2.0, retries=1) as pool:
            bus: ModbusBus = pool.get(ep)
            await bus.read_holding_registers(1, 40000, 2)
            with pytest.raises(cli.ScanFailed) as other_settings:
                await cli.scan(SerialEndpoint(our_end, 9600), [1], request_timeout=1.0, pool=pool)
            with pytest.raises(cli.ScanFailed) as no_pool:
                await cli.scan(ep, [1], request_timeout=1.0)
            assert await bus.read_holding_registers(1, 40000, 2) == [0x5375, 0x6E53]
        # once the service let go of the port, the scan opens it itself
        found = await cli.scan(ep, [1], request_timeout=2.0)
        assert [d.unit for d, _ in found] == [1]
    for failed in (other_settings.value, no_pool.value):
        assert failed.reason == "no-port"
        assert "in use by the running service" in failed.message, failed.message
        assert "no serial port" not in failed.message
    assert f"{our_end}@115200N1" in other_settings.value.message
