"""Device profiles for the simulator: realistic model chains of the devices we meet in the field.

Each profile returns a ``Site`` (devices keyed by Modbus unit id) ready to be served. Values are
plausible nameplate data, not copied from any vendor's map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from dynexport.sim.sunspec_device import Battery, Hybrid, Inverter, Meter, ModelSpec, Site

Control = Literal["123", "704", None]

_CONTROLS_123 = frozenset(
    {
        "Conn_WinTms",
        "Conn_RvrtTms",
        "Conn",
        "WMaxLimPct",
        "WMaxLimPct_WinTms",
        "WMaxLimPct_RvrtTms",
        "WMaxLimPct_RmpTms",
        "WMaxLim_Ena",
    }
)
_CONTROLS_704 = frozenset(
    {"WMaxLimPctEna", "WMaxLimPct", "WMaxLimPctRvrt", "WMaxLimPctEnaRvrt", "WMaxLimPctRvrtTms"}
)


def common(mn: str, md: str, sn: str, vr: str = "1.0.0", unit: int = 1) -> ModelSpec:
    return ModelSpec(1, {"Mn": mn, "Md": md, "Opt": "sim", "Vr": vr, "SN": sn, "DA": unit})


def inverter_measurements(float_model: bool, phases: int = 3) -> ModelSpec:
    """Model 101-103 (scaled integers) or 111-113 (float32) with plausible idle values."""
    model_id = (110 if float_model else 100) + phases
    values: dict[str, Any] = {"St": 2, "Evt1": 0, "Evt2": 0, "TmpCab": 35.0}
    for ph in ("A", "B", "C")[:phases]:
        values[f"PhVph{ph}"] = 230.0
    if not float_model:
        values.update(
            A_SF=-2, V_SF=-1, W_SF=0, Hz_SF=-2, VA_SF=0, VAr_SF=0, WH_SF=0,
            DCA_SF=-2, DCV_SF=-1, DCW_SF=0, Tmp_SF=-1,
        )  # fmt: skip
    return ModelSpec(model_id, values)


def nameplate_120(w_rtg: float) -> ModelSpec:
    return ModelSpec(
        120,
        {
            "DERTyp": 4,
            "WRtg_SF": 0, "WRtg": w_rtg,
            "VARtg_SF": 0, "VARtg": w_rtg,
            "VArRtg_SF": 0, "VArRtgQ1": w_rtg * 0.6, "VArRtgQ2": 0,
            "VArRtgQ3": 0, "VArRtgQ4": -w_rtg * 0.6,
            "ARtg_SF": -2, "ARtg": w_rtg / 230.0 / 3.0,
            "PFRtg_SF": -3, "PFRtgQ1": 0.8, "PFRtgQ2": 1.0, "PFRtgQ3": 1.0, "PFRtgQ4": -0.8,
        },
    )  # fmt: skip


def settings_121(w_max: float) -> ModelSpec:
    return ModelSpec(
        121,
        {
            "WMax_SF": 0, "WMax": w_max,
            "VRef_SF": -1, "VRef": 230.0,
            "VRefOfs_SF": 0, "VRefOfs": 0,
            "VMinMax_SF": -1, "VMax": 253.0, "VMin": 207.0,
            "VAMax_SF": 0, "VAMax": w_max,
            "ECPNomHz_SF": -2, "ECPNomHz": 50.0,
        },
    )  # fmt: skip


def status_122() -> ModelSpec:
    return ModelSpec(
        122,
        {"PVConn": 0, "StorConn": 0, "ECPConn": 1, "ActWh": 0, "WAval_SF": 0, "WAval": 0,
         "StActCtl": 0},
    )  # fmt: skip


def controls_123(*, optional: bool = True) -> ModelSpec:
    """Model 123; ``optional`` False: only the points SunSpec makes mandatory (no window, revert
    or ramp times, no Conn revert timer), as some inverters implement it."""
    values = {
        "Conn_WinTms": 0, "Conn_RvrtTms": 0, "Conn": 1,
        "WMaxLimPct_SF": -2, "WMaxLimPct": 100.0,
        "WMaxLimPct_WinTms": 0, "WMaxLimPct_RvrtTms": 0, "WMaxLimPct_RmpTms": 0,
        "WMaxLim_Ena": 0,
        "OutPFSet_SF": -3, "OutPFSet": 1.0, "OutPFSet_Ena": 0,
    }  # fmt: skip
    writable = _CONTROLS_123
    if not optional:
        values = {k: v for k, v in values.items() if not k.endswith("Tms")}
        writable = frozenset(n for n in writable if not n.endswith("Tms"))
    return ModelSpec(123, values, writable=writable)


def mppt_160(modules: int = 2, labels: tuple[str, ...] | None = None) -> ModelSpec:
    """Model 160 with ``modules`` PV strings, or one module per label (``labels``)."""
    names = labels if labels is not None else tuple(f"MPPT{i + 1}" for i in range(modules))
    values: dict[str, Any] = {
        "DCA_SF": -2, "DCV_SF": -1, "DCW_SF": 0, "DCWH_SF": 0, "Evt": 0, "N": len(names),
        "TmsPer": 0,
    }  # fmt: skip
    for i, name in enumerate(names):
        values.update(
            {f"module[{i}].ID": i + 1, f"module[{i}].IDStr": name,
             f"module[{i}].DCSt": 2, f"module[{i}].DCEvt": 0}
        )  # fmt: skip
    return ModelSpec(160, values, counts={"module": len(names)})


def sunspec_inverter(
    *,
    mn: str = "Fronius",
    md: str = "Symo 5.0-3-M",
    sn: str = "SIM0001",
    unit: int = 1,
    base: int = 40000,
    w_max: float = 5000.0,
    float_model: bool = False,
    phases: int = 3,
    control: bool = True,
    optional_controls: bool = True,
    mppt: bool = True,
    available_w: float = 0.0,
    tau_s: float = 1.0,
    order: str = "fronius",
) -> Inverter:
    """An inverter with the 1xx information models and (optionally) model 123 controls (with
    only the mandatory points when ``optional_controls`` is False)."""
    meas = inverter_measurements(float_model, phases)
    tail = [nameplate_120(w_max), settings_121(w_max), status_122()]
    if control:
        tail.append(controls_123(optional=optional_controls))
    if mppt:
        tail.append(mppt_160())
    models = [common(mn, md, sn, unit=unit)]
    models += [meas, *tail] if order == "fronius" else [*tail, meas]
    return Inverter(base, models, available_w=available_w, tau_s=tau_s)


def der_inverter(
    *,
    mn: str = "SunSpecSim",
    md: str = "DER-2018",
    sn: str = "SIM0701",
    unit: int = 1,
    base: int = 50000,
    w_max: float = 6000.0,
    available_w: float = 0.0,
    tau_s: float = 1.0,
    enter_service: bool = True,
) -> Inverter:
    """An inverter speaking the IEEE 1547-2018 DER models 701-704 (without 703 when
    ``enter_service`` is False: limits only, no connect control of any kind)."""
    m701 = ModelSpec(
        701,
        {
            "ACType": 2, "St": 1, "InvSt": 1, "ConnSt": 1, "Alrm": 0, "DERMode": 0,
            "A_SF": -2, "V_SF": -1, "Hz_SF": -2, "W_SF": 0, "PF_SF": -3, "VA_SF": 0,
            "Var_SF": 0, "TotWh_SF": 0, "TotVarh_SF": 0, "Tmp_SF": 0,
            "TotWhInj": 0, "TotWhAbs": 0, "TmpCab": 35, "PF": 1.0,
        },
    )  # fmt: skip
    m702 = ModelSpec(
        702,
        {
            "W_SF": 0, "PF_SF": -3, "VA_SF": 0, "Var_SF": 0, "V_SF": -1, "A_SF": -2,
            "WMaxRtg": w_max, "VAMaxRtg": w_max, "VarMaxInjRtg": w_max * 0.6,
            "VarMaxAbsRtg": w_max * 0.6, "WOvrExtRtgPF": 0.8, "WUndExtRtgPF": 0.8,
            "VNomRtg": 230.0, "VMaxRtg": 253.0, "VMinRtg": 207.0,
            "AMaxRtg": w_max / 230.0 / 3.0, "NorOpCatRtg": 1, "AbnOpCatRtg": 2,
            "WMax": w_max, "VAMax": w_max, "VNom": 230.0, "VMax": 253.0, "VMin": 207.0,
            "AMax": w_max / 230.0 / 3.0,
        },
    )  # fmt: skip
    m703 = ModelSpec(
        703,
        {
            "V_SF": -1, "Hz_SF": -2, "ES": 1, "ESVHi": 253.0, "ESVLo": 207.0,
            "ESHzHi": 50.15, "ESHzLo": 47.5, "ESDlyTms": 60, "ESRndTms": 0, "ESRmpTms": 360,
            "ESDlyRemTms": 0,
        },
        writable=frozenset({"ES"}),
    )  # fmt: skip
    m704 = ModelSpec(
        704,
        {
            "PF_SF": -3, "WMaxLimPct_SF": -2, "WSet_SF": 0, "WSetPct_SF": -2,
            "VarSet_SF": 0, "VarSetPct_SF": -2,
            "WMaxLimPctEna": 0, "WMaxLimPct": 100.0, "WMaxLimPctRvrt": 100.0,
            "WMaxLimPctEnaRvrt": 0, "WMaxLimPctRvrtTms": 0, "WMaxLimPctRvrtRem": 0,
        },
        writable=_CONTROLS_704,
    )  # fmt: skip
    models = [common(mn, md, sn, unit=unit), m701, m702, *([m703] if enter_service else []), m704]
    return Inverter(base, models, available_w=available_w, tau_s=tau_s)


def sunspec_meter(
    *,
    mn: str = "Fronius",
    md: str = "Smart Meter TS 65A-3",
    sn: str = "SIM0240",
    unit: int = 240,
    base: int = 40000,
    float_model: bool = False,
    phases: int = 3,
) -> Meter:
    """A grid meter: model 201-203 (scaled integers) or 211-213 (float32)."""
    model_id = (210 if float_model else 200) + phases
    values: dict[str, Any] = {"Evt": 0}
    if not float_model:
        values.update(A_SF=-2, V_SF=-1, Hz_SF=-2, W_SF=0, VA_SF=0, VAR_SF=0, PF_SF=-1, TotWh_SF=0)
    return Meter(base, [common(mn, md, sn, unit=unit), ModelSpec(model_id, values)])


_STORAGE_124 = frozenset(
    {"StorCtl_Mod", "InWRte", "OutWRte", "InOutWRte_WinTms", "InOutWRte_RvrtTms",
     "InOutWRte_RmpTms"}
)  # fmt: skip
_WSET_704 = frozenset({"WSetEna", "WSetMod", "WSet", "WSetEnaRvrt", "WSetRvrtTms"})


def storage_124(max_charge_w: float, soc_pct: float) -> ModelSpec:
    """Model 124 (basic storage controls), its controls writable."""
    return ModelSpec(
        124,
        {
            "WChaMax_SF": 0, "WChaMax": max_charge_w,
            "WChaDisChaGra_SF": 0, "WChaGra": 100, "WDisChaGra": 100,
            "StorCtl_Mod": 0, "VAChaMax_SF": 0, "VAChaMax": max_charge_w,
            "MinRsvPct_SF": 0, "MinRsvPct": 5,
            "ChaState_SF": -1, "ChaState": soc_pct,
            "StorAval_SF": 0, "StorAval": 0, "InBatV_SF": -1, "InBatV": 400.0, "ChaSt": 6,
            "InOutWRte_SF": -2, "OutWRte": 100.0, "InWRte": 100.0,
            "InOutWRte_WinTms": 0, "InOutWRte_RvrtTms": 0, "InOutWRte_RmpTms": 0,
            "ChaGriSet": 0,
        },
        writable=_STORAGE_124,
    )  # fmt: skip


def storage_713(capacity_wh: float, soc_pct: float) -> ModelSpec:
    """Model 713 (DER storage capacity)."""
    return ModelSpec(
        713,
        {"WH_SF": 0, "Pct_SF": -1, "WHRtg": capacity_wh, "WHAvail": capacity_wh * soc_pct / 100,
         "SoC": soc_pct, "SoH": 100.0, "Sta": 1},
    )  # fmt: skip


def battery(
    *,
    mn: str = "SunSpecSim",
    md: str = "AC Battery 10",
    sn: str = "SIMBAT01",
    unit: int = 3,
    base: int = 40000,
    capacity_wh: float = 10000.0,
    max_charge_w: float = 5000.0,
    max_discharge_w: float = 5000.0,
    soc_pct: float = 50.0,
    tau_s: float = 0.5,
    window: bool = False,
    wset: bool = False,
) -> Battery:
    """An AC-coupled battery: 1, 103 (its AC power, + discharge), 124, 713, 802, and 704 with
    WSet when ``wset``. ``window``: reads 124 InWRte/OutWRte as a GEN24 does (docs/sunspec.md).
    """
    m124 = storage_124(max_charge_w, soc_pct)
    m713 = storage_713(capacity_wh, soc_pct)
    m802 = ModelSpec(
        802,
        {
            "AHRtg_SF": 0, "WHRtg_SF": 0, "WChaDisChaMax_SF": 0, "DisChaRte_SF": 0,
            "SoC_SF": -1, "DoD_SF": 0, "SoH_SF": 0, "V_SF": -1, "CellV_SF": -3, "A_SF": -1,
            "AMax_SF": 0, "W_SF": 0,
            "AHRtg": round(capacity_wh / 400.0), "WHRtg": capacity_wh,
            "WChaRteMax": max_charge_w, "WDisChaRteMax": max_discharge_w,
            "SoCMax": 100.0, "SoCMin": 0.0, "SoC": soc_pct, "SoH": 100, "ChaSt": 6,
            "LocRemCtl": 1, "Typ": 4, "State": 3, "V": 400.0, "W": 0,
        },
    )  # fmt: skip
    models = [
        common(mn, md, sn, unit=unit),
        inverter_measurements(False, 1),
        m124,
        m713,
        m802,
    ]
    if wset:
        models.append(
            ModelSpec(
                704,
                {
                    "PF_SF": -3,
                    "WMaxLimPct_SF": -2,
                    "WSet_SF": 0,
                    "WSetPct_SF": -2,
                    "VarSet_SF": 0,
                    "VarSetPct_SF": -2,
                    "WSetEna": 0,
                    "WSetMod": 1,
                    "WSet": 0,
                    "WSetEnaRvrt": 0,
                    "WSetRvrtTms": 0,
                    "WSetRvrtRem": 0,
                },
                writable=_WSET_704,
            )
        )
    return Battery(
        base,
        models,
        capacity_wh=capacity_wh,
        max_charge_w=max_charge_w,
        max_discharge_w=max_discharge_w,
        soc_pct=soc_pct,
        tau_s=tau_s,
        window=window,
    )


GEN24_MODULES = ("MPPT 1", "MPPT 2", "StCha 3", "StDisCha 4")
"""Model 160's module labels on a Fronius GEN24 Plus with a battery (docs/sunspec.md, storage)."""


