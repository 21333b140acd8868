"""A Grid that stops waiting as soon as the simulation engine has failed."""

from __future__ import annotations

import threading
import time

from fedanchors.errors import FedAnchorsError


class EngineFailed(FedAnchorsError):
    """The simulation engine stopped: the ServerApp must not wait for replies any longer."""


class GuardedGrid:
    """A Grid whose waits end as soon as ``abort`` is set (the engine failed), instead of
    after ``round_timeout``: the same push/pull loop as Flower's ``send_and_receive``."""

    def __init__(self, grid, abort: threading.Event) -> None:
        self.grid, self.abort = grid, abort

    def __getattr__(self, name: str):
        return getattr(self.grid, name)

    def _alive(self) -> None:
        if self.abort.is_set():
            raise EngineFailed("the Flower simulation engine stopped; no client can answer")

    def get_node_ids(self):
        self._alive()
        return self.grid.get_node_ids()

    def send_and_receive(self, messages, *, timeout: float | None = None):
        self._alive()
        ids = set(self.grid.push_messages(messages))
        end = time.time() + (timeout or 0.0)
        out: list = []
        while ids and (timeout is None or time.time() < end):
            got = list(self.grid.pull_messages(ids))
            out.extend(got)
            ids.difference_update(m.metadata.reply_to_message_id for m in got)
            if ids:
                self._alive()
                time.sleep(0.05)
        return out
