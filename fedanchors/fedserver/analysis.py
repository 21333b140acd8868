"""The gap analyses on the server (``analysis:`` in the config), from the clients' replies.

No extra message: the per-group gradients are the clients' updates. With one local SGD step
on the client's whole split (``optim.name: sgd``, no momentum, weight decay or clipping),
(theta_global - theta_client) / lr is exactly the gradient of the client's mean loss for the
head, and the same divided by the client's encoder scale for a shared encoder; a group's
gradient is its clients' example-weighted mean. With more local work the same quantity is
the round's pseudo-gradient: the sum of the local steps' (preconditioned) gradients along
the client's path. Private encoders never travel, so the Gram matrix here covers the shared
parameters only. The observed rate of round t is (L_g(t+1) - L_g(t)) / lr, the group losses
the clients report at the start of the next round; so round t's record is written with
round t+1 (the last round's without an observed rate).
"""

from __future__ import annotations

import torch

from fedanchors import dynamics
from fedanchors.dfr import gaussian_codes
from fedanchors.models import stable_seed


class RoundAnalysis:
    def __init__(self, cfg, names: list[str]) -> None:
        self.cfg, self.names = cfg, names
        self.pending: dict | None = None
        self.out: list[dict] = []

    def gradients(self, server, ok, scales: dict[int, float]) -> torch.Tensor | None:
        """(G, P) group pseudo-gradients over the head (when global) and the shared encoders."""
        lr = self.cfg.optim.lr
        pieces: list[tuple[str, str, torch.Tensor]] = []  # (kind, key, current value)
        if self.cfg.federated.head_sharing == "global":
            pieces += [("head", k, v) for k, v in server.head.named_parameters()]
        for space, enc in sorted(server.encoders.items()):
            pieces += [(f"enc:{space}", k, v) for k, v in enc.named_parameters()]
        if not pieces:
            return None
        G = len(self.names)
        sums = [None] * G
        weights = [0.0] * G
        for u in ok:
            p = u.pid
            g, n = server.cgroup[p], float(server.info[p]["n"])
            head, enc = u.head or {}, u.encoder or {}
            row = []
            for kind, k, cur in pieces:
                if kind == "head":
                    row.append(((cur.detach() - head[k]) / lr).flatten())
                elif kind == f"enc:{server.info[p]['space']}" and enc and scales.get(p, 0) > 0:
                    row.append(((cur.detach() - enc[k]) / (lr * scales[p])).flatten())
                else:
                    row.append(torch.zeros(cur.numel()))
            vec = torch.cat(row).double()
            sums[g] = vec * n if sums[g] is None else sums[g] + vec * n
            weights[g] += n
        if any(s is None for s in sums):
            return None  # a group did not answer: no complete basis this round
        return torch.stack([s / w for s, w in zip(sums, weights)])

    def observe(self, rnd: int, server, ok, losses: torch.Tensor, scales: dict[int, float], stacked) -> None:
        """Complete the previous round's record with this round's losses; analyse this round."""
        lr = self.cfg.optim.lr
        if self.pending is not None:
            prev, before = self.pending, self.pending.pop("_losses")
            obs = (losses - before) / lr
            self.out.append(prev | dynamics.gap_terms(self.names, before, prev.pop("_pred"), obs, prev.pop("_p")))
            self.pending = None
        if not dynamics.due(self.cfg, rnd):
            return
        a = self.cfg.analysis
        rec: dict = {"round": rnd}
        if a.gradient_basis or a.gap_dynamics:
            G = self.gradients(server, ok, scales)
            if G is not None:
                if a.gradient_basis:
                    rec |= dynamics.basis(G, torch.ones(G.shape[1], dtype=torch.bool), self.names)
                if a.gap_dynamics:
                    p = server.group_weights.double()
                    p = p / p.sum()
                    rec |= {"_pred": dynamics.rates(G @ G.T, p), "_p": p, "_losses": losses.clone()}
        if a.jacobian:
            for key in ("jac_enc", "jac_head"):
                for g, name in enumerate(self.names):
                    mine = [(float(server.info[u.pid]["n"]), float(u.metrics[key])) for u in ok
                            if server.cgroup[u.pid] == g and key in u.metrics]  # fmt: skip
                    if mine:
                        rec[f"{key}:{name}"] = sum(n * v for n, v in mine) / sum(n for n, _ in mine)
        if a.static_dynamic and stacked is not None:
            rec |= self.static_dynamic(server, stacked, rnd)
        if "_pred" in rec and rnd < self.cfg.federated.rounds:
            self.pending = rec
        else:
            if "_pred" in rec:
                rec |= dynamics.gap_terms(self.names, rec.pop("_losses"), rec.pop("_pred"), None, rec.pop("_p"))
            self.out.append(rec)

    def static_dynamic(self, server, stacked, rnd: int) -> dict[str, float]:
        """Probe and head scored on codes drawn from the clients' class Gaussians (no data leaves)."""
        per = self.cfg.dfr.samples_per_group
        args = (stacked["counts"], stacked["means"], stacked["covs"], per)
        z_tr, y_tr, g_tr = gaussian_codes(*args, stable_seed(self.cfg.seed, "static-fit", rnd))
        z_ev, y_ev, g_ev = gaussian_codes(*args, stable_seed(self.cfg.seed, "static-eval", rnd))
        C = server.anchors.num_classes
        probe = dynamics.probe_accuracies(z_tr, y_tr, g_tr, z_ev, y_ev, g_ev, self.cfg.analysis.probe_C, C,
                                          stable_seed(self.cfg.seed, "static-probe"), self.names)  # fmt: skip
        with torch.no_grad():
            pred = server.head(torch.as_tensor(z_ev, dtype=torch.float32)).argmax(1).numpy()
        return dynamics.decomposition(dynamics.group_accuracy(pred == y_ev, g_ev, self.names), probe)
