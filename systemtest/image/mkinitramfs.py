#!/usr/bin/env python3
"""System test image only: write the VM's initramfs (docs/image.md "Boot to controlling").

Usage: mkinitramfs.py ROOT INIT OUT MODULE...

ROOT is the Debian root being assembled, INIT the initramfs's /init (``initramfs-init``),
MODULE the kernel modules to load, absolute paths below ROOT in load order (dependencies
first, as ``modprobe --show-depends`` lists them). The archive holds /init, klibc's tools from
ROOT (``klibc-utils``, already there for initramfs-tools), the modules, their order in
/modules and /dev/console: about 1 MB instead of initramfs-tools' 15 MB, so GRUB reads less,
the kernel unpacks less and no udev starts before systemd. Written as a gzip'd newc cpio
(the format the kernel reads) with Python's own modules: no cpio tool needed on the host.
"""

from __future__ import annotations

import gzip
import stat
import sys
from pathlib import Path

TOOLS = ("sh", "insmod", "mount", "umount", "mkdir", "dd", "sleep", "run-init")
"""klibc-utils programs /init uses (echo, printf, read, test are the shell's own)."""


def _entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One newc member: the 110-byte ASCII header, the name (NUL ended), data, 4-byte padding."""
    fields = [0, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def build(root: Path, init: Path, modules: list[Path]) -> bytes:
    parts: list[bytes] = []
    for d in ("bin", "dev", "lib", "lib/modules", "proc", "root"):
        parts.append(_entry(d, stat.S_IFDIR | 0o755))
    parts.append(_entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    parts.append(_entry("init", stat.S_IFREG | 0o755, init.read_bytes()))
    for tool in TOOLS:
        parts.append(
            _entry(
                f"bin/{tool}",
                stat.S_IFREG | 0o755,
                (root / "usr/lib/klibc/bin" / tool).read_bytes(),
            )
        )
    libs = sorted((root / "usr/lib").glob("klibc-*.so"))
    if len(libs) != 1:
        raise SystemExit(
            f"mkinitramfs: expected one klibc-*.so in {root}/usr/lib, found {len(libs)}"
        )
    parts.append(_entry(f"lib/{libs[0].name}", stat.S_IFREG | 0o755, libs[0].read_bytes()))
    names = []
    for m in modules:
        if not m.name.endswith(".ko"):
            raise SystemExit(f"mkinitramfs: {m}: only uncompressed .ko modules can be loaded")
        names.append(m.name)
        parts.append(_entry(f"lib/modules/{m.name}", stat.S_IFREG | 0o644, m.read_bytes()))
    if len(set(names)) != len(names):
        raise SystemExit("mkinitramfs: two modules with the same file name")
    parts.append(_entry("modules", stat.S_IFREG | 0o644, "".join(f"{n}\n" for n in names).encode()))
    parts.append(_entry("TRAILER!!!", 0))
    archive = b"".join(parts)
    return archive + b"\0" * (-len(archive) % 512)


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    root, init, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    modules = [Path(m) for m in argv[3:]]
    for m in modules:
        if not m.is_file():
            raise SystemExit(f"mkinitramfs: no module {m}")
    out.write_bytes(gzip.compress(build(root, init, modules), compresslevel=9, mtime=0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
