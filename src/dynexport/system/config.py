"""The one configuration file: JSON, validated when loaded, documented in docs/configuration.md.

Every problem is reported with the key path that holds it, e.g. ``inverters[1].unit: must be
1..247``, so an installer can fix the file without reading code. Relative paths in the file are
resolved against the file's folder. Unknown keys are errors, not silently ignored: a typo in a
limit must never pass as "no limit".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from dynexport.control.limits import LimitsConfig, LimitsConfigError, parse_limits
from dynexport.modbus.endpoints import (
    Endpoint,
    Parity,
    SerialEndpoint,
    parse_tcp,
)
from dynexport.system.migrate import MigrationError, migrate

T = TypeVar("T")


class ConfigError(ValueError):
    """One or more problems in a configuration, each naming its key path."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


@dataclass(frozen=True)
class DeviceConfig:
    """A SunSpec device: where it is (endpoint) and which Modbus unit id answers for it."""

    endpoint: Endpoint
    unit: int
    type: Literal["sunspec"] = "sunspec"


@dataclass(frozen=True)
class InverterConfig(DeviceConfig):
    """An inverter the controller reads and limits."""


@dataclass(frozen=True)
class BatteryConfig(DeviceConfig):
    """A battery the controller charges before curtailing and discharges to hold import and
    load limits (docs/control.md, "Batteries"). An AC-coupled battery at its own unit, or a
    hybrid inverter's storage models: then the same endpoint and unit is also an inverter."""

    max_soc_pct: float = 100.0
    reserve_soc_pct: float = 20.0
    """Never discharged below this by dynexport (the owner's evening reserve)."""
    evening_soc_pct: float | None = None
    """The planner never holds charging back if it would end the day below this (default: the
    reserve)."""
    capacity_wh: float | None = None
    """When the device does not report its energy rating (713/802 WHRtg)."""
    convention: Literal["sunspec", "window"] = "sunspec"
    """How it reads model 124 InWRte/OutWRte: "window" for a Fronius GEN24 (docs/sunspec.md)."""
    discharge_positive: bool = True
    """Which way model 802 ``W`` counts on this device (a hybrid's battery power)."""
    plan: bool = True
    """Hold morning charging back so the limited hours find room (docs/control.md)."""


@dataclass(frozen=True)
class MeterConfig(DeviceConfig):
    """The site meter at the grid connection (positive import, negative export)."""

    location: Literal["feedin"] = "feedin"


@dataclass(frozen=True)
class ControlConfig:
    """How the controller runs and how commands are sent to inverters."""

    revert_s: int = 60
    """Every limit written to an inverter reverts by itself after this many seconds unless
    rewritten; the controller rewrites it well before, so a dead controller fails safe."""
    interval_s: float = 1.0
    """How often the control law runs."""
    meter_stale_s: float = 5.0
    """A meter reading older than this puts the controller in its fail-safe."""
    failsafe_generation_w: float | None = None
    """Total generation allowed while the meter is stale; None: the export limit in force
    (which keeps export within it even at zero load)."""


@dataclass(frozen=True)
class WebConfig:
    """The built-in web server (setup, dashboard, JSON API)."""

    host: str = "0.0.0.0"
    port: int = 80


@dataclass(frozen=True)
class UtilityConfig:
    """The utility's IEEE 2030.5 server and this device's credentials for it (CSIP-AUS)."""

    server: str
    """Base URL, ``https://host[:port]``."""
    ca: Path
    """The utility's SERCA (PEM); the server's chain is always verified against it."""
    cert: Path
    """This device's certificate chain (device certificate, then the MICA), PEM."""
    key: Path
    """This device's private key, PEM (mode 0600)."""
    nmi: str
    """National Metering Identifier of the site, put on the ConnectionPoint."""
    dcap: str = "/dcap"
    pin: int | None = None
    """Registration PIN given to the installer; checked against the server's Registration."""
    type: Literal["csip-aus"] = "csip-aus"
    ciphers: tuple[str, ...] = ()
    """Extra TLS 1.2 cipher suites (OpenSSL names) beside ECDHE-ECDSA-AES128-CCM8."""
    check_hostname: bool = True
    """Check the server certificate's name against ``server``; the chain is checked regardless."""
    pen: int = 0
    """IANA Private Enterprise Number of the manufacturer or installer (decimal). Every mRID the
    client creates ends in it, written as 8 decimal digits, as IEEE 2030.5 and the CSIP-AUS test
    harness require; 0 (unset) works but is reported as a warning."""
    fallback_export_w: float = 1500.0
    """Export limit applied while the utility is configured but no usable schedule exists (no
    certificate yet, PIN mismatch, stored schedule unreadable and no network): fail closed, not
    open. 1500 W is the common fixed limit of Australian networks."""
    csipaus_version: Literal["auto", "1.2", "1.3"] = "auto"
    """The CSIP-AUS version (namespace) the client writes: "auto" follows the one the server's
    bodies declare (1.2 until one is seen); "1.2" or "1.3" forces it (docs/sep2.md)."""


