"""The service's optimization level and the images' bytecode agree.

systemd/dynexport.service runs the service with ``PYTHONOPTIMIZE=N``. With sources present
Python then reads only ``__pycache__/*.opt-N.pyc``; on a read-only root a missing one means that
module is compiled from source at every start (slower, and about 2.5 MiB more resident:
benchmarks/README.md). Buildroot's default ``pyc only`` ships sourceless ``foo.pyc`` files, which
load at any level: there the level only takes effect once they are compiled at it. So every image
(the Pi's and the system test's) compiles sourceless files at the unit's level and drops the
sources.
"""

from __future__ import annotations

import marshal
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

from tests.image.helpers import BOARDS, EXT, ROOT

UNIT = ROOT / "systemd" / "dynexport.service"
BUILD_IMAGE = ROOT / "systemtest" / "build-image.sh"
POST_BUILD = EXT / "board" / "dynexport" / "post-build.sh"


def unit_level() -> int:
    found = re.findall(r"^Environment=PYTHONOPTIMIZE=(\d)\s*$", UNIT.read_text(), re.M)
    assert len(found) <= 1, found
    return int(found[0]) if found else 0


def compile_commands(script: Path) -> list[list[str]]:
    """Every ``compileall`` command of a shell script, continuation lines joined, as words."""
    text = script.read_text().replace("\\\n", " ")
    return [
        shlex.split(line.split(">", 1)[0])
        for line in text.splitlines()
        if "compileall" in line and not line.lstrip().startswith("#")
    ]


def levels(words: list[str]) -> set[int]:
    """The optimization levels one compileall command writes (none given: the interpreter's, 0)."""
    found = {int(words[i + 1]) for i, w in enumerate(words[:-1]) if w == "-o"}
    return found or {0}


def test_the_unit_sets_a_valid_level() -> None:
    assert unit_level() in (0, 1, 2)


def has_column_tables(pyc: Path) -> bool:
    """Whether a ``.pyc``'s code (3.11+: its own and every nested function's) records columns."""
    code = marshal.loads(pyc.read_bytes()[16:])
    stack, found = [code], False
    while stack and not found:
        c = stack.pop()
        found = any(col is not None for _, _, col, _ in c.co_positions())
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return found


def test_the_unit_and_every_image_compile_without_column_tables() -> None:
    """The unit runs with ``PYTHONNODEBUGRANGES=1`` and every compileall of the images runs
    with it too: code compiled at run time (dataclasses' methods) and the shipped bytecode
    alike carry no column tables."""
    assert re.search(r"^Environment=PYTHONNODEBUGRANGES=1\s*$", UNIT.read_text(), re.M)
    for script in (BUILD_IMAGE, POST_BUILD):
        commands = compile_commands(script)
        assert commands, script
        for words in commands:
            assert "PYTHONNODEBUGRANGES=1" in words, (script.name, words)


def test_bytecode_compiled_without_column_tables_is_smaller_and_runs_the_same(
    tmp_path: Path,
) -> None:
    """What the unit relies on: ``PYTHONNODEBUGRANGES=1`` at compile time drops the column
    tables (not the line numbers) from the ``.pyc``, which any interpreter of that version then
    loads, with or without the variable."""
    source = "def f(x):\n    return {'a': x, 'b': [x * 2 for _ in range(3)]}\n\nvalue = f(21)\n"
    for name in ("ranges", "plain"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "probe.py").write_text(source)
        env = {"PATH": "/usr/bin:/bin"} | ({"PYTHONNODEBUGRANGES": "1"} if name == "plain" else {})
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "-b", str(tmp_path / name / "probe.py")],
            check=True,
            env=env,
        )
        (tmp_path / name / "probe.py").unlink()
    ranges, plain = tmp_path / "ranges" / "probe.pyc", tmp_path / "plain" / "probe.pyc"
    assert has_column_tables(ranges) and not has_column_tables(plain)
    assert plain.stat().st_size < ranges.stat().st_size
    show = "import probe; print(probe.value['b'], probe.f.__code__.co_firstlineno)"
    assert _run(show, plain.parent) == _run(show, ranges.parent) == "[42, 42, 42] 1"


