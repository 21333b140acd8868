"""The server's evaluation maths: clients' per-class counts into the group-wise and
client-level metrics, each evaluation round and for the held-out new clients after they adapt
(``federated.holdout``). A mixin of ``ServerCore`` (its state: the clients' ``info``,
``cgroup``, ``names``, ``held``, the anchors' class count). Each reply is ``(partition,
metrics)``, the metrics a dict of ``<split>_correct`` / ``<split>_total`` (per class) and
``<split>_loss``, vetted before it gets here."""

from __future__ import annotations

import math

import torch

from fedanchors.metrics import client_summary, summarize

ADAPT_KEYS = ("acc_all", "acc_wg", "acc_bal", "client_acc_mean", "client_acc_worst", "client_acc_p10")


class EvaluationCore:
    """Evaluation rounds' and new clients' metrics, over ``ServerCore``'s state."""

    def adapt_metrics(self, ok: list[tuple[int, dict]]) -> dict[str, float]:
        """``<split>_new_*``: the held-out clients' metrics after adaptation (each group over its
        new clients; NaN unless every new client answered), and their client-level accuracies."""
        complete = {p for p, _ in ok} == self.held
        out = {}
        for split in ("val", "test"):
            metrics = self._summarize(split, ok) if complete else {"acc_wg": math.nan, "acc_all": math.nan}
            accs = [math.nan] * len(self.info)
            for p, m in ok:
                accs[p] = sum(m[f"{split}_correct"]) / max(1, sum(m[f"{split}_total"]))
            mean = [a for a in accs if not math.isnan(a)]
            metrics |= {"client_acc_mean": sum(mean) / len(mean) if mean else math.nan}
            metrics |= client_summary(accs, self.cgroup, self.names) if complete else {}
            out |= {f"{split}_new_{k}": v for k, v in metrics.items() if k in ADAPT_KEYS or k.startswith("acc_group:")}
        return out

    def evaluation_metrics(self, ok: list[tuple[int, dict]], splits: tuple[str, ...]) -> dict:
        """Per split, the group-wise metrics over the clients' counts: a group's counts are the
        sum over its clients, and a group with a client missing counts as not evaluated (NaN
        worst-group and overall accuracies: never a metric over part of the groups)."""
        got = {p for p, _ in ok}
        whole = {g for g in range(len(self.names)) if set(self.members(g, self.asked)) <= got}
        self.round_ok &= whole
        mine = [(p, m) for p, m in ok if self.cgroup[p] in whole]
        out = {s: self._summarize(s, mine) | self._clients(s, mine, len(whole) == len(self.names)) for s in splits}
        out["complete"] = len(whole) == len(self.names)
        return out

    def _clients(self, split: str, ok: list[tuple[int, dict]], complete: bool) -> dict[str, float]:
        """Client-level accuracy (``fedanchors.metrics.client_summary``); the overall figures
        are NaN unless every client answered, as the worst-group accuracy is."""
        accs = [math.nan] * len(self.info)
        for p, m in ok:
            total = sum(m[f"{split}_total"])
            accs[p] = sum(m[f"{split}_correct"]) / total if total else math.nan
        out = client_summary(accs, self.cgroup, self.names) | {"client_accs": accs}
        if not complete:
            out |= {k: math.nan for k in ("client_acc_worst", "client_acc_p10", "client_acc_std")}
        return out

    def _summarize(self, split: str, ok: list[tuple[int, dict]]) -> dict[str, float]:
        G, C = len(self.names), self.anchors.num_classes
        correct = torch.zeros(G, C, dtype=torch.int64)
        total = torch.zeros(G, C, dtype=torch.int64)
        loss = torch.zeros(G, dtype=torch.float64)
        for p, m in ok:
            g = self.cgroup[p]
            correct[g] += torch.tensor(m[f"{split}_correct"])
            total[g] += torch.tensor(m[f"{split}_total"])
            loss[g] += float(m[f"{split}_loss"])
        return summarize(self.names, correct, total, loss, self.class_sets)
