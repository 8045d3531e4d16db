"""Typed views of decoded models: small frozen dataclasses with plain Python attributes.

Controllers should not know that an inverter calls reactive power ``VAr`` in model 103 and
``Var`` in model 701; the views hide those spellings. Each ``from_points`` takes the scaled point
values of one model (a dict from :func:`decode_model` or a poll plan) and never raises on
missing points: unknown is None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dynexport.sunspec.decode import DecodedGroup, Value
from dynexport.sunspec.polling import DER_MEASUREMENT_MODEL, INVERTER_MODELS, METER_MODELS

Points = Mapping[str, Value]
Phases = tuple[float | None, float | None, float | None]
Quadrants = tuple[float | None, float | None, float | None, float | None]
"""Per-quadrant values Q1..Q4: Q1 generating and injecting var (over-excited), Q4 generating
and absorbing var (under-excited)."""


def _f(pts: Points, name: str) -> float | None:
    v = pts.get(name)
    return float(v) if isinstance(v, int | float) else None


def _i(pts: Points, name: str) -> int | None:
    v = pts.get(name)
    return v if isinstance(v, int) else None


def _s(pts: Points, name: str) -> str | None:
    v = pts.get(name)
    return v if isinstance(v, str) else None


def _ph(pts: Points, names: Sequence[str]) -> Phases:
    a, b, c = (_f(pts, n) for n in names)
    return (a, b, c)


def _first(*vs: float | None) -> float | None:
    return next((v for v in vs if v is not None), None)


def _quad(pts: Points, prefix: str) -> Quadrants:
    q1, q2, q3, q4 = (_f(pts, f"{prefix}{i}") for i in range(1, 5))
    return (q1, q2, q3, q4)


@dataclass(frozen=True)
class CommonInfo:
    """Model 1: who made the device (the manufacturer decides e.g. how to explain control)."""

    manufacturer: str | None
    model: str | None
    options: str | None
    version: str | None
    serial: str | None
    device_address: int | None

    @classmethod
    def from_points(cls, pts: Points) -> CommonInfo:
        return cls(
            _s(pts, "Mn"),
            _s(pts, "Md"),
            _s(pts, "Opt"),
            _s(pts, "Vr"),
            _s(pts, "SN"),
            _i(pts, "DA"),
        )


# Operating states of models 101-103/111-113 (St); 701 uses its own St/InvSt enums.
INVERTER_STATES = {
    1: "OFF",
    2: "SLEEPING",
    3: "STARTING",
    4: "MPPT",
    5: "THROTTLED",
    6: "SHUTTING_DOWN",
    7: "FAULT",
    8: "STANDBY",
}


@dataclass(frozen=True)
class InverterReading:
    """AC output of an inverter (models 101-103, 111-113 or 701). W positive = generating."""

    model_id: int
    w: float | None
    var: float | None
    va: float | None
    pf: float | None
    hz: float | None
    a: float | None
    phase_v: Phases
    phase_w: Phases
    st: int | None
    """Operating state: models 10x/11x use INVERTER_STATES; 701 uses 0 off / 1 on."""
    connected: bool | None
    """Grid connection state where the device reports it (701 ConnSt)."""
    dc_w: float | None = None
    throttle_pct: float | None = None
    available_w: float | None = None
    """Model 122 ``WAval`` (carried here by the fast plan): what the inverter could make now;
    the energy the limits curtailed is what it could make less what it made."""

    @property
    def state_name(self) -> str | None:
        if self.st is None:
            return None
        if self.model_id == DER_MEASUREMENT_MODEL:
            return {0: "OFF", 1: "ON"}.get(self.st)
        return INVERTER_STATES.get(self.st)

    @classmethod
    def from_points(cls, model_id: int, pts: Points) -> InverterReading:
        if model_id == DER_MEASUREMENT_MODEL:
            conn = _i(pts, "ConnSt")
            return cls(
                model_id=model_id,
                w=_f(pts, "W"),
                var=_f(pts, "Var"),
                va=_f(pts, "VA"),
                pf=_f(pts, "PF"),
                hz=_f(pts, "Hz"),
                a=_f(pts, "A"),
                phase_v=_ph(pts, ("VL1", "VL2", "VL3")),
                phase_w=_ph(pts, ("WL1", "WL2", "WL3")),
                st=_i(pts, "St"),
                connected=None if conn is None else conn == 1,
                throttle_pct=_f(pts, "ThrotPct"),
            )
        if model_id not in INVERTER_MODELS:
            raise ValueError(f"model {model_id} is not an inverter measurement model")
        return cls(
            model_id=model_id,
            w=_f(pts, "W"),
            var=_f(pts, "VAr"),
            va=_f(pts, "VA"),
            pf=_f(pts, "PF"),
            hz=_f(pts, "Hz"),
            a=_f(pts, "A"),
            phase_v=_ph(pts, ("PhVphA", "PhVphB", "PhVphC")),
            phase_w=(None, None, None),
            st=_i(pts, "St"),
            connected=None,
            dc_w=_f(pts, "DCW"),
            available_w=_f(pts, "WAval"),
        )


@dataclass(frozen=True)
class Nameplate:
    """Model 120: what the inverter is rated for."""

    der_type: int | None
    w_rtg: float | None
    va_rtg: float | None
    var_rtg: tuple[float | None, float | None, float | None, float | None]
    a_rtg: float | None
    wh_rtg: float | None
    max_cha_rte: float | None
    max_discha_rte: float | None
    pf_rtg: Quadrants = (None, None, None, None)
    """PFRtgQ1..Q4 as read (minimum PF per quadrant; some devices sign Q3/Q4 negative)."""

    @classmethod
    def from_points(cls, pts: Points) -> Nameplate:
        q = _quad(pts, "VArRtgQ")
        return cls(
            der_type=_i(pts, "DERTyp"),
            w_rtg=_f(pts, "WRtg"),
            va_rtg=_f(pts, "VARtg"),
            var_rtg=(q[0], q[1], q[2], q[3]),
            a_rtg=_f(pts, "ARtg"),
            wh_rtg=_f(pts, "WHRtg"),
            max_cha_rte=_f(pts, "MaxChaRte"),
            max_discha_rte=_f(pts, "MaxDisChaRte"),
            pf_rtg=_quad(pts, "PFRtgQ"),
        )


@dataclass(frozen=True)
class Settings:
    """Model 121: the installer's settings (WMax may be below the nameplate rating)."""

    w_max: float | None
    v_ref: float | None
    v_max: float | None
    v_min: float | None
    va_max: float | None
    w_gra: float | None
    ecp_nom_hz: float | None
    var_max: Quadrants = (None, None, None, None)
    """VArMaxQ1..Q4 as read (Q4, absorbing, is usually negative)."""
    pf_min: Quadrants = (None, None, None, None)
    """PFMinQ1..Q4 as read."""

    @classmethod
    def from_points(cls, pts: Points) -> Settings:
        return cls(
            w_max=_f(pts, "WMax"),
            v_ref=_f(pts, "VRef"),
            v_max=_f(pts, "VMax"),
            v_min=_f(pts, "VMin"),
            va_max=_f(pts, "VAMax"),
            w_gra=_f(pts, "WGra"),
            ecp_nom_hz=_f(pts, "ECPNomHz"),
            var_max=_quad(pts, "VArMaxQ"),
            pf_min=_quad(pts, "PFMinQ"),
        )


