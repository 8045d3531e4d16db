"""Web API: time zones listed once off the event loop, lone surrogates and huge
numbers refused with a 400, a web.host this machine cannot bind refused (and never left
unserved), a restore that would lose a secret refused, a read error called a read error."""

from __future__ import annotations

import errno
import json
import logging
import threading
from functools import partial
from pathlib import Path

import pytest
import trio

from dynexport.web import api
from dynexport.web.server import serve_web
from tests.web.conftest import PASSWORD, Client, Web, logged_in, setup_app

LONE = b'"ab\\ud800cdefghijklmnop"'
"""A JSON string with half of a UTF-16 pair: it decodes, but no UTF-8 encoding holds it."""
FOREIGN = "192.0.2.7"
"""TEST-NET-1: an IP address that is no address of this machine."""


# -- time zones ------------------------------------------------------------------------------


async def test_time_zones_are_listed_once_in_a_worker_thread_then_reused(
    web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zoneinfo.available_timezones() (some 1 000 file stats and opens) ran on the event loop
    the controller shares, at every open GET /api/timezones."""
    import zoneinfo

    monkeypatch.setattr(api, "ZONES", api.ZoneList())  # as at the process's start
    listed_by: list[threading.Thread] = []
    real = zoneinfo.available_timezones

    def counting() -> set[str]:
        listed_by.append(threading.current_thread())
        return real()

    monkeypatch.setattr(zoneinfo, "available_timezones", counting)
    c = web.client()
    answers = []

    async def ask() -> None:
        answers.append(await c.json("GET", "/api/timezones"))

    async with trio.open_nursery() as nursery:  # parallel first requests: listed once
        for _ in range(3):
            nursery.start_soon(ask)
    for _ in range(3):
        await ask()
    assert len(listed_by) == 1
    assert listed_by[0] is not threading.main_thread()
    assert all(status == 200 for status, _ in answers)
    assert "Australia/Sydney" in answers[0][1]["all"]
    assert all(doc == answers[0][1] for _, doc in answers)


# -- lone surrogates -------------------------------------------------------------------------


async def test_a_lone_surrogate_in_the_first_password_is_a_400_and_sets_nothing(web: Web) -> None:
    c = web.client()
    resp = await c.request("POST", "/api/setup/password", raw=b'{"password": ' + LONE + b"}")
    doc = json.loads(resp.body)
    assert resp.status == 400
    assert doc["error"] == f"password: {api.LONE_SURROGATE}"
    assert not (web.folder / "data" / "admin.json").exists()
    assert (await c.json("GET", "/api/session"))[1]["passwordSet"] is False


async def test_a_lone_surrogate_in_wifi_password_change_or_config_is_a_400_naming_the_field(
    web: Web,
) -> None:
    """PUT /api/wifi, POST /api/password and PUT /api/config (metrics.token) each ended in a
    500 as the string was encoded; each is now refused where the body is decoded, and nothing
    is written."""
    c = await logged_in(web)
    resp = await c.request("PUT", "/api/wifi", raw=b'{"ssid": ' + LONE + b', "psk": ""}')
    assert resp.status == 400 and json.loads(resp.body)["problems"] == [
        f"ssid: {api.LONE_SURROGATE}"
    ]
    assert not (web.folder / "data" / "wifi.json").exists()
    body = b'{"current": "' + PASSWORD.encode() + b'", "password": ' + LONE + b"}"
    resp = await c.request("POST", "/api/password", raw=body)
    assert resp.status == 400 and "password: a string holds a lone surrogate" in resp.body.decode()
    resp = await c.request("PUT", "/api/config", raw=b'{"metrics": {"token": ' + LONE + b"}}")
    assert resp.status == 400
    assert json.loads(resp.body)["error"] == f"metrics.token: {api.LONE_SURROGATE}"
    resp = await c.request("PUT", "/api/config", raw=b'{"inverters": [{"x": 1}, ' + LONE + b"]}")
    assert json.loads(resp.body)["error"].startswith("inverters[1]: ")
    resp = await c.request("PUT", "/api/config", raw=b'{"limits": {' + LONE + b": 1}}")
    assert json.loads(resp.body)["error"] == f"a key in limits: {api.LONE_SURROGATE}"
    assert not (web.folder / "data" / "config.json").exists()
    # the old password still logs in: nothing was changed
    again = Client(web.port)
    assert (await again.json("POST", "/api/login", {"password": PASSWORD}))[0] == 200


def test_a_paired_surrogate_escape_is_one_character_and_accepted() -> None:
    """ "\\ud83d\\ude00" is a whole UTF-16 pair (one emoji), not a lone half."""
    assert api.parse_json_object(b'{"ssid": "caf\\u00e9 \\ud83d\\ude00"}') == {"ssid": "café 😀"}


# -- installer tools -------------------------------------------------------------------------


async def test_a_test_limit_pct_no_float_can_hold_is_a_400_naming_its_range(web: Web) -> None:
    """A JSON integer of 400 digits passed the number check, and float() raised OverflowError:
    a 500."""
    c = await logged_in(web)
    web.app.setup_mode = False  # a configured site
    huge = b"1" + b"0" * 400
    body = b'{"inverter": "inverter 1", "pct": ' + huge + b', "seconds": 60}'
    status, doc = await c.json("POST", "/api/tools/test-limit", raw=body)
    assert status == 400 and doc["error"] == "pct must be 0..100"
    body = b'{"inverter": "inverter 1", "pct": 10, "seconds": -' + huge + b"}"
    status, doc = await c.json("POST", "/api/tools/test-limit", raw=body)
    assert status == 400 and doc["error"] == "seconds must be 5..300"


# -- web.host ---------------------------------------------------------------------------------


async def test_a_web_host_this_machine_cannot_bind_is_refused_and_not_saved(web: Web) -> None:
    """An IP address that is not this machine's was saved (200), and at the next start the web
    server could not bind it (errno 99): the UI gone for good."""
    c = await logged_in(web)
    status, doc = await c.json("PUT", "/api/config", {"web": {"host": FOREIGN, "port": 80}})
    assert status == 422
    assert doc["problems"] == [
        f"web.host: {FOREIGN} is not an address of this machine, so the web server could not use it"
    ]
    assert not (web.folder / "data" / "config.json").exists()
    status, _ = await c.json("PUT", "/api/config", {"web": {"host": "127.0.0.1", "port": 80}})
    assert status == 200 and web.app.config.web.host == "127.0.0.1"


async def test_a_restored_backup_naming_another_sites_address_is_refused(web: Web) -> None:
    c = await logged_in(web)
    backup = {"web": {"host": FOREIGN, "port": 80}, "backup": {"secretsRemoved": []}}
    status, doc = await c.json("POST", "/api/config/restore", backup)
    assert status == 422 and doc["problems"][0].startswith(f"web.host: {FOREIGN} is not")


async def test_the_running_web_host_is_accepted_again_even_if_it_is_not_bindable(
    web: Web,
) -> None:
    """Saving the settings page unchanged keeps working while the server runs on its
    fallback: only a changed web.host is tried."""
    from dataclasses import replace

    c = await logged_in(web)
    web.app.config = replace(web.app.config, web=replace(web.app.config.web, host=FOREIGN))
    status, _ = await c.json("PUT", "/api/config", {"web": {"host": FOREIGN, "port": 80}})
    assert status == 200


async def test_a_web_host_that_is_not_here_falls_back_to_all_addresses_and_says_so(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """The server binds the fallback (all addresses on the device; 127.0.0.1 in this test)
    instead of failing at every start, logs a warning, and the status has an alert."""
    app = setup_app(tmp_path)
    app.options.data_dir.mkdir(parents=True)
    caplog.set_level(logging.WARNING, logger="dynexport.web")
    port = await nursery.start(
        partial(serve_web, app, host=FOREIGN, port=0, fallback_host="127.0.0.1")
    )
    status, doc = await Client(port).json("GET", "/api/status")
    assert status == 200
    said = f"web.host {FOREIGN} is not an address of this machine"
    assert doc["webHostFallback"] == f"{said}: the web server listens on 127.0.0.1 instead"
    assert doc["alerts"][0]["code"] == "web-host" and said in doc["alerts"][0]["text"]
    assert f"web.host {FOREIGN} is not an address of this machine" in caplog.text


async def test_a_web_server_on_its_own_address_reports_no_fallback(web: Web) -> None:
    status, doc = await web.client().json("GET", "/api/status")
    assert status == 200 and doc["webHostFallback"] is None
    assert all(a["code"] != "web-host" for a in doc["alerts"])


async def test_a_port_in_use_is_not_mistaken_for_a_foreign_address(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Only 'not an address here' falls back: a port already taken fails as before (the app
    retries it)."""
    app = setup_app(tmp_path)
    app.options.data_dir.mkdir(parents=True)
    taken = trio.socket.socket()
    await taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ExceptionGroup) as failed:
            await nursery.start(
                partial(serve_web, app, host="127.0.0.1", port=port, fallback_host="127.0.0.2")
            )
    finally:
        taken.close()
    in_use = failed.value.subgroup(lambda e: getattr(e, "errno", None) == errno.EADDRINUSE)
    assert in_use is not None


