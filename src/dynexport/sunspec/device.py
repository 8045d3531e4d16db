"""The async adapter: one SunSpec device (a unit on a Modbus bus) that can be discovered, read,
polled and commanded. All protocol decisions live in the pure modules; this only does the reads
and writes they ask for."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dynexport.modbus.errors import ModbusExceptionResponse
from dynexport.sunspec import control
from dynexport.sunspec.bus import RegisterBus
from dynexport.sunspec.control import LimitCommand, RegisterWrite
from dynexport.sunspec.decode import DecodedModel, RegisterImage, Value, check_header, decode_model
from dynexport.sunspec.discovery import DEFAULT_BASES, ModelHeader, ReadRequest, SunSpecMap
from dynexport.sunspec.discovery import discover as _discover
from dynexport.sunspec.models import model_def
from dynexport.sunspec.polling import (
    CONTROL_MODELS,
    INVERTER_MODELS,
    METER_MODELS,
    PollPlan,
    fast_plan,
    full_model_reads,
    slow_plan,
)
from dynexport.sunspec.views import (
    NO_RATINGS,
    CommonInfo,
    DerCapacity,
    DerControls,
    DerRatings,
    ImmediateControls,
    InverterReading,
    MeterReading,
    Nameplate,
    Settings,
    Status,
    der_ratings,
    der_set_limits,
    rated_w,
)

log = logging.getLogger("dynexport.sunspec")


class VerifyError(Exception):
    """A command was written but does not read back as written."""


@dataclass(frozen=True)
class FastReading:
    inverter: InverterReading | None
    meter: MeterReading | None
    connected: bool | None = None
    """Grid connection as the inverter reports it: 701 ConnSt, else 122 ECPConn bit 0, else
    123 Conn; None when the device says nothing about it."""
    limit_read: bool = False
    """The control model's limit was read (``limit_pct`` says what it is)."""
    limit_pct: float | None = None
    """The limit in force as read (704, else 123): None when disabled or unknown."""


@dataclass(frozen=True)
class SlowReading:
    common: CommonInfo | None
    nameplate: Nameplate | None
    settings: Settings | None
    capacity: DerCapacity | None
    controls: ImmediateControls | None
    der_controls: DerControls | None
    rated_w: float | None
    w_max: float | None
    """What WMaxLimPct is a percent of: 121 WMax, else 702 WMax, else the rating."""
    status: Status | None = None
    connect_control: bool = False
    """Model 123 implements Conn and Conn_RvrtTms: the inverter can be opened for real."""
    ratings: DerRatings = NO_RATINGS
    """VA, var and PF ratings (120, else 702): reported to the utility as DERCapability."""
    set_limits: DerRatings = NO_RATINGS
    """The same from the settings (121, else 702), else the ratings: DERSettings."""

    @property
    def limit_pct(self) -> float | None:
        if self.der_controls is not None:
            return self.der_controls.limit_pct
        return None if self.controls is None else self.controls.limit_pct

    @property
    def limit_sf(self) -> int | None:
        """WMaxLimPct_SF of the control model (704 first, as limits go through it), as read."""
        if self.der_controls is not None:
            return self.der_controls.w_max_lim_pct_sf
        return None if self.controls is None else self.controls.w_max_lim_pct_sf


@dataclass(frozen=True)
class LimitResult:
    model_id: int
    writes: tuple[RegisterWrite, ...]
    readback: dict[str, Value]
    """Scaled values of the control model after the write."""
    revert_timer: bool = True
    """The device implements the limit's revert timer (written with it). False: the limit
    written stays in force until written again, also if this appliance stops."""


