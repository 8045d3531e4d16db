"""The pages: served by the device, small, nothing from the internet."""

from __future__ import annotations

import re

from dynexport.web import static
from tests.web.conftest import Web

PAGE_BUDGET = 200 * 1024


def test_every_asset_together_weighs_under_200_kb() -> None:
    assets = static.assets()
    assert {"index.html", "app.js", "app.css", "icon.svg"} <= set(assets)
    total = sum(len(a.body) for a in assets.values())
    assert total < PAGE_BUDGET, f"{total} bytes"


def test_no_asset_loads_anything_from_another_host() -> None:
    for asset in static.assets().values():
        text = asset.body.decode()
        urls = re.findall(r"""(?:src|href|url)\s*[=(]\s*["']?(https?:)?//""", text)
        assert not urls, asset.name
        assert "@import" not in text and "fonts.googleapis" not in text


async def test_pages_and_assets_are_served_with_their_types_and_etags(web: Web) -> None:
    c = web.client()
    for path, ctype in [
        ("/", "text/html; charset=utf-8"),
        ("/dashboard", "text/html; charset=utf-8"),
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/app.css", "text/css; charset=utf-8"),
    ]:
        resp = await c.request("GET", path)
        assert (resp.status, resp.header("content-type")) == (200, ctype)
        etag = resp.header("etag")
        again = await c.request("GET", path, headers={"If-None-Match": etag or ""})
        assert again.status == 304
    assert (await c.request("GET", "/static/nothing.js")).status == 404
