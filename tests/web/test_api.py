"""The JSON API: setup password, login, CSRF, config PUT, captive redirects, robustness, SSE."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest
import trio

from dynexport.web.api import WebApi
from dynexport.web.auth import LoginLimiter
from tests.web import raw
from tests.web.conftest import PASSWORD, Web, logged_in

MINIMAL_CONFIG = {"limits": {"exportW": 5000}}


# -- captive portal -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/generate_204", "/hotspot-detect.html", "/connecttest.txt", "/gen_204"]
)
async def test_os_connectivity_probes_are_redirected_to_the_setup_page_in_setup_mode(
    web: Web, path: str
) -> None:
    reply = await raw.exchange(web.port, raw.get(path, "connectivitycheck.gstatic.com"))
    assert raw.status_of(reply) == 302
    assert raw.header(reply, "location") == "http://192.168.4.1/setup"


async def test_a_probe_sent_to_the_devices_own_address_is_redirected_to_that_address(
    web: Web,
) -> None:
    reply = await raw.exchange(web.port, raw.get("/generate_204", "192.168.4.1"))
    assert raw.status_of(reply) == 302
    assert raw.header(reply, "location") == "http://192.168.4.1/setup"


async def test_any_foreign_host_is_redirected_in_setup_mode(web: Web) -> None:
    reply = await raw.exchange(web.port, raw.get("/some/page", "www.example.com"))
    assert raw.status_of(reply) == 302
    assert raw.header(reply, "location") == "http://192.168.4.1/setup"


async def test_the_setup_page_is_served_on_the_devices_own_address(web: Web) -> None:
    for host in ("192.168.4.1", f"127.0.0.1:{web.port}", "dynexport.local"):
        reply = await raw.exchange(web.port, raw.get("/setup", host))
        assert raw.status_of(reply) == 200
        assert raw.header(reply, "content-type") == "text/html; charset=utf-8"


async def test_probes_are_not_redirected_once_configured(web: Web) -> None:
    c = await logged_in(web)
    assert (await c.request("PUT", "/api/config", MINIMAL_CONFIG)).status == 200
    reply = await raw.exchange(web.port, raw.get("/generate_204", f"127.0.0.1:{web.port}"))
    assert raw.status_of(reply) == 404


# -- password, login, sessions ----------------------------------------------------------------


async def test_nothing_changes_before_the_admin_password_is_set(web: Web) -> None:
    c = web.client()
    status, doc = await c.json("PUT", "/api/config", MINIMAL_CONFIG)
    assert (status, doc["setup"]) == (401, True)
    assert not (web.folder / "data" / "config.json").exists()
    status, doc = await c.json("GET", "/api/session")
    assert doc == {
        "passwordSet": False,
        "loggedIn": False,
        "setupMode": True,
        "configWritable": True,
    }


async def test_a_short_password_is_refused(web: Web) -> None:
    status, doc = await web.client().json("POST", "/api/setup/password", {"password": "short"})
    assert status == 422
    assert "at least 8" in doc["error"]


async def test_setting_the_password_stores_a_private_scrypt_hash_and_logs_in(web: Web) -> None:
    c = web.client()
    resp = await c.request("POST", "/api/setup/password", {"password": PASSWORD})
    assert resp.status == 200
    cookie = resp.header("set-cookie") or ""
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    stored = web.folder / "data" / "admin.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    doc = json.loads(stored.read_text())
    assert doc["scheme"] == "scrypt" and PASSWORD not in stored.read_text()
    _, session = await c.json("GET", "/api/session")
    assert session["loggedIn"] and session["csrf"] == c.csrf


async def test_the_password_cannot_be_set_again_so_setup_cannot_be_reentered(web: Web) -> None:
    first = await logged_in(web)
    assert (await first.request("PUT", "/api/config", MINIMAL_CONFIG)).status == 200
    stranger = web.client()
    status, _ = await stranger.json("POST", "/api/setup/password", {"password": "x" * 12})
    assert status == 409
    status, doc = await stranger.json("PUT", "/api/config", {"limits": {"exportW": 99999}})
    assert (status, doc["error"]) == (401, "login required")
    status, _ = await stranger.json("GET", "/api/config")
    assert status == 401
    assert web.app.config.limits.export_w == 5000


async def test_a_state_change_without_the_csrf_token_is_refused(web: Web) -> None:
    c = await logged_in(web)
    status, doc = await c.json("PUT", "/api/config", MINIMAL_CONFIG, csrf=False)
    assert status == 403 and "CSRF" in doc["error"]
    status, doc = await c.json(
        "PUT", "/api/config", MINIMAL_CONFIG, headers={"X-CSRF-Token": "forged"}, csrf=False
    )
    assert status == 403
    assert web.app.setup_mode


async def test_a_cross_site_origin_is_refused(web: Web) -> None:
    c = await logged_in(web)
    status, doc = await c.json(
        "PUT", "/api/config", MINIMAL_CONFIG, headers={"Origin": "http://evil.example"}
    )
    assert (status, doc["error"]) == (403, "cross-site request refused")


async def test_login_logout_and_wrong_password(web: Web) -> None:
    await logged_in(web)
    c = web.client()
    status, doc = await c.json("POST", "/api/login", {"password": "wrong password"})
    assert (status, doc["error"]) == (401, "wrong password")
    status, doc = await c.json("POST", "/api/login", {"password": PASSWORD})
    assert status == 200 and c.csrf
    assert (await c.request("GET", "/api/config")).status == 200
    assert (await c.request("POST", "/api/logout")).status == 200
    assert c.cookie is None


async def test_login_attempts_are_rate_limited_per_client(web: Web) -> None:
    await logged_in(web)
    c = web.client()
    for _ in range(5):
        status, _ = await c.json("POST", "/api/login", {"password": "wrong password"})
        assert status == 401
    resp = await c.request("POST", "/api/login", {"password": PASSWORD})
    assert resp.status == 429
    assert json.loads(resp.body)["retryAfterS"] > 0
    assert int(resp.header("retry-after") or 0) == json.loads(resp.body)["retryAfterS"]
    assert c.cookie is None  # even the right password is not checked while blocked


def test_the_login_limiter_bounds_each_client_slows_all_clients_and_forgets_old_checks() -> None:
    now = [0.0]
    limiter = LoginLimiter(lambda: now[0], per_client=3, total=5, window_s=60, slow_s=3)
    for _ in range(3):
        assert limiter.retry_after("a") is None
        limiter.attempt("a")
    assert limiter.retry_after("a") == pytest.approx(60)
    assert limiter.retry_after("b") is None
    limiter.attempt("b")
    limiter.attempt("c")
    assert limiter.retry_after("d") is None  # five in total: checks go on, one every 3 s
    limiter.attempt("d")
    assert limiter.retry_after("e") == pytest.approx(3)
    now[0] = 3.0
    assert limiter.retry_after("e") is None
    now[0] = 61.0
    assert limiter.retry_after("a") is None and limiter.retry_after("e") is None


async def test_changing_the_password_ends_other_sessions(web: Web) -> None:
    a = await logged_in(web)
    b = web.client()
    await b.json("POST", "/api/login", {"password": PASSWORD})
    status, _ = await a.json(
        "POST", "/api/password", {"current": PASSWORD, "password": "another good one"}
    )
    assert status == 200
    assert (await a.request("GET", "/api/config")).status == 200
    assert (await b.request("GET", "/api/config")).status == 401


# -- configuration -----------------------------------------------------------------------------


async def test_a_valid_configuration_is_written_atomically_and_applied_live(web: Web) -> None:
    c = await logged_in(web)
    document = {
        "inverters": [{"tcp": "127.0.0.1:1502", "unit": 1}],
        "limits": {"exportW": 1500, "windows": [{"from": "10:00", "to": "16:00", "exportW": 0}]},
    }
    status, doc = await c.json("PUT", "/api/config", document)
    assert status == 200 and doc["applied"]
    path = web.folder / "data" / "config.json"
    assert json.loads(path.read_text()) == document
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not web.app.setup_mode
    assert web.app.config.limits.export_w == 1500
    status, got = await c.json("GET", "/api/config")
    assert got["inverters"] == [{"type": "sunspec", "tcp": "127.0.0.1:1502", "unit": 1}]
    assert got["limits"]["windows"] == [{"from": "10:00", "to": "16:00", "exportW": 0}]


async def test_a_save_with_a_newer_schema_version_keeps_the_older_file_for_a_rollback(
    web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings saved on a newer release's trial boot (schema version 2) replace a version
    1 file: that file is kept as config.v1.json, the one the release rolled back to runs on."""
    from dynexport.system import migrate

    c = await logged_in(web)
    first = {"version": 1, "limits": {"exportW": 1500}}
    assert (await c.request("PUT", "/api/config", first)).status == 200
    path = web.folder / "data" / "config.json"
    written_by_this_release = path.read_bytes()
    monkeypatch.setattr(migrate, "STEPS", (*migrate.STEPS, lambda doc: doc))
    monkeypatch.setattr(migrate, "CURRENT_VERSION", 2)
    second = {"version": 2, "limits": {"exportW": 4000}}
    assert (await c.request("PUT", "/api/config", second)).status == 200
    assert json.loads(path.read_text()) == second
    kept = path.with_name("config.v1.json")
    assert kept.read_bytes() == written_by_this_release
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("error", "status"),
    [(errno.ENOSPC, 507), (errno.EROFS, 500)],
    ids=["card-full", "card-read-only"],
)
async def test_a_configuration_that_cannot_be_saved_says_why_and_is_not_applied(
    web: Web, monkeypatch: pytest.MonkeyPatch, error: int, status: int
) -> None:
    """A full card answered a bare "500 Internal Server Error": the installer could not tell
    whether the settings were saved, or why not."""
    import dynexport.web.api as api_module

    c = await logged_in(web)
    assert (await c.request("PUT", "/api/config", MINIMAL_CONFIG)).status == 200

    def full(path: object, document: object) -> None:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(api_module, "write_config", full)
    got, doc = await c.json("PUT", "/api/config", {"limits": {"exportW": 100}})
    assert got == status
    assert doc["error"] == f"config.json could not be saved: {os.strerror(error)}"
    assert web.app.config.limits.export_w == 5000  # nothing applied that is not on the card


