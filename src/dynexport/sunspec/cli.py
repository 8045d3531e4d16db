"""``dynexport sunspec scan`` and ``dynexport sunspec limit``: the installer's tools.

``scan`` finds every SunSpec device behind an endpoint (a Fronius gateway's inverters at units
1 and 2 and its meter at 240, say) and prints every point; ``limit`` writes a generation limit
and prints what the inverter reads back, so an installer can prove control works before
commissioning.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from dynexport.argtypes import int_in, number_in
from dynexport.modbus.client import Backoff, BusPool, ModbusBus, open_bus
from dynexport.modbus.endpoints import Endpoint, SerialEndpoint, parse_tcp
from dynexport.modbus.errors import ModbusConnectionError, ModbusError, ModbusTimeout
from dynexport.sunspec.control import CommandError, LimitCommand, NotControllableError
from dynexport.sunspec.decode import DecodedModel, DecodeError, DeviceNotReadyError
from dynexport.sunspec.device import SunSpecDevice, VerifyError
from dynexport.sunspec.discovery import DiscoveryError, NotSunSpecError, device_roles

log = logging.getLogger("dynexport.sunspec")

DEFAULT_UNITS = (*range(1, 11), 126, 240)
SCAN_TIMEOUT_S = 0.5
SCAN_EXIT = {"refused": 2, "no-port": 2, "silent": 3}
"""``sunspec scan`` exit codes: 0 found, 1 answers but no SunSpec device, 2 the endpoint cannot
be opened (refused connection, no serial port), 3 no unit answered at all."""


def _unit(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"unit must be a number, not {text!r}") from None
    if not 0 <= v <= 247:
        raise argparse.ArgumentTypeError(f"unit must be 0..247, not {v}")
    return v


def _tcp(text: str) -> str:
    try:
        parse_tcp(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


_positive = number_in(0, what="the seconds per request", above=True)
_percent = number_in(0, 100, "the limit in percent")
_watts = number_in(0, what="the limit in watts")
_revert_s = int_in(1, 65534, "the revert time in seconds")
_baud = int_in(1, 4_000_000, "the baud rate")


def _add_endpoint_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST[:PORT]", type=_tcp, help="Modbus TCP endpoint")
    where.add_argument("--rtu", metavar="DEVICE", help="RS485 serial device, e.g. /dev/ttyUSB0")
    p.add_argument("--baud", type=_baud, default=9600, help="RTU baud rate (default 9600)")
    p.add_argument("--parity", choices=("N", "E", "O"), default="N", help="RTU parity")
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="RTU stop bits")


def endpoint_from_args(args: argparse.Namespace) -> Endpoint:
    if args.tcp is not None:
        return parse_tcp(args.tcp)
    return SerialEndpoint(args.rtu, args.baud, args.parity, args.stopbits)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sunspec", help="find, read and limit SunSpec devices")
    sub = p.add_subparsers(dest="sunspec_command", metavar="ACTION", required=True)

    scan = sub.add_parser("scan", help="list every SunSpec device and every decoded point")
    _add_endpoint_args(scan)
    scan.add_argument(
        "--unit",
        type=_unit,
        action="append",
        help="unit id to probe (repeatable; default 1-10, 126, 240)",
    )
    scan.add_argument("--json", action="store_true", help="print one JSON object")
    scan.add_argument(
        "--timeout", type=_positive, default=None, help="seconds per request (default 0.5)"
    )
    scan.set_defaults(handler=scan_command)

    lim = sub.add_parser("limit", help="write a generation limit and print the read-back")
    _add_endpoint_args(lim)
    lim.add_argument("--unit", type=_unit, required=True, help="the inverter's unit id")
    what = lim.add_mutually_exclusive_group(required=True)
    what.add_argument("--percent", type=_percent, help="limit in percent of WMax (0-100)")
    what.add_argument("--watts", type=_watts, help="limit in watts")
    what.add_argument("--clear", action="store_true", help="remove the limit")
    lim.add_argument(
        "--revert-s", type=_revert_s, default=60, help="the limit reverts after this (default 60 s)"
    )
    lim.add_argument("--timeout", type=_positive, default=1.0, help="seconds per request")
    lim.set_defaults(handler=limit_command)


class ScanFailed(Exception):
    """The scan found nothing because of the endpoint itself, not the devices behind it.

    ``reason``: ``"refused"`` (TCP: cannot connect), ``"no-port"`` (the serial port does not
    exist or cannot be opened) or ``"silent"`` (connected, but no unit answered at all: wrong
    address, baud rate or wiring). Each has its own message, for the installer to act on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class UnitProbe:
    """What one unit id gave: ``found``, ``not-sunspec``, ``no-answer`` or ``error``."""

    unit: int
    result: str
    detail: str = ""


