"""A Fronius GEN24 Plus hybrid's battery: its power from model 160's ``StCha``/``StDisCha``
modules (it has no model 802), decoded through the storage poll plan; controlled through model
124 (GEN24 window convention) against the simulated GEN24, a real pymodbus peer on 127.0.0.1."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.modbus.client import BusPool
from dynexport.modbus.endpoints import TcpEndpoint
from dynexport.sim.modbus_server import serve_tcp
from dynexport.sim.profiles import fronius_gen24_site, gen24
from dynexport.sim.sunspec_device import Hybrid, Site
from dynexport.sunspec.decode import RegisterImage, Value
from dynexport.sunspec.discovery import ModelHeader, SunSpecMap
from dynexport.sunspec.links import BatteryDesired, BatteryLink
from dynexport.sunspec.models import model_def
from dynexport.sunspec.polling import storage_plan
from dynexport.sunspec.storage import (
    RATING_SLACK,
    StorageConvention,
    StorageReading,
    mppt_module_kind,
    not_controllable_reason,
    read_storage,
)

BASE = 40002
FIXED = 10  # ID, L and model 160's 8 top-level registers
MODULE = 20  # registers per module
M124 = {"WChaMax": 5000.0, "ChaState": 55.0, "StorCtl_Mod": 0}


def _string(text: str) -> list[int]:
    raw = text.encode("utf-8")[:16].ljust(16, b"\0")
    return list(struct.unpack(">8H", raw))


def registers_160(
    modules: Sequence[tuple[str, int]], *, dcw_sf: int = 0, n: int | None = None
) -> list[int]:
    """Model 160 as a device holds it: ID, L, the scale factors, N, then one 20-register block
    per module (ID, IDStr, DCA, DCV, DCW, ...), values raw."""
    mdef = model_def(160)
    assert mdef is not None
    regs = [160, 8 + MODULE * len(modules), 0xFFFE, 0xFFFF, dcw_sf & 0xFFFF, 0, 0, 0]
    regs += [len(modules) if n is None else n, 0]
    for i, (label, dcw) in enumerate(modules):
        block = [i + 1, *_string(label), 0xFFFF, 0xFFFF, dcw & 0xFFFF, 0, 0, 0, 0, 0, 0xFFFF, 0, 0]
        assert len(block) == MODULE
        regs += block
    assert len(regs) == regs[1] + 2
    return regs


def decode_160(regs: Sequence[int]) -> dict[str, Value]:
    """Model 160's points as the battery link gets them: through the storage poll plan."""
    plan = storage_plan(SunSpecMap(BASE - 2, (ModelHeader(160, BASE, len(regs) - 2),)))
    image = RegisterImage()
    for r in plan.reads:
        image.put(r.address, regs[r.address - BASE : r.address - BASE + r.count])
    return plan.decode(image)[160]


def reading(regs: Sequence[int], m124: dict[str, Value] | None = None) -> StorageReading:
    models: dict[int, dict[str, Value]] = {103: {"W": 7000.0}, 124: dict(m124 or M124)}
    models[160] = decode_160(regs)
    return read_storage(models, ac_coupled=False)


def gen24_modules(charge: int, discharge: int) -> list[tuple[str, int]]:
    return [("MPPT 1", 3100), ("MPPT 2", 2900), ("StCha 3", charge), ("StDisCha 4", discharge)]


# --- pure decoding ---------------------------------------------------------------------------


def test_charging_reads_negative_and_discharging_positive_whatever_the_pv_strings_make() -> None:
    charging = reading(registers_160(gen24_modules(2400, 0)))
    assert charging.power_w == -2400.0 and charging.power_source == "160 StCha/StDisCha"
    assert charging.controllable
    assert reading(registers_160(gen24_modules(0, 1800))).power_w == 1800.0
    idle = reading(registers_160(gen24_modules(0, 0)))
    assert idle.power_w == 0.0 and idle.controllable


def test_the_dcw_scale_factor_is_applied() -> None:
    assert reading(registers_160(gen24_modules(24, 0), dcw_sf=2)).power_w == -2400.0
    assert reading(registers_160(gen24_modules(0, 18005), dcw_sf=-1)).power_w == 1800.5


def test_modules_are_found_by_label_in_any_case_spacing_number_or_position() -> None:
    for cha, dis in (
        ("stcha 3", "STDISCHA 4"),
        ("  StCha3 ", "StDisCha  9"),
        ("StCha", "StDisCha"),
    ):
        mods = [(dis, 700), ("MPPT 1", 3000), (cha, 0), ("MPPT 2", 2000)]  # not at 3 and 4
        assert reading(registers_160(mods)).power_w == 700.0, (cha, dis)
    assert mppt_module_kind("StCha 3") == "stcha" and mppt_module_kind("StDisCha 4") == "stdischa"
    assert mppt_module_kind("MPPT 1") is None and mppt_module_kind("StChaX 3") is None
    assert mppt_module_kind(None) is None and mppt_module_kind("3") is None


