"""The q-FedAvg server step (Li, Sanjabi, Beirami, Smith, ICLR 2020, Algorithm 2).

From the model w the round started from and each unit's (client's, or at ``method.level:
group`` each group's example-weighted mean) returned model w_k and loss F_k:

    Delta_k = p_k F_k^q L (w - w_k)
    h_k     = p_k (q F_k^(q-1) ||L (w - w_k)||^2 + L F_k^q)
    w      <- w - sum_k Delta_k / sum_k h_k

L is the Lipschitz estimate (``method.lipschitz``; 0 takes 1 / optim.lr, the paper's choice)
and p_k the unit's example share among those that answered (the paper samples devices with
probability p_k and averages them uniformly: the same objective in expectation; with equal
shares the two are the same, which is how ``tests/test_robust_methods.py`` checks this step
against Flower's ``QFedAvg``). With q = 0 and L = 1 / lr the step is example-weighted FedAvg.
The norm ||w - w_k|| is over everything the unit sent (the head and any shared encoder); a
part is updated from the units that hold it.
"""

from __future__ import annotations

import torch

_EPS = 1e-10  # Flower's QFedAvg adds the same to the loss before its powers


def qfedavg_step(
    current: dict[str, dict[str, torch.Tensor]],
    units: list[dict[str, dict[str, torch.Tensor]]],
    losses: list[float],
    shares: list[float],
    q: float,
    lipschitz: float,
) -> dict[str, dict[str, torch.Tensor]]:
    """The new value of every part in ``current`` ({part: state dict}) from the units' parts."""
    L = float(lipschitz)
    grads, h = [], []
    for unit, loss, p in zip(units, losses, shares):
        f = float(loss) + _EPS
        g = {n: {k: L * (current[n][k].double() - v.double()) for k, v in sd.items()} for n, sd in unit.items()}
        sq = sum(float((t**2).sum()) for sd in g.values() for t in sd.values())
        h.append(p * ((q * f ** (q - 1) * sq if q != 0 else 0.0) + L * f**q))
        grads.append({n: {k: p * f**q * t for k, t in sd.items()} for n, sd in g.items()})
    out = {}
    for n, sd in current.items():
        holders = [i for i, u in enumerate(units) if n in u]
        if not holders:
            continue
        denom = sum(h[i] for i in holders)
        out[n] = {
            k: (v.double() - sum(grads[i][n][k] for i in holders) / denom).to(v.dtype) if v.is_floating_point() else v
            for k, v in sd.items()
        }
    return out