def gen24(
    *,
    md: str = "Symo GEN24 10.0 Plus",
    sn: str = "SIMGEN24",
    unit: int = 1,
    w_max: float = 10000.0,
    capacity_wh: float = 10240.0,
    max_charge_w: float = 5000.0,
    soc_pct: float = 50.0,
    available_w: float = 0.0,
    tau_s: float = 1.0,
    with_713: bool = False,
    labels: tuple[str, ...] = GEN24_MODULES,
) -> Hybrid:
    """A Fronius GEN24 Plus hybrid with its battery, laid out as the real one: 1, 103, 120,
    121, 122, 123, 160 (two PV strings, then the battery's ``StCha 3``/``StDisCha 4``), 124
    read the GEN24 way (window convention), 713 on newer firmware (``with_713``), no 802."""
    models = [
        common("Fronius", md, sn, vr="1.30.7-1", unit=unit),
        inverter_measurements(False),
        nameplate_120(w_max),
        settings_121(w_max),
        status_122(),
        controls_123(),
        mppt_160(labels=labels),
        storage_124(max_charge_w, soc_pct),
        *([storage_713(capacity_wh, soc_pct)] if with_713 else []),
    ]
    return Hybrid(
        40000,
        models,
        capacity_wh=capacity_wh,
        max_charge_w=max_charge_w,
        max_discharge_w=max_charge_w,
        soc_pct=soc_pct,
        available_w=available_w,
        tau_s=tau_s,
        window=True,
    )