def test_no_storage_modules_or_ambiguous_ones_give_no_power_never_a_position_guess() -> None:
    """A PV-only 160 (labels MPPT 1..4) has modules 3 and 4 too: they are not a battery."""
    pv_only = reading(registers_160([(f"MPPT {i}", 2000) for i in range(1, 5)]))
    assert pv_only.power_w is None and not pv_only.controllable
    assert pv_only.power_problem == "model 160 has no module labelled StCha"
    twice = reading(registers_160([*gen24_modules(100, 0), ("StCha 5", 100)]))
    assert twice.power_w is None and twice.power_problem == "model 160 has 2 modules labelled StCha"
    no_dis = reading(registers_160(gen24_modules(100, 0)[:3]))
    assert no_dis.power_w is None and "no module labelled StDisCha" in (no_dis.power_problem or "")


def test_unimplemented_values_and_scale_factors_give_no_power() -> None:
    assert reading(registers_160(gen24_modules(0xFFFF, 0))).power_w is None  # DCW not impl.
    assert reading(registers_160(gen24_modules(0, 0xFFFF))).power_w is None
    for bad_sf in (-0x8000, 11, -11, 400):  # unimplemented, and outside SunSpec's -10..10
        r = reading(registers_160(gen24_modules(1000, 0), dcw_sf=bad_sf))
        assert r.power_w is None and "DCW_SF" in (r.power_problem or ""), bad_sf


def test_a_count_that_disagrees_or_a_power_beyond_the_rating_gives_no_power() -> None:
    assert reading(registers_160(gen24_modules(1000, 0), n=5)).power_w is None
    beyond = reading(registers_160(gen24_modules(0, 9000)))  # 9 kW from a 5 kW battery
    assert beyond.power_w is None and "beyond the battery's 5000 W" in (beyond.power_problem or "")
    edge = reading(registers_160(gen24_modules(5500, 0)))  # within the rating's slack
    assert edge.power_w == -5500.0
    unrated = reading(registers_160(gen24_modules(1000, 0)), {"ChaState": 50.0})
    assert unrated.power_w is None  # nothing to judge it by


def test_802_w_wins_over_the_modules_and_an_ac_battery_keeps_its_own_w() -> None:
    pts = decode_160(registers_160(gen24_modules(1000, 0)))
    with_802 = read_storage({124: M124, 802: {"W": 300.0}, 160: pts}, ac_coupled=False)
    assert with_802.power_w == 300.0 and with_802.power_source == "802 W"
    ac = read_storage({103: {"W": -900.0}, 124: M124, 160: pts})
    assert ac.power_w == -900.0 and ac.power_source == "103 W"


def test_a_hybrid_with_neither_802_w_nor_storage_modules_is_refused_and_says_why() -> None:
    r = reading(registers_160([("MPPT 1", 3000), ("MPPT 2", 3000)]))
    why = not_controllable_reason(r, [1, 103, 123, 160, 124], ac_coupled=False)
    assert why is not None and "StCha/StDisCha" in why and "model 802 W" in why
    assert "no module labelled StCha" in why and "1, 103, 123, 160, 124" in why
    bare = read_storage({103: {"W": 1.0}, 124: M124}, ac_coupled=False)
    why_bare = not_controllable_reason(bare, [1, 103, 124], ac_coupled=False)
    assert why_bare is not None and "no model 160" in why_bare


labels = st.one_of(
    st.sampled_from(["StCha 3", "StDisCha 4", "MPPT 1", "MPPT 2", " stcha ", "STDISCHA9", ""]),
    st.text(max_size=16),
)
raw16 = st.one_of(st.sampled_from([0, 1, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF]), st.integers(0, 0xFFFF))
scale_factors = st.one_of(st.integers(-12, 12), st.sampled_from([-0x8000, 0x7FFF, 400]))
ratings = st.one_of(st.none(), st.floats(-10.0, 20000.0, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(
    modules=st.lists(st.tuples(labels, raw16), max_size=5),
    dcw_sf=scale_factors,
    n=st.one_of(st.none(), raw16),
    w_cha_max=ratings,
)
def test_whatever_model_160_holds_the_power_is_none_or_finite_within_the_ratings(
    modules: list[tuple[str, int]], dcw_sf: int, n: int | None, w_cha_max: float | None
) -> None:
    m124: dict[str, Value] = {"ChaState": 50.0, "WChaMax": w_cha_max}
    r = reading(registers_160(modules, dcw_sf=dcw_sf, n=n), m124)
    if r.power_w is not None:
        assert math.isfinite(r.power_w)
        assert w_cha_max is not None and abs(r.power_w) <= w_cha_max * RATING_SLACK
        assert r.power_problem is None
    else:
        assert r.power_problem is not None


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=120))
def test_arbitrary_registers_in_model_160_never_crash_and_never_read_beyond_the_rating(
    raw: list[int],
) -> None:
    regs = [160, len(raw), *raw]
    r = reading(regs)
    assert r.power_w is None or (math.isfinite(r.power_w) and abs(r.power_w) <= 5500.0)


