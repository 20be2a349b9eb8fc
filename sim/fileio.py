"""Output files are written whole or not at all: write to a temporary file beside the target, then rename.

Where the output goes (`output_target`):

- a plain path: a temporary file in its folder, renamed onto it when the content is complete;
- a symbolic link: the same, onto the file the link points to (the link stays a link);
- a file descriptor of this process (`/dev/stdout`, `/dev/stderr`, `/dev/fd/N`, `/proc/self/fd/N`) or a
  special file (a FIFO, a character device such as /dev/null): never renamed over (that would replace
  /dev/stdout for everyone when run as root); the complete content is written into it at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from simmoe.errors import InputError

_FD_PATH = re.compile(r"^/(?:dev/fd|proc/self/fd|proc/(\d+)/fd)/(\d+)$")
_STD = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


@dataclass(frozen=True)
class Target:
    """Where an output really goes: a regular file (`path`, replaced atomically), an open file descriptor of
    this process (`fd`), or a special file written in place (`stream`)."""

    path: Path
    fd: int | None = None
    stream: bool = False


def _own_fd(path: str) -> int | None:
    if path in _STD:
        return _STD[path]
    m = _FD_PATH.match(path)
    if m and (m.group(1) is None or int(m.group(1)) == os.getpid()):
        return int(m.group(2))
    return None


def output_target(path: str | Path, flag: str | None = None) -> Target:
    """Resolves an output path (see the module docstring); raises InputError when it cannot be written."""
    given = Path(path)
    src = flag or str(given)
    field = str(given) if flag else None
    fd = _own_fd(os.path.abspath(given))
    if fd is not None:
        try:
            os.fstat(fd)
        except OSError:
            raise InputError(src, field, f"file descriptor {fd} is not open") from None
        return Target(given, fd=fd)
    try:
        real = Path(os.path.realpath(given, strict=False))
    except OSError as e:  # a symlink loop
        raise InputError(src, field, f"cannot resolve the path ({e.strerror or e})") from None
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise InputError(src, field, f"cannot write here ({e.strerror or e})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise InputError(src, field, "is a folder")
    if st is not None and not stat.S_ISREG(st.st_mode):
        return Target(real, stream=True)  # a FIFO, a device, a socket: written in place, never replaced
    folder = real.parent
    if not folder.is_dir():
        shown = given.parent if not given.is_symlink() else folder
        raise InputError(src, field, f"output folder {str(shown)!r} does not exist")
    return Target(real)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path; its content goes to `path` only if the block succeeds (see output_target)."""
    target = output_target(path)
    given = Path(path)
    special = target.fd is not None or target.stream
    folder = None if special else target.path.parent  # special targets: a temporary file elsewhere
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{given.name}.", suffix=suffix or given.suffix, dir=folder)
    except OSError as e:
        raise InputError(given, None, f"cannot write in {str(folder or tempfile.gettempdir())!r} "
                                      f"({e.strerror or e})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        try:
            if target.fd is not None:
                _copy_to_fd(tmp_path, target.fd)
            elif target.stream:
                with open(tmp_path, "rb") as src, open(target.path, "ab") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                os.replace(tmp_path, target.path)
        except OSError as e:  # e.g. --json /dev/stdin, or the target became a folder meanwhile
            raise InputError(given, None, f"cannot write ({e.strerror or e})") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _copy_to_fd(src: Path, fd: int) -> None:
    """Writes the file into an open descriptor of this process, after what Python has buffered for it (so
    that `--json /dev/stdout` and the printed summary come out in order, sharing the descriptor's offset)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            if stream.fileno() == fd:
                stream.flush()
    with open(src, "rb") as f:
        while block := f.read(1 << 20):
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view):]


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def check_output(path: str | None, flag: str) -> None:
    """Fail before any work if an output cannot be written (nothing half-written afterwards): the target
    resolves, and its folder takes a new file (tried, then removed)."""
    if path is None:
        return
    target = output_target(path, flag)
    if target.fd is not None or target.stream:
        return
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.path.name}.", dir=target.path.parent)
    except OSError as e:
        raise InputError(flag, str(path), f"cannot write in {str(target.path.parent)!r} ({e.strerror or e})") \
            from None
    os.close(fd)
    os.unlink(probe)
