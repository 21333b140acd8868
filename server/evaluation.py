"""The server's evaluation messages and their aggregation: the training clients' group-wise
and client-level metrics each evaluation round, and the held-out new clients' after they
adapt (``federated.holdout``). A mixin of ``server.strategy.FedAnchors`` (its state: the
clients' ``info``, ``cgroup``, ``names``, ``held``, the anchors' class count)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from flwr.app import Message, MessageType

from fedanchors.metrics import client_summary, summarize


class EvaluationMixin:
    """Evaluation rounds and new clients' adaptation, over ``FedAnchors``'s state."""

    def configure_evaluate(self, rnd: int, splits: tuple[str, ...]) -> list[Message]:
        pids = self.training() if self.held else None
        return self._messages(MessageType.EVALUATE, rnd, {"splits": ",".join(splits)}, pids)

    def configure_adapt(self, rnd: int) -> list[Message]:
        """The held-out clients' messages: adapt a new encoder to the frozen model, then evaluate."""
        conf = {"splits": "val,test", "adapt_epochs": self.cfg.federated.holdout_epochs}
        if self.log_prior is not None:
            conf["log_prior"] = [self.log_prior] * len(self.info)
        return self._messages(MessageType.EVALUATE, rnd, conf, sorted(self.held))

    def aggregate_adapt(self, rnd: int, replies: Iterable[Message]) -> dict[str, float]:
        """``test_new_*``: the held-out clients' metrics after adaptation (each group over its new
        clients; NaN unless every new client answered), and their client-level accuracies."""
        ok = self._vet_evaluate(rnd, self._split_replies(rnd, replies, "adapt"), ("val", "test"), "adapt")
        complete = {p for p, _ in ok} == self.held
        out = {}
        for split in ("val", "test"):
            metrics = self._summarize(split, ok) if complete else {"acc_wg": math.nan, "acc_all": math.nan}
            accs = [math.nan] * len(self.info)
            for p, r in ok:
                m = r.content["metrics"]
                accs[p] = sum(m[f"{split}_correct"]) / max(1, sum(m[f"{split}_total"]))
            mean = [a for a in accs if not math.isnan(a)]
            metrics |= {"client_acc_mean": sum(mean) / len(mean) if mean else math.nan}
            metrics |= client_summary(accs, self.cgroup, self.names) if complete else {}
            keep = ("acc_all", "acc_wg", "acc_bal", "client_acc_mean", "client_acc_worst", "client_acc_p10")
            out |= {f"{split}_new_{k}": v for k, v in metrics.items() if k in keep or k.startswith("acc_group:")}
        return out

    def aggregate_evaluate(self, rnd: int, replies: Iterable[Message], splits: tuple[str, ...]) -> dict:
        """Per split, the group-wise metrics over the clients' counts: a group's counts are the
        sum over its clients, and a group with a client missing counts as not evaluated (NaN
        worst-group and overall accuracies: never a metric over part of the groups)."""
        ok = self._vet_evaluate(rnd, self._split_replies(rnd, replies, "evaluate"), splits)
        got = {p for p, _ in ok}
        whole = {g for g in range(len(self.names)) if set(self.members(g)) <= got}
        self.round_ok &= whole
        mine = [(p, r) for p, r in ok if self.cgroup[p] in whole]
        out = {s: self._summarize(s, mine) | self._clients(s, mine, len(whole) == len(self.names)) for s in splits}
        out["complete"] = len(whole) == len(self.names)
        return out

    def _clients(self, split: str, ok: list[tuple[int, Message]], complete: bool) -> dict[str, float]:
        """Client-level accuracy (``fedanchors.metrics.client_summary``); the overall figures
        are NaN unless every client answered, as the worst-group accuracy is."""
        accs = [math.nan] * len(self.info)
        for p, r in ok:
            m = r.content["metrics"]
            total = sum(m[f"{split}_total"])
            accs[p] = sum(m[f"{split}_correct"]) / total if total else math.nan
        out = client_summary(accs, self.cgroup, self.names) | {"client_accs": accs}
        if not complete:
            out |= {k: math.nan for k in ("client_acc_worst", "client_acc_p10", "client_acc_std")}
        return out

    def _summarize(self, split: str, ok: list[tuple[int, Message]]) -> dict[str, float]:
        G, C = len(self.names), self.anchors.num_classes
        correct = torch.zeros(G, C, dtype=torch.int64)
        total = torch.zeros(G, C, dtype=torch.int64)
        loss = torch.zeros(G, dtype=torch.float64)
        for p, r in ok:
            m, g = r.content["metrics"], self.cgroup[p]
            correct[g] += torch.tensor(m[f"{split}_correct"])
            total[g] += torch.tensor(m[f"{split}_total"])
            loss[g] += float(m[f"{split}_loss"])
        return summarize(self.names, correct, total, loss, self.class_sets)