async def test_configuration_errors_are_422_listing_every_problem(web: Web) -> None:
    c = await logged_in(web)
    status, doc = await c.json(
        "PUT",
        "/api/config",
        {
            "inverters": [{"tcp": "1.2.3.4", "unit": 300}],
            "colour": "red",
            "limits": {"exportW": -1},
        },
    )
    assert status == 422
    assert "inverters[0].unit: must be 1..247" in doc["problems"]
    assert any(p.startswith("colour:") for p in doc["problems"])
    assert any(p.startswith("limits.exportW") for p in doc["problems"])
    assert web.app.setup_mode and not (web.folder / "data" / "config.json").exists()


async def test_a_utility_whose_certificate_files_are_missing_is_refused(web: Web) -> None:
    c = await logged_in(web)
    utility = {
        "server": "https://127.0.0.1:9",
        "ca": "nope-ca.pem",
        "cert": "nope.pem",
        "key": "nope-key.pem",
        "nmi": "4312345678",
    }
    status, doc = await c.json("PUT", "/api/config", {"utility": utility})
    assert status == 422
    assert any(p.startswith("utility.cert: file not found") for p in doc["problems"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not valid JSON"),
        (b"[1, 2]", "body must be a JSON object"),
        (b"", "a JSON object is required"),
        (b"\xff\xfe", "body is not UTF-8"),
    ],
)
async def test_bad_json_is_400_with_the_problem(web: Web, body: bytes, message: str) -> None:
    c = await logged_in(web)
    status, doc = await c.json("PUT", "/api/config", raw=body)
    assert status == 400 and doc["error"].startswith(message)


