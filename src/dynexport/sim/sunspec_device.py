"""Simulated SunSpec devices: register images and plant behaviour, without I/O.

The register layout and value encoding come from pysunspec2's official model definitions so the
simulator is an independent peer of our own decoder. Everything here is driven by an explicit
clock value (``now``) so tests can step time deterministically; the Modbus server adapter lives in
``modbus_server.py``.
"""

from __future__ import annotations

import math
import re
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import sunspec2.device as ss_device
import sunspec2.mdef as ss_mdef

SUNS_MARKER = (0x5375, 0x6E53)  # 'SunS'
END_MODEL_ID = 0xFFFF

ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3

INT_MODELS_INVERTER = (101, 102, 103)
FLOAT_MODELS_INVERTER = (111, 112, 113)
INVERTER_MODELS = INT_MODELS_INVERTER + FLOAT_MODELS_INVERTER
METER_MODELS = (201, 202, 203, 204, 211, 212, 213, 214)

_PATH_RE = re.compile(r"^(?:(?P<group>\w+)\[(?P<index>\d+)\]\.)?(?P<point>\w+)$")


class ModbusError(Exception):
    """A request the device refuses; ``code`` is the Modbus exception code to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ModelSpec:
    """One model of a device: id, initial point values and repeating-group instance counts.

    ``values`` maps point paths (``"W"`` or ``"module[0].DCW"``) to engineering values: scale
    factors are applied when encoding, so give SF points (raw exponents) alongside the points
    they scale. Points not mentioned stay at their not-implemented value.
    """

    model_id: int
    values: Mapping[str, Any] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)
    writable: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Slot:
    model_id: int
    path: str
    point: Any  # sunspec2.device.Point
    address: int
    length: int
    writable: bool


class SunSpecDevice:
    """A SunSpec register image at a base address (40000, 50000 or 0).

    Not thread-safe on its own: ``Site`` serialises access. Only points listed in a model's
    ``writable`` set (and implemented, and RW in the definition) accept writes; any other write is
    an illegal data address, as on real devices that expose a subset of controls.
    """

    def __init__(self, base: int, models: Sequence[ModelSpec]) -> None:
        self.base = base
        self.models: dict[int, Any] = {}
        self.model_addresses: dict[int, int] = {}
        self._order: list[Any] = []
        self._slots: dict[int, _Slot] = {}
        self._by_path: dict[tuple[int, str], _Slot] = {}
        address = base + 2
        for spec in models:
            if spec.model_id in self.models:
                raise ValueError(f"model {spec.model_id} appears twice")
            model = _build_model(spec)
            self.models[spec.model_id] = model
            self.model_addresses[spec.model_id] = address
            self._order.append(model)
            self._index_points(spec, model, address)
            address += model.len
        self.end = address + 2
        self._registers: list[int] = []
        self._dirty = True

    # -- layout -------------------------------------------------------------------------------

    def _index_points(self, spec: ModelSpec, model: Any, model_address: int) -> None:
        for path, point in _iter_points(model):
            writable = (
                path in spec.writable
                and point.pdef.get(ss_mdef.ACCESS) == ss_mdef.ACCESS_RW
                and point.value is not None
            )
            slot = _Slot(
                spec.model_id, path, point, model_address + point.offset, point.len, writable
            )
            self._by_path[(spec.model_id, path)] = slot
            for reg in range(slot.address, slot.address + slot.length):
                self._slots[reg] = slot
        unknown = set(spec.writable) - {p for (m, p) in self._by_path if m == spec.model_id}
        if unknown:
            raise ValueError(f"model {spec.model_id}: unknown writable points {sorted(unknown)}")

    def has(self, model_id: int) -> bool:
        return model_id in self.models

    def point_address(self, model_id: int, path: str) -> int:
        """Absolute register address of a point (useful for tests writing raw registers)."""
        return self._by_path[(model_id, path)].address

    # -- point values -------------------------------------------------------------------------

    def get(self, model_id: int, path: str) -> Any:
        """Engineering value (scale factor applied) of a point, None if not implemented."""
        point = self._point(model_id, path)
        return point.get_value(computed=True)

    def get_raw(self, model_id: int, path: str) -> Any:
        return self._point(model_id, path).value

    def set(self, model_id: int, path: str, value: Any) -> None:
        """Set a point from an engineering value; None makes it not-implemented."""
        _set_point(self._point(model_id, path), value)
        self._dirty = True

    def set_if(self, model_id: int, path: str, value: Any) -> None:
        """Set a point when the model exists and the point's scale factor is implemented."""
        if model_id not in self.models:
            return
        point = self._point(model_id, path)
        if point.sf is not None:
            sf = _sf_point(point)
            if sf is None or sf.value is None:
                return
        self.set(model_id, path, value)

    def _point(self, model_id: int, path: str) -> Any:
        try:
            return self._by_path[(model_id, path)].point
        except KeyError:
            raise KeyError(f"model {model_id} has no point {path}") from None

    # -- Modbus register access --------------------------------------------------------------

    def read(self, address: int, count: int) -> list[int]:
        """Holding registers ``address .. address+count-1``; outside the image → exception 2."""
        if count < 1 or address < self.base or address + count > self.end:
            raise ModbusError(ILLEGAL_ADDRESS, f"read {address}+{count} outside the SunSpec map")
        if self._dirty:
            self._encode()
        start = address - self.base
        return self._registers[start : start + count]

    def write(self, address: int, values: Sequence[int], now: float) -> None:
        """Write whole writable points atomically, then let the device react."""
        changes: list[tuple[_Slot, Any]] = []
        pos = address
        end = address + len(values)
        while pos < end:
            slot = self._slots.get(pos)
            if slot is None or not slot.writable:
                raise ModbusError(ILLEGAL_ADDRESS, f"register {pos} is not writable")
            if slot.address != pos or slot.address + slot.length > end:
                raise ModbusError(ILLEGAL_ADDRESS, f"write splits point {slot.path} at {pos}")
            data = b"".join(
                struct.pack(">H", v & 0xFFFF)
                for v in values[pos - address : pos - address + slot.length]
            )
            raw = slot.point.info.data_to(data)
            if not self._valid(slot, raw):
                raise ModbusError(ILLEGAL_VALUE, f"value {raw} out of range for {slot.path}")
            changes.append((slot, raw))
            pos += slot.length
        for slot, raw in changes:
            slot.point.set_value(raw)
        self._dirty = True
        self.on_write(changes_to_names(changes), now)

    def _valid(self, slot: _Slot, raw: Any) -> bool:
        pdef = slot.point.pdef
        if not slot.point.info.is_impl(raw):
            return False
        symbols = pdef.get(ss_mdef.SYMBOLS)
        if symbols and pdef[ss_mdef.TYPE] in ("enum16", "enum32"):
            return raw in {s[ss_mdef.VALUE] for s in symbols}
        limits = self.value_limits().get((slot.model_id, slot.path))
        if limits is not None:
            value = _scaled(slot.point, raw)
            return limits[0] <= value <= limits[1]
        return True

    def value_limits(self) -> Mapping[tuple[int, str], tuple[float, float]]:
        """Accepted engineering-value range of writable points; subclasses add theirs."""
        return {}

    def on_write(self, names: AbstractSet[tuple[int, str]], now: float) -> None:
        """Hook: react to written points (start timers and so on)."""

    def step(self, now: float) -> None:
        """Hook: advance the simulation to ``now``."""

    def _encode(self) -> None:
        regs: list[int] = list(SUNS_MARKER)
        for model in self._order:
            data = model.get_mb()
            regs.extend(struct.unpack(f">{len(data) // 2}H", data))
        regs.extend((END_MODEL_ID, 0))
        self._registers = regs
        self._dirty = False


