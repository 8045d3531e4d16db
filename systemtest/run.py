#!/usr/bin/env python3
"""The system test (make system-test): boot the Debian test image in qemu and check the design.

Usage: python systemtest/run.py IMAGE_DIR [--work DIR] [--cuts N]

IMAGE_DIR is what systemtest/build-image.sh printed (disk.img, vmlinuz, initrd.img, cmdline.txt).
The host simulators (Modbus site, CSIP-AUS utility) run with this Python, which must have dynexport
installed (make venv). The VM gets user-mode networking with no route out (restrict=on): its web
server is forwarded from 127.0.0.1 on the host, and the simulators are reached by guestfwd. Each
check prints its measured figure; the exit status is non-zero if any check failed. qemu and the
simulators are stopped in every case.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

MODBUS_GUEST = "10.0.2.100"
UTILITY_GUEST = "10.0.2.101"
CONFIG = "/data/dynexport/config.json"
RESULTS: list[tuple[str, bool, str]] = []


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def check(name: str, ok: bool, figure: str) -> bool:
    RESULTS.append((name, ok, figure))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {figure}", flush=True)
    return ok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Failure(Exception):
    pass


# -- the VM ---------------------------------------------------------------------------------------


class Vm:
    """One qemu process at a time on one disk; start() again after kill() is a power cycle."""

    def __init__(self, image: Path, disk: Path, work: Path, web_port: int, fwd: dict[str, int]):
        self.image, self.disk, self.work = image, disk, work
        self.web_port, self.fwd = web_port, fwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.agent: socket.socket | None = None
        self.buf = b""
        self.seq = 0
        self.events: list[tuple[float, str]] = []
        self.started = 0.0
        self.boots = 0

    # qemu
    def start(self) -> None:
        assert self.proc is None
        self.boots += 1
        cmdline = (self.image / "cmdline.txt").read_text().strip()
        agent_sock, qmp_sock = self.work / "agent.sock", self.work / "qmp.sock"
        for s in (agent_sock, qmp_sock):
            s.unlink(missing_ok=True)
        # cmd: a new socat per guest connection (a tcp: target is one connection for qemu's
        # whole life, so reconnects, e.g. TLS to the utility, would go nowhere).
        guestfwd = ",".join(
            f"guestfwd=tcp:{addr}-cmd:socat - TCP:127.0.0.1:{port}"
            for addr, port in self.fwd.items()
        )
        cmd = [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-smp", "2",
            "-display", "none", "-no-user-config", "-nodefaults",
            "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
            "-append", cmdline,
            "-drive", f"file={self.disk},format=raw,if=virtio,cache=unsafe",
            "-device", "i6300esb", "-action", "watchdog=reset",
            "-serial", f"file:{self.work / f'console-{self.boots}.log'}",
            "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.web_port}-:80,{guestfwd}",
            "-device", "virtio-net-pci,netdev=n0",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=agent,path={agent_sock},server=on,wait=off",
            "-device", "virtserialport,chardev=agent,name=systemtest",
            "-qmp", f"unix:{qmp_sock},server=on,wait=off",
        ]  # fmt: skip
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.work / "qemu.stderr", "ab"),  # noqa: SIM115 (lives as long as qemu)
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not (agent_sock.exists() and qmp_sock.exists()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise Failure("qemu did not start (see qemu.stderr)")
            time.sleep(0.05)
        self.agent = socket.socket(socket.AF_UNIX)
        self.agent.connect(str(agent_sock))
        self.buf = b""
        threading.Thread(target=self._qmp, args=(qmp_sock,), daemon=True).start()

    def _qmp(self, path: Path) -> None:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
                s.sendall(b'{"execute": "qmp_capabilities"}\n')
                for line in s.makefile("rb"):
                    msg = json.loads(line)
                    if "event" in msg:
                        self.events.append((time.monotonic(), msg["event"]))
        except (OSError, ValueError):
            pass

    def kill(self) -> None:
        """Power cut: SIGKILL, the guest gets no chance to flush anything."""
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    # the agent
    def sh(self, cmd: str, timeout: float = 60.0) -> tuple[int, str]:
        assert self.agent is not None
        self.seq += 1
        self.agent.sendall(
            (json.dumps({"id": self.seq, "cmd": cmd, "timeout": timeout}) + "\n").encode()
        )
        deadline = time.monotonic() + timeout + 5
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue
                if reply.get("id") == self.seq:
                    return int(reply["rc"]), str(reply["out"])
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure(f"agent: no answer to {cmd!r}")
            self.agent.settimeout(min(left, 1.0))
            try:
                chunk = self.agent.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise Failure("agent: connection closed")
            self.buf += chunk

    def wait_agent(self, timeout: float = 120.0) -> float:
        """Until the agent answers and /data is mounted; seconds since qemu started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                rc, _ = self.sh("mountpoint -q /data", timeout=3)
                if rc == 0:
                    return time.monotonic() - self.started
            except Failure:
                pass
            time.sleep(0.5)
        raise Failure("the agent did not come up (is the VM booting? see console-*.log)")

    def status(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.web_port}/api/status", timeout=3
            ) as r:
                return dict(json.load(r))
        except (OSError, ValueError):
            return None

    def wait_status(self, pred: Any, timeout: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.status()
            if last is not None and pred(last):
                return last
            time.sleep(0.5)
        raise Failure(f"status never as expected; last: {json.dumps(last)[:300]}")

    def http(self, path: str, host: str) -> tuple[int, str]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.web_port}{path}", headers={"Host": host}
        )

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a: Any, **k: Any) -> None:
                return None

        try:
            with urllib.request.build_opener(NoRedirect).open(req, timeout=5) as r:
                return r.status, r.headers.get("Location", "")
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Location", "")
        except OSError as e:
            return 0, str(e)

    def main_pid(self) -> int:
        _, out = self.sh("systemctl show -p MainPID --value dynexport.service")
        return int(out.strip() or 0)


