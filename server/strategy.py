"""FedAnchors: the server's state and maths, and the messages of a round.

GroupDRO weights, head/encoder aggregation with the server optimizer and the W2 anchor
fit, over the library's functions (``fedanchors.aggregate``, ``fedanchors.methods``), the
same the centralized mode uses. The rounds themselves are run by ``fedanchors.loop``
through ``server.driver``; nothing here loops, checkpoints or decides when to stop.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from clients.protocol import ENCODER, HEAD, message_bytes, pack, unpack, unpack_arrays
from fedanchors.aggregate import fit_anchors, space_weights, weighted_average
from fedanchors.config import Config, anchor_update
from fedanchors.dfr import fit_balanced, gaussian_codes, linear_head
from fedanchors.errors import FedAnchorsError, RunFailed
from fedanchors.health import check_finite, module_tensors
from fedanchors.losses import anchor_w2_by_group
from fedanchors.methods import build_method
from fedanchors.metrics import summarize
from fedanchors.models import build_anchors, build_encoder, build_head, stable_seed
from fedanchors.resume import global_rng_state, set_global_rng_state
from fedanchors.server_opt import build_server_optimizer

log = logging.getLogger("fedanchors.server")


class FedAnchors:
    """Server state: head, anchors, shared encoders, GroupDRO q; one client per group.

    ``errors``: where clients' tracebacks go (``<run>/client_errors.log``), or None.
    """

    def __init__(
        self,
        cfg: Config,
        num_clients: int,
        num_classes: int,
        class_sets: dict[str, list[int]] | None = None,
        errors: Path | None = None,
    ) -> None:
        self.cfg, self.num_clients, self.errors = cfg, num_clients, errors
        self.class_sets = class_sets or {}
        m, a = cfg.model, cfg.anchors
        self.head = build_head(m, num_classes, cfg.seed)
        self.anchors = build_anchors(m.latent_dim, num_classes, a.eps, a.init_scale, cfg.seed)
        self.sep_gen = torch.Generator().manual_seed(stable_seed(cfg.seed, "server-separation"))
        f = cfg.federated
        self.server_opt = build_server_optimizer(
            f.server_opt, f.server_lr, f.server_beta1, f.server_beta2, f.server_tau
        )
        self.nodes: dict[int, int] = {}  # partition -> node id
        self.info: list[dict] = []  # per partition: group, space, shape, n
        self.encoders: dict[str, torch.nn.Module] = {}  # shared input spaces only
        self.method = None
        self.weights = torch.empty(0)
        self.last_losses: torch.Tensor | None = None  # each group's latest loss (carried over a missed round)
        self.client_rounds: list[int] = []  # per partition: the last round it trained (its state file)
        self.best_rounds: list[int] = []  # per partition: the state file of the best model (clients keep it)
        self.missing: list[int] = []  # per partition: rounds in a row without a reply
        self.round_ok: set[int] = set()
        self.bytes_sent = self.bytes_received = 0
        self.round_bytes = [0, 0]
        self.last_stats: dict[str, torch.Tensor] | None = None  # the last round's class statistics

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
        replies = [
            r for r in grid.send_and_receive(msgs, timeout=self.cfg.federated.round_timeout) if not r.has_error()
        ]
        if len(replies) < self.num_clients:
            raise FedAnchorsError(f"only {len(replies)} of {self.num_clients} clients answered the setup query")
        info = {}
        for r in replies:
            pid = int(r.content["metrics"]["partition"])
            if pid in info or not 0 <= pid < self.num_clients:
                raise FedAnchorsError(
                    f"two clients claim partition {pid} (or it is outside 0..{self.num_clients - 1}); give each "
                    "SuperNode its own --node-config partition-id"
                )
            self.nodes[pid] = r.metadata.src_node_id
            c = r.content["info"]
            info[pid] = {
                "group": c["group"],
                "space": c["space"],
                "shape": tuple(c["shape"]),
                "meta": {"vocab_size": int(c["vocab_size"])} if int(c["vocab_size"]) else {},
                "n": int(r.content["metrics"]["num-examples"]),
            }
        self.info = [info[p] for p in sorted(info)]
        self.client_rounds = [0] * len(self.info)
        self.best_rounds = [0] * len(self.info)
        self.missing = [0] * len(self.info)
        self.method = build_method(self.cfg.method, self.names)
        spaces = [i["space"] for i in self.info]
        for i in self.info:
            if spaces.count(i["space"]) > 1 and i["space"] not in self.encoders:
                self.encoders[i["space"]] = build_encoder(
                    self.cfg.model, i["space"], i["shape"], self.cfg.seed, i["meta"]
                )

    @property
    def names(self) -> list[str]:
        return [i["group"] for i in self.info]

    def _payload(self, pid: int) -> ArrayRecord:
        space = self.info[pid]["space"]
        extra = {"encoder": self.encoders[space].state_dict()} if space in self.encoders else {}
        return pack(head=self.head.state_dict(), anchors=self.anchors.state_dict(), **extra)

    def _messages(self, kind: str, rnd: int, config: dict) -> list[Message]:
        out = []
        for pid, nid in sorted(self.nodes.items()):
            # which of its state files the client starts from (the last round it trained; 0: fresh)
            # and which older one it must keep (the best model's)
            extra = {"state_round": self.client_rounds[pid], "keep_round": self.best_rounds[pid]}
            conf = ConfigRecord(
                {"round": rnd, **extra, **{k: v[pid] if isinstance(v, list) else v for k, v in config.items()}}
            )
            msg = Message(
                RecordDict({"global": self._payload(pid), "config": conf}),
                message_type=kind,
                dst_node_id=nid,
                group_id=str(rnd),
            )
            self._count(message_bytes(msg), 0)
            out.append(msg)
        return out

    def _count(self, sent: int, received: int) -> None:
        """Bytes on the wire: run totals, and since the last logged record."""
        self.bytes_sent += sent
        self.bytes_received += received
        self.round_bytes[0] += sent
        self.round_bytes[1] += received

    def _partition(self, reply: Message) -> int:
        src = reply.metadata.src_node_id
        return next(p for p, n in self.nodes.items() if n == src)

    def _split_replies(self, rnd: int, replies: Iterable[Message]) -> list[tuple[int, Message]]:
        """Successful replies in partition order; failures are logged and skipped."""
        ok = []
        for r in replies:
            self._count(0, message_bytes(r))
            if r.has_error():
                reason = (r.error.reason or "").strip().splitlines()
                if self.errors is not None:  # the full traceback, for debugging a client
                    with open(self.errors, "a") as fh:
                        fh.write(f"round {rnd} client {self._partition(r)}:\n{r.error.reason}\n\n")
                log.warning(
                    "round %d: client %d failed: %s",
                    rnd,
                    self._partition(r),
                    reason[-1].rstrip("'>") if reason else r.error.code,
                )
            else:
                ok.append((self._partition(r), r))
        return sorted(ok, key=lambda t: t[0])

    # -- train ------------------------------------------------------------------------
    def configure_train(self, rnd: int) -> list[Message]:
        """Round ``rnd``'s train messages: every client, with this round's group weights."""
        gb = self.cfg.optim.group_batch  # fixed-ratio batches: a group counts by its share of a step
        counts = torch.tensor([gb[i["group"]] if gb else i["n"] for i in self.info])
        # every client is asked to train: a group that missed a round counts with its last loss
        # (a group that never reported leaves the objective at q)
        losses = self.last_losses
        if losses is not None and bool(torch.isnan(losses).any()):
            losses = None
        self.weights = self.method.weights(counts, losses, rnd - 1)
        spaces = [i["space"] for i in self.info]
        scale = space_weights(spaces, self.weights)
        shared = [s in self.encoders for s in spaces]
        config = {"encoder_scale": scale, "encoder_shared": shared}
        return self._messages(MessageType.TRAIN, rnd, config)

    def aggregate_train(self, rnd: int, replies: Iterable[Message]) -> dict[str, float]:
        """Aggregate round ``rnd``'s replies into the server state; the round's training metrics."""
        ok = self._split_replies(rnd, replies)
        if len(ok) < self.cfg.federated.min_clients:
            raise FedAnchorsError(
                f"round {rnd}: {len(ok)} client replies, fewer than federated.min_clients="
                f"{self.cfg.federated.min_clients}; see the client errors above (tracebacks: client_errors.log)"
            )
        pids = [p for p, _ in ok]
        self.round_ok = set(pids)
        check = self._checker(f"round {rnd}")
        losses = torch.full((len(self.info),), float("nan"), dtype=torch.float64)
        for p, r in ok:
            losses[p] = float(r.content["metrics"]["loss"])
        check({f"the training loss of group {self.info[p]['group']}": float(losses[p]) for p in pids})
        w = [float(self.weights[p]) for p in pids]
        if sum(w) <= 0:
            raise RunFailed(
                f"round {rnd}: the clients that answered ({', '.join(self.names[p] for p in pids)}) all have weight 0 "
                f"under method {self.cfg.method.name}; no update is possible"
            )
        for p in pids:
            self.client_rounds[p] = rnd
        self._update_shared(ok, w)
        check(module_tensors([("head", self.head), *[(f"encoder[{k}]", e) for k, e in self.encoders.items()]]))
        stats = [unpack_arrays(r.content["stats"]) for _, r in ok]
        stacked = {k: torch.from_numpy(np.stack([s[k] for s in stats])) for k in stats[0]}
        self.last_stats = stacked
        check({f"the class statistics ({k})": v for k, v in stacked.items()})
        wt = torch.tensor(w, dtype=torch.float64) / sum(w)
        fits = torch.tensor([float(r.content["metrics"]["fit"]) for _, r in ok], dtype=torch.float64)
        # the same objective as the centralized loss: sum_g w_g CE_g over the groups that answered
        rec = {"loss": float((wt * losses[pids]).sum()), "fit": float((wt * fits).sum())}
        rec.update(self._fit_anchors(stacked, torch.tensor(w) / sum(w), pids, check))
        self.method.step(losses, rnd - 1)
        check(
            {
                "the anchors": torch.cat([self.anchors.means.flatten(), self.anchors.factors.flatten()]),
                "q": self.method.q,
            }
        )
        carried = losses if self.last_losses is None else torch.where(torch.isnan(losses), self.last_losses, losses)
        self.last_losses = carried
        return rec

    def _update_shared(self, ok: list[tuple[int, Message]], w: list[float]) -> None:
        """Head and shared encoders: the weighted average of the clients' models, then the
        server optimizer's step (``sgd`` at lr 1: the average itself)."""
        current = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        averaged = {
            f"head.{k}": v for k, v in weighted_average([unpack(r.content["global"], HEAD) for _, r in ok], w).items()
        }
        for space, enc in self.encoders.items():
            held = [(wi, r) for wi, (p, r) in zip(w, ok) if self.info[p]["space"] == space]
            if held:
                avg = weighted_average([unpack(r.content["global"], ENCODER) for _, r in held], [wi for wi, _ in held])
                current.update({f"encoder.{space}.{k}": v for k, v in enc.state_dict().items()})
                averaged.update({f"encoder.{space}.{k}": v for k, v in avg.items()})
        new = self.server_opt.step(current, averaged)
        self.head.load_state_dict({k[5:]: v for k, v in new.items() if k.startswith("head.")})
        for space, enc in self.encoders.items():
            pre = f"encoder.{space}."
            part = {k[len(pre) :]: v for k, v in new.items() if k.startswith(pre)}
            if part:
                enc.load_state_dict(part)

    def _fit_anchors(self, stacked: dict, wt: torch.Tensor, pids: list[int], check) -> dict[str, float]:
        """The server's anchor update on the clients' class moments; its metrics."""
        a = self.cfg.anchors
        if not (a.lambda_fit > 0 or a.lambda_sep > 0):
            return {}
        try:
            res = fit_anchors(
                self.anchors, self.head, stacked["counts"], stacked["means"], stacked["covs"], wt, a,
                self.cfg.optim, self.sep_gen, anchor_update(self.cfg),
            )  # fmt: skip
        except torch.linalg.LinAlgError:  # only ever on overflowing statistics
            check({"the anchor fit (an eigendecomposition failed on the clients' statistics)": float("nan")})
        rec = {"anchor_fit": res["fit"], "sep": res["sep"]}
        with torch.no_grad():
            am, ac = self.anchors.means, self.anchors.covariances()
            per_group = anchor_w2_by_group(am, ac, stacked["counts"], stacked["means"], stacked["covs"])
        return rec | {f"w2_anchor_train:{self.info[p]['group']}": float(v) for p, v in zip(pids, per_group)}

    # -- evaluate ---------------------------------------------------------------------
    def configure_evaluate(self, rnd: int, splits: tuple[str, ...]) -> list[Message]:
        return self._messages(MessageType.EVALUATE, rnd, {"splits": ",".join(splits)})

    def aggregate_evaluate(self, rnd: int, replies: Iterable[Message], splits: tuple[str, ...]) -> dict:
        """Per split, the group-wise metrics over the clients' counts (NaN worst-group and
        overall accuracies unless every group answered)."""
        ok = self._split_replies(rnd, replies)
        self.round_ok &= {p for p, _ in ok}
        out = {s: self._summarize(s, ok) for s in splits}
        out["complete"] = len(ok) == len(self.info)
        return out

    def _summarize(self, split: str, ok: list[tuple[int, Message]]) -> dict[str, float]:
        G, C = len(self.info), self.anchors.num_classes
        correct = torch.zeros(G, C, dtype=torch.int64)
        total = torch.zeros(G, C, dtype=torch.int64)
        loss = torch.zeros(G, dtype=torch.float64)
        for p, r in ok:
            m = r.content["metrics"]
            correct[p] = torch.tensor(m[f"{split}_correct"])
            total[p] = torch.tensor(m[f"{split}_total"])
            loss[p] = float(m[f"{split}_loss"])
        return summarize(self.names, correct, total, loss, self.class_sets)

    def record_extras(self) -> dict[str, float]:
        """q and the bytes since the last record."""
        out = {f"q:{n}": float(q) for n, q in zip(self.names, self.method.q)}
        out.update({"bytes_sent": self.round_bytes[0], "bytes_received": self.round_bytes[1]})
        self.round_bytes = [0, 0]
        return out

    def count_missing(self) -> None:
        for p in range(len(self.info)):
            self.missing[p] = 0 if p in self.round_ok else self.missing[p] + 1

    def missing_error(self, rnd: int) -> RunFailed | None:
        """A group without any reply for ``federated.max_missing_rounds`` rounds in a row ends
        the run: results over the remaining groups would not be a worst-group accuracy."""
        limit = self.cfg.federated.max_missing_rounds
        lost = [p for p, m in enumerate(self.missing) if m >= limit]
        if not lost:
            return None
        names = ", ".join(f"{self.info[p]['group']} (client {p})" for p in lost)
        return RunFailed(
            f"{names} gave no reply for {limit} rounds in a row (to round {rnd}; federated.max_missing_rounds="
            f"{limit}); a worst-group accuracy without it would be over a subset of the groups. "
            f"The causes are in client_errors.log; the checkpoint after round {rnd} is kept (--resume)"
        )

    # -- state ----------------------------------------------------------------------------
    def model_state(self) -> dict:
        """The server's model: head, anchors, shared encoders, q, the class statistics it was
        fitted on, and which state file holds each client's private encoder."""
        return {
            "head": self.head.state_dict(),
            "anchors": self.anchors.state_dict(),
            "encoders": {k: e.state_dict() for k, e in self.encoders.items()},
            "q": self.method.q,
            "stats": self.last_stats,
            "client_rounds": list(self.client_rounds),
        }

    def load_model_state(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.anchors.load_state_dict(state["anchors"])
        for k, e in self.encoders.items():
            e.load_state_dict(state["encoders"][k])
        self.last_stats = state["stats"]
        self.client_rounds = [int(r) for r in state["client_rounds"]]

    def resume_state(self) -> dict:
        """Everything the next round depends on (clients keep their own state)."""
        return {
            "head": self.head.state_dict(),
            "anchors": self.anchors.state_dict(),
            "encoders": {k: e.state_dict() for k, e in self.encoders.items()},
            "method": self.method.state_dict(),
            "last_losses": self.last_losses,
            "sep_gen": self.sep_gen.get_state(),
            "bytes": (self.bytes_sent, self.bytes_received, list(self.round_bytes)),
            "last_stats": self.last_stats,
            "rng": global_rng_state(),
            "client_rounds": list(self.client_rounds),
            "best_rounds": list(self.best_rounds),
            "missing": list(self.missing),
            "server_opt": self.server_opt.state_dict(),
        }

    def load_resume_state(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.anchors.load_state_dict(state["anchors"])
        for k, e in self.encoders.items():
            e.load_state_dict(state["encoders"][k])
        self.method.load_state_dict(state["method"])
        self.last_losses = state["last_losses"]
        self.sep_gen.set_state(state["sep_gen"])
        self.bytes_sent, self.bytes_received, self.round_bytes = state["bytes"]
        self.round_bytes = list(self.round_bytes)
        self.last_stats = state["last_stats"]
        self.client_rounds = [int(r) for r in state["client_rounds"]]
        self.best_rounds = [int(r) for r in state["best_rounds"]]
        self.server_opt.load_state_dict(state["server_opt"])
        self.missing = [int(m) for m in state["missing"]]
        set_global_rng_state(state["rng"])

    def _checker(self, where: str):
        return lambda values: check_finite(values, where, self.cfg.optim.lr, "checkpoints/server_resume.pt")

    # -- DFR ------------------------------------------------------------------------
    def run_dfr(self, grid: Grid) -> dict:
        """DFR on the server: a head fitted on codes drawn group-balanced from the clients'
        class Gaussians, one per C; each is evaluated by the clients, C is picked on
        validation worst-group accuracy (``fedanchors.dfr`` explains the choice)."""
        if self.last_stats is None:
            return {}
        cfg = self.cfg
        st = self.last_stats
        seed = stable_seed(cfg.seed, "dfr")
        z, y, g = gaussian_codes(st["counts"], st["means"], st["covs"], cfg.dfr.samples_per_group, seed)
        one = dataclasses.replace(cfg.dfr, subsets=1)  # the draw is balanced already
        kept, rnd, results = copy.deepcopy(self.head.state_dict()), cfg.federated.rounds + 1, {}
        for C in cfg.dfr.Cs:
            W, b = fit_balanced(z, y, g, C, one, self.anchors.num_classes, seed)
            self.head.load_state_dict(linear_head(W, b).state_dict())
            replies = grid.send_and_receive(
                self.configure_evaluate(rnd, ("val", "test")), timeout=cfg.federated.round_timeout
            )
            out = self.aggregate_evaluate(rnd, replies, ("val", "test"))
            results[C] = (out["val"], out["test"])
        self.head.load_state_dict(kept)
        best = max(cfg.dfr.Cs, key=lambda c: (results[c][0]["acc_wg"], -c))
        return {
            "dfr_C": best,
            **{f"dfr_val_wg:C={c}": v[0]["acc_wg"] for c, v in results.items()},
            **{f"dfr_test_{k}": v for k, v in results[best][1].items()},
        }