@dataclass(frozen=True)
class Status:
    """Model 122: extended status (connection bits, available power, active controls)."""

    pv_conn: int | None
    stor_conn: int | None
    ecp_conn: int | None
    w_aval: float | None
    var_aval: float | None
    act_wh: int | None
    st_act_ctl: int | None

    @property
    def connected(self) -> bool | None:
        """ECPConn bit 0: connected to the electric power system (the grid)."""
        return None if self.ecp_conn is None else bool(self.ecp_conn & 1)

    @classmethod
    def from_points(cls, pts: Points) -> Status:
        return cls(
            pv_conn=_i(pts, "PVConn"),
            stor_conn=_i(pts, "StorConn"),
            ecp_conn=_i(pts, "ECPConn"),
            w_aval=_f(pts, "WAval"),
            var_aval=_f(pts, "VArAval"),
            act_wh=_i(pts, "ActWh"),
            st_act_ctl=_i(pts, "StActCtl"),
        )


@dataclass(frozen=True)
class ImmediateControls:
    """Model 123: the classic immediate controls (connect, power limit, power factor, var)."""

    conn: int | None
    conn_win_tms: int | None
    conn_rvrt_tms: int | None
    w_max_lim_pct: float | None
    w_max_lim_pct_win_tms: int | None
    w_max_lim_pct_rvrt_tms: int | None
    w_max_lim_pct_rmp_tms: int | None
    w_max_lim_ena: int | None
    out_pf_set: float | None
    out_pf_set_ena: int | None
    w_max_lim_pct_sf: int | None = None
    """As read, even when outside -10..10 (then WMaxLimPct is None and control is refused)."""

    @property
    def limit_pct(self) -> float | None:
        """The active limit in percent of WMax, or None when disabled or unknown."""
        return self.w_max_lim_pct if self.w_max_lim_ena == 1 else None

    @property
    def connected(self) -> bool | None:
        return None if self.conn is None else self.conn == 1

    @classmethod
    def from_points(cls, pts: Points) -> ImmediateControls:
        return cls(
            conn=_i(pts, "Conn"),
            conn_win_tms=_i(pts, "Conn_WinTms"),
            conn_rvrt_tms=_i(pts, "Conn_RvrtTms"),
            w_max_lim_pct=_f(pts, "WMaxLimPct"),
            w_max_lim_pct_win_tms=_i(pts, "WMaxLimPct_WinTms"),
            w_max_lim_pct_rvrt_tms=_i(pts, "WMaxLimPct_RvrtTms"),
            w_max_lim_pct_rmp_tms=_i(pts, "WMaxLimPct_RmpTms"),
            w_max_lim_ena=_i(pts, "WMaxLim_Ena"),
            out_pf_set=_f(pts, "OutPFSet"),
            out_pf_set_ena=_i(pts, "OutPFSet_Ena"),
            w_max_lim_pct_sf=_i(pts, "WMaxLimPct_SF"),
        )