def test_the_system_test_image_compiles_as_the_pi_images_do() -> None:
    """Every tree of the system test's root (the stdlib, pip's dist-packages) as sourceless
    ``foo.pyc`` of the unit's level, its sources and ``__pycache__`` removed afterwards, as
    post-build.sh does for the Pi images: the system test boots the Pi's bytecode layout."""
    level = unit_level()
    commands = compile_commands(BUILD_IMAGE)
    assert commands, "build-image.sh compiles the image's Python"
    trees = ("/usr/local/lib/python3.11/dist-packages", "/usr/lib/python3.11")
    for tree in trees:
        own = [w for w in commands if tree in w]
        assert own and all("-b" in w and levels(w) == {level} for w in own), (tree, own)
    assert all("-b" in w for w in compile_commands(POST_BUILD))
    script = BUILD_IMAGE.read_text()
    loop = re.search(r'for lib in ((?:"\$\{root\}[^"]+" ?)+); do\n(.*?)\ndone', script, re.S)
    assert loop is not None, "build-image.sh removes the sources of the trees it compiled"
    assert sorted(loop[1].replace('"${root}', "").replace('"', "").split()) == sorted(trees)
    assert "-name '*.py'" in loop[2] and "rm" in loop[2]
    assert "-name __pycache__" in loop[2] and "rm -rf" in loop[2]


def test_buildroot_images_never_ship_sources_with_bytecode_of_another_level() -> None:
    """``py + pyc`` would be compiled at level 0 by Buildroot: every module compiled from source
    at every start under the unit's level. ``py only`` is accepted when post-build.sh compiles
    sourceless files (``-b``) at the unit's level itself."""
    level = unit_level()
    for board in BOARDS:
        config = (EXT / "configs" / f"dynexport_{board}_defconfig").read_text()
        assert "BR2_PACKAGE_PYTHON3_PY_PYC=y" not in config, board
        if "BR2_PACKAGE_PYTHON3_PY_ONLY=y" in config:
            own = [w for w in compile_commands(POST_BUILD) if "-b" in w]
            assert own and all(levels(w) == {level} for w in own), board


def _run(code: str, folder: Path, *flags: str) -> str:
    result = subprocess.run(
        [sys.executable, *flags, "-c", code],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(folder)},
    )
    return result.stdout.strip()


def test_what_the_checks_above_rely_on(tmp_path: Path) -> None:
    """CPython's rules, shown: a sourceless level-0 ``foo.pyc`` loads under -OO as it is (its
    assert still runs); with the source beside it, -OO wants ``foo.*.opt-2.pyc`` and, without
    it, compiles the source (the docstring is then gone)."""
    (tmp_path / "probe.py").write_text('"""doc"""\nflag = False\ntry:\n    assert flag\n'
                                       "except AssertionError:\n    flag = True\n")  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-b", str(tmp_path / "probe.py")], check=True
    )
    show = "import probe, os, importlib.util as u; print(probe.__doc__, probe.flag, "
    show += "os.path.exists(u.cache_from_source(probe.__file__)))"
    assert _run(show, tmp_path, "-OO") == "None False False"  # source wins, compiled at -OO
    (tmp_path / "probe.py").unlink()
    sourceless = "import probe; print(probe.__doc__, probe.flag)"
    assert _run(sourceless, tmp_path, "-OO") == "doc True"  # the level-0 file, as it is


