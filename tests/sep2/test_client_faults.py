"""`Sep2Client.run` survives any exception from one walk, post or report, by design.

Fault injection: the HTTP layer raises ValueError, KeyError, OSError and RuntimeError, in turn,
from every request for ten minutes. The link must keep running (the task never ends), log each
unexpected exception with its traceback, keep the stored schedule in force, back off rather than
spin, and recover fully (walk, responses, telemetry) once the fault stops.

The utility simulator answers in-process (`InProcessHttp`: the real `HttpClient` with its
exchange handed to `UtilityCore.handle` instead of a socket), so the whole run goes on trio's
mock clock: hours of backoff take no real time and nothing depends on the machine's speed.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
import trio.testing

from dynexport.httpio import HttpClient, Response
from dynexport.sep2 import schema
from dynexport.sep2.client import Sep2Client
from dynexport.sep2.controls import ControlType
from dynexport.sep2.flow import DerInfo
from dynexport.sep2.state import LinkStore
from dynexport.sep2.telemetry import Sample
from dynexport.sim.utility_core import UtilityCore
from dynexport.sim.utility_server import UtilityServer
from dynexport.system.config import UtilityConfig
from tests.sep2.fakes import NMI, PIN, T0

pytestmark = pytest.mark.skipif(
    not schema.schema_available(), reason="the simulator validates with the CSIP-AUS XSD"
)

FAULTS: list[Callable[[], Exception]] = [
    lambda: ValueError("injected ValueError"),
    lambda: KeyError("injected KeyError"),
    lambda: OSError(5, "injected OSError"),
    lambda: RuntimeError("injected RuntimeError"),
]


def wall() -> float:
    """Wall time of both sides: T0 plus trio's (mock) time."""
    return T0 + trio.current_time()


