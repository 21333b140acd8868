"""What the method weights: groups, or clients (``method.level``), and the methods that act on
the round itself (DRFA's sampling, snapshot and loss query). A mixin of ``ServerCore``.

At ``method.level: group`` (the default) the method's units are the groups: its weight w_g is
split over a group's answering clients by their example counts. At ``client`` each training
client is a unit with its own weight (AFL, q-FFL and DRFA define theirs over devices); a
group's weight is then the sum of its clients'. DRFA (Deng, Kamani, Mahdavi, NeurIPS 2020)
draws the round's clients in proportion to lambda (``federated.clients_per_round`` draws with
replacement; a unit drawn c times weighs c / draws in the average, so the average is the
paper's uniform mean over the draws), asks each for its model at a seeded random fraction of
its local steps, averages those snapshots, and updates lambda from their losses on a
uniformly drawn set of clients (``method.loss_clients``).
"""

from __future__ import annotations

import math

import torch

from fedanchors.aggregate import space_weights
from fedanchors.methods import build_method
from fedanchors.models import stable_seed
from fedanchors.population import split_weights


class UnitsMixin:
    """The method's units and per-partition weights (state: ``units``, ``unit_of``, ``draws``)."""

    def fix_population(self) -> None:
        """What a round reads of the population, fixed after setup (the training partitions,
        their groups, every partition's input space, the training examples): made once here,
        not walked over all clients every round."""
        self._training = [p for p in range(len(self.cgroup)) if p not in self.held]
        self._pool_groups = [self.cgroup[p] for p in self._training]
        self.spaces = [i["space"] for i in self.info]
        self._train_examples = sum(self.info[p]["n"] for p in self._training)

    def setup_units(self) -> None:
        """The method over groups or, at ``method.level: client``, over the training clients."""
        if self.cfg.method.level == "client":
            self.units = [[p] for p in self.training()]
            names = [f"client{p}" for p in self.training()]
        else:
            self.units = [self.members(g) for g in range(len(self.names))]
            names = list(self.names)
        self.unit_of = {p: u for u, ms in enumerate(self.units) for p in ms}
        self._unit_counts = self._count_units()  # fixed after setup: counted once
        self.method = build_method(self.cfg.method, names)
        self.draws: dict[int, float] | None = None  # DRFA: this round's clients and their weight
        self.snapshot: dict | None = None

    def encoder_scales(self, spaces: list[str]) -> list[float]:
        """Each partition's encoder gradient scale: 1 under ``method.encoder_weighting: own`` (an
        encoder at full rate on its holders' weighted mean, which the aggregation takes), else
        the total weight of that encoder's holders (the client's own weight for a private one)."""
        if self.cfg.method.encoder_weighting == "own":
            return [1.0] * len(spaces)
        if self.cfg.federated.encoder_sharing == "client":
            return self.weights.tolist()
        return space_weights(spaces, self.weights)

    def step_method(self, losses: torch.Tensor, ok: list, pids: list[int], rnd: int) -> torch.Tensor:
        """The method's step on round ``rnd``'s per-unit losses (its group sizes and eta's share
        of an epoch set first); returns those losses."""
        unit = self.losses_by_unit(losses, ok)
        self.method.sizes, self.method.rate = self.unit_counts(), self.round_share(pids)
        self.method.step(unit, rnd - 1)
        return unit

    def round_share(self, pids: list[int]) -> float:
        """``method.eta_unit: epoch``: the examples these clients trained on this round over the
        training set's size (1 under ``update``), so eta means a pass over the data in both modes."""
        if self.cfg.method.eta_unit == "update":
            return 1.0
        f = self.cfg.federated
        step = f.local_steps * self.cfg.optim.batch_size
        done = sum(step if f.local_steps else f.local_epochs * self.info[p]["n"] for p in pids)
        return done / self._train_examples

    @property
    def by_client(self) -> bool:
        return self.cfg.method.level == "client"

    def unit_counts(self) -> torch.Tensor:
        """Each unit's size: a group's examples (or its share of a fixed-ratio step), a client's
        examples (counted once at setup)."""
        return self._unit_counts.clone()

    def _count_units(self) -> torch.Tensor:
        gb = self.cfg.optim.group_batch
        if self.by_client:
            return torch.tensor([self.info[ms[0]]["n"] for ms in self.units])
        return torch.tensor(
            [gb[n] if gb else sum(self.info[p]["n"] for p in self.units[g]) for g, n in enumerate(self.names)]
        )

    def unit_losses(self) -> torch.Tensor | None:
        """What the method reads: the units' latest losses. Per group, None until every group has
        one (GroupDRO's rule: a group that never reported leaves the objective at q); per
        client, NaN for one not seen yet (the methods weigh those without a loss)."""
        losses = self.last_losses
        if losses is None or (not self.by_client and bool(torch.isnan(losses).any())):
            return None
        return losses

    def plan_weights(self, rnd: int) -> list[int]:
        """The method's weights for round ``rnd`` (per unit, and summed per group) and the
        clients it asks (before dropouts)."""
        self.unit_weights = self.method.weights(self.unit_counts(), self.unit_losses(), rnd - 1)
        G = len(self.names)
        if self.by_client:
            gw = torch.zeros(G, dtype=torch.float64)
            for u, ms in enumerate(self.units):
                gw[self.cgroup[ms[0]]] += self.unit_weights[u]
            self.group_weights = gw
        else:
            self.group_weights = self.unit_weights
        self.draws = self._draw(rnd) if getattr(self.method, "draws_clients", False) else None
        return sorted(self.draws) if self.draws is not None else []

    def _draw(self, rnd: int) -> dict[int, float]:
        """DRFA's sampling: ``clients_per_round`` draws of a unit with probability lambda (with
        replacement); a group drawn c times sends c of its clients (at most all), chosen uniformly.
        Each client's weight: its unit's share of the draws (a group's split by example counts)."""
        m = self.cfg.federated.clients_per_round or len(self.training())
        g = torch.Generator().manual_seed(stable_seed(self.cfg.seed, "drfa-draw", rnd))
        lam = self.method.q.clamp_min(0)
        hits = torch.bincount(torch.multinomial(lam, m, replacement=True, generator=g), minlength=len(self.units))
        out: dict[int, float] = {}
        for u, c in enumerate(hits.tolist()):
            if c == 0:
                continue
            ms = self.units[u]
            chosen = [ms[i] for i in torch.randperm(len(ms), generator=g)[: min(c, len(ms))].tolist()]
            n = sum(self.info[p]["n"] for p in chosen)
            out.update({p: c / m * self.info[p]["n"] / n for p in chosen})
        return out

    def partition_weights(self, pids: list[int]) -> dict[int, float]:
        """The method's weight of each client in ``pids`` (this round's sampled or answering)."""
        if self.draws is not None:
            return {p: self.draws[p] for p in pids if p in self.draws}
        if self.by_client:
            return {p: float(self.unit_weights[self.unit_of[p]]) for p in pids}
        return split_weights(self.group_weights, self.cgroup, [i["n"] for i in self.info], sorted(pids))

    def losses_by_unit(self, group_losses: torch.Tensor, ok) -> torch.Tensor:
        """This round's loss per unit (NaN where none answered)."""
        if not self.by_client:
            return group_losses
        out = torch.full((len(self.units),), float("nan"), dtype=torch.float64)
        for u in ok:
            out[self.unit_of[u.pid]] = float(u.metrics["loss"])
        return out

    # -- DRFA ---------------------------------------------------------------------------
    def snapshot_at(self, rnd: int) -> float | None:
        """DRFA: the fraction of its local steps after which each client keeps a snapshot
        (uniform in (0, 1], seeded by the round; the same for every client of the round)."""
        if not getattr(self.method, "draws_clients", False):
            return None
        g = torch.Generator().manual_seed(stable_seed(self.cfg.seed, "drfa-snapshot", rnd))
        return 1.0 - float(torch.rand(1, generator=g))

    def average_snapshots(self, ok, w: list[float]) -> None:
        """The snapshot model: the clients' snapshots averaged with their round weights."""
        total = sum(w)
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for u, wi in zip(ok, w):
            for name, sd in (u.snapshot or {}).items():
                acc = parts.setdefault(name, {})
                for k, v in sd.items():
                    acc[k] = acc.get(k, 0) + (wi / total) * v.double() if v.is_floating_point() else v
        self.snapshot = parts

    def loss_query(self, rnd: int) -> list[int]:
        """DRFA: the clients asked for the snapshot's training loss (uniform, seeded), or []."""
        if self.snapshot is None or not getattr(self.method, "draws_clients", False):
            return []
        pool = self.training()
        k = self.cfg.method.loss_clients or self.cfg.federated.clients_per_round or len(pool)
        g = torch.Generator().manual_seed(stable_seed(self.cfg.seed, "drfa-loss", rnd))
        return sorted(pool[i] for i in torch.randperm(len(pool), generator=g)[: min(k, len(pool))].tolist())

    def snapshot_parts(self, pid: int) -> dict:
        """What a loss-query client is sent: the snapshot's head and its space's encoder."""
        parts = dict(self.shared_parts(pid))
        space = self.info[pid]["space"]
        if "head" in self.snapshot and "head" in parts:
            parts["head"] = {k: v.float() if v.is_floating_point() else v for k, v in self.snapshot["head"].items()}
        if f"encoder.{space}" in self.snapshot:
            sd = self.snapshot[f"encoder.{space}"]
            parts["encoder"] = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
        return parts

    def aggregate_loss_query(self, rnd: int, results: list[tuple[int, dict]]) -> dict[str, float]:
        """DRFA's lambda step from the snapshot's losses on the queried clients: v_u is a
        client's mean training loss (scaled by clients / queried at client level, the paper's
        unbiased estimate) or a group's example-weighted mean over its queried clients (0 for a
        unit not queried); lambda <- Proj_Lambda(lambda + eta v)."""
        v = torch.zeros(len(self.units), dtype=torch.float64)
        num = torch.zeros(len(self.units), dtype=torch.float64)
        for pid, m in results:
            n = sum(m["train_total"])
            u = self.unit_of[pid]
            v[u] += float(m["train_loss"])
            num[u] += n
        seen = num > 0
        v[seen] = v[seen] / num[seen]
        mean = float(v[seen].mean()) if bool(seen.any()) else math.nan
        if self.by_client and results:
            v = v * len(self.units) / len(results)
        self.method.ascent(v)
        self.snapshot = None
        return {"drfa_snapshot_loss": mean, "drfa_loss_clients": len(results)}
