"""The federated server's state and maths: a round planned and its replies aggregated.

GroupDRO weights, head/encoder aggregation with the server optimizer and the W2 anchor fit,
over the library's functions (``fedanchors.aggregate``, ``fedanchors.methods``), the same the
centralized mode uses. Nothing here knows a message: ``server.strategy`` builds messages from
``plan_round`` and parses replies into ``ClientUpdate`` s; the rounds are run by
``fedanchors.loop``; nothing here loops, checkpoints or decides when to stop.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedanchors import dynamics
from fedanchors.aggregate import AGGREGATIONS, AggregationOptions, combine_parts, fit_anchors
from fedanchors.config import Config, anchor_update, anchors_used
from fedanchors.errors import FedAnchorsError, RunFailed
from fedanchors.fedserver.analysis import RoundAnalysis
from fedanchors.fedserver.evaluation import EvaluationCore
from fedanchors.fedserver.private import PrivateMixin
from fedanchors.fedserver.state import StateMixin
from fedanchors.fedserver.units import UnitsMixin
from fedanchors.health import check_finite, flat_params, module_tensors, moved
from fedanchors.losses import anchor_w2_by_group, log_prior
from fedanchors.methods.qfedavg import qfedavg_step
from fedanchors.models import build_anchors, build_encoder, build_head, stable_seed
from fedanchors.moments import pool_moments
from fedanchors.population import drop_out, eval_cohort, held_out, sample_clients
from fedanchors.server_opt import build_server_optimizer
from fedanchors.train import lr_config


@dataclass
class ClientUpdate:
    """One vetted training reply, parsed: the client's scalars (``loss``, ``fit``, the Jacobian
    norms when asked), the parts it sends back (state dicts; None when not shared) and its
    class statistics (``counts``, ``means``, ``covs`` arrays; None without anchors)."""

    pid: int
    metrics: dict
    head: dict | None = None
    encoder: dict | None = None
    stats: dict | None = field(default=None, repr=False)
    snapshot: dict | None = field(default=None, repr=False)  # DRFA: {part: state} at the snapshot step
    release: dict | None = field(default=None, repr=False)  # privacy: the client's blocks (fedanchors.privacy)


class ServerCore(EvaluationCore, StateMixin, UnitsMixin, PrivateMixin):
    """Server state: head, anchors, shared encoders, GroupDRO q, and each client's bookkeeping.

    ``setup(info)`` takes what every client said of itself (partition order); ``plan_round``
    and ``aggregate_round`` are a training round's two halves. ``errors``: where clients'
    tracebacks go (``<run>/client_errors.log``), or None.
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
        self.anchors = build_anchors(m.latent_dim, num_classes, a.eps, a.init_scale, cfg.seed, a.covariance)
        self.sep_gen = torch.Generator().manual_seed(stable_seed(cfg.seed, "server-separation"))
        f = cfg.federated
        self.server_opt = build_server_optimizer(
            f.server_opt, f.server_lr, f.server_beta1, f.server_beta2, f.server_tau
        )
        self.info: list[dict] = []  # per partition (client): group, gi (group index), space, shape, n
        self.cgroup: list[int] = []  # per partition: its group's index
        self.held: set[int] = set()  # partitions held out of training (new clients at test time)
        self.cohort: list[int] | None = None  # federated.eval_clients: who validates during training
        self.asked: set[int] | None = None  # who the last evaluation asked (None: every training client)
        self.names: list[str] = []  # the groups, in index order
        self.sampled: list[int] = []  # this round's clients (sampled, minus dropouts)
        self.encoders: dict[str, torch.nn.Module] = {}  # shared input spaces only
        self.method = None
        self.log_prior: list[float] | None = None
        self.weights = torch.empty(0)  # per partition this round (0 when not asked)
        self.group_weights = torch.empty(0)
        self.sampled_groups: set[int] = set()
        self.last_losses: torch.Tensor | None = None  # each group's latest loss (carried over a missed round)
        self.client_rounds: list[int] = []  # per partition: the last round it trained (its state file)
        self.best_rounds: list[int] = []  # per partition: the state file of the best model (clients keep it)
        self.missing: list[int] = []  # per group: rounds in a row without a reply
        self.round_ok: set[int] = set()
        self.bytes_sent = self.bytes_received = self.bytes_train = 0
        self.round_bytes = [0, 0, 0]  # sent, received, of which training traffic: since the last record
        self.last_stats: dict[str, torch.Tensor] | None = None  # the last round's class statistics
        self.analysis: RoundAnalysis | None = None  # the gap analyses (fedanchors.fedserver.analysis)
        self.scales: dict[int, float] = {}  # this round's encoder gradient scale per partition

    # -- setup ------------------------------------------------------------------------
    def setup(self, info: list[dict]) -> None:
        """Take every client's self-description (partition order): groups, held-out clients,
        the method, the shared encoders."""
        self.info = info
        self.cgroup = [i["gi"] for i in self.info]
        self.held = held_out(self.cgroup, self.cfg.federated.holdout, self.cfg.seed)
        self.fix_population()
        self.cohort = eval_cohort(self.cgroup, self.held, self.cfg.federated.eval_clients, self.cfg.seed)
        self.names = [next(i["group"] for i in self.info if i["gi"] == g) for g in sorted(set(self.cgroup))]
        self.client_rounds = [0] * len(self.info)
        self.best_rounds = [0] * len(self.info)
        self.missing = [0] * len(self.names)  # per group
        self.setup_units()
        self.log_prior = self._log_prior()
        self.analysis = RoundAnalysis(self.cfg, self.names) if dynamics.enabled(self.cfg) else None
        for i in self.info:  # each space's holders counted once, when its first one comes (not N^2)
            sharing = self.cfg.federated.encoder_sharing == "space"
            if sharing and i["space"] not in self.encoders and self.spaces.count(i["space"]) > 1:
                self.encoders[i["space"]] = build_encoder(
                    self.cfg.model, i["space"], i["shape"], self.cfg.seed, i["meta"]
                )

    def _log_prior(self) -> list[float] | None:
        """The long-tail losses' prior (``loss.name``): the training clients' summed class counts."""
        if self.cfg.loss.name == "ce":
            return None
        counts = torch.tensor([self.info[p]["class_counts"] for p in self.training()]).sum(0)
        return log_prior(counts).tolist()

    def members(self, g: int, among=None) -> list[int]:
        """Training partitions of group ``g`` (among ``among`` when given); held-out ones never count."""
        return [p for p, x in enumerate(self.cgroup) if x == g and (among is None or p in among) and p not in self.held]

    def training(self) -> list[int]:
        """The partitions that train (all but the held-out new clients)."""
        return list(self._training)

    def shared_parts(self, pid: int) -> dict[str, dict]:
        """What client ``pid`` is sent: its space's shared encoder, the global head, the anchors."""
        space = self.info[pid]["space"]
        parts = {"encoder": self.encoders[space].state_dict()} if space in self.encoders else {}
        if self.cfg.federated.head_sharing == "global":
            parts["head"] = self.head.state_dict()
        if anchors_used(self.cfg):
            parts["anchors"] = self.anchors.state_dict()
        return parts

    def count_bytes(self, sent: int, received: int, train: bool = True) -> None:
        """Bytes on the wire: run totals, and since the last logged record. ``train``: the
        traffic the method needs to train (its rounds and loss queries), not evaluation's."""
        used = (sent + received) if train else 0
        self.bytes_sent, self.bytes_received, self.bytes_train = (
            self.bytes_sent + sent, self.bytes_received + received, self.bytes_train + used)  # fmt: skip
        self.round_bytes = [self.round_bytes[0] + sent, self.round_bytes[1] + received, self.round_bytes[2] + used]

    # -- train ------------------------------------------------------------------------
    def plan_round(self, rnd: int) -> dict:
        """Round ``rnd``'s plan: the group weights (GroupDRO's q or the method's), the sampled
        clients (``federated.clients_per_round``, minus seeded dropouts) in ``self.sampled``, and
        the per-client config (a list holds one value per partition) the clients are told."""
        f = self.cfg.federated
        # a group that missed a round counts with its last loss (one that never reported leaves the objective at q)
        drawn = self.plan_weights(rnd)
        if self.draws is None:
            picked = sample_clients(self._pool_groups, f.clients_per_round, f.sampling, self.cfg.seed, rnd)
            drawn = [self._training[i] for i in picked]
        self.sampled = drop_out(drawn, f.dropout, self.cfg.seed, rnd)
        self.sampled_groups = {self.cgroup[p] for p in drawn}
        w = self.partition_weights(self.sampled)
        self.weights = torch.zeros(len(self.info), dtype=torch.float64)
        if w:
            self.weights[list(w)] = torch.tensor(list(w.values()), dtype=torch.float64)
        scale = self.encoder_scales(self.spaces)
        shared = [s in self.encoders for s in self.spaces]
        self.scales = dict(enumerate(scale))
        config = {"encoder_scale": scale, "encoder_shared": shared} | lr_config(self.cfg.optim, rnd, f.rounds)
        if self.cfg.analysis.jacobian and dynamics.due(self.cfg, rnd):
            config["analysis_jacobian"] = True
        if self.log_prior is not None:
            config["log_prior"] = [self.log_prior] * len(self.info)
        if self.cfg.privacy.enabled and self.cfg.privacy.noise == "local":
            config["privacy_std"] = self.privacy_std  # each client noises its own release
        if (at := self.snapshot_at(rnd)) is not None:
            config["snapshot_at"] = at
        return config

    def aggregate_round(self, rnd: int, ok: list[ClientUpdate]) -> dict[str, float]:
        """Aggregate round ``rnd``'s vetted updates into the server state; the round's training metrics."""
        if len(ok) < self.cfg.federated.min_clients:
            raise FedAnchorsError(
                f"round {rnd}: {len(ok)} client replies, fewer than federated.min_clients="
                f"{self.cfg.federated.min_clients}; see the client errors and rejected replies above "
                "(details: client_errors.log)"
            )
        pids = [u.pid for u in ok]
        check = self._checker(f"round {rnd}")
        answered = sorted({self.cgroup[p] for p in pids})
        self.round_ok = set(answered)
        est, losses, fits = self._round_losses(rnd, ok, answered)
        gw = self.group_weights[answered].double()
        if float(gw.sum()) <= 0:
            raise RunFailed(
                f"round {rnd}: the groups that answered ({', '.join(self.names[g] for g in answered)}) all have "
                f"weight 0 under method {self.cfg.method.name}; no update is possible"
            )
        if self.analysis is not None:  # the gap analyses, on the model the round started from
            sd = (
                self._group_stats(ok, answered) if anchors_used(self.cfg) and self.cfg.analysis.static_dynamic else None
            )
            self.analysis.observe(rnd, self, ok, losses, self.scales, sd)
        cw = self.partition_weights(pids)  # the method's weight of each answering client
        w = [cw[p] for p in pids]
        for p in pids:
            self.client_rounds[p] = rnd
        before = flat_params(self.aggregated_parts())
        norms = self._update_shared(ok, w, losses, est)
        movement = moved(before, self.aggregated_parts())
        if self.draws is not None:
            self.average_snapshots(ok, w)
        check(module_tensors(self.aggregated_parts().items()))
        if est is not None:
            stacked = self.private_stats(est, answered)
        else:
            stacked = self._group_stats(ok, answered) if anchors_used(self.cfg) else None
        if stacked is not None:
            self.last_stats = stacked
            check({f"the class statistics ({k})": v for k, v in stacked.items()})
        wt = gw / gw.sum()
        # the same objective as the centralized loss: sum_g w_g CE_g over the groups that answered
        rec = {"loss": float((wt * losses[answered]).sum())} | movement
        if est is None:  # a private client's fit is not sent
            rec["fit"] = float((wt * fits[answered]).sum())
        if norms:  # the clients' update norms before any bound: what federated.max_update_norm is set against
            rec |= {"update_norm_median": statistics.median(norms), "update_norm_max": max(norms)}
        gl = [float(self.group_weights[g]) for g in answered]
        if stacked is not None:
            rec.update(self._fit_anchors(stacked, torch.tensor(gl) / sum(gl), answered, check))
        unit = self.step_method(losses, ok, pids, rnd)
        check(
            {
                "the anchors": torch.cat([self.anchors.means.flatten(), self.anchors.factors.flatten()]),
                "q": self.method.q,
            }
        )
        self.last_losses = unit if self.last_losses is None else torch.where(torch.isnan(unit), self.last_losses, unit)
        return rec

    def _round_losses(self, rnd: int, ok: list[ClientUpdate], answered: list[int]):
        """(the private estimates or None, each group's loss and fit); under privacy the losses
        are the groups' noisy estimates and no fit is sent (zeros, left out of the record)."""
        if not self.cfg.privacy.enabled:
            return None, *self._group_losses(ok, answered)
        est = self.private_groups(rnd, ok, answered)
        losses = torch.full((len(self.names),), float("nan"), dtype=torch.float64)
        for g, e in est.items():
            losses[g] = float(e["loss"])
        return est, losses, torch.zeros_like(losses)

    def _group_losses(self, ok: list[ClientUpdate], answered: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each group's loss and fit (G,): the example-weighted mean of its answering clients'
        (vetted: finite, >= 0); NaN for a group without a reply."""
        G, pids = len(self.names), {u.pid for u in ok}
        losses = torch.full((G,), float("nan"), dtype=torch.float64)
        fits = torch.full((G,), float("nan"), dtype=torch.float64)
        metric = {u.pid: u.metrics for u in ok}
        for g in answered:
            mine = self.members(g, pids)
            n = [float(self.info[p]["n"]) for p in mine]
            for out, key in ((losses, "loss"), (fits, "fit")):
                v = [float(metric[p][key]) for p in mine]
                out[g] = sum(k * x for k, x in zip(n, v)) / sum(n) if len(mine) > 1 else v[0]
        return losses, fits

    def _group_stats(self, ok: list[ClientUpdate], answered: list[int]) -> dict[str, torch.Tensor]:
        """Each answering group's class moments pooled over its clients', stacked in group order."""
        per_client = {u.pid: u.stats for u in ok}
        pooled = [
            pool_moments([tuple(torch.from_numpy(per_client[p][k]) for k in ("counts", "means", "covs"))
                          for p in self.members(g, set(per_client))])
            for g in answered
        ]  # fmt: skip
        return {k: torch.stack([x[i] for x in pooled]) for i, k in enumerate(("counts", "means", "covs"))}

    def _update_shared(self, ok: list[ClientUpdate], w: list[float], losses: torch.Tensor, est=None) -> list[float]:
        """Head and shared encoders from the updates (``fedanchors.aggregate.combine_parts``:
        the norm bound, the aggregation rule; q-FFL: the q-FedAvg step), then the server
        optimizer's step (``sgd`` at lr 1: the combination itself). Returns each client's update
        norm (before the bound)."""
        f = self.cfg.federated
        current = {"head": self.head.state_dict()} if f.head_sharing == "global" else {}  # local heads stay home
        current.update({f"encoder.{space}": enc.state_dict() for space, enc in self.encoders.items()})
        if est is not None:  # privacy: only the groups' noisy mean updates
            combined, norms = self.private_combined(current, est, sorted(est)), []
        else:
            clients = []
            for u in ok:
                mine = {"head": u.head} if "head" in current else {}
                if self.info[u.pid]["space"] in self.encoders:
                    mine[f"encoder.{self.info[u.pid]['space']}"] = u.encoder
                clients.append(mine)
            opts = AggregationOptions(f.trim_fraction, f.krum_byzantine)
            rule = AGGREGATIONS.get(f.aggregation)
            combined, norms = combine_parts(current, clients, w, rule, opts, f.max_update_norm)
            if combined and getattr(self.method, "qfedavg", False):
                combined = self._qfedavg(current, ok, clients, losses)
        if not combined:
            return norms
        new = self.server_opt.step(
            {f"{n}.{k}": v for n in combined for k, v in current[n].items()},
            {f"{n}.{k}": v for n, sd in combined.items() for k, v in sd.items()},
        )
        if "head" in combined:
            self.head.load_state_dict({k[5:]: v for k, v in new.items() if k.startswith("head.")})
        for space, enc in self.encoders.items():
            pre = f"encoder.{space}."
            part = {k[len(pre) :]: v for k, v in new.items() if k.startswith(pre)}
            if part:
                enc.load_state_dict(part)
        return norms

    def _qfedavg(self, current: dict, ok: list[ClientUpdate], clients: list[dict], losses: torch.Tensor) -> dict:
        """q-FFL's server step (``fedanchors.methods.qfedavg``) over the method's units: each
        answering client, or each group's example-weighted mean of its clients' parts."""
        n = [float(self.info[u.pid]["n"]) for u in ok]
        if self.by_client:
            units, unit_loss, shares = clients, [float(u.metrics["loss"]) for u in ok], n
        else:
            units, unit_loss, shares = [], [], []
            for g in sorted({self.cgroup[u.pid] for u in ok}):
                mine = [i for i, u in enumerate(ok) if self.cgroup[u.pid] == g]
                total = sum(n[i] for i in mine)
                parts = {}
                for name in clients[mine[0]]:
                    holders = [i for i in mine if name in clients[i]]
                    parts[name] = {
                        k: sum(n[i] / total * clients[i][name][k].double() for i in holders)
                        for k in clients[mine[0]][name]
                    }
                units.append(parts)
                unit_loss.append(float(losses[g]))
                shares.append(total)
        p = [s / sum(shares) for s in shares]
        c = self.cfg.method
        return qfedavg_step(current, units, unit_loss, p, c.q_fair, c.lipschitz or 1.0 / self.cfg.optim.lr)

    def _fit_anchors(self, stacked: dict, wt: torch.Tensor, groups: list[int], check) -> dict[str, float]:
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
        return rec | {f"w2_anchor_train:{self.names[g]}": float(v) for g, v in zip(groups, per_group)}

    def record_extras(self) -> dict[str, float]:
        """q and the bytes since the last record."""
        out = {f"q:{n}": float(q) for n, q in zip(self.names, self.method.q)}
        sent, received, train = self.round_bytes
        out.update({"bytes_sent": sent, "bytes_received": received, "bytes_train": train})
        self.round_bytes = [0, 0, 0]
        return out

    def count_missing(self) -> None:
        """Rounds in a row in which a group had clients asked and none answered."""
        for g in range(len(self.names)):
            if g in self.round_ok:
                self.missing[g] = 0
            elif g in self.sampled_groups:
                self.missing[g] += 1

    def missing_error(self, rnd: int) -> RunFailed | None:
        """A group without any reply for ``federated.max_missing_rounds`` rounds in a row ends
        the run: results over the remaining groups would not be a worst-group accuracy."""
        limit = self.cfg.federated.max_missing_rounds
        lost = [g for g, m in enumerate(self.missing) if m >= limit]
        if not lost:
            return None
        names = ", ".join(
            f"{self.names[g]} (client{'s' if len(self.members(g)) > 1 else ''} {', '.join(map(str, self.members(g)))})"
            for g in lost
        )
        return RunFailed(
            f"{names} gave no reply for {limit} rounds in a row (to round {rnd}; federated.max_missing_rounds="
            f"{limit}); a worst-group accuracy without it would be over a subset of the groups. "
            f"The causes are in client_errors.log; the checkpoint after round {rnd} is kept (--resume)"
        )

    def _checker(self, where: str):
        return lambda values: check_finite(values, where, self.cfg.optim.lr, "checkpoints/server_resume.pt")
