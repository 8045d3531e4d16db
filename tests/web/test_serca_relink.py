"""A SERCA saved on the web reaches the running utility link.

The link reads ``utility.ca`` once, when it is built (sep2/client.py Sep2Client.__init__ ->
client_context), and a PUT /api/config naming the same file is no change to apply. Before,
PUT /api/cert/serca only wrote the file (PUT /api/cert/chain rebuilt the link): the link kept
verifying the server against the SERCA it read at its start until the service restarted, while
the alert kept saying "check the SERCA"."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.web.conftest import Web, logged_in
from tests.web.test_installer import _enrol, _pki, _utility_config


async def test_a_serca_saved_for_the_configured_utility_rebuilds_its_link(
    web: Web, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reloads: list[bool] = []
    monkeypatch.setattr(web.app, "reload_utility", lambda: reloads.append(True))
    c = await logged_in(web)
    pki = _pki(tmp_path)
    chain = await _enrol(c, pki)  # saves the SERCA first: no utility yet, nothing to rebuild
    assert reloads == []
    assert (await c.json("PUT", "/api/cert/chain", raw=chain.encode()))[0] == 200
    doc = _utility_config(web)
    assert (await c.json("PUT", "/api/config", doc))[0] == 200  # the site runs with its link
    # the utility's new (or corrected) SERCA, saved in Settings
    new = _pki(tmp_path / "new").files["serca"].read_bytes()
    status, saved = await c.json("PUT", "/api/cert/serca", raw=new)
    assert status == 200 and saved["serca"]
    assert reloads == [True], "the utility link kept the SERCA it read at its start"
    assert (web.app.options.data_dir / "serca.pem").read_bytes().strip() == new.strip()
