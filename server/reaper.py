"""Take the Ray processes of a federated run down with its driver, however the driver ends.

Ray's head processes share the driver's fate, but its dashboard and runtime-env agents
(children of the raylet) outlive a ``kill -9`` of the driver by minutes. ``start`` spawns
this module as a small watcher in its own session: it holds the read end of a pipe whose
only write end is the driver's, records the driver's descendants once a second, and when
the pipe closes (the driver exited or was killed) kills the recorded processes that are
still the same processes (same start time). Processes of a Ray cluster the run merely
joined are not the driver's descendants and are never touched. Linux only (``/proc``).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: pid -> start time."""
    parent: dict[int, int] = {}
    start: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                parent[int(entry)], start[int(entry)] = st
    out, frontier = {}, [root]
    while frontier:
        p = frontier.pop()
        for child, par in parent.items():
            if par == p and child not in out:
                out[child] = start[child]
                frontier.append(child)
    return out


def watch(driver: int, fd: int, interval: float = 1.0) -> None:
    """Record the driver's descendants until ``fd`` reaches EOF, then kill them."""
    me = os.getpid()
    known: dict[int, int] = {}
    while True:
        ready, _, _ = select.select([fd], [], [], interval)
        if ready and not os.read(fd, 1):
            break
        known.update({p: t for p, t in descendants(driver).items() if p != me})
    for pid, t in known.items():
        st = _stat(pid)
        if st is not None and st[1] == t:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def start() -> None:
    """Spawn the watcher for this process (once per process; no-op off Linux)."""
    if getattr(start, "done", False) or not os.path.isdir("/proc"):
        return
    r, w = os.pipe()  # both non-inheritable: Ray's processes never hold the write end
    subprocess.Popen(
        [sys.executable, "-m", "server.reaper", str(os.getpid()), str(r)],
        pass_fds=(r,),
        start_new_session=True,  # Ctrl-C to the driver's group does not reach it
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    os.close(r)
    start.done, start.fd = True, w  # the write end stays open until this process ends


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]), int(sys.argv[2]))
