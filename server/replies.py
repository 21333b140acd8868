"""The server's reading of replies: failures reported once per phase, untrusted replies vetted.

A mixin of ``server.strategy.FedAnchors`` (its state: ``pid_of``, ``info``, ``head``,
``encoders``, ``anchors``, ``cfg``, ``errors``). Every reply is checked before any of it is
used (``fedanchors.reply_checks``); a reply that fails is logged with its client, node and
round and dropped, exactly like a client that failed: the ``federated.max_missing_rounds``
rule applies, and nothing of it is averaged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from flwr.app import Message

from clients.protocol import ENCODER, HEAD, STATE_LOST, WRITE_FAILED, message_bytes, unpack, unpack_arrays
from fedanchors.config import anchors_used
from fedanchors.errors import FedAnchorsError
from fedanchors.fileio import WriteError, append_line
from fedanchors.privacy import release_problem
from fedanchors.reply_checks import evaluation_problem, scalar_problem, state_problem, stats_problem

log = logging.getLogger("fedanchors.server")


def _reason(r: Message) -> tuple[list[str], str]:
    """An error reply's reason, line by line, and its last line (the exception), for the log."""
    lines = (r.error.reason or "").strip().splitlines()
    return lines, lines[-1].rstrip("'>") if lines else str(r.error.code)


def _marked(lines: list[str], marker: str) -> str:
    """The text from ``marker`` on, in the last of ``lines`` holding it ("" if none)."""
    found = [x[x.index(marker) :].rstrip("'\">") for x in lines if marker in x]
    return found[-1] if found else ""


