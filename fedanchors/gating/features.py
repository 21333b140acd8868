"""The gate's input: 7 features per expert and 3 global ones, from the experts' logits.

Every feature is a symmetric function of a posterior's class probabilities that ignores
classes of probability zero, so it is the same after permuting the classes or padding them
(a logit of -inf), whatever the number of classes C: one gate design serves 10 or 62 classes.

Per expert e, with p_e = softmax(logits_e) and p = mean_e p_e the ensemble:
  entropy        H(p_e) = -sum_c p_ec log p_ec (nats; not divided by log C, which would depend on C)
  confidence     max_c p_ec
  margin         p_e(1) - p_e(2), the two largest probabilities
  top3_mass      p_e(1) + p_e(2) + p_e(3)
  log_margin     log p_e(1) - log p_e(2) (the logit margin)
  agreement      p_e(argmax_c p_c): the expert's probability of the ensemble's class
  kl_to_ensemble KL(p_e || p): how far the expert sits from the others
Global:
  ens_entropy    H(p)
  ens_confidence max_c p_c
  disagreement   the share of expert pairs whose top classes differ
"""

from __future__ import annotations

import torch

PER_EXPERT = ("entropy", "confidence", "margin", "top3_mass", "log_margin", "agreement", "kl_to_ensemble")
GLOBAL = ("ens_entropy", "ens_confidence", "disagreement")


def feature_names(experts: list[str]) -> list[str]:
    """Names of the 7E + 3 columns, in order."""
    return [f"{e}:{f}" for e in experts for f in PER_EXPERT] + list(GLOBAL)


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest along the last axis, padded with the smallest possible value when C < k."""
    k_real = min(k, values.shape[-1])
    top = values.topk(k_real, dim=-1).values
    if k_real < k:
        pad = torch.full((*top.shape[:-1], k - k_real), float(values.min()), dtype=top.dtype)
        top = torch.cat([top, pad], -1)
    return top


@torch.no_grad()
def gate_features(logits: torch.Tensor) -> torch.Tensor:
    """(N, E, C) logits -> (N, 7E + 3) features (float32, finite)."""
    logits = logits.float()
    N, E, _ = logits.shape
    logp = torch.log_softmax(logits, -1)
    p = logp.exp()
    ent = torch.special.entr(p).sum(-1)  # 0 log 0 = 0
    top_p = _top(p, 3)
    top_logp = _top(logp.clamp_min(-1e4), 2)
    ens = p.mean(1)  # (N, C)
    ens_cls = ens.argmax(-1)
    agreement = p.gather(2, ens_cls[:, None, None].expand(N, E, 1)).squeeze(-1)
    log_ens = ens.clamp_min(1e-30).log()[:, None, :]
    kl = (torch.special.xlogy(p, p) - p * log_ens).sum(-1).clamp_min(0)
    per = torch.stack(
        [ent, top_p[..., 0], top_p[..., 0] - top_p[..., 1], top_p.sum(-1), top_logp[..., 0] - top_logp[..., 1],
         agreement, kl], -1,
    )  # fmt: skip
    cls = p.argmax(-1)  # (N, E)
    if E > 1:
        i, j = torch.triu_indices(E, E, 1)
        disagree = (cls[:, i] != cls[:, j]).float().mean(1)
    else:
        disagree = torch.zeros(N)
    glob = torch.stack([torch.special.entr(ens).sum(-1), ens.max(-1).values, disagree], -1)
    return torch.cat([per.reshape(N, E * len(PER_EXPERT)), glob], 1)
