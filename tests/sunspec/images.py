"""Register images built with pysunspec2's own model classes: an encoder independent of ours."""

from __future__ import annotations

import struct
from typing import Any

import sunspec2.device as ss_device

SUNS = [0x5375, 0x6E53]


def model_registers(model_id: int, raw: dict[str, Any] | None = None) -> list[int]:
    """ID, L and every register of one model, with the given raw (unscaled) point values;
    points not given are encoded as not implemented by pysunspec2."""
    m = ss_device.Model(model_id=model_id, data=raw or {})
    assert not m.error_info, m.error_info
    data = m.get_mb()
    return list(struct.unpack(f">{len(data) // 2}H", data))


def device_image(base: int, models: list[list[int]]) -> dict[int, int]:
    """A whole SunSpec map: 'SunS' at base, the models, then the end marker."""
    regs = SUNS[:]
    for m in models:
        regs.extend(m)
    regs.extend([0xFFFF, 0])
    return {base + i: v for i, v in enumerate(regs)}
