"""A real Mosquitto broker for the tests (Debian's ``mosquitto``), on 127.0.0.1 and a free
port, with a generated configuration in a temporary folder; never the system service."""

from __future__ import annotations

import getpass
import glob
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
DYNSEC_ADMIN = ("admin", "admin-password")


def dynsec_plugin() -> str:
    """Mosquitto's dynamic security plugin (Debian's ``mosquitto`` package ships it)."""
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so"))
    found += sorted(glob.glob("/usr/lib/mosquitto_dynamic_security.so"))
    if not found:
        pytest.fail("mosquitto_dynamic_security.so is not installed (Debian's mosquitto)")
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    port: int
    folder: Path
    tls: bool = False
    users: dict[str, str] = field(default_factory=dict)
    ca: Path | None = None
    require_certificate: bool = False
    server_cert: Path | None = None
    server_key: Path | None = None
    log_subscriptions: bool = False
    """Log each SUBSCRIBE received to ``broker.log`` (``subscriptions_logged`` counts them)."""
    dynsec: bool = False
    """Mosquitto's dynamic security plugin: clients and roles made with ``ctrl`` while it
    runs; by default anyone may publish, and subscribe to nothing (an ACL that refuses)."""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.users else 'true'}",
            "persistence false",
            f"user {getpass.getuser()}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if self.log_subscriptions:
            lines.append("log_type debug")
        if self.users:
            pwfile = self.folder / "passwd"
            pwfile.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pwfile), user, password],
                    check=True,
                    capture_output=True,
                )
            lines.append(f"password_file {pwfile}")
        if self.dynsec:
            store = self.folder / "dynsec.json"
            store.unlink(missing_ok=True)
            subprocess.run(
                ["mosquitto_ctrl", "dynsec", "init", str(store), *DYNSEC_ADMIN],
                check=True,
                capture_output=True,
            )
            doc = json.loads(store.read_text())
            doc["defaultACLAccess"]["publishClientSend"] = True
            store.write_text(json.dumps(doc))
            lines += [f"plugin {dynsec_plugin()}", f"plugin_opt_config_file {store}"]
        if self.tls:
            lines += [
                f"cafile {self.ca}",
                f"certfile {self.server_cert}",
                f"keyfile {self.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        conf = self.folder / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> None:
        conf = self.write_config()
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "broker.log", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 20
        while True:  # ready when it accepts connections (bounded wait, not a guessed sleep)
            if self.process.poll() is not None:
                log = (self.folder / "broker.log").read_text(errors="replace")
                raise RuntimeError(f"mosquitto exited: {log[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def subscriptions_logged(self, topic: str) -> int:
        """How many SUBSCRIBEs to ``topic`` the broker received (``log_subscriptions``)."""
        text = (self.folder / "broker.log").read_text(errors="replace")
        return text.count(f"\t{topic} (QoS 1)")

    def ctrl(self, *args: str) -> None:
        """One ``mosquitto_ctrl dynsec`` command to the running broker (blocking)."""
        user, password = DYNSEC_ADMIN
        command = ["mosquitto_ctrl", "-h", "127.0.0.1", "-p", str(self.port)]
        command += ["-u", user, "-P", password, "dynsec", *args]
        done = subprocess.run(command, capture_output=True, timeout=20, text=True)
        if done.returncode != 0 or "rror" in done.stdout:
            raise RuntimeError(f"mosquitto_ctrl {args}: {done.stdout} {done.stderr}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@contextmanager
def running_broker(folder: Path, **options: Any) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed (apt-get install mosquitto; see .ci/run)")
    folder.mkdir(parents=True, exist_ok=True)
    broker = Broker(port=free_port(), folder=folder, **options)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Subscriber:
    """A plain paho client on its own thread (test side only) that records what it receives."""

    def __init__(self, broker: Broker, topic: str = "#", **tls: Any) -> None:
        # imported here: the benchmark measures paho's import as part of MQTT's cost
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: dict[str, bytes] = {}
        self.retained: dict[str, bool] = {}
        """Whether each topic's first delivery came from the broker's retained store. A broker
        marks a message retained only when it is sent on subscribing; the same topic published
        again afterwards arrives unmarked, so only the first delivery says it was retained."""
        self.history: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="")
        if broker.users:
            user, password = next(iter(broker.users.items()))
            self.client.username_pw_set(user, password)
        if broker.tls:
            self.client.tls_set(ca_certs=str(broker.ca), **tls)
        self.client.on_message = self._on_message
        self.topic = topic
        self.broker = broker

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.messages[msg.topic] = bytes(msg.payload)
            self.retained.setdefault(msg.topic, bool(msg.retain))
            self.history.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def start(self) -> None:
        self.client.connect("127.0.0.1", self.broker.port)
        self.client.subscribe(self.topic, qos=1)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def get(self, topic: str) -> bytes | None:
        with self.lock:
            return self.messages.get(topic)

    def topics(self) -> list[str]:
        with self.lock:
            return list(self.messages)

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()
            self.retained.clear()
            self.history.clear()


def publish_once(broker: Broker, topic: str, payload: bytes, *, retain: bool = False) -> None:
    """Publishes one message from a separate client and waits until the broker has it."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="")
    if broker.users:
        user, password = next(iter(broker.users.items()))
        client.username_pw_set(user, password)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
