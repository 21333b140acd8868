"""The gap analyses of group performance gaps (``analysis:`` in the config), both modes.

At an analysed epoch (round) t, on the model entering it:

* **gradient basis**: each group's gradient g_g of its mean training loss L_g with respect to
  the parameters (``shared``: the head and encoders held by several groups; a private
  encoder's part is reported as ``private_norm:<g>``), the Gram matrix K_gh = <g_g, g_h>
  over every parameter (private parts only meet on the diagonal), cosines, the singular
  values of the stacked shared gradients, and ``span_other:<g>``: the share of
  ||g_g||^2 inside the span of the other groups' gradients.
* **gap dynamics**: under gradient flow on sum_h p_h L_h (p = the method's weights: ERM the
  group fractions, importance weighting uniform, GroupDRO q), dL_g/dt = -sum_h p_h K_gh
  (``pred_rate:<g>``). Observed: centralized, one full-batch SGD probe step of size eta on a
  copy of the model, (L_g' - L_g) / eta (``obs_rate:<g>``), and the change over the epoch the
  training then takes (``obs_epoch_change:<g>``); federated, the change between this round's
  and the next round's group losses divided by the local learning rate. The gap is the
  worst minus the best group loss (groups chosen at t): ``pred_gap_rate``, ``obs_gap_rate``.
* **static / dynamic decomposition**: the accuracy gap (best minus worst group, validation)
  of a group-balanced L1 logistic probe on the frozen latent codes (what the representation
  allows, as DFR measures it) is ``static_gap``; ``dynamic_gap`` = ``model_gap`` - static.
  Federated: probe and model are scored on codes drawn from the clients' class Gaussians.
* **Jacobian norms**: per group, the mean over examples of the Frobenius norm of the
  encoder's Jacobian w.r.t. its input and of the head's w.r.t. the code, each from
  ``analysis.projections`` Gaussian projections (E ||v^T J||^2 = ||J||_F^2).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedanchors.losses import class_loss


def enabled(cfg) -> bool:
    """Whether any analysis is on."""
    a = cfg.analysis
    return a.gradient_basis or a.gap_dynamics or a.static_dynamic or a.jacobian


def due(cfg, t: int) -> bool:
    """Whether epoch (round) t is analysed: any analysis on, and t listed (or no list)."""
    return enabled(cfg) and (not cfg.analysis.at or t in cfg.analysis.at)


def unique_params(modules: list[nn.Module]) -> list[nn.Parameter]:
    seen, out = set(), []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def group_gradients(
    encoders: list[nn.Module], head: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], loss_cfg, logp
) -> tuple[torch.Tensor, torch.Tensor, list[nn.Parameter]]:
    """(G, P) float64 gradients of each group's mean loss over its batch, the losses (G,), and
    the parameter order (the head's, then each encoder's, each once)."""
    params = unique_params([head, *encoders])
    index, start = {}, 0
    for p in params:
        index[id(p)] = (start, start + p.numel())
        start += p.numel()
    rows, losses = [], []
    for enc, (x, y) in zip(encoders, batches):
        mine = unique_params([head, enc])
        loss = class_loss(head(enc(x)), y, loss_cfg, logp)
        grads = torch.autograd.grad(loss, mine, allow_unused=True)
        row = torch.zeros(start, dtype=torch.float64)
        for p, g in zip(mine, grads):
            if g is not None:
                a, b = index[id(p)]
                row[a:b] = g.detach().flatten().double().cpu()
        rows.append(row)
        losses.append(float(loss.detach()))
    return torch.stack(rows), torch.tensor(losses, dtype=torch.float64), params


def shared_mask(params: list[nn.Parameter], head: nn.Module, encoders: list[nn.Module]) -> torch.Tensor:
    """(P,) bool over the flattened ``params``: the head's and those of encoders held by several groups."""
    users: dict[int, int] = {}
    for e in encoders:
        users[id(e)] = users.get(id(e), 0) + 1
    shared_ids = {id(p) for p in head.parameters()}
    for e in encoders:
        if users[id(e)] > 1:
            shared_ids |= {id(p) for p in e.parameters()}
    return torch.cat([torch.full((p.numel(),), id(p) in shared_ids) for p in params])