def test_post_build_compiles_the_targets_python_at_the_units_level_without_sources(
    tmp_path: Path,
) -> None:
    """post-build.sh on a stand-in target (board-less: the RAUC part is skipped), with this
    interpreter as the build's host python: every module becomes a sourceless ``foo.pyc`` of
    the unit's level, which loads the same under the service's -OO and the CLI's plain run."""
    target, host_bin = tmp_path / "target", tmp_path / "host" / "bin"
    host_bin.mkdir(parents=True)
    (host_bin / "python3").symlink_to(sys.executable)
    (target / "usr/libexec/dynexport").mkdir(parents=True)
    (target / "usr/libexec/dynexport/helper").write_text("#!/bin/sh\n")
    (target / "etc/dynexport").mkdir(parents=True)
    site = target / "usr/lib/python3.11/site-packages"
    (site / "probe").mkdir(parents=True)
    (site / "probe/__init__.py").write_text('"""doc"""\nfrom probe.part import flag\n')
    (site / "probe/part.py").write_text(
        "flag = False\ntry:\n    assert flag\nexcept AssertionError:\n    flag = True\n"
    )
    (site / "probe/py.typed").write_text("")
    subprocess.run(
        ["sh", str(POST_BUILD), str(target), ""],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "HOST_DIR": str(tmp_path / "host")},
    )
    files = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert files == ["probe/__init__.pyc", "probe/part.pyc", "probe/py.typed"]
    show = "import probe; print(probe.__doc__, probe.flag, probe.__file__)"
    want = f"None False {site}/probe/__init__.pyc"  # level 2: no docstring, no assert
    level = unit_level()
    assert level == 2, "the expectation below is for -OO"
    assert _run(show, site, "-OO") == want
    assert _run(show, site) == want
    for pyc in ("probe/__init__.pyc", "probe/part.pyc"):  # compiled as the unit runs
        assert not has_column_tables(site / pyc), pyc


def test_post_build_leaves_the_system_test_roots_python_to_build_image(tmp_path: Path) -> None:
    """build-image.sh runs post-build.sh on its Debian root (board x86_64) without Buildroot's
    HOST_DIR: post-build.sh leaves its Python alone (build-image.sh compiles it with the root's
    own interpreter, as the test above checks)."""
    target = tmp_path / "target"
    (target / "usr/libexec/dynexport").mkdir(parents=True)
    (target / "usr/libexec/dynexport/helper").write_text("#!/bin/sh\n")
    (target / "etc/dynexport").mkdir(parents=True)
    lib = target / "usr/lib/python3.11"
    lib.mkdir(parents=True)
    (lib / "probe.py").write_text('"""doc"""\n')
    subprocess.run(
        ["sh", str(POST_BUILD), str(target), "x86_64"],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert [p.name for p in lib.iterdir()] == ["probe.py"]


def load_service_rss() -> types.ModuleType:
    """benchmarks/service_rss.py, imported by path (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "service_rss", ROOT / "benchmarks" / "service_rss.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_memory_benchmark_runs_the_service_with_the_units_environment() -> None:
    """``service_rss.py --optimize N`` reads the unit's ``Environment=`` lines instead of a copy
    of them, so a variable added to the unit is measured too."""
    bench = load_service_rss()
    unit = bench.unit_environment(UNIT.read_text())
    assert unit["PYTHONOPTIMIZE"] == str(unit_level())
    assert unit["PYTHONNODEBUGRANGES"] == "1"
    assert bench.service_environment(0, debug_ranges=False) == dict(unit, PYTHONOPTIMIZE="0")
    assert "PYTHONNODEBUGRANGES" not in bench.service_environment(2, debug_ranges=True)


def test_the_memory_benchmark_reads_environment_lines_as_systemd_does() -> None:
    """Several assignments on a line, quoted values, later lines winning, other keys ignored."""
    bench = load_service_rss()
    text = (
        "[Service]\n"
        "Environment=A=1 B=2\n"
        'Environment="C=two words" A=3\n'
        "EnvironmentFile=/etc/x\n"
        "# Environment=D=4\n"
        "  Environment=E=5\n"
    )
    assert bench.unit_environment(text) == {"A": "3", "B": "2", "C": "two words", "E": "5"}