@dataclass(frozen=True)
class StorageControls:
    """Model 124: battery charge/discharge settings and state of charge."""

    w_cha_max: float | None
    cha_state_pct: float | None
    cha_st: int | None
    out_w_rte_pct: float | None
    in_w_rte_pct: float | None
    stor_ctl_mod: int | None
    min_rsv_pct: float | None

    @classmethod
    def from_points(cls, pts: Points) -> StorageControls:
        return cls(
            w_cha_max=_f(pts, "WChaMax"),
            cha_state_pct=_f(pts, "ChaState"),
            cha_st=_i(pts, "ChaSt"),
            out_w_rte_pct=_f(pts, "OutWRte"),
            in_w_rte_pct=_f(pts, "InWRte"),
            stor_ctl_mod=_i(pts, "StorCtl_Mod"),
            min_rsv_pct=_f(pts, "MinRsvPct"),
        )


@dataclass(frozen=True)
class MpptModule:
    id: int | None
    label: str | None
    dc_a: float | None
    dc_v: float | None
    dc_w: float | None
    dc_wh: float | None
    st: int | None


@dataclass(frozen=True)
class Mppt:
    """Model 160: per-string DC measurements."""

    modules: tuple[MpptModule, ...]

    @property
    def dc_w(self) -> float | None:
        ws = [m.dc_w for m in self.modules]
        return None if not ws or any(w is None for w in ws) else sum(w for w in ws if w)

    @classmethod
    def from_groups(cls, groups: Mapping[str, Sequence[DecodedGroup]]) -> Mppt:
        mods = []
        for g in groups.get("module", ()):
            p = g.points
            mods.append(
                MpptModule(
                    _i(p, "ID"),
                    _s(p, "IDStr"),
                    _f(p, "DCA"),
                    _f(p, "DCV"),
                    _f(p, "DCW"),
                    _f(p, "DCWH"),
                    _i(p, "DCSt"),
                )
            )
        return cls(tuple(mods))