class RepliesMixin:
    """Successful, sound replies in partition order; failures and rejections reported once."""

    def _split_replies(self, rnd: int, replies: Iterable[Message], phase: str) -> list[tuple[int, Message]]:
        """Successful replies in partition order; each failed client is logged once for this
        ``phase`` (train, evaluate, adapt). A client whose saved state is lost or could not be
        written stops the run, naming the file."""
        ok, failed = [], []
        for r in replies:
            self.count_bytes(0, message_bytes(r), phase in ("train", "loss query"))
            if not r.has_error():
                ok.append((self._partition(r), r))
                continue
            reason, last = _reason(r)
            if self.errors is not None:  # the full traceback, for debugging a client
                append_line(self.errors, f"round {rnd} {phase} client {self._partition(r)}:\n{r.error.reason}\n")
            unwritten = _marked(reason, WRITE_FAILED)
            if unwritten:
                raise WriteError(unwritten[len(WRITE_FAILED) :].strip())
            gone = _marked(reason, STATE_LOST)
            if gone:
                raise FedAnchorsError(f"round {rnd}: {gone}")
            failed.append((self._partition(r), last))
        for pid, why in sorted(failed):
            log.warning("round %d: client %d failed in %s: %s", rnd, pid, phase, why)
        return sorted(ok, key=lambda t: t[0])

    def setup_replies(self, replies: Iterable[Message]) -> list[Message]:
        """The setup query's successful replies; each failed node is logged once (its partition
        is not known yet: the reply that would say it failed)."""
        ok = []
        for r in replies:
            if r.has_error():
                log.warning("setup: node %d failed in setup: %s", r.metadata.src_node_id, _reason(r)[1])
            else:
                ok.append(r)
        return ok

    def parse_setup(self, r: Message) -> tuple[int, dict]:
        """A setup reply's partition and what the client says of itself, checked: a reply that
        cannot be read, or claims a partition outside the population, a non-positive example
        count or negative class counts, stops the run naming the node (without it no group
        would be complete)."""
        node = r.metadata.src_node_id
        try:
            m, c = r.content["metrics"], r.content["info"]
            pid = m["partition"]
            info = {
                "group": str(c["group"]),
                "space": str(c["space"]),
                "shape": tuple(int(s) for s in c["shape"]),
                "meta": {"vocab_size": int(c["vocab_size"])} if int(c["vocab_size"]) else {},
                "n": m["num-examples"],
                "gi": int(m.get("group_index", pid)),
                "class_counts": list(m.get("class_counts", [])),
            }
        except (KeyError, TypeError, ValueError) as e:
            raise FedAnchorsError(f"setup: node {node} sent a malformed reply ({type(e).__name__}: {e})") from None
        why = ""
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < self.num_clients:
            why = f"partition {pid!r} is outside 0..{self.num_clients - 1}; give each SuperNode its own partition-id"
        elif isinstance(info["n"], bool) or not isinstance(info["n"], int) or info["n"] < 1:
            why = f"num-examples {info['n']!r} is not a positive integer"
        elif any(not isinstance(k, int) or k < 0 for k in info["class_counts"]) or min(info["shape"], default=1) < 1:
            why = "negative class counts or a non-positive input shape"
        if why:
            raise FedAnchorsError(f"setup: node {node}: {why}")
        return pid, info

    def _reject(self, rnd: int, phase: str, pid: int, r: Message, why: str) -> None:
        node = r.metadata.src_node_id
        log.warning("round %d: client %d (node %d) reply rejected in %s: %s", rnd, pid, node, phase, why)
        if self.errors is not None:
            append_line(self.errors, f"round {rnd} {phase} client {pid} (node {node}): reply rejected: {why}\n")

    def _parts(self, r: Message, record: str, prefix: str) -> dict:
        """``unpack(r.content[record], prefix)``, read once per reply while a round's replies are
        vetted and aggregated (the check and the update share the tensors; ``_forget_parts``
        drops them)."""
        cache = self.__dict__.setdefault("_parsed", {})
        key = (id(r), record, prefix)
        if key not in cache:
            cache[key] = (r, unpack(r.content[record], prefix))  # r kept: its id stays its own
        return cache[key][1]

    def _forget_parts(self) -> None:
        self.__dict__.pop("_parsed", None)

    def _train_problem(self, pid: int, r: Message) -> str:
        """Why a training reply cannot be used ("" when it can)."""
        c = r.content
        if "metrics" not in c.metric_records or not ({"global", "private"} & set(c.array_records)):
            return "no metrics or arrays"
        m = c["metrics"]
        if m.get("partition", pid) != pid:
            return f"it claims partition {m.get('partition')}"
        if self.cfg.privacy.enabled:
            if "private" not in c.array_records:
                return "no private release (privacy.enabled)"
            return release_problem(unpack_arrays(c["private"]), self.release_shapes(pid))
        why = scalar_problem("loss", m.get("loss"), 0.0) or scalar_problem("fit", m.get("fit"), 0.0)
        if why:
            return why
        if self.cfg.federated.head_sharing == "global":
            why = state_problem(self._parts(r, "global", HEAD), self.head.state_dict(), "head")
        space = self.info[pid]["space"]
        if not why and space in self.encoders:
            why = state_problem(self._parts(r, "global", ENCODER), self.encoders[space].state_dict(), "encoder")
        if not why and "snapshot" in c.array_records:  # DRFA's snapshot: the same parts, as sound
            if self.cfg.federated.head_sharing == "global":
                why = state_problem(self._parts(r, "snapshot", HEAD), self.head.state_dict(), "snapshot head")
            if not why and space in self.encoders:
                enc = self._parts(r, "snapshot", ENCODER)
                why = state_problem(enc, self.encoders[space].state_dict(), "snapshot encoder")
        if not why and anchors_used(self.cfg):
            if "stats" not in c.array_records:
                return "no class statistics"
            a = self.anchors
            why = stats_problem(unpack_arrays(c["stats"]), a.num_classes, a.means.shape[-1], a.structure)
        return why

    def _vet_train(self, rnd: int, ok: list[tuple[int, Message]]) -> list[tuple[int, Message]]:
        """The training replies that pass every check; the others are rejected (logged). When
        every reply is rejected for non-finite values the model itself diverged (the aggregate
        of those replies would be non-finite): that stops the run as a divergence, naming it,
        not as clients gone missing."""
        kept, nonfinite = [], 0
        for pid, r in ok:
            why = self._train_problem(pid, r)
            if why:
                self._reject(rnd, "train", pid, r, why)
                nonfinite += "finite" in why
            else:
                kept.append((pid, r))
        if ok and not kept and nonfinite == len(ok):
            self._checker(f"round {rnd}")({"every client's training loss or model (all replies non-finite)": math.nan})
        return kept

    def _vet_evaluate(self, rnd: int, ok: list[tuple[int, Message]], splits, phase: str = "evaluate"):
        """The evaluation replies whose counts are sound; the others are rejected (logged)."""
        kept = []
        for pid, r in ok:
            c = r.content
            m = c["metrics"] if "metrics" in c.metric_records else None
            why = "no metrics" if m is None else evaluation_problem(m, splits, self.anchors.num_classes)
            if why:
                self._reject(rnd, phase, pid, r, why)
            else:
                kept.append((pid, r))
        return kept
