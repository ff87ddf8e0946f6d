"""Files written so a crash never leaves half of one: under a temporary name, synced, then
renamed into place (a directory's old version is kept until the new one is in place)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """This process's umask, read without setting it (os.umask would set it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: set and restore
    os.umask(mask)
    return mask


def _usual_mode() -> int:
    """The mode open() gives a new file: some writers (safetensors) make theirs 0600, and the
    customer's outputs would be readable or not by how they were written."""
    return 0o666 & ~umask()


def write_dir_atomically(final: Path, write: Callable[[Path], None]) -> None:
    """Calls write(tmp_dir), syncs it, then renames it to `final` (replacing an older one)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # a writer killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    write(tmp)
    mode = _usual_mode()
    for f in tmp.iterdir():
        os.chmod(f, mode)
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)  # a crash from here to the next line leaves `old` complete
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_file_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Calls write(tmp_file) (same suffix as `path`), syncs it, then renames it to `path`."""
    path = Path(path)
    tmp = path.parent / f".{path.stem}.tmp-{os.getpid()}{path.suffix}"
    try:
        write(tmp)
        os.chmod(tmp, _usual_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    write_file_atomically(path, lambda tmp: tmp.write_text(text))
