"""Runs every benchmark script in this folder and prints their figures (nothing is asserted).

web_attack.py: the web UI under connection exhaustion and parallel logins (control cycle, RSS).
control_property.py: the control law's safety rules over thousands of random closed-loop scenarios.
mqtt_rss.py: what MQTT publishing at 1 s adds in RSS and CPU (Mosquitto on 127.0.0.1).
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).resolve().parent
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, python {platform.python_version()}")
    failed = 0
    for script in sorted(here.glob("*.py")):
        if script.name == "run_all.py" or script.name.startswith("_"):
            continue
        print(f"\n== {script.name}", flush=True)
        result = subprocess.run([sys.executable, str(script)], check=False)
        if result.returncode:
            failed += 1
            print(f"{script.name} exited with {result.returncode}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