@dataclass(frozen=True)
class MeterReading:
    """A SunSpec meter (201-204, 211-214) at the grid connection.

    ``site_w`` follows the project-wide convention: positive = import from the grid, negative =
    export. SunSpec meter models report W positive for power flowing from the grid into the
    site (import), so the value is taken as is; ``invert`` exists for meters wired backwards.
    """

    model_id: int
    site_w: float | None
    phase_w: Phases
    var: float | None
    phase_var: Phases
    phase_v: Phases
    hz: float | None
    import_wh: float | None = None
    """TotWhImp (TotWhExp for a meter read ``invert``ed): the energy imported; None where not
    implemented (absent, or 0: SunSpec's "not implemented" for an accumulator)."""
    export_wh: float | None = None
    energy_step_wh: float | None = None
    """The counters' resolution: 10^TotWh_SF, or a float32's step at their size (model 21x)."""

    @classmethod
    def from_points(cls, model_id: int, pts: Points, *, invert: bool = False) -> MeterReading:
        if model_id not in METER_MODELS:
            raise ValueError(f"model {model_id} is not a SunSpec meter model")
        sign = -1.0 if invert else 1.0

        def signed(v: float | None) -> float | None:
            return None if v is None else sign * v

        pw = _ph(pts, ("WphA", "WphB", "WphC"))
        pv = _ph(pts, ("PhVphA", "PhVphB", "PhVphC"))
        if model_id in (201, 211) and pv[0] is None:
            pv = (_f(pts, "PhV"), None, None)  # single phase meters may only fill PhV
        pvar = _ph(pts, ("VARphA", "VARphB", "VARphC"))
        imp_wh, exp_wh = _counter(pts, "TotWhImp"), _counter(pts, "TotWhExp")
        return cls(
            model_id=model_id,
            site_w=signed(_f(pts, "W")),
            phase_w=(signed(pw[0]), signed(pw[1]), signed(pw[2])),
            var=signed(_f(pts, "VAR")),
            phase_var=(signed(pvar[0]), signed(pvar[1]), signed(pvar[2])),
            phase_v=pv,
            hz=_f(pts, "Hz"),
            import_wh=exp_wh if invert else imp_wh,
            export_wh=imp_wh if invert else exp_wh,
            energy_step_wh=_energy_step(pts, imp_wh, exp_wh),
        )


def _counter(pts: Points, name: str) -> float | None:
    v = _f(pts, name)
    return v if v is not None and math.isfinite(v) and v > 0 else None


def _energy_step(pts: Points, imp_wh: float | None, exp_wh: float | None) -> float | None:
    sf = pts.get("TotWh_SF")
    if isinstance(sf, int) and not isinstance(sf, bool) and -10 <= sf <= 10:
        return 10.0**sf
    largest = max(imp_wh or 0.0, exp_wh or 0.0)
    if largest <= 0:
        return None
    # a float32 register's step at that size (an integer register: at least 1 Wh)
    return max(2.0 ** (math.floor(math.log2(largest)) - 23), 1.0)


@dataclass(frozen=True)
class DerCapacity:
    """Model 702: DER ratings (WMaxRtg) and settings (WMax).

    The PF points: 702 marks PFOvrExtRtg/PFUndExtRtg (and PFOvrExt/PFUndExt) "unused, use
    WOvrExtRtgPF/WUndExtRtgPF"; the ``WxxxPF`` point is read first, the old one as fallback.
    """

    w_max_rtg: float | None
    va_max_rtg: float | None
    var_max_inj_rtg: float | None
    v_nom_rtg: float | None
    a_max_rtg: float | None
    w_max: float | None
    va_max: float | None
    var_max_abs_rtg: float | None = None
    pf_ovr_ext_rtg: float | None = None
    pf_und_ext_rtg: float | None = None
    var_max_inj: float | None = None
    var_max_abs: float | None = None
    pf_ovr_ext: float | None = None
    pf_und_ext: float | None = None

    @classmethod
    def from_points(cls, pts: Points) -> DerCapacity:
        return cls(
            w_max_rtg=_f(pts, "WMaxRtg"),
            va_max_rtg=_f(pts, "VAMaxRtg"),
            var_max_inj_rtg=_f(pts, "VarMaxInjRtg"),
            v_nom_rtg=_f(pts, "VNomRtg"),
            a_max_rtg=_f(pts, "AMaxRtg"),
            w_max=_f(pts, "WMax"),
            va_max=_f(pts, "VAMax"),
            var_max_abs_rtg=_f(pts, "VarMaxAbsRtg"),
            pf_ovr_ext_rtg=_first(_f(pts, "WOvrExtRtgPF"), _f(pts, "PFOvrExtRtg")),
            pf_und_ext_rtg=_first(_f(pts, "WUndExtRtgPF"), _f(pts, "PFUndExtRtg")),
            var_max_inj=_f(pts, "VarMaxInj"),
            var_max_abs=_f(pts, "VarMaxAbs"),
            pf_ovr_ext=_first(_f(pts, "WOvrExtPF"), _f(pts, "PFOvrExt")),
            pf_und_ext=_first(_f(pts, "WUndExtPF"), _f(pts, "PFUndExt")),
        )


