"""A CSIP-AUS utility server simulator over real mutual TLS, for the tests and the demo.

`UtilityServer` is `utility_core.UtilityCore` (the resources and the scripted schedule) served
with `httpio.serve_http` on 127.0.0.1, with the test PKI's server certificate, requiring a client
certificate chained to the test SERCA. The client certificate's LFDI says which device is asking.
Faults (429/503 with or without Retry-After, delays, dropped connections) can be injected per path
to exercise the client's retry logic. Tests run it in a nursery::

    server = UtilityServer(pki_dir=tmp_path)
    async with server.running():
        ...HttpClient(server.url, client_context(ca_files=[server.pki.files["serca"]], ...))...

Command line (the demo): ``python -m dynexport.sim.utility_server --pki DIR --port 8443
--step 5000,1500,0 --every 120``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import trio
from cryptography import x509

from dynexport.httpio import Limits, Request, ServerResponse, serve_http, server_context
from dynexport.httpio.server import _Closed
from dynexport.sep2 import certs
from dynexport.sep2.certs import TestPki
from dynexport.sim.utility_core import (
    SEP_XML,
    PollMiss,
    ReceivedReading,
    RecordedRequest,
    Reply,
    UtilityCore,
    Violation,
)

__all__ = [
    "DROPPED",
    "LONG_RUN_MAX_RECORDS",
    "SEP_XML",
    "Fault",
    "PollMiss",
    "ReceivedReading",
    "RecordedRequest",
    "Reply",
    "UtilityCore",
    "UtilityServer",
    "Violation",
    "load_or_make_pki",
    "main",
    "roll_steps",
]

log = logging.getLogger("dynexport.sim.utility")

DROPPED = 0
"""`RecordedRequest.status` of a request whose connection a fault dropped."""


@dataclass
class Fault:
    """An injected failure for the next ``count`` requests whose path starts with the prefix."""

    path_prefix: str
    status: int | None
    """None: after ``delay_s``, answer normally (a slow server, not a failing one)."""
    retry_after: str | None
    count: int
    delay_s: float
    drop: bool
    body: bytes | None = None
    """Answer ``status`` (None: 200) with these bytes as ``application/sep+xml``."""
    chunk_size: int = 0
    """With ``body``: > 0 streams it chunked in pieces of this size (no Content-Length)."""
    chunk_delay_s: float = 0.0
    """With ``chunk_size``: the pause before each piece (a server that trickles)."""


def load_or_make_pki(directory: Path) -> TestPki:
    """The test PKI in ``directory``: reused when its files are there, else created."""
    files = {name: directory / file for name, file in certs.TEST_PKI_FILES.items()}
    if all(path.is_file() for name, path in files.items() if name != "summary"):
        device = certs.load_certificates(files["device_chain"].read_bytes())[0]
        lfdi = certs.lfdi(device)
        return TestPki(directory, lfdi, certs.sfdi_from_lfdi(lfdi), files)
    return certs.make_test_pki(directory, now=datetime.now(UTC))


class UtilityServer(UtilityCore):
    """The simulator: `UtilityCore` served over mutual TLS with the test PKI, plus faults."""

    def __init__(
        self,
        *,
        pki_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        clock_offset_s: float = 0.0,
        poll_rate_s: int = 60,
        post_rate_s: int = 60,
        pin: int | None = 111115,
        preregistered: bool = True,
        validate: bool = True,
        limits: Limits | None = None,
        expected_pen: int | None = None,
        max_records: int | None = None,
        csipaus_version: str = "1.2",
    ) -> None:
        """``pki_dir=None`` makes a fresh test PKI in a temporary folder; an existing folder
        with a test PKI is reused (so a client configured for it keeps working).
        ``expected_pen``, ``max_records``, ``csipaus_version``: see `UtilityCore` (the mRID
        check is off and every request is kept when None)."""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if pki_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dynexport-utility-pki-")
            pki_dir = Path(self._tmp.name)
        self.pki: TestPki = load_or_make_pki(Path(pki_dir))
        super().__init__(
            device_lfdi=self.pki.device_lfdi,
            clock=clock,
            clock_offset_s=clock_offset_s,
            poll_rate_s=poll_rate_s,
            post_rate_s=post_rate_s,
            pin=pin,
            preregistered=preregistered,
            validate=validate,
            expected_pen=expected_pen,
            max_records=max_records,
            csipaus_version=csipaus_version,
        )
        self.limits = limits
        self.port: int | None = None
        self.faults: list[Fault] = []
        self._lfdi_cache: dict[bytes, str] = {}

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<port>`` once serving."""
        if self.port is None:
            raise RuntimeError("the utility server is not serving yet")
        return f"https://127.0.0.1:{self.port}"

    def violation(self, t: float, check: str, path: str, message: str) -> None:
        """Recorded as by the core, and logged (the demo's operator sees breaches live)."""
        super().violation(t, check, path, message)
        log.warning("harness check %s failed: %s %s", check, path, message)

    # --- faults ----------------------------------------------------------------------------

    def inject_fault(
        self,
        *,
        path_prefix: str = "",
        status: int | None = 503,
        retry_after: str | None = None,
        count: int = 1,
        delay_s: float = 0.0,
        drop: bool = False,
        body: bytes | None = None,
        chunk_size: int = 0,
        chunk_delay_s: float = 0.0,
    ) -> None:
        """Make the next ``count`` matching requests fail: wait ``delay_s``, then drop the
        connection (``drop``) or answer ``status`` (with ``Retry-After`` when given).

        ``body`` answers ``status`` with these bytes instead (a hostile server: pass
        ``status=200``); with ``chunk_size`` it is streamed chunked, ``chunk_delay_s`` apart."""
        if count < 1:
            raise ValueError("count must be at least 1")
        if chunk_size < 0 or chunk_delay_s < 0:
            raise ValueError("chunk_size and chunk_delay_s must not be negative")
        fault = Fault(path_prefix, status, retry_after, count, delay_s, drop, body, chunk_size)
        fault.chunk_delay_s = chunk_delay_s
        self.faults.append(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if path.startswith(fault.path_prefix):
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    # --- serving ---------------------------------------------------------------------------

    def _lfdi_of(self, der: bytes | None) -> str | None:
        if der is None:
            return None
        if der not in self._lfdi_cache:
            self._lfdi_cache[der] = certs.lfdi(x509.load_der_x509_certificate(der))
        return self._lfdi_cache[der]

    async def _http(self, request: Request) -> ServerResponse:
        lfdi = self._lfdi_of(request.client_cert)
        fault = self._take_fault(request.path)
        if fault is not None:
            if fault.delay_s > 0:
                await trio.sleep(fault.delay_s)
            if fault.drop:
                self.record(request.method, request.target, request.body, lfdi, DROPPED)
                log.info("%s %s: connection dropped (fault)", request.method, request.target)
                return ServerResponse(200, _dropped_body())
            if fault.body is not None:
                status = 200 if fault.status is None else fault.status
                self.record(request.method, request.target, request.body, lfdi, status)
                log.info(
                    "%s %s -> %d, replaced body (fault)", request.method, request.target, status
                )
                payload: bytes | AsyncIterator[bytes] = fault.body
                if fault.chunk_size > 0:
                    payload = _chunks(fault.body, fault.chunk_size, fault.chunk_delay_s)
                return ServerResponse(status, payload, [], SEP_XML)
            if fault.status is not None:
                self.record(request.method, request.target, request.body, lfdi, fault.status)
                log.info("%s %s -> %d (fault)", request.method, request.target, fault.status)
                headers = [] if fault.retry_after is None else [("Retry-After", fault.retry_after)]
                reply = Reply.error(fault.status, "injected fault", headers)
                return ServerResponse(reply.status, reply.body, reply.headers, reply.content_type)
        reply = self.handle(
            request.method,
            request.target,
            body=request.body,
            lfdi=lfdi,
            content_type=request.header("content-type"),
        )
        log.info("%s %s -> %d", request.method, request.target, reply.status)
        return ServerResponse(reply.status, reply.body, reply.headers, reply.content_type)

    async def serve(
        self, *, port: int = 0, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve on 127.0.0.1 with mutual TLS until cancelled; ``nursery.start`` gets the port."""
        files = self.pki.files
        context = server_context(
            ca_files=[files["serca"]], cert_file=files["server_chain"], key_file=files["server_key"]
        )
        async with trio.open_nursery() as nursery:
            bound: int = await nursery.start(
                partial(
                    serve_http,
                    self._http,
                    host="127.0.0.1",
                    port=port,
                    ssl_context=context,
                    limits=self.limits,
                )
            )
            self.port = bound
            task_status.started(bound)

    @asynccontextmanager
    async def running(self, *, port: int = 0) -> AsyncIterator[UtilityServer]:
        """Serve for the body of an ``async with`` block, then stop."""
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(self.serve, port=port))
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()


async def _chunks(body: bytes, size: int, delay_s: float) -> AsyncIterator[bytes]:
    """``body`` in pieces of ``size`` bytes, ``delay_s`` apart (sliced lazily, so a huge body
    costs the server one piece at a time)."""
    view = memoryview(body)
    for start in range(0, len(body), size):
        if delay_s > 0:
            await trio.sleep(delay_s)
        yield bytes(view[start : start + size])


async def _dropped_body() -> AsyncIterator[bytes]:
    """A response body that closes the connection instead of completing the response.

    httpio's server has no public way for a handler to drop a connection; raising its internal
    connection-closed signal from the body is the one way that does not turn into a 500.
    """
    for _ in ():  # an async generator that raises before yielding anything
        yield b""
    raise _Closed


# --- command line ----------------------------------------------------------------------------


LONG_RUN_MAX_RECORDS = 200
"""What a simulator that runs for hours (the demo, the command line) keeps of what it received:
the last quarter of an hour or so at 60 s rates. A recorded request holds its body and the
resource it carried or was served (about 20 KiB each in the benchmark), so this is a few MiB."""


async def roll_steps(server: UtilityCore, limits_w: Sequence[float], every_s: int) -> None:
    """Keep a stepping export-limit schedule going forever (the demo's utility).

    Events are added two cycles ahead and removed one cycle after they end, so the control
    list stays short however long the demo runs. A server that keeps every record (no
    ``max_records``) is bounded to `LONG_RUN_MAX_RECORDS`, since a run that never ends must not
    grow. Runs until cancelled.
    """
    if server.max_records is None:
        server.max_records = LONG_RUN_MAX_RECORDS
    period = every_s * len(limits_w)
    next_start = int(server.now())
    live: list[tuple[str, int]] = []  # (mRID, end)
    while True:
        now = server.now()
        while next_start < now + 2 * period:
            for i, mrid in enumerate(server.step_schedule(limits_w, every_s, next_start, 1)):
                live.append((mrid, next_start + (i + 1) * every_s))
            next_start += period
        for mrid, end in [x for x in live if x[1] < now - period]:
            server.remove_control(mrid)
            live.remove((mrid, end))
        await trio.sleep(every_s)


def _parse_steps(text: str) -> list[float]:
    try:
        steps = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of watts: {text!r}") from None
    if not steps or any(not math.isfinite(s) or s < 0 for s in steps):
        raise argparse.ArgumentTypeError(f"need one or more non-negative limits: {text!r}")
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a CSIP-AUS utility on 127.0.0.1 with a stepping export limit, until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m dynexport.sim.utility_server", description=main.__doc__
    )
    parser.add_argument("--pki", type=Path, required=True, help="test PKI folder (made if empty)")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument(
        "--step", type=_parse_steps, default=[5000.0, 1500.0, 0.0], help="export limits, W"
    )
    parser.add_argument("--every", type=int, default=120, help="seconds per step")
    parser.add_argument(
        "--cycles", type=int, help="repeat this many times (default: forever, rolling)"
    )
    parser.add_argument(
        "--default-export", type=float, default=1500.0, help="DefaultDERControl export limit, W"
    )
    parser.add_argument("--poll-rate", type=int, default=60)
    parser.add_argument("--post-rate", type=int, default=60)
    parser.add_argument("--pin", type=int, default=111115)
    parser.add_argument(
        "--pen",
        type=int,
        help="the PEN the device's mRIDs must end in; breaches are logged (default: unchecked)",
    )
    parser.add_argument(
        "--in-band", action="store_true", help="the device must POST its EndDevice first"
    )
    parser.add_argument("--no-validate", action="store_true", help="skip XSD validation")
    parser.add_argument(
        "--max-records",
        type=int,
        default=LONG_RUN_MAX_RECORDS,
        help="keep at most this many recorded requests, readings, responses and breaches "
        f"(default {LONG_RUN_MAX_RECORDS}: a long run does not grow)",
    )
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error("--every must be at least 1 s")
    if args.max_records < 1:
        parser.error("--max-records must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    server = UtilityServer(
        pki_dir=args.pki,
        poll_rate_s=args.poll_rate,
        post_rate_s=args.post_rate,
        pin=args.pin,
        preregistered=not args.in_band,
        validate=not args.no_validate,
        expected_pen=args.pen,
        max_records=args.max_records,
    )
    server.set_default(export_limit_w=args.default_export)
    if args.cycles is not None:
        server.step_schedule(args.step, args.every, int(server.now()), args.cycles)

    async def run() -> None:
        # Its own handlers, from before the first line is printed: a caller may stop it as soon
        # as it has read the address, and a shell that started it in the background (SIGINT
        # then comes ignored, and trio would leave it so) must still be able to.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await serve_until(signals)

    async def serve_until(signals: AsyncIterator[int]) -> None:
        async with trio.open_nursery() as nursery:
            if args.cycles is None:
                nursery.start_soon(roll_steps, server, args.step, args.every)
            await nursery.start(partial(server.serve, port=args.port))
            files = server.pki.files
            config = {
                "type": "csip-aus",
                "server": server.url,
                "dcap": "/dcap",
                "ca": str(files["serca"]),
                "cert": str(files["device_chain"]),
                "key": str(files["device_key"]),
                "pin": args.pin,
                **({} if args.pen is None else {"pen": args.pen}),
            }
            print(f"CSIP-AUS utility simulator at {server.url}/dcap", flush=True)
            print(f"device LFDI {server.pki.device_lfdi} SFDI {server.pki.device_sfdi}", flush=True)
            print(f"utility config: {json.dumps(config)}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break

    try:
        trio.run(run)
    except* KeyboardInterrupt:  # Ctrl-C is how the demo stops it (may come wrapped by trio)
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
