"""Crash-safe file writing: write to a temp file in the same folder, fsync, rename."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable


def _disk_full(e: OSError, path: str, tmp: str) -> OSError:
    """ENOSPC with a message that names the folder, the space needed and what survived."""
    folder = os.path.dirname(os.path.abspath(path))
    ext = os.path.splitext(path)[1]
    siblings = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(ext) and not f.startswith(".tmp-")]
    previous = max([os.path.getsize(f) for f in siblings] + [0])      # a file like it: the space it takes
    written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
    free = shutil.disk_usage(folder).free
    return OSError(e.errno, f"no space left in {folder}: writing {os.path.basename(path)} needs about "
                            f"{max(written, previous) / 1e6:.1f} MB, {free / 1e6:.1f} MB are free; the files "
                            "written before are intact and no partial file is left; free some space and run "
                            "again (training continues with --resume)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path next to `path`; on success fsync it and rename it over `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        try:
            yield tmp
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(e, path, tmp) from None
            raise
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)          # mkstemp makes 0600; give the usual permissions
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_line(path: str, line: str) -> None:
    """Append `line` to a journal and fsync it, so a killed run leaves every finished line intact;
    a line an earlier kill cut short is ended first, so only it is lost."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+b") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
            f.seek(0, os.SEEK_END)
            if torn:
                f.write(b"\n")
        f.write(line.encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def resume_json(path: str, measure: Callable[[], dict], write: bool = True) -> dict:
    """One part of a resumable study: the JSON at `path` when an earlier run finished it, else
    `measure()`, written there atomically (so a stopped study, run again, skips what is done).
    A `measure` that writes `path` itself (training's summary.json, `runner.run(out=path)`) is
    not written over; `write=False` (a torchrun rank other than 0) reads but never writes."""
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    result = measure()
    if write and not os.path.isfile(path):
        write_json(path, result)
    return result


@contextlib.contextmanager
def folder_lock(folder: str):
    """An advisory lock on `folder` (file `.lock` holding the owner's PID) for as long as the
    context lasts; a second writer gets ValueError naming the first.  The operating system drops
    the lock when its process dies, so a killed run never leaves a stale lock behind."""
    import fcntl
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ValueError(f"{folder} is in use by another codanet process (pid {owner}); wait for it to "
                         "finish or choose another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
