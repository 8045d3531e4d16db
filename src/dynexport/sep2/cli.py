"""``dynexport sep2 walk``: the installer's check of the utility link, read-only.

It connects with the configured certificates, walks dcap → tm → edev → rg → cp → der → fsa →
derp → derc/dderc and prints what it found: registration, programs, the controls in force now,
the defaults and the next 24 h. It sends nothing (no PUT, no POST: no registration, no responses,
no telemetry) and never touches an inverter, so it is safe to run beside the appliance.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from dynexport.sep2.client import WalkResult, describe_error, result_schedule, walk
from dynexport.sep2.controls import ControlBase, ProgramControls
from dynexport.sep2.flow import RegistrationOutcome
from dynexport.sep2.identity import CertError, device_lfdi, sfdi_from_lfdi
from dynexport.sep2.schedule import ActiveControls, Segment, active_controls
from dynexport.system.config import ConfigError, UtilityConfig, load_config

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_REGISTERED = 2


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("sep2", help="the utility link (IEEE 2030.5)")
    ssub = p.add_subparsers(dest="sep2_command", metavar="ACTION", required=True)
    w = ssub.add_parser(
        "walk",
        help="connect, walk the utility's tree and print registration, controls and schedule "
        "(read-only: sends nothing, touches no inverter)",
    )
    w.add_argument("--config", required=True, type=Path, help="the appliance configuration file")
    w.add_argument("--json", action="store_true", help="print JSON instead of text")
    w.set_defaults(handler=_walk)


def _base_json(base: ControlBase) -> dict[str, Any]:
    return {k: v for k, v in vars(base).items() if v is not None}


def _controls_json(active: ActiveControls) -> dict[str, Any]:
    out: dict[str, Any] = {
        v.kind.value: {"value": v.value, "origin": v.origin, "ramp_tms": v.ramp_tms}
        for v in active.values
    }
    if active.set_grad_w is not None:
        out["set_grad_w"] = active.set_grad_w
    return out


def _program_json(p: ProgramControls) -> dict[str, Any]:
    return {
        "href": p.href,
        "mrid": p.mrid,
        "primacy": p.primacy,
        "description": p.description,
        "default": None
        if p.default is None
        else {
            "mrid": p.default.mrid,
            "controls": _base_json(p.default.base),
            "set_grad_w": p.default.set_grad_w,
        },
        "events": [
            {
                "mrid": e.mrid,
                "start": e.start,
                "duration": e.duration,
                "status": int(e.status),
                "controls": _base_json(e.base),
                "creation_time": e.creation_time,
                "response_required": e.response_required,
                "description": e.description,
            }
            for e in p.events
        ],
    }


def _segment_json(s: Segment) -> dict[str, Any]:
    return {"start": s.start, "end": s.end, "controls": _controls_json(s.controls)}


def report(result: WalkResult, lfdi: str, sfdi: int) -> dict[str, Any]:
    """The walk as plain JSON-able data (also what the text output prints)."""
    check = result.registration_check
    now = result.fetched_at
    active = active_controls(result.programs, now, lfdi)
    defaults = active_controls([replace(p, events=()) for p in result.programs], now, lfdi)
    acting = check is None or check.acting
    edev = result.end_device
    return {
        "server_time": now,
        "clock_offset_s": result.clock_offset,
        "lfdi": lfdi,
        "sfdi": sfdi,
        "end_device": None
        if edev is None
        else {"href": result.end_device_url, "sfdi": edev.sfdi, "lfdi": edev.lfdi},
        "registration": None
        if check is None
        else {
            "outcome": check.outcome.value,
            "message": check.message,
            "server_pin": check.server_pin,
        },
        "acting": acting and edev is not None,
        "connection_point": None
        if result.connection_point is None
        else result.connection_point.connection_point_id,
        "der": result.der_url,
        "complete": result.complete,
        "programs": [_program_json(p) for p in result.programs],
        "active": _controls_json(active),
        "default": _controls_json(defaults),
        "schedule": [_segment_json(s) for s in result_schedule(result, lfdi)],
        "warnings": list(result.warnings),
        "requests": result.requests,
    }


def _fmt_time(t: int) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _fmt_controls(controls: dict[str, Any]) -> str:
    parts = []
    for kind, v in controls.items():
        if kind == "set_grad_w":
            continue
        parts.append(f"{kind}={v['value']} ({v['origin']})")
    return ", ".join(parts) or "nothing set"


def render_text(data: dict[str, Any]) -> str:
    lines = [
        f"device     LFDI {data['lfdi']}  SFDI {data['sfdi']}",
        f"server     time {_fmt_time(data['server_time'])}, clock offset "
        f"{data['clock_offset_s']:+d} s",
    ]
    edev = data["end_device"]
    lines.append(f"EndDevice  {edev['href'] if edev else 'NOT FOUND (not registered yet)'}")
    reg = data["registration"]
    if reg is not None:
        lines.append(f"registration  {reg['outcome']}: {reg['message']}")
    lines.append(f"NMI on ConnectionPoint  {data['connection_point'] or '(not set)'}")
    lines.append(f"programs   {len(data['programs'])}")
    for p in data["programs"]:
        lines.append(f"  primacy {p['primacy']}  {p['description'] or p['mrid']}  {p['href']}")
        if p["default"] is not None:
            lines.append(f"    default {p['default']['controls']}")
        for e in p["events"]:
            lines.append(
                f"    event {e['mrid']} {_fmt_time(e['start'])} for {e['duration']} s "
                f"status {e['status']}: {e['controls']}"
            )
    lines.append(f"active now   {_fmt_controls(data['active'])}")
    lines.append(f"defaults     {_fmt_controls(data['default'])}")
    lines.append("next 24 h")
    for s in data["schedule"]:
        lines.append(
            f"  {_fmt_time(s['start'])} .. {_fmt_time(s['end'])}  {_fmt_controls(s['controls'])}"
        )
    for w in data["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def run_walk(utility: UtilityConfig, *, as_json: bool, out: Any = None) -> int:
    """Walks and prints; returns the exit status (0 ok, 1 failed, 2 not registered / refused)."""
    stream = out or sys.stdout

    def failed(message: str, lfdi: str | None) -> int:
        if as_json:
            print(json.dumps({"ok": False, "error": message, "lfdi": lfdi}, indent=2), file=stream)
        else:
            print(f"sep2 walk failed: {message}", file=stream)
        return EXIT_FAILED

    try:
        lfdi = device_lfdi(utility.cert)
    except (OSError, CertError) as exc:
        # Before the utility returns the signed chain, the configured file is not there yet.
        reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
        return failed(f"the device certificate chain {utility.cert} cannot be used: {reason}", None)
    try:
        result = trio.run(walk, utility)
    except Exception as exc:
        return failed(describe_error(exc), lfdi)
    data = report(result, lfdi, sfdi_from_lfdi(lfdi))
    check = result.registration_check
    ok = result.end_device is not None and (check is None or check.outcome in _ACTING)
    data["ok"] = ok
    print(json.dumps(data, indent=2) if as_json else render_text(data), file=stream)
    return EXIT_OK if ok else EXIT_NOT_REGISTERED


_ACTING = (RegistrationOutcome.OK, RegistrationOutcome.NOT_CHECKED)


def _walk(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"dynexport: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if config.utility is None:
        print("dynexport: the configuration has no 'utility' section", file=sys.stderr)
        return EXIT_FAILED
    return run_walk(config.utility, as_json=args.json)
