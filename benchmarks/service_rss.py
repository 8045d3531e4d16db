"""Memory of ``dynexport run`` with two inverters, a meter and the utility link, over time.

Starts the simulated site (Modbus TCP) and the simulated utility (mutual TLS) as their own
processes on 127.0.0.1, writes an installer-style configuration, runs the service for
``--minutes`` (default 10, the figure the goal is set for: at most 45 MB), and prints its
resident set size (VmRSS) and CPU use every ``--every`` seconds, with the two simulators' RSS
beside it (the demo runs them too, so their growth matters).

Every process runs a snapshot of ``src/dynexport`` copied to a scratch folder (so edits made
during a two-hour soak do not change what is measured). The appliance's image ships compiled
bytecode (``compileall`` at build time, read-only root), so the snapshot is compiled first and
run from its ``.pyc`` files, even where ``PYTHONDONTWRITEBYTECODE`` is set, as it is on the build
machine; ``--from-source`` measures without them (every module compiled at every start).

``--json`` adds one summary line for scripts; ``--modules FILE`` writes the modules the service
imported (from ``-X importtime``), so a heavy import that slipped onto the runtime path shows.
``--trace DIR`` finds what grows: the service runs under ``tracemalloc`` and, every
``--trace-every`` seconds, a thread in it writes a snapshot (``snap-N.pickle``) and one JSON line
to ``DIR/counts.jsonl`` (RSS split into anon and file pages, the traced Python heap, pymalloc's
arenas, live blocks, free blocks and empty pools, the resident ``[heap]`` and other anonymous
memory from smaps, glibc's ``mallinfo2`` figures, the full collections so far, live objects by
type); ``--compare DIR`` prints what grew between the first and the last snapshot. With it,
``--trace-gc-every S`` adds a full collection every S seconds and ``--trace-freeze-after S`` a
``gc.freeze()`` once (experiments on the garbage collector's part in the growth). ``--link-events
N`` measures the RSS of the utility link's per-event work alone (its retained events and files)
over N simulated events. ``--import-time RUNS`` times cold imports of the service's modules instead
(median of RUNS fresh interpreters, from bytecode). Tracing costs memory and CPU of its own, so its
RSS is not the figure to quote; ``--trace-frames 0`` keeps the counts without tracemalloc.
``--service-env K=V`` sets a variable for the service alone (``MALLOC_ARENA_MAX=1``: an A/B trial
of an arena setting). ``--optimize N`` runs the service with the environment of its systemd unit
(the ``Environment=`` lines of ``systemd/dynexport.service``, read at each run, so the two stay in
step) at ``PYTHONOPTIMIZE=N``, from bytecode of that level compiled as the image compiles it (the
snapshot, the standard library and site-packages compiled into a private ``PYTHONPYCACHEPREFIX``,
nothing written at run time); A/B it against ``--optimize 0``. Before the service starts, one line
says how many of the modules it imports have no bytecode of its level (each would be compiled at
every start: a ``--service-env PYTHONOPTIMIZE=2`` without ``--optimize`` shows them). To age the
process faster: ``--rate 10`` (utility rates and limit steps) and ``--interval 0.5`` (control
interval). Stops what it started; asserts nothing.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident KiB of ``pid``; ``field`` RssAnon is the heap (what a leak grows), RssFile the
    pages of the interpreter, libraries and bytecode read so far (grows as code first runs)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def wait_listening(port: int, proc: subprocess.Popen[bytes], within_s: float) -> None:
    """Returns once 127.0.0.1:``port`` accepts; raises if the server exits or never listens."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {within_s:.0f} s")


