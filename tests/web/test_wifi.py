"""The setup page's Wi-Fi list: the scan helper's choice of command, its answer read into the
page's list, and one scan at a time for every request (trio's MockClock, no real waiting).

The real radio scan (mac80211_hwsim in the system-test VM: a neighbour network seen from the
setup access point through GET /api/wifi/networks) is proved by systemtest/run.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynexport.web.wifi import (
    MAX_ANSWER,
    SCAN_SOCKET,
    WifiScanner,
    ask_scan_helper,
    read_scan_answer,
)
from tests.image.helpers import load_script
from tests.web.conftest import Web, logged_in

wifi_scan = load_script("wifi-scan")

# What `iw dev wlan0 scan ap-force` printed in the system-test VM (mac80211_hwsim, the setup
# access point up on wlan0, a neighbour hostapd on wlan1), as the helper passed it on.
AP_FORCE_OUTPUT = """\
BSS 02:00:00:00:01:00(on wlan0)
\tlast seen: 24.392s [boottime]
\tTSF: 1796150600313623 usec (20788d, 18:43:20)
\tfreq: 2412
\tbeacon interval: 100 TUs
\tcapability: ESS ShortSlotTime (0x0401)
\tsignal: -30.00 dBm
\tlast seen: 3756 ms ago
\tInformation elements from Probe Response frame:
\tSSID: neighbour-systemtest
\tSupported rates: 1.0* 2.0* 5.5* 11.0* 6.0 9.0 12.0 18.0
\tDS Parameter set: channel 1
\tERP: Barker_Preamble_Mode
\tExtended supported rates: 24.0 36.0 48.0 54.0
\tSupported operating classes:
\t\t * current operating class: 81
\tExtended capabilities:
\t\t * Extended Channel Switching
\t\t * Multiple BSSID
\t\t * SSID List
\t\t * Operating Mode Notification
"""


def answer(**doc: object) -> bytes:
    return (json.dumps(doc) + "\n").encode()


# -- the helper (rootfs-overlay/usr/libexec/dynexport/wifi-scan) ------------------------------


def test_the_setup_access_point_is_scanned_with_ap_force() -> None:
    info = (
        "Interface wlan0\n\tifindex 3\n\tssid dynexport-0000\n\ttype AP\n\tchannel 6 (2437 MHz)\n"
    )
    assert wifi_scan.scan_command(info) == ["iw", "dev", "wlan0", "scan", "ap-force"]


def test_a_wifi_client_is_scanned_plainly() -> None:
    info = "Interface wlan0\n\tifindex 3\n\ttype managed\n"
    assert wifi_scan.scan_command(info) == ["iw", "dev", "wlan0", "scan"]


@pytest.mark.parametrize("info", ["Interface wlan0\n\ttype monitor\n", "", "garbage"])
def test_an_interface_in_another_mode_is_refused_with_its_mode(info: str) -> None:
    with pytest.raises(wifi_scan.ScanRefused, match="neither the setup access point"):
        wifi_scan.scan_command(info)


def test_the_fallback_reads_the_kernels_cache_without_a_new_scan() -> None:
    assert wifi_scan.dump_command() == ["iw", "dev", "wlan0", "scan", "dump"]


# -- the answer read for the page --------------------------------------------------------------


def test_an_ap_force_scan_lists_the_neighbour_with_its_signal() -> None:
    doc = read_scan_answer(
        answer(
            command=["iw", "dev", "wlan0", "scan", "ap-force"],
            rc=0,
            stdout=AP_FORCE_OUTPUT,
            stderr="",
        )
    )
    assert doc == {"networks": [{"ssid": "neighbour-systemtest", "signal": "-30 dBm"}]}


@pytest.mark.parametrize(
    ("stderr", "words"),
    [
        ("command failed: Operation not supported (-95)", "cannot scan while it is the setup"),
        ("command failed: Device or resource busy (-16)", "busy"),
        ("command failed: Network is down (-100)", "interface is down"),
        ("command failed: No such device (-19)", "no Wi-Fi interface wlan0"),
        ("command failed: Operation not permitted (-1)", "CAP_NET_ADMIN"),
        ("something new", "something new"),
    ],
)
def test_iw_failures_are_said_in_words_with_iws_own(stderr: str, words: str) -> None:
    doc = read_scan_answer(answer(command=["iw"], rc=161, stdout="", stderr=stderr))
    assert doc["networks"] == []
    assert words in doc["error"] and stderr in doc["error"]


def test_the_helpers_own_error_is_passed_on() -> None:
    doc = read_scan_answer(answer(error="wlan0 is neither the setup access point nor ..."))
    assert doc == {
        "networks": [],
        "error": "cannot list networks: wlan0 is neither the setup access point nor ...",
    }


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "closed the connection without an answer"),
        (b"not json", "unexpected"),
        (b"[1, 2]", "unexpected"),
        (answer(rc="0", stdout="", stderr=""), "lacks rc, stdout or stderr"),
    ],
)
def test_a_broken_answer_is_an_error_not_a_crash(raw: bytes, words: str) -> None:
    doc = read_scan_answer(raw)
    assert doc["networks"] == [] and words in doc["error"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            answer,
            rc=st.one_of(st.integers(), st.text(max_size=5)),
            stdout=st.text(max_size=300),
            stderr=st.text(max_size=50),
        ),
    )
)
def test_any_answer_gives_a_list_and_an_error_only_when_nothing_was_scanned(raw: bytes) -> None:
    doc = read_scan_answer(raw)
    assert isinstance(doc["networks"], list)
    assert all(set(n) == {"ssid", "signal"} for n in doc["networks"])
    if "error" in doc:
        assert doc["networks"] == [] and doc["error"].startswith("cannot list networks: ")


# -- one scan at a time -------------------------------------------------------------------------


class Helper:
    """Stands in for the socket to the image's helper: answers after ``takes`` seconds."""

    def __init__(self, *answers: bytes, takes: float = 5.0) -> None:
        self.answers = list(answers)
        self.takes = takes
        self.calls = 0

    async def __call__(self) -> bytes:
        self.calls += 1
        await trio.sleep(self.takes)
        return self.answers.pop(0)


