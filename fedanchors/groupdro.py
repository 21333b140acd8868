"""GroupDRO weight updates and objectives (Sagawa et al. 2020, Alg. 1), pure functions.

Groups without a loss this step (absent from a batch, or a client that failed) carry
NaN; they keep their q exactly and the others share the rest of the mass.
"""

from __future__ import annotations

import torch


def update_q(q: torch.Tensor, losses: torch.Tensor, eta: float, mode: str = "exp", gamma: float = 0.9) -> torch.Tensor:
    """One q update from group losses (G,).

    - ``exp``: q_g <- q_g exp(eta L_g), renormalised (Sagawa et al.);
    - ``softmax``: q <- softmax(eta L) (no memory);
    - ``exp_smooth``: q <- gamma q + (1 - gamma) * exp-update(q).
    """
    present = ~torch.isnan(losses)
    if not bool(present.any()):
        return q.clone()
    lp, qp = losses[present], q[present]
    mass = qp.sum()
    if mode == "exp":
        new = _normalise(qp * torch.exp(eta * (lp - lp.max())))
    elif mode == "softmax":
        new = torch.softmax(eta * lp, 0)
    elif mode == "exp_smooth":
        new = gamma * _normalise(qp) + (1 - gamma) * _normalise(qp * torch.exp(eta * (lp - lp.max())))
    else:
        raise ValueError(f"unknown GroupDRO update {mode!r}")
    out = q.clone()
    out[present] = new * mass
    return out


def _normalise(v: torch.Tensor) -> torch.Tensor:
    return v / v.sum()


def objective_weights(q: torch.Tensor, losses: torch.Tensor | None, objective: str, eta: float) -> torch.Tensor:
    """Weights w (G,) whose w . grad L is the objective's gradient (w sums to 1 over present).

    - ``weighted``: sum_g q_g L_g -> w = q;
    - ``max``: max_g L_g -> one-hot at the worst group;
    - ``logsumexp``: (1/eta) log mean_g exp(eta L_g) -> w = softmax(eta L).
    Without losses (first federated round) every objective falls back to q.
    """
    present = torch.ones_like(q, dtype=torch.bool) if losses is None else ~torch.isnan(losses)
    if objective == "weighted" or losses is None:
        w = torch.where(present, q, torch.zeros_like(q))
    elif objective == "max":
        w = torch.zeros_like(q)
        w[int(torch.where(present, losses, -torch.inf).argmax())] = 1.0
    elif objective == "logsumexp":
        w = torch.softmax(torch.where(present, eta * losses, -torch.inf), 0)
    else:
        raise ValueError(f"unknown GroupDRO objective {objective!r}")
    return w / w.sum()


def objective_value(losses: torch.Tensor, q: torch.Tensor, objective: str, eta: float) -> torch.Tensor:
    """The objective's value over present groups (for logging)."""
    present = ~torch.isnan(losses)
    lp = losses[present]
    if objective == "weighted":
        return (q[present] * lp).sum() / q[present].sum()
    if objective == "max":
        return lp.max()
    return (torch.logsumexp(eta * lp, 0) - torch.log(torch.tensor(float(lp.numel())))) / eta