@dataclass(frozen=True)
class SiteConfig:
    """Facts about the site itself."""

    time_zone: str | None = None
    """IANA time zone name (``Australia/Brisbane``) in which daily windows run; None: the
    system's own zone (UTC on an appliance nobody set up), reported as a warning when windows
    are configured."""


@dataclass(frozen=True)
class MqttConfig:
    """The MQTT broker the status is published to (docs/integrations.md); optional."""

    url: str
    """``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]`` (TLS), as written."""
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    """Written back as it is; the web layer decides what it shows."""
    ca: Path | None = None
    """CA (PEM) that signed the broker's certificate; None: the system's trusted roots."""
    cert: Path | None = None
    """Client certificate chain (PEM) for brokers that ask for one; with ``key``."""
    key: Path | None = None
    topic_prefix: str | None = None
    """None: ``dynexport/<serial or LFDI>`` (integrations/topics.py)."""
    discovery_prefix: str = "homeassistant"
    """Home Assistant's MQTT discovery prefix (its own default)."""
    publish_s: float = 5.0
    """How often the state topics are published."""
    command_topic: bool = False
    """Accept an installer export limit on ``<prefix>/set/export_limit`` (off by default)."""
    command_expiry_s: float = 300.0
    """A commanded limit lapses after this long (or the shorter time it names), so a dead
    publisher cannot pin the site's export."""


@dataclass(frozen=True)
class PriceConfig:
    """Price-aware export: limit export while the feed-in price is below a threshold."""

    site_id: str
    token: str
    """The Amber API token; written back as it is (the web layer decides what it shows)."""
    type: Literal["amber"] = "amber"
    url: str = "https://api.amber.com.au/v1"
    ca: Path | None = None
    """CA (PEM) for a private price server or proxy; None: the system's trusted roots."""
    below_cents: float = 0.0
    """Limit export while the feed-in price (c/kWh earned for exporting) is below this."""
    export_w: float = 0.0
    """The export limit applied meanwhile."""
    poll_s: float = 300.0
    expiry_s: float = 900.0
    """Prices fetched longer ago than this lapse: the source then sets no limit and says so."""


@dataclass(frozen=True)
class MetricsConfig:
    """``GET /metrics`` (Prometheus text format): off unless configured, bearer token required."""

    token: str


@dataclass(frozen=True)
class UpdateConfig:
    """The optional update URL (docs/update.md, "The update URL"): off unless configured."""

    url: str
    """The manifest, ``https://...`` (plain http is refused)."""
    ca: Path | None = None
    """CA (PEM) for a private update server; None: the system's trusted roots."""
    check_hours: float = 24.0
    """How often the manifest is read (each wait jittered by 10 %)."""
    install: Literal["notify", "auto"] = "notify"
    """``notify``: a newer version is only shown; ``auto``: it is downloaded and installed."""

    def document(self) -> dict[str, Any]:
        """The section as it parses back (for a configuration written by the web page)."""
        doc: dict[str, Any] = {"url": self.url}
        if self.ca is not None:
            doc["ca"] = str(self.ca)
        hours = self.check_hours
        doc["checkHours"] = int(hours) if hours.is_integer() else hours
        doc["install"] = self.install
        return doc


@dataclass(frozen=True)
class Config:
    """A validated configuration."""

    inverters: tuple[InverterConfig, ...] = ()
    meter: MeterConfig | None = None
    control: ControlConfig = field(default_factory=ControlConfig)
    utility: UtilityConfig | None = None
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    base_dir: Path = field(default_factory=Path.cwd)
    mqtt: MqttConfig | None = None
    price: PriceConfig | None = None
    metrics: MetricsConfig | None = None
    batteries: tuple[BatteryConfig, ...] = ()
    update: UpdateConfig | None = None
    cautions: tuple[str, ...] = field(default=(), compare=False)
    """Problems found after an earlier release accepted such a file: a key given twice, a
    ``web.host`` that is not an address, a server port out of range. ``dynexport run`` runs on
    it and shows them (``configProblems``), so an update never takes a running site's limits
    away; ``config check`` and the web API refuse them."""

    def endpoints(self) -> list[Endpoint]:
        """Each distinct endpoint once: devices naming the same one share a connection or bus."""
        seen: dict[Endpoint, None] = {}
        for dev in self.devices():
            seen.setdefault(dev.endpoint, None)
        return list(seen)

    def devices(self) -> Iterator[DeviceConfig]:
        yield from self.inverters
        yield from self.batteries
        if self.meter is not None:
            yield self.meter


# --------------------------------------------------------------------------------------
# Validation: a small reader that remembers where it is, so every message names a path.


