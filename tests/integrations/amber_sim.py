"""A simulated Amber Electric API (h11 over trio, optionally TLS) serving the documented shape of
``GET /v1/sites/{siteId}/prices/current``: a list of intervals, one per channel, each with
``type``, ``duration``, ``startTime``, ``endTime``, ``nemTime``, ``perKwh``, ``renewables``,
``spotPerKwh``, ``channelType``, ``spikeStatus``, ``descriptor`` and ``estimate``."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import h11
import trio

SITE_ID = "01HABCDEF0123456789"
TOKEN = "psk_test_token"


def interval(start: float, minutes: int, channel: str, per_kwh: float, kind: str) -> dict[str, Any]:
    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    return {
        "type": kind,
        "date": datetime.fromtimestamp(start, UTC).date().isoformat(),
        "duration": minutes,
        "startTime": iso(start + 1),  # Amber's startTime is one second into the interval
        "endTime": iso(start + minutes * 60),
        "nemTime": iso(start + minutes * 60),
        "perKwh": per_kwh,
        "renewables": 45.2,
        "spotPerKwh": per_kwh,
        "channelType": channel,
        "spikeStatus": "none",
        "tariffInformation": {"period": "offPeak"},
        "descriptor": "low",
        "estimate": kind != "ActualInterval",
    }


def prices(now: float, feed_in_per_kwh: float, general: float = 20.0) -> list[dict[str, Any]]:
    """The current 5-minute interval and the next two, for both channels."""
    start = now - now % 300
    out = []
    for i in range(3):
        kind = "CurrentInterval" if i == 0 else "ForecastInterval"
        out.append(interval(start - 1 + i * 300, 5, "general", general, kind))
        out.append(interval(start - 1 + i * 300, 5, "feedIn", feed_in_per_kwh, kind))
    return out


def prices_around(now: float, feed_in_per_kwh: float, hours: int = 2) -> list[dict[str, Any]]:
    """30-minute intervals (Amber's other pricing) from ``hours`` before ``now`` to ``hours``
    after it, for both channels: prices that still cover the time after a wall-clock step."""
    start = now - now % 1800 - hours * 3600
    out = []
    for i in range(hours * 4):
        t = start + i * 1800
        kind = (
            "ActualInterval"
            if t + 1800 <= now
            else "CurrentInterval"
            if t <= now
            else "ForecastInterval"
        )
        out.append(interval(t, 30, "general", 20.0, kind))
        out.append(interval(t, 30, "feedIn", feed_in_per_kwh, kind))
    return out


@dataclass
class AmberSim:
    body: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0
    gate: trio.Event | None = None
    """When set to an event, each answer waits for it (a poll held in flight)."""
    asked: trio.Event = field(default_factory=trio.Event)
    """Set on each request received."""

    async def serve(
        self,
        ssl_context: ssl.SSLContext | None = None,
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        if ssl_context is not None:
            listeners = [trio.SSLListener(lis, ssl_context) for lis in listeners]  # type: ignore[misc]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(bytes(data))
                    if not data and conn.their_state is not h11.SEND_BODY:
                        return
                    continue
                if isinstance(event, h11.Request):
                    auth = dict(event.headers).get(b"authorization")
                    target = event.target.decode()
                    self.requests.append((target, auth.decode() if auth else None))
                    self.asked.set()
                    if self.gate is not None:
                        await self.gate.wait()
                    status, body = self._answer(target, auth)
                    headers = [
                        ("content-type", "application/json"),
                        ("content-length", str(len(body))),
                    ]
                    await stream.send_all(
                        conn.send(h11.Response(status_code=status, headers=headers))
                    )
                    await stream.send_all(conn.send(h11.Data(data=body)))
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                elif isinstance(event, h11.EndOfMessage):
                    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                        conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return

    def _answer(self, target: str, auth: bytes | None) -> tuple[int, bytes]:
        if auth != f"Bearer {TOKEN}".encode():
            return 401, b'{"message": "Unauthorized"}'
        if not target.startswith(f"/v1/sites/{SITE_ID}/prices/current"):
            return 404, b'{"message": "Not found"}'
        if self.status != 200:
            return self.status, b'{"message": "unavailable"}'
        return 200, json.dumps(self.body).encode()