# -- backup and restore ------------------------------------------------------------------------


async def test_a_restore_that_would_drop_the_mqtt_password_is_refused(web: Web) -> None:
    """docs/web.md said a secret the backup lacks is refused when this device has no such
    section, but an mqtt section without its (optional) password was applied without it."""
    c = await logged_in(web)
    backup = {
        "mqtt": {"url": "mqtt://127.0.0.1", "username": "u"},
        "backup": {"secretsRemoved": ["mqtt.password"]},
    }
    status, doc = await c.json("POST", "/api/config/restore", backup)
    assert status == 422
    assert doc["problems"] == [
        "mqtt.password: the backup left it out and this device has none to keep; set it here "
        "first (or take that section out of the backup)"
    ]
    assert web.app.config.mqtt is None
    assert not (web.folder / "data" / "config.json").exists()


async def test_a_restore_keeps_this_devices_mqtt_password(web: Web) -> None:
    c = await logged_in(web)
    mqtt = {"url": "mqtt://127.0.0.1", "username": "u", "password": "pw-0123456789"}
    assert (await c.json("PUT", "/api/config", {"mqtt": mqtt}))[0] == 200
    backup = {
        "mqtt": {"url": "mqtt://127.0.0.1", "username": "v"},
        "backup": {"secretsRemoved": ["mqtt.password"]},
    }
    status, doc = await c.json("POST", "/api/config/restore", backup)
    assert status == 200 and doc["secretsKept"] == ["mqtt.password"]
    assert web.app.config.mqtt is not None and web.app.config.mqtt.password == "pw-0123456789"