def decomposition(model: dict[str, float], probe: dict[str, float]) -> dict[str, float]:
    """model_gap, static_gap (the probe's) and dynamic_gap = model - static, with per-group accuracies."""
    out = {f"model_acc:{n}": v for n, v in model.items()} | {f"probe_acc:{n}": v for n, v in probe.items()}
    out |= {"model_gap": gap(model), "static_gap": gap(probe)}
    out["dynamic_gap"] = out["model_gap"] - out["static_gap"]
    return out


def basis(G: torch.Tensor, shared: torch.Tensor, names: list[str]) -> dict[str, float]:
    """Norms, Gram matrix, cosines, singular values and span shares of the stacked gradients
    ``G`` (groups x parameters); ``shared`` (P,) marks the shared parameters."""
    K = G @ G.T
    Ks = G[:, shared] @ G[:, shared].T
    out: dict = {}
    n = len(names)
    for i, a in enumerate(names):
        out[f"norm:{a}"] = float(K[i, i].sqrt())
        out[f"shared_norm:{a}"] = float(Ks[i, i].clamp_min(0).sqrt())
        out[f"private_norm:{a}"] = float((K[i, i] - Ks[i, i]).clamp_min(0).sqrt())
        for j in range(n):
            if j > i:
                b = names[j]
                out[f"K:{a}|{b}"] = float(K[i, j])
                out[f"cos:{a}|{b}"] = float(K[i, j] / (K[i, i] * K[j, j]).sqrt().clamp_min(1e-30))
        others = [j for j in range(n) if j != i]
        if others and float(K[i, i]) > 0:
            k = K[others, i]
            out[f"span_other:{a}"] = float(k @ torch.linalg.pinv(K[others][:, others]) @ k / K[i, i])
    out["sv"] = torch.linalg.svdvals(G[:, shared]).tolist()
    return out