FOUND = answer(command=["iw"], rc=0, stdout=AP_FORCE_OUTPUT, stderr="")
BUSY = answer(
    command=["iw"], rc=240, stdout="", stderr="command failed: Device or resource busy (-16)"
)


async def test_requests_during_a_scan_share_it(autojump_clock: trio.testing.MockClock) -> None:
    helper = Helper(FOUND)
    scanner = WifiScanner(helper)
    got: list[dict[str, object]] = []

    async def ask() -> None:
        got.append(await scanner.networks())

    async with trio.open_nursery() as nursery:
        for _ in range(8):  # a page reloaded eight times while the radio scans
            nursery.start_soon(ask)
    assert helper.calls == 1
    assert len(got) == 8 and all(doc == got[0] for doc in got)
    assert got[0]["networks"] == [{"ssid": "neighbour-systemtest", "signal": "-30 dBm"}]


async def test_a_recent_scan_is_reused_then_renewed(autojump_clock: trio.testing.MockClock) -> None:
    helper = Helper(FOUND, FOUND)
    scanner = WifiScanner(helper, reuse_s=20.0)
    await scanner.networks()
    await trio.sleep(10.0)
    await scanner.networks()
    assert helper.calls == 1
    await trio.sleep(10.0)
    await scanner.networks()
    assert helper.calls == 2


async def test_a_failed_scan_is_not_reused(autojump_clock: trio.testing.MockClock) -> None:
    helper = Helper(BUSY, FOUND)
    scanner = WifiScanner(helper)
    first = await scanner.networks()
    assert "busy" in first["error"]
    second = await scanner.networks()
    assert helper.calls == 2 and "error" not in second


async def test_a_scan_that_never_answers_ends_at_the_budget_for_every_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scanner = WifiScanner(Helper(FOUND, takes=float("inf")), budget_s=30.0)
    got: list[tuple[float, dict[str, object]]] = []
    t0 = trio.current_time()

    async def ask() -> None:
        doc = await scanner.networks()
        got.append((trio.current_time() - t0, doc))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(ask)
    assert [t for t, _ in got] == [30.0, 30.0, 30.0]
    assert all(
        doc["error"] == "cannot list networks: the scan took longer than 30 s" for _, doc in got
    )


async def test_waiters_start_a_new_scan_when_the_first_request_goes_away(
    autojump_clock: trio.testing.MockClock,
) -> None:
    helper = Helper(FOUND, FOUND)
    scanner = WifiScanner(helper)
    got: list[dict[str, object]] = []

    async def ask() -> None:
        got.append(await scanner.networks())

    first = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancellable, scanner, first)
        await trio.sleep(1.0)
        nursery.start_soon(ask)
        await trio.sleep(1.0)
        first.cancel()  # the browser that started the scan closed the connection
    assert helper.calls == 2 and got[0]["networks"]


async def _cancellable(scanner: WifiScanner, scope: trio.CancelScope) -> None:
    with scope:
        await scanner.networks()


async def test_no_helper_socket_is_a_clear_message(tmp_path: Path) -> None:
    scanner = WifiScanner(lambda: ask_scan_helper(tmp_path / "absent.sock"))
    doc = await scanner.networks()
    assert doc == {
        "networks": [],
        "error": "cannot list networks: no Wi-Fi scan helper on this system (not the image?)",
    }


async def _serve_once(listener: trio.SocketListener, data: bytes) -> None:
    stream = await listener.accept()
    async with stream:
        await stream.send_all(data)


async def test_the_helpers_answer_is_read_to_its_end_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "scan.sock"
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(str(path))
    sock.listen(1)
    listener = trio.SocketListener(sock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_once, listener, FOUND)
        assert await ask_scan_helper(path) == FOUND
        nursery.start_soon(_serve_once, listener, b" " * (MAX_ANSWER + 1))
        doc = await WifiScanner(lambda: ask_scan_helper(path)).networks()
    await listener.aclose()
    assert "does not answer" in doc["error"] and "longer than" in doc["error"]


# -- the route ------------------------------------------------------------------------------------


async def test_the_route_asks_the_helper_and_says_when_there_is_none(web: Web) -> None:
    if await trio.Path(SCAN_SOCKET).exists():
        pytest.skip("this machine runs the image's scan helper")
    c = await logged_in(web)
    status, doc = await c.json("GET", "/api/wifi/networks")
    assert status == 200
    assert doc == {
        "networks": [],
        "error": "cannot list networks: no Wi-Fi scan helper on this system (not the image?)",
    }