@dataclass(frozen=True)
class EnterService:
    """Model 703: whether the DER may (re)enter service."""

    es: int | None
    es_dly_tms: int | None
    es_rmp_tms: int | None

    @property
    def permitted(self) -> bool | None:
        return None if self.es is None else self.es == 1

    @classmethod
    def from_points(cls, pts: Points) -> EnterService:
        return cls(_i(pts, "ES"), _i(pts, "ESDlyTms"), _i(pts, "ESRmpTms"))


@dataclass(frozen=True)
class DerControls:
    """Model 704: DER AC controls, with per-function reversion."""

    w_max_lim_pct_ena: int | None
    w_max_lim_pct: float | None
    w_max_lim_pct_rvrt: float | None
    w_max_lim_pct_ena_rvrt: int | None
    w_max_lim_pct_rvrt_tms: int | None
    w_max_lim_pct_rvrt_rem: int | None
    w_set_ena: int | None
    w_set: float | None
    w_max_lim_pct_sf: int | None = None
    """As read, even when outside -10..10 (then WMaxLimPct is None and control is refused)."""

    @property
    def limit_pct(self) -> float | None:
        return self.w_max_lim_pct if self.w_max_lim_pct_ena == 1 else None

    @classmethod
    def from_points(cls, pts: Points) -> DerControls:
        return cls(
            w_max_lim_pct_ena=_i(pts, "WMaxLimPctEna"),
            w_max_lim_pct=_f(pts, "WMaxLimPct"),
            w_max_lim_pct_rvrt=_f(pts, "WMaxLimPctRvrt"),
            w_max_lim_pct_ena_rvrt=_i(pts, "WMaxLimPctEnaRvrt"),
            w_max_lim_pct_rvrt_tms=_i(pts, "WMaxLimPctRvrtTms"),
            w_max_lim_pct_rvrt_rem=_i(pts, "WMaxLimPctRvrtRem"),
            w_set_ena=_i(pts, "WSetEna"),
            w_set=_f(pts, "WSet"),
            w_max_lim_pct_sf=_i(pts, "WMaxLimPct_SF"),
        )


def rated_w(models: Mapping[int, Points]) -> float | None:
    """The inverter's rated power: 120 WRtg, else 702 WMaxRtg, else 121 WMax."""
    for mid, name in ((120, "WRtg"), (702, "WMaxRtg"), (121, "WMax")):
        v = _f(models.get(mid, {}), name)
        if v is not None and v > 0:
            return v
    return None


@dataclass(frozen=True)
class DerRatings:
    """What an inverter can do (or is set to) besides active power, as IEEE 2030.5 wants it:
    VA, var injected and var absorbed as positive magnitudes, minimum PF over- and
    under-excited as positive displacements in (0, 1]. None: the device does not say (or says
    something unusable: non-finite, zero, negative VA, a PF outside 0..1)."""

    va: float | None = None
    var_inj: float | None = None
    var_abs: float | None = None
    pf_over: float | None = None
    pf_under: float | None = None


NO_RATINGS = DerRatings()
"""A device that has said nothing (yet) about its ratings."""