def silent_bus(endpoint: Endpoint, probes: Sequence[UnitProbe]) -> ScanFailed | None:
    """The "nobody answered" verdict (pure): every probed unit stayed silent."""
    if not probes or any(p.result != "no-answer" for p in probes):
        return None
    units = ", ".join(str(p.unit) for p in probes)
    if isinstance(endpoint, SerialEndpoint):
        hint = (
            f"check the A/B wiring, the termination and the line settings ({endpoint.baud} "
            f"baud, parity {endpoint.parity}, {endpoint.stopbits} stop bit(s))"
        )
    else:
        hint = "the gateway accepted the connection: check the unit ids and its Modbus settings"
    return ScanFailed("silent", f"{endpoint}: no unit answered (tried {units}): {hint}")


def _named(unit: int, exc: Exception) -> str:
    """A unit's error, naming the unit (once)."""
    text = str(exc)
    return text if text.startswith(f"unit {unit}:") else f"unit {unit}: {text}"


def _open_failure(endpoint: Endpoint, exc: Exception) -> ScanFailed:
    if isinstance(endpoint, SerialEndpoint):
        return ScanFailed("no-port", f"cannot open the serial port {endpoint.device}: {exc}")
    return ScanFailed(
        "refused",
        f"cannot connect to {endpoint}: {exc} (is the address right, and Modbus TCP enabled "
        "on the device?)",
    )


def _in_use(endpoint: SerialEndpoint, held: Endpoint) -> ScanFailed:
    """The port is the running service's, at other line settings than the scan's."""
    return ScanFailed(
        "no-port",
        f"the serial port {endpoint.device} is in use by the running service ({held}): scan it "
        "with the line settings the service uses, or stop the service to scan at others",
    )


@asynccontextmanager
async def _scan_bus(
    endpoint: Endpoint, request_timeout: float, pool: BusPool | None
) -> AsyncIterator[ModbusBus]:
    """The scan's own bus (retries none, closed after), or the service's bus on this serial
    port when ``pool`` has one: the service holds the port's exclusive lock, and its bus's lock
    lets the scan's requests take turns with the running links' (left open after)."""
    if isinstance(endpoint, SerialEndpoint) and pool is not None:
        shared = pool.serial_bus(endpoint.device)
        if shared is not None:
            held = shared.endpoint
            if not (
                isinstance(held, SerialEndpoint)
                and (held.baud, held.parity, held.stopbits)
                == (endpoint.baud, endpoint.parity, endpoint.stopbits)
            ):
                raise _in_use(endpoint, held)
            log.info("scan of %s on the running service's bus %s", endpoint, held)
            yield shared
            return
    async with open_bus(
        endpoint, timeout=request_timeout, retries=0, backoff=Backoff(0.0, 0.0)
    ) as bus:
        yield bus


async def scan(
    endpoint: Endpoint,
    units: Sequence[int],
    *,
    request_timeout: float,
    progress: Callable[[UnitProbe], None] | None = None,
    pool: BusPool | None = None,
) -> list[tuple[SunSpecDevice, list[DecodedModel]]]:
    """Probe each unit; return the devices found with all their models decoded.

    Raises ScanFailed when the endpoint cannot be opened or no unit answered at all; a unit
    that answers without being SunSpec is not a failure, and a unit that fails (a corrupt map,
    a device still starting) is noted as an ``error`` and the scan goes on. ``progress`` hears
    of every unit. ``pool``: the running service's buses; a serial port it has open is scanned
    through its bus (the service holds the port's exclusive lock) at the service's retries."""
    if isinstance(endpoint, SerialEndpoint) and not await trio.Path(endpoint.device).exists():
        raise ScanFailed(
            "no-port",
            f"no serial port {endpoint.device} on this device: is the RS485 adapter plugged in? "
            "(/dev/serial/by-id/ lists the adapters present)",
        )
    found: list[tuple[SunSpecDevice, list[DecodedModel]]] = []
    probes: list[UnitProbe] = []

    def note(probe: UnitProbe) -> None:
        probes.append(probe)
        if progress is not None:
            progress(probe)

    async with _scan_bus(endpoint, request_timeout, pool) as bus:
        for unit in units:
            dev = SunSpecDevice(bus, unit, request_timeout=request_timeout)
            try:
                await dev.discover()
                models = await dev.read_all()
            except NotSunSpecError as exc:
                log.info("unit %d: %s", unit, exc)
                note(UnitProbe(unit, "not-sunspec", str(exc)))
                continue
            except ModbusConnectionError as exc:
                if not any(p.result != "no-answer" for p in probes):
                    raise _open_failure(endpoint, exc) from None
                log.info("unit %d: connection lost (%s)", unit, exc)
                note(UnitProbe(unit, "error", _named(unit, exc)))
                continue
            except ModbusTimeout as exc:
                log.info("unit %d: no answer (%s)", unit, exc)
                note(UnitProbe(unit, "no-answer", str(exc)))
                continue
            except ModbusError as exc:
                log.info("unit %d: %s", unit, exc)
                note(UnitProbe(unit, "error", _named(unit, exc)))
                continue
            except DeviceNotReadyError as exc:
                detail = f"{_named(unit, exc)} (still starting? scan again in a minute)"
                log.warning("%s", detail)
                note(UnitProbe(unit, "error", detail))
                continue
            except (DiscoveryError, DecodeError, ValueError) as exc:
                # A corrupt chain; a map that changed between discovery and the read
                # (MapChangedError); registers that do not decode; a short answer: this unit's
                # failure, not the scan's.
                detail = _named(unit, exc)
                log.warning("%s", detail)
                note(UnitProbe(unit, "error", detail))
                continue
            found.append((dev, models))
            note(UnitProbe(unit, "found"))
    silent = silent_bus(endpoint, probes)
    if silent is not None:
        raise silent
    return found