async def test_a_backup_of_a_broker_without_a_password_restores_as_it_was(web: Web) -> None:
    """No secret was removed: nothing is missing."""
    c = await logged_in(web)
    backup = {"mqtt": {"url": "mqtt://127.0.0.1"}, "backup": {"secretsRemoved": []}}
    status, _ = await c.json("POST", "/api/config/restore", backup)
    assert status == 200 and web.app.config.mqtt is not None


# -- read errors ---------------------------------------------------------------------------------


async def test_a_file_that_cannot_be_read_is_reported_as_unreadable_not_unsaved(
    web: Web,
) -> None:
    c = await logged_in(web)
    (web.folder / "data" / "wifi.json").mkdir()  # stands in for EIO or EACCES on the card
    status, doc = await c.json("GET", "/api/wifi")
    assert status == 500
    assert doc["error"] == "could not be read (wifi.json): Is a directory"


async def test_a_web_host_that_comes_later_is_moved_to_once_it_is_here(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At boot the configured address may come only with DHCP or the Wi-Fi, after the service
    started: the server fell back to all addresses for the whole uptime, telling the owner to
    correct a web.host that was right. It looks again and moves to it once it is here (here
    127.0.0.2, "absent" until the test says so, the fallback 127.0.0.1)."""
    from dynexport.httpio import serve_http as real_serve
    from dynexport.web import server

    absent = True

    async def serve_http(*args: object, host: str, **kwargs: object) -> None:
        if host == "127.0.0.2" and absent:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        await real_serve(*args, host=host, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(server, "serve_http", serve_http)
    monkeypatch.setattr(server, "_here", lambda host: not absent)
    app = setup_app(tmp_path)
    app.options.data_dir.mkdir(parents=True)
    port = await nursery.start(
        partial(
            serve_web, app, host="127.0.0.2", port=0, fallback_host="127.0.0.1",
            host_recheck_s=0.05,
        )
    )  # fmt: skip
    status, doc = await Client(port).json("GET", "/api/status")
    assert status == 200 and doc["webHostFallback"] is not None
    absent = False  # the address has come
    with trio.fail_after(30):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.2", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            break
    with pytest.raises(OSError):  # the fallback's listener is closed
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_a_move_to_web_host_that_fails_is_tried_again_only_when_it_comes_back(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An address that probes as here but cannot take the port (a name with one address here
    and one not): the loop went straight back to the fallback and tried again, about 2,000
    times a second, a warning each pass. Now it tries again only once the address has gone and
    come back, and the fallback's connections stay up meanwhile."""
    from dynexport.httpio import serve_http as real_serve
    from dynexport.web import server

    tries = 0

    async def serve_http(*args: object, host: str, **kwargs: object) -> None:
        nonlocal tries
        if host == "127.0.0.2":
            tries += 1
            raise OSError(errno.EADDRNOTAVAIL if tries == 1 else errno.EADDRINUSE, "no")
        await real_serve(*args, host=host, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(server, "serve_http", serve_http)
    monkeypatch.setattr(server, "_here", lambda host: True)
    app = setup_app(tmp_path)
    app.options.data_dir.mkdir(parents=True)
    recheck = 0.2
    await nursery.start(
        partial(
            serve_web, app, host="127.0.0.2", port=0, fallback_host="127.0.0.1",
            host_recheck_s=recheck,
        )
    )  # fmt: skip
    await trio.sleep(1.0)
    # the first bind, one move: then not again while it stays "here" (it spun, thousands a
    # second, then cut the fallback's connections at every look)
    assert tries == 2, tries