# Runs ``dynexport`` with tracemalloc on and a daemon thread that writes what is alive every
# ``every`` seconds; argv: DIR EVERY FRAMES GC_EVERY FREEZE_AFTER, then dynexport's own
# arguments. FRAMES 0: no tracemalloc, only the counts (RSS and malloc's figures undisturbed by
# tracing). GC_EVERY > 0: a full collection every GC_EVERY seconds besides the interpreter's
# own (an experiment: does the growth follow the garbage and free lists that wait for the next
# full collection?).
# FREEZE_AFTER > 0: gc.collect() then gc.freeze() once, that many seconds after the start (what
# is alive then is never scanned again, so the interpreter's own full collections come sooner).
TRACE_WRAPPER = """
import collections, ctypes, gc, json, sys, threading, time, tracemalloc
from pathlib import Path
folder, every, frames = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
gc_every, freeze_after = float(sys.argv[4]), float(sys.argv[5])
folder.mkdir(parents=True, exist_ok=True)
if frames:
    tracemalloc.start(frames)
try:
    libc = ctypes.CDLL("libc.so.6")
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                    "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = MallInfo2
except (OSError, AttributeError):
    libc = None
def status_kib():
    got = {}
    for line in open("/proc/self/status"):
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            got[name] = int(value.split()[0])
    return got
PYMALLOC = {"# arenas allocated current": "arenas", "# bytes in allocated blocks": "used",
            "# bytes in available blocks": "free_blocks", "unused pools": "free_pools"}
def pymalloc_stats():
    # pymalloc's own accounting: arenas, bytes in live blocks, free blocks in pools in use,
    # and whole pools left empty (touched once, kept in their arena: pymalloc never returns
    # their pages until the whole arena is free).
    import os, tempfile
    got = {}
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        for text in tmp.read().decode("ascii", "replace").splitlines():
            name, _, value = text.partition("=")
            for prefix, key in PYMALLOC.items():
                if prefix in name and key not in got:
                    got[key] = int(value.replace(",", ""))
    return got
def smaps_kib():
    # Resident anonymous memory by kind: glibc's main heap ([heap]), the rest of the anonymous
    # mappings (pymalloc's 1 MiB arenas, big malloc blocks, thread arenas and stacks).
    got = {"heap": 0, "other_anon": 0}
    kind = None
    for line in open("/proc/self/smaps"):
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):
            parts = line.split()
            path = parts[5] if len(parts) > 5 else ""
            kind = "heap" if path == "[heap]" else "other_anon" if not path else None
        elif first == "Rss:" and kind is not None:
            got[kind] += int(line.split()[1])
    return got
def dump(n):
    if frames:
        tracemalloc.take_snapshot().dump(str(folder / f"snap-{n}.pickle"))
    types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    kib = status_kib()
    line = {"n": n, "t": round(time.monotonic() - t0, 1), "rss_kib": kib["VmRSS"],
            "anon_kib": kib["RssAnon"], "file_kib": kib["RssFile"],
            "pymalloc": pymalloc_stats(), "smaps": smaps_kib(), "blocks": sys.getallocatedblocks(),
            "traced": tracemalloc.get_traced_memory()[0], "threads": threading.active_count(),
            "collections": [g["collections"] for g in gc.get_stats()],
            "types": dict(types.most_common(60))}
    if libc is not None:
        mi = libc.mallinfo2()
        line["malloc"] = {f: getattr(mi, f) for f, _ in MallInfo2._fields_}
    with (folder / "counts.jsonl").open("a") as f:
        f.write(json.dumps(line) + chr(10))
def loop():
    n = 0
    while True:
        time.sleep(every)
        n += 1
        dump(n)
t0 = time.monotonic()
threading.Thread(target=loop, daemon=True).start()
def collect():
    while True:
        time.sleep(gc_every)
        gc.collect()
if gc_every > 0:
    threading.Thread(target=collect, daemon=True).start()
def freeze():
    time.sleep(freeze_after)
    gc.collect()
    gc.freeze()
if freeze_after > 0:
    threading.Thread(target=freeze, daemon=True).start()
from dynexport.cli import main
sys.argv = ["dynexport", *sys.argv[6:]]
raise SystemExit(main())
"""