class _Reader:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.cautions: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def caution(self, path: str, message: str) -> None:
        """A problem an earlier release let through: run on it, say so (``Config.cautions``)."""
        self.cautions.append(f"{path}: {message}")

    def obj(self, value: object, path: str, allowed: set[str]) -> Mapping[str, Any] | None:
        if not isinstance(value, dict):
            self.fail(path or "(top level)", f"must be an object, not {_kind(value)}")
            return None
        for key in value:
            if key not in allowed:
                hint = _closest(key, allowed)
                extra = f" (did you mean {hint!r}?)" if hint else ""
                self.fail(_join(path, key), f"unknown key{extra}")
        return value

    def int_in(
        self, value: object, path: str, lo: int, hi: int, default: int | None = None
    ) -> int | None:
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                self.fail(path, f"must be a whole number {lo}..{hi}, not {_kind(value)}")
                return None
        if not lo <= value <= hi:
            self.fail(path, f"must be {lo}..{hi}")
            return None
        return value

    def number_in(
        self, value: object, path: str, lo: float, hi: float, default: float
    ) -> float | None:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"must be a number {lo:g}..{hi:g}, not {_kind(value)}")
            return None
        if not lo <= value <= hi:
            self.fail(path, f"must be {lo:g}..{hi:g}")
            return None
        return float(value)

    def choice(self, value: object, path: str, options: tuple[T, ...], default: T) -> T | None:
        if value is None:
            return default
        if value not in options:
            listed = ", ".join(repr(o) for o in options)
            self.fail(path, f"must be one of {listed}, not {value!r}")
            return None
        return value

    def string(self, value: object, path: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"must be a non-empty string, not {_kind(value)}")
            return None
        return value.strip()

    def items(
        self, value: object, path: str, each: Callable[[object, str], T | None]
    ) -> tuple[T, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(path, f"must be a list, not {_kind(value)}")
            return ()
        out = []
        for i, item in enumerate(value):
            parsed = each(item, f"{path}[{i}]")
            if parsed is not None:
                out.append(parsed)
        return tuple(out)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _closest(key: str, allowed: set[str]) -> str | None:
    lowered = {a.lower(): a for a in allowed}
    return lowered.get(key.lower())


_DEVICE_KEYS = {"type", "tcp", "rtu", "baud", "parity", "stopbits", "unit"}
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


def _endpoint(r: _Reader, raw: Mapping[str, Any], path: str, base_dir: Path) -> Endpoint | None:
    tcp, rtu = raw.get("tcp"), raw.get("rtu")
    if (tcp is None) == (rtu is None):
        r.fail(path, 'needs exactly one of "tcp" (HOST:PORT) or "rtu" (serial device)')
        return None
    if tcp is not None:
        for key in ("baud", "parity", "stopbits"):
            if key in raw:
                r.fail(_join(path, key), 'only applies to "rtu" devices')
        text = r.string(tcp, _join(path, "tcp"))
        if text is None:
            return None
        try:
            return parse_tcp(text)
        except ValueError as exc:
            r.fail(_join(path, "tcp"), str(exc))
            return None
    device = r.string(rtu, _join(path, "rtu"))
    baud = r.choice(raw.get("baud"), _join(path, "baud"), BAUD_RATES, 9600)
    parities: tuple[Parity, ...] = ("N", "E", "O")
    parity = r.choice(raw.get("parity"), _join(path, "parity"), parities, "N")
    stopbits = r.choice(raw.get("stopbits"), _join(path, "stopbits"), (1, 2), 1)
    if device is None or baud is None or parity is None or stopbits is None:
        return None
    dev_path = Path(device)
    if not dev_path.is_absolute():
        dev_path = base_dir / dev_path
    return SerialEndpoint(device=str(dev_path), baud=baud, parity=parity, stopbits=stopbits)


def _device_fields(
    r: _Reader, value: object, path: str, base_dir: Path, extra: set[str]
) -> tuple[Mapping[str, Any], Endpoint, int] | None:
    raw = r.obj(value, path, _DEVICE_KEYS | extra)
    if raw is None:
        return None
    if r.choice(raw.get("type"), _join(path, "type"), ("sunspec",), "sunspec") is None:
        return None
    endpoint = _endpoint(r, raw, path, base_dir)
    if "unit" not in raw:
        r.fail(_join(path, "unit"), "is required (the Modbus unit id, 1..247)")
        return None
    unit = r.int_in(raw["unit"], _join(path, "unit"), 1, 247)
    if endpoint is None or unit is None:
        return None
    return raw, endpoint, unit


def _inverter(r: _Reader, base_dir: Path) -> Callable[[object, str], InverterConfig | None]:
    def parse(value: object, path: str) -> InverterConfig | None:
        got = _device_fields(r, value, path, base_dir, set())
        if got is None:
            return None
        _, endpoint, unit = got
        return InverterConfig(endpoint=endpoint, unit=unit)

    return parse


_BATTERY_KEYS = {
    "maxSocPct",
    "reserveSocPct",
    "eveningSocPct",
    "capacityWh",
    "convention",
    "dischargePositive",
    "plan",
}


def _battery(r: _Reader, base_dir: Path) -> Callable[[object, str], BatteryConfig | None]:
    def parse(value: object, path: str) -> BatteryConfig | None:
        got = _device_fields(r, value, path, base_dir, _BATTERY_KEYS)
        if got is None:
            return None
        raw, endpoint, unit = got
        max_soc = r.number_in(raw.get("maxSocPct"), _join(path, "maxSocPct"), 10, 100, 100.0)
        reserve = r.number_in(raw.get("reserveSocPct"), _join(path, "reserveSocPct"), 0, 90, 20.0)
        evening = None
        if raw.get("eveningSocPct") is not None:
            evening = r.number_in(raw["eveningSocPct"], _join(path, "eveningSocPct"), 0, 100, 0)
        capacity = None
        if raw.get("capacityWh") is not None:
            capacity = r.number_in(raw["capacityWh"], _join(path, "capacityWh"), 100, 1e6, 0)
        conventions: tuple[Literal["sunspec", "window"], ...] = ("sunspec", "window")
        convention = r.choice(
            raw.get("convention"), _join(path, "convention"), conventions, "sunspec"
        )
        positive = _flag(r, raw, "dischargePositive", path, True)
        plan = _flag(r, raw, "plan", path, True)
        if max_soc is None or reserve is None or convention is None:
            return None
        if reserve >= max_soc:
            r.fail(
                _join(path, "reserveSocPct"),
                f"must be below maxSocPct ({max_soc:g}): the battery needs room between them",
            )
            return None
        return BatteryConfig(
            endpoint=endpoint,
            unit=unit,
            max_soc_pct=max_soc,
            reserve_soc_pct=reserve,
            evening_soc_pct=evening,
            capacity_wh=capacity,
            convention=convention,
            discharge_positive=positive,
            plan=plan,
        )

    return parse


def _meter(r: _Reader, value: object, path: str, base_dir: Path) -> MeterConfig | None:
    got = _device_fields(r, value, path, base_dir, {"location"})
    if got is None:
        return None
    raw, endpoint, unit = got
    if raw.get("location", "feedin") != "feedin":
        r.fail(
            _join(path, "location"),
            'must be "feedin" (a meter at the grid connection); a consumption meter cannot '
            "tell site export",
        )
        return None
    return MeterConfig(endpoint=endpoint, unit=unit)


def _control(r: _Reader, value: object, path: str) -> ControlConfig | None:
    if value is None:
        return ControlConfig()
    raw = r.obj(value, path, {"revertS", "intervalS", "meterStaleS", "failsafeGenerationW"})
    if raw is None:
        return None
    revert = r.int_in(raw.get("revertS"), _join(path, "revertS"), 10, 3600, default=60)
    interval = r.number_in(raw.get("intervalS"), _join(path, "intervalS"), 0.2, 10.0, 1.0)
    stale = r.number_in(raw.get("meterStaleS"), _join(path, "meterStaleS"), 2.0, 60.0, 5.0)
    failsafe = None
    if raw.get("failsafeGenerationW") is not None:
        failsafe = r.number_in(
            raw["failsafeGenerationW"], _join(path, "failsafeGenerationW"), 0.0, 1e6, 0.0
        )
        if failsafe is None:
            return None
    if revert is None or interval is None or stale is None:
        return None
    if interval * 3 > revert:
        r.fail(_join(path, "revertS"), "must be at least three control intervals")
        return None
    return ControlConfig(
        revert_s=revert,
        interval_s=interval,
        meter_stale_s=stale,
        failsafe_generation_w=failsafe,
    )


def _web(r: _Reader, value: object, path: str) -> WebConfig | None:
    if value is None:
        return WebConfig()
    raw = r.obj(value, path, {"host", "port"})
    if raw is None:
        return None
    host = r.string(raw.get("host", "0.0.0.0"), _join(path, "host"))
    port = r.int_in(raw.get("port"), _join(path, "port"), 1, 65535, default=80)
    if host is not None and not _ip_address(host):
        # a typo of an address may not be bound at the next start: the web UI needed to put it
        # right would be gone (control goes on)
        r.caution(_join(path, "host"), f"must be an IP address (0.0.0.0: every one), not {host!r}")
    if host is None or port is None:
        return None
    return WebConfig(host=host, port=port)


def _limits(r: _Reader, value: object) -> LimitsConfig:
    try:
        return parse_limits(value, "limits")
    except LimitsConfigError as exc:
        r.problems.extend(exc.problems)
        return LimitsConfig()


_UTILITY_KEYS = {
    "type",
    "server",
    "dcap",
    "ca",
    "cert",
    "key",
    "nmi",
    "pin",
    "ciphers",
    "checkHostname",
    "pen",
    "fallbackExportW",
    "csipAusVersion",
}
_NMI = re.compile(r"^[A-Z0-9]{10,11}$")
_CIPHER = re.compile(r"^[A-Z0-9-]+$")


def _utility(r: _Reader, value: object, path: str, base_dir: Path) -> UtilityConfig | None:
    raw = r.obj(value, path, _UTILITY_KEYS)
    if raw is None:
        return None
    problems_before = len(r.problems)
    r.choice(raw.get("type"), _join(path, "type"), ("csip-aus",), "csip-aus")
    server = r.string(raw.get("server"), _join(path, "server"))
    if server is not None and not re.match(r"^https://[^/\s]+$", server.rstrip("/")):
        r.fail(_join(path, "server"), f"must be https://HOST[:PORT], not {server!r}")
    elif server is not None and _bad_port(server):
        # the link is never built, and the fallback export limit holds: run, and say so
        r.caution(_join(path, "server"), f"its port must be 1..65535, not {server!r}")
    dcap = r.string(raw.get("dcap", "/dcap"), _join(path, "dcap"))
    if dcap is not None and not dcap.startswith("/"):
        r.fail(_join(path, "dcap"), "must be a path starting with /")
    files: dict[str, Path] = {}
    for key in ("ca", "cert", "key"):
        text = r.string(raw.get(key), _join(path, key))
        if text is not None:
            p = Path(text)
            files[key] = p if p.is_absolute() else base_dir / p
    nmi = r.string(raw.get("nmi"), _join(path, "nmi"))
    if nmi is not None and not _NMI.match(nmi.upper()):
        r.fail(_join(path, "nmi"), "must be the site's 10 or 11 character NMI")
    pin = None
    if raw.get("pin") is not None:
        pin = r.int_in(raw.get("pin"), _join(path, "pin"), 0, 999999)
    ciphers_raw = raw.get("ciphers", [])
    ciphers: list[str] = []
    if not isinstance(ciphers_raw, list) or not all(
        isinstance(c, str) and _CIPHER.match(c) for c in ciphers_raw
    ):
        r.fail(_join(path, "ciphers"), "must be a list of OpenSSL cipher names")
    else:
        ciphers = list(ciphers_raw)
    check_hostname = raw.get("checkHostname", True)
    if not isinstance(check_hostname, bool):
        r.fail(_join(path, "checkHostname"), "must be true or false")
    # a PEN must fit the 8 decimal digits that end every mRID the client makes (IANA's are
    # about five digits today); truncating it would name another organisation
    pen = r.int_in(raw.get("pen"), _join(path, "pen"), 0, 99_999_999, default=0)
    fallback = r.number_in(
        raw.get("fallbackExportW"), _join(path, "fallbackExportW"), 0, 1e7, default=1500.0
    )
    versions: tuple[Literal["auto", "1.2", "1.3"], ...] = ("auto", "1.2", "1.3")
    version = r.choice(raw.get("csipAusVersion"), _join(path, "csipAusVersion"), versions, "auto")
    if len(r.problems) > problems_before or server is None or nmi is None or dcap is None:
        return None
    return UtilityConfig(
        server=server.rstrip("/"),
        dcap=dcap,
        ca=files["ca"],
        cert=files["cert"],
        key=files["key"],
        nmi=nmi.upper(),
        pin=pin,
        ciphers=tuple(ciphers),
        check_hostname=bool(check_hostname),
        pen=0 if pen is None else pen,
        fallback_export_w=1500.0 if fallback is None else float(fallback),
        csipaus_version=version or "auto",
    )


TOP_LEVEL_KEYS = {"inverters", "meter", "control", "utility", "limits", "web", "site"}
TOP_LEVEL_KEYS |= {"mqtt", "price", "metrics"}  # integrations (docs/integrations.md)
TOP_LEVEL_KEYS |= {"batteries"}  # docs/control.md, "Batteries"
TOP_LEVEL_KEYS |= {"update"}  # docs/update.md, "The update URL"


def _site(r: _Reader, value: object, path: str) -> SiteConfig:
    raw = r.obj({} if value is None else value, path, {"timeZone"})
    if raw is None:
        return SiteConfig()
    zone = raw.get("timeZone")
    if zone is None:
        return SiteConfig()
    if not isinstance(zone, str) or not valid_time_zone(zone):
        r.fail(
            _join(path, "timeZone"),
            f"must be an IANA time zone name such as 'Australia/Brisbane', not {zone!r}",
        )
        return SiteConfig()
    return SiteConfig(time_zone=zone)


_MQTT_KEYS = {
    "url",
    "username",
    "password",
    "ca",
    "cert",
    "key",
    "topicPrefix",
    "discoveryPrefix",
    "publishS",
    "commandTopic",
    "commandExpiryS",
}
_MQTT_URL = re.compile(
    r"^(?P<scheme>mqtts?)://(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:/\s\[\]@]+))"
    r"(?::(?P<port>\d{1,5}))?/?$"
)
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9_\-]+(?:/[A-Za-z0-9_\-]+)*$")


