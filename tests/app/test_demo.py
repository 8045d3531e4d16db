"""The demo (`make run`): the real service against the built-in simulators, all on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from dynexport.app import App
from dynexport.demo import DemoOptions, run_demo
from tests.app.conftest import wait_for


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_demo_runs_the_service_against_the_simulators_and_obeys_the_utility(
    tmp_path: Path,
):
    options = DemoOptions(port=0, data_dir=tmp_path, steps_w=(1500.0,), every_s=600)
    async with trio.open_nursery() as nursery:
        app: App = await nursery.start(run_demo, options)
        assert app.web_port is not None
        await wait_for(lambda: app.status()["utility"]["connected"] is True, within=30)
        await wait_for(lambda: app.status()["limits"]["exportW"] == 1500, within=30)
        # the simulated site exports no more than the utility's limit once settled
        await wait_for(lambda: (app.status()["site"]["powerW"] or -1e9) >= -1500 - 100)
        status, body = await http_get(app.web_port, "/api/status")
        assert status == 200
        doc = json.loads(body)
        assert doc["limits"]["source"]["export_w"].startswith("utility")
        assert [inv["online"] for inv in doc["inverters"]] == [True, True]
        status, _ = await http_get(app.web_port, "/")
        assert status in (200, 302)
        assert (tmp_path / "config.json").exists()
        nursery.cancel_scope.cancel()


def test_make_run_command_serves_until_interrupted_then_exits_cleanly(tmp_path: Path):
    """What `make run` does: `dynexport demo` with no time limit, stopped by Ctrl-C."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynexport", "demo", "--port", str(port), "--data", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        doc = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as r:
                    doc = json.loads(r.read())
                if doc["inverters"] and doc["inverters"][0]["online"]:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert doc is not None and doc["inverters"][0]["online"] is True
        time.sleep(3)  # a few control cycles with nobody asking
        assert proc.poll() is None, "the demo stopped by itself"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    # the banner says what to open, with a generated admin password that works
    first = out.lstrip().splitlines()[0]
    assert first.startswith(f"=== dynexport demo: open http://127.0.0.1:{port}/ in a browser")
    password = first.split("admin password: ", 1)[1].split(")", 1)[0]
    from dynexport.web.auth import PasswordStore

    assert PasswordStore(tmp_path / "state").verify(password)
    assert "try:" in out
    # the simulators' request logs stay at debug level, so the banner stays in view
    assert "dynexport.sim" not in err, err
    assert "left at fail-safe limit" in err