def compare(folder: Path, top: int = 25) -> None:
    """Prints what grew from the first to the last snapshot in ``folder`` (see ``--trace``)."""
    import tracemalloc

    snaps = sorted(folder.glob("snap-*.pickle"), key=lambda p: int(p.stem.split("-")[1]))
    lines = [json.loads(x) for x in (folder / "counts.jsonl").read_text().splitlines()]
    print("RSS, anon and file in MiB (/proc status); pymalloc: arenas (1 MiB each), blocks, and")
    print("MiB in live blocks, free blocks and empty pools; smaps: resident [heap] and other anon;")
    print("gen2: full collections so far (the interpreter's and --trace-gc-every's);")
    print("malloc (glibc mallinfo2, all arenas): arena = sbrk'd, in use, free in arenas, mmapped")
    print(f"{'n':>3} {'min':>6} {'RSS':>6} {'anon':>6} {'file':>6} {'traced':>7} "
          f"{'arenas':>6} {'blocks':>7} {'live':>6} {'fblk':>5} {'fpool':>5} {'heap':>6} "
          f"{'o.anon':>6} {'arena':>6} {'in use':>6} {'free':>6} {'mmap':>6} "
          f"{'thr':>3} {'gen2':>4}")  # fmt: skip
    mib = 1024 * 1024
    for x in lines:
        m, pm, sm = x.get("malloc", {}), x.get("pymalloc", {}), x.get("smaps", {})
        arenas = pm.get("arenas", x.get("pymalloc_arenas", 0))
        print(f"{x['n']:3d} {x['t'] / 60:6.1f} {x['rss_kib'] / 1024:6.2f} "
              f"{x.get('anon_kib', 0) / 1024:6.2f} {x.get('file_kib', 0) / 1024:6.2f} "
              f"{x['traced'] / mib:7.2f} {arenas:6d} {x.get('blocks', 0):7d} "
              f"{pm.get('used', 0) / mib:6.2f} {pm.get('free_blocks', 0) / mib:5.2f} "
              f"{pm.get('free_pools', 0) / mib:5.2f} {sm.get('heap', 0) / 1024:6.2f} "
              f"{sm.get('other_anon', 0) / 1024:6.2f} {m.get('arena', 0) / mib:6.2f} "
              f"{m.get('uordblks', 0) / mib:6.2f} {m.get('fordblks', 0) / mib:6.2f} "
              f"{m.get('hblkhd', 0) / mib:6.2f} {x['threads']:3d} "
              f"{x.get('collections', ['-'])[-1]:>4}")  # fmt: skip
    first, last = lines[0]["types"], lines[-1]["types"]
    grew = sorted(((last.get(k, 0) - first.get(k, 0), k) for k in set(first) | set(last)),
                  reverse=True)  # fmt: skip
    print("objects by type, last - first:", ", ".join(f"{k} {d:+d}" for d, k in grew[:15] if d))
    if len(snaps) < 2:
        return
    old = tracemalloc.Snapshot.load(str(snaps[0]))
    new = tracemalloc.Snapshot.load(str(snaps[-1]))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    old, new = old.filter_traces(ignore), new.filter_traces(ignore)
    print(f"\nby line, {snaps[0].name} -> {snaps[-1].name}:")
    for stat in new.compare_to(old, "lineno")[:top]:
        print(stat)
    print(f"\nby traceback, top {top // 3}:")
    for stat in new.compare_to(old, "traceback")[: top // 3]:
        print(stat)
        for frame in stat.traceback.format()[-12:]:
            print("   ", frame)


def imported_modules(importtime_log: str) -> list[str]:
    """Module names from ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    names = []
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":
                names.append(name)
    return names


# The utility link's pure per-event work alone, in a fresh interpreter: one new event a minute
# (tests/sep2/memory_cost.py's events), four walks a minute, both files serialized whenever they
# change, as the service does; prints the anonymous RSS every 120 events. argv: repo, events.
LINK_EVENTS = """
import gc, sys
sys.path.insert(0, sys.argv[1])
from tests.sep2.memory_cost import _event, T0, SEED
from dynexport.sep2 import responses
from dynexport.sep2.controls import ProgramControls
from dynexport.sep2.responses import ResponseTracker
from dynexport.sep2.schedule import ScheduleSnapshot
def anon_kib():
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("RssAnon:"))
snapshot, tracker, events = ScheduleSnapshot.first((), T0 - 60, 0, SEED), ResponseTracker(), []
for i in range(int(sys.argv[2]) + 1):
    events = [*events[-1:], _event(i)]
    for dt in (1, 20, 40, 59):
        now = T0 + i * 60 + dt
        programs = (ProgramControls(href="/derp/1", primacy=1, events=tuple(events)),)
        new = snapshot.successor(programs, now, 0, SEED)
        tr = responses.update(tracker, programs, now, SEED, memory=new.memory)
        for p in responses.sendable(tr):
            tr = responses.mark_sent(tr, p.mrid, p.status)
        if new is not snapshot:
            new.to_json().encode()
        if tr is not tracker:
            tr.to_json().encode()
        snapshot, tracker = new, tr
    if i % 120 == 0:
        gc.collect()
        print(f"{i:5d} events: {len(snapshot.memory):5d} remembered, anon {anon_kib()} KiB, "
              f"{sys.getallocatedblocks()} blocks", flush=True)