def _mag(v: float | None) -> float | None:
    """A usable positive magnitude (sign dropped: 120 VArRtgQ4 is negative), else None."""
    if v is None or not math.isfinite(v) or v == 0:
        return None
    return abs(v)


def _va(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) and v > 0 else None


def _pf(v: float | None) -> float | None:
    """A usable minimum PF: |v| in (0, 1] (sign dropped: some devices sign Q4 negative)."""
    if v is None or not math.isfinite(v) or v == 0 or abs(v) > 1:
        return None
    return abs(v)


def der_ratings(nameplate: Nameplate | None, capacity: DerCapacity | None) -> DerRatings:
    """The DER's ratings: model 120 first, then 702 (the precedence ``rated_w`` uses), each
    point on its own. Q1 (injecting var, over-excited) and Q4 (absorbing, under-excited)."""
    n = nameplate
    c = capacity
    nq: Quadrants = (None,) * 4 if n is None else n.var_rtg
    npf: Quadrants = (None,) * 4 if n is None else n.pf_rtg
    return DerRatings(
        va=_first(_va(None if n is None else n.va_rtg), _va(None if c is None else c.va_max_rtg)),
        var_inj=_first(_mag(nq[0]), _mag(None if c is None else c.var_max_inj_rtg)),
        var_abs=_first(_mag(nq[3]), _mag(None if c is None else c.var_max_abs_rtg)),
        pf_over=_first(_pf(npf[0]), _pf(None if c is None else c.pf_ovr_ext_rtg)),
        pf_under=_first(_pf(npf[3]), _pf(None if c is None else c.pf_und_ext_rtg)),
    )


def der_set_limits(
    settings: Settings | None, capacity: DerCapacity | None, ratings: DerRatings
) -> DerRatings:
    """The DER's settings (121, then 702), else its ratings; never beyond a rating (a
    setting above the rating, or a PF below the rated minimum, is replaced by the rating)."""
    s = settings
    c = capacity
    sq: Quadrants = (None,) * 4 if s is None else s.var_max
    spf: Quadrants = (None,) * 4 if s is None else s.pf_min

    def cap(v: float | None, rating: float | None) -> float | None:
        if v is None:
            return rating
        return v if rating is None else min(v, rating)

    def floor(v: float | None, rating: float | None) -> float | None:
        if v is None:
            return rating
        return v if rating is None else max(v, rating)

    return DerRatings(
        va=cap(
            _first(_va(None if s is None else s.va_max), _va(None if c is None else c.va_max)),
            ratings.va,
        ),
        var_inj=cap(
            _first(_mag(sq[0]), _mag(None if c is None else c.var_max_inj)), ratings.var_inj
        ),
        var_abs=cap(
            _first(_mag(sq[3]), _mag(None if c is None else c.var_max_abs)), ratings.var_abs
        ),
        pf_over=floor(
            _first(_pf(spf[0]), _pf(None if c is None else c.pf_ovr_ext)), ratings.pf_over
        ),
        pf_under=floor(
            _first(_pf(spf[3]), _pf(None if c is None else c.pf_und_ext)), ratings.pf_under
        ),
    )


def site_ratings(per_inverter: Sequence[DerRatings]) -> DerRatings:
    """The site as one DER (CSIP-AUS reports multi-inverter sites as totals): VA and var
    summed, but only when every inverter says (a partial sum would overstate nothing but
    understate the site while claiming to be its rating, so it is None instead); the minimum
    PF is the least capable inverter's (the largest minimum), again only when all say."""

    def total(vals: Sequence[float | None]) -> float | None:
        if not vals or any(v is None for v in vals):
            return None
        return sum(v for v in vals if v is not None)

    def least_capable(vals: Sequence[float | None]) -> float | None:
        if not vals or any(v is None for v in vals):
            return None
        return max(v for v in vals if v is not None)

    rs = list(per_inverter)
    return DerRatings(
        va=total([r.va for r in rs]),
        var_inj=total([r.var_inj for r in rs]),
        var_abs=total([r.var_abs for r in rs]),
        pf_over=least_capable([r.pf_over for r in rs]),
        pf_under=least_capable([r.pf_under for r in rs]),
    )