def scan_json(found: Sequence[tuple[SunSpecDevice, list[DecodedModel]]]) -> dict[str, Any]:
    return {
        "devices": [
            {
                "unit": dev.unit,
                "base": dev.map.base,
                "roles": list(device_roles(dev.map.ids)),
                "models": [m.to_json() for m in models],
            }
            for dev, models in found
        ]
    }


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))


def _print_text(found: Sequence[tuple[SunSpecDevice, list[DecodedModel]]]) -> None:
    if not found:
        print("no SunSpec devices found")
    for dev, models in found:
        c = dev.common
        who = f"{c.manufacturer} {c.model} (SN {c.serial})" if c else "unknown device"
        roles = ", ".join(device_roles(dev.map.ids)) or "no known role"
        print(f"unit {dev.unit}: {who} ({roles}), SunSpec base {dev.map.base}")
        for m in models:
            print(f"  model {m.id} {m.name or '(no definition)'} at {m.address}, length {m.length}")
            for name, v in m.points.items():
                if name not in ("ID", "L"):
                    print(f"    {name:<24} {_fmt(v)}")
            for gname, insts in m.groups.items():
                for i, g in enumerate(insts):
                    for name, v in g.points.items():
                        print(f"    {gname}[{i}].{name:<16} {_fmt(v)}")
            for err in m.errors:
                print(f"    ! {err}")


def scan_command(args: argparse.Namespace) -> int:
    endpoint = endpoint_from_args(args)
    units = args.unit or list(DEFAULT_UNITS)
    timeout = args.timeout or (SCAN_TIMEOUT_S if not args.unit else 1.0)
    failed: list[UnitProbe] = []

    def note(probe: UnitProbe) -> None:
        if probe.result == "error":
            failed.append(probe)
            if not args.json:
                print(probe.detail, file=sys.stderr)

    try:
        found = trio.run(lambda: scan(endpoint, units, request_timeout=timeout, progress=note))
    except ScanFailed as exc:
        if args.json:
            doc = {"devices": [], "error": exc.message, "reason": exc.reason}
            json.dump(doc, sys.stdout, allow_nan=False)
            print()
        else:
            print(f"scan failed: {exc.message}", file=sys.stderr)
        return SCAN_EXIT[exc.reason]
    if args.json:
        out = scan_json(found)
        if failed:
            out["errors"] = [{"unit": p.unit, "error": p.detail} for p in failed]
        json.dump(out, sys.stdout, allow_nan=False)
        print()
    else:
        _print_text(found)
    return 0 if found else 1


async def limit(
    endpoint: Endpoint,
    unit: int,
    *,
    percent: float | None,
    watts: float | None,
    revert_s: int,
    request_timeout: float,
) -> dict[str, Any]:
    async with open_bus(endpoint, timeout=request_timeout) as bus:
        dev = SunSpecDevice(bus, unit)
        await dev.discover()
        if watts is not None:
            res = await dev.set_limit_watts(watts, revert_s=revert_s)
        else:
            res = await dev.set_limit(LimitCommand(pct=percent, revert_s=revert_s))
        return {"unit": unit, "model": res.model_id, "readback": res.readback}


LIMIT_ERRORS = (
    ModbusError,  # cannot connect, no answer, an exception response
    OSError,  # the serial port
    NotSunSpecError,
    DiscoveryError,
    DecodeError,
    NotControllableError,
    CommandError,
    VerifyError,
)
"""What ``sunspec limit`` meets on an ordinary site: each told in one line, no traceback."""


def _sole(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def limit_command(args: argparse.Namespace) -> int:
    endpoint = endpoint_from_args(args)
    percent = None if args.clear else args.percent
    try:
        out = trio.run(
            lambda: limit(
                endpoint,
                args.unit,
                percent=percent,
                watts=args.watts,
                revert_s=args.revert_s,
                request_timeout=args.timeout,
            )
        )
    except Exception as exc:
        problem = _sole(exc)
        if not isinstance(problem, LIMIT_ERRORS):
            raise
        print(f"limit failed: {problem}", file=sys.stderr)
        return 1
    rb = out["readback"]
    print(f"unit {out['unit']}: model {out['model']} reads back:")
    for name, v in rb.items():
        if name.startswith("WMaxLim") or name in ("Conn", "Conn_RvrtTms"):
            print(f"  {name:<24} {_fmt(v)}")
    return 0
