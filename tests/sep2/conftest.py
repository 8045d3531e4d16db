"""Fixtures shared by the utility-link tests: one test PKI per session and a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from dynexport.sep2.certs import make_test_pki
from tests.sep2.fakes import FakeClock


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SERCA → MICA → device and server certificates, made once (key generation is slow)."""
    folder = Path(tmp_path_factory.mktemp("utility-pki"))
    make_test_pki(folder, now=datetime.now(UTC))
    return folder


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
