"""Gate training and metrics shared by both modes: the schedules, one epoch on a block of
examples, routing, and per-class counts from which every metric is computed (so the
federated server sums its clients' counts and gets the same definitions)."""

from __future__ import annotations

import math

import torch

from fedanchors.gating import losses as L
from fedanchors.gating.config import GatingConfig
from fedanchors.gating.features import gate_features
from fedanchors.gating.model import GateNet
from fedanchors.models import stable_seed


def router_temperature(epoch: int, epochs: int, start: float, end: float) -> float:
    """Linear from ``start`` at epoch 0 to ``end`` at the last epoch (soft to harder routing)."""
    return start - (start - end) * (epoch / max(epochs - 1, 1))


def lr_factor(epoch: int, epochs: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` epochs ((e + 1) / warmup), then a cosine from 1 to 0 over the rest."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    rest = max(epochs - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / rest))


def class_weights(counts: torch.Tensor) -> torch.Tensor:
    """Inverse class frequency, normalised to sum to C (a class with no example counts as one)."""
    inv = 1.0 / counts.float().clamp_min(1)
    return inv * len(counts) / inv.sum()


def head_classes(num_classes: int, class_sets: dict, cfg: GatingConfig) -> torch.Tensor:
    """Bool (C,): the head classes (``head_boundary`` > 0: below it; else the class set ``head_set``)."""
    from fedanchors.errors import ConfigError

    if cfg.head_boundary > 0:
        if cfg.head_boundary >= num_classes:
            raise ConfigError(f"head_boundary must be in 1..{num_classes - 1}, got {cfg.head_boundary}")
        return torch.arange(num_classes) < cfg.head_boundary
    if cfg.head_set not in class_sets:
        raise ConfigError(
            f"head_set: the experts' scenario has no class set {cfg.head_set!r} (it has {sorted(class_sets)}); "
            "name one or set head_boundary"
        )
    mask = torch.zeros(num_classes, dtype=torch.bool)
    mask[list(class_sets[cfg.head_set])] = True
    return mask


def build_gate(cfg: GatingConfig, experts: int) -> GateNet:
    torch.manual_seed(stable_seed(cfg.seed, "gate"))
    g = cfg.gate
    return GateNet(7 * experts + 3, experts, tuple(g.hidden), g.dropout, g.routing, g.top_k, g.noisy)


def make_opt(net: GateNet, cfg: GatingConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)


def prepare(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 7E+3), posteriors (N, E, C)) of a block of expert logits."""
    return gate_features(logits), torch.softmax(logits.float(), -1)


def gate_loss(
    net: GateNet, feats, post, y, cfg: GatingConfig, cw, head_of_class, priors, temperature: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The configured objective on one batch and its terms."""
    lc = cfg.loss
    w, probs, keep = net(feats, temperature)
    nll = L.mixture_nll(post, w, y, cw if lc.class_weights else None)
    loss, parts = nll, {"nll": float(nll.detach())}
    top_k = cfg.gate.routing == "top_k"
    terms = {
        "load_balance": (lc.load_balance and top_k, lc.lambda_lb, lambda: L.load_balance(probs, keep)),
        "entropy": (lc.entropy, lc.lambda_h, lambda: L.usage_entropy(w)),
        "responsibility": (
            lc.responsibility, lc.lambda_resp, lambda: L.responsibility_loss(post, w, y, lc.resp_temperature),
        ),
        "prior": (lc.prior and priors is not None, lc.lambda_prior, lambda: L.prior_loss(w, y, head_of_class, priors)),
    }  # fmt: skip
    for name, (on, lam, fn) in terms.items():
        if on:
            v = fn()
            loss = loss + lam * v
            parts[name] = float(v.detach())
    return loss, parts | {"loss": float(loss.detach())}


def train_epoch(net, opt, feats, post, y, cfg: GatingConfig, cw, head_of_class, priors, temperature, gen) -> dict:
    """One pass over the block in seeded shuffled batches; the batch means of every term."""
    net.train()
    sums: dict[str, float] = {}
    perm = torch.randperm(len(y), generator=gen)
    chunks = list(torch.split(perm, cfg.optim.batch_size))
    for idx in chunks:
        loss, parts = gate_loss(net, feats[idx], post[idx], y[idx], cfg, cw, head_of_class, priors, temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
        opt.step()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
    return {k: v / len(chunks) for k, v in sums.items()}


@torch.no_grad()
def route(net: GateNet, feats: torch.Tensor, temperature: float) -> torch.Tensor:
    net.eval()
    return net(feats, temperature)[0]


@torch.no_grad()
def count_stats(post: torch.Tensor, w: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Per-class counts of one block: mixture, each expert's and the oracle's correct, totals;
    summed weights (load) and summed effective experts exp(H(w_i))."""
    C = num_classes
    pred = L.mixture(post, w).argmax(-1)
    expert_hit = (post.argmax(-1) == y[:, None]).float()  # (N, E)
    total = torch.bincount(y, minlength=C).double()
    per_class = lambda hit: torch.zeros(C, dtype=torch.float64).index_add_(0, y, hit.double())  # noqa: E731
    return {
        "total": total,
        "mix": per_class((pred == y).float()),
        "experts": torch.stack([per_class(expert_hit[:, e]) for e in range(post.shape[1])]),
        "oracle": per_class(expert_hit.max(1).values),
        "load": w.double().sum(0),
        "eff": torch.special.entr(w).sum(1).exp().double().sum().reshape(1),
    }


def add_stats(a: dict | None, b: dict) -> dict:
    return dict(b) if a is None else {k: a[k] + b[k] for k in b}


def _hbt(correct: torch.Tensor, total: torch.Tensor, head: torch.Tensor) -> tuple[float, float, float, float]:
    acc = float(correct.sum() / total.sum())
    h = float(correct[head].sum() / total[head].sum()) if float(total[head].sum()) else float("nan")
    t = float(correct[~head].sum() / total[~head].sum()) if float(total[~head].sum()) else float("nan")
    return acc, h, t, (h + t) / 2


def metrics(stats: dict, head: torch.Tensor, experts: list[str]) -> dict[str, float]:
    """Accuracy, head / tail / balanced (the mean of head and tail) accuracy of the mixture, of each
    expert and of the oracle (an example counts when any expert's top class is right);
    effective number of experts (mean exp(H(w_i))), each expert's load (mean weight) and the
    load's coefficient of variation."""
    out: dict[str, float] = {}
    total = stats["total"]
    n = float(total.sum())
    rows = [("", stats["mix"]), ("oracle_", stats["oracle"])] + [
        (f"expert:{e}:", stats["experts"][i]) for i, e in enumerate(experts)
    ]
    for prefix, correct in rows:
        acc, h, t, b = _hbt(correct, total, head)
        out |= {f"{prefix}acc": acc, f"{prefix}head_acc": h, f"{prefix}tail_acc": t, f"{prefix}balanced_acc": b}
    load = stats["load"] / n
    out |= {f"load:{e}": float(v) for e, v in zip(experts, load)}
    out["load_cv"] = float(load.std(unbiased=False) / load.mean())
    out["effective_experts"] = float(stats["eff"][0] / n)
    return out
