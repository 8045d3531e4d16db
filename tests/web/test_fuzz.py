"""Bounded fuzzing of the web boundary: malformed certificates and arbitrary requests are always
answered with a 4xx naming the problem, never a 500. Also the SERCA checks and the login
limiter's safety rules as properties."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.httpio import Request, ServerResponse
from dynexport.sep2 import certs
from dynexport.web.api import WebApi
from dynexport.web.auth import LoginLimiter
from dynexport.web.history import History
from tests.web.conftest import setup_app


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.TestPki:
    return certs.make_test_pki(tmp_path_factory.mktemp("pki"), now=datetime.now(UTC))


def pem(*ders: bytes) -> bytes:
    out = b""
    for der in ders:
        body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
        out += f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode()
    return out


def der_of(path: Path) -> list[bytes]:
    return [c.public_bytes(Encoding.DER) for c in certs.load_certificates(path.read_bytes())]


class Api:
    """A WebApi on a data folder holding the PKI's device key and SERCA, with an admin session."""

    def __init__(self, folder: Path, pki: certs.TestPki) -> None:
        app = setup_app(folder)
        app.options.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(pki.files["device_key"], app.options.data_dir / "device-key.pem")
        shutil.copy(pki.files["serca"], app.options.data_dir / "serca.pem")
        self.api = WebApi(app)
        self.session = self.api.sessions.create()

    async def __call__(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        logged_in: bool = True,
    ) -> ServerResponse:
        path, _, query = target.partition("?")
        h = {"host": "127.0.0.1", **{k.lower(): v for k, v in (headers or {}).items()}}
        if logged_in:
            h.setdefault("cookie", f"dynexport_session={self.session.token}")
            h.setdefault("x-csrf-token", self.session.csrf)
        request = Request(
            method=method,
            target=target,
            path=path,
            query=dict(p.partition("=")[::2] for p in query.split("&") if p),
            headers=tuple(h.items()),
            body=body,
            client_cert=None,
            peer=("127.0.0.1", 50000),
            local=("127.0.0.1", 80),
        )
        return await self.api.handle(request)


@pytest.fixture
def api(pki: certs.TestPki) -> Iterator[Api]:
    with tempfile.TemporaryDirectory() as folder:
        yield Api(Path(folder), pki)


def document(response: ServerResponse) -> Any:
    assert isinstance(response.body, bytes)
    return json.loads(response.body)


# -- 9. the SERCA upload -----------------------------------------------------------------------


async def test_the_serca_upload_shows_its_subject_and_sha256_fingerprint(
    api: Api, pki: certs.TestPki
) -> None:
    response = await api("PUT", "/api/cert/serca", pki.files["serca"].read_bytes())
    assert response.status == 200
    (root,) = document(response)["certificates"]
    der = der_of(pki.files["serca"])[0]
    expected = hashlib.sha256(der).hexdigest().upper()
    assert root["sha256"].replace(":", "") == expected
    assert (
        root["subject"]
        == certs.load_certificates(pki.files["serca"].read_bytes())[0].subject.rfc4514_string()
    )
    got = document(await api("GET", "/api/cert"))
    assert got["sercaCertificates"] == [{"subject": root["subject"], "sha256": root["sha256"]}]


@pytest.mark.parametrize(
    ("file", "index", "reason"),
    [
        ("mica_cert", 0, "not an intermediate such as a MICA"),  # the device's own MICA
        ("device_chain", 0, "is not a CA certificate"),
        ("server_chain", 1, "not an intermediate such as a MICA"),
    ],
)
async def test_only_a_self_signed_root_ca_is_accepted_as_the_serca(
    api: Api, pki: certs.TestPki, file: str, index: int, reason: str
) -> None:
    before = (api.api.data_dir / "serca.pem").read_bytes()
    uploaded = pem(der_of(pki.files[file])[index])
    response = await api("PUT", "/api/cert/serca", uploaded)
    assert response.status == 422
    assert reason in document(response)["error"]
    assert (api.api.data_dir / "serca.pem").read_bytes() == before


async def test_a_root_without_keycertsign_is_refused_as_the_serca(api: Api) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a signing root")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now.replace(year=now.year + 5))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, True, False, False), True
        )
        .sign(key, hashes.SHA256())
    )
    response = await api("PUT", "/api/cert/serca", cert.public_bytes(Encoding.PEM))
    assert response.status == 422 and "keyCertSign" in document(response)["error"]


