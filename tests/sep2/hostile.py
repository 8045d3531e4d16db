"""Hostile bodies and the client set-up for `test_hostile_server.py` (the client set-up is also
used by `test_client_registration.py` and `test_client_urls.py`).

Every body is meant to be served in place of a DERControlList (``/derp/1/derc``).
"""

from __future__ import annotations

from pathlib import Path

from dynexport.sep2.client import ClientOptions, Sep2Client
from dynexport.sep2.controls import ControlBase, ControlType, EventStatus
from dynexport.sep2.flow import DerInfo
from dynexport.sep2.resources import (
    DateTimeInterval,
    DERControl,
    DERControlList,
    DERProgramList,
    EventStatusInfo,
    to_xml,
)
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import T0, FakeClock, utility_config

DERC = "/derp/1/derc"
"""The default program's DERControlList: where the hostile bodies are served."""
MiB = 1 << 20


def make_client(
    srv: UtilityServer,
    clock: FakeClock,
    data_dir: Path,
    *,
    timeout: float = 5.0,
    **config: object,
) -> Sep2Client:
    """A client with no HTTP retries, so each hostile answer surfaces at once."""
    return Sep2Client(
        utility_config(srv, **config),
        data_dir,
        der=DerInfo(rated_w=5000),
        clock=clock,
        options=ClientOptions(http_timeout=timeout, http_retries=0),
    )


def export_limit(client: Sep2Client) -> float | bool | None:
    active = client.active_controls()
    return None if active is None else active.value(ControlType.EXPORT_LIMIT_W)


# --- bodies ----------------------------------------------------------------------------------


def control_list(n: int = 1, *, export_limit_w: float = 800.0, start: int = int(T0)) -> bytes:
    """A valid DERControlList of ``n`` export-limit events (built with the resource models)."""
    controls = tuple(
        DERControl(
            mrid=f"EE{i + 1:030X}",
            creation_time=start - 100,
            event_status=EventStatusInfo(EventStatus.ACTIVE, start),
            interval=DateTimeInterval(start=start - 10, duration=3600),
            base=ControlBase(export_limit_w=export_limit_w),
            description=f"hostile {i}",
            href=f"{DERC}/EE{i + 1:030X}",
            reply_to="/rsp",
            response_required=0,
        )
        for i in range(n)
    )
    return to_xml(DERControlList.of(controls, href=DERC, subscribable=0))


def malformed() -> bytes:
    """A valid list cut short: the closing tags are missing."""
    body = control_list()
    return body[: len(body) * 2 // 3]


def huge(size: int = 5 * MiB) -> bytes:
    """A well-formed DERControlList padded with whitespace to ``size`` bytes."""
    body = control_list()
    end = b"</DERControlList>"
    assert body.endswith(end)
    return body[: -len(end)] + b" " * (size - len(body)) + end


def billion_laughs(encoding: str = "utf-8") -> bytes:
    """Ten levels of ten-fold entity expansion (10^10 "lol"s) in a DERControlList."""
    entities = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 11)
    )
    body = control_list().decode().replace("hostile 0", "&lol10;")
    return _with_doctype(body, f"<!DOCTYPE DERControlList [{entities}]>", encoding)


def external_entity(secret: Path, encoding: str = "utf-8") -> bytes:
    """An external entity that would read ``secret`` into the event description."""
    doctype = f'<!DOCTYPE DERControlList [<!ENTITY xxe SYSTEM "file://{secret}">]>'
    body = control_list().decode().replace("hostile 0", "&xxe;")
    return _with_doctype(body, doctype, encoding)


def _with_doctype(body: str, doctype: str, encoding: str) -> bytes:
    """UTF-16 hides the ``<!DOCTYPE`` bytes from a byte-level check; the parser must still refuse
    it."""
    declaration = f'<?xml version="1.0" encoding="{encoding.upper()}"?>'
    return (declaration + doctype + body).encode(encoding)


def wrong_namespace() -> bytes:
    """The right root element in another namespace."""
    return control_list().replace(b"urn:ieee:std:2030.5:ns", b"urn:wrong", 1)


def foreign_namespace_controls() -> bytes:
    """The list in the IEEE namespace, its one DERControl (``results="1"``) in another."""
    return control_list().replace(b"<DERControl ", b'<DERControl xmlns="urn:wrong" ')


def wrong_root() -> bytes:
    """A DERProgramList where a DERControlList belongs."""
    return to_xml(DERProgramList.of((), href=DERC, subscribable=0))


def deeply_nested(depth: int = 30_000) -> bytes:
    """Well-formed but nested far deeper than any IEEE 2030.5 body (well under the size cap)."""
    inner = "<description>" * depth + "</description>" * depth
    return control_list().replace(b"<description>hostile 0</description>", inner.encode())