class InProcessHttp(HttpClient):
    """The real client (retries, redirects, origin checks) with `UtilityCore` as the peer, and
    ``faults``: while set, every request raises the next exception it yields instead."""

    def __init__(self, core: UtilityCore, lfdi: str) -> None:
        super().__init__(
            "http://utility.test", None, allow_plain_http=True, retries=0, wait_retry_after=False
        )
        self.core = core
        self.lfdi = lfdi
        self.faults: Iterator[Exception] | None = None
        self.requests = 0
        self.hostile: dict[tuple[str, str], tuple[int, list[tuple[str, str]]]] = {}
        """(method, path) → (status, headers) answered instead of the core's reply: headers
        no h11 server would send (``Retry-After: ²``) reach the real client parsing here."""
        self.hostile_answers: list[tuple[str, str]] = []

    async def request(
        self,
        method: str,
        path_or_url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool | None = None,
    ) -> Response:
        self.requests += 1
        await trio.sleep(0.01)  # a request takes time, and is a checkpoint
        if self.faults is not None:
            raise next(self.faults)
        return await super().request(
            method, path_or_url, body=body, headers=headers, follow_redirects=follow_redirects
        )

    async def _once(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> Response:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        hostile = self.hostile.get((method, parts.path))
        if hostile is not None:
            self.hostile_answers.append((method, parts.path))
            status, fields = hostile
            return Response(status, tuple((k.lower(), v) for k, v in fields), b"", url)
        reply = self.core.handle(method, target, body=body or b"", lfdi=self.lfdi)
        found = [(k.lower(), v) for k, v in reply.headers]
        if reply.content_type:
            found.append(("content-type", reply.content_type))
        return Response(reply.status, tuple(found), reply.body, url)


def sample() -> Sample:
    return Sample(t=wall(), values={("site", "W"): -1000.0, ("der", "W"): 2000.0})


def export_limit(client: Sep2Client) -> float | bool | None:
    active = client.active_controls()
    return None if active is None else active.value(ControlType.EXPORT_LIMIT_W)


async def run_with_samples(client: Sep2Client, seconds: int) -> None:
    """The app's side: a sample every 10 s while the link runs."""
    for _ in range(seconds // 10):
        client.add_sample(sample())
        await trio.sleep(10)


class LoopWrittenStore(LinkStore):
    """The link's files, written by whoever saves them (the link's task) instead of in worker
    threads: on the autojumping mock clock, time runs on while a thread fsyncs."""

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()  # no writer tasks: each save writes at once


def in_process_client(
    srv: UtilityServer, data_dir: Path, *, store_in_threads: bool = False
) -> tuple[Sep2Client, InProcessHttp]:
    """The link against ``srv`` in-process. Its files are written in the link's task unless
    ``store_in_threads`` (`LoopWrittenStore`)."""
    files = srv.pki.files
    config = UtilityConfig(
        server="http://utility.test",
        ca=files["serca"],
        cert=files["device_chain"],
        key=files["device_key"],
        nmi=NMI,
        pin=PIN,
    )
    http = InProcessHttp(srv, srv.pki.device_lfdi)
    client = Sep2Client(
        config,
        data_dir,
        der=DerInfo(rated_w=5000),
        clock=wall,
        monotonic=trio.current_time,
        http=http,
        store=LinkStore(data_dir) if store_in_threads else LoopWrittenStore(data_dir),
    )
    return client, http


async def test_exceptions_from_every_request_never_stop_the_link_and_it_recovers(
    pki_dir: Path, tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog
) -> None:
    srv = UtilityServer(pki_dir=pki_dir, clock=wall)
    srv.add_control(start=int(T0) - 10, duration=4 * 3600, export_limit_w=1500)
    srv.set_default(export_limit_w=5000)
    client, http = in_process_client(srv, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await run_with_samples(client, 120)
        assert client.state().connected and export_limit(client) == 1500
        assert srv.readings  # telemetry flowing

        # a control that wants responses arrives just before everything starts failing
        mrid = srv.add_control(start=int(wall()) + 60, duration=1200, export_limit_w=0)
        await trio.sleep(61)  # the next poll reads it ("received" is posted)
        http.faults = (make() for make in itertools.cycle(FAULTS))
        with caplog.at_level(logging.ERROR, logger="dynexport.sep2.client"):
            faulty_from = http.requests
            await run_with_samples(client, 600)
        tried = http.requests - faulty_from
        state = client.state()
        assert not state.connected and state.last_error is not None
        assert "injected" in state.last_error
        assert export_limit(client) == 0  # the stored schedule (the new event) is in force
        assert 10 < tried < 600, tried  # it kept trying, with backoff, without spinning
        logged = {r.exc_info[0].__name__ for r in caplog.records if r.exc_info and r.exc_info[0]}
        assert {"ValueError", "KeyError", "OSError", "RuntimeError"} <= logged, caplog.text

        http.faults = None
        await run_with_samples(client, 700)  # longer than the longest backoff (300 s)
        state = client.state()
        assert state.connected, state.last_error
        assert state.pending_responses == 0
        assert state.telemetry_backlog == 0
        statuses = [int(r.status or 0) for r in srv.responses if r.subject == mrid]
        assert statuses[:2] == [1, 2] and 3 in statuses  # started during the outage, ended after
        nursery.cancel_scope.cancel()


async def test_a_retry_after_of_superscript_two_neither_kills_the_link_nor_blocks_it(
    pki_dir: Path, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Found by fuzzing: ``"²".isdigit()`` is True and ``float("²")`` raises ValueError, which
    escaped the HTTP client from a response POST and ended the utility link. Now it is a 503
    without a usable Retry-After: retried with the usual backoff."""
    srv = UtilityServer(pki_dir=pki_dir, clock=wall)
    mrid = srv.add_control(start=int(T0) + 30, duration=3600, export_limit_w=1500)
    client, http = in_process_client(srv, tmp_path)
    http.hostile[("POST", "/rsp")] = (503, [("Retry-After", "²")])
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await trio.sleep(1)
        assert client.state().connected
        http.hostile[("GET", "/derp/1/derc")] = (429, [("Retry-After", "²")])
        await trio.sleep(120)
        state = client.state()
        assert state.pending_responses >= 1  # kept for later, not lost, not fatal
        assert http.hostile_answers.count(("POST", "/rsp")) >= 3  # retried, with backoff
        assert ("GET", "/derp/1/derc") in http.hostile_answers
        assert any("HTTP 429" in message for _, message in state.errors), state.errors
        http.hostile.clear()
        await trio.sleep(600)
        state = client.state()
        assert state.connected and state.pending_responses == 0, state.last_error
        assert [int(r.status or 0) for r in srv.responses if r.subject == mrid][:2] == [1, 2]
        nursery.cancel_scope.cancel()