# -- robustness ---------------------------------------------------------------------------------


async def test_unknown_paths_are_404_and_wrong_methods_405(web: Web) -> None:
    c = web.client()
    status, doc = await c.json("GET", "/api/nothing")
    assert (status, doc["error"]) == (404, "no such resource: /api/nothing")
    status, doc = await c.json("DELETE", "/api/status")
    assert status == 405 and doc["allowed"] == ["GET"]
    assert (await c.request("GET", "/etc/passwd")).status == 404
    assert (await c.request("GET", "/static/../api.py")).status == 404


async def test_the_server_keeps_serving_after_oversized_slow_and_malformed_requests(
    web: Web,
) -> None:
    big = b"PUT /api/config HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n"
    assert raw.status_of(await raw.exchange(web.port, big)) == 413
    huge_head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n"
    assert raw.status_of(await raw.exchange(web.port, huge_head)) == 431
    slow = b"GET /api/status HTTP/1.1\r\nHost: x\r\n"  # never finishes its headers
    assert raw.status_of(await raw.exchange(web.port, slow)) == 408
    garbage = b"NOT HTTP AT ALL\r\n\r\n"
    assert raw.status_of(await raw.exchange(web.port, garbage)) == 400
    status, doc = await web.client().json("GET", "/api/status")
    assert status == 200 and doc["setupMode"] is True


