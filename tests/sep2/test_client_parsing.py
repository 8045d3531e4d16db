"""Large bodies are parsed off the event loop the controller shares.

10,000 DER controls (the most the pager accepts) cost about a second of CPU per walk to parse:
on the event loop, that would delay the control loop by as much. Bodies over
`ClientOptions.parse_in_thread_bytes` go to a worker thread (bounded by a limiter), and so does
turning a long program into scheduler events. Checked structurally (which thread parsed what),
never by timing.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dynexport.sep2 import client as client_module
from dynexport.sep2 import resources, schema
from dynexport.sep2 import responses as responses_module
from dynexport.sep2.client import ClientOptions, Sep2Client
from dynexport.sep2.controls import ControlType
from dynexport.sep2.flow import DerInfo
from dynexport.sep2.schedule import ScheduleSnapshot
from dynexport.sim.utility_server import UtilityServer
from tests.sep2 import hostile
from tests.sep2.fakes import FakeClock, utility_config

pytestmark = pytest.mark.skipif(
    not schema.schema_available(), reason="the simulator validates with the CSIP-AUS XSD"
)

CONTROLS = 1000


@pytest.fixture
async def server(pki_dir: Path, clock: FakeClock) -> AsyncIterator[UtilityServer]:
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    body = hostile.control_list(CONTROLS, export_limit_w=700)
    srv.inject_fault(path_prefix=hostile.DERC, status=200, body=body, count=99)
    async with srv.running():
        yield srv


class Recorder:
    """Wraps a function, noting the thread and the size of what each call handled."""

    def __init__(self, inner: Any, size: Any) -> None:
        self.inner = inner
        self.size = size
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        on_loop = threading.current_thread() is threading.main_thread()
        self.calls.append((self.size(*args), on_loop))
        return self.inner(*args, **kwargs)


async def test_a_large_list_is_parsed_and_converted_in_a_worker_thread(
    server, clock, tmp_path, monkeypatch
):
    parse = Recorder(resources.parse_as, lambda cls, body: len(body))
    convert = Recorder(resources.program_controls, lambda p, controls, *rest: len(controls))
    monkeypatch.setattr(client_module, "parse_as", parse)
    monkeypatch.setattr(client_module, "program_controls", convert)
    # resolving the schedule and the responses over thousands of events is pure work too
    count = client_module._event_count
    snapshot = Recorder(ScheduleSnapshot.first, lambda programs, *rest: count(programs))
    update = Recorder(responses_module.update, lambda tracker, programs, *r: count(programs))
    monkeypatch.setattr(ScheduleSnapshot, "first", snapshot)
    monkeypatch.setattr(responses_module, "update", update)
    options = ClientOptions(http_timeout=5.0, http_retries=0, thread_events=CONTROLS - 1)
    client = Sep2Client(
        utility_config(server), tmp_path, der=DerInfo(rated_w=5000), clock=clock, options=options
    )
    await client.step()
    active = client.active_controls()
    assert active is not None and active.value(ControlType.EXPORT_LIMIT_W) == 700
    threshold = options.parse_in_thread_bytes
    large = [(size, on_loop) for size, on_loop in parse.calls if size > threshold]
    small = [(size, on_loop) for size, on_loop in parse.calls if size <= threshold]
    assert large and all(not on_loop for _, on_loop in large), parse.calls
    assert small and all(on_loop for _, on_loop in small)  # a thread hop is not worth it
    assert (CONTROLS, False) in convert.calls
    assert snapshot.calls and all(not on_loop for _, on_loop in snapshot.calls), snapshot.calls
    assert update.calls and all(not on_loop for _, on_loop in update.calls), update.calls
    await client.http.aclose()