# --- against the simulated GEN24 ------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Polls state that another task updates (the links have no events to wait on)."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)


def gen24_link(bus: object, **kw: object) -> BatteryLink:
    return BatteryLink(
        "gen24", bus, 1, revert_s=45, fast_s=0.2, ac_coupled=False,  # type: ignore[arg-type]
        convention=StorageConvention.WINDOW, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def power_of(link: BatteryLink) -> float | None:
    r = link.state.reading
    return None if r is None else r.power_w


async def test_the_gen24_is_read_controlled_through_124_and_its_160_power_follows() -> None:
    site = fronius_gen24_site(soc_pct=40.0, with_713=True)
    hybrid = site.devices[1]
    assert isinstance(hybrid, Hybrid)
    hybrid.own_mode = "idle"  # only dynexport makes it charge or discharge
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0) as pool, trio.open_nursery() as nursery:
            link = gen24_link(pool.get(TcpEndpoint("127.0.0.1", sim.port)))
            nursery.start_soon(link.run)
            await wait_until(lambda: link.state.online and link.state.controllable is True)
            r = link.state.reading
            assert r is not None and r.power_source == "160 StCha/StDisCha"
            assert r.capacity_wh == 10240.0 and r.max_charge_w == 5000.0  # 713, 124 WChaMax
            assert r.soc_pct is not None and 39.0 <= r.soc_pct <= 41.0
            assert link.state.not_controllable is None and 802 not in link.state.info.models

            link.command(BatteryDesired(-2000.0))  # charge 2 kW: the GEN24 window, with timer
            await wait_until(lambda: link.state.setpoint_w == -2000.0)
            assert site.get(1, 124, "StorCtl_Mod") == 3
            assert site.get(1, 124, "InOutWRte_RvrtTms") == 45
            assert (site.get(1, 124, "InWRte"), site.get(1, 124, "OutWRte")) == (40.0, -40.0)
            await wait_until(lambda: abs((power_of(link) or 0.0) + 2000.0) < 50.0)
            assert abs(site.get(1, 160, "module[2].DCW") - 2000.0) < 50.0  # StCha 3
            assert site.get(1, 160, "module[3].DCW") == 0  # StDisCha 4

            link.command(BatteryDesired(1500.0))  # discharge 1.5 kW
            await wait_until(lambda: abs((power_of(link) or 0.0) - 1500.0) < 50.0)
            assert (site.get(1, 124, "InWRte"), site.get(1, 124, "OutWRte")) == (-30.0, 30.0)
            assert abs(site.get(1, 160, "module[3].DCW") - 1500.0) < 50.0
            nursery.cancel_scope.cancel()


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_a_gen24_charge_left_behind_reverts_by_itself() -> None:
    """The link is gone (the process died): the GEN24's own 124 timer ends the charge."""
    clock = FakeClock()
    site = Site({1: gen24(soc_pct=50.0, available_w=6000.0)}, load_w=500.0)
    with serve_tcp(site, clock=clock) as sim:
        async with BusPool(timeout=1.0) as pool, trio.open_nursery() as nursery:
            link = BatteryLink(
                "gen24", pool.get(TcpEndpoint("127.0.0.1", sim.port)), 1, revert_s=30,
                fast_s=0.2, ac_coupled=False, convention=StorageConvention.WINDOW,
            )  # fmt: skip
            nursery.start_soon(link.run)
            await wait_until(lambda: link.state.controllable is True)
            link.command(BatteryDesired(-1000.0))
            await wait_until(lambda: link.state.setpoint_w == -1000.0)
            nursery.cancel_scope.cancel()
        clock.t += 29.0
        site.step(clock.t)
        assert site.get(1, 124, "StorCtl_Mod") == 3
        clock.t += 2.0
        site.step(clock.t)
        assert site.get(1, 124, "StorCtl_Mod") == 0


async def test_a_gen24_whose_160_has_no_storage_modules_is_shown_but_never_written() -> None:
    site = Site({1: gen24(labels=("MPPT 1", "MPPT 2"), available_w=5000.0)}, load_w=500.0)
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0) as pool, trio.open_nursery() as nursery:
            link = gen24_link(pool.get(TcpEndpoint("127.0.0.1", sim.port)))
            nursery.start_soon(link.run)
            await wait_until(lambda: link.state.online and link.state.controllable is False)
            why = link.state.not_controllable or ""
            assert "no module labelled StCha" in why and "StCha/StDisCha" in why
            link.command(BatteryDesired(-2000.0))
            for _ in range(3):  # a few polls: the command is never written
                seen = link.state.last_reading
                await wait_until(lambda: link.state.last_reading != seen)  # noqa: B023
            assert site.get(1, 124, "StorCtl_Mod") == 0 and link.state.last_write is None
            nursery.cancel_scope.cancel()