# -- reading --------------------------------------------------------------------------------------


async def test_status_carries_alerts_and_the_time(web: Web) -> None:
    status, doc = await web.client().json("GET", "/api/status")
    assert status == 200
    assert doc["alerts"][0]["code"] == "setup"
    assert doc["time"]


async def test_limits_show_the_current_limits_and_their_sources(web: Web) -> None:
    c = await logged_in(web)
    await c.request("PUT", "/api/config", {"limits": {"exportW": 3000}})
    web.app.progress.register("controller", 10.0, trio.current_time())
    web.app.control_once(trio.current_time())  # one control cycle merges the limits
    status, doc = await c.json("GET", "/api/limits")
    assert status == 200
    assert doc["current"]["exportW"] == 3000 and doc["current"]["source"]["export_w"] == "config"
    assert doc["utility"] == {
        "configured": False,
        "clockOffsetS": 0,
        "schedule": [],
        "nextChange": None,
    }
    assert doc["config"]["exportW"] == 3000


async def test_live_events_stream_status_documents(web: Web) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", web.port)
    async with stream:
        await stream.send_all(raw.get("/api/events", "127.0.0.1"))
        got = b""
        with trio.fail_after(10):
            while got.count(b"event: status") < 2:
                got += await stream.receive_some(65536)
    assert b"content-type: text/event-stream" in got.lower()
    data = got.split(b"data: ", 1)[1].split(b"\n", 1)[0]
    assert json.loads(data)["setupMode"] is True


async def test_security_headers_are_sent(web: Web) -> None:
    resp = await web.client().request("GET", "/")
    assert resp.header("x-frame-options") == "DENY"
    assert "default-src 'self'" in (resp.header("content-security-policy") or "")
    resp = await web.client().request("GET", "/api/status")
    assert resp.header("cache-control") == "no-store"


def test_webapi_can_be_built_for_a_tls_server_with_secure_cookies(tmp_path) -> None:
    from tests.web.conftest import setup_app

    api = WebApi(setup_app(tmp_path), tls=True)
    session = api.sessions.create()
    assert api._set_cookie(session)[1].endswith("; Secure")


@pytest.mark.parametrize(
    "damage", [b"", b"{", b"[]", b'{"scheme": "scrypt"}'], ids=["empty", "torn", "list", "part"]
)
async def test_a_damaged_password_file_is_named_not_taken_for_a_wrong_password(
    web: Web, damage: bytes
) -> None:
    """A damaged admin.json made the right password look wrong (401), counted against the
    login limit, and nothing named the file."""
    await logged_in(web)
    (web.folder / "data" / "admin.json").write_bytes(damage)
    c = web.client()
    for _ in range(12):  # past the failed-login limit: none of these counts as one
        status, doc = await c.json("POST", "/api/login", {"password": PASSWORD})
        assert status == 503
        assert doc["error"].startswith("admin.json is damaged")
        assert doc["error"].endswith("the password cannot be checked")
