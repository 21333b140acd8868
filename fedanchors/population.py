"""Federated populations: each group held by one or more clients, and who takes part in a round.

A group's training split is cut among its ``federated.clients`` (or
``federated.group_clients[<group>]``) clients by a partitioner: ``iid`` (a seeded even
split), ``dirichlet`` (label skew, per-class proportions ~ Dir(alpha), Hsu et al. 2019;
the semantics of Flower Datasets' ``DirichletPartitioner``), ``shards`` (each client holds
at most ``partition_labels`` labels, after McMahan et al. 2017), ``natural`` (the dataset's own
clients: FEMNIST's writers, with their own splits). Validation and test
splits follow each client's training label mix (``follow``), so a client is evaluated on
its own kind of data and a group's metrics are the sum of its clients' counts. Partitions
are disjoint, cover the group and depend only on the seed.

Written here rather than with ``flwr-datasets``: its partitioners take a Hugging Face
``datasets.Dataset``, and every scenario here is tensors already in memory; the maths is a
few lines, tested for disjointness, coverage, skew and repeatability.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from fedanchors.data.base import GroupData, ScenarioData, Split
from fedanchors.errors import ConfigError
from fedanchors.models import stable_seed
from fedanchors.registry import Registry

PARTITIONERS: Registry = Registry("partitioner")


@PARTITIONERS.register("iid")
def iid(y: torch.Tensor, k: int, seed: int, f) -> list[torch.Tensor]:
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [p.sort().values for p in perm.tensor_split(k)]


@PARTITIONERS.register("dirichlet")
def dirichlet(y: torch.Tensor, k: int, seed: int, f) -> list[torch.Tensor]:
    """Per class, shares ~ Dir(alpha * 1_k); redrawn (seeded) until every client has an example."""
    rng = np.random.default_rng(seed)
    labels = y.numpy()
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(k)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(k, f.partition_alpha)))[:-1] * len(idx)).astype(int)
            for j, part in enumerate(np.split(idx, cuts)):
                parts[j] += part.tolist()
        if min(len(p) for p in parts) > 0:
            return [torch.tensor(sorted(p), dtype=torch.int64) for p in parts]
    raise ConfigError(
        f"federated.partition: dirichlet with alpha={f.partition_alpha} left a client empty in 100 draws "
        f"({k} clients, {len(y)} examples); raise partition_alpha or use fewer clients"
    )


@PARTITIONERS.register("shards")
def shards(y: torch.Tensor, k: int, seed: int, f) -> list[torch.Tensor]:
    """Each client holds at most ``partition_labels`` labels: label slots are dealt from
    shuffled passes over the labels, and each label's examples are split evenly among the
    clients holding it (so the clients cover the group, every label held by someone)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.unique(y)
    per = f.partition_labels
    if k * per < len(labels):
        raise ConfigError(
            f"federated.partition: shards with {k} clients x partition_labels={per} cover only {k * per} of the "
            f"{len(labels)} labels; raise partition_labels or the number of clients"
        )
    deck = torch.cat([labels[torch.randperm(len(labels), generator=g)] for _ in range(-(-k * per // len(labels)))])
    holds = [sorted(set(deck[j * per : (j + 1) * per].tolist())) for j in range(k)]
    parts: list[list[torch.Tensor]] = [[] for _ in range(k)]
    for c in labels.tolist():
        holders = [j for j in range(k) if c in holds[j]]
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        for j, piece in zip(holders, idx.tensor_split(len(holders))):
            parts[j].append(piece)
    return [torch.cat(p).sort().values if p else torch.empty(0, dtype=torch.int64) for p in parts]


@dataclass(frozen=True)
class Client:
    """One client: its group (index) and the rows of that group's splits it holds."""

    group: int
    index: int  # within the group
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def group_federated(f, g: GroupData):
    """``f`` with the group's own population (a YAML group's ``clients`` / ``partition``) in force.

    A group's ``clients`` beats ``federated.group_clients[<group>]``, which beats
    ``federated.clients``; its ``partition`` replaces ``federated.partition`` and its settings."""
    own = g.meta.get("population") or {}
    k = own.get("clients") or f.group_clients.get(g.name, f.clients)
    p = own.get("partition")
    changes = {"clients": int(k)}
    if p is not None:
        changes.update(partition=p.kind, partition_alpha=p.alpha, partition_labels=p.labels)
    return dataclasses.replace(f, **changes)


def clients_of(f, g: GroupData) -> int:
    return group_federated(f, g).clients


def has_population(f, data: ScenarioData) -> bool:
    """Whether some group has more than one client (then client-level metrics exist)."""
    return any(group_federated(f, g).partition == "natural" or clients_of(f, g) > 1 for g in data.groups)


def build_population(data: ScenarioData, f, seed: int) -> list[Client]:
    """Every client of every group, in partition-id order (group by group)."""
    out: list[Client] = []
    for gi, g in enumerate(data.groups):
        gf = group_federated(f, g)
        if gf.partition == "natural":
            out += natural(g, gi)
            continue
        k = gf.clients
        if k > len(g.train):
            raise ConfigError(
                f"federated: group {g.name} has {len(g.train)} training examples, fewer than its {k} clients"
            )
        s = stable_seed(seed, "partition", g.name)
        train = PARTITIONERS.get(gf.partition, "federated.partition")(g.train.y, k, s, gf)
        if min(len(p) for p in train) == 0:
            raise ConfigError(
                f"federated.partition: {gf.partition} leaves a client of group {g.name} without examples; "
                "use fewer clients or another partitioner"
            )
        val = follow(g.train.y, train, g.val.y, s + 1)
        test = follow(g.train.y, train, g.test.y, s + 2)
        out += [Client(gi, j, train[j], val[j], test[j]) for j in range(k)]
    return out


@PARTITIONERS.register("natural")
def _natural(y: torch.Tensor, k: int, seed: int, f) -> list[torch.Tensor]:
    """Registered for its name; ``build_population`` takes the dataset's own clients (``natural``)."""
    raise ConfigError("federated.partition: natural takes the dataset's own clients, not a count")


def natural(g: GroupData, gi: int) -> list[Client]:
    """``partition: natural``: the dataset's own clients (FEMNIST writers), from the group's
    ``meta["owners"]`` (each split's owner index per example)."""
    owners = g.meta.get("owners")
    if owners is None:
        raise ConfigError(
            f"partition: natural needs a source with its own clients (femnist writers, fsdd speakers); "
            f"group {g.name} has none"
        )
    ids = torch.unique(owners["train"]).tolist()
    rows = {s: [torch.nonzero(owners[s] == k).flatten() for k in ids] for s in ("train", "val", "test")}
    return [Client(gi, j, rows["train"][j], rows["val"][j], rows["test"][j]) for j in range(len(ids))]


def follow(train_y: torch.Tensor, parts: list[torch.Tensor], y: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Cut another split (validation, test) like the training partition: each class's examples
    go to the clients in the shares of that class they hold in training (largest remainders;
    a class no client trains on is cut evenly), so a client is evaluated on its own label mix."""
    g = torch.Generator().manual_seed(seed)
    k, out = len(parts), [[] for _ in range(len(parts))]
    classes = int(max(train_y.max(), y.max())) + 1 if len(y) else 0
    owner = torch.repeat_interleave(torch.arange(k), torch.tensor([len(p) for p in parts]))
    flat = owner * classes + train_y[torch.cat(parts)] if k else owner
    counts = torch.bincount(flat, minlength=k * classes).view(k, classes).double()  # [client, class]
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        held = counts[:, c].float()
        share = held / held.sum() if held.sum() > 0 else torch.full((k,), 1.0 / k)
        exact = share * len(idx)
        n = exact.floor().long()
        for j in torch.argsort(exact - n, descending=True, stable=True)[: len(idx) - int(n.sum())]:
            n[j] += 1
        for j, piece in enumerate(idx.split(n.tolist())):
            out[j].append(piece)
    return [torch.cat(p).sort().values if p else torch.empty(0, dtype=torch.int64) for p in out]


def client_data(group: GroupData, c: Client) -> GroupData:
    """The client's own slice of its group."""

    def take(split: Split, idx: torch.Tensor) -> Split:
        return Split(split.x[idx], split.y[idx])

    return GroupData(
        group.name, group.space, take(group.train, c.train), take(group.val, c.val), take(group.test, c.test),
        group.meta,
    )  # fmt: skip


def sample_clients(groups: list[int], n: int, mode: str, seed: int, rnd: int) -> list[int]:
    """The partitions asked to train in round ``rnd`` (all when ``n`` is 0 or covers them).

    ``stratified``: one client of every group first, the rest uniformly from the others;
    ``balanced``: the same number from every group (a group with fewer clients gives all it
    has, the others share the rest; a remainder goes to groups drawn at random);
    ``uniform``: ``n`` clients uniformly. Seeded by (seed, round)."""
    total = len(groups)
    if n <= 0 or n >= total:
        return list(range(total))
    g = torch.Generator().manual_seed(stable_seed(seed, "sample", rnd))
    if mode == "uniform":
        return sorted(torch.randperm(total, generator=g)[:n].tolist())
    members = {gi: [p for p, x in enumerate(groups) if x == gi] for gi in sorted(set(groups))}
    if mode == "balanced":
        quota = _balanced_quota({gi: len(m) for gi, m in members.items()}, n, g)
        return sorted(p for gi, m in members.items() for p in _draw(m, quota[gi], g))
    chosen = [_draw(m, 1, g)[0] for m in members.values()]
    taken = set(chosen)
    rest = [p for p in range(total) if p not in taken]
    extra = torch.randperm(len(rest), generator=g)[: max(0, n - len(chosen))].tolist()
    return sorted(chosen + [rest[i] for i in extra])


def _draw(members: list[int], k: int, g: torch.Generator) -> list[int]:
    """``k`` of ``members`` without replacement (one draw: a single seeded index)."""
    if k == 1:
        return [members[int(torch.randint(len(members), (1,), generator=g))]]
    return [members[i] for i in torch.randperm(len(members), generator=g)[:k].tolist()]


def _balanced_quota(sizes: dict[int, int], n: int, g: torch.Generator) -> dict[int, int]:
    """How many clients each group gives to a balanced draw of ``n`` (< the population):
    equal shares, capped at a group's size, the capped groups' surplus shared by the others,
    and a remainder of r < (open groups) given one each to r groups drawn at random."""
    quota = dict.fromkeys(sizes, 0)
    left = n
    while left > 0:
        open_ = [gi for gi in sizes if quota[gi] < sizes[gi]]
        share = left // len(open_)
        if share == 0:
            for i in torch.randperm(len(open_), generator=g)[:left].tolist():
                quota[open_[i]] += 1
            break
        for gi in open_:
            add = min(share, sizes[gi] - quota[gi])
            quota[gi] += add
            left -= add
    return quota


def held_out(groups: list[int], fraction: float, seed: int) -> set[int]:
    """Partitions held out of training (``federated.holdout``): per group of k clients,
    round(fraction * k) of them, at most k - 1, seeded. They join after training as new clients."""
    if fraction <= 0:
        return set()
    out: set[int] = set()
    g = torch.Generator().manual_seed(stable_seed(seed, "holdout"))
    for gi in sorted(set(groups)):
        members = [p for p, x in enumerate(groups) if x == gi]
        n = min(len(members) - 1, round(fraction * len(members)))
        out |= {members[i] for i in torch.randperm(len(members), generator=g)[:n].tolist()}
    return out


def eval_cohort(groups: list[int], held: set[int], k: int, seed: int) -> list[int] | None:
    """The validation cohort (``federated.eval_clients``): per group, ``k`` of its training
    clients (all of them where it has fewer), drawn once, seeded; ``None`` for k = 0 (every
    client). Every group is in it, so the worst-group accuracy is over every group."""
    if k <= 0:
        return None
    out: list[int] = []
    g = torch.Generator().manual_seed(stable_seed(seed, "eval_cohort"))
    for gi in sorted(set(groups)):
        members = [p for p, x in enumerate(groups) if x == gi and p not in held]
        out += [members[i] for i in torch.randperm(len(members), generator=g)[:k].tolist()]
    return sorted(out)


def drop_out(pids: list[int], p: float, seed: int, rnd: int) -> list[int]:
    """The sampled clients that answer: each drops out with probability ``p`` (seeded)."""
    if p <= 0:
        return pids
    g = torch.Generator().manual_seed(stable_seed(seed, "dropout", rnd))
    keep = torch.rand(len(pids), generator=g) >= p
    return [pid for pid, k in zip(pids, keep.tolist()) if k]


def split_weights(group_w: torch.Tensor, groups: list[int], sizes: list[int], pids: list[int]) -> dict[int, float]:
    """Each group's weight w_g split across its clients among ``pids`` by their example counts
    (a group's only client gets exactly w_g)."""
    out: dict[int, float] = {}
    for g in sorted({groups[p] for p in pids}):
        mine = [p for p in pids if groups[p] == g]
        if len(mine) == 1:
            out[mine[0]] = float(group_w[g])
            continue
        n = sum(sizes[p] for p in mine)
        out.update({p: float(group_w[g]) * sizes[p] / n for p in mine})
    return out


def population_size(f, data, seed: int) -> int:
    """Clients (SuperNodes) in a run: the size of ``build_population(data, f, seed)``."""
    return len(build_population(data, f, seed))
