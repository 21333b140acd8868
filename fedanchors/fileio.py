"""Writes a run cannot afford to get half right: atomic files, appended lines, and one error
for every write the machine refuses (disk full, read-only filesystem, no permission).

A checkpoint is serialised in memory first and then written to ``<name>.tmp`` and renamed,
so a failed write never replaces the last good file (and torch's zip writer never meets a
full disk: its error there is an opaque ``RuntimeError``). A failed write removes its
temporary file, so the space is not held by a fragment, and raises ``WriteError``: one
line naming the file, the cause and what to do, exit code 5.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Any

from fedanchors.errors import FedAnchorsError

# the errors that mean "the machine refused the write", not a bug: each gets its own hint
_HINTS = {
    errno.ENOSPC: "free disk space (or move out_dir to a larger disk)",
    errno.EDQUOT: "free space within your disk quota (or move out_dir)",
    errno.EFBIG: "the file exceeds a size limit of this filesystem or process (ulimit -f); move out_dir",
    errno.EROFS: "the filesystem is read-only; remount it writable or move out_dir",
    errno.EACCES: "no permission to write there; fix the permissions or move out_dir",
    errno.EPERM: "the write is not permitted; fix the permissions or move out_dir",
    errno.EIO: "the disk reported an I/O error; check it, or move out_dir",
}
WRITE_ERRNOS = frozenset(_HINTS)


class WriteError(FedAnchorsError):
    """A file of the run could not be written; the last good checkpoint is intact."""

    exit_code = 5


def run_dir_of(path: Path) -> Path | None:
    """The run directory holding ``path`` (the nearest parent with a config.yaml), or None."""
    for p in Path(path).resolve().parents:
        if (p / "config.yaml").is_file():
            return p
    return None


def write_error(e: OSError, path: str | os.PathLike | None = None) -> WriteError:
    """The one-line ``WriteError`` for a refused write of ``path`` (else ``e.filename``)."""
    target = Path(path if path is not None else e.filename or "?")
    code = errno.errorcode.get(e.errno or 0, "error")
    hint = _HINTS.get(e.errno or 0, "check the disk, or move out_dir")
    run = run_dir_of(target)
    if run is not None and any((run / "checkpoints" / f).is_file() for f in ("resume.pt", "server_resume.pt")):
        then = f"then continue with python -m fedanchors.simulate --resume {run}"
    else:
        then = "then start the run again"
    return WriteError(f"cannot write {target}: {e.strerror or e} ({code}); {hint}, {then}")


def as_write_error(e: BaseException) -> WriteError | None:
    """``e`` as a ``WriteError`` when it is a refused write (an ``OSError`` with one of
    ``WRITE_ERRNOS``), else None."""
    if isinstance(e, WriteError):
        return e
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        return write_error(e)
    return None


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """``data`` to ``path`` through ``<path>.tmp`` and a rename; a refused write is a ``WriteError``
    and leaves ``path`` as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(e, path) from None


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see the module docstring)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` and a newline to ``path`` in one write; a refused write is a
    ``WriteError`` and the file is cut back to its length before (never half a line)."""
    path = Path(path)
    data = (line + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise write_error(e, path) from None
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as e:
            os.ftruncate(fd, size)
            raise write_error(e, path) from None
    finally:
        os.close(fd)
