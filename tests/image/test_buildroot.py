"""image-check against a Buildroot tree (BUILDROOT=path); skipped without one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.image.helpers import EXT

BUILDROOT = os.environ.get("BUILDROOT", "")

pytestmark = pytest.mark.skipif(
    not BUILDROOT or not (Path(BUILDROOT) / "utils/check-package").is_file(),
    reason="set BUILDROOT to a Buildroot 2026.05.x source tree to run image-check",
)


@pytest.mark.slow
def test_image_check_passes() -> None:
    proc = subprocess.run(
        [str(EXT / "scripts/image-check.sh"), BUILDROOT],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "image-check: OK" in proc.stdout