# -- profiles -------------------------------------------------------------------------------------


def fronius_gateway(
    *,
    float_inverters: bool = False,
    float_meter: bool = False,
    load_w: float = 1500.0,
    tau_s: float = 1.0,
) -> Site:
    """A Fronius Datamanager: inverters at units 1 and 2, the feed-in meter at unit 240."""
    inv1 = sunspec_inverter(
        unit=1, sn="SIMFR0001", w_max=5000.0, float_model=float_inverters,
        available_w=4000.0, tau_s=tau_s,
    )  # fmt: skip
    inv2 = sunspec_inverter(
        unit=2, md="Symo 8.2-3-M", sn="SIMFR0002", w_max=8200.0, float_model=float_inverters,
        available_w=6000.0, tau_s=tau_s,
    )  # fmt: skip
    meter = sunspec_meter(float_model=float_meter)
    return _site({1: inv1, 2: inv2, 240: meter}, load_w)


def sma_like(*, float_model: bool = False, tau_s: float = 1.0) -> Site:
    """An SMA-style inverter alone at unit 126, controls before the measurement model."""
    inv = sunspec_inverter(
        mn="SMA", md="STP 6.0-3AV-40", sn="SIMSMA126", unit=126, w_max=6000.0,
        float_model=float_model, available_w=5000.0, tau_s=tau_s, order="sma",
    )  # fmt: skip
    return _site({126: inv}, 0.0)


