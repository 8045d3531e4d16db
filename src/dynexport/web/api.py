"""The appliance's HTTP routes: the pages, the JSON API (docs/api.md), login and setup.

Reading is open (the dashboard, status, limits, history, live events); everything that changes
something, and the configuration itself, needs the admin login plus the session's CSRF token
(docs/web.md). In setup mode the only change possible before the admin password exists is
setting it; captive-portal probes and foreign Host names are redirected to the setup page. After
setup a foreign Host gets 421 (DNS rebinding). No input, however odd, may end in a 500: every
request is checked here and refused with a 4xx naming the problem.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, tzinfo
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, TypeVar
from urllib.parse import urlsplit

import trio

from dynexport.control.limits import EffectiveLimits
from dynexport.httpio import Request, ServerResponse
from dynexport.integrations.metrics import CONTENT_TYPE as METRICS_TYPE
from dynexport.integrations.metrics import bearer_ok, render_metrics
from dynexport.modbus.endpoints import Endpoint, SerialEndpoint, parse_tcp
from dynexport.sep2.identity import CertError, chain_lfdi
from dynexport.sunspec.discovery import device_roles
from dynexport.sunspec.polling import CONTROL_MODELS
from dynexport.system.config import (
    BAUD_RATES,
    Config,
    ConfigError,
    KeyGivenTwice,
    loads_each_key_once,
    parse_config,
)
from dynexport.system.config_file import write_config
from dynexport.system.storage import atomic_write, read_json, write_json
from dynexport.web import static
from dynexport.web.auth import (
    COOKIE,
    Busy,
    HashQueue,
    LoginLimiter,
    PasswordError,
    PasswordStore,
    Session,
    Sessions,
    check_new_password,
    csrf_ok,
)
from dynexport.web.captive import HostPolicy, captive_redirect, parse_host
from dynexport.web.configdoc import config_document, limits_document
from dynexport.web.energy import EnergyToday
from dynexport.web.events import Broadcaster
from dynexport.web.history import API_NAMES, FIELDS, History

if TYPE_CHECKING:
    # Setup and maintenance tools, imported where they are first used (docs/decisions.md, "Lazy
    # imports on the service's path"): the device scan, the Wi-Fi page, the bundle upload.
    from dynexport.sep2.client import Sep2Client
    from dynexport.sunspec import cli as sunspec_cli
    from dynexport.update.rauc import Rauc
    from dynexport.web.updates import Updates
    from dynexport.web.wifi import WifiScanner

log = logging.getLogger("dynexport.web")

JSON = "application/json"
CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
PAGES = frozenset({"/", "/setup", "/login", "/dashboard", "/settings", "/index.html"})
SCAN_BUDGET_S = 45.0
SERCA_FILE = "serca.pem"
KEY_FILE = "device-key.pem"
CSR_FILE = "device.csr"
CHAIN_FILE = "device-chain.pem"
CERT_FILE_NAMES = {"ca": SERCA_FILE, "key": KEY_FILE, "csr": CSR_FILE, "cert": CHAIN_FILE}
"""The only file names the certificate API writes, by role (`WebApi._may_write`)."""
WIFI_FILE = "wifi.json"
MAX_JSON_NUMBER = 1e15
"""Largest magnitude accepted for a number in a configuration (far beyond any watt or second)."""
LATEST_TIME = 253_402_300_799
"""9999-12-31T23:59:59Z: history times outside 0..this are refused."""
SERIAL_PORT = re.compile(r"^/dev/(?:tty[A-Za-z0-9_.-]+|serial/by-id/[A-Za-z0-9_.:+@=,-]+)$")
"""Serial devices the web API may name: ``/dev/tty*`` and ``/dev/serial/by-id/*``."""
INVERTER_MODELS = frozenset({101, 102, 103, 111, 112, 113, 701})
METER_MODELS = frozenset({201, 202, 203, 204, 211, 212, 213, 214})


class OptionsLike(Protocol):
    @property
    def config_path(self) -> Path | None: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def wall_clock(self) -> Callable[[], float]: ...


class AppLike(Protocol):
    """What the web layer uses of the service (dynexport.app.App)."""

    @property
    def config(self) -> Config: ...
    @property
    def options(self) -> OptionsLike: ...
    @property
    def setup_mode(self) -> bool: ...
    @property
    def utility(self) -> Sep2Client | None: ...
    @property
    def limits(self) -> EffectiveLimits: ...
    def status(self) -> dict[str, Any]: ...
    def apply_config(self, config: Config) -> None: ...
    def limits_outlook(self, hours: float = 24.0) -> list[tuple[float, EffectiveLimits]]: ...
    def reload_utility(self) -> None: ...
    def time_zone(self) -> tzinfo | None: ...
    def test_limit(self, inverter_id: str, pct: float, seconds: float) -> dict[str, Any]: ...
    async def check_meter_direction(self) -> dict[str, Any]: ...
    def commissioning_report(self) -> dict[str, Any]: ...
    def tools_status(self) -> dict[str, Any]: ...


def _limits_document(lim: EffectiveLimits) -> dict[str, Any]:
    return {
        "exportW": lim.export_w,
        "generationW": lim.generation_w,
        "importW": lim.import_w,
        "loadW": lim.load_w,
        "connect": lim.connect,
        "energize": lim.energize,
        "storageTargetW": lim.storage_target_w,
        "source": dict(lim.sources),
    }


class HttpError(Exception):
    """Ends a request with a JSON error (``{"error": message, ...extra}``)."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def json_response(
    status: int, document: object, headers: list[tuple[str, str]] | None = None
) -> ServerResponse:
    body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    return ServerResponse(status=status, body=body, headers=headers or [], content_type=JSON)


def error(status: int, message: str, **extra: Any) -> ServerResponse:
    return json_response(status, {"error": message, **extra})


def storage_status(exc: OSError) -> int:
    """507 for a card that is full, 500 for one read-only or failing."""
    return 507 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 500


def storage_error(exc: OSError, path: str, *, reading: bool = False) -> ServerResponse:
    """A card that is full (507) or read-only or failing (500), in words, for ``path``;
    ``reading``: the file could not be read (a GET saves nothing: "could not be saved" sent
    whoever read it looking for a full card)."""
    why = exc.strerror or str(exc)
    name = Path(exc.filename).name if isinstance(exc.filename, str) else None
    log.error("%s: storage error%s: %s", path, f" on {name}" if name else "", why)
    done = "read" if reading else "saved"
    status = 500 if reading else storage_status(exc)
    return error(status, f"could not be {done}{f' ({name})' if name else ''}: {why}")


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise HttpError(400, "a JSON object is required in the body")
    try:
        value = loads_each_key_once(body.decode("utf-8"))
    except KeyGivenTwice as exc:
        raise HttpError(400, f"body is not usable JSON: {exc}") from None
    except UnicodeDecodeError:
        raise HttpError(400, "body is not UTF-8") from None
    except RecursionError:
        raise HttpError(400, "body is not valid JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise HttpError(
            400, f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(value, dict):
        raise HttpError(400, "body must be a JSON object")
    where = _lone_surrogate(value)
    if where is not None:
        # JSON may escape half of a UTF-16 pair ("\\ud800"): the str decodes, but every later
        # .encode() (hashing a password, writing a file) raised, and the request ended in a 500.
        problem = f"{where}: {LONE_SURROGATE}"
        raise HttpError(400, problem, problems=[problem])
    return value


LONE_SURROGATE = "a string holds a lone surrogate (\\ud800-\\udfff), not valid UTF-8"
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(document: dict[str, Any]) -> str | None:
    """The path (``metrics.token``, ``units[2]``) of the first string, or key, in ``document``
    that holds a surrogate code point: JSON decodes a paired escape to one character, so any
    left is alone and cannot be encoded as UTF-8. Walked without recursion (bodies nest as deep
    as the decoder allows)."""
    stack: list[tuple[str, object]] = [("", document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path or "the body"
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                here = f"{path}.{key}" if path else key
                if _SURROGATE.search(key):
                    return f"a key in {path}" if path else "a key"
                stack.append((here, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def _cookie(request: Request, name: str) -> str | None:
    for key, value in request.headers:
        if key != "cookie":
            continue
        for part in value.split(";"):
            k, _, v = part.strip().partition("=")
            if k == name:
                return v
    return None


def _iso(t: float | None) -> str | None:
    if t is None or not math.isfinite(t):
        return None
    return datetime.fromtimestamp(t, UTC).astimezone().isoformat(timespec="seconds")


def _parse_time(text: str | None, name: str, default: float) -> int:
    """Unix seconds from ``text`` (a number or ISO 8601), within 1970..9999, else 400."""
    if text is None or text == "":
        return int(default)
    value: float | None
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.astimezone()
            value = parsed.timestamp()
        except (ValueError, OverflowError, OSError):
            raise HttpError(400, f"{name} must be unix seconds or an ISO 8601 time") from None
    if not (math.isfinite(value) and 0 <= value <= LATEST_TIME):
        raise HttpError(400, f"{name} must be a time between 1970 and 9999")
    return int(value)


def alerts(status: dict[str, Any], config: Config, wall_clock: float) -> list[dict[str, str]]:
    """What needs attention, for the dashboard: meter, inverters, controller, clock, utility."""
    out: list[dict[str, str]] = []

    def add(level: str, code: str, text: str) -> None:
        out.append({"level": level, "code": code, "text": text})

    cautions = set(config.cautions)
    for problem in status.get("configProblems") or []:
        # a refusal ("...; running on config.last-good.json") or a file not usable at all
        # (setup mode) is an error; a caution the file runs with (Config.cautions) a warning
        level = "warning" if problem in cautions else "error"
        add(level, "config", f"Configuration: {problem}")
    if status.get("setupMode"):
        add("info", "setup", "Not configured yet: finish the setup.")
        return out
    site = status.get("site") or {}
    if config.meter is not None and not site.get("meterOnline"):
        reason = site.get("meterError") or "no recent reading"
        add("error", "meter-stale", f"Meter: {reason}")
    elif config.meter is not None and site.get("meterFrozen"):
        add(
            "error",
            "meter-frozen",
            "Meter: its reading has stopped moving while the inverters' output moved (a gateway "
            "serving its last values?): fail-safe limits until it moves again",
        )
    for inv in status.get("inverters") or []:
        name = inv.get("id")
        if not inv.get("online"):
            add("error", "inverter-offline", f"{name}: offline ({inv.get('error') or 'no answer'})")
        elif inv.get("controllable") is False or inv.get("notControllable"):
            why = inv.get("notControllable") or "does not accept limits"
            add("error", "inverter-not-controllable", f"{name} cannot be controlled: {why}")
        elif inv.get("unread"):
            add(
                "error",
                "inverter-unread",
                f"{name} answers but its output cannot be read: it is held at its share of the "
                "fail-safe limit (safe with no household load), so it may make less than it could",
            )
        elif inv.get("skipped") == "no rating":
            add(
                "error",
                "inverter-no-rating",
                f"{name}: its rating (WMax) cannot be read, so it cannot be curtailed (only "
                "disconnected); its output is taken off the others' share",
            )
        elif inv.get("followsLimit") is False:
            add(
                "error",
                "inverter-not-following",
                f"{name} makes more than its limit ({inv.get('limitPct')} %): the other inverters "
                "are held lower to make room. Check its remote-control settings and the rating "
                "its limit is a percentage of",
            )
        if inv.get("revertTimer") is False:
            add(
                "warning",
                "inverter-no-revert",
                f"{name}: its limit has no revert timer (the inverter does not implement one): a "
                "limit written stays in force until written again, also if this appliance stops",
            )
    battery = status.get("battery") or {}
    for bat in battery.get("devices") or [] if battery.get("configured") else []:
        name = bat.get("id")
        if not bat.get("online"):
            add("error", "battery-offline", f"{name}: offline ({bat.get('error') or 'no answer'})")
        elif bat.get("controllable") is False or bat.get("notControllable"):
            why = bat.get("notControllable") or "does not accept charge or discharge commands"
            add("error", "battery-not-controllable", f"{name} cannot be controlled: {why}")
    mode = (status.get("control") or {}).get("mode")
    if mode not in (None, "normal"):
        add("warning", "control-mode", f"Controller in {mode} mode")
    if wall_clock < 1_704_067_200:  # 2024-01-01: an unsynchronised Pi restarts near its build date
        add("error", "clock", "The clock is not set (no time server reached yet)")
    utility = status.get("utility") or {}
    unverified = []
    if utility.get("timeVerified") is False:
        unverified.append("the strictest of the utility's stored limits for the week ahead")
    if (status.get("limits") or {}).get("windowTimeKnown") is False:
        unverified.append("every daily window of the installer's limits")
    if unverified:
        add(
            "warning",
            "clock-unverified",
            "The time is not confirmed yet (no time server or utility server reached since the "
            f"start): {' and '.join(unverified)} applies until it is",
        )
    offset = utility.get("clockOffsetS")
    if isinstance(offset, int | float) and abs(offset) > 60:
        add("warning", "clock", f"The clock differs from the utility's by {offset:.0f} s")
    if utility.get("configured"):
        last_error = str(utility.get("lastError") or "")
        u = config.utility
        if u is not None and not u.cert.is_file():
            add(
                "warning",
                "enrolment",
                "Utility link waiting for the signed certificate (upload it in Settings, "
                "Certificate); export is held at the fallback limit meanwhile",
            )
        elif any(w in last_error.lower() for w in ("certificate", "tls", "ssl")):
            add(
                "error", "certificate", f"Utility link certificate problem: {plain_tls(last_error)}"
            )
        elif not utility.get("connected"):
            add("warning", "utility", f"Utility not reachable: {last_error or 'not yet polled'}")
        if utility.get("acting") is False:
            add("error", "registration", "The utility's registration does not match our PIN")
    for name in (status.get("limits") or {}).get("notEnforced") or []:
        add("info", "not-enforced", f"{name} is reported but cannot be enforced at this site")
    _more_alerts(status, config, add)
    return out


TLS_WORDS = (
    (
        "unable to get local issuer",
        "the utility's server certificate is not signed by the SERCA "
        "saved on this device: check the SERCA",
    ),
    (
        "certificate has expired",
        "a certificate has expired (check the device's clock, then its certificate's end date)",
    ),
    (
        "certificate is not yet valid",
        "a certificate is not valid yet: is this device's clock right?",
    ),
    ("hostname mismatch", "the server's certificate is for another name than the server URL"),
    (
        "certificate unknown",
        "the utility did not accept this device's certificate: is the LFDI "
        "registered, and the signed chain the one the utility issued?",
    ),
    ("unknown ca", "the utility does not know the CA of this device's certificate"),
    (
        "handshake failure",
        "the utility and this device found no common security settings (TLS handshake failed)",
    ),
    ("no such file", "a certificate or key file is missing"),
)
"""Library and OpenSSL phrases in a link error, and what they mean to an installer."""


def plain_tls(text: str) -> str:
    """A certificate or TLS error in plain words (the library's text is left out)."""
    low = text.lower()
    for phrase, words in TLS_WORDS:
        if phrase in low:
            return words
    return re.sub(r"\s*\(_ssl\.c:\d+\)|\[SSL: [A-Z_]+\]\s*", "", text).strip()


def _more_alerts(
    status: dict[str, Any], config: Config, add: Callable[[str, str, str], None]
) -> None:
    """Task faults, the utility's fallback, storage, its clock, integrations, settings and the
    last update: each is something an owner or installer must act on (docs/api.md)."""
    for fault in status.get("faults") or []:
        if not isinstance(fault, dict):
            continue
        count = fault.get("count")
        times = f" ({count} times)" if isinstance(count, int) and count > 1 else ""
        add(
            "error",
            "task-fault",
            f"{fault.get('task')} failed{times} and is restarting: {fault.get('error')}",
        )
    utility = status.get("utility") or {}
    fallback = utility.get("fallback")
    if fallback:
        watts = config.utility.fallback_export_w if config.utility is not None else None
        limit = "" if watts is None else f" {watts:.0f} W"
        add(
            "warning",
            "utility-fallback",
            f"Utility has no usable schedule ({fallback}): holding export at the fallback "
            f"limit{limit}",
        )
    if utility.get("storageError"):
        add("error", "storage", f"The data partition cannot be written: {utility['storageError']}")
    if utility.get("clockAlert"):
        add("error", "clock", f"The utility's clock is refused: {utility['clockAlert']}")
    integrations = status.get("integrations") or {}
    price = integrations.get("price") or {}
    if price.get("configured") and price.get("lapsed"):
        add("warning", "price-lapsed", f"Price source: {price.get('reason') or 'lapsed'}")
    mqtt = integrations.get("mqtt") or {}
    if mqtt.get("configured") and not mqtt.get("connected"):
        add("warning", "mqtt", f"MQTT broker not connected: {mqtt.get('lastError') or 'not yet'}")
    elif mqtt.get("configured") and mqtt.get("commandSubscription") == "refused":
        add(
            "warning",
            "mqtt-command",
            "The MQTT broker refused the subscription to the command topic (check its ACL): "
            "export limit commands cannot arrive",
        )
    if config.utility is not None and config.utility.pen == 0:
        add(
            "warning",
            "pen",
            "Set utility.pen to your organisation's IANA Private Enterprise Number",
        )
    if config.limits.windows and config.site.time_zone is None:
        add("warning", "time-zone", "Daily windows run in UTC: set the site's time zone")
    update = status.get("update") or {}
    if update.get("phase") in ("failed", "rolled-back"):
        add("error", "update", str(update.get("message") or "the last update failed"))
    check = update.get("check") or {}
    available = update.get("available") or {}
    if check.get("configured") and check.get("install") == "notify" and available.get("version"):
        add(
            "info",
            "update-available",
            f"Update {available['version']} is available: install it from Installer tools, "
            "Software update",
        )
    if check.get("configured") and check.get("error") and (check.get("failures") or 0) >= 3:
        add("warning", "update-check", f"The update URL cannot be checked: {check['error']}")


def _summarise_scan(endpoint: Endpoint, found: list[tuple[Any, list[Any]]]) -> dict[str, Any]:
    devices = []
    for dev, models in found:
        ids = sorted({m.id for m in models})
        common = dev.common
        rated: float | None = None
        for m in models:
            if m.id == 120 and isinstance(m.points.get("WRtg"), int | float):
                rated = float(m.points["WRtg"])
            if m.id == 702 and isinstance(m.points.get("WMaxRtg"), int | float):
                rated = rated or float(m.points["WMaxRtg"])
        kind = (
            "meter"
            if METER_MODELS & set(ids)
            else "inverter"
            if INVERTER_MODELS & set(ids)
            else "other"
        )
        where: dict[str, Any]
        if isinstance(endpoint, SerialEndpoint):
            where = {
                "rtu": endpoint.device,
                "baud": endpoint.baud,
                "parity": endpoint.parity,
                "stopbits": endpoint.stopbits,
            }
        else:
            where = {"tcp": str(endpoint)}
        control = sorted(set(CONTROL_MODELS) & set(ids))
        roles = list(device_roles(ids))
        if kind == "other" and "battery" in roles:
            kind = "battery"
        battery_config: dict[str, Any] = {}
        if "battery" in roles and 124 in ids and common and _is_fronius(common.manufacturer):
            # a GEN24 reads 124 InWRte/OutWRte as a charge window (docs/sunspec.md, "Storage")
            battery_config["convention"] = "window"
        devices.append(
            {
                "unit": dev.unit,
                "kind": kind,
                "roles": roles,
                "controllable": bool(control) if kind == "inverter" else None,
                "warning": (
                    None
                    if kind != "inverter" or control
                    else "no inverter control model (123 or 704): usable as a battery, but its "
                    "output cannot be limited as an inverter"
                    if "battery" in roles
                    else "no SunSpec control model (123 or 704): its output cannot be limited"
                ),
                "manufacturer": common.manufacturer if common else None,
                "model": common.model if common else None,
                "serial": common.serial if common else None,
                "ratedW": rated,
                "models": ids,
                "config": {"type": "sunspec", **where, "unit": dev.unit},
                "batteryConfig": (
                    {"type": "sunspec", **where, "unit": dev.unit, **battery_config}
                    if "battery" in roles
                    else None
                ),
            }
        )
    return {"endpoint": str(endpoint), "devices": devices}


def _is_fronius(manufacturer: object) -> bool:
    return isinstance(manufacturer, str) and manufacturer.strip().lower().startswith("fronius")


Route = Callable[[Request], Awaitable[ServerResponse]]
T = TypeVar("T")


class WebApi:
    """Request handling for one App. ``handle`` is the httpio handler."""

    def __init__(
        self,
        app: AppLike,
        *,
        history: History | None = None,
        events: Broadcaster | None = None,
        tls: bool = False,
        clock: Callable[[], float] = time.monotonic,
        limiter: LoginLimiter | None = None,
        scan_timeout_s: float | None = None,
        names: tuple[str, ...] = (),
        rauc: Rauc | None = None,
    ) -> None:
        """``names``: host names the appliance answers to besides its hostname, ``dynexport``
        and ``localhost`` (each also under ``.local``, ``.lan``, ...; docs/web.md);
        ``scan_timeout_s``: each unit's answer in a device scan (None: the scan command's)."""
        self.app = app
        self.history = history
        self.events = events or Broadcaster(self.live_status)
        self.tls = tls
        self.passwords = PasswordStore(app.options.data_dir)
        self.sessions = Sessions(clock)
        self.limiter = limiter or LoginLimiter(clock)
        self.hashing = HashQueue()
        self.hosts = HostPolicy.for_names(socket.gethostname(), *names)
        self.scan_timeout_s = scan_timeout_s
        self._config_lock = trio.Lock()
        self._setup_lock = trio.Lock()
        self._scan_lock = trio.Lock()
        self.scan_progress: dict[str, Any] | None = None
        self._rauc = rauc
        self.nursery: trio.Nursery | None = None
        self.energy = EnergyToday()
        """Energy today, fed by the history recorder (web/server.py)."""
        self.listen_fallback: str | None = None
        """Set by serve_web when ``web.host`` is no address here and it listens on all
        addresses instead: said in the status (``webHostFallback``) and as an alert."""
        """Where background work (an update's install) runs: set by serve_web."""
        self._routes: dict[tuple[str, str], tuple[Route, bool]] = {}
        r = self._route
        r("GET", "/api/status", self.get_status)
        r("GET", "/api/session", self.get_session)
        r("POST", "/api/setup/password", self.post_setup_password)
        r("POST", "/api/login", self.post_login)
        r("POST", "/api/logout", self.post_logout, auth=True)
        r("POST", "/api/password", self.post_password, auth=True)
        r("GET", "/api/config", self.get_config, auth=True)
        r("PUT", "/api/config", self.put_config, auth=True)
        r("GET", "/api/limits", self.get_limits)
        r("GET", "/api/history", self.get_history)
        r("GET", "/api/history.csv", self.get_history_csv)
        r("POST", "/api/devices/scan", self.post_scan, auth=True)
        r("GET", "/api/devices/scan", self.get_scan_progress, auth=True)
        r("GET", "/api/wifi", self.get_wifi, auth=True)
        r("GET", "/api/wifi/networks", self.get_wifi_networks, auth=True)
        r("PUT", "/api/wifi", self.put_wifi, auth=True)
        r("DELETE", "/api/wifi", self.delete_wifi, auth=True)
        r("GET", "/api/cert", self.get_cert, auth=True)
        r("PUT", "/api/cert/serca", self.put_serca, auth=True)
        r("POST", "/api/cert/request", self.post_cert_request, auth=True)
        r("GET", "/api/cert/csr", self.get_csr, auth=True)
        r("PUT", "/api/cert/chain", self.put_chain, auth=True)
        r("GET", "/api/events", self.get_events)
        r("GET", "/api/timezones", self.get_timezones)
        r("POST", "/api/tools/test-limit", self.post_test_limit, auth=True)
        r("POST", "/api/tools/meter-check", self.post_meter_check, auth=True)
        r("GET", "/api/tools/report", self.get_report, auth=True)
        r("GET", "/api/config/backup", self.get_backup, auth=True)
        r("POST", "/api/config/restore", self.post_restore, auth=True)
        r("GET", "/api/update", self.get_update, auth=True)
        r("POST", "/api/update/upload", self.post_update_upload, auth=True)
        r("PUT", "/api/update/upload", self.put_update_chunk, auth=True)
        r("POST", "/api/update/check", self.post_update_check, auth=True)
        r("POST", "/api/update/install", self.post_update_install, auth=True)

    @cached_property
    def wifi_scanner(self) -> WifiScanner:
        """Networks in range for the setup page: one scan at a time, a fresh answer reused.
        Made (and web/wifi.py imported) when the setup page first asks."""
        from dynexport.web.wifi import WifiScanner

        return WifiScanner()

    @cached_property
    def updates(self) -> Updates:
        """The bundle upload: made (and the install code imported) when a page first asks."""
        from dynexport.web.updates import Updates

        return Updates(self.app.options.data_dir, self._rauc)

    def _route(self, method: str, path: str, fn: Route, *, auth: bool = False) -> None:
        self._routes[(method, path)] = (fn, auth)

    @property
    def data_dir(self) -> Path:
        return self.app.options.data_dir

    def live_status(self) -> dict[str, Any]:
        st = self.app.status()
        u = self.app.config.utility
        if isinstance(st.get("utility"), dict):
            st["utility"]["waitingForCertificate"] = u is not None and not u.cert.is_file()
        st["alerts"] = alerts(st, self.app.config, self.app.options.wall_clock())
        if not self.app.setup_mode and not self.passwords.exists():
            st["alerts"].insert(
                0,
                {
                    "level": "error",
                    "code": "no-password",
                    "text": "No admin password: anyone on this network can set the admin "
                    "password. Set it now.",
                },
            )
        st["webHostFallback"] = self.listen_fallback
        if self.listen_fallback is not None:
            text = f"Web server: {self.listen_fallback}. Correct web.host in the settings."
            st["alerts"].insert(0, {"level": "error", "code": "web-host", "text": text})
        st["tools"] = self.app.tools_status()
        st["energyToday"] = self.energy.to_json()
        st["time"] = _iso(self.app.options.wall_clock())
        return st

    # -- dispatch ------------------------------------------------------------------------------

    async def handle(self, request: Request) -> ServerResponse:
        try:
            response = await self._dispatch(request)
        except HttpError as exc:
            response = error(exc.status, exc.message, **exc.extra)
            if "retryAfterS" in exc.extra:
                response.headers.append(("Retry-After", str(exc.extra["retryAfterS"])))
        except OSError as exc:
            # a full or read-only card while saving the Wi-Fi, a certificate, the password...:
            # named, as for the configuration, not a bare 500; a GET only reads
            reading = request.method in ("GET", "HEAD")
            response = storage_error(exc, request.path, reading=reading)
        _security_headers(response, request.path)
        return response

    async def _dispatch(self, request: Request) -> ServerResponse:
        path, method = request.path, request.method
        local = request.local[0] if request.local else None
        host_header = request.header("host")
        if self.app.setup_mode:
            where = captive_redirect(path, host_header, self.hosts, local)
            if where is not None:
                import html  # setup mode only: its entity table is 0.5 MiB

                return ServerResponse(
                    302,
                    f'<a href="{html.escape(where)}">Set up dynexport</a>\n'.encode(),
                    [("Location", where)],
                    "text/html; charset=utf-8",
                )
        elif host_header is not None and not self.hosts.is_own(parse_host(host_header), local):
            raise HttpError(
                421,
                "this device does not answer to that host name: use its address or its own name",
            )
        get = "GET" if method == "HEAD" else method
        if path == "/metrics":
            if get != "GET":
                raise HttpError(405, f"{method} is not allowed on {path}", allowed=["GET"])
            return self.get_metrics(request)
        if not path.startswith("/api/"):
            if get != "GET":
                raise HttpError(405, f"{method} is not allowed on {path}")
            return self._static(request)
        found = self._routes.get((get, path))
        if found is None:
            if any(p == path for _, p in self._routes):
                allowed = sorted({m for m, p in self._routes if p == path})
                raise HttpError(
                    405,
                    f"{method} is not allowed on {path}",
                    allowed=allowed,
                )
            raise HttpError(404, f"no such resource: {path}")
        fn, auth = found
        if method in CHANGING:
            self._check_origin(request)
        if auth:
            session = self._session(request)
            if session is None:
                if not self.passwords.exists():
                    raise HttpError(401, "set the admin password first", setup=True)
                raise HttpError(401, "login required")
            if method in CHANGING and not csrf_ok(session, request.header("x-csrf-token")):
                raise HttpError(403, "missing or wrong CSRF token (X-CSRF-Token)")
        return await fn(request)

    def _check_origin(self, request: Request) -> None:
        """Changes must come from this device's own page: a browser names the page's origin
        (``Origin``, ``Sec-Fetch-Site``), and it must be this host; ``null`` (a sandboxed or
        local-file page) or an unparsable origin is another site too."""
        site = request.header("sec-fetch-site")
        if site is not None and site.strip().lower() not in ("same-origin", "none"):
            raise HttpError(403, "cross-site request refused")
        origin = request.header("origin")
        if origin is None:
            return
        try:
            parts = urlsplit(origin.strip())
            netloc = parts.netloc.lower()
            ok = parts.scheme in ("http", "https") and bool(netloc)
        except ValueError:
            ok = False
        host = (request.header("host") or "").strip().lower()
        if not ok or netloc != host:
            raise HttpError(403, "cross-site request refused")

    @staticmethod
    def _require_json(request: Request) -> None:
        """A cross-site form or ``fetch`` cannot send ``application/json`` without a CORS
        preflight, which this server never grants: the request comes from the page."""
        kind = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
        if kind != JSON:
            raise HttpError(415, "the body must be sent as Content-Type: application/json")

    def _session(self, request: Request) -> Session | None:
        return self.sessions.get(_cookie(request, COOKIE))

    def _set_cookie(self, session: Session) -> tuple[str, str]:
        secure = "; Secure" if self.tls else ""
        return (
            "Set-Cookie",
            f"{COOKIE}={session.token}; Path=/; HttpOnly; SameSite=Strict{secure}",
        )

    def _static(self, request: Request) -> ServerResponse:
        name = "index.html" if request.path in PAGES else request.path.removeprefix("/static/")
        if request.path not in PAGES and not request.path.startswith("/static/"):
            raise HttpError(404, f"no such page: {request.path}")
        asset = static.get(name)
        if asset is None:
            raise HttpError(404, f"no such file: {request.path}")
        headers = [("ETag", asset.etag), ("Cache-Control", "no-cache")]
        if request.header("if-none-match") == asset.etag:
            return ServerResponse(304, b"", headers, None)
        return ServerResponse(200, asset.body, headers, asset.content_type)

    # -- status, session, login ----------------------------------------------------------------

    def get_metrics(self, request: Request) -> ServerResponse:
        """Prometheus text (docs/integrations.md): off unless ``metrics.token`` is set, and
        only for ``Authorization: Bearer <token>``; Host checked like ``/api/status``."""
        metrics = self.app.config.metrics
        if metrics is None:
            raise HttpError(404, "metrics are off (set metrics.token)")
        if not bearer_ok(request.header("authorization"), metrics.token):
            response = error(401, "metrics need Authorization: Bearer <metrics.token>")
            response.headers.append(("WWW-Authenticate", 'Bearer realm="metrics"'))
            return response
        body = render_metrics(self.live_status()).encode()
        return ServerResponse(200, body, [("Cache-Control", "no-store")], METRICS_TYPE)

    async def get_status(self, request: Request) -> ServerResponse:
        return json_response(200, self.live_status())

    async def get_session(self, request: Request) -> ServerResponse:
        session = self._session(request)
        doc: dict[str, Any] = {
            "passwordSet": self.passwords.exists(),
            "loggedIn": session is not None,
            "setupMode": self.app.setup_mode,
            "configWritable": self.app.options.config_path is not None,
        }
        if session is not None:
            doc["csrf"] = session.csrf
            doc["reach"] = _reach(request, socket.gethostname())
        return json_response(200, doc)

    async def post_setup_password(self, request: Request) -> ServerResponse:
        self._require_json(request)
        body = parse_json_object(request.body)
        if self.passwords.exists():
            raise HttpError(409, "the admin password is already set: log in")
        try:
            password = check_new_password(body.get("password"))
        except PasswordError as exc:
            raise HttpError(422, str(exc), problems=[f"password: {exc}"]) from None
        # One at a time, and the file is created only if absent: exactly one first password.
        async with self._setup_lock:
            if self.passwords.exists():
                raise HttpError(409, "the admin password is already set: log in")
            try:
                created = await self.hashing.run(self.passwords.create, password)
            except Busy:
                raise _busy() from None
        if not created:
            raise HttpError(409, "the admin password is already set: log in")
        log.info("admin password set from %s", request.peer[0])
        session = self.sessions.create()
        return json_response(200, {"csrf": session.csrf}, [self._set_cookie(session)])

    async def _check_password(self, client: str, password: object) -> bool:
        """Checks ``password`` for ``client`` under the login limits: 429 while the client (or
        everybody, beyond the total) must wait or while the checker is busy."""
        wait = self.limiter.retry_after(client)
        if wait is not None:
            raise _too_many(max(1, math.ceil(wait)))
        if not isinstance(password, str) or not password:
            return False
        if self.hashing.full():
            raise _busy()
        self.limiter.attempt(client)  # counted as it starts: parallel tries cannot overrun it
        try:
            ok = await self.hashing.run(self.passwords.verify, password)
        except Busy:
            raise _busy() from None
        if ok:
            self.limiter.succeeded(client)
        return ok

    async def post_login(self, request: Request) -> ServerResponse:
        client = request.peer[0]
        wait = self.limiter.retry_after(client)
        if wait is not None:
            raise _too_many(max(1, math.ceil(wait)))
        self._require_json(request)
        body = parse_json_object(request.body)
        if not self.passwords.exists():
            raise HttpError(409, "no admin password yet: set one first", setup=True)
        damaged = await trio.to_thread.run_sync(self.passwords.problem)
        if damaged is not None:  # not a wrong password: said so, and not counted as one
            log.error("login refused: %s", damaged)
            raise HttpError(503, f"{damaged}: the password cannot be checked")
        if not await self._check_password(client, body.get("password")):
            if self.limiter.blocked(client):  # one line per blocked address
                log.warning("failed logins from %s: blocked for a while", client)
            raise HttpError(401, "wrong password")
        session = self.sessions.create()
        return json_response(200, {"csrf": session.csrf}, [self._set_cookie(session)])

    async def post_logout(self, request: Request) -> ServerResponse:
        token = _cookie(request, COOKIE)
        if token:
            self.sessions.drop(token)
        expired = "; Secure" if self.tls else ""
        cookie = f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{expired}"
        return json_response(200, {"loggedIn": False}, [("Set-Cookie", cookie)])

    async def post_password(self, request: Request) -> ServerResponse:
        body = parse_json_object(request.body)
        try:
            password = check_new_password(body.get("password"))
        except PasswordError as exc:
            raise HttpError(422, str(exc), problems=[f"password: {exc}"]) from None
        if not await self._check_password(request.peer[0], body.get("current")):
            log.warning("wrong current password in a password change from %s", request.peer[0])
            raise HttpError(403, "the current password is wrong")
        try:
            await self.hashing.run(self.passwords.set, password)
        except Busy:
            raise _busy() from None
        self.sessions.clear()  # every other session ends with the old password
        session = self.sessions.create()
        return json_response(200, {"csrf": session.csrf}, [self._set_cookie(session)])

    # -- configuration -------------------------------------------------------------------------

    async def get_config(self, request: Request) -> ServerResponse:
        return json_response(200, config_document(self.app.config))

    async def put_config(self, request: Request) -> ServerResponse:
        document = parse_json_object(request.body)
        return json_response(200, await self._apply_document(document, request.peer[0]))

    async def _apply_document(self, document: dict[str, Any], peer: str) -> dict[str, Any]:
        """Checks, writes and applies a whole configuration document (else HttpError)."""
        path = self.app.options.config_path
        if path is None:
            raise HttpError(409, "this service runs without a configuration file to write")
        numbers = list(_number_problems(document, ""))
        if numbers:
            raise HttpError(422, "invalid configuration", problems=numbers)
        async with self._config_lock:
            try:
                config = parse_config(document, base_dir=path.parent)
            except ConfigError as exc:
                raise HttpError(422, "invalid configuration", problems=exc.problems) from None
            except (ValueError, TypeError, OverflowError, RecursionError) as exc:
                # parse_config should name every problem itself; this keeps a miss a 422.
                log.warning("configuration check failed unexpectedly: %r", exc)
                raise HttpError(
                    422, "invalid configuration", problems=[f"configuration: {exc}"]
                ) from None
            if config.cautions:  # run on when found in a file, never saved anew
                raise HttpError(422, "invalid configuration", problems=list(config.cautions))
            where = _place_problems(document, config, self.data_dir)
            if where:
                raise HttpError(400, "; ".join(where), problems=where)
            chains = (self._cert_files()["cert"], self.data_dir / CHAIN_FILE)
            problems = _file_problems(config, chains)
            if config.web.host != self.app.config.web.host:  # the running one: it is served
                cannot = await trio.to_thread.run_sync(cannot_bind, config.web.host)
                if cannot is not None:
                    problems.append(f"web.host: {cannot}")
            if problems:
                raise HttpError(422, "invalid configuration", problems=problems)
            # an older version's file is kept beside it (system/config_file.py)
            try:
                await trio.to_thread.run_sync(write_config, path, document)
            except OSError as exc:  # a full or read-only card: say so, and apply nothing
                why = exc.strerror or str(exc)
                log.error("configuration not saved: %s: %s", path, why)
                status = storage_status(exc)
                problem = f"{path.name} could not be saved: {why}"
                raise HttpError(status, problem, problems=[problem]) from None
            self.app.apply_config(config)
        log.info("configuration written to %s and applied (from %s)", path, peer)
        return {"applied": True, "config": config_document(config), "pending": _pending(config)}

    # -- limits and history --------------------------------------------------------------------

    async def get_limits(self, request: Request) -> ServerResponse:
        current = _limits_document(self.app.limits)
        outlook = [
            {"from": _iso(t), **_limits_document(limits)}
            for t, limits in self.app.limits_outlook(hours=24)
        ]
        utility = self.app.utility
        schedule: list[dict[str, Any]] = []
        offset = 0
        if utility is not None:
            offset = utility.state().clock_offset
            for seg in utility.schedule(hours=24):
                controls = {
                    v.kind.value: {"value": v.value, "origin": v.origin}
                    for v in seg.controls.values
                }
                schedule.append(
                    {
                        "start": _iso(seg.start - offset),
                        "end": _iso(seg.end - offset),
                        "controls": controls,
                    }
                )
        return json_response(
            200,
            {
                "current": current,
                "outlook": outlook,
                "utility": {
                    "configured": utility is not None,
                    "clockOffsetS": offset,
                    "schedule": schedule,
                    "nextChange": schedule[1]["start"] if len(schedule) > 1 else None,
                },
                "config": limits_document(self.app.config.limits),
            },
        )

    def _history_args(self, request: Request) -> tuple[int, int, int]:
        now = self.app.options.wall_clock()
        end = _parse_time(request.query.get("to"), "to", now)
        start = _parse_time(request.query.get("from"), "from", end - 3600)
        step_text = request.query.get("step") or "60"
        try:
            step = int(step_text)
        except ValueError:
            raise HttpError(400, "step must be a whole number of seconds") from None
        if not 1 <= step <= LATEST_TIME:
            raise HttpError(400, "step must be 1 second or more (and less than the age of time)")
        return start, end, step

    async def _history(self, request: Request) -> dict[str, Any]:
        if self.history is None:
            raise HttpError(503, "history is not recorded by this server")
        start, end, step = self._history_args(request)
        try:
            return await self.history.query(start, end, step, self.app.options.wall_clock())
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None

    async def get_history(self, request: Request) -> ServerResponse:
        return json_response(200, await self._history(request))

    async def get_history_csv(self, request: Request) -> ServerResponse:
        import csv  # only for this download

        doc = await self._history(request)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        names = list(doc["inverters"])
        writer.writerow(["time", *(API_NAMES[k] for k in FIELDS), *(f"{n} W" for n in names)])
        for i, t in enumerate(doc["t"]):
            writer.writerow(
                [
                    _iso(t),
                    *("" if doc[API_NAMES[k]][i] is None else doc[API_NAMES[k]][i] for k in FIELDS),
                    *(
                        "" if doc["inverters"][n][i] is None else doc["inverters"][n][i]
                        for n in names
                    ),
                ]
            )
        name = f"dynexport-{doc['from']}-{doc['to']}-{doc['step']}s.csv"
        return ServerResponse(
            200,
            out.getvalue().encode(),
            [("Content-Disposition", f'attachment; filename="{name}"')],
            "text/csv; charset=utf-8",
        )

    # -- devices -------------------------------------------------------------------------------

    async def post_scan(self, request: Request) -> ServerResponse:
        body = parse_json_object(request.body)
        endpoint = _scan_endpoint(body)
        from dynexport.sunspec import cli as sunspec_cli  # the scan: a setup tool

        units = body.get("units", list(sunspec_cli.DEFAULT_UNITS))
        if (
            not isinstance(units, list)
            or not 1 <= len(units) <= 32
            or not all(
                isinstance(u, int) and not isinstance(u, bool) and 1 <= u <= 247 for u in units
            )
        ):
            raise HttpError(400, "units must be a list of 1 to 32 unit ids (1..247)")
        if self._scan_lock.locked():
            raise HttpError(409, "a scan is already running")
        async with self._scan_lock:
            progress: dict[str, Any] = {
                "running": True,
                "endpoint": str(endpoint),
                "units": list(units),
                "probed": [],
            }
            self.scan_progress = progress

            def note(probe: sunspec_cli.UnitProbe) -> None:
                progress["probed"].append(
                    {"unit": probe.unit, "result": probe.result, "detail": probe.detail}
                )

            try:
                return await self._scan(endpoint, units, note)
            finally:
                progress["running"] = False

    async def _scan(
        self,
        endpoint: Endpoint,
        units: list[int],
        note: Callable[[sunspec_cli.UnitProbe], None],
    ) -> ServerResponse:
        from dynexport.sunspec import cli as sunspec_cli

        timeout = sunspec_cli.SCAN_TIMEOUT_S if self.scan_timeout_s is None else self.scan_timeout_s
        with trio.move_on_after(SCAN_BUDGET_S) as budget:
            try:
                found = await sunspec_cli.scan(
                    endpoint,
                    units,
                    request_timeout=timeout,
                    progress=note,
                    pool=getattr(self.app, "bus_pool", None),
                )
            except sunspec_cli.ScanFailed as exc:
                raise HttpError(502, exc.message, reason=exc.reason) from None
            except OSError as exc:
                raise HttpError(502, f"cannot reach {endpoint}: {exc}") from None
            except Exception as exc:
                log.warning("scan of %s failed: %s", endpoint, exc)
                raise HttpError(502, f"scan of {endpoint} failed: {exc}") from None
        if budget.cancelled_caught:
            raise HttpError(504, f"scan of {endpoint} took longer than {SCAN_BUDGET_S:.0f} s")
        return json_response(200, _summarise_scan(endpoint, found))

    async def get_scan_progress(self, request: Request) -> ServerResponse:
        """Each unit probed so far by the running (or last) scan, for the page's progress."""
        return json_response(200, self.scan_progress or {"running": False, "probed": []})

    # -- home Wi-Fi ------------------------------------------------------------------------------

    async def get_wifi(self, request: Request) -> ServerResponse:
        try:
            doc = read_json(self.data_dir / WIFI_FILE)
        except (FileNotFoundError, ValueError):
            return json_response(200, {"configured": False, "ssid": None, "open": False})
        ssid = doc.get("ssid") if isinstance(doc, dict) else None
        is_open = isinstance(doc, dict) and not doc.get("psk")
        return json_response(200, {"configured": True, "ssid": ssid, "open": is_open})

    async def get_wifi_networks(self, request: Request) -> ServerResponse:
        """Networks in range from a fresh scan by the image's helper (``iw ... scan ap-force``
        while wlan0 is the setup access point, which never scans by itself): one scan at a
        time for every request, a recent answer reused (web/wifi.py, docs/image.md)."""
        return json_response(200, await self.wifi_scanner.networks())

    async def put_wifi(self, request: Request) -> ServerResponse:
        """``{ssid, psk?, open?}``: a passphrase left out keeps the saved one when the name is
        the saved network's (the page never has it); an open network only with ``open: true``
        (web/wifi.py check_wifi)."""
        from dynexport.web.wifi import WifiError, check_wifi

        body = parse_json_object(request.body)
        path = self.data_dir / WIFI_FILE
        try:
            saved = await trio.to_thread.run_sync(read_json, path)
        except (FileNotFoundError, ValueError):  # none, or damaged: nothing to keep
            saved = None
        try:
            doc = check_wifi(body, saved)
        except WifiError as exc:
            raise HttpError(422, str(exc), problems=[str(exc)]) from None
        if doc != saved:  # the same network again: nothing to write
            await trio.to_thread.run_sync(lambda: write_json(path, doc, mode=0o600))
        return json_response(200, {"configured": True, "ssid": doc["ssid"], "open": not doc["psk"]})

    async def delete_wifi(self, request: Request) -> ServerResponse:
        (self.data_dir / WIFI_FILE).unlink(missing_ok=True)
        return json_response(200, {"configured": False, "ssid": None})

    # -- certificates ----------------------------------------------------------------------------

    def _cert_files(self) -> dict[str, Path]:
        """The files the certificate flow reads and writes: the running configuration's
        ``utility.ca``, ``utility.cert`` and ``utility.key`` when a utility is configured (a site
        enrolled with ``dynexport cert request --dir ...`` keeps its registered key), the CSR
        beside the key as that command writes it; the data folder's ``serca.pem``,
        ``device-chain.pem``, ``device-key.pem`` and ``device.csr`` when none is."""
        u = self.app.config.utility
        if u is not None:
            return {"ca": u.ca, "key": u.key, "csr": u.key.parent / CSR_FILE, "cert": u.cert}
        d = self.data_dir
        return {
            "ca": d / SERCA_FILE,
            "key": d / KEY_FILE,
            "csr": d / CSR_FILE,
            "cert": d / CHAIN_FILE,
        }

    def _may_write(self, files: dict[str, Path], *names: str) -> None:
        """409 unless each of ``files[name]`` is in the data folder, has its role's own file
        name (``serca.pem``, ``device-key.pem``, ``device.csr``, ``device-chain.pem``, as
        `dynexport cert` writes them) and is no other role's file: the web API writes and
        deletes nothing else, even where a configuration points the utility link elsewhere
        (a review found ``utility.cert`` set to ``admin.json``: a key replace deleted the
        admin password file, and the next visitor set a new one)."""
        for name in names:
            path = files[name]
            key = "utility.key" if name == "csr" else f"utility.{name}"
            others = [files[n] for n in CERT_FILE_NAMES if n != name]
            if not _inside(path, self.data_dir):
                why = f"outside the data folder {self.data_dir}"
            elif path.name != CERT_FILE_NAMES[name]:
                why = f"not named {CERT_FILE_NAMES[name]}"
            elif any(_same_file(path, other) for other in others):
                why = "the same file as another of the utility's files"
            else:
                continue
            raise HttpError(
                409,
                f"{path} ({key}) is {why}: the web page does not write it; use `dynexport cert` "
                "on the device",
            )

    async def get_cert(self, request: Request) -> ServerResponse:
        from dynexport.sep2 import certs  # cryptography: loaded when an installer uses it

        files = self._cert_files()
        doc: dict[str, Any] = {
            "files": {k: str(files[k]) for k in ("ca", "cert", "key")},
            "serca": None,
            "key": files["key"].is_file(),
            "csr": files["csr"].is_file(),
            "chain": None,
        }
        if files["ca"].is_file():
            try:
                anchors = _inspect("SERCA", certs.load_certificates, files["ca"].read_bytes())
                doc["serca"] = [_inspect("SERCA", _subject, c) for c in anchors]
                doc["sercaCertificates"] = [
                    {"subject": subject, "sha256": _inspect("SERCA", _fingerprint, c)}
                    for subject, c in zip(doc["serca"], anchors, strict=True)
                ]
            except HttpError as exc:
                doc["serca"] = {"error": exc.message}
        if files["cert"].is_file():
            try:
                d = _inspect("certificate", certs.describe, files["cert"].read_bytes())
                doc["chain"] = {"lfdi": d["lfdi"], "sfdi": d["sfdi"], "notAfter": d["notAfter"]}
            except HttpError as exc:
                doc["chain"] = {"error": exc.message}
        return json_response(200, doc)

    async def put_serca(self, request: Request) -> ServerResponse:
        from dynexport.sep2 import certs  # cryptography: loaded when an installer uses it

        anchors = _inspect("SERCA", certs.load_certificates, request.body)
        described = [_inspect("SERCA", _root_ca, c) for c in anchors]
        pem = _inspect("SERCA", certs.certificate_pem, *anchors)
        files = self._cert_files()
        self._may_write(files, "ca")
        await trio.to_thread.run_sync(lambda: atomic_write(files["ca"], pem))
        u = self.app.config.utility
        if u is not None and _same_file(u.ca, files["ca"]):
            # the link reads its SERCA once, when it is built: it verifies the server with the
            # new one only when built again (a PUT /api/config naming the same file would not)
            self.app.reload_utility()
        return json_response(
            200, {"serca": [d["subject"] for d in described], "certificates": described}
        )

    async def post_cert_request(self, request: Request) -> ServerResponse:
        from dynexport.sep2 import certs  # cryptography: loaded when an installer uses it

        body = parse_json_object(request.body) if request.body.strip() else {}
        replace = body.get("replace", False)
        confirm = body.get("confirm", False)
        if not isinstance(replace, bool) or not isinstance(confirm, bool):
            raise HttpError(400, "replace and confirm must be true or false")
        files = self._cert_files()
        making = replace or not files["key"].is_file()
        self._may_write(files, "csr", *(("key", "cert") if making else ()))
        previous = self._lfdi_in_use()
        if replace and files["key"].is_file() and not confirm:
            # The consequence is named before anything happens: a new key means a new LFDI,
            # which the utility must register before this site gets its limits again.
            raise HttpError(
                409,
                "replacing the device key makes a new LFDI: the utility must register the new "
                "LFDI and sign a new certificate before this site receives its limits again "
                f"(LFDI in use: {previous or 'none yet'}); send confirm: true to replace it",
                confirm=True,
                lfdi=previous,
            )

        def make() -> tuple[bytes, bool, list[str]]:
            created = False
            kept: list[str] = []
            if files["key"].is_file() and not replace:
                key = certs.load_private_key(files["key"].read_bytes())
            else:
                key = certs.generate_key()
                if replace:  # the old identity kept, as `dynexport cert request --force` does
                    for name in ("key", "cert"):
                        copy = certs.keep_copy(files[name])
                        if copy is not None:
                            kept.append(copy.name)
                certs.write_private_key(files["key"], key, overwrite=replace)
                files["cert"].unlink(missing_ok=True)  # a chain for the old key is useless
                created = True
            from cryptography.hazmat.primitives.serialization import Encoding

            csr = certs.make_csr(key).public_bytes(Encoding.PEM)
            atomic_write(files["csr"], csr)
            return csr, created, kept

        try:
            csr, created, kept = await trio.to_thread.run_sync(make)
        except (CertError, FileExistsError) as exc:
            raise HttpError(409, f"device key: {exc}") from None
        if created and replace:
            copies = ", ".join(kept) or "nothing (none there)"
            log.warning("device key replaced from %s (LFDI was %s); the old one kept as %s",
                        request.peer[0], previous, copies)  # fmt: skip
        return json_response(
            200,
            {
                "csr": csr.decode("ascii"),
                "keyCreated": created,
                "previousLfdi": previous,
                "lfdi": self._lfdi_in_use(),
                "keptAs": kept,
            },
        )

    def _lfdi_in_use(self) -> str | None:
        """The LFDI of the stored signed certificate (None: none yet, or unreadable)."""
        path = self._cert_files()["cert"]
        try:
            return chain_lfdi(path.read_bytes())
        except Exception:  # missing or damaged: GET /api/cert says which
            return None

    async def get_csr(self, request: Request) -> ServerResponse:
        path = self._cert_files()["csr"]
        if not path.is_file():
            raise HttpError(404, "no certificate request yet: POST /api/cert/request")
        return ServerResponse(
            200,
            path.read_bytes(),
            [("Content-Disposition", 'attachment; filename="dynexport.csr"')],
            "application/pkcs10",
        )

    async def put_chain(self, request: Request) -> ServerResponse:
        from dynexport.sep2 import certs  # cryptography: loaded when an installer uses it

        files = self._cert_files()
        if not files["key"].is_file():
            raise HttpError(409, "no device key yet: POST /api/cert/request first")
        if not files["ca"].is_file():
            raise HttpError(409, "no SERCA yet: PUT /api/cert/serca first")
        self._may_write(files, "cert")
        chain = request.body
        key, ca = files["key"].read_bytes(), files["ca"].read_bytes()
        check = _inspect("certificate", certs.check_chain, chain, key, ca)
        described = _inspect("certificate", certs.describe, chain)
        await trio.to_thread.run_sync(lambda: atomic_write(files["cert"], chain))
        u = self.app.config.utility
        if u is not None and _same_file(u.cert, files["cert"]):
            self.app.reload_utility()  # the link waiting for its certificate starts now
        return json_response(
            200,
            {
                "lfdi": check.lfdi,
                "sfdi": check.sfdi,
                "warnings": list(check.warnings),
                "certificate": described,
            },
        )

    # -- site time zone ------------------------------------------------------------------------

    async def get_timezones(self, request: Request) -> ServerResponse:
        """The zones the settings offer: Australia's first, then every other the system knows
        (the configuration parser checks the choice)."""
        return json_response(200, {"australia": list(AUSTRALIAN_ZONES), "all": await ZONES.get()})

    # -- installer tools -------------------------------------------------------------------------

    async def post_test_limit(self, request: Request) -> ServerResponse:
        body = parse_json_object(request.body)
        inverter, pct, seconds = body.get("inverter"), body.get("pct"), body.get("seconds", 60)
        if not isinstance(inverter, str):
            raise HttpError(400, 'inverter must name one, e.g. "inverter 1"')
        if not isinstance(pct, int | float) or not isinstance(seconds, int | float):
            raise HttpError(400, "pct and seconds must be numbers")
        if isinstance(pct, bool) or isinstance(seconds, bool):
            raise HttpError(400, "pct and seconds must be numbers")
        from dynexport.app import TEST_MAX_S, TEST_MIN_S  # loaded already: it runs this server

        # Compared before float(): a JSON integer of 400 digits is no float (OverflowError, a 500).
        if not 0 <= pct <= 100:
            raise HttpError(400, "pct must be 0..100")
        if not TEST_MIN_S <= seconds <= TEST_MAX_S:
            raise HttpError(400, f"seconds must be {TEST_MIN_S:.0f}..{TEST_MAX_S:.0f}")
        if self.app.setup_mode:
            raise HttpError(409, "finish the setup first: no inverter is linked yet")
        try:
            started = self.app.test_limit(inverter, float(pct), float(seconds))
        except KeyError:
            raise HttpError(404, f"no inverter {inverter!r}") from None
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        log.info("test limit %s %% on %s from %s", pct, inverter, request.peer[0])
        return json_response(200, started)

    async def post_meter_check(self, request: Request) -> ServerResponse:
        if self.app.setup_mode:
            raise HttpError(409, "finish the setup first: no meter is linked yet")
        return json_response(200, await self.app.check_meter_direction())

    async def get_report(self, request: Request) -> ServerResponse:
        report = self.app.commissioning_report()
        if report.get("lfdi") is None:
            report["lfdi"] = self._lfdi_in_use()
        report["alerts"] = self.live_status()["alerts"]
        report["limits"] = limits_document(self.app.config.limits)
        return json_response(200, report)

    # -- configuration backup and restore --------------------------------------------------------

    async def get_backup(self, request: Request) -> ServerResponse:
        doc, removed = without_secrets(config_document(self.app.config))
        doc["backup"] = {
            "made": _iso(self.app.options.wall_clock()),
            "secretsRemoved": removed,
            "note": "passwords and tokens are not in this file; the device key and certificates "
            "stay on the device",
        }
        name = f"dynexport-config-{datetime.now(UTC).strftime('%Y%m%d')}.json"
        return json_response(200, doc, [("Content-Disposition", f'attachment; filename="{name}"')])

    async def post_restore(self, request: Request) -> ServerResponse:
        """A backup back in force: secrets it lacks are kept from the running configuration
        (same section), the rest goes through ``PUT /api/config``'s checks. A secret the backup
        says it left out that this device cannot supply refuses the restore: an optional one
        (``mqtt.password``) was applied as absent, and the integration lost it silently."""
        document = parse_json_object(request.body)
        about = document.pop("backup", None)
        removed = about.get("secretsRemoved") if isinstance(about, dict) else None
        kept = restore_secrets(document, config_document(self.app.config))
        lost = secrets_lost(document, removed if isinstance(removed, list) else [])
        if lost:
            problems = [
                f"{name}: the backup left it out and this device has none to keep; set it "
                "here first (or take that section out of the backup)"
                for name in lost
            ]
            raise HttpError(422, "the backup lacks secrets this device cannot supply",
                            problems=problems)  # fmt: skip
        doc = await self._apply_document(document, request.peer[0])
        doc["secretsKept"] = kept
        return json_response(200, doc)

    # -- updates -----------------------------------------------------------------------------------

    async def get_update(self, request: Request) -> ServerResponse:
        return json_response(
            200, {"upload": self.updates.state.to_json(), "last": self.app.status().get("update")}
        )

    async def post_update_upload(self, request: Request) -> ServerResponse:
        body = parse_json_object(request.body)
        return json_response(200, await self._updating(self.updates.start(body.get("size"))))

    async def put_update_chunk(self, request: Request) -> ServerResponse:
        from dynexport.web.updates import MAX_CHUNK_BYTES

        if len(request.body) > MAX_CHUNK_BYTES:
            raise HttpError(413, f"each piece holds at most {MAX_CHUNK_BYTES} bytes")
        got = self.updates.chunk(request.query.get("offset"), request.body)
        return json_response(200, await self._updating(got))

    async def post_update_check(self, request: Request) -> ServerResponse:
        return json_response(200, await self._updating(self.updates.check()))

    async def post_update_install(self, request: Request) -> ServerResponse:
        from dynexport.web.updates import UpdateError

        if self.nursery is None:
            raise HttpError(409, "this server cannot install updates (no background tasks)")
        try:
            return json_response(200, self.updates.install(self.nursery))
        except UpdateError as exc:
            raise HttpError(exc.status, exc.message) from None

    @staticmethod
    async def _updating(step: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        from dynexport.web.updates import UpdateError

        try:
            return await step
        except UpdateError as exc:
            raise HttpError(exc.status, exc.message) from None

    # -- live events ---------------------------------------------------------------------------

    async def get_events(self, request: Request) -> ServerResponse:
        refusal = self.events.refusal(request.peer[0])
        if refusal is not None:
            raise HttpError(503, f"live updates paused: {refusal}", retryAfterS=10)
        if request.method == "HEAD":
            return ServerResponse(200, b"", [("Cache-Control", "no-store")], "text/event-stream")
        return ServerResponse(
            200,
            self.events.open(request.peer[0]),
            [("Cache-Control", "no-store"), ("X-Accel-Buffering", "no")],
            "text/event-stream",
        )


AUSTRALIAN_ZONES = (
    "Australia/Sydney",
    "Australia/Melbourne",
    "Australia/Brisbane",
    "Australia/Adelaide",
    "Australia/Perth",
    "Australia/Hobart",
    "Australia/Darwin",
    "Australia/Broken_Hill",
    "Australia/Lord_Howe",
    "Australia/Eucla",
    "Australia/Lindeman",
)
SECRETS = (("mqtt", "password"), ("price", "token"), ("metrics", "token"))
"""Configuration keys a backup leaves out (docs/web.md "Backup and restore")."""


class ZoneList:
    """Every time zone the system knows, listed once for the process's life.

    ``zoneinfo.available_timezones()`` stats and opens some 1 000 files: at every (open) GET
    /api/timezones, on the event loop the controller shares. It now runs once, in a worker
    thread, and later requests reuse its answer (the zone files change only with an update,
    which restarts the service)."""

    def __init__(self) -> None:
        self._zones: list[str] | None = None
        self._lock = trio.Lock()  # parallel first requests list them once

    async def get(self) -> list[str]:
        if self._zones is None:
            async with self._lock:
                if self._zones is None:
                    self._zones = await trio.to_thread.run_sync(_list_zones)
        return self._zones


def _list_zones() -> list[str]:
    import zoneinfo

    # every zone the configuration accepts ("UTC", "NZ", "Japan" too): a configured zone the
    # list lacked could not be shown, and walking Settings dropped it (found by review)
    return sorted(zoneinfo.available_timezones())


ZONES = ZoneList()
"""The process's zone list (GET /api/timezones)."""


def without_secrets(document: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The configuration document without passwords and tokens, and the keys removed."""
    doc = json.loads(json.dumps(document))
    removed = []
    for section, key in SECRETS:
        part = doc.get(section)
        if isinstance(part, dict) and part.get(key) is not None:
            del part[key]
            removed.append(f"{section}.{key}")
    return doc, removed


def restore_secrets(document: dict[str, Any], running: dict[str, Any]) -> list[str]:
    """Puts back, from the running configuration, each secret a backup left out (in place)."""
    kept = []
    for section, key in SECRETS:
        part, now = document.get(section), running.get(section)
        if isinstance(part, dict) and key not in part and isinstance(now, dict) and key in now:
            part[key] = now[key]
            kept.append(f"{section}.{key}")
    return kept


def secrets_lost(document: dict[str, Any], removed: list[object]) -> list[str]:
    """The secrets in ``removed`` (a backup's ``secretsRemoved``) still missing from their
    section of ``document`` after ``restore_secrets``: restored so, they would be lost."""
    lost = []
    for section, key in SECRETS:
        part = document.get(section)
        if f"{section}.{key}" in removed and isinstance(part, dict) and key not in part:
            lost.append(f"{section}.{key}")
    return lost


def _reach(request: Request, hostname: str) -> list[str]:
    """How to open this device again: its mDNS name (``dynexport.local`` on the image) and the
    address this page reached (an address on the setup access point is gone after setup)."""
    port = request.local[1] if request.local else 80
    suffix = "" if port == 80 else f":{port}"
    out = [f"{hostname.split('.')[0]}.local{suffix}"]
    local = request.local[0] if request.local else None
    if local and local != "192.168.4.1":
        out.append(f"[{local}]{suffix}" if ":" in local else f"{local}{suffix}")
    return out


def _too_many(seconds: int) -> HttpError:
    return HttpError(
        429, f"too many password attempts: try again in {seconds} s", retryAfterS=seconds
    )


def _busy() -> HttpError:
    return HttpError(429, "busy checking other passwords: try again in 1 s", retryAfterS=1)


def _inspect(what: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on an uploaded or stored certificate; any failure is a 422 naming it.

    cryptography parses certificates lazily: a malformed extension, name, date or key raises
    ValueError, KeyError, TypeError, DuplicateExtension, UnsupportedGeneralNameType,
    InvalidVersion or UnsupportedAlgorithm from wherever it is first read, not only CertError.
    Until sep2/certs.py turns every one into CertError, the web boundary does."""
    try:
        return fn(*args)
    except CertError as exc:
        raise HttpError(422, f"{what}: {exc}", problems=[f"{what}: {exc}"]) from None
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        log.info("%s: %s from %s: %s", what, type(exc).__name__, getattr(fn, "__name__", fn), exc)
        message = f"{what}: the certificate is malformed ({type(exc).__name__}: {reason})"
        raise HttpError(422, message, problems=[message]) from None


def _subject(cert: Any) -> str:
    return str(cert.subject.rfc4514_string())


def _fingerprint(cert: Any) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _root_ca(cert: Any) -> dict[str, Any]:
    """What the installer compares with the utility's published SERCA (subject, SHA-256), once
    ``cert`` is checked to be a self-signed root CA allowed to sign certificates: not a MICA,
    not the device's own certificate."""
    from cryptography import x509

    subject = _subject(cert)
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    if not ca:
        raise CertError(f"{subject!r} is not a CA certificate (basicConstraints cA)")
    if cert.issuer != cert.subject:
        raise CertError(
            f"{subject!r} is issued by {cert.issuer.rfc4514_string()!r}: the SERCA is the "
            "utility's self-signed root, not an intermediate such as a MICA"
        )
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:
        raise CertError(f"{subject!r} is not self-signed (its signature does not verify)") from None
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or not usage.key_cert_sign:
        raise CertError(f"{subject!r} may not sign certificates (keyUsage keyCertSign)")
    return {
        "subject": subject,
        "sha256": _fingerprint(cert),
        "notAfter": _iso(cert.not_valid_after_utc.timestamp()),
    }


def _scan_endpoint(body: dict[str, Any]) -> Endpoint:
    tcp, rtu = body.get("tcp"), body.get("rtu")
    if (tcp is None) == (rtu is None):
        raise HttpError(400, 'give exactly one of "tcp" (HOST:PORT) or "rtu" (serial device)')
    if tcp is not None:
        if not isinstance(tcp, str):
            raise HttpError(400, "tcp must be HOST or HOST:PORT")
        try:
            return parse_tcp(tcp)
        except ValueError as exc:
            raise HttpError(400, f"tcp: {exc}") from None
    if not _serial_ok(rtu):
        raise HttpError(
            400, "rtu must be a serial device such as /dev/ttyUSB0 or /dev/serial/by-id/..."
        )
    baud, parity, stopbits = (
        body.get("baud", 9600),
        body.get("parity", "N"),
        body.get("stopbits", 1),
    )
    if baud not in BAUD_RATES or parity not in ("N", "E", "O") or stopbits not in (1, 2):
        raise HttpError(400, "baud, parity or stopbits not supported")
    return SerialEndpoint(rtu, int(baud), parity, int(stopbits))


def _serial_ok(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(SERIAL_PORT.match(value)) and ".." not in value


def _number_problems(value: object, path: str) -> list[str]:
    """Numbers no configuration key can hold (huge, infinite), by key path: refused before the
    parser turns them into floats."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):  # arbitrary size: compare as integers
        too_big = abs(value) > int(MAX_JSON_NUMBER)
    elif isinstance(value, float):
        too_big = not (math.isfinite(value) and abs(value) <= MAX_JSON_NUMBER)
    else:
        too_big = False
    if too_big:
        return [f"{path or 'configuration'}: number out of range"]
    out: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _number_problems(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _number_problems(v, f"{path}[{i}]")
    return out


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path``, with every symlink and ``..`` resolved, is inside ``folder``."""
    real = Path(os.path.realpath(path))
    return real.is_relative_to(Path(os.path.realpath(folder)))


def _place_problems(document: dict[str, Any], config: Config, data_dir: Path) -> list[str]:
    """Paths set through the web API may only name files in the data folder and serial
    devices: an admin session (or whoever has one) must not point the service at any file."""
    out: list[str] = []
    files: list[tuple[str, Path | None]] = []
    if config.utility is not None:
        u = config.utility
        files += [("utility.ca", u.ca), ("utility.cert", u.cert), ("utility.key", u.key)]
    if config.mqtt is not None:
        m = config.mqtt
        files += [("mqtt.ca", m.ca), ("mqtt.cert", m.cert), ("mqtt.key", m.key)]
    if config.price is not None:
        files.append(("price.ca", config.price.ca))
    if config.update is not None:
        files.append(("update.ca", config.update.ca))
    for key, file in files:
        if file is not None and not _inside(file, data_dir):
            out.append(f"{key}: must be a file in the data folder {data_dir}")
    for key, entries in (
        ("inverters", document.get("inverters")),
        ("batteries", document.get("batteries")),
        ("meter", document.get("meter")),
    ):
        items = entries if isinstance(entries, list) else [entries]
        for i, entry in enumerate(items):
            if not isinstance(entry, dict) or entry.get("rtu") is None:
                continue
            where = f"{key}[{i}].rtu" if isinstance(entries, list) else f"{key}.rtu"
            rtu = entry["rtu"]
            if not _serial_ok(rtu):
                out.append(f"{where}: must be a serial device (/dev/tty* or /dev/serial/by-id/*)")
    return out


def cannot_bind(host: str) -> str | None:
    """Why the web server could not listen on ``host`` at its next start (None: it can), found
    by binding a socket to it (any port). An IP address that is not this machine's (another
    site's backup, a typo) was saved, and at the next start the web UI was gone."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"{host} is not an address of this machine, so the web server could not use it"
        return f"the web server could not listen on {host}: {exc.strerror or exc}"
    return None


def _file_problems(config: Config, chain_files: tuple[Path, ...]) -> list[str]:
    """Files the utility link needs. The signed chain may still be missing when it is this
    device's own chain file (``chain_files``: the running utility's, or the data folder's) and
    the key exists: enrolment takes days, and the site is commissioned meanwhile (the link
    waits, the fallback export limit applies)."""
    u = config.utility
    if u is None:
        return []
    return [
        f"utility.{key}: file not found: {path}"
        for key, path in (("ca", u.ca), ("cert", u.cert), ("key", u.key))
        if not path.is_file()
        and not (
            key == "cert" and any(_same_file(path, c) for c in chain_files) and u.key.is_file()
        )
    ]


def _pending(config: Config) -> list[str]:
    """What the applied configuration still waits for (shown after Apply)."""
    u = config.utility
    if u is not None and not u.cert.is_file():
        return [
            "utility link: waiting for the signed certificate (upload it in Settings, "
            f"Certificate); until then export is held at {u.fallback_export_w:.0f} W"
        ]
    return []


def _same_file(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _security_headers(response: ServerResponse, path: str) -> None:
    names = {k.lower() for k, _ in response.headers}
    extra = [
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
        (
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    ]
    if path.startswith("/api/") and "cache-control" not in names:
        extra.append(("Cache-Control", "no-store"))
    response.headers.extend(h for h in extra if h[0].lower() not in names)


def make_handler(app: AppLike, **kwargs: Any) -> Callable[[Request], Awaitable[ServerResponse]]:
    """The request handler for ``app`` (see WebApi for the options)."""
    return WebApi(app, **kwargs).handle
