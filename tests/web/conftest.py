"""Fixtures for the web tests: a setup-mode App with its web server on 127.0.0.1, and a client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from dynexport.app import App, AppOptions
from dynexport.httpio import HttpClient, Limits
from dynexport.httpio.client import Response
from dynexport.httpio.server import ConnectionPool
from dynexport.system.config import Config
from dynexport.web.server import serve_web

PASSWORD = "correct horse battery"


@dataclass
class Client:
    """A tiny browser: keeps the session cookie and sends the CSRF token on changes."""

    port: int
    host: str | None = None
    cookie: str | None = None
    csrf: str | None = None
    http: HttpClient = field(init=False)

    def __post_init__(self) -> None:
        self.http = HttpClient(
            f"http://127.0.0.1:{self.port}",
            None,
            allow_plain_http=True,
            retries=0,
            timeout=20,
            content_type="application/json",
        )

    async def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        csrf: bool = True,
    ) -> Response:
        h = dict(headers or {})
        if self.cookie:
            h["Cookie"] = self.cookie
        if csrf and self.csrf and method not in ("GET", "HEAD"):
            h["X-CSRF-Token"] = self.csrf
        if self.host:
            h["Host"] = self.host
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        resp = await self.http.request(method, path, body=data, headers=h)
        set_cookie = resp.header("set-cookie")
        if set_cookie:
            value = set_cookie.split(";", 1)[0]
            self.cookie = None if value.endswith("=") else value
        if resp.header("content-type") == "application/json" and resp.body:
            doc = json.loads(resp.body)
            if isinstance(doc, dict) and "csrf" in doc:
                self.csrf = doc["csrf"]
        return resp

    async def json(self, method: str, path: str, body: object = None, **kw: Any) -> Any:
        resp = await self.request(method, path, body, **kw)
        return resp.status, json.loads(resp.body)

    async def aclose(self) -> None:
        await self.http.aclose()


@dataclass
class Web:
    app: App
    port: int
    folder: Path
    pool: ConnectionPool | None = None
    """The server's connections (held, dropped, refused), when started by `start_web`."""

    def client(self) -> Client:
        return Client(self.port)


def setup_app(folder: Path) -> App:
    return App(
        Config(base_dir=folder),
        AppOptions(
            data_dir=folder / "data",
            config_path=folder / "data" / "config.json",
            web_host="127.0.0.1",
            web_port=0,
        ),
        setup_mode=True,
    )


async def start_web(
    tmp_path: Path, nursery: trio.Nursery, limits: Limits, **api_options: Any
) -> Web:
    """A setup-mode App (not running its links) with serve_web on 127.0.0.1, in ``nursery``."""
    app = setup_app(tmp_path)
    app.options.data_dir.mkdir(parents=True)
    pool = ConnectionPool(limits)
    port = await nursery.start(
        partial(
            serve_web,
            app,
            host="127.0.0.1",
            port=0,
            limits=limits,
            flush_every_s=3600,
            api_options=api_options,
            pool=pool,
        )
    )
    return Web(app, port, tmp_path, pool)


@pytest.fixture
async def web(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Web]:
    """A setup-mode App (not running its links) with serve_web on 127.0.0.1."""
    limits = Limits(header_timeout=0.5, body_timeout=0.5, max_body_bytes=64 * 1024)
    # Device scans give each unit 3 s, not the product's 0.5 s: under CI load the simulator on
    # 127.0.0.1 answered a present unit later than that, and it was reported absent.
    yield await start_web(tmp_path, nursery, limits, scan_timeout_s=3.0)


async def logged_in(web: Web) -> Client:
    """A client that set the admin password (first step of the setup)."""
    c = web.client()
    status, _ = await c.json("POST", "/api/setup/password", {"password": PASSWORD})
    assert status == 200
    return c