"""


@contextlib.contextmanager
def compiled_snapshot(src: Path) -> Iterator[dict[str, str]]:
    """A bytecode-compiled copy of ``src`` (as the image ships it), for as long as the block
    runs; yields the environment that imports dynexport from it and may read its bytecode."""
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "src"
        shutil.copytree(src, snapshot / "dynexport", ignore=shutil.ignore_patterns("__pycache__"))
        compileall.compile_dir(snapshot, quiet=1)
        env = dict(os.environ, PYTHONPATH=str(snapshot))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        yield env


def link_events(src: Path, events: int) -> None:
    """Runs ``LINK_EVENTS`` on a bytecode-compiled snapshot of ``src`` (see ``--link-events``)."""
    repo = Path(__file__).resolve().parents[1]
    with compiled_snapshot(src) as env:
        subprocess.run([sys.executable, "-c", LINK_EVENTS, str(repo), str(events)], env=env,
                       check=True)  # fmt: skip


IMPORTED = "import dynexport.app, dynexport.web.server"
"""What ``--import-time`` times: the service's own modules and the web server it starts."""


def import_time(src: Path, runs: int) -> None:
    """Prints the median, lowest and highest of ``runs`` cold imports of ``IMPORTED`` (ms, from
    ``-X importtime``: the cumulative figures of the two top-level imports), each in a fresh
    interpreter on a bytecode-compiled snapshot of ``src``, as the image ships it."""
    with compiled_snapshot(src) as env:
        totals = []
        for _ in range(runs):
            log = subprocess.run(
                [sys.executable, "-X", "importtime", "-c", IMPORTED],
                capture_output=True, text=True, env=env, check=True,
            ).stderr  # fmt: skip
            total = 0
            for line in log.splitlines():
                if line.startswith("import time:") and line.rsplit("|", 1)[1].strip() in (
                    "dynexport.app",
                    "dynexport.web.server",
                ):
                    total += int(line.split("|")[1])
            totals.append(total / 1000)
    totals.sort()
    load = os.getloadavg()[0]
    print(f"{IMPORTED}: median {totals[len(totals) // 2]:.0f} ms, lowest {totals[0]:.0f}, "
          f"highest {totals[-1]:.0f} ({runs} runs, {platform.machine()}, "
          f"python {platform.python_version()}, load average {load:.1f})")  # fmt: skip


# Imported with the service's environment before it starts: the modules it imports that had no
# bytecode of the interpreter's optimization level (compiled from source at every start).
BYTECODE_CHECK = """
import importlib.util, os, sys
import dynexport.app, dynexport.web.server, dynexport.cli
missing = sorted(name for name, m in list(sys.modules.items())
                 if (getattr(m, "__file__", None) or "").endswith(".py")
                 and not os.path.exists(importlib.util.cache_from_source(m.__file__)))
print(sys.flags.optimize, len(sys.modules), len(missing), " ".join(missing[:8]))
"""


UNIT = Path(__file__).resolve().parents[1] / "systemd" / "dynexport.service"


