"""A backlog spanning a postRate change (CSIP-AUS ALL-10 goes 300 s → 60 s) holds intervals of
two lengths. They went out in one MirrorMeterReading per series under the first reading's
ReadingType, so 60 s sets were posted as intervalLength 300. Each length now gets its own
MirrorMeterReading (and ReadingType), and each length its own POST, so no body names one series
under two ReadingTypes."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynexport.sep2 import flow
from dynexport.sep2.telemetry import IntervalReading
from tests.sep2.fakes import T0
from tests.sep2.test_telemetry_refused_series import new_link, readings_post, run

LFDI = "AB" * 20


def test_each_interval_length_gets_its_own_reading_type() -> None:
    t = int(T0)
    readings = [
        IntervalReading("site", "W", t, 300, 1.0, 1.0, 1.0, 60),  # closed before the change
        IntervalReading("site", "W", t + 300, 60, 2.0, 2.0, 2.0, 12),  # after postRate 60
        IntervalReading("site", "W", t + 360, 60, 3.0, 3.0, 3.0, 12),
    ]
    mmrs = flow.meter_readings(LFDI, "site", readings)
    assert len(mmrs) == 2 * 3  # two lengths × average, minimum, maximum
    for mmr in mmrs:
        assert mmr.reading_type is not None
        assert {s.time_period.duration for s in mmr.mirror_reading_sets} == {
            mmr.reading_type.interval_length
        }
    groups = flow.by_interval_length(mmrs)
    assert [g[0].reading_type.interval_length for g in groups if g[0].reading_type] == [300, 60]
    for group in groups:
        assert len({m.mrid for m in group}) == len(group)  # one series once per body


@pytest.mark.parametrize("lists", [True, False])
async def test_a_backlog_across_a_post_rate_change_posts_each_length_apart(
    pki_dir: Path, tmp_path: Path, lists: bool
) -> None:
    outage_end = T0 + 1900

    def outage(method: str, path: str, body: bytes) -> int | None:
        return 503 if method == "POST" and readings_post(path) and clock() < outage_end else None

    srv, client, _, clock = new_link(pki_dir, tmp_path, outage, lists=lists)
    srv.post_rate_s = 300
    await run(client, clock, 900)  # 300 s intervals pile up
    assert {r.duration for r in client.outbox.pending} == {300}
    srv.post_rate_s = 60  # ALL-10: the MirrorUsagePoint's postRate changes
    await run(client, clock, 900)
    assert {r.duration for r in client.outbox.pending} == {60, 300}
    await run(client, clock, 900)
    assert client.state().telemetry_backlog <= 10
    lengths = set()
    for record in srv.readings:
        rt = record.reading_type
        for rs in record.reading.mirror_reading_sets:
            assert rt is not None and rs.time_period.duration == rt.interval_length
            lengths.add(rt.interval_length)
    assert lengths == {60, 300}
    await client.http.aclose()