def parse_mqtt_url(text: str) -> tuple[str, int, bool]:
    """``mqtt://HOST[:PORT]`` (port 1883) or ``mqtts://HOST[:PORT]`` (TLS, port 8883)."""
    m = _MQTT_URL.match(text.strip())
    if not m:
        raise ValueError(f"must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT], not {text!r}")
    tls = m.group("scheme") == "mqtts"
    port = int(m.group("port")) if m.group("port") else (8883 if tls else 1883)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1..65535, not {port}")
    return m.group("v6") or m.group("host"), port, tls


def _host_name_problem(host: str) -> str | None:
    """Why the name lookup would refuse ``host`` before asking DNS, None when it would not.

    The lookup (trio's ``getaddrinfo``) encodes a name with Python's IDNA codec and a
    non-ASCII one also with the ``idna`` package (UTS 46): an empty label, one over 63
    characters or a character no host name may hold (``☃.local``) raises UnicodeError there,
    on every connection attempt."""
    if _ip_address(host):
        return None
    try:
        host.encode("idna")
        if not host.isascii():
            import idna

            idna.encode(host, uts46=True)
    except ValueError as exc:  # UnicodeError, idna.IDNAError
        return str(exc.__cause__ or exc) or "not a valid host name"
    return None


def _optional_path(
    r: _Reader, raw: Mapping[str, Any], key: str, path: str, base: Path
) -> Path | None:
    if raw.get(key) is None:
        return None
    text = r.string(raw[key], _join(path, key))
    if text is None:
        return None
    p = Path(text)
    return p if p.is_absolute() else base / p


