"""The gate's losses (the long-tail gate), each with its own switch and lambda in ``gating.loss``.

posteriors (B, E, C) = softmax of each expert's logits, weights w (B, E) from the router,
labels y (B,). The mixture posterior is m = sum_e w_e p_e.
"""

from __future__ import annotations

import torch


def mixture(post: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_e w_e p_e -> (B, C)."""
    return (w.unsqueeze(-1) * post).sum(1)


def mixture_nll(post: torch.Tensor, w: torch.Tensor, y: torch.Tensor, class_w: torch.Tensor | None) -> torch.Tensor:
    """Class-weighted NLL of the mixture: sum_i a_{y_i} (-log m_i(y_i)) / sum_i a_{y_i}
    (PyTorch's weighted-mean convention; a = 1 without class weights)."""
    nll = -mixture(post, w).gather(1, y[:, None]).squeeze(1).clamp_min(1e-12).log()
    a = torch.ones_like(nll) if class_w is None else class_w[y]
    return (a * nll).sum() / a.sum()


def load_balance(probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Switch-style load balancing for top-k: E * sum_e f_e P_e, f_e the share of the batch's
    k-slots routed to e, P_e the mean router probability. With f = P it is E * sum_e P_e^2 >= 1,
    equal to 1 exactly at uniform use."""
    E = probs.shape[1]
    f = keep.float().mean(0) / keep.float().sum(1).mean()
    return E * (f * probs.mean(0)).sum()


def usage_entropy(w: torch.Tensor) -> torch.Tensor:
    """Entropy regularisation: -H(mean_i w_i), lowest when the batch uses every expert evenly."""
    return -torch.special.entr(w.mean(0)).sum()


def responsibility_loss(post: torch.Tensor, w: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """EM-style alignment: r_ie = w_ie p_ie(y_i) / sum_e' w_ie' p_ie'(y_i) (each expert's share of
    the true class), sharpened as softmax(log r / T) and held fixed; mean_i KL(r_i || w_i)."""
    py = post.gather(2, y[:, None, None].expand(-1, post.shape[1], 1)).squeeze(-1)
    r = w * py
    r = r / r.sum(1, keepdim=True).clamp_min(1e-12)
    target = torch.softmax(r.clamp_min(1e-12).log() / temperature, -1).detach()
    return (torch.special.xlogy(target, target) - target * w.clamp_min(1e-12).log()).sum(1).mean()


def prior_loss(w: torch.Tensor, y: torch.Tensor, group_of_class: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Group-prior KL: for each group g (head, tail) in the batch, KL(prior_g || mean of w over its
    examples); the mean over the groups present."""
    g = group_of_class[y]
    terms = []
    for k in torch.unique(g).tolist():
        wbar = w[g == k].mean(0).clamp_min(1e-12)
        pk = priors[k]
        terms.append((torch.special.xlogy(pk, pk) - pk * wbar.log()).sum())
    return torch.stack(terms).mean()


def group_priors(
    post: torch.Tensor, y: torch.Tensor, group_of_class: torch.Tensor, groups: int, temperature: float
) -> torch.Tensor:
    """(G, E) priors: softmax over experts of each expert's accuracy on group g's examples / T
    (uniform for a group with no example)."""
    correct = (post.argmax(-1) == y[:, None]).float()  # (N, E)
    return priors_from_counts(*group_correct(correct, y, group_of_class, groups), temperature)


def group_correct(correct: torch.Tensor, y: torch.Tensor, group_of_class: torch.Tensor, groups: int):
    """Per group: each expert's correct count (G, E) and the group's example count (G,)."""
    g = group_of_class[y]
    hits = torch.zeros(groups, correct.shape[1]).index_add_(0, g, correct)
    return hits, torch.bincount(g, minlength=groups).float()


def priors_from_counts(hits: torch.Tensor, n: torch.Tensor, temperature: float) -> torch.Tensor:
    acc = hits / n.clamp_min(1)[:, None]
    pri = torch.softmax(acc / temperature, -1)
    return torch.where(n[:, None] > 0, pri, torch.full_like(pri, 1.0 / hits.shape[1]))
