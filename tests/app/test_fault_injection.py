"""Fault containment as a property of the service: an arbitrary exception raised at any I/O
boundary (Modbus client, HTTP client, storage, history) or inside the control law never stops
the process; the controller keeps deciding and the inverters keep a limit."""

from __future__ import annotations

import errno
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from dynexport.app import App
from dynexport.sim.utility_server import UtilityServer
from dynexport.system.config import parse_config
from tests.app.conftest import (
    SimSite,
    make_app,
    simulated_site,
    site_document,
    utility_section,
    wait_for,
    wait_settled,
)

LIMIT_W = 1500.0
TOLERANCE_W = 150.0


@contextmanager
def raising(
    monkeypatch: pytest.MonkeyPatch, target: Any, name: str, exc: Callable[[], BaseException]
) -> Iterator[None]:
    """Makes ``target.name`` raise ``exc()`` on every call until the block ends."""
    with monkeypatch.context() as m:
        if inspect.iscoroutinefunction(getattr(target, name)):

            async def broken_async(*args: Any, **kwargs: Any) -> Any:
                raise exc()

            m.setattr(target, name, broken_async)
        else:

            def broken(*args: Any, **kwargs: Any) -> Any:
                raise exc()

            m.setattr(target, name, broken)
        yield


def _limited(sim: SimSite) -> bool:
    """Both inverters have a generation limit enabled (model 123 WMaxLim_Ena)."""
    return all(sim.site.get(unit, 123, "WMaxLim_Ena") == 1 for unit in (1, 2))


async def _decides_on(app: App, seconds: float = 3.0) -> None:
    """The controller makes fresh decisions for ``seconds`` of its own clock."""
    assert app.controller.last_t is not None
    first = app.controller.last_t
    await wait_for(lambda: (app.controller.last_t or 0.0) - first >= seconds, within=30)


async def test_an_exception_at_any_boundary_never_stops_control(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dynexport.control import law
    from dynexport.httpio.client import HttpClient
    from dynexport.modbus.client import ModbusBus
    from dynexport.sep2 import state
    from dynexport.web.history import History

    server = UtilityServer(pki_dir=tmp_path / "pki", poll_rate_s=5)
    async with server.running() as utility:
        now = int(utility.now())
        utility.add_control(start=now - 5, duration=3600, export_limit_w=LIMIT_W)
        utility.set_default(export_limit_w=5000)
        with simulated_site(load_w=1000.0) as sim:
            raw = {**site_document(sim), "utility": utility_section(utility)}
            app = make_app(parse_config(raw), tmp_path / "data", web_host="127.0.0.1", web_port=0)
            async with trio.open_nursery() as nursery:
                await nursery.start(app.run)
                await wait_settled(sim.export_w, LIMIT_W - 30, TOLERANCE_W)

                boundaries: list[tuple[str, Any, str, Callable[[], BaseException]]] = [
                    ("Modbus client", ModbusBus, "_request", lambda: ZeroDivisionError("inj")),
                    ("HTTP client", HttpClient, "request", lambda: KeyError("injected")),
                    (
                        "storage (disk full)",
                        state,
                        "atomic_write",
                        lambda: OSError(errno.ENOSPC, "No space left on device"),
                    ),
                    ("storage (bug)", state, "write_json", lambda: RuntimeError("injected")),
                    ("history", History, "flush", lambda: ValueError("injected")),
                ]
                for name, target, attr, exc in boundaries:
                    with raising(monkeypatch, target, attr, exc):
                        await _decides_on(app)
                        assert _limited(sim), f"{name}: an inverter lost its limit"
                        assert sim.export_w() <= LIMIT_W + TOLERANCE_W, name
                    # and it recovers once the fault is gone
                    await wait_settled(sim.export_w, LIMIT_W - 30, TOLERANCE_W)
                    await _decides_on(app, 1.0)

                # The control law itself fails: every inverter is commanded 0 %, at once.
                with raising(monkeypatch, law, "control_step", lambda: ArithmeticError("inj")):
                    await wait_for(
                        lambda: all(sim.site.get(unit, 123, "WMaxLimPct") == 0 for unit in (1, 2)),
                        within=30,
                    )
                    assert _limited(sim)
                    assert any(f["task"] == "controller" for f in app.status()["faults"])
                await wait_settled(sim.export_w, LIMIT_W - 30, TOLERANCE_W)
                nursery.cancel_scope.cancel()


async def test_a_full_data_partition_is_reported_and_control_goes_on_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dynexport.sep2 import state

    server = UtilityServer(pki_dir=tmp_path / "pki", poll_rate_s=5)
    async with server.running() as utility:
        now = int(utility.now())
        utility.set_default(export_limit_w=5000)
        raw = {"utility": utility_section(utility)}
        app = make_app(parse_config(raw), tmp_path / "data")

        def full(*args: Any, **kwargs: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(state, "atomic_write", full)
        monkeypatch.setattr(state, "write_json", full)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            # the schedule cannot be saved, yet it is obeyed from memory
            # (1200 W: not the 1500 W fallback that applies until a schedule arrives)
            utility.add_control(start=now - 5, duration=3600, export_limit_w=1200)
            await wait_for(lambda: app.status()["limits"]["exportW"] == 1200, within=30)
            doc = app.status()
            assert "No space left on device" in (doc["utility"]["storageError"] or "")
            assert doc["limits"]["source"]["export_w"] == "utility"
            nursery.cancel_scope.cancel()