def unit_environment(text: str) -> dict[str, str]:
    """The variables a systemd unit's ``Environment=`` lines set (later lines win; quoted
    values and several assignments on one line as systemd reads them; no specifiers)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key != "Environment" or not value:
            continue
        for word in shlex.split(value):
            name, eq, val = word.partition("=")
            if eq:
                env[name] = val
    return env


def service_environment(optimize: int, debug_ranges: bool) -> dict[str, str]:
    """What the unit sets for the service, at ``PYTHONOPTIMIZE=optimize``; with
    ``debug_ranges``, without ``PYTHONNODEBUGRANGES`` (column tables kept)."""
    env = unit_environment(UNIT.read_text())
    env["PYTHONOPTIMIZE"] = str(optimize)
    if debug_ranges:
        env.pop("PYTHONNODEBUGRANGES", None)
    return env


def precompile(prefix: Path, snapshot: Path, levels: list[int], unit_env: dict[str, str]) -> None:
    """Compiles the snapshot, the standard library and site-packages into ``prefix`` (a private
    ``PYTHONPYCACHEPREFIX``) at each of ``levels``, as an image compiled at those levels ships
    them, without touching the interpreter's own ``__pycache__`` folders; without column tables
    when the service runs without them (``PYTHONNODEBUGRANGES`` in ``unit_env``), as the images
    compile."""
    dirs = [str(snapshot)] + [p for p in sys.path if p and Path(p).is_dir()]
    skip = r"[/\\](test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip)[/\\]"
    opts = [x for level in sorted(set(levels)) for x in ("-o", str(level))]
    env = dict(os.environ)
    env.pop("PYTHONNODEBUGRANGES", None)
    if "PYTHONNODEBUGRANGES" in unit_env:
        env["PYTHONNODEBUGRANGES"] = unit_env["PYTHONNODEBUGRANGES"]
    subprocess.run(
        [sys.executable, "-X", f"pycache_prefix={prefix}", "-m", "compileall", "-q", "-j", "0",
         "-x", skip, *opts, *dirs],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env,
    )  # fmt: skip


def bytecode_check(env: dict[str, str]) -> str:
    """One line: the service's optimization level, modules imported, and those without bytecode
    (each of those is compiled at every start: the comparison would not be honest)."""
    out = subprocess.run(
        [sys.executable, "-c", BYTECODE_CHECK], capture_output=True, text=True, env=env
    )
    if out.returncode:
        return f"bytecode check failed: {out.stderr.strip().splitlines()[-1:]}"
    level, total, missing, names = [*out.stdout.split(maxsplit=3), ""][:4]
    return (f"service imports (optimize {level}): {total} modules, {missing} without bytecode"
            + (f" ({names.strip()} ...)" if int(missing) else ""))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    parser.add_argument(
        "--modules", type=Path, help="write the modules the service imported to this file"
    )
    parser.add_argument(
        "--from-source", action="store_true", help="no bytecode cache: compile at every start"
    )
    parser.add_argument(
        "--rate",
        type=int,
        default=60,
        help="the utility's poll and post rates and seconds per limit step (default 60; "
        "smaller: an accelerated soak, more traffic per hour)",
    )
    parser.add_argument(
        "--interval", type=float, help="control interval in s (default the service's 1 s)"
    )
    parser.add_argument("--trace", type=Path, help="run the service under tracemalloc (see above)")
    parser.add_argument("--trace-every", type=float, default=300.0)
    parser.add_argument(
        "--trace-frames", type=int, default=12, help="traceback depth; 0: counts and malloc only"
    )
    parser.add_argument(
        "--trace-gc-every",
        type=float,
        default=0.0,
        metavar="S",
        help="with --trace: also a full gc.collect() every S seconds (0: only the interpreter's)",
    )
    parser.add_argument(
        "--trace-freeze-after",
        type=float,
        default=0.0,
        metavar="S",
        help="with --trace: gc.collect() and gc.freeze() once, S seconds after the start",
    )
    parser.add_argument("--compare", type=Path, help="print what grew in a --trace folder; exit")
    parser.add_argument(
        "--import-time",
        type=int,
        metavar="RUNS",
        help="time RUNS cold imports of the service's modules (median, lowest, highest); exit",
    )
    parser.add_argument(
        "--link-events",
        type=int,
        metavar="N",
        help="RSS of the utility link's per-event work alone over N simulated events; exit",
    )
    parser.add_argument(
        "--service-env", action="append", default=[], metavar="K=V", help="for the service only"
    )
    parser.add_argument(
        "--optimize",
        type=int,
        choices=(0, 1, 2),
        help="run the service with PYTHONOPTIMIZE=N from bytecode of that level: the snapshot, "
        "the standard library and site-packages compiled into a private pycache prefix at "
        "levels 0 and N, nothing written at run time (an A/B pair: --optimize 0, --optimize 2); "
        "and the rest of the unit's environment (the Environment= lines of "
        "systemd/dynexport.service, read at each run)",
    )
    parser.add_argument(
        "--debug-ranges",
        action="store_true",
        help="with --optimize: keep the column tables in the bytecode and at run time (the unit "
        "before PYTHONNODEBUGRANGES, for an A/B pair)",
    )
    parser.add_argument(
        "--src",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "src" / "dynexport",
        help="the dynexport package to measure (default: this checkout's; for A/B comparisons)",
    )
    args = parser.parse_args()
    if args.compare:
        compare(args.compare)
        return
    if args.import_time:
        import_time(args.src, args.import_time)
        return
    if args.link_events:
        link_events(args.src, args.link_events)
        return
    machine = f"{platform.machine()}, python {platform.python_version()}"
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "from source" if args.from_source else "from bytecode"
    mode += f", utility rates {args.rate} s"
    if args.interval:
        mode += f", control interval {args.interval} s"
    unit_env: dict[str, str] = {}
    if args.optimize is not None:
        unit_env = service_environment(args.optimize, args.debug_ranges)
        mode += f", optimize {args.optimize} (private pycache)"
        mode += ", unit env " + " ".join(f"{k}={v}" for k, v in sorted(unit_env.items()))
    if args.service_env:
        mode += ", service env " + " ".join(args.service_env)
    if args.trace:
        mode += f", traced ({args.trace_frames} frames)"
    print(f"machine: {machine}, {os.cpu_count()} cores; {mode}; started {started_at}", flush=True)
    py = sys.executable
    procs: list[subprocess.Popen[bytes]] = []
    samples: list[dict[str, float]] = []
    exit_note = None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        modbus_port, utility_port, web_port = free_port(), free_port(), free_port()
        stderr_log: IO[bytes] | None = None
        repo = Path(__file__).resolve().parents[1]
        snapshot = folder / "src"
        shutil.copytree(
            args.src,
            snapshot / "dynexport",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(snapshot), env.get("PYTHONPATH")]))
        env.setdefault("DYNEXPORT_WHEELS", str(repo / "build" / "wheels"))  # the XSD
        if args.from_source:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        elif args.optimize is not None:
            prefix = folder / "pycache"
            precompile(prefix, snapshot, [0, args.optimize], unit_env)
            env["PYTHONPYCACHEPREFIX"] = str(prefix)
            env["PYTHONDONTWRITEBYTECODE"] = "1"  # read-only, as the image's root
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            compileall.compile_dir(snapshot, quiet=1)

        def spawn(
            *argv: str, stderr: IO[bytes] | None = None, env: dict[str, str] = env
        ) -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL, env=env
            )
            procs.append(proc)
            return proc

        try:
            site = spawn(py, "-m", "dynexport.sim.modbus_server", "--profile", "fronius_gateway",
                         "--port", str(modbus_port))  # fmt: skip
            utility = spawn(py, "-m", "dynexport.sim.utility_server", "--pki", str(folder / "pki"),
                            "--port", str(utility_port), "--step", "5000,1500,0",
                            "--every", str(args.rate), "--poll-rate", str(args.rate),
                            "--post-rate", str(args.rate))  # fmt: skip
            wait_listening(modbus_port, site, 60.0)
            wait_listening(utility_port, utility, 60.0)  # its PKI is written before it listens
            ep = f"127.0.0.1:{modbus_port}"
            config = {
                "inverters": [{"tcp": ep, "unit": 1}, {"tcp": ep, "unit": 2}],
                "meter": {"tcp": ep, "unit": 240},
                "utility": {
                    "server": f"https://127.0.0.1:{utility_port}",
                    "ca": str(folder / "pki" / "serca.pem"),
                    "cert": str(folder / "pki" / "device-chain.pem"),
                    "key": str(folder / "pki" / "device-key.pem"),
                    "nmi": "4312345678",
                    "pin": 111115,
                },
                "web": {"host": "127.0.0.1", "port": web_port},
            }
            if args.interval:
                config["control"] = {"intervalS": args.interval}
            (folder / "config.json").write_text(json.dumps(config))
            flags = ["-X", "importtime"] if args.modules else []
            if args.modules:
                stderr_log = (folder / "service.err").open("wb")
            entry = ["-m", "dynexport"]
            if args.trace:
                entry = ["-c", TRACE_WRAPPER, str(args.trace.resolve()), str(args.trace_every),
                         str(args.trace_frames), str(args.trace_gc_every),
                         str(args.trace_freeze_after)]  # fmt: skip
            service_env = dict(env, **unit_env)
            service_env.update(kv.split("=", 1) for kv in args.service_env)
            if not args.from_source:
                print(bytecode_check(service_env), flush=True)
            service = spawn(py, *flags, *entry, "run", "--config", str(folder / "config.json"),
                            "--data", str(folder / "data"), stderr=stderr_log,
                            env=service_env)  # fmt: skip
            start = time.monotonic()
            print(f"{'minute':>6}  {'RSS MiB':>8}  {'anon MiB':>8}  {'CPU % of one core':>17}  "
                  f"{'site sim MiB':>12}  {'utility sim MiB':>15}", flush=True)  # fmt: skip
            last_cpu, last_t = 0.0, start
            while time.monotonic() - start < args.minutes * 60:
                time.sleep(min(args.every, args.minutes * 60))
                if service.poll() is not None:
                    exit_note = f"the service exited with {service.returncode}"
                    print(exit_note, flush=True)
                    break
                now, used = time.monotonic(), cpu_s(service.pid)
                share = 100 * (used - last_cpu) / (now - last_t)
                last_cpu, last_t = used, now
                sample = {
                    "minute": round((now - start) / 60, 2),
                    "rss_mib": round(rss_kib(service.pid) / 1024, 2),
                    "anon_mib": round(rss_kib(service.pid, "RssAnon") / 1024, 2),
                    "cpu_percent": round(share, 2),
                    "site_sim_mib": round(rss_kib(site.pid) / 1024, 2),
                    "utility_sim_mib": round(rss_kib(utility.pid) / 1024, 2),
                }
                samples.append(sample)
                print(f"{sample['minute']:6.1f}  {sample['rss_mib']:8.1f}  "
                      f"{sample['anon_mib']:8.1f}  {share:17.1f}  "
                      f"{sample['site_sim_mib']:12.1f}  {sample['utility_sim_mib']:15.1f}",
                      flush=True)  # fmt: skip
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if stderr_log is not None:
                stderr_log.close()
                names = imported_modules((folder / "service.err").read_text("utf-8", "replace"))
                assert args.modules is not None
                args.modules.write_text("".join(f"{n}\n" for n in names))
                print(f"{len(names)} modules imported: {args.modules}", flush=True)
    if args.json:
        summary: dict[str, Any] = {
            "machine": machine,
            "mode": mode,
            "started": started_at,
            "minutes": args.minutes,
            "samples": samples,
            "exit": exit_note,
        }
        if samples:
            first, last = samples[0], samples[-1]
            summary["rss_first_mib"] = first["rss_mib"]
            summary["rss_last_mib"] = last["rss_mib"]
            summary["growth_mib"] = round(last["rss_mib"] - first["rss_mib"], 2)
            summary["anon_growth_mib"] = round(last["anon_mib"] - first["anon_mib"], 2)
            for sim in ("site_sim_mib", "utility_sim_mib"):
                summary[f"{sim[:-4]}_growth_mib"] = round(last[sim] - first[sim], 2)
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