def rates(K: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """dL_g/dt = -sum_h p_h K_gh under gradient flow on sum_h p_h L_h."""
    return -(K @ p.to(K.dtype))


def gap_terms(names, losses, pred, obs, p) -> dict[str, float]:
    """Per group: loss, weight, predicted and observed rates; the worst-minus-best gap's rates."""
    worst, best = int(torch.argmax(losses)), int(torch.argmin(losses))
    out = {"gap_worst": names[worst], "gap_best": names[best], "loss_gap": float(losses[worst] - losses[best])}
    for i, n in enumerate(names):
        out |= {f"loss:{n}": float(losses[i]), f"weight:{n}": float(p[i]), f"pred_rate:{n}": float(pred[i])}
        if obs is not None:
            out[f"obs_rate:{n}"] = float(obs[i])
    out["pred_gap_rate"] = float(pred[worst] - pred[best])
    if obs is not None:
        out["obs_gap_rate"] = float(obs[worst] - obs[best])
    return out


@torch.no_grad()
def probe_step(encoders, head, batches, G, params, p, lr, loss_cfg, logp) -> torch.Tensor:
    """Group losses after one SGD step of size ``lr`` on sum_h p_h L_h (on copies)."""
    mods = copy.deepcopy(nn.ModuleList([head, *encoders]))
    head2, encs2 = mods[0], list(mods[1:])
    step = (p.to(G.dtype) @ G) * lr
    by_id = {id(q): q2 for q, q2 in zip(unique_params([head, *encoders]), unique_params([head2, *encs2]))}
    start = 0
    for q in params:
        q2 = by_id[id(q)]
        q2.sub_(step[start : start + q.numel()].view_as(q2).to(q2.dtype))
        start += q.numel()
    return torch.tensor(
        [float(class_loss(head2(e(x)), y, loss_cfg, logp)) for e, (x, y) in zip(encs2, batches)], dtype=torch.float64
    )


def jacobian_norm(f: nn.Module, x: torch.Tensor, projections: int, gen: torch.Generator) -> float:
    """Mean over examples of ||J_f(x)||_F, estimated by E_v ||v^T J||^2 with v ~ N(0, I)."""
    x = x.detach().clone().requires_grad_(True)
    y = f(x)
    total = torch.zeros(len(x), dtype=torch.float64)
    for _ in range(projections):
        v = torch.randn(y.shape, generator=gen).to(y)
        (gx,) = torch.autograd.grad(y, x, v, retain_graph=True)
        total += gx.flatten(1).pow(2).sum(1).double().cpu()
    return float((total / projections).sqrt().mean())


def encoder_head_jacobians(
    encoder: nn.Module, head: nn.Module, x: torch.Tensor, projections: int, gen: torch.Generator
) -> dict[str, float]:
    """``jac_enc`` and ``jac_head`` (``jacobian_norm``) of one group's encoder at its inputs ``x``
    and of the head at their codes, the modules in eval mode and put back as they were; both
    modes record these (centralized per group, a federated client for its own group)."""
    modes = encoder.training, head.training
    encoder.eval()
    head.eval()
    try:
        out = {"jac_enc": jacobian_norm(encoder, x, projections, gen)}
        with torch.no_grad():
            z = encoder(x)
        out["jac_head"] = jacobian_norm(head, z, projections, gen)
    finally:
        encoder.train(modes[0])
        head.train(modes[1])
    return out


def gap(acc: dict[str, float]) -> float:
    vals = [v for v in acc.values() if not math.isnan(v)]
    return max(vals) - min(vals)


def probe_accuracies(z_tr, y_tr, g_tr, z_ev, y_ev, g_ev, C: float, num_classes: int, seed: int, names) -> dict:
    """Per-group accuracy on (z_ev, y_ev) of the group-balanced L1 logistic probe fitted on the
    training codes (the static part's probe)."""
    from fedanchors.config import DFRConfig
    from fedanchors.dfr import fit_balanced

    W, b = fit_balanced(z_tr, y_tr, g_tr, C, DFRConfig(subsets=1), num_classes, seed)
    return group_accuracy((z_ev @ W.T + b).argmax(1) == y_ev, g_ev, names)


def group_accuracy(hit: np.ndarray, groups: np.ndarray, names: list[str]) -> dict[str, float]:
    """Per group, the share of ``hit`` (NaN for a group with no example)."""
    return {n: float(hit[groups == k].mean()) if (groups == k).any() else float("nan") for k, n in enumerate(names)}


def read_analysis(run: Path) -> list[dict]:
    p = Path(run) / "analysis.jsonl"
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.is_file() else []


def plot_analysis(run: Path) -> Path | None:
    """analysis.png: gradient cosines, span shares and norms; predicted vs observed rates; the
    static / dynamic gap; Jacobian norms: whichever the records hold."""
    recs = read_analysis(run)
    if not recs:
        return None
    from fedanchors.plots import _pyplot

    plt = _pyplot()
    unit = "epoch" if "epoch" in recs[0] else "round"
    x = [r[unit] for r in recs]
    panels = [
        ("gradient cosines", "cos:"), ("span of the others' gradients", "span_other:"), ("gradient norms", "norm:"),
        ("dL/dt: predicted (solid), observed (dashed)", "pred_rate:"), ("accuracy gap (validation)", "_gap"),
        ("Jacobian Frobenius norms", "jac_"),
    ]  # fmt: skip
    keys = {t: sorted({k for r in recs for k in r if k.startswith(pre) or (pre == "_gap" and k in
                       ("static_gap", "dynamic_gap", "model_gap"))}) for t, pre in panels}  # fmt: skip
    panels = [(t, pre) for t, pre in panels if keys[t]]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, pre) in zip(axes.flat, panels):
        for k in keys[title]:
            ys = [r.get(k) for r in recs]
            label = k.replace("jac_", "") if k.startswith("jac_") else k.split(":", 1)[-1]
            line = ax.plot(x, [np.nan if v is None else v for v in ys], marker=".", label=label)[0]
            if pre == "pred_rate:":
                obs = [r.get("obs_rate:" + k.split(":", 1)[1]) for r in recs]
                ax.plot(x, [np.nan if v is None else v for v in obs], "--", color=line.get_color())
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(unit)
        ax.legend(fontsize=6)
    fig.suptitle(f"{Path(run).name}: the gap analyses", fontsize=10)
    fig.tight_layout()
    out = Path(run) / "analysis.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
