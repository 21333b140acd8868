"""FedAnchors: the messages of a round, over the Flower-free server core.

``fedanchors.fedserver.ServerCore`` holds the server's state and maths (GroupDRO weights,
aggregation, the server optimizer, the anchor fit, evaluation); this class adds what Flower
needs: it finds the clients, builds each round's messages from the core's plan, and parses
(``server.replies`` vets) the replies into the core's ``ClientUpdate`` s and counts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from clients.protocol import ENCODER, HEAD, message_bytes, pack, unpack_arrays
from fedanchors.errors import FedAnchorsError
from fedanchors.fedserver import ClientUpdate, ServerCore
from server.replies import RepliesMixin


class FedAnchors(ServerCore, RepliesMixin):
    """The server of a federated run: ``ServerCore``'s state, reached through messages."""

    def __init__(self, *args, **kwargs) -> None:  # ServerCore's (cfg, num_clients, num_classes, ...)
        super().__init__(*args, **kwargs)
        self.nodes: dict[int, int] = {}  # partition -> node id
        self.pid_of: dict[int, int] = {}  # node id -> partition

    # -- setup ------------------------------------------------------------------------
    def discover(self, grid: Grid) -> None:
        """Wait for every node, then ask each which partition, group and space it is.

        More nodes than groups fails at once; fewer fails after ``federated.connect_timeout``."""
        deadline = time.time() + self.cfg.federated.connect_timeout
        while len(ids := list(grid.get_node_ids())) < self.num_clients:
            if time.time() > deadline:
                raise FedAnchorsError(
                    f"only {len(ids)} of {self.num_clients} clients (one per group) connected within "
                    f"federated.connect_timeout={self.cfg.federated.connect_timeout:g} s; start one SuperNode per "
                    "group (or check the Ray resources)"
                )
            time.sleep(0.1)
        time.sleep(0.5)  # a node more than groups, registering just after the others, is seen too
        ids = list(grid.get_node_ids())
        if len(ids) > self.num_clients:
            raise FedAnchorsError(
                f"{len(ids)} clients connected but the config has {self.num_clients} groups; "
                "start exactly one SuperNode per group"
            )
        msgs = [Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=n, group_id="query") for n in ids]
        replies = self.setup_replies(grid.send_and_receive(msgs, timeout=self.cfg.federated.round_timeout))
        if len(replies) < self.num_clients:
            raise FedAnchorsError(
                f"only {len(replies)} of {self.num_clients} clients answered the setup query (failures: see above)"
            )
        info = {}
        for r in replies:
            pid, info_pid = self.parse_setup(r)
            if pid in info:
                raise FedAnchorsError(
                    f"two clients claim partition {pid}; give each SuperNode its own --node-config partition-id"
                )
            self.nodes[pid] = r.metadata.src_node_id
            self.pid_of[r.metadata.src_node_id] = pid  # O(1) reply -> partition at any population
            info[pid] = info_pid
        self.setup([info[p] for p in sorted(info)])

    def _messages(self, kind: str, rnd: int, config: dict, pids: list[int] | None = None, parts=None) -> list[Message]:
        parts = parts or self.shared_parts
        out, packed = [], {}  # what a client is sent depends on its space only: packed once per space
        for pid, nid in sorted(self.nodes.items()):
            if pids is not None and pid not in pids:
                continue
            space = self.info[pid]["space"]
            if space not in packed:
                packed[space] = pack(**parts(pid))
            # which of its state files the client starts from (the last round it trained; 0: fresh)
            # and which older one it must keep (the best model's)
            extra = {"state_round": self.client_rounds[pid], "keep_round": self.best_rounds[pid]}
            conf = ConfigRecord(
                {"round": rnd, **extra, **{k: v[pid] if isinstance(v, list) else v for k, v in config.items()}}
            )
            msg = Message(
                RecordDict({"global": packed[space], "config": conf}),
                message_type=kind,
                dst_node_id=nid,
                group_id=str(rnd),
            )
            self.count_bytes(message_bytes(msg), 0, kind == MessageType.TRAIN or config.get("splits") == "train")
            out.append(msg)
        return out

    def _partition(self, reply: Message) -> int:
        return self.pid_of[reply.metadata.src_node_id]

    # -- train ------------------------------------------------------------------------
    def configure_train(self, rnd: int) -> list[Message]:
        """Round ``rnd``'s train messages: to the clients the core's plan samples, with its config."""
        config = self.plan_round(rnd)
        return self._messages(MessageType.TRAIN, rnd, config, self.sampled)

    def aggregate_train(self, rnd: int, replies: Iterable[Message]) -> dict[str, float]:
        """Vet round ``rnd``'s replies, parse them and aggregate them (``ServerCore.aggregate_round``)."""
        try:
            ok = self._vet_train(rnd, self._split_replies(rnd, replies, "train"))
            updates = [self._update(p, r) for p, r in ok]
        finally:
            self._forget_parts()
        return self.aggregate_round(rnd, updates)

    def _update(self, pid: int, r: Message) -> ClientUpdate:
        c = r.content
        if "private" in c.array_records:  # privacy: the release is all a client sends
            release = {k: torch.from_numpy(v).double() for k, v in unpack_arrays(c["private"]).items()}
            return ClientUpdate(pid, dict(c["metrics"]), release=release)
        head = self._parts(r, "global", HEAD) if self.cfg.federated.head_sharing == "global" else None
        encoder = self._parts(r, "global", ENCODER) if self.info[pid]["space"] in self.encoders else None
        stats = unpack_arrays(c["stats"]) if "stats" in c.array_records else None
        snapshot = None
        if "snapshot" in c.array_records:  # DRFA
            space = self.info[pid]["space"]
            snapshot = {"head": self._parts(r, "snapshot", HEAD)} if head is not None else {}
            if encoder is not None:
                snapshot[f"encoder.{space}"] = self._parts(r, "snapshot", ENCODER)
        return ClientUpdate(pid, dict(c["metrics"]), head, encoder, stats, snapshot)

    # -- DRFA's loss query --------------------------------------------------------------
    def configure_loss_query(self, rnd: int) -> list[Message]:
        """DRFA: the snapshot model to uniformly drawn clients, for its loss on their training data."""
        pids = self.loss_query(rnd)
        if not pids:
            return []
        return self._messages(MessageType.EVALUATE, rnd, {"splits": "train"}, pids, self.snapshot_parts)

    def aggregate_loss_query(self, rnd: int, replies: Iterable[Message]) -> dict[str, float]:
        ok = self._vet_evaluate(rnd, self._split_replies(rnd, replies, "loss query"), ("train",), "loss query")
        return super().aggregate_loss_query(rnd, [(p, r.content["metrics"]) for p, r in ok])

    # -- evaluate ---------------------------------------------------------------------
    def configure_evaluate(self, rnd: int, splits: tuple[str, ...]) -> list[Message]:
        """Every training client; validation alone (during training), the cohort when there is one."""
        pids = self.cohort if self.cohort is not None and splits == ("val",) else self.training() if self.held else None
        self.asked = set(pids) if pids is not None else None
        return self._messages(MessageType.EVALUATE, rnd, {"splits": ",".join(splits)}, pids)

    def configure_adapt(self, rnd: int) -> list[Message]:
        """The held-out clients' messages: adapt a new encoder to the frozen model, then evaluate."""
        conf = {"splits": "val,test", "adapt_epochs": self.cfg.federated.holdout_epochs}
        if self.log_prior is not None:
            conf["log_prior"] = [self.log_prior] * len(self.info)
        return self._messages(MessageType.EVALUATE, rnd, conf, sorted(self.held))

    def aggregate_evaluate(self, rnd: int, replies: Iterable[Message], splits: tuple[str, ...]) -> dict:
        ok = self._vet_evaluate(rnd, self._split_replies(rnd, replies, "evaluate"), splits)
        return self.evaluation_metrics([(p, r.content["metrics"]) for p, r in ok], splits)

    def aggregate_adapt(self, rnd: int, replies: Iterable[Message]) -> dict[str, float]:
        ok = self._vet_evaluate(rnd, self._split_replies(rnd, replies, "adapt"), ("val", "test"), "adapt")
        return self.adapt_metrics([(p, r.content["metrics"]) for p, r in ok])