# -- host simulators ------------------------------------------------------------------------------


class Sims:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []
        self.modbus_port = free_port()
        self.utility_port = free_port()
        self.utility_cfg: dict[str, Any] = {}

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        out = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 (the server's log, kept open)
        p = subprocess.Popen(
            [sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.procs.append(p)
        return p

    def start(self) -> None:
        self._spawn("modbus", ["dynexport.sim.modbus_server", "--profile", "fronius_gateway",
                               "--port", str(self.modbus_port)])  # fmt: skip
        pki = self.work / "pki"
        self._spawn("utility", ["dynexport.sim.utility_server", "--pki", str(pki), "--port",
                                str(self.utility_port), "--step", "5000,1500,0", "--every", "120"])  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = (self.work / "utility.log").read_text(errors="replace")
            for line in text.splitlines():
                if "utility config: " in line:
                    self.utility_cfg = json.loads(line.split("utility config: ", 1)[1])
            if self.utility_cfg and "serving" in (self.work / "modbus.log").read_text():
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.2)
        raise Failure("the simulators did not start (see modbus.log, utility.log)")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def site_config(self, variant: int = 0) -> dict[str, Any]:
        ep = f"{MODBUS_GUEST}:502"
        u = self.utility_cfg
        return {
            "inverters": [
                {"type": "sunspec", "tcp": ep, "unit": 1},
                {"type": "sunspec", "tcp": ep, "unit": 2},
            ],
            "meter": {"type": "sunspec", "tcp": ep, "unit": 240, "location": "feedin"},
            "utility": {
                "type": "csip-aus",
                "server": f"https://{UTILITY_GUEST}:443",
                "dcap": "/dcap",
                "ca": "/data/dynexport/pki/serca.pem",
                "cert": "/data/dynexport/pki/device-chain.pem",
                "key": "/data/dynexport/pki/device-key.pem",
                "nmi": "4312345678",
                "pin": u.get("pin", 111115),
                "checkHostname": False,
            },
            "control": {"intervalS": 1, "revertS": 60 + variant},
        }

    def pki_files(self) -> dict[str, bytes]:
        u = self.utility_cfg
        return {
            "serca.pem": Path(u["ca"]).read_bytes(),
            "device-chain.pem": Path(u["cert"]).read_bytes(),
            "device-key.pem": Path(u["key"]).read_bytes(),
        }


# -- writing into the VM --------------------------------------------------------------------------

WRITE_PY = """
import base64, json, sys
from dynexport.system.storage import atomic_write
for path, data, mode in json.loads(base64.b64decode(sys.argv[1])):
    atomic_write(path, base64.b64decode(data), mode=int(mode))
"""

WRITER_LOOP_PY = """
import base64, json, sys
from dynexport.system.storage import atomic_write
docs = [base64.b64decode(d) for d in json.loads(base64.b64decode(sys.argv[1]))]
i = 0
while True:
    atomic_write("/data/dynexport/config.json", docs[i % 2], mode=0o600)
    i += 1
"""


def b64(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def write_files(vm: Vm, files: list[tuple[str, bytes, int]]) -> None:
    """Written as the service user, with the appliance's own atomic write (dynexport.system.storage)."""
    arg = b64([(p, base64.b64encode(d).decode(), m) for p, d, m in files])
    rc, out = vm.sh(
        "mkdir -p /data/dynexport/pki && chown dynexport: /data/dynexport/pki && chmod 700 "
        f"/data/dynexport/pki && runuser -u dynexport -- python3 -c '{WRITE_PY}' {arg}"
    )
    if rc != 0:
        raise Failure(f"writing files in the VM failed: {out}")


def read_config(vm: Vm) -> tuple[bytes | None, str]:
    rc, out = vm.sh(f"test -e {CONFIG} && base64 -w0 {CONFIG}; ls -a /data/dynexport")
    if rc != 0:
        return None, out
    first, _, rest = out.partition("\n")
    return base64.b64decode(first), rest


def put_config_via_web_api(vm: Vm, doc: dict[str, Any]) -> dict[str, Any]:
    """What the setup page does: set the admin password (first boot), then PUT /api/config with
    the session cookie and CSRF token. Returns the configuration the service says it applied."""
    base = f"http://127.0.0.1:{vm.web_port}"
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def call(method: str, path: str, body: Any, csrf: str | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if csrf:
            headers["X-CSRF-Token"] = csrf
        req = urllib.request.Request(
            base + path, data=json.dumps(body).encode(), method=method, headers=headers
        )
        try:
            with opener.open(req, timeout=20) as r:
                return dict(json.load(r))
        except urllib.error.HTTPError as e:
            raise Failure(f"{method} {path} -> {e.code}: {e.read()[:300]!r}") from None

    session = call("POST", "/api/setup/password", {"password": "system-test-password"})
    answer = call("PUT", "/api/config", doc, csrf=session["csrf"])
    if not answer.get("applied"):
        raise Failure(f"PUT /api/config did not apply: {answer}")
    return dict(answer["config"])


def doc_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


# -- the checks -----------------------------------------------------------------------------------


def run(image: Path, work: Path, cuts: int) -> None:
    disk = work / "disk.img"
    shutil.copyfile(image / "disk.img", disk)  # sparse enough; a fresh card every run
    with open(disk, "r+b") as f:  # a bigger card than the image: the data partition must grow
        f.truncate(os.path.getsize(image / "disk.img") + 256 * 1024 * 1024)
    sims = Sims(work)
    vm = Vm(image, disk, work, free_port(), {})
    try:
        sims.start()
        vm.fwd = {
            f"{MODBUS_GUEST}:502": sims.modbus_port,
            f"{UTILITY_GUEST}:443": sims.utility_port,
        }
        _checks(vm, sims, cuts)
    finally:
        vm.kill()
        sims.stop()


def _checks(vm: Vm, sims: Sims, cuts: int) -> None:
    # 1. First boot, empty data partition: setup mode, captive probes, read-only root, grown data.
    log("boot 1: new card, empty data partition")
    vm.start()
    try:
        st = vm.wait_status(lambda s: s.get("ready"), timeout=120)
        t = time.monotonic() - vm.started
        check("first boot: setup mode", st.get("setupMode") is True,
              f"ready {t:.1f} s after power-on, setupMode={st.get('setupMode')}")  # fmt: skip
    except Failure as exc:
        try:
            _, why = vm.sh("systemctl --failed --no-legend --plain | cut -d' ' -f1 | tr '\\n' ' '")
        except Failure as err:
            why = str(err)
        check("first boot: setup mode", False, f"{exc}; failed units: {why.strip()}")
        log("power-cycling to go on with the other checks")
        vm.kill()
        vm.start()
        st = vm.wait_status(lambda s: s.get("ready"), timeout=240)
    code, where = vm.http("/generate_204", "connectivitycheck.gstatic.com")
    if code in (404, 405):
        check("captive probe", True, f"SKIPPED: /generate_204 -> {code} (web UI without probes)")
    else:
        check("captive probe", code == 302, f"/generate_204 -> {code} {where}")
    vm.wait_agent()
    _, out = vm.sh("awk '$2==\"/\"{print $3, $4}' /proc/mounts; touch /probe 2>&1; echo touch=$?;"
                    " awk '$2==\"/data\"{print $1, $3, $4}' /proc/mounts")  # fmt: skip
    ro = "squashfs ro" in out and "Read-only file system" in out and "touch=1" in out
    check("root read-only", ro, " | ".join(out.split("\n")[:3]))
    _, out = vm.sh("df -B1M --output=size /data | tail -1; cat /sys/class/block/vda4/size;"
                    " systemctl is-failed dynexport-grow-data.service")  # fmt: skip
    parts = out.split()
    fs_mb, part_mb = int(parts[0]), int(parts[1]) // 2048
    check("data partition grown to the card", fs_mb >= 300 and part_mb >= 300,
          f"partition {part_mb} MiB, file system {fs_mb} MiB, grow-data {parts[2]}")  # fmt: skip

    # 2. Configuration written, then a clean reboot: it survives and the controller runs with it.
    files = [(f"/data/dynexport/pki/{n}", d, 0o600) for n, d in sims.pki_files().items()]
    write_files(vm, files)  # the certificate files; the configuration goes through the web API
    sent = sims.site_config()
    put_config_via_web_api(vm, sent)
    vm.wait_agent()
    written, _ = read_config(vm)
    cfg = written if written is not None else b""
    log("configuration written through the web API (PUT /api/config); rebooting")
    vm.sh("systemctl --no-block reboot")
    t0 = time.monotonic()
    time.sleep(3)
    st = vm.wait_status(
        lambda s: s.get("ready") and not s.get("setupMode") and s["site"].get("powerW") is not None,
        timeout=240,
    )
    t = time.monotonic() - t0
    vm.wait_agent()
    got, _ = read_config(vm)
    if got is None or json.loads(got) != sent:
        cfg = b"<the file does not hold what was PUT through the API>"
    check("configuration survives a reboot", got == cfg,
          f"ready with the site {t:.1f} s after 'systemctl reboot', config {'identical' if got == cfg else 'DIFFERENT'}, "
          f"site {st['site']['powerW']} W, {sum(i['online'] for i in st['inverters'])} inverters online")  # fmt: skip

    # 3. Hung service: SIGSTOP the main process; systemd's WatchdogSec kills and restarts it.
    pid = vm.main_pid()
    vm.sh(f"kill -STOP {pid}")
    t0 = time.monotonic()
    new_pid = pid
    while time.monotonic() - t0 < 120 and new_pid in (pid, 0):
        time.sleep(1)
        new_pid = vm.main_pid()
    t_restart = time.monotonic() - t0
    st = vm.wait_status(lambda s: s.get("ready"), timeout=120)
    t_ready = time.monotonic() - t0
    _, out = vm.sh("journalctl -b -u dynexport.service --no-pager | grep -m1 -i 'watchdog timeout'")
    check("hung service restarted", new_pid not in (pid, 0) and "atchdog" in out,
          f"new PID after {t_restart:.1f} s, ready again after {t_ready:.1f} s ({out.strip()[-60:]})")  # fmt: skip

    # 4. Power cuts during configuration writes: the file is always the old or the new one.
    a, b = doc_bytes(sims.site_config(0)), doc_bytes(sims.site_config(1))
    fine = 0
    figures = []
    for i in range(cuts):
        vm.sh(f"systemd-run --unit=cfgwriter-{vm.boots} --uid=dynexport"
              f" python3 -c '{WRITER_LOOP_PY}' {b64([base64.b64encode(a).decode(), base64.b64encode(b).decode()])}")  # fmt: skip
        time.sleep(random.uniform(1.0, 4.0))
        vm.kill()
        log(f"power cut {i + 1}/{cuts} during configuration writes")
        vm.start()
        t = vm.wait_agent()
        got, listing = read_config(vm)
        ok = got in (a, b)
        if got is not None:
            try:
                json.loads(got)
            except ValueError:
                ok = False
        fine += ok
        figures.append(f"{'old/new' if ok else 'CORRUPT'}")
        if not ok:
            log(f"config after cut {i + 1}: {got!r:.200} ; {listing}")
    check("power cuts during configuration writes", fine == cuts,
          f"{fine}/{cuts} cuts left a valid old-or-new config.json ({', '.join(figures)})")  # fmt: skip
    st = vm.wait_status(
        lambda s: s.get("ready") and not s.get("setupMode") and s["site"].get("powerW") is not None,
        timeout=240,
    )
    t = time.monotonic() - vm.started
    try:
        st = vm.wait_status(lambda s: all(i["online"] for i in s["inverters"]), timeout=60)
        online = f"all {len(st['inverters'])} inverters online after {time.monotonic() - vm.started:.1f} s"
    except Failure as exc:
        online = f"inverters NOT all online after 60 s more: {exc}"
    check("boot to a running controller", "NOT" not in online,
          f"power-on to ready (sd_notify READY, site {st['site']['powerW']} W from the simulators) "
          f"in {t:.1f} s; {online}; utility connected={st['utility'].get('connected')}")  # fmt: skip

    # 5. Hung kernel: panic with kernel.panic=0 halts the kernel for good (nothing feeds the
    #    i6300esb any more); only the hardware watchdog can reset the VM.
    vm.events.clear()
    _, panic = vm.sh("echo 0 > /proc/sys/kernel/panic; cat /proc/sys/kernel/panic")
    if panic.strip() != "0":
        raise Failure(f"could not set kernel.panic=0: {panic}")
    t0 = time.monotonic()
    with contextlib.suppress(Failure):  # the shell never answers: the kernel is gone
        vm.sh("echo c > /proc/sysrq-trigger", timeout=2)
    deadline = t0 + 120
    while time.monotonic() < deadline and not any(e == "WATCHDOG" for _, e in vm.events):
        time.sleep(0.2)
    wd = [t for t, e in vm.events if e == "WATCHDOG"]
    if not wd:
        check("hung kernel reset by the hardware watchdog", False, "no WATCHDOG event in 120 s")
        return
    st = vm.wait_status(lambda s: s.get("ready") and not s.get("setupMode"), timeout=240)
    t_ready = time.monotonic() - t0
    check("hung kernel reset by the hardware watchdog", True,
          f"i6300esb fired {wd[0] - t0:.1f} s after the hang (qemu WATCHDOG event, action reset), "
          f"controller ready again {t_ready:.1f} s after the hang")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("image", type=Path)
    p.add_argument("--work", type=Path, default=Path("build/systemtest/run"))
    p.add_argument("--cuts", type=int, default=3)
    args = p.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    t0 = time.monotonic()
    try:
        run(args.image.resolve(), args.work.resolve(), args.cuts)
    except Failure as exc:
        check("system test", False, str(exc))
    except KeyboardInterrupt:
        check("system test", False, "interrupted")
    failed = [name for name, ok, _ in RESULTS if not ok]
    print(f"\nsystem test: {len(RESULTS) - len(failed)}/{len(RESULTS)} checks passed in "
          f"{time.monotonic() - t0:.0f} s; logs in {args.work}")  # fmt: skip
    for name, ok, figure in RESULTS:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {figure}")
    print(f"system-test: {len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
