"""A plain PyTorch FedAvg loop (no Flower, no Ray) doing a fedanchors config's work: the
reference that keeps the simulator honest (``bench/bench_floor.py``).

    python bench/reference_fedavg.py --config configs/bench/floor/femnist.yaml [--rounds 30]

Same data and clients (``fedanchors.data``, ``fedanchors.population``), same models
(``fedanchors.models``), same sampled clients each round (``population.sample_clients``),
same local batches (the clients' seeded shuffles) and steps (``local_epochs`` passes, a fresh
SGD optimizer per visit), FedAvg weighted by example counts, and one evaluation of every
client at the end. For a FedAvg config only: one shared encoder (one input space), no
anchors, ERM weights. Prints one JSON line: the seconds of each round, the total, and the
final validation and test accuracy.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedanchors.configure import load_config  # noqa: E402
from fedanchors.data import build_scenario  # noqa: E402
from fedanchors.models import build_encoder, build_head, stable_seed  # noqa: E402
from fedanchors.population import build_population, sample_clients  # noqa: E402
from fedanchors.rundir import seed_everything  # noqa: E402
from fedanchors.train import batches  # noqa: E402


def local_update(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg, gen: torch.Generator) -> dict:
    """``local_epochs`` passes of minibatch SGD from the global model; the new state."""
    o = cfg.optim
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    steps = cfg.federated.local_epochs * math.ceil(len(y) / o.batch_size)
    order: list[torch.Tensor] = []
    for _ in range(steps):
        if not order:
            order = batches(len(y), o.batch_size, gen)
        idx = order.pop(0)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.state_dict()


def average(states: list[dict], weights: list[float]) -> dict:
    total = sum(weights)
    mean = {k: sum((w / total) * s[k].double() for s, w in zip(states, weights)) for k in states[0]}
    return {k: v.to(states[0][k].dtype) for k, v in mean.items()}


@torch.no_grad()
def accuracy(model: nn.Module, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    correct = total = 0
    for x, y in parts:
        if len(y):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    model.train()
    return correct / max(1, total)


def run(config: str, rounds: int) -> dict:
    """The loop's figures: seconds per round, the total, final validation and test accuracy."""
    return train(config, rounds)[0]


def train(config: str, rounds: int) -> tuple[dict, nn.Sequential]:
    """``rounds`` rounds of FedAvg on ``config``: the figures and the global model (encoder, head)."""
    cfg = load_config(config, [f"federated.rounds={rounds}"])
    seed_everything(cfg.seed, cfg.deterministic)
    data = build_scenario(cfg.data)
    assert len(data.groups) == 1, "the reference loop is FedAvg over one group's clients"
    g = data.groups[0]
    clients = build_population(data, cfg.federated, cfg.seed)
    m = cfg.model
    encoder = build_encoder(m, g.space, g.shape, cfg.seed, g.meta)
    model = nn.Sequential(encoder, build_head(m, data.num_classes, cfg.seed))
    f = cfg.federated
    times = []
    for rnd in range(1, rounds + 1):
        t = time.perf_counter()
        picked = sample_clients([c.group for c in clients], f.clients_per_round, f.sampling, cfg.seed, rnd)
        states, weights = [], []
        for pid in picked:
            c = clients[pid]
            local = copy.deepcopy(model)
            gen = torch.Generator().manual_seed(stable_seed(cfg.seed, "batches", pid, rnd))
            states.append(local_update(local, g.train.x[c.train], g.train.y[c.train], cfg, gen))
            weights.append(float(len(c.train)))
        model.load_state_dict(average(states, weights))
        times.append(time.perf_counter() - t)
    val = accuracy(model, [(g.val.x[c.val], g.val.y[c.val]) for c in clients])
    test = accuracy(model, [(g.test.x[c.test], g.test.y[c.test]) for c in clients])
    return {"rounds": rounds, "round_s": times, "total_s": sum(times), "val_acc": val, "test_acc": test}, model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--rounds", type=int, default=30)
    a = p.parse_args()
    print(json.dumps(run(a.config, a.rounds)))


if __name__ == "__main__":
    main()
