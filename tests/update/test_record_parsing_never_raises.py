"""Whatever ``update.json`` holds, reading it never raises.

A ``devices_waited_s`` of 1 followed by 400 zeros (valid JSON, an int beyond a float's range)
made ``float()`` raise OverflowError out of ``parse_record``: ``App.status()`` raised (the
status API, live events and MQTT failed with it) and the update task restarted for ever.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.update.service import UpdateStatus, read_record
from dynexport.update.state import STATE_FILE, UpdateRecord, parse_record

TRIAL = UpdateRecord("trial", "1.5.0", target="B", source="A", boot_id="x")
HUGE = b"1" + b"0" * 400


def test_a_wait_beyond_a_floats_range_is_no_wait_and_the_record_stands(tmp_path: Path) -> None:
    raw = TRIAL.to_json().replace(b'"devices_waited_s": null', b'"devices_waited_s": ' + HUGE)
    assert HUGE in raw
    assert parse_record(raw) == TRIAL, "read as absent, as any other bad value of it"
    (tmp_path / STATE_FILE).write_bytes(raw)
    assert read_record(tmp_path) == TRIAL
    (tmp_path / "cmdline").write_text("rauc.slot=B\n")
    status = UpdateStatus(tmp_path, tmp_path / "cmdline", tmp_path / "no-boot-id")()
    assert status["phase"] == "trial" and status["version"] == "1.5.0"


async def test_the_status_with_such_a_record_does_not_raise(tmp_path: Path) -> None:
    from dynexport.app import App, AppOptions
    from dynexport.system.config import Config

    (tmp_path / STATE_FILE).write_bytes(
        b'{"state": "trial", "version": "1.5.0", "target": "B", "source": "A", '
        b'"boot_id": "x", "devices_waited_s": ' + HUGE + b"}"
    )
    update = App(Config(), AppOptions(data_dir=tmp_path)).status()["update"]
    assert update["version"] == "1.5.0"


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = list(TRIAL.__dataclass_fields__)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=len(FIELDS)))
def test_any_value_in_any_field_gives_a_record_or_none_never_an_error(
    changes: dict[str, Any],
) -> None:
    doc = json.loads(TRIAL.to_json())
    doc.update(changes)
    parsed = parse_record(json.dumps(doc).encode())
    if parsed is not None:
        assert parsed.devices_waited_s is None or 0 <= parsed.devices_waited_s < float("inf")
        assert parsed.trial_boot is None or isinstance(parsed.trial_boot, str)
