"""Utility-link traffic against the CSIP-AUS simulator over mutual TLS (prints, asserts nothing).

- one full walk from a cold start (registration reports and mirrors included), and one walk
  when everything is due again: requests, HTTP bytes and TLS wire bytes (`HttpStats`);
- one hour of operation at a 60 s poll rate and a 60 s post rate, with samples every 5 s and a
  control schedule that steps every 20 minutes (so responses are sent too). A fake wall clock,
  shared by the client and the simulator, is moved from one wake-up to the next, so the hour
  takes a second or two. The one TLS connection is kept alive throughout: a server that closes
  idle connections adds a handshake per minute (see "per handshake" below).

The simulator listens on 127.0.0.1 only and is stopped before the script ends.
"""

from __future__ import annotations

import platform
import tempfile
from collections import Counter
from dataclasses import astuple, dataclass
from pathlib import Path

import trio

from dynexport.httpio import HttpStats
from dynexport.sep2.client import ClientOptions, Sep2Client
from dynexport.sep2.flow import DerInfo
from dynexport.sep2.telemetry import Sample
from dynexport.sim.utility_server import UtilityServer
from dynexport.system.config import UtilityConfig

T0 = 1_800_000_000.0
HOUR = 3600
SAMPLE_EVERY_S = 5


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass(frozen=True)
class Traffic:
    requests: int
    connections: int
    sent: int
    received: int
    wire_sent: int
    wire_received: int

    @classmethod
    def of(cls, stats: HttpStats) -> Traffic:
        return cls(
            stats.requests,
            stats.connections,
            stats.bytes_sent,
            stats.bytes_received,
            stats.wire_bytes_sent,
            stats.wire_bytes_received,
        )

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def show(self, label: str) -> None:
        print(
            f"{label}: {self.requests} requests, {self.connections} TLS handshakes; "
            f"HTTP sent {self.sent:,} B, received {self.received:,} B; "
            f"wire (TLS) sent {self.wire_sent:,} B, received {self.wire_received:,} B"
        )


def sample(t: float) -> Sample:
    values: dict[tuple[str, str], float | None] = {
        ("site", "W"): -1500.0,
        ("site", "var"): 120.0,
        ("site", "V"): 240.1,
        ("der", "W"): 3000.0,
        ("der", "var"): 0.0,
        ("der", "V"): 240.3,
    }
    return Sample(t=t, values=values)


def breakdown(server: UtilityServer, since: int) -> str:
    counts = Counter(
        f"{r.method} {r.path.rsplit('/', 1)[0] if r.path.startswith('/mup/') else r.path}"
        for r in server.received[since:]
    )
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


async def run(data_dir: Path) -> None:
    clock = FakeClock()
    server = UtilityServer(clock=clock, poll_rate_s=60, post_rate_s=60)
    server.set_default(export_limit_w=5000, set_grad_w=27)
    server.step_schedule([1500, 0, 3000], 1200, int(T0) + 60, 1)
    async with server.running():
        files = server.pki.files
        config = UtilityConfig(
            server=server.url,
            ca=files["serca"],
            cert=files["device_chain"],
            key=files["device_key"],
            nmi="4312345678",
            pin=111115,
        )
        client = Sep2Client(
            config, data_dir, der=DerInfo(rated_w=5000), clock=clock, options=ClientOptions()
        )
        stats = client.http.stats

        start = Traffic.of(stats)
        await client.walk_once()
        cold = Traffic.of(stats) - start
        cold.show("cold walk (reports PUT, mirrors created)")
        print(f"  {breakdown(server, 0)}")

        seen = len(server.received)
        clock.t += 61
        start = Traffic.of(stats)
        await client.walk_once()
        due = Traffic.of(stats) - start
        due.show("walk with everything due (60 s later)")
        print(f"  {breakdown(server, seen)}")

        seen = len(server.received)
        start = Traffic.of(stats)
        end = clock.t + HOUR
        wake = clock.t
        steps = 0
        while clock.t < end:
            client.add_sample(sample(clock.t))
            if clock.t >= wake:
                wake = await client.step()
                steps += 1
            clock.t += SAMPLE_EVERY_S
        hour = Traffic.of(stats) - start
        hour.show(f"one hour at 60 s poll and post rates ({steps} steps)")
        print(f"  {breakdown(server, seen)}")
        print(
            f"  per hour: {hour.sent / 1024:.1f} KiB HTTP sent, "
            f"{hour.received / 1024:.1f} KiB HTTP received; "
            f"{hour.wire_sent / 1024:.1f} KiB / {hour.wire_received / 1024:.1f} KiB on the wire"
        )
        print(
            f"  readings accepted: {len(server.readings)}, "
            f"responses accepted: {len(server.responses)}, "
            f"client errors: {len(client.errors)}"
        )
        await client.http.aclose()

        # what one extra handshake costs (a server closing the connection between polls)
        start = Traffic.of(stats)
        await client.http.get(client.dcap_url)
        with_handshake = Traffic.of(stats) - start
        start = Traffic.of(stats)
        await client.http.get(client.dcap_url)
        kept_alive = Traffic.of(stats) - start
        print(
            f"per handshake: +{with_handshake.wire_sent - kept_alive.wire_sent:,} B sent, "
            f"+{with_handshake.wire_received - kept_alive.wire_received:,} B received on the "
            f"wire (x60 per hour if the server closes idle connections)"
        )
        await client.http.aclose()


def main() -> None:
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="dynexport-bench-") as folder:
        trio.run(run, Path(folder))


if __name__ == "__main__":
    main()