def der2018_inverter(*, tau_s: float = 1.0, load_w: float = 1000.0) -> Site:
    """An IEEE 1547-2018 inverter (models 1, 701-704, base 50000) plus a float meter."""
    inv = der_inverter(available_w=5000.0, tau_s=tau_s)
    return _site({1: inv, 240: sunspec_meter(float_model=True, mn="SunSpecSim")}, load_w)


def mandatory_controls_inverter(*, tau_s: float = 1.0) -> Site:
    """An inverter whose model 123 has only SunSpec's mandatory points: no limit window, ramp
    or revert timer (a limit stays in force until written again), no Conn revert timer."""
    inv = sunspec_inverter(sn="SIMMAND1", available_w=4000.0, tau_s=tau_s, optional_controls=False)
    return _site({1: inv, 240: sunspec_meter()}, 1000.0)


def no_control_inverter(*, tau_s: float = 1.0) -> Site:
    """A Fronius inverter whose 'control via Modbus' is off, so model 123 is absent."""
    inv = sunspec_inverter(sn="SIMNOCTL", available_w=4000.0, control=False, tau_s=tau_s)
    return _site({1: inv}, 0.0)


def base0_device(*, tau_s: float = 1.0) -> Site:
    """A device whose SunSpec map starts at register 0."""
    inv = sunspec_inverter(
        mn="Base0", md="Zero", sn="SIMBASE0", base=0, available_w=3000.0, mppt=False, tau_s=tau_s
    )
    return _site({1: inv}, 0.0)