def changes_to_names(changes: Iterable[tuple[_Slot, Any]]) -> set[tuple[int, str]]:
    return {(slot.model_id, slot.path) for slot, _ in changes}


def _build_model(spec: ModelSpec) -> Any:
    init: dict[str, Any] = {}
    mdef = ss_device.get_model_def(spec.model_id)
    for gdef in mdef[ss_mdef.GROUP].get(ss_mdef.GROUPS, []):
        gname = gdef[ss_mdef.NAME]
        if gdef.get(ss_mdef.COUNT) is None or gname not in spec.counts:
            continue
        # pysunspec2 sizes a repeating group from the count point, or from the data given.
        init[gname] = [{} for _ in range(spec.counts[gname])]
        count = gdef[ss_mdef.COUNT]
        if isinstance(count, str) and not count.isdigit():
            init[count] = spec.counts[gname]
    model = ss_device.Model(model_id=spec.model_id, data=init)
    if model.error_info:
        raise ValueError(f"model {spec.model_id}: {model.error_info.strip()}")
    # Scale factors first: scaled points need them to encode.
    ordered = sorted(spec.values.items(), key=lambda kv: not _is_sf(model, kv[0]))
    for path, value in ordered:
        _set_point(_resolve(model, path), value)
    return model


def _is_sf(model: Any, path: str) -> bool:
    return bool(_resolve(model, path).pdef[ss_mdef.TYPE] == ss_mdef.TYPE_SUNSSF)


def _resolve(model: Any, path: str) -> Any:
    m = _PATH_RE.match(path)
    if m is None:
        raise KeyError(path)
    if m.group("group"):
        group = model.groups[m.group("group")]
        if isinstance(group, list):
            group = group[int(m.group("index"))]
        return group.points[m.group("point")]
    return model.points[m.group("point")]