class SunSpecDevice:
    """A SunSpec device at ``unit`` on ``bus``. Call :meth:`discover` first."""

    def __init__(
        self,
        bus: RegisterBus,
        unit: int,
        *,
        request_timeout: float | None = None,
        meter_invert: bool = False,
    ) -> None:
        if not 0 <= unit <= 255:
            raise ValueError(f"unit {unit} must be 0..255")
        self.bus = bus
        self.unit = unit
        self.request_timeout = request_timeout
        self.meter_invert = meter_invert
        self._map: SunSpecMap | None = None
        self._fast: PollPlan | None = None
        self._slow: PollPlan | None = None
        self._implemented: set[str] = set()
        """Optional control points (``control.WRITTEN_WHERE_IMPLEMENTED``) read as implemented
        since discovery: written from then on, even if one read says "not implemented" (a
        device still booting read its revert timer as 0xFFFF, and the limit went without it)."""
        self.common: CommonInfo | None = None

    @property
    def discovered(self) -> bool:
        return self._map is not None

    @property
    def map(self) -> SunSpecMap:
        if self._map is None:
            raise RuntimeError(f"unit {self.unit}: discover() has not run")
        return self._map

    @property
    def fast_poll_plan(self) -> PollPlan:
        if self._fast is None:
            raise RuntimeError(f"unit {self.unit}: discover() has not run")
        return self._fast

    @property
    def slow_poll_plan(self) -> PollPlan:
        if self._slow is None:
            raise RuntimeError(f"unit {self.unit}: discover() has not run")
        return self._slow

    @property
    def is_inverter(self) -> bool:
        return any(m in INVERTER_MODELS or m == 701 for m in self.map.ids)

    @property
    def is_meter(self) -> bool:
        return any(m in METER_MODELS for m in self.map.ids)

    async def discover(self, bases: Sequence[int] = DEFAULT_BASES) -> SunSpecMap:
        smap = await _discover(
            self.bus, self.unit, bases=bases, request_timeout=self.request_timeout
        )
        self._map = smap
        self._fast = fast_plan(smap)
        self._slow = slow_plan(smap)
        self._implemented = set()
        common = smap.find(1)
        if common is not None:
            self.common = CommonInfo.from_points((await self.read_model(common)).points)
        return smap

    async def _read(self, reads: Sequence[ReadRequest]) -> RegisterImage:
        img = RegisterImage()
        for r in reads:
            regs = await self.bus.read_holding_registers(
                self.unit, r.address, r.count, timeout=self.request_timeout
            )
            if len(regs) != r.count:
                raise ValueError(
                    f"unit {self.unit}: asked {r.count} registers at {r.address}, got {len(regs)}"
                )
            img.put(r.address, regs)
        return img

    async def read_model(self, header: ModelHeader) -> DecodedModel:
        img = await self._read(full_model_reads(header))
        regs = img.get(header.address, header.length + 2)
        assert regs is not None
        check_header(header.id, header.length, header.address, regs)  # before a write too
        return decode_model(model_def(header.id), header.address, regs)

    async def read_all(self) -> list[DecodedModel]:
        return [await self.read_model(h) for h in self.map.models]

    async def read_plan(self, plan: PollPlan) -> dict[int, dict[str, Value]]:
        return plan.decode(await self._read(plan.reads))

    async def poll_fast(self) -> FastReading:
        values = await self.read_plan(self.fast_poll_plan)
        inv = met = None
        for mid, pts in values.items():
            if mid in INVERTER_MODELS or mid == 701:
                inv = InverterReading.from_points(mid, pts)
            elif mid in METER_MODELS:
                met = MeterReading.from_points(mid, pts, invert=self.meter_invert)
        connected = None if inv is None else inv.connected
        if connected is None and 122 in values:
            connected = Status.from_points(values[122]).connected
        if connected is None and 123 in values:
            connected = ImmediateControls.from_points(values[123]).connected
        limit_read, limit_pct = False, None
        if 704 in values:
            limit_read, limit_pct = True, DerControls.from_points(values[704]).limit_pct
        elif 123 in values and "WMaxLim_Ena" in values[123]:
            limit_read, limit_pct = True, ImmediateControls.from_points(values[123]).limit_pct
        return FastReading(inv, met, connected, limit_read, limit_pct)

    async def poll_slow(self) -> SlowReading:
        v = await self.read_plan(self.slow_poll_plan)
        for mid in CONTROL_MODELS:
            self.note_implemented(v.get(mid) or {})

        settings = Settings.from_points(v[121]) if 121 in v else None
        cap = DerCapacity.from_points(v[702]) if 702 in v else None
        rated = rated_w(v)
        w_max = (settings.w_max if settings else None) or (cap.w_max if cap else None) or rated
        common = CommonInfo.from_points(v[1]) if 1 in v else self.common
        nameplate = Nameplate.from_points(v[120]) if 120 in v else None
        ratings = der_ratings(nameplate, cap)
        return SlowReading(
            common=common,
            nameplate=nameplate,
            settings=settings,
            capacity=cap,
            controls=ImmediateControls.from_points(v[123]) if 123 in v else None,
            der_controls=DerControls.from_points(v[704]) if 704 in v else None,
            rated_w=rated,
            w_max=w_max,
            status=Status.from_points(v[122]) if 122 in v else None,
            connect_control=control.has_connect_control(v.get(123)),
            ratings=ratings,
            set_limits=der_set_limits(settings, cap, ratings),
        )

    @property
    def manufacturer(self) -> str | None:
        return None if self.common is None else self.common.manufacturer

    def control_model(self) -> ModelHeader:
        """704 or 123; raises NotControllableError naming the likely cause."""
        return control.control_model(self.map, self.manufacturer)

    async def _write(self, writes: Sequence[RegisterWrite]) -> None:
        for w in writes:
            await self.bus.write_registers(
                self.unit, w.address, w.values, timeout=self.request_timeout
            )

    def revert_timer_seen(self) -> bool:
        """The control model's limit revert timer has read as implemented since discovery."""
        header = self.map.first_of(CONTROL_MODELS)
        return header is not None and control.REVERT_TIMERS[header.id] in self._implemented

    def note_implemented(self, raw: Mapping[str, Value]) -> None:
        """Notes the optional control points ``raw`` (a control model's raw values, as read)
        shows implemented."""
        self._implemented.update(
            n for n in control.WRITTEN_WHERE_IMPLEMENTED if raw.get(n) is not None
        )

    async def set_limit(self, cmd: LimitCommand) -> LimitResult:
        """Write a generation limit (or clear it), rounded down to the register step, then verify
        it by reading it back. A scale factor outside -10..10 raises InvalidScaleFactorError
        (a NotControllableError) before anything is written."""
        header = self.control_model()
        before = await self.read_model(header)
        sf = before.raw.get("WMaxLimPct_SF")
        control.limit_sf(sf)
        self.note_implemented(before.raw)
        implemented = {**before.raw, **dict.fromkeys(self._implemented, 0)}
        values = control.implemented_only(control.limit_values(header, sf, cmd), implemented)
        mdef = model_def(header.id)
        assert mdef is not None
        writes = control.encode_writes(mdef, header, values)
        # written only because an earlier read showed them implemented: if the device refuses
        # them (or reads them "not implemented" after), that read was the odd one
        latched = {n for n in values if n in self._implemented and before.raw.get(n) is None}
        try:
            await self._write(writes)
        except ModbusExceptionResponse:
            self._implemented -= latched
            raise
        after = await self.read_model(header)
        problems = control.verify(values, after.raw)
        if problems:
            self._implemented -= {n for n in latched if after.raw.get(n) is None}
            raise VerifyError(
                f"unit {self.unit} model {header.id}: limit did not read back: "
                + "; ".join(problems)
            )
        log.debug(
            "unit %d: limit %s via model %d (revert %d s)",
            self.unit,
            "cleared" if cmd.pct is None else f"{cmd.pct:g}%",
            header.id,
            cmd.revert_s,
        )
        timer = implemented.get(control.REVERT_TIMERS[header.id]) is not None
        return LimitResult(header.id, writes, dict(after.points), timer)

    async def set_limit_watts(
        self, watts: float, *, revert_s: int = control.DEFAULT_REVERT_S
    ) -> LimitResult:
        slow = await self.poll_slow()
        pct = control.watts_to_pct(watts, slow.w_max)
        return await self.set_limit(LimitCommand(pct=pct, revert_s=revert_s))

    async def set_connected(
        self, connect: bool, *, revert_s: int = control.DEFAULT_REVERT_S
    ) -> dict[str, Value]:
        """Connect or disconnect through model 123 Conn with its revert timer (Conn_RvrtTms),
        verified by reading it back. NotControllableError when the device has no model 123:
        then only a 0 % limit can stop its output (see ``control``)."""
        header = control.connect_model(self.map)
        if header is None:
            raise control.NotControllableError(
                f"unit {self.unit}: no connect control (model 123 Conn) among models "
                f"{self.map.ids}; disconnect is done by a 0 % limit"
            )
        values = control.connect_values(header, connect, revert_s)
        mdef = model_def(header.id)
        assert mdef is not None
        await self._write(control.encode_writes(mdef, header, values))
        after = await self.read_model(header)
        problems = control.verify(values, after.raw)
        if problems:
            raise VerifyError(f"unit {self.unit} model {header.id}: " + "; ".join(problems))
        log.debug(
            "unit %d: %s via model 123 Conn (revert %d s)",
            self.unit,
            "connected" if connect else "opened",
            revert_s,
        )
        return dict(after.points)