def float_inverter(*, tau_s: float = 1.0) -> Site:
    """A float-model (113) inverter with a float meter (213)."""
    inv = sunspec_inverter(sn="SIMFLT01", float_model=True, available_w=4000.0, tau_s=tau_s)
    return _site({1: inv, 240: sunspec_meter(float_model=True)}, 500.0)


def single_phase_int(*, tau_s: float = 1.0) -> Site:
    """A single-phase integer inverter (101) with a single-phase integer meter (201)."""
    inv = sunspec_inverter(
        md="Primo 3.0-1", sn="SIMSP01", w_max=3000.0, phases=1, available_w=2500.0, tau_s=tau_s
    )
    return _site({1: inv, 240: sunspec_meter(phases=1)}, 800.0)


def fronius_battery_site(*, tau_s: float = 1.0, soc_pct: float = 50.0, window: bool = True) -> Site:
    """The Fronius gateway (inverters 1 and 2, meter 240) with an AC-coupled battery at unit 3
    that reads model 124 the GEN24 way (``window``)."""
    site = fronius_gateway(tau_s=tau_s)
    # a GEN24-like battery says it is a Fronius, so a setup scan proposes the GEN24 convention
    site.devices[3] = battery(
        soc_pct=soc_pct, window=window, mn="Fronius" if window else "SunSpecSim"
    )
    return site


def fronius_gen24_site(
    *, tau_s: float = 1.0, soc_pct: float = 50.0, load_w: float = 1000.0, with_713: bool = False
) -> Site:
    """A Fronius GEN24 Plus hybrid with a 10 kWh battery at unit 1 (10 kW, 9 kW of sun) and
    its smart meter at unit 200, as a GEN24 numbers them."""
    inv = gen24(soc_pct=soc_pct, available_w=9000.0, tau_s=tau_s, with_713=with_713)
    meter = sunspec_meter(md="Smart Meter TS 65A-3", sn="SIMGEN200", unit=200)
    return _site({1: inv, 200: meter}, load_w)


def _site(devices: dict[int, Inverter | Meter | Battery], load_w: float) -> Site:
    return Site(dict(devices), load_w=load_w)


PROFILES: dict[str, Callable[[], Site]] = {
    "fronius_gateway": fronius_gateway,
    "fronius_gateway_float": lambda: fronius_gateway(float_inverters=True, float_meter=True),
    "sma_like": sma_like,
    "der2018_inverter": der2018_inverter,
    "no_control_inverter": no_control_inverter,
    "mandatory_controls_inverter": mandatory_controls_inverter,
    "base0_device": base0_device,
    "float_inverter": float_inverter,
    "single_phase_int": single_phase_int,
    "fronius_battery_site": fronius_battery_site,
    "fronius_gen24_site": fronius_gen24_site,
}
