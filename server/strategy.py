"""FedAnchors: GroupDRO, head/encoder aggregation and the W2 anchor fit as Strategy hooks.

Flower's ``Strategy.start`` drives the rounds; this class only overrides the hooks. Its
maths are the library's (``fedanchors.aggregate``, ``fedanchors.methods``), the same
functions the centralized mode uses.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from tqdm import tqdm

from clients.protocol import ENCODER, HEAD, message_bytes, pack, unpack, unpack_arrays
from fedanchors.aggregate import fit_anchors, space_weights, weighted_average
from fedanchors.config import Config
from fedanchors.dfr import fit_balanced, gaussian_codes, linear_head
from fedanchors.errors import FedAnchorsError, RunFailed
from fedanchors.health import check_finite, module_tensors
from fedanchors.losses import anchor_w2_by_group
from fedanchors.methods import build_method
from fedanchors.metrics import summarize
from fedanchors.models import build_anchors, build_encoder, build_head, stable_seed
from fedanchors.resume import (
    SERVER_KEYS,
    Interrupted,
    global_rng_state,
    load,
    save_atomic,
    set_global_rng_state,
    truncate_metrics,
)
from fedanchors.rundir import RunDir, versions
from fedanchors.server_opt import build_server_optimizer

log = logging.getLogger("fedanchors.server")


class FedAnchors(Strategy):
    """Server state: head, anchors, shared encoders, GroupDRO q; one client per group."""

    def __init__(
        self,
        cfg: Config,
        num_clients: int,
        num_classes: int,
        run: RunDir | None = None,
        class_sets: dict[str, list[int]] | None = None,
    ) -> None:
        self.cfg, self.run, self.num_clients = cfg, run, num_clients
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
        self.missing: list[int] = []  # per partition: rounds in a row without a reply
        self.round_ok: set[int] = set()
        self.train_record: dict[str, float] = {}
        self.best: dict = {"val_acc_wg": -1.0}
        self.bytes_sent = self.bytes_received = 0
        self.round_bytes = [0, 0]
        self.stopped, self.rounds_run = False, 0
        self.last_stats: dict[str, torch.Tensor] | None = None  # the last round's class statistics
        self.offset, self.pending, self.elapsed = 0, None, 0.0  # resume: rounds already run, their state
        self.stop_flag = None  # a fedanchors.resume.StopFlag, set by the driver
        self.dfr_summary: dict = {}
        self.t0 = time.time()
        self.bar = tqdm(
            total=cfg.federated.rounds,
            desc=f"{cfg.name} federated",
            unit="round",
            disable=None if cfg.progress else True,
        )

    # -- setup ------------------------------------------------------------------------
    def _discover(self, grid: Grid) -> None:
        """Wait for every node, then ask each which partition, group and space it is."""
        deadline = time.time() + self.cfg.federated.round_timeout
        while len(ids := list(grid.get_node_ids())) < self.num_clients:
            if time.time() > deadline:
                raise FedAnchorsError(
                    f"only {len(ids)} of {self.num_clients} clients connected within federated.round_timeout="
                    f"{self.cfg.federated.round_timeout:g} s; check the Ray resources or the SuperNodes"
                )
            time.sleep(0.1)
        if len(ids) > self.num_clients:
            raise FedAnchorsError(
                f"{len(ids)} clients connected but the config has {self.num_clients} groups; "
                "start one SuperNode per group"
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
        self.missing = [0] * len(self.info)
        self.method = build_method(self.cfg.method, self.names)
        spaces = [i["space"] for i in self.info]
        for i in self.info:
            if spaces.count(i["space"]) > 1 and i["space"] not in self.encoders:
                self.encoders[i["space"]] = build_encoder(
                    self.cfg.model, i["space"], i["shape"], self.cfg.seed, i["meta"]
                )

    def _ensure_ready(self, grid: Grid) -> None:
        """Discover the clients once; when resuming, load the saved state after that."""
        if not self.nodes:
            self._discover(grid)
            if self.pending is not None:  # the saved state, now that the groups are known
                self._load_state(self.pending)
                self.pending = None

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
            extra = {"state_dir": str(self.run.path.resolve() / "clients")} if self.run else {}
            # which of its state files the client starts from: the last round it trained (0: fresh)
            extra["state_round"] = self.client_rounds[pid]
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
                if self.run:  # the full traceback, for debugging a client
                    with open(self.run.path / "client_errors.log", "a") as fh:
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
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        server_round += self.offset
        if self.stopped:  # early stopping: Strategy.start runs on, with nothing to send
            return []
        self._ensure_ready(grid)
        gb = self.cfg.optim.group_batch  # fixed-ratio batches: a group counts by its share of a step
        counts = torch.tensor([gb[i["group"]] if gb else i["n"] for i in self.info])
        # every client is asked to train: a group that missed a round counts with its last loss
        # (a group that never reported leaves the objective at q)
        losses = self.last_losses
        if losses is not None and bool(torch.isnan(losses).any()):
            losses = None
        self.weights = self.method.weights(counts, losses, server_round - 1)
        spaces = [i["space"] for i in self.info]
        scale = space_weights(spaces, self.weights)
        shared = [s in self.encoders for s in spaces]
        config = {"encoder_scale": scale, "encoder_shared": shared}
        return self._messages(MessageType.TRAIN, server_round, config)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.offset
        if self.stopped:
            return None, None
        ok = self._split_replies(server_round, replies)
        if len(ok) < self.cfg.federated.min_clients:
            raise FedAnchorsError(
                f"round {server_round}: {len(ok)} client replies, fewer than federated.min_clients="
                f"{self.cfg.federated.min_clients}; see the client errors above (tracebacks: client_errors.log)"
            )
        pids = [p for p, _ in ok]
        self.round_ok = set(pids)
        where = f"round {server_round}"
        check = self._checker(where)
        check(
            {f"the training loss of group {self.info[p]['group']}": float(r.content["metrics"]["loss"]) for p, r in ok}
        )
        w = [float(self.weights[p]) for p in pids]
        if sum(w) <= 0:
            raise RunFailed(
                f"{where}: the clients that answered ({', '.join(self.names[p] for p in pids)}) all have weight 0 "
                f"under method {self.cfg.method.name}; no update is possible"
            )
        for p in pids:
            self.client_rounds[p] = server_round
        # shared parts: the weighted average of the clients' models, then the server optimizer's step
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
        losses = torch.full((len(self.info),), float("nan"), dtype=torch.float64)
        for p, r in ok:
            losses[p] = float(r.content["metrics"]["loss"])
        check(module_tensors([("head", self.head), *[(f"encoder[{k}]", e) for k, e in self.encoders.items()]]))
        a = self.cfg.anchors
        stats = [unpack_arrays(r.content["stats"]) for _, r in ok]
        stacked = {k: torch.from_numpy(np.stack([s[k] for s in stats])) for k in stats[0]}
        self.last_stats = stacked
        rec = {
            "loss": float(losses[pids].mean()),
            "fit": sum(float(r.content["metrics"]["fit"]) for _, r in ok) / len(ok),
        }
        check({f"the class statistics ({k})": v for k, v in stacked.items()})
        if a.lambda_fit > 0 or a.lambda_sep > 0:
            wt = torch.tensor(w) / sum(w)
            try:
                res = fit_anchors(
                    self.anchors, self.head, stacked["counts"], stacked["means"], stacked["covs"], wt, a,
                    self.cfg.optim, self.sep_gen,
                )  # fmt: skip
            except torch.linalg.LinAlgError:  # only ever on overflowing statistics
                check({"the anchor fit (an eigendecomposition failed on the clients' statistics)": float("nan")})
            rec.update({"anchor_fit": res["fit"], "sep": res["sep"]})
            with torch.no_grad():
                am, ac = self.anchors.means, self.anchors.covariances()
                per_group = anchor_w2_by_group(am, ac, stacked["counts"], stacked["means"], stacked["covs"])
            rec.update({f"w2_anchor:{self.info[p]['group']}": float(v) for p, v in zip(pids, per_group)})
        self.method.step(losses, server_round - 1)
        check(
            {
                "the anchors": torch.cat([self.anchors.means.flatten(), self.anchors.factors.flatten()]),
                "q": self.method.q,
            }
        )
        carried = losses if self.last_losses is None else torch.where(torch.isnan(losses), self.last_losses, losses)
        self.last_losses = carried
        self.train_record = rec
        arrays = pack(head=self.head.state_dict(), anchors=self.anchors.state_dict())
        return arrays, MetricRecord({k: float(v) for k, v in rec.items()})

    # -- evaluate ---------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        server_round += self.offset
        every = self.cfg.federated.eval_every
        if self.stopped or (server_round % every and server_round != self.cfg.federated.rounds):
            return []  # evaluate every ``eval_every`` rounds and after the last
        return self._messages(MessageType.EVALUATE, server_round, {})

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.offset
        if self.stopped:
            return None
        self.rounds_run = server_round
        replies = list(replies)  # empty on rounds that skip evaluation (federated.eval_every)
        val = self._record_evaluation(server_round, replies) if replies else None
        self.bar.update(1)
        for p in range(len(self.info)):
            self.missing[p] = 0 if p in self.round_ok else self.missing[p] + 1
        self._save_state(server_round)
        self._check_missing(server_round)
        self._check_stop(server_round)
        return None if val is None else MetricRecord({k: float(v) for k, v in val.items()})

    def _record_evaluation(self, server_round: int, replies: list[Message]) -> dict[str, float]:
        """Log the round's validation metrics, track the best round, apply early stopping."""
        ok = self._split_replies(server_round, replies)
        self.round_ok &= {p for p, _ in ok}
        out = {s: self._summarize(s, ok) for s in ("val", "test")}
        record = {"round": server_round, "epoch": server_round, **self.train_record, **out["val"]}
        record["eval_complete"] = len(ok) == len(self.info)  # else acc_wg, acc_all, acc_bal are null
        record.update({f"q:{n}": float(q) for n, q in zip(self.names, self.method.q)})
        record.update({"bytes_sent": self.round_bytes[0], "bytes_received": self.round_bytes[1]})
        self.round_bytes = [0, 0]
        if self.run:
            self.run.log(record)
        if out["val"]["acc_wg"] > self.best["val_acc_wg"]:
            self.best = {"val_acc_wg": out["val"]["acc_wg"], "round": server_round, "test": out["test"]}
            if self.run:
                save_atomic(self._server_state(), self.run.checkpoint("best_server.pt"))
        self.bar.set_postfix(val_acc_wg=f"{out['val']['acc_wg']:.3f}")
        patience = self.cfg.optim.patience
        if patience and server_round - self.best.get("round", 0) >= patience:
            self.stopped = True  # early stopping on validation acc_wg
        return out["val"]

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

    # -- checkpoint / resume ------------------------------------------------------------
    def _save_state(self, rnd: int) -> None:
        """Everything the next round depends on, after round ``rnd`` (clients keep their own)."""
        if not self.run:
            return
        state = {
            "round": rnd,
            "head": self.head.state_dict(),
            "anchors": self.anchors.state_dict(),
            "encoders": {k: e.state_dict() for k, e in self.encoders.items()},
            "method": self.method.state_dict(),
            "last_losses": self.last_losses,
            "sep_gen": self.sep_gen.get_state(),
            "best": self.best,
            "bytes": (self.bytes_sent, self.bytes_received, list(self.round_bytes)),
            "train_record": self.train_record,
            "last_stats": self.last_stats,
            "stopped": self.stopped,
            "elapsed": self.elapsed + time.time() - self.t0,
            "rng": global_rng_state(),
            "client_rounds": list(self.client_rounds),
            "missing": list(self.missing),
            "server_opt": self.server_opt.state_dict(),
        }
        save_atomic(state, self.run.checkpoint("server_resume.pt"))

    def _server_state(self) -> dict:
        """The server's model: head, anchors, shared encoders and q (best/last checkpoints)."""
        return {
            "head": self.head.state_dict(),
            "anchors": self.anchors.state_dict(),
            "encoders": {k: e.state_dict() for k, e in self.encoders.items()},
            "q": self.method.q,
            "client_rounds": list(self.client_rounds),
        }

    def _checker(self, where: str):
        ckpt = self.run.checkpoint("server_resume.pt") if self.run else "server_resume.pt"
        return lambda values: check_finite(values, where, self.cfg.optim.lr, str(ckpt))

    def _check_missing(self, rnd: int) -> None:
        """A group without any reply for ``federated.max_missing_rounds`` rounds in a row ends
        the run: results over the remaining groups would not be a worst-group accuracy."""
        limit = self.cfg.federated.max_missing_rounds
        lost = [p for p, m in enumerate(self.missing) if m >= limit]
        if lost:
            names = ", ".join(f"{self.info[p]['group']} (client {p})" for p in lost)
            raise RunFailed(
                f"{names} gave no reply for {limit} rounds in a row (to round {rnd}; federated.max_missing_rounds="
                f"{limit}); a worst-group accuracy without it would be over a subset of the groups. "
                f"The causes are in client_errors.log; the checkpoint after round {rnd} is kept (--resume)"
            )

    def _check_stop(self, rnd: int) -> None:
        """Ctrl-C (``stop_flag`` set by the driver): stop after this round's checkpoint."""
        if self.stop_flag is not None and self.stop_flag.requested and rnd < self.cfg.federated.rounds:
            where = self.run.path if self.run else "<run dir>"
            raise Interrupted(
                f"interrupted after round {rnd}, checkpoint written; continue with "
                f"python -m fedanchors.simulate --resume {where}"
            )

    def resume_from(self, path) -> int:
        """Load a saved server state; returns the round it was taken after."""
        state = load(path, required=SERVER_KEYS, what="server checkpoint")
        self.pending, self.offset = state, state["round"]
        self.stopped, self.best, self.rounds_run = state["stopped"], state["best"], state["round"]
        self.elapsed = state["elapsed"]
        self.bar.update(state["round"])
        if self.run:
            truncate_metrics(self.run.path, "round", state["round"])
        return state["round"]

    def _load_state(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.anchors.load_state_dict(state["anchors"])
        for k, e in self.encoders.items():
            e.load_state_dict(state["encoders"][k])
        self.method.load_state_dict(state["method"])
        self.last_losses = state["last_losses"]
        self.sep_gen.set_state(state["sep_gen"])
        self.bytes_sent, self.bytes_received, self.round_bytes = state["bytes"]
        self.round_bytes = list(self.round_bytes)
        self.train_record, self.last_stats = state["train_record"], state["last_stats"]
        self.client_rounds = [int(r) for r in state["client_rounds"]]
        self.server_opt.load_state_dict(state["server_opt"])
        self.missing = [int(m) for m in state.get("missing", [0] * len(self.info))]
        set_global_rng_state(state["rng"])

    # -- DFR ------------------------------------------------------------------------
    def run_dfr(self, grid: Grid) -> None:
        """DFR on the server: a head fitted on codes drawn group-balanced from the clients'
        class Gaussians (last round), one per C; each is evaluated by the clients, C is
        picked on validation worst-group accuracy (``fedanchors.dfr`` explains the choice)."""
        self._ensure_ready(grid)
        if self.last_stats is None:
            return
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
                self._messages(MessageType.EVALUATE, rnd, {}), timeout=cfg.federated.round_timeout
            )
            ok = self._split_replies(rnd, replies)
            results[C] = (self._summarize("val", ok), self._summarize("test", ok))
        self.head.load_state_dict(kept)
        best = max(cfg.dfr.Cs, key=lambda c: (results[c][0]["acc_wg"], -c))
        self.dfr_summary = {
            "dfr_C": best,
            **{f"dfr_val_wg:C={c}": v[0]["acc_wg"] for c, v in results.items()},
            **{f"dfr_test_{k}": v for k, v in results[best][1].items()},
        }

    def summary(self) -> None:
        log.info(
            "FedAnchors: %d clients, method %s, %d rounds",
            self.num_clients,
            self.cfg.method.name,
            self.cfg.federated.rounds,
        )

    def finish(self) -> dict:
        """The run's summary: test metrics at the round with the best validation acc_wg."""
        self.bar.close()
        if "round" not in self.best:
            raise RunFailed(
                "no evaluated round had a reply from every group, so there is no worst-group accuracy to report; "
                "see client_errors.log"
            )
        if self.run:
            save_atomic(self._server_state(), self.run.checkpoint("last_server.pt"))
        return {
            "mode": "federated",
            "best_round": self.best.get("round"),
            "rounds_run": self.rounds_run,
            "best_val_acc_wg": self.best["val_acc_wg"],
            **{f"test_{k}": v for k, v in self.best.get("test", {}).items()},
            **self.dfr_summary,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "wall_time_s": self.elapsed + time.time() - self.t0,
            "device": "cpu" if self.cfg.federated.num_gpus == 0 else "cuda",
            "versions": versions(),
        }