# -- 7. certificate fuzzing ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    which=st.sampled_from(["serca", "mica", "device"]),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=3),
    route=st.sampled_from(["serca", "chain", "stored-serca", "stored-chain"]),
)
async def test_malformed_certificates_are_a_4xx_naming_the_problem(
    pki: certs.TestPki, which: str, flips: list[tuple[int, int]], route: str
) -> None:
    device, mica = der_of(pki.files["device_chain"])
    serca = der_of(pki.files["serca"])[0]
    original = {"serca": serca, "mica": mica, "device": device}[which]
    der = bytearray(original)
    for where, value in flips:
        der[where % len(der)] = value
    bad = bytes(der)
    chain = {"serca": pem(device, mica), "mica": pem(device, bad), "device": pem(bad, mica)}[which]
    with tempfile.TemporaryDirectory() as folder:
        api = Api(Path(folder), pki)
        data = api.api.data_dir
        if route == "serca":
            response = await api("PUT", "/api/cert/serca", pem(bad))
        elif route == "chain":
            if which == "serca":
                (data / "serca.pem").write_bytes(pem(bad))
            response = await api("PUT", "/api/cert/chain", chain)
        else:  # a damaged file on the card is reported, not a crash
            (data / ("serca.pem" if route == "stored-serca" else "device-chain.pem")).write_bytes(
                pem(bad) if route == "stored-serca" else chain
            )
            response = await api("GET", "/api/cert")
    assert response.status < 500
    if response.status >= 400:
        assert document(response)["error"]


# -- 7. the API dispatcher --------------------------------------------------------------------

ROUTES = [
    "/api/status",
    "/api/session",
    "/api/setup/password",
    "/api/login",
    "/api/logout",
    "/api/password",
    "/api/config",
    "/api/limits",
    "/api/history",
    "/api/history.csv",
    "/api/wifi",
    "/api/cert",
    "/api/cert/serca",
    "/api/cert/request",
    "/api/cert/csr",
    "/api/cert/chain",
    "/",
    "/static/app.js",
    "/generate_204",
    "/api/nothing",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from(
    ["password", "current", "limits", "exportW", "inverters", "utility", "meter", "ssid", "psk",
     "replace", "tcp", "rtu", "units", "web", "control"]
)  # fmt: skip
bodies = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(keys, json_values, max_size=4).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.sampled_from(ROUTES),
    query=st.sampled_from(
        [
            "",
            "?from=inf",
            "?from=1e400&to=nan",
            "?step=0",
            "?from=2026-13-45",
            "?to=-1e300",
            "?from=1e30&to=1.000001e30&step=10000000000000000000000000",
            "?step=10000000000000000000000",
            "?from=9999-12-31T23:59:59&to=0",
        ]
    ),
    body=bodies | st.just(b"[" * 100_000 + b"]" * 100_000),
    origin=st.sampled_from([None, "http://[::1", "null", "http://127.0.0.1", "http://x", "["]),
    headers=st.dictionaries(
        st.sampled_from(["Host", "Content-Type", "Sec-Fetch-Site", "Cookie"]),
        st.sampled_from(
            [
                "application/json",
                "text/plain",
                "[",
                "same-origin",
                "cross-site",
                "dynexport_session=x",
                "",
                "a:b:c",
                "127.0.0.1",
                "evil.example",
            ]
        ),
        max_size=3,
    ),
    logged_in=st.booleans(),
    setup_mode=st.booleans(),
)
async def test_no_request_ends_in_a_500(
    pki: certs.TestPki,
    method: str,
    path: str,
    query: str,
    body: bytes,
    origin: str | None,
    headers: dict[str, str],
    logged_in: bool,
    setup_mode: bool,
) -> None:
    if origin is not None:
        headers = {**headers, "Origin": origin}
    with tempfile.TemporaryDirectory() as folder:
        api = Api(Path(folder), pki)
        api.api.app.setup_mode = setup_mode  # type: ignore[misc]
        api.api.history = History(Path(folder) / "history.sqlite")
        await api.api.history.open()
        try:
            response = await api(method, path + query, body, headers, logged_in=logged_in)
        finally:
            await api.api.history.close()
    assert response.status < 500, (response.status, response.body)


# -- 2. the limiter's rules, in every state ----------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d", "e", "f", "owner"]),
            st.floats(min_value=0, max_value=20),
            st.booleans(),
        ),
        max_size=80,
    )
)
def test_the_limiter_bounds_each_address_slows_everyone_and_never_locks_the_owner_out(
    steps: list[tuple[str, float, bool]],
) -> None:
    now = [0.0]
    limiter = LoginLimiter(lambda: now[0], per_client=5, total=20, window_s=300, slow_s=3)
    checks: dict[str, list[float]] = {}
    over_total: list[float] = []
    everyone: list[float] = []
    for client, advance, success in steps:
        now[0] += advance
        wait = limiter.retry_after(client)
        recent = [t for t in checks.get(client, []) if now[0] - t < 300]
        if client == "owner" and not recent:
            # an address with no failures of its own waits at most the slow interval
            assert wait is None or wait <= 3
        if wait is not None:
            assert wait > 0
            continue
        assert len(recent) < 5  # never a sixth check within the window
        if len([t for t in everyone if now[0] - t < 300]) >= 20:
            assert not over_total or now[0] - over_total[-1] >= 3  # the slow lane's pace
            over_total.append(now[0])
        limiter.attempt(client)
        everyone.append(now[0])
        checks.setdefault(client, []).append(now[0])
        if success:
            limiter.succeeded(client)
            checks[client] = []
