"""Group-wise evaluation with fixed key names (WILDS style); empty groups are NaN."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fedanchors.data.base import Split


@torch.no_grad()
def split_counts(
    encoder: nn.Module, head: nn.Module, split: Split, num_classes: int, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-class (correct (C,), total (C,)) and the summed CE of one group's split."""
    encoder.eval()
    head.eval()
    correct = torch.zeros(num_classes, dtype=torch.int64)
    total = torch.zeros(num_classes, dtype=torch.int64)
    loss = 0.0
    for i in range(0, len(split), batch_size):
        x, y = split.x[i : i + batch_size].to(device), split.y[i : i + batch_size].to(device)
        logits = head(encoder(x))
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        hit = (logits.argmax(1) == y).long().cpu()
        correct += torch.bincount(y.cpu(), weights=hit, minlength=num_classes).long()
        total += torch.bincount(y.cpu(), minlength=num_classes)
    encoder.train()
    head.train()
    return correct, total, loss


def summarize(
    names: list[str],
    correct: torch.Tensor,
    total: torch.Tensor,
    loss: torch.Tensor,
    class_sets: dict[str, list[int]] | None = None,
) -> dict[str, float]:
    """Metrics from per-group per-class counts: correct/total (G, C), loss sums (G,).

    ``acc_all`` over every sample, ``acc_group:<g>``, ``acc_wg`` (worst group),
    ``acc_bal`` (mean per-class recall over all groups), ``loss_group:<g>``, and
    ``acc_<name>`` over the classes of each named class set (e.g. ``acc_head``, ``acc_tail``).
    """
    correct, total = correct.double(), total.double()
    out: dict[str, float] = {"acc_all": _ratio(correct.sum(), total.sum())}
    accs = []
    for g, name in enumerate(names):
        acc = _ratio(correct[g].sum(), total[g].sum())
        out[f"acc_group:{name}"] = acc
        out[f"loss_group:{name}"] = _ratio(loss[g], total[g].sum())
        accs.append(acc)
    # a metric over "all" groups is NaN unless every group was evaluated: a worst group taken
    # over some of the groups (a client lost in federated mode) is not the worst group
    complete = bool(accs) and not any(math.isnan(a) for a in accs)
    out["acc_wg"] = min(accs) if complete else float("nan")
    per_class = correct.sum(0) / total.sum(0)
    seen = total.sum(0) > 0
    out["acc_bal"] = float(per_class[seen].mean()) if complete else float("nan")
    if not complete:
        out["acc_all"] = float("nan")
    for name, classes in (class_sets or {}).items():
        out[f"acc_{name}"] = (
            _ratio(correct.sum(0)[classes].sum(), total.sum(0)[classes].sum()) if complete else math.nan
        )
    return out


def _ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a / b) if float(b) > 0 else float("nan")


def group_metrics(
    encoders: list[nn.Module], head: nn.Module, data, split: str, device: torch.device, batch_size: int = 512
) -> dict[str, float]:
    """``summarize`` of every group's ``split``, group g through ``encoders[g]`` (one
    definition for the centralized trainer, the evaluate command and a client's counts)."""
    C = data.num_classes
    rows = [split_counts(enc, head, getattr(g, split), C, batch_size, device) for enc, g in zip(encoders, data.groups)]
    correct = torch.stack([r[0] for r in rows])
    total = torch.stack([r[1] for r in rows])
    loss = torch.tensor([r[2] for r in rows], dtype=torch.float64)
    return summarize(data.names, correct, total, loss, data.class_sets)


def client_summary(accs: list[float], groups: list[int], names: list[str]) -> dict[str, float]:
    """Client-level accuracy (as q-FFL and PropFair report it): the worst client, the 10th
    percentile and the standard deviation, over all clients and per group. Clients with an
    empty split are left out; NaN where a group has no client to report."""

    def stats(vals: list[float], suffix: str) -> dict[str, float]:
        v = torch.tensor([a for a in vals if not math.isnan(a)], dtype=torch.float64)
        if not len(v):
            return {f"client_acc_{k}{suffix}": math.nan for k in ("worst", "p10", "std")}
        return {
            f"client_acc_worst{suffix}": float(v.min()),
            f"client_acc_p10{suffix}": float(torch.quantile(v, 0.1)),
            f"client_acc_std{suffix}": float(v.std(unbiased=False)),
        }

    out = stats(accs, "")
    for g, name in enumerate(names):
        out |= stats([a for a, x in zip(accs, groups) if x == g], f":{name}")
    return out


def client_accuracies(encoders: list[nn.Module], head: nn.Module, data, population, split: str, device) -> list[float]:
    """Each client's accuracy on its own slice of ``split`` (centralized mode's view of a population)."""
    out = []
    for c in population:
        g = data.groups[c.group]
        rows = getattr(c, split)
        part = Split(getattr(g, split).x[rows], getattr(g, split).y[rows])
        correct, total, _ = split_counts(encoders[c.group], head, part, data.num_classes, 512, device)
        out.append(_ratio(correct.sum(), total.sum()))
    return out
