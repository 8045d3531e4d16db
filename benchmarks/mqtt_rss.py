"""What MQTT publishing costs: resident memory and CPU of the bridge at a 1 s publish rate.

Starts Mosquitto (Debian's ``mosquitto``) on 127.0.0.1 with a generated configuration, then in
this process runs a trio loop that builds a status document every second (two inverters, as
``App.status()`` does) for ``--seconds`` without MQTT, then the same with the MQTT bridge
publishing the state topics and Home Assistant discovery every second. Prints the VmRSS and CPU
time of each phase and the difference (the goal: at most 3 MB and 0.3 % of a core). Stops the
broker it started; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integrations.broker import running_broker
from tests.integrations.statusdoc import status


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def phase(seconds: float, url: str | None) -> tuple[int, float, int]:
    """Runs ``seconds`` of status building (and publishing when ``url``): RSS KiB at the end,
    CPU seconds used, rounds published."""
    from dynexport.integrations.mqtt import MqttBridge
    from dynexport.system.config import parse_config

    built = 0

    def doc() -> dict[str, object]:
        nonlocal built
        built += 1
        return status()

    async with trio.open_nursery() as nursery:
        bridge = None
        if url is not None:
            cfg = parse_config({"mqtt": {"url": url, "topicPrefix": "bench/site", "publishS": 1}})
            bridge = MqttBridge(lambda: cfg.mqtt, doc)
            nursery.start_soon(bridge.run)
        else:

            async def build() -> None:
                while True:
                    doc()
                    await trio.sleep(1)

            nursery.start_soon(build)
        await trio.sleep(5)  # settle (connect, first rounds)
        cpu0 = cpu_s()
        await trio.sleep(seconds)
        used = cpu_s() - cpu0
        rss = rss_kib()
        nursery.cancel_scope.cancel()
    return rss, used, 0 if bridge is None else bridge.published


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp, running_broker(Path(tmp)) as broker:
        rss_a, cpu_a, _ = trio.run(phase, args.seconds, None)
        import paho.mqtt.client  # noqa: F401  (its import is part of the cost)

        rss_b, cpu_b, rounds = trio.run(phase, args.seconds, broker.url)
    share_a = 100 * cpu_a / args.seconds
    share_b = 100 * cpu_b / args.seconds
    print(f"without MQTT: RSS {rss_a / 1024:.1f} MiB, CPU {share_a:.3f} % of a core")
    print(
        f"with MQTT at 1 s ({rounds} rounds published): RSS {rss_b / 1024:.1f} MiB, "
        f"CPU {share_b:.3f} % of a core"
    )
    print(
        f"MQTT adds: {(rss_b - rss_a) / 1024:.2f} MiB RSS, {share_b - share_a:.3f} % of a core "
        "(goal: at most 3 MB and 0.3 %)"
    )


if __name__ == "__main__":
    main()