def _iter_points(group: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for name, point in group.points.items():
        yield prefix + name, point
    for gname, sub in group.groups.items():
        if isinstance(sub, list):
            for i, g in enumerate(sub):
                yield from _iter_points(g, f"{gname}[{i}].")
        else:
            yield from _iter_points(sub, f"{gname}[0].")


def _sf_point(point: Any) -> Any:
    sf = point.group.points.get(point.sf)
    if sf is None:
        sf = point.model.points.get(point.sf)
    return sf


def _scaled(point: Any, raw: Any) -> float:
    if point.sf is None:
        return float(raw) * (10.0 ** (point.sf_value or 0))
    sf = _sf_point(point)
    return float(raw) * (10.0 ** (sf.value or 0))


def _set_point(point: Any, value: Any) -> None:
    if value is None:
        point.set_value(None)
        return
    vtype = point.pdef[ss_mdef.TYPE]
    if vtype in (ss_mdef.TYPE_STRING, ss_mdef.TYPE_FLOAT32, ss_mdef.TYPE_FLOAT64):
        point.set_value(float(value) if vtype != ss_mdef.TYPE_STRING else str(value))
    elif point.sf_required:
        point.set_value(value, computed=True)
    else:
        point.set_value(round(value))


# -- plant behaviour ------------------------------------------------------------------------------


def _lag(current: float, target: float, dt: float, tau: float) -> float:
    if tau <= 0:
        return target
    return target + (current - target) * math.exp(-dt / tau)


@dataclass
class _Timer:
    deadline: float | None = None

    def arm(self, now: float, seconds: float) -> None:
        self.deadline = now + seconds if seconds > 0 else None

    def arm_for(self, now: float, enabled: bool, rvrt: Any) -> None:
        """Runs for the revert timeout register's ``rvrt`` seconds while its control is
        ``enabled``; stops when it is not, or when ``rvrt`` is 0 or unset (no timeout)."""
        self.arm(now, float(rvrt) if enabled and rvrt else 0.0)

    def remaining(self, now: float) -> float:
        return 0.0 if self.deadline is None else max(0.0, self.deadline - now)

    def fire(self, now: float) -> bool:
        """True once when the deadline has come (the timer then stops)."""
        if self.deadline is not None and self.deadline <= now:
            self.deadline = None
            return True
        return False


class _Plant(SunSpecDevice):
    """A device with a physical state that moves with time (output, state of charge) and revert
    timers that end its controls. ``step`` integrates up to each timer's deadline in turn, so a
    control ends at its deadline even when the next step comes long after it."""

    def __init__(self, base: int, models: Sequence[ModelSpec]) -> None:
        super().__init__(base, models)
        self._last: float | None = None

    def _timers(self) -> tuple[_Timer, ...]:
        raise NotImplementedError

    def _advance(self, dt: float) -> None:
        """The physical state ``dt`` seconds on, under the controls now in force."""
        raise NotImplementedError

    def _expire(self, now: float) -> None:
        """End the controls whose timers have fired by ``now``."""
        raise NotImplementedError

    def _settle(self) -> None:
        """What follows at once, with no lag, from the controls now in force (nothing here)."""

    def _refresh(self, now: float) -> None:
        """Write the plant state into the measurement points."""
        raise NotImplementedError

    def step(self, now: float) -> None:
        if self._last is None:
            self._last = now
        while self._last < now:
            deadlines = [
                t.deadline
                for t in self._timers()
                if t.deadline is not None and self._last <= t.deadline < now
            ]
            until = min(deadlines) if deadlines else now
            self._advance(until - self._last)
            self._last = until
            self._expire(until)
        self._expire(now)
        self._settle()
        self._refresh(now)


class Inverter(_Plant):
    """A PV inverter producing ``min(available, rating, limit)`` with a first-order lag.

    The limit comes from model 123 (WMaxLimPct of 121 WMax, when WMaxLim_Ena = 1) or model 704
    (WMaxLimPct of 702 WMax, when WMaxLimPctEna = 1). Revert timers disable the limit when they
    expire without a rewrite, so a controller that dies leaves the site at full output.

    Connection: 123 Conn = 0 opens the inverter (output 0 at once, status disconnected: 10x St
    OFF, 122 PVConn/ECPConn bit 0 clear, 701 ConnSt 0) until Conn = 1 or its Conn_RvrtTms timer
    expires; 703 ES = 0 does the same with no timer. ``tripped`` (the inverter left the grid on
    its own) and ``stopped`` (it stopped producing on its own, still connected) are set from
    outside, e.g. through the simulator control channel.
    """

    def __init__(
        self,
        base: int,
        models: Sequence[ModelSpec],
        *,
        available_w: float = 0.0,
        tau_s: float = 1.0,
        voltage: float = 230.0,
        frequency: float = 50.0,
    ) -> None:
        super().__init__(base, models)
        self.available_w = available_w
        self.tau_s = tau_s
        self.voltage = voltage
        self.frequency = frequency
        self.output_w = 0.0
        self.energy_wh = 0.0
        self.tripped = False
        self.stopped = False
        self.available_override_w: float | None = None
        """Set through the control channel: wins over ``available_w`` (which a demo's weather
        driver keeps moving)."""
        self._limit_timer = _Timer()
        self._conn_timer = _Timer()
        self.output_w = self.target_w()  # start in steady state, not ramping up
        self._refresh(0.0)

    # -- ratings and limits -------------------------------------------------------------------

    def rating_w(self) -> float:
        for model_id, path in ((702, "WMax"), (121, "WMax"), (702, "WMaxRtg"), (120, "WRtg")):
            if self.has(model_id):
                value = self.get(model_id, path)
                if value is not None:
                    return float(value)
        return math.inf

    def limit_w(self) -> float:
        """Active generation limit in W (inf when no limit is enabled)."""
        if self.has(704) and self.get(704, "WMaxLimPctEna") == 1:
            return self.rating_w() * float(self.get(704, "WMaxLimPct")) / 100.0
        if self.has(123) and self.get(123, "WMaxLim_Ena") == 1:
            return self.rating_w() * float(self.get(123, "WMaxLimPct")) / 100.0
        return math.inf

    def connected(self) -> bool:
        if self.tripped:
            return False
        if self.has(123) and self.get(123, "Conn") == 0:
            return False
        return not (self.has(703) and self.get(703, "ES") == 0)

    def available(self) -> float:
        """PV power the inverter could produce now (W)."""
        if self.available_override_w is not None:
            return self.available_override_w
        return self.available_w

    def operating(self) -> bool:
        return self.connected() and not self.stopped

    def target_w(self) -> float:
        if not self.operating():
            return 0.0
        return max(0.0, min(self.available(), self.rating_w(), self.limit_w()))

    def set_state(
        self, now: float, *, connected: bool | None = None, operating: bool | None = None
    ) -> None:
        """The inverter trips off the grid (or reconnects) or stops (or resumes) on its own."""
        self.step(now)
        if connected is not None:
            self.tripped = not connected
        if operating is not None:
            self.stopped = not operating
        self._open_circuit()
        self._refresh(now)

    def _open_circuit(self) -> None:
        """An open relay or a stopped bridge produces nothing at once (no lag)."""
        if not self.operating():
            self.output_w = 0.0

    def value_limits(self) -> Mapping[tuple[int, str], tuple[float, float]]:
        return {
            (123, "WMaxLimPct"): (0.0, 100.0),
            (704, "WMaxLimPct"): (0.0, 100.0),
            (704, "WMaxLimPctRvrt"): (0.0, 100.0),
        }

    # -- events -------------------------------------------------------------------------------

    def on_write(self, names: AbstractSet[tuple[int, str]], now: float) -> None:
        self.step(now)  # the plant state up to the write used the old settings
        if names & {(123, "WMaxLimPct"), (123, "WMaxLim_Ena"), (123, "WMaxLimPct_RvrtTms")}:
            on = self.get(123, "WMaxLim_Ena") == 1
            self._limit_timer.arm_for(now, on, self.get(123, "WMaxLimPct_RvrtTms"))
        if names & {(704, "WMaxLimPct"), (704, "WMaxLimPctEna"), (704, "WMaxLimPctRvrtTms")}:
            on = self.get(704, "WMaxLimPctEna") == 1
            self._limit_timer.arm_for(now, on, self.get(704, "WMaxLimPctRvrtTms"))
        if names & {(123, "Conn"), (123, "Conn_RvrtTms")}:
            off = self.get(123, "Conn") == 0
            self._conn_timer.arm_for(now, off, self.get(123, "Conn_RvrtTms"))
        self._open_circuit()
        self._refresh(now)

    def _timers(self) -> tuple[_Timer, ...]:
        return (self._limit_timer, self._conn_timer)

    def _settle(self) -> None:
        self._open_circuit()

    def _advance(self, dt: float) -> None:
        start = self.output_w
        self.output_w = _lag(self.output_w, self.target_w(), dt, self.tau_s)
        self.energy_wh += (start + self.output_w) / 2.0 * dt / 3600.0

    def _expire(self, now: float) -> None:
        if self._limit_timer.fire(now):
            if self.has(704) and self.get(704, "WMaxLimPctEna") == 1:
                self.set(704, "WMaxLimPctEna", self.get(704, "WMaxLimPctEnaRvrt") or 0)
                rvrt_pct = self.get(704, "WMaxLimPctRvrt")
                if rvrt_pct is not None:
                    self.set(704, "WMaxLimPct", rvrt_pct)
            if self.has(123):
                self.set(123, "WMaxLim_Ena", 0)
        if self._conn_timer.fire(now):
            self.set(123, "Conn", 1)

    # -- measurements -------------------------------------------------------------------------

    def _refresh(self, now: float) -> None:
        """Write the plant state into the measurement points of whichever models exist."""
        w = self.output_w
        phase_a = w / 3.0 / self.voltage
        limited = self.limit_w() < min(self.available(), self.rating_w())
        if not self.connected():
            state, state701 = 1, 0  # OFF
        elif self.stopped:
            state, state701 = 8, 0  # STANDBY / OFF: connected, not producing
        elif self.available() <= 0:
            state, state701 = 2, 1  # SLEEPING
        elif limited:
            state, state701 = 5, 4  # THROTTLED
        else:
            state, state701 = 4, 3  # MPPT / RUNNING
        dc_w = w / 0.97
        for mid in INVERTER_MODELS:
            if not self.has(mid):
                continue
            s = self.set_if
            s(mid, "W", w)
            s(mid, "VA", w)
            s(mid, "VAr", 0.0)
            s(mid, "Hz", self.frequency)
            s(mid, "A", w / self.voltage if mid in (101, 111) else phase_a * 3)
            s(mid, "AphA", phase_a if mid not in (101, 111) else w / self.voltage)
            if mid in (102, 103, 112, 113):
                s(mid, "AphB", phase_a)
            if mid in (103, 113):
                s(mid, "AphC", phase_a)
            for ph in ("PhVphA", "PhVphB", "PhVphC"):
                if self.get_raw(mid, ph) is not None:
                    s(mid, ph, self.voltage)
            s(mid, "WH", self.energy_wh)
            s(mid, "DCW", dc_w)
            s(mid, "DCV", 600.0)
            s(mid, "DCA", dc_w / 600.0)
            s(mid, "St", state)
        if self.has(122):
            conn = self.connected()
            # PVConn bits: 0 connected, 1 available, 2 operating; ECPConn bit 0 connected.
            pv_conn = (1 if conn else 0) | (2 if self.operating() else 0) | (4 if w > 0 else 0)
            self.set_if(122, "PVConn", pv_conn)
            self.set_if(122, "ECPConn", 1 if conn else 0)
            self.set_if(122, "WAval", min(self.available(), self.rating_w()))
            self.set_if(122, "StActCtl", 1 if self.limit_w() < math.inf else 0)
            self.set_if(122, "ActWh", int(self.energy_wh))
        if self.has(160):
            self._refresh_mppt(dc_w, state)
        if self.has(701):
            s = self.set_if
            s(701, "St", 1 if self.operating() else 0)
            s(701, "InvSt", state701)
            s(701, "ConnSt", 1 if self.connected() else 0)
            s(701, "W", w)
            s(701, "VA", w)
            s(701, "Var", 0.0)
            s(701, "A", phase_a)
            s(701, "LNV", self.voltage)
            s(701, "LLV", self.voltage * math.sqrt(3))
            s(701, "Hz", self.frequency)
            s(701, "TotWhInj", self.energy_wh)
            for ph in ("L1", "L2", "L3"):
                s(701, f"W{ph}", w / 3.0)
                s(701, f"A{ph}", phase_a)
                s(701, f"V{ph}", self.voltage)
        if self.has(704):
            self.set(704, "WMaxLimPctRvrtRem", math.ceil(self._limit_timer.remaining(now)))

    def _refresh_mppt(self, dc_w: float, state: int) -> None:
        """Model 160: the DC power shared evenly between its strings."""
        n = int(self.get_raw(160, "N") or 0)
        for i in range(n):
            self.set_if(160, f"module[{i}].DCW", dc_w / n)
            self.set_if(160, f"module[{i}].DCV", 300.0)
            self.set_if(160, f"module[{i}].DCA", dc_w / n / 300.0)
            self.set_if(160, f"module[{i}].DCWH", self.energy_wh / n)
            self.set_if(160, f"module[{i}].DCSt", state)


class Meter(SunSpecDevice):
    """A grid-connection meter: W positive = import, negative = export."""

    def __init__(self, base: int, models: Sequence[ModelSpec], *, frequency: float = 50.0) -> None:
        super().__init__(base, models)
        self.frequency = frequency
        self.site_w = 0.0
        self.site_var = 0.0
        self.import_wh = 0.0
        self.export_wh = 0.0
        self._last: float | None = None
        self.frozen = False
        """Its registers keep their last values while the power flow moves on (a gateway that
        lost its meter and serves what it read last): set from outside, by tests."""
        self.measure(0.0, 0.0, None)

    def measure(self, site_w: float, site_var: float, now: float | None) -> None:
        """Record the power flow at ``now`` and integrate energy since the last reading.

        ``now=None`` sets the reading without starting the energy clock (initial state).
        """
        if now is not None and self._last is not None and now > self._last:
            wh = self.site_w * (now - self._last) / 3600.0
            if wh >= 0:
                self.import_wh += wh
            else:
                self.export_wh -= wh
        self._last = now
        self.site_w = site_w
        self.site_var = site_var
        if self.frozen:
            return
        # Export lifts the local voltage a little: realistic and makes V non-constant.
        volts = 230.0 - site_w / 1000.0 * 0.5
        phase_w = site_w / 3.0
        phase_var = site_var / 3.0
        phase_va = math.hypot(phase_w, phase_var)
        amps = phase_va / volts
        pf = 100.0 * abs(phase_w) / phase_va if phase_va else 100.0  # models 20x/21x: percent
        for mid in METER_MODELS:
            if not self.has(mid):
                continue
            s = self.set_if
            s(mid, "W", site_w)
            s(mid, "VAR", site_var)
            s(mid, "VA", phase_va * 3)
            s(mid, "PF", pf)
            s(mid, "A", amps * 3)
            s(mid, "Hz", self.frequency)
            s(mid, "PhV", volts)
            s(mid, "PPV", volts * math.sqrt(3))
            s(mid, "TotWhImp", self.import_wh)
            s(mid, "TotWhExp", self.export_wh)
            phases = ("A",) if mid in (201, 211) else ("A", "B") if mid in (202, 212) else "ABC"
            for ph in phases:
                s(mid, f"Wph{ph}", phase_w)
                s(mid, f"VARph{ph}", phase_var)
                s(mid, f"VAph{ph}", phase_va)
                s(mid, f"PFph{ph}", pf)
                s(mid, f"Aph{ph}", amps)
                s(mid, f"PhVph{ph}", volts)


class _Storage(_Plant):
    """The battery half of a device: capacity, rates, SoC, its own self-consumption mode, and
    the controls of the storage models 124 and 704 (WSet) with their revert timers.

    Power ``power_w`` is + discharging. With no control in force it holds the site at 0 W
    (charges from what the site would export, discharges what it would import: ``own_w``, set
    by the site), within its rates and 0..100 % SoC. Controls:

    - model 124 with StorCtl_Mod ≠ 0 (reverting to 0 after InOutWRte_RvrtTms). ``window`` False
      (SunSpec): bit 0 caps charging at InWRte % of WChaMax, bit 1 caps discharging at OutWRte %.
      ``window`` True (Fronius GEN24): the battery's charge is held in the window
      [−OutWRte %, InWRte %] of WChaMax, so a negative OutWRte forces charging, a negative
      InWRte forces discharging (both directions through one pair of registers); each bound
      only with its bit (bit 0 InWRte, bit 1 OutWRte), so StorCtl_Mod 2 with OutWRte 0 is
      "charge only" in both conventions;
    - model 704 WSetEna = 1 (WSetMod 1, W): the power is WSet (+ discharge), reverting to
      WSetEna = WSetEnaRvrt after WSetRvrtTms.
    """

    tau_s: float
    """Its power's time constant (s), shared with the inverter of a hybrid."""

    def _init_storage(
        self,
        *,
        capacity_wh: float,
        max_charge_w: float,
        max_discharge_w: float,
        soc_pct: float,
        window: bool,
    ) -> None:
        self.capacity_wh = capacity_wh
        self.max_charge_w = max_charge_w
        self.max_discharge_w = max_discharge_w
        self.soc_pct = soc_pct
        self.window = window
        self.power_w = 0.0
        self.own_w = 0.0
        """What its own mode asks (set by the site: minus what the site would export)."""
        self.own_mode = "self-consumption"
        """Or "idle": it holds its charge by itself (kept for a tariff or for backup)."""
        self.energy_in_wh = 0.0
        self.energy_out_wh = 0.0
        self._storctl_timer = _Timer()
        self._wset_timer = _Timer()

    def _storage_limits(self) -> dict[tuple[int, str], tuple[float, float]]:
        lo = -100.0 if self.window else 0.0
        return {(124, "InWRte"): (lo, 100.0), (124, "OutWRte"): (lo, 100.0)}

    def battery_target_w(self) -> float:
        """The power it heads for now (+ discharge), before its SoC bounds."""
        if self.has(704) and self.get(704, "WSetEna") == 1:
            goal = float(self.get(704, "WSet") or 0.0)
        else:
            goal = self.own_w if self.own_mode == "self-consumption" else 0.0
            mod = int(self.get(124, "StorCtl_Mod") or 0) if self.has(124) else 0
            if mod:
                rate = float(self.get(124, "WChaMax") or self.max_charge_w)
                in_pct = float(self.get(124, "InWRte") or 0.0)
                out_pct = float(self.get(124, "OutWRte") or 0.0)
                charge = -goal
                if self.window:
                    lo = -out_pct * rate / 100.0 if mod & 2 else -math.inf
                    hi = in_pct * rate / 100.0 if mod & 1 else math.inf
                    charge = min(max(charge, lo), hi) if lo <= hi else lo
                else:
                    if mod & 1:
                        charge = min(charge, in_pct * rate / 100.0)
                    if mod & 2:
                        charge = max(charge, -out_pct * rate / 100.0)
                goal = -charge
        goal = min(max(goal, -self.max_charge_w), self.max_discharge_w)
        if self.soc_pct >= 100.0:
            goal = max(goal, 0.0)
        if self.soc_pct <= 0.0:
            goal = min(goal, 0.0)
        return goal

    def _storage_written(self, names: AbstractSet[tuple[int, str]], now: float) -> None:
        if names & {(124, "StorCtl_Mod"), (124, "InOutWRte_RvrtTms")}:
            on = bool(self.get(124, "StorCtl_Mod"))
            self._storctl_timer.arm_for(now, on, self.get(124, "InOutWRte_RvrtTms"))
        if names & {(704, "WSetEna"), (704, "WSetRvrtTms")}:
            on = self.get(704, "WSetEna") == 1
            self._wset_timer.arm_for(now, on, self.get(704, "WSetRvrtTms"))

    def _storage_timers(self) -> tuple[_Timer, ...]:
        return (self._storctl_timer, self._wset_timer)

    def _advance_storage(self, dt: float) -> None:
        if dt <= 0:
            return
        start = self.power_w
        self.power_w = _lag(self.power_w, self.battery_target_w(), dt, self.tau_s)
        mean = (start + self.power_w) / 2.0
        wh = mean * dt / 3600.0
        if wh > 0:
            self.energy_out_wh += wh
        else:
            self.energy_in_wh -= wh
        self.soc_pct = min(max(self.soc_pct - wh / self.capacity_wh * 100.0, 0.0), 100.0)
        if (self.soc_pct >= 100.0 and self.power_w < 0) or (
            self.soc_pct <= 0.0 and self.power_w > 0
        ):
            self.power_w = 0.0  # the BMS stops it at once

    def _expire_storage(self, now: float) -> None:
        if self._storctl_timer.fire(now):
            self.set(124, "StorCtl_Mod", 0)
        if self._wset_timer.fire(now):
            self.set(704, "WSetEna", self.get(704, "WSetEnaRvrt") or 0)

    def _refresh_storage(self, now: float) -> None:
        """The storage models' readings (124, 713, 802, 704)."""
        w = self.power_w
        s = self.set_if
        cha_st = 4 if w < -10 else 3 if w > 10 else 5 if self.soc_pct >= 100 else 6
        if self.has(124):
            s(124, "ChaState", self.soc_pct)
            s(124, "ChaSt", cha_st)
        if self.has(713):
            s(713, "SoC", self.soc_pct)
            s(713, "WHAvail", self.capacity_wh * self.soc_pct / 100.0)
        if self.has(802):
            s(802, "SoC", self.soc_pct)
            s(802, "W", w)
            s(802, "ChaSt", cha_st)
        if self.has(704):
            s(704, "WSetRvrtRem", math.ceil(self._wset_timer.remaining(now)))


class Battery(_Storage):
    """An AC-coupled battery (its own battery inverter) with the storage models 124, 713, 802
    (and 704 WSet where present); see :class:`_Storage` for its behaviour. Its ``power_w`` is
    AC, what its model 103/701 W reports."""

    def __init__(
        self,
        base: int,
        models: Sequence[ModelSpec],
        *,
        capacity_wh: float,
        max_charge_w: float,
        max_discharge_w: float,
        soc_pct: float = 50.0,
        tau_s: float = 0.5,
        window: bool = False,
        voltage: float = 230.0,
    ) -> None:
        super().__init__(base, models)
        self._init_storage(
            capacity_wh=capacity_wh,
            max_charge_w=max_charge_w,
            max_discharge_w=max_discharge_w,
            soc_pct=soc_pct,
            window=window,
        )
        self.tau_s = tau_s
        self.voltage = voltage
        self._refresh(0.0)

    def value_limits(self) -> Mapping[tuple[int, str], tuple[float, float]]:
        return self._storage_limits()

    def target_w(self) -> float:
        """The power it heads for now (+ discharge), before its SoC bounds."""
        return self.battery_target_w()

    def on_write(self, names: AbstractSet[tuple[int, str]], now: float) -> None:
        self.step(now)
        self._storage_written(names, now)
        self._refresh(now)

    def _timers(self) -> tuple[_Timer, ...]:
        return self._storage_timers()

    def _advance(self, dt: float) -> None:
        self._advance_storage(dt)

    def _expire(self, now: float) -> None:
        self._expire_storage(now)

    def _refresh(self, now: float) -> None:
        w = self.power_w
        s = self.set_if
        for mid in INVERTER_MODELS:
            if self.has(mid):
                s(mid, "W", w)
                s(mid, "VA", abs(w))
                s(mid, "VAr", 0.0)
                s(mid, "Hz", 50.0)
                s(mid, "A", abs(w) / self.voltage)
                s(mid, "St", 4)
                s(mid, "WH", self.energy_out_wh)
        self._refresh_storage(now)


def mppt_storage_kind(label: Any) -> str | None:
    """ "charge"/"discharge" for a GEN24 model 160 module labelled ``StCha n``/``StDisCha n``."""
    if not isinstance(label, str):
        return None
    word = "".join(label.split()).casefold().rstrip("0123456789")
    return {"stcha": "charge", "stdischa": "discharge"}.get(word)


class Hybrid(Inverter, _Storage):
    """A DC-coupled hybrid inverter with its battery, as a Fronius GEN24 Plus: one unit, one AC
    output (models 10x/122/123) made of its PV and its battery, the storage controls of model
    124 (GEN24 window convention) and no model 802: the battery's DC power is in model 160's
    modules labelled ``StCha n`` (into the battery) and ``StDisCha n`` (out of it), the others
    being PV strings.

    ``output_w`` is the PV part of the AC output and ``power_w`` the battery's (+ discharge;
    the simulation counts no conversion loss, so the storage modules' DC power equals it), so
    the site counts each once. The 123 limit caps the AC output, PV plus battery: PV charging
    the battery is not held back by it, as on a GEN24 (the battery sits on the DC side)."""

    def __init__(
        self,
        base: int,
        models: Sequence[ModelSpec],
        *,
        capacity_wh: float,
        max_charge_w: float,
        max_discharge_w: float,
        soc_pct: float = 50.0,
        available_w: float = 0.0,
        tau_s: float = 1.0,
        window: bool = True,
    ) -> None:
        self._init_storage(
            capacity_wh=capacity_wh,
            max_charge_w=max_charge_w,
            max_discharge_w=max_discharge_w,
            soc_pct=soc_pct,
            window=window,
        )
        self.battery_fault = False
        """Its battery dropped out (a BMS fault, the battery's own breaker): it neither charges
        nor discharges, and model 160's storage modules and 124's ChaState read
        not-implemented, as a GEN24 reports a battery it cannot see. Set from outside."""
        super().__init__(base, models, available_w=available_w, tau_s=tau_s)

    def battery_target_w(self) -> float:
        return 0.0 if self.battery_fault else super().battery_target_w()

    def target_w(self) -> float:
        """The PV power it heads for: what the AC cap leaves beside the battery's power."""
        if not self.operating():
            return 0.0
        cap = min(self.rating_w(), self.limit_w()) - self.power_w
        return max(0.0, min(self.available(), cap))

    def value_limits(self) -> Mapping[tuple[int, str], tuple[float, float]]:
        return {**super().value_limits(), **self._storage_limits()}

    def on_write(self, names: AbstractSet[tuple[int, str]], now: float) -> None:
        super().on_write(names, now)
        self._storage_written(names, now)
        self._refresh(now)

    def _timers(self) -> tuple[_Timer, ...]:
        return (*super()._timers(), *self._storage_timers())

    def _advance(self, dt: float) -> None:
        self._advance_storage(dt)
        super()._advance(dt)

    def _expire(self, now: float) -> None:
        super()._expire(now)
        self._expire_storage(now)

    def _refresh(self, now: float) -> None:
        super()._refresh(now)
        ac = self.output_w + self.power_w
        for mid in INVERTER_MODELS:
            if self.has(mid):
                self.set_if(mid, "W", ac)
                self.set_if(mid, "VA", abs(ac))
        self._refresh_storage(now)
        if self.battery_fault and self.has(124):
            self.set(124, "ChaState", None)

    def _refresh_mppt(self, dc_w: float, state: int) -> None:
        n = int(self.get_raw(160, "N") or 0)
        labels = [self.get(160, f"module[{i}].IDStr") for i in range(n)]
        pv = [i for i, label in enumerate(labels) if mppt_storage_kind(label) is None]
        for i, label in enumerate(labels):
            kind = mppt_storage_kind(label)
            if kind is None:
                w = dc_w / len(pv)
            elif kind == "charge":
                w = max(-self.power_w, 0.0)
            else:
                w = max(self.power_w, 0.0)
            if kind is not None and self.battery_fault:
                self.set(160, f"module[{i}].DCW", None)  # the battery is not seen
                continue
            self.set_if(160, f"module[{i}].DCW", w)
            self.set_if(160, f"module[{i}].DCV", 300.0 if kind is None else 400.0)
            self.set_if(160, f"module[{i}].DCA", w / (300.0 if kind is None else 400.0))
            self.set_if(160, f"module[{i}].DCSt", state)
            if kind is None:
                self.set_if(160, f"module[{i}].DCWH", self.energy_wh / len(pv))
            elif kind == "charge":
                self.set_if(160, f"module[{i}].DCWH", self.energy_in_wh)
            else:
                self.set_if(160, f"module[{i}].DCWH", self.energy_out_wh)


class ControlError(ValueError):
    """A control-channel command the simulator cannot apply; the message says why."""


_SITE_KEYS = frozenset({"loadW", "loadVar", "hold"})
_DEVICE_KEYS = frozenset({"connected", "operating", "availableW"})


class Site:
    """Inverters and a meter on a load; the thread-safe façade the server talks to.

    Every public method takes the lock, so test threads may change the load or the available PV
    power while the server thread reads and writes registers.

    Simulated time is the clock passed in (``now``) minus the time spent on hold: while held
    (:meth:`hold`), nothing moves (energy counters, lags, revert timers), so two clients reading
    at different moments see the same registers.
    """

    def __init__(self, devices: Mapping[int, SunSpecDevice], *, load_w: float = 0.0) -> None:
        self.devices = dict(devices)
        self.load_w = load_w
        self.load_var = 0.0
        self.load_override: tuple[float, float] | None = None
        """Set through the control channel: wins over ``set_load`` (a demo's household)."""
        self.lock = threading.RLock()
        self._held_at: float | None = None
        self._held_total = 0.0
        self._measure(None)

    @property
    def inverters(self) -> dict[int, Inverter]:
        return {u: d for u, d in self.devices.items() if isinstance(d, Inverter)}

    @property
    def batteries(self) -> dict[int, Battery | Hybrid]:
        """Every battery: AC-coupled ones and hybrids' (a hybrid is an inverter too)."""
        return {u: d for u, d in self.devices.items() if isinstance(d, Battery | Hybrid)}

    @property
    def meters(self) -> dict[int, Meter]:
        return {u: d for u, d in self.devices.items() if isinstance(d, Meter)}

    def units(self) -> list[int]:
        return sorted(self.devices)

    # -- simulated time ---------------------------------------------------------------------

    @property
    def held(self) -> bool:
        return self._held_at is not None

    def hold(self, now: float) -> None:
        """Freezes simulated time at ``now`` (after stepping to it) until :meth:`release`."""
        with self.lock:
            if self._held_at is None:
                self.step(now)
                self._held_at = now

    def release(self, now: float) -> None:
        """Resumes simulated time where it was frozen."""
        with self.lock:
            if self._held_at is not None:
                self._held_total += max(0.0, now - self._held_at)
                self._held_at = None

    def _t(self, now: float) -> float:
        at = now if self._held_at is None else self._held_at
        return at - self._held_total

    # -- plant ------------------------------------------------------------------------------

    def step(self, now: float) -> None:
        with self.lock:
            t = self._t(now)
            for inverter in self.inverters.values():
                inverter.step(t)
            for battery in self.batteries.values():
                # Its own mode sees the site as it would be without it (its own CT).
                without = self._load()[0] - self._der_w() + battery.power_w
                battery.own_w = without if abs(without) > 20.0 else 0.0
                battery.step(t)
            self._measure(t)

    def _load(self) -> tuple[float, float]:
        if self.load_override is not None:
            return self.load_override
        return self.load_w, self.load_var

    def _der_w(self) -> float:
        """What the site makes: PV inverters and batteries (+ discharging)."""
        return sum(i.output_w for i in self.inverters.values()) + sum(
            b.power_w for b in self.batteries.values()
        )

    def _measure(self, now: float | None) -> None:
        pv = self._der_w()
        load_w, load_var = self._load()
        for meter in self.meters.values():
            meter.measure(load_w - pv, load_var, now)

    def read(self, unit: int, address: int, count: int) -> list[int]:
        with self.lock:
            return self.devices[unit].read(address, count)

    def write(self, unit: int, address: int, values: Sequence[int], now: float) -> None:
        with self.lock:
            self.step(now)
            self.devices[unit].write(address, values, self._t(now))
            self.step(now)

    def set_load(self, watts: float, var: float = 0.0) -> None:
        with self.lock:
            self.load_w = watts
            self.load_var = var

    def set_available(self, unit: int, watts: float) -> None:
        with self.lock:
            self.inverters[unit].available_w = watts

    def get(self, unit: int, model_id: int, path: str) -> Any:
        with self.lock:
            return self.devices[unit].get(model_id, path)

    def output_w(self, unit: int) -> float:
        with self.lock:
            return self.inverters[unit].output_w

    def site_w(self) -> float:
        """Grid power the meter would see now (import positive)."""
        with self.lock:
            return self._load()[0] - self._der_w()

    # -- control channel --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain-JSON view of the plant (what the control channel answers)."""
        with self.lock:
            load_w, load_var = self._load()
            return {
                "loadW": load_w,
                "loadVar": load_var,
                "siteW": self.site_w(),
                "held": self.held,
                "inverters": {
                    str(unit): {
                        "outputW": inv.output_w,
                        "availableW": inv.available(),
                        "connected": inv.connected(),
                        "tripped": inv.tripped,
                        "operating": inv.operating(),
                        "limitW": inv.limit_w() if math.isfinite(inv.limit_w()) else None,
                    }
                    for unit, inv in sorted(self.inverters.items())
                },
                "batteries": {
                    str(unit): {"powerW": b.power_w, "socPct": b.soc_pct}
                    for unit, b in sorted(self.batteries.items())
                },
            }

    def apply(self, command: Mapping[str, Any], now: float) -> dict[str, Any]:
        """Applies one control-channel command and returns the snapshot after it.

        ``{"set": {...}}`` with site keys ``loadW``/``loadVar`` (a number, or null to give the
        load back to ``set_load``) and ``hold`` (true freezes simulated time, false resumes it),
        and inverter keys ``connected`` (false: the inverter trips off the grid on its own),
        ``operating`` (false: it stops producing, still connected) and ``availableW`` (a number,
        or null). Inverter keys apply to ``"unit": N``, or to every inverter without a unit.
        Without ``set`` the command only asks for the snapshot. Raises ControlError naming the
        problem; nothing is changed then.
        """
        if not isinstance(command, Mapping):
            raise ControlError("a command must be a JSON object")
        unknown = set(command) - {"unit", "set"}
        if unknown:
            raise ControlError(f"unknown command fields {sorted(unknown)} (expected unit, set)")
        changes = command.get("set", {})
        if not isinstance(changes, Mapping):
            raise ControlError('"set" must be a JSON object')
        bad = set(changes) - _SITE_KEYS - _DEVICE_KEYS
        if bad:
            keys = sorted(_SITE_KEYS | _DEVICE_KEYS)
            raise ControlError(f"unknown settings {sorted(bad)} (known: {keys})")
        with self.lock:
            targets = self._targets(command.get("unit"), changes)
            load = self._check_load(changes)
            hold = changes.get("hold")
            if hold is not None and not isinstance(hold, bool):
                raise ControlError('"hold" must be true or false')
            conn = _flag(changes, "connected")
            oper = _flag(changes, "operating")
            avail = _number_or_null(changes, "availableW")
            # Every value is checked: apply.
            self.step(now)
            t = self._t(now)
            for inv in targets:
                if "availableW" in changes:
                    inv.available_override_w = avail
                inv.set_state(t, connected=conn, operating=oper)
            if load is not None:
                self.load_override = load[0]
            if hold is True:
                self.hold(now)
            elif hold is False:
                self.release(now)
            self.step(now)
            return self.snapshot()

    def _targets(self, unit: Any, changes: Mapping[str, Any]) -> list[Inverter]:
        if unit is None:
            return list(self.inverters.values()) if set(changes) & _DEVICE_KEYS else []
        if isinstance(unit, bool) or not isinstance(unit, int):
            raise ControlError('"unit" must be an integer Modbus unit id')
        if unit not in self.inverters:
            raise ControlError(
                f"no simulated inverter at unit {unit} (inverters: {sorted(self.inverters)})"
            )
        return [self.inverters[unit]]

    def _check_load(self, changes: Mapping[str, Any]) -> tuple[tuple[float, float] | None] | None:
        """None = leave the load alone; (None,) = clear the override; ((w, var),) = set it."""
        if "loadW" not in changes and "loadVar" not in changes:
            return None
        w = _number_or_null(changes, "loadW")
        var = _number_or_null(changes, "loadVar")
        if w is None and "loadW" in changes:
            return (None,)
        current = self._load()
        return ((current[0] if w is None else w, current[1] if var is None else var),)


def _flag(changes: Mapping[str, Any], key: str) -> bool | None:
    value = changes.get(key)
    if value is not None and not isinstance(value, bool):
        raise ControlError(f'"{key}" must be true or false')
    return value


def _number_or_null(changes: Mapping[str, Any], key: str) -> float | None:
    value = changes.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ControlError(f'"{key}" must be a finite number or null')
    return float(value)