def _optional_string(r: _Reader, raw: Mapping[str, Any], key: str, path: str) -> str | None:
    return None if raw.get(key) is None else r.string(raw[key], _join(path, key))


def _flag(r: _Reader, raw: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        r.fail(_join(path, key), f"must be true or false, not {_kind(value)}")
        return default
    return value


def _mqtt(r: _Reader, value: object, path: str, base_dir: Path) -> MqttConfig | None:
    raw = r.obj(value, path, _MQTT_KEYS)
    if raw is None:
        return None
    before = len(r.problems)
    url = r.string(raw.get("url"), _join(path, "url"))
    where: tuple[str, int, bool] | None = None
    if url is not None:
        try:
            where = parse_mqtt_url(url)
        except ValueError as exc:
            r.fail(_join(path, "url"), str(exc))
    username = _optional_string(r, raw, "username", path)
    password = None if raw.get("password") is None else raw["password"]
    if password is not None and not isinstance(password, str):
        r.fail(_join(path, "password"), f"must be a string, not {_kind(password)}")
    if password is not None and username is None:
        r.fail(_join(path, "password"), "needs a username")
    files = {k: _optional_path(r, raw, k, path, base_dir) for k in ("ca", "cert", "key")}
    if (files["cert"] is None) != (files["key"] is None):
        r.fail(path, 'a client certificate needs both "cert" and "key"')
    if where is not None and not where[2]:
        for k in ("ca", "cert", "key"):
            if files[k] is not None:
                r.fail(_join(path, k), "only applies to mqtts:// (TLS) brokers")
    prefixes: dict[str, str | None] = {}
    for key in ("topicPrefix", "discoveryPrefix"):
        prefixes[key] = _optional_string(r, raw, key, path)
        got = prefixes[key]
        if got is not None and not _TOPIC_PREFIX.match(got):
            r.fail(
                _join(path, key),
                "must be topic levels of letters, digits, _ and - separated by /, not "
                f"{got!r} (no wildcards, no leading or trailing /)",
            )
    publish = r.number_in(raw.get("publishS"), _join(path, "publishS"), 1.0, 3600.0, 5.0)
    command = _flag(r, raw, "commandTopic", path, False)
    expiry = r.number_in(
        raw.get("commandExpiryS"), _join(path, "commandExpiryS"), 10.0, 86400.0, 300.0
    )
    if len(r.problems) > before or url is None or where is None:
        return None
    host, port, tls = where
    problem = _host_name_problem(host)
    if problem is not None:
        # the bridge never connects and says so (its lastError): run, and say so here too
        r.caution(_join(path, "url"), f"its host {host[:100]!r} cannot be looked up: {problem}")
    return MqttConfig(
        url=url,
        host=host,
        port=port,
        tls=tls,
        username=username,
        password=password if isinstance(password, str) else None,
        ca=files["ca"],
        cert=files["cert"],
        key=files["key"],
        topic_prefix=prefixes["topicPrefix"],
        discovery_prefix=prefixes["discoveryPrefix"] or "homeassistant",
        publish_s=5.0 if publish is None else publish,
        command_topic=command,
        command_expiry_s=300.0 if expiry is None else expiry,
    )


_PRICE_KEYS = {
    "type",
    "siteId",
    "token",
    "url",
    "ca",
    "belowCents",
    "exportW",
    "pollS",
    "expiryS",
}


def _price(r: _Reader, value: object, path: str, base_dir: Path) -> PriceConfig | None:
    raw = r.obj(value, path, _PRICE_KEYS)
    if raw is None:
        return None
    before = len(r.problems)
    r.choice(raw.get("type"), _join(path, "type"), ("amber",), "amber")
    site_id = r.string(raw.get("siteId"), _join(path, "siteId"))
    if site_id is not None and not re.match(r"^[A-Za-z0-9_-]{1,64}$", site_id):
        r.fail(_join(path, "siteId"), "must be the Amber site id (letters and digits)")
    token = r.string(raw.get("token"), _join(path, "token"))
    url = r.string(raw.get("url", "https://api.amber.com.au/v1"), _join(path, "url"))
    if url is not None and not re.match(r"^https://[^/\s]+(/[^\s?#]*)?$", url):
        r.fail(_join(path, "url"), f"must be https://HOST[:PORT][/PATH], not {url!r}")
    elif url is not None and _bad_port(url):
        r.caution(_join(path, "url"), f"its port must be 1..65535, not {url!r}")
    ca = _optional_path(r, raw, "ca", path, base_dir)
    below = r.number_in(raw.get("belowCents"), _join(path, "belowCents"), -1e4, 1e4, 0.0)
    export_w = r.number_in(raw.get("exportW"), _join(path, "exportW"), 0.0, 1e7, 0.0)
    poll = r.number_in(raw.get("pollS"), _join(path, "pollS"), 60.0, 3600.0, 300.0)
    expiry = r.number_in(raw.get("expiryS"), _join(path, "expiryS"), 120.0, 86400.0, 900.0)
    if poll is not None and expiry is not None and expiry < poll:
        r.fail(_join(path, "expiryS"), "must be at least pollS (else every poll lapses)")
    if len(r.problems) > before or site_id is None or token is None or url is None:
        return None
    return PriceConfig(
        site_id=site_id,
        token=token,
        url=url.rstrip("/"),
        ca=ca,
        below_cents=0.0 if below is None else below,
        export_w=0.0 if export_w is None else export_w,
        poll_s=300.0 if poll is None else poll,
        expiry_s=900.0 if expiry is None else expiry,
    )


def _ip_address(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _bad_port(url: str) -> bool:
    """The URL names a port outside 1..65535 (its client could never be built: the poller
    restarted for good)."""
    from urllib.parse import urlsplit

    try:
        port = urlsplit(url).port
    except ValueError:
        return True
    return port == 0


def _metrics(r: _Reader, value: object, path: str) -> MetricsConfig | None:
    raw = r.obj(value, path, {"token"})
    if raw is None:
        return None
    token = r.string(raw.get("token"), _join(path, "token"))
    if token is not None and len(token) < 16:
        r.fail(_join(path, "token"), "must be at least 16 characters (it guards the metrics)")
        return None
    return None if token is None else MetricsConfig(token=token)


def _update(r: _Reader, value: object, path: str, base_dir: Path) -> UpdateConfig | None:
    raw = r.obj(value, path, {"url", "ca", "checkHours", "install"})
    if raw is None:
        return None
    before = len(r.problems)
    url = r.string(raw.get("url"), _join(path, "url"))
    if url is not None:
        from dynexport.update.check import https_url

        try:
            url = https_url(url)
        except ValueError as exc:
            r.fail(_join(path, "url"), str(exc))
    ca = _optional_path(r, raw, "ca", path, base_dir)
    hours = r.number_in(raw.get("checkHours"), _join(path, "checkHours"), 1.0, 720.0, 24.0)
    modes: tuple[Literal["notify", "auto"], ...] = ("notify", "auto")
    install = r.choice(raw.get("install"), _join(path, "install"), modes, "notify")
    if len(r.problems) > before or url is None or hours is None or install is None:
        return None
    return UpdateConfig(url=url, ca=ca, check_hours=hours, install=install)


def valid_time_zone(name: str) -> bool:
    """True when ``name`` is a time zone the system's zone database knows."""
    import zoneinfo

    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def parse_config(data: object, base_dir: Path | None = None, source: str | None = None) -> Config:
    """Validates decoded JSON and returns a Config, or raises ConfigError listing every problem."""
    base = base_dir if base_dir is not None else Path.cwd()
    try:  # older schema versions are migrated, newer ones refused (system/migrate.py)
        data = migrate(data)
    except MigrationError as exc:
        raise ConfigError([str(exc)], source) from exc
    r = _Reader()
    raw = r.obj(data, "", TOP_LEVEL_KEYS)
    if raw is None:
        raise ConfigError(r.problems, source)
    inverters = r.items(raw.get("inverters"), "inverters", _inverter(r, base))
    meter = _meter(r, raw["meter"], "meter", base) if raw.get("meter") is not None else None
    control = _control(r, raw.get("control"), "control")
    utility = (
        _utility(r, raw["utility"], "utility", base) if raw.get("utility") is not None else None
    )
    limits = _limits(r, raw.get("limits"))
    web = _web(r, raw.get("web"), "web")
    site = _site(r, raw.get("site"), "site")
    mqtt = _mqtt(r, raw["mqtt"], "mqtt", base) if raw.get("mqtt") is not None else None
    price = _price(r, raw["price"], "price", base) if raw.get("price") is not None else None
    metrics = _metrics(r, raw["metrics"], "metrics") if raw.get("metrics") is not None else None
    batteries = r.items(raw.get("batteries"), "batteries", _battery(r, base))
    update = _update(r, raw["update"], "update", base) if raw.get("update") is not None else None
    _check_unique_devices(r, inverters, meter, batteries)
    if r.problems or control is None or web is None:
        raise ConfigError(r.problems, source)
    return Config(
        inverters=inverters,
        meter=meter,
        control=control,
        utility=utility,
        limits=limits,
        web=web,
        site=site,
        base_dir=base,
        mqtt=mqtt,
        price=price,
        metrics=metrics,
        batteries=batteries,
        update=update,
        cautions=tuple(r.cautions),
    )


def _check_unique_devices(
    r: _Reader,
    inverters: tuple[InverterConfig, ...],
    meter: MeterConfig | None,
    batteries: tuple[BatteryConfig, ...] = (),
) -> None:
    seen: dict[tuple[Endpoint, int], str] = {}
    named: list[tuple[str, DeviceConfig]] = [
        (f"inverters[{i}]", d) for i, d in enumerate(inverters)
    ]
    if meter is not None:
        named.append(("meter", meter))
    named.extend((f"batteries[{i}]", d) for i, d in enumerate(batteries))
    serial_settings: dict[str, SerialEndpoint] = {}
    battery_keys: set[tuple[Endpoint, int]] = set()
    for path, dev in named:
        key = (dev.endpoint, dev.unit)
        hybrid = path.startswith("batteries") and seen.get(key, "").startswith("inverters")
        if hybrid and key in battery_keys:
            r.fail(path, f"is the same battery ({dev.endpoint} unit {dev.unit}) as another")
        elif hybrid:
            pass  # a hybrid inverter's storage models: the same device on purpose
        elif key in seen:
            r.fail(path, f"is the same device ({dev.endpoint} unit {dev.unit}) as {seen[key]}")
        seen.setdefault(key, path)
        if path.startswith("batteries"):
            battery_keys.add(key)
        ep = dev.endpoint
        if isinstance(ep, SerialEndpoint):
            other = serial_settings.setdefault(ep.device, ep)
            if other != ep:
                r.fail(
                    path,
                    f"uses {ep.device} with {ep}, but another device on that bus uses {other}; "
                    "all devices on one RS485 bus share its settings",
                )


def load_config(path: str | Path) -> Config:
    """Reads and validates a configuration file; relative paths in it resolve against its folder."""
    return load_config_bytes(path)[0]


def load_config_bytes(path: str | Path) -> tuple[Config, bytes]:
    """`load_config`, and the bytes it validated (to copy exactly what was checked)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"], str(p)) from exc
    doc, twice = decode_json_noting_twice(raw, str(p))
    config = parse_config(doc, base_dir=p.resolve().parent, source=str(p))
    if twice:  # a caution (Config.cautions): the file runs with the last copy
        given = tuple(f"{path}: {GIVEN_TWICE}; running with its last value" for path in twice)
        config = replace(config, cautions=(*given, *config.cautions))
    return config, raw


MAX_CONFIG_BYTES = 1 << 20
"""A configuration is a few kilobytes; a larger file is a mistake, not a site."""
MAX_JSON_DEPTH = 32
"""The schema nests four levels deep; anything far deeper is refused before it is parsed."""


def decode_json(raw: bytes | str, source: str | None = None) -> object:
    """Decodes configuration JSON, turning every way it can be unreadable into a ConfigError."""
    return decode_json_noting_twice(raw, source)[0]


def decode_json_noting_twice(
    raw: bytes | str, source: str | None = None
) -> tuple[object, list[str]]:
    """``decode_json``, and the path of each key given twice in one object (the decoder keeps
    the last copy), in one parse.

    Each of these once escaped as a different exception and stopped ``dynexport run`` instead
    of leaving it waiting in setup mode: bytes that are not UTF-8, nesting deep enough to
    exhaust the parser's recursion, and integers longer than Python converts (4300 digits).
    """
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"the file is {len(raw)} bytes; at most {MAX_CONFIG_BYTES}"], source)
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                [f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}"], source
            ) from exc
    else:
        text = raw
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise ConfigError([f"nested {depth} levels deep; at most {MAX_JSON_DEPTH}"], source)
    try:
        return _loads_noting_twice(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"], source
        ) from exc
    except (ValueError, RecursionError) as exc:
        # int() refusing a number of thousands of digits, and anything like it
        raise ConfigError([f"not usable JSON: {exc}"], source) from exc


class KeyGivenTwice(ValueError):
    """A JSON object with a key given twice: the decoder would keep the last silently."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def loads_each_key_once(text: str) -> object:
    """``json.loads``, refusing an object that gives a key twice (KeyGivenTwice naming the
    keys' paths). The decoder keeps only the last copy: a hand-edited file with ``"limits"``
    twice lost the first one's ``"exportW": 0``, and the site ran without that limit."""
    doc, twice = _loads_noting_twice(text)
    if twice:
        raise KeyGivenTwice([f"{path}: {GIVEN_TWICE}" for path in twice])
    return doc


GIVEN_TWICE = "given twice (only the last would count)"


def _loads_noting_twice(text: str) -> tuple[object, list[str]]:
    """``json.loads``, and the sorted paths of the keys given twice in one object."""
    twice: dict[int, list[str]] = {}

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in items:
            if key in obj:
                twice.setdefault(id(obj), []).append(key)
            obj[key] = value
        return obj

    doc = json.loads(text, object_pairs_hook=pairs)
    found: list[str] = []
    if twice:
        stack: list[tuple[object, str]] = [(doc, "")]
        while stack:  # a walk, not recursion: the depth was bounded, the width is not
            node, path = stack.pop()
            if isinstance(node, dict):
                found += [_join(path, key) for key in twice.get(id(node), [])]
                stack += [(value, _join(path, key)) for key, value in node.items()]
            elif isinstance(node, list):
                stack += [(value, f"{path}[{i}]") for i, value in enumerate(node)]
    return doc, sorted(found)


def _json_depth(text: str) -> int:
    """The deepest nesting of brackets outside strings (a linear scan, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest
