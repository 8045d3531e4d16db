"""The energy counters the MQTT bridge publishes, over virtual time (trio's MockClock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dynexport.integrations.energy import MAX_GAP_S
from dynexport.integrations.mqtt import MqttBridge
from dynexport.system.config import parse_config
from tests.integrations.statusdoc import status


@pytest.mark.parametrize("publish_s", [300.0, 3600.0])
async def test_energy_counts_whatever_the_publish_interval_even_over_the_gap_never_bridged(
    autojump_clock: trio.testing.MockClock, publish_s: float
) -> None:
    """The counters were sampled only when a round was published: with ``mqtt.publishS`` over
    ``MAX_GAP_S`` (two minutes; up to an hour is allowed) every interval was a gap never
    bridged and Home Assistant's energy dashboard stayed at 0 Wh for good. Energy is sampled
    on its own, shorter, cadence; the state is still published every ``publishS``."""
    assert publish_s > MAX_GAP_S
    cfg = parse_config(
        {"mqtt": {"url": "mqtt://127.0.0.1:1", "topicPrefix": "d/s", "publishS": publish_s}}
    ).mqtt
    assert cfg is not None and cfg.publish_s == publish_s
    b = MqttBridge(lambda: cfg, lambda: status())  # 2500 W exported, 6000 W generated
    with trio.move_on_after(7200 + 1):  # two hours: rounds at 0 s, publishS, ... 7200 s
        await b._sample_loop(cfg, "d/s")
    assert b.energy.exported_wh == pytest.approx(2 * 2500.0, rel=0.01)
    assert b.energy.generated_wh == pytest.approx(2 * 6000.0, rel=0.01)
    assert b.energy.imported_wh == 0.0
    assert b.snapshot is not None
    assert b.snapshot.seq == 7200 / publish_s + 1  # published every publishS, no more often
    published = {m.topic: m.payload for m in b.snapshot.state}
    assert float(published["d/s/energy/exported"]) == pytest.approx(5000.0, rel=0.01)
    assert float(published["d/s/energy/generated"]) == pytest.approx(12000.0, rel=0.01)
