"""Deep feature reweighting (Kirichenko et al. 2023): retrain the last layer, encoders frozen.

The new head is a logistic regression on latent codes from a group-balanced set
(every group subsampled to the smallest one, averaged over several subsamples), with
the inverse regularisation C picked on worst-group accuracy of held-out codes.

Centralized mode fits it on the validation split (half to fit, half to pick C, then
all of it with the chosen C), as the paper does. Federated mode has no pooled
validation codes on the server: it draws an equal number of codes per group from the
clients' class Gaussians N(mu_gc, Sigma_gc) (class proportions as in the group) and
picks C on the clients' own validation splits (``server/strategy.py``).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from torch import nn

from fedanchors.config import DFRConfig
from fedanchors.errors import ConfigError


class LayerView(nn.Module):
    """An encoder read at the output of its k-th ReLU (``dfr.layer: layer_k``), flattened."""

    def __init__(self, encoder: nn.Module, k: int) -> None:
        super().__init__()
        relus = [m for m in encoder.modules() if isinstance(m, nn.ReLU)]
        if not 1 <= k <= len(relus):
            raise ConfigError(f"dfr.layer: layer_{k}, but the encoder has {len(relus)} ReLU layers (layer_1..)")
        self.encoder, self.relu = encoder, relus[k - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        got: list[torch.Tensor] = []

        def grab(module, inputs, output):
            got.append(output)
            raise _Stop

        handle = self.relu.register_forward_hook(grab)
        try:
            self.encoder(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return got[0].flatten(1)


class _Stop(Exception):
    """Ends the forward pass once the layer is read."""


def layer_view(encoder: nn.Module, layer: str) -> nn.Module:
    """The module whose output DFR reads: the encoder (last_hidden) or its k-th ReLU's output."""
    return encoder if layer == "last_hidden" else LayerView(encoder, int(layer.split("_")[1]))


def check_dfr_layer(cfg, data) -> None:
    """DFR on an inner layer fits one linear layer on that layer's features: one input space."""
    spaces = sorted(data.spaces())
    if cfg.dfr.enabled and cfg.dfr.layer != "last_hidden" and len(spaces) > 1:
        raise ConfigError(
            f"dfr.layer: {cfg.dfr.layer} reads an encoder's inner layer, but the groups have {len(spaces)} input "
            f"spaces ({', '.join(spaces)}) whose layers differ; use dfr.layer: last_hidden (the shared latent code)"
        )


def balanced_indices(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every group subsampled to the size of the smallest one."""
    present = np.unique(groups)
    n = min(int((groups == g).sum()) for g in present)
    return np.concatenate([rng.choice(np.flatnonzero(groups == g), n, replace=False) for g in present])


@functools.cache
def _l1() -> dict:
    """An L1 penalty, spelled as the installed scikit-learn wants it (``penalty`` is deprecated in 1.8).
    Asked on first use: importing scikit-learn costs ~0.8 s, which a run without DFR need not pay."""
    import sklearn

    major, minor = (int(x) for x in sklearn.__version__.split(".")[:2])
    return {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}


def __getattr__(name: str):
    if name == "L1":  # the penalty's keyword, ``fedanchors.dfr.L1``, read lazily
        return _l1()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fit_logreg(z: np.ndarray, y: np.ndarray, C: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """L1 logistic regression on standardised codes, folded back to logits W z + b: (K, d), (K,)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    mean, std = z.mean(0), z.std(0) + 1e-6
    binary = len(np.unique(y)) <= 2  # liblinear is binary only; saga fits the multinomial L1 model
    solver = "liblinear" if binary else "saga"
    clf = LogisticRegression(C=C, solver=solver, random_state=seed % 2**32, max_iter=500 if binary else 2000, **_l1())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit((z - mean) / std, y)
    coef, icpt = clf.coef_ / std, clf.intercept_ - (clf.coef_ / std) @ mean
    W, b = np.zeros((num_classes, z.shape[1])), np.full(num_classes, -1e4)  # classes never seen: never predicted
    if len(clf.classes_) == 2:  # one decision function: class 1 against class 0
        W[clf.classes_[1]], b[clf.classes_[1]] = coef[0], icpt[0]
        b[clf.classes_[0]] = 0.0
    else:
        W[clf.classes_], b[clf.classes_] = coef, icpt
    return W, b


def fit_balanced(
    z: np.ndarray, y: np.ndarray, g: np.ndarray, C: float, cfg: DFRConfig, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Average of ``cfg.subsets`` logistic regressions, each on a fresh group-balanced subsample."""
    rng = np.random.default_rng(seed)
    fits = []
    for k in range(cfg.subsets):
        idx = balanced_indices(g, rng)
        fits.append(fit_logreg(z[idx], y[idx], C, num_classes, seed + k))
    return np.mean([f[0] for f in fits], 0), np.mean([f[1] for f in fits], 0)


def linear_head(W: np.ndarray, b: np.ndarray) -> nn.Linear:
    """An ``nn.Linear`` computing W z + b (the shape of the ``linear`` head)."""
    head = nn.Linear(W.shape[1], W.shape[0])
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(W, dtype=torch.float32))
        head.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    return head


def worst_group_accuracy(W: np.ndarray, b: np.ndarray, z: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    hit = (z @ W.T + b).argmax(1) == y
    return float(min(hit[g == k].mean() for k in np.unique(g)))


def select_and_fit(
    z: np.ndarray, y: np.ndarray, g: np.ndarray, cfg: DFRConfig, num_classes: int, seed: int
) -> tuple[float, dict[float, float], np.ndarray, np.ndarray]:
    """Pick C on held-out worst-group accuracy (fit on one half of each group, score on the
    other), refit on everything with it. Returns (C, {C: wg acc}, W, b)."""
    rng = np.random.default_rng(seed)
    first = np.zeros(len(y), dtype=bool)
    for k in np.unique(g):
        rows = rng.permutation(np.flatnonzero(g == k))
        first[rows[: len(rows) // 2]] = True
    scores = {}
    for C in cfg.Cs:
        W, b = fit_balanced(z[first], y[first], g[first], C, cfg, num_classes, seed)
        scores[C] = worst_group_accuracy(W, b, z[~first], y[~first], g[~first])
    best = max(cfg.Cs, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    W, b = fit_balanced(z, y, g, best, cfg, num_classes, seed)
    return best, scores, W, b


def gaussian_codes(
    counts: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, per_group: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``per_group`` codes per group from its class Gaussians, classes in proportion.

    counts (G, C), means (G, C, d), covs (G, C, d, d) -> codes, labels, groups.
    """
    gen = torch.Generator().manual_seed(seed)
    zs, ys, gs = [], [], []
    d = means.shape[-1]
    for k in range(counts.shape[0]):
        share = counts[k].double() / counts[k].sum()
        n_c = torch.floor(share * per_group).long()
        n_c[int(share.argmax())] += per_group - int(n_c.sum())
        for c in torch.nonzero(n_c).squeeze(1).tolist():
            L = torch.linalg.cholesky(covs[k, c].double() + 1e-6 * torch.eye(d, dtype=torch.float64))
            eps = torch.randn(int(n_c[c]), d, generator=gen, dtype=torch.float64)
            zs.append((means[k, c].double() + eps @ L.T).numpy())
            ys.append(np.full(int(n_c[c]), c))
            gs.append(np.full(int(n_c[c]), k))
    return np.concatenate(zs), np.concatenate(ys), np.concatenate(gs)
