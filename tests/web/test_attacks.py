"""The attacks of the LAN review (docs/web.md, "Threat model"), each against the real server on
127.0.0.1. Distinct clients are distinct loopback source addresses (127.0.0.2, 127.0.0.3, ...).
Where time matters the server's clocks are trio's (MockClock), so nothing depends on the speed
of the machine."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dynexport.httpio import Limits
from dynexport.system import storage
from dynexport.web.server import WEB_LIMITS
from tests.web import raw
from tests.web.conftest import PASSWORD, Web, start_web

JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture
async def site(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Web]:
    """A setup-mode App with its web server; the API's clocks are trio's."""
    limits = Limits(**{**WEB_LIMITS.__dict__, "max_body_bytes": 256 * 1024})
    yield await start_web(tmp_path, nursery, limits, clock=trio.current_time)


async def call(
    web: Web,
    method: str,
    path: str,
    body: object = None,
    *,
    source: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
    raw_body: bytes | None = None,
) -> tuple[int, dict[str, str], Any]:
    data = raw_body if raw_body is not None else b"" if body is None else json.dumps(body).encode()
    h = {**JSON_HEADERS, **(headers or {})} if body is not None else dict(headers or {})
    status, head, reply = await raw.request_from(source, web.port, method, path, data, h)
    doc = json.loads(reply) if head.get("content-type") == "application/json" and reply else None
    return status, head, doc


async def set_password(web: Web) -> dict[str, str]:
    """Sets the admin password; the headers of the admin session (cookie and CSRF token)."""
    status, head, doc = await call(web, "POST", "/api/setup/password", {"password": PASSWORD})
    assert status == 200, doc
    return {"Cookie": head["set-cookie"].split(";", 1)[0], "X-CSRF-Token": doc["csrf"]}


class ScryptWatch:
    """Wraps hashlib.scrypt as the web layer calls it: how many ran, and at most at once."""

    def __init__(self, real: Callable[..., bytes]) -> None:
        self.real = real
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> bytes:
        with self.lock:
            self.running += 1
            self.calls += 1
            self.peak = max(self.peak, self.running)
        try:
            return self.real(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def scrypt(monkeypatch: pytest.MonkeyPatch) -> ScryptWatch:
    watch = ScryptWatch(hashlib.scrypt)
    monkeypatch.setattr("dynexport.web.auth.hashlib.scrypt", watch)
    return watch


# -- 1. parallel logins ----------------------------------------------------------------------------


UNANSWERED = 0  # closed without a response: the connection limit (12 per address, 64 in all)


async def login_or_unanswered(web: Web, source: str) -> int:
    """A wrong-password login's status, or UNANSWERED when the connection limit closed it first
    (40 connections opened at once from one address exceed its 12: on a loaded machine the
    server may accept more before it has read any request, and drops the longest waiting)."""
    try:
        status, _, _ = await call(
            web, "POST", "/api/login", {"password": "wrong guess"}, source=source
        )
    except raw.Unanswered:
        return UNANSWERED
    return status


def assert_unanswered_only_by_the_limit(
    web: Web, statuses: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """Every connection closed without an answer is one the connection limit dropped (waiting
    for its request) or refused, by the server's own count: a handler that closed one without
    answering would show as one more."""
    assert web.pool is not None
    assert statuses.count(UNANSWERED) == web.pool.dropped + web.pool.refused
    if UNANSWERED in statuses:
        assert "too many connections" in caplog.text


async def test_parallel_wrong_logins_run_one_scrypt_at_a_time_and_count_as_they_start(
    site: Web, scrypt: ScryptWatch, caplog: pytest.LogCaptureFixture
) -> None:
    await set_password(site)
    scrypt.calls = scrypt.peak = 0
    statuses: list[int] = []

    async def attempt() -> None:
        statuses.append(await login_or_unanswered(site, "127.0.0.2"))

    async with trio.open_nursery() as nursery:
        for _ in range(40):
            nursery.start_soon(attempt)
    assert scrypt.peak == 1  # one 16 MiB scrypt at a time, whatever the number of requests
    assert 1 <= scrypt.calls <= 5  # the per-address limit holds for parallel attempts too
    assert set(statuses) <= {UNANSWERED, 401, 429} and 429 in statuses
    assert statuses.count(401) == scrypt.calls and len(statuses) == 40
    assert_unanswered_only_by_the_limit(site, statuses, caplog)


async def test_two_hundred_parallel_logins_from_many_addresses_queue_or_get_429(
    site: Web, scrypt: ScryptWatch, caplog: pytest.LogCaptureFixture
) -> None:
    await set_password(site)
    scrypt.calls = scrypt.peak = 0
    statuses: list[int] = []

    async def attempt(i: int) -> None:
        statuses.append(await login_or_unanswered(site, f"127.0.1.{i}"))

    async with trio.open_nursery() as nursery:
        for i in range(1, 201):
            nursery.start_soon(attempt, i)
    assert scrypt.peak == 1
    assert set(statuses) <= {UNANSWERED, 401, 429} and len(statuses) == 200
    assert statuses.count(401) == scrypt.calls >= 1
    assert_unanswered_only_by_the_limit(site, statuses, caplog)


# -- 2. owner lockout ------------------------------------------------------------------------------


async def test_failures_from_a_few_addresses_do_not_lock_the_owner_out(
    site: Web, mock_clock: trio.testing.MockClock
) -> None:
    await set_password(site)
    for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
        for _ in range(5):
            status, _, _ = await call(
                site, "POST", "/api/login", {"password": "wrong guess"}, source=source
            )
            assert status == 401
        status, _, _ = await call(site, "POST", "/api/login", {"password": PASSWORD}, source=source)
        assert status == 429  # that address is blocked, even with the right password
    # the attacker keeps going from a fifth address: a check at the slow global rate
    status, _, _ = await call(
        site, "POST", "/api/login", {"password": "wrong guess"}, source="127.0.0.6"
    )
    assert status == 401
    status, head, doc = await call(site, "POST", "/api/login", {"password": PASSWORD})
    assert status == 429 and doc["retryAfterS"] <= 3 and head["retry-after"] == "3"
    mock_clock.jump(3)
    status, head, _ = await call(site, "POST", "/api/login", {"password": PASSWORD})
    assert status == 200 and head["set-cookie"].startswith("dynexport_session=")


# -- 8. password change ----------------------------------------------------------------------------


async def test_a_password_change_with_a_wrong_current_password_is_rate_limited(
    site: Web, scrypt: ScryptWatch
) -> None:
    session = await set_password(site)
    change = {"current": "not the password", "password": "a new good password"}
    for _ in range(5):
        status, _, _ = await call(site, "POST", "/api/password", change, headers=session)
        assert status == 403
    calls = scrypt.calls
    right = {"current": PASSWORD, "password": "a new good password"}
    status, _, doc = await call(site, "POST", "/api/password", right, headers=session)
    assert status == 429 and doc["retryAfterS"] > 0
    assert scrypt.calls == calls  # not even checked while blocked


# -- 3. connection exhaustion ----------------------------------------------------------------------


async def test_idle_connections_from_one_address_do_not_lock_out_the_dashboard(
    site: Web, mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    held = []
    for _ in range(70):
        held.append(await raw.connect_from("127.0.0.2", site.port))
        await trio.testing.wait_all_tasks_blocked()
    for _ in range(59):
        status, _, doc = await call(site, "GET", "/api/status", source="127.0.0.3")
        assert status == 200 and doc["setupMode"] is True
    for stream in held:
        await stream.aclose()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


# -- 4. live events --------------------------------------------------------------------------------


async def open_events(web: Web, source: str) -> tuple[int, trio.SocketStream]:
    """Opens /api/events from ``source``; the status and the (held) stream."""
    stream = await raw.connect_from(source, web.port)
    await stream.send_all(raw.get("/api/events", f"127.0.0.1:{web.port}"))
    got = b""
    while b"\r\n\r\n" not in got:
        got += await stream.receive_some(65536)
    return raw.status_of(got), stream


async def test_held_event_streams_from_one_address_leave_room_for_other_dashboards(
    site: Web, mock_clock: trio.testing.MockClock
) -> None:
    opened = [await open_events(site, "127.0.0.2") for _ in range(16)]
    assert [s for s, _ in opened].count(200) == 4
    status, _, doc = await call(site, "GET", "/api/events", source="127.0.0.2")
    assert status == 503 and doc["error"].startswith("live updates paused")
    status, stream = await open_events(site, "127.0.0.3")
    assert status == 200
    for _, s in [*opened, (0, stream)]:
        await s.aclose()


async def test_when_every_stream_is_held_a_new_address_takes_one_from_the_busiest(
    site: Web, mock_clock: trio.testing.MockClock
) -> None:
    opened = [await open_events(site, f"127.0.0.{2 + i // 4}") for i in range(16)]
    assert all(s == 200 for s, _ in opened)
    status, newcomer = await open_events(site, "127.0.0.9")
    assert status == 200
    for _, s in [*opened, (0, newcomer)]:
        await s.aclose()


# -- 5. first-boot password race and CSRF ----------------------------------------------------------


async def test_exactly_one_first_password_is_accepted_when_requests_race(site: Web) -> None:
    results: dict[str, int] = {}

    async def claim(i: int) -> None:
        password = f"racer number {i}"
        status, _, _ = await call(site, "POST", "/api/setup/password", {"password": password})
        results[password] = status

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(claim, i)
    winners = [p for p, s in results.items() if s == 200]
    assert len(winners) == 1 and sorted(results.values()) == [200] + [409] * 7
    status, _, _ = await call(site, "POST", "/api/login", {"password": winners[0]})
    assert status == 200  # the stored password is the winner's


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain", "Origin": "null"},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/json", "Origin": "null"},
        {"Content-Type": "application/json", "Origin": "http://evil.example"},
        {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_a_cross_site_page_cannot_set_the_first_password(
    site: Web, headers: dict[str, str]
) -> None:
    body = json.dumps({"password": "attacker password"}).encode()
    status, _, doc = await call(site, "POST", "/api/setup/password", raw_body=body, headers=headers)
    assert status in (403, 415), doc
    assert not (site.folder / "data" / "admin.json").exists()


# -- 6. DNS rebinding ------------------------------------------------------------------------------


async def test_after_setup_only_the_devices_own_names_and_addresses_are_served(site: Web) -> None:
    session = await set_password(site)
    status, _, _ = await call(
        site, "PUT", "/api/config", {"limits": {"exportW": 5000}}, headers=session
    )
    assert status == 200 and not site.app.setup_mode
    for host, expected in [
        ("rebind.attacker.example", 421),
        ("dynexport.attacker.example", 421),
        ("dynexport.com", 421),
        ("10.9.8.7", 421),
        (f"127.0.0.1:{site.port}", 200),
        ("localhost", 200),
        ("dynexport.local", 200),
        ("dynexport.lan", 200),
    ]:
        status, _, _ = await call(site, "GET", "/api/status", headers={"Host": host})
        assert status == expected, host
    status, _, _ = await call(
        site, "GET", "/api/config", headers={**session, "Host": "rebind.attacker.example"}
    )
    assert status == 421


@pytest.mark.parametrize(
    "host", ['x"><script>alert(1)</script>', "a<b", "evil:80:80", "[::1", "bad name"]
)
async def test_in_setup_mode_a_hostile_host_is_never_reflected(site: Web, host: str) -> None:
    status, head, body = await raw.request_from(
        "127.0.0.1", site.port, "GET", "/generate_204", headers={"Host": host}
    )
    if status == 400:
        return  # h11 refused the header outright: nothing reflected either
    assert status == 302
    assert head["location"] == "http://192.168.4.1/setup"
    assert b"<script" not in body and b'"><' not in body


# -- 7. input that used to end in a 500 ------------------------------------------------------------


async def test_deeply_nested_json_is_a_400(site: Web) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    status, _, doc = await call(site, "POST", "/api/login", raw_body=deep, headers=JSON_HEADERS)
    assert status in (400, 409) and "500" not in str(doc)
    session = await set_password(site)
    status, _, doc = await call(site, "POST", "/api/login", raw_body=deep, headers=JSON_HEADERS)
    assert status == 400 and "nested too deeply" in doc["error"]
    status, _, doc = await call(
        site, "PUT", "/api/config", raw_body=deep, headers={**session, **JSON_HEADERS}
    )
    assert status == 400 and "nested too deeply" in doc["error"]


@pytest.mark.parametrize(
    "query",
    [
        "from=inf",
        "from=1e400",
        "from=1e30&to=1.000001e30&step=" + "1" + "0" * 25,  # overflowed sqlite
        "to=-inf",
        "from=nan",
        "step=99999999999999999999",
    ],
)
async def test_absurd_history_times_are_a_400(site: Web, query: str) -> None:
    status, _, doc = await call(site, "GET", f"/api/history?{query}")
    assert status == 400, doc
    assert doc["error"]


async def test_huge_numbers_in_a_configuration_are_a_422_naming_the_key(site: Web) -> None:
    session = await set_password(site)
    raw_body = b'{"limits": {"exportW": 1' + b"0" * 400 + b"}}"
    status, _, doc = await call(
        site, "PUT", "/api/config", raw_body=raw_body, headers={**session, **JSON_HEADERS}
    )
    assert status == 422 and doc["problems"] == ["limits.exportW: number out of range"]


async def test_an_unparsable_origin_is_a_403(site: Web) -> None:
    session = await set_password(site)
    status, _, doc = await call(
        site,
        "PUT",
        "/api/config",
        {"limits": {"exportW": 1}},
        headers={**session, "Origin": "http://[::1"},
    )
    assert (status, doc["error"]) == (403, "cross-site request refused")


# -- 10. paths set through the web API -------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "key"),
    [
        (
            {
                "utility": {
                    "server": "https://127.0.0.1:9",
                    "ca": "serca.pem",
                    "cert": "device-chain.pem",
                    "key": "../../etc/shadow",
                    "nmi": "4312345678",
                }
            },
            "utility.key",
        ),
        (
            {
                "utility": {
                    "server": "https://127.0.0.1:9",
                    "ca": "/etc/ssl/certs/ca-certificates.crt",
                    "cert": "device-chain.pem",
                    "key": "device-key.pem",
                    "nmi": "4312345678",
                }
            },
            "utility.ca",
        ),
        ({"inverters": [{"rtu": "/etc/shadow", "unit": 1}]}, "inverters[0].rtu"),
        ({"batteries": [{"rtu": "/etc/shadow", "unit": 1}]}, "batteries[0].rtu"),
        ({"mqtt": {"url": "mqtts://127.0.0.1", "ca": "/etc/shadow"}}, "mqtt.ca"),
        ({"mqtt": {"url": "mqtts://127.0.0.1", "cert": "/etc/a", "key": "../../k"}}, "mqtt.cert"),
        ({"price": {"siteId": "s", "token": "t", "ca": "/etc/shadow"}}, "price.ca"),
        ({"update": {"url": "https://127.0.0.1/m.json", "ca": "/etc/shadow"}}, "update.ca"),
        ({"meter": {"rtu": "/dev/ttyUSB0/../sda", "unit": 1}}, "meter.rtu"),
        ({"inverters": [{"rtu": "ttyUSB0", "unit": 1}]}, "inverters[0].rtu"),
    ],
)
async def test_paths_outside_the_data_folder_or_serial_devices_are_a_400_naming_the_key(
    site: Web, document: dict[str, Any], key: str
) -> None:
    session = await set_password(site)
    status, _, doc = await call(site, "PUT", "/api/config", document, headers=session)
    assert status == 400, doc
    assert doc["error"].startswith(f"{key}: must be")
    assert not (site.folder / "data" / "config.json").exists()


async def test_serial_devices_by_id_and_tty_are_accepted(site: Web) -> None:
    session = await set_password(site)
    document = {
        "inverters": [{"rtu": "/dev/serial/by-id/usb-FTDI_FT232R-if00-port0", "unit": 1}],
        "meter": {"rtu": "/dev/ttyAMA0", "unit": 240},
    }
    status, _, doc = await call(site, "PUT", "/api/config", document, headers=session)
    assert status == 200, doc


async def test_a_body_giving_a_key_twice_or_a_document_with_a_caution_is_not_saved(
    site: Web,
) -> None:
    """The JSON decoder keeps the last copy of a key given twice: a body with two ``limits``
    would save without the first one's 0 W. And what ``run`` only tolerates in a file an
    earlier release accepted (a web.host that is no address) is never saved anew."""
    session = await set_password(site)
    headers = {**JSON_HEADERS, **session}
    body = b'{"limits": {"exportW": 0}, "limits": {"importW": 5000}}'
    status, _, doc = await call(site, "PUT", "/api/config", headers=headers, raw_body=body)
    assert status == 400, doc
    assert doc["error"] == (
        "body is not usable JSON: limits: given twice (only the last would count)"
    )
    document = {"web": {"host": "dynexport-setup"}}
    status, _, doc = await call(site, "PUT", "/api/config", document, headers=session)
    assert status == 422, doc
    assert doc["problems"] == [
        "web.host: must be an IP address (0.0.0.0: every one), not 'dynexport-setup'"
    ]
    assert not (site.folder / "data" / "config.json").exists()


async def test_a_full_card_is_named_by_every_save_not_a_bare_500(
    site: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the configuration's save named the problem (507); the Wi-Fi's, like the
    certificates' and the password's, answered a bare 500 with no body."""
    session = await set_password(site)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "atomic_write", disk_full)
    status, _, doc = await call(site, "PUT", "/api/config", {}, headers=session)
    assert status == 507 and "No space left on device" in doc["error"]
    wifi = {"ssid": "home", "psk": "password123"}
    status, _, doc = await call(site, "PUT", "/api/wifi", wifi, headers=session)
    assert status == 507, doc
    assert doc["error"] == "could not be saved: No space left on device"
