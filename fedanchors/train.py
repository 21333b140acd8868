"""Training maths shared by both modes: group losses, one optimizer step, local training."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedanchors.anchors import AnchorModule
from fedanchors.config import AnchorConfig, OptimConfig
from fedanchors.data.base import Split
from fedanchors.errors import ConfigError
from fedanchors.losses import SEPARATIONS, class_loss
from fedanchors.moments import batch_class_moments, class_sufficient_stats
from fedanchors.privacy import clip_rows
from fedanchors.registry import Registry
from fedanchors.wasserstein import structured_w2


def group_fit_losses(
    zs: list[torch.Tensor],
    ys: list[torch.Tensor],
    anchors: AnchorModule,
    cov_eps: float,
    detach: bool = False,
    kind: str = "w2",
) -> torch.Tensor:
    """W2 fit of each group's batch class moments to the anchors -> (G,).

    All groups' classes go through one batched ``structured_w2`` call (the anchors'
    structure); a group's value is the mean over the classes present in its batch.
    ``detach``: the anchors take no gradient from it (``anchors.update: barycenter`` moves
    them by another rule). ``kind="prototype"``: FedProto's term instead, the mean squared
    error between the codes and their class prototypes (mean over examples and dimensions,
    as FedProto's ``nn.MSELoss``: |z_i - m_{y_i}|^2 / d averaged over the batch).
    """
    if kind == "prototype":
        means = anchors.means.detach() if detach else anchors.means
        return torch.stack([((z - means[y]) ** 2).mean() for z, y in zip(zs, ys)])
    parts = [batch_class_moments(z, y, anchors.num_classes, cov_eps, anchors.structure) for z, y in zip(zs, ys)]
    classes = torch.cat([p[0] for p in parts])
    means = torch.cat([p[1] for p in parts])
    covs = torch.cat([p[2] for p in parts])
    am, ac = anchors.means, anchors.covariances()
    if detach:
        am, ac = am.detach(), ac.detach()
    w2 = structured_w2(am[classes], ac[classes], means, covs)
    sizes = [int(p[0].numel()) for p in parts]
    return torch.stack([chunk.mean() for chunk in torch.split(w2, sizes)])


def group_objective(
    ces: list[torch.Tensor],
    zs: list[torch.Tensor],
    ys: list[torch.Tensor],
    weights: torch.Tensor,
    anchors: AnchorModule,
    cfg: AnchorConfig,
    detach: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The objective both modes minimise on a batch of groups' codes ``zs`` (labels ``ys``),
    given each group's class loss ``ces`` and weight ``weights`` (G,):

        sum_g w_g CE_g + lambda_fit * sum_g w_g fit_g

    (a client's local step is the one-group case, w = 1: the server's weights enter through
    ``LocalWork.encoder_scale`` and the aggregation). Returns (loss, the CE part, the weighted
    fit or None when ``lambda_fit`` is 0). The separation term, which involves only the shared
    parts, is added where the anchors train: the centralized step and the server's anchor step.
    A ``torch.linalg.LinAlgError`` (overflowing codes) is the caller's divergence."""
    ce = (weights * torch.stack(ces)).sum()
    if cfg.lambda_fit <= 0:
        return ce, ce, None
    fit = (weights * group_fit_losses(zs, ys, anchors, cfg.cov_eps, detach, cfg.fit)).sum()
    return ce + cfg.lambda_fit * fit, ce, fit


@torch.no_grad()
def own_rates(encoders: dict[str, nn.Module], spaces: list[str], weights: list[float]) -> None:
    """``method.encoder_weighting: own``: after the backward pass of sum_g w_g L_g, divide each
    encoder's gradient by the summed weight of the groups of this batch that hold it, so an
    encoder learns from its holders' losses renormalised to sum 1 (a private encoder at full
    rate, whatever its group's weight; the head and the anchors keep the method's weights).
    ``spaces[i]``, ``weights[i]``: the input space and the weight of the batch's i-th group."""
    total: dict[str, float] = {}
    for s, w in zip(spaces, weights):
        total[s] = total.get(s, 0.0) + w
    for s, t in total.items():
        if t > 0:
            for p in encoders[s].parameters():
                if p.grad is not None:
                    p.grad.div_(t)


def separation_loss(
    anchors: AnchorModule, head: nn.Module, cfg: AnchorConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """The configured anchor separation loss."""
    return SEPARATIONS.get(cfg.sep, "anchors.sep")(anchors, head, cfg.samples, cfg.margin, generator)


# optim.name -> the local optimizer, built from the parameters and the optim section
OPTIMIZERS: Registry[Callable[[list, OptimConfig], torch.optim.Optimizer]] = Registry("optimizer")


@OPTIMIZERS.register("adam")
def adam(params: list, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam with L2 weight decay (``optim.weight_decay``)."""
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("sgd")
def sgd(params: list, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with ``optim.momentum`` and L2 weight decay."""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The ``optim.name`` optimizer over ``params``."""
    return OPTIMIZERS.get(cfg.name, "optim.name")(list(params), cfg)


def lr_at(cfg: OptimConfig, t: int, total: int) -> float:
    """``optim.lr`` at epoch or round ``t`` of ``total`` (1-based) under ``optim.schedule``:
    constant, or cosine, lr (1 + cos(pi (t - 1) / total)) / 2, which is lr at t = 1 and above 0
    at t = total. A function of t alone, so resuming needs no scheduler state."""
    if cfg.schedule == "constant" or total <= 0:
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (min(t, total) - 1) / total))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group of ``opt`` at learning rate ``lr``."""
    for group in opt.param_groups:
        group["lr"] = lr


def lr_config(cfg: OptimConfig, rnd: int, rounds: int) -> dict[str, float]:
    """What a federated round tells its clients of the schedule: {} when constant (the
    clients' ``optim.lr``), else ``{"lr": lr_at(...)}``."""
    return {} if cfg.schedule == "constant" else {"lr": lr_at(cfg, rnd, rounds)}


def clip_and_step(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], grad_clip: float) -> None:
    """Clip the global gradient norm (when > 0), then step."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded shuffle of range(n) cut into batches (the last may be short, never a single
    example when there are others: batch norm cannot train on one)."""
    perm = torch.randperm(n, generator=generator)
    out = list(torch.split(perm, batch_size))
    if len(out) > 1 and len(out[-1]) == 1:
        out[-2:] = [torch.cat(out[-2:])]
    return out


def group_batch_sizes(names: list[str], cfg: OptimConfig) -> list[int]:
    """Per-group batch sizes: ``optim.group_batch`` when set (it must name every group), else empty."""
    if not cfg.group_batch:
        return []
    if set(cfg.group_batch) != set(names) or min(cfg.group_batch.values()) < 1:
        raise ConfigError(
            f"optim.group_batch must give every group a batch size >= 1: groups are {names}, got {cfg.group_batch}"
        )
    return [cfg.group_batch[n] for n in names]


def steps_per_epoch(sizes: list[int], names: list[str], cfg: OptimConfig) -> int:
    """Optimizer steps in one epoch: one pass over the union, or over the largest group's share
    with fixed-ratio batches (smaller groups cycle)."""
    per_group = group_batch_sizes(names, cfg)
    if not per_group:
        return math.ceil(sum(sizes) / cfg.batch_size)
    return max(math.ceil(n / b) for n, b in zip(sizes, per_group))


class GroupCycler:
    """Endless seeded shuffles of one group's indices, ``take(k)`` at a time."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.gen, self.order = n, generator, torch.empty(0, dtype=torch.int64)

    def take(self, k: int) -> torch.Tensor:
        while len(self.order) < k:
            self.order = torch.cat([self.order, torch.randperm(self.n, generator=self.gen)])
        out, self.order = self.order[:k], self.order[k:]
        return out


def add_prox_grad(pairs: list[tuple[nn.Parameter, torch.Tensor]], mu: float) -> None:
    """Add the gradient of FedProx's mu/2 ||w - w_ref||^2, mu (w - w_ref), to each parameter."""
    with torch.no_grad():
        for p, ref in pairs:
            g = mu * (p - ref)
            p.grad = g if p.grad is None else p.grad.add_(g)


@dataclass(frozen=True)
class LocalWork:
    """What a client's round of local training does (``local_train``'s settings).

    ``encoder_scale`` multiplies the encoder's gradient: the total aggregation weight of the
    clients that hold this encoder (w_g for a private one); with plain SGD the federated step
    then equals the centralized step on sum_g w_g CE_g, while the head takes the unscaled
    gradient and the server averages it with weights w. ``num_classes`` > 0 gathers the class
    sufficient statistics of the last pass ("running" statistics: no extra forward pass).
    ``batch_size`` > 0 replaces ``optim.batch_size`` (fixed-ratio group batches). ``prox_mu``
    > 0 adds FedProx's prox_mu/2 ||w - w_ref||^2 over the (parameter, reference) pairs of
    ``prox_ref``. ``loss`` (a LossConfig) replaces CE by a long-tail loss, with ``logp`` the
    global log class prior the server sends. ``snapshot_step`` > 0 keeps a copy of the head and
    encoder after that step (DRFA's snapshot: ``local_train`` returns it as ``snapshot``);
    ``clip_code`` > 0 bounds each code's norm before it enters the statistics (privacy).
    """

    steps: int
    optim: OptimConfig
    anchors: AnchorConfig
    encoder_scale: float = 1.0
    num_classes: int = 0
    batch_size: int = 0
    prox_mu: float = 0.0
    prox_ref: tuple = ()
    loss: object = None
    logp: torch.Tensor | None = None
    snapshot_step: int = 0
    clip_code: float = 0.0  # > 0: codes clipped to this L2 norm before the statistics (privacy)


_DIVERGED = {"loss": float("nan"), "loss_first": float("nan"), "fit": float("nan"), "stats": None}


def local_train(
    encoder: nn.Module,
    head: nn.Module,
    anchors: AnchorModule,
    split: Split,
    opt: torch.optim.Optimizer,
    work: LocalWork,
    generator: torch.Generator,
    device: torch.device,
) -> dict:
    """A client's local work: ``work.steps`` steps of CE + lambda_fit * W2 fit (anchors fixed).

    Returns the mean CE and mean fit over the steps, the CE of the first step (at the model
    the round started from: ``loss_first``) and, with ``work.num_classes``, the class
    sufficient statistics of the latent codes of the last pass over the data. A non-finite
    loss ends the work with NaN records (the server rejects the reply, or stops the run when
    every reply diverged)."""
    params = list(encoder.parameters()) + list(head.parameters())
    order: list[torch.Tensor] = []
    ce_sum = fit_sum = 0.0
    first: float | None = None
    stats = snapshot = None
    for i in range(work.steps):
        if not order:
            order = batches(len(split), work.batch_size or work.optim.batch_size, generator)
            stats = None  # a new pass: keep the statistics of the last one only
        idx = order.pop(0)
        x, y = split.x[idx].to(device), split.y[idx].to(device)
        z = encoder(x)
        step = _local_step(encoder, head, anchors, opt, params, work, z, y)
        if step is None:
            return dict(_DIVERGED)
        ce, fit = step
        if i + 1 == work.snapshot_step:
            snapshot = {n: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for n, m in
                        (("head", head), ("encoder", encoder))}  # fmt: skip
        ce_sum, fit_sum = ce_sum + ce, fit_sum + fit
        first = ce if first is None else first  # the loss at the model the round started from
        if work.num_classes:
            zs = z.detach().cpu()
            if work.clip_code:  # privacy: each code's norm bounded before it enters the statistics
                zs = clip_rows(zs, work.clip_code)
            part = class_sufficient_stats(zs, y.cpu(), work.num_classes, anchors.structure)
            stats = part if stats is None else tuple(a + b for a, b in zip(stats, part))
    out = {"loss": ce_sum / work.steps, "loss_first": first, "fit": fit_sum / work.steps, "stats": stats}
    return out | ({"snapshot": snapshot} if snapshot is not None else {})


def _local_step(encoder, head, anchors, opt, params, work: LocalWork, z, y) -> tuple[float, float] | None:
    """One local step on the batch codes ``z``: (CE, fit), or None when the loss is not finite."""
    logits = head(z)
    ce = class_loss(logits, y, work.loss, work.logp) if work.loss is not None else F.cross_entropy(logits, y)
    if not math.isfinite(float(ce.detach())):
        return None
    try:
        loss, _, fit = group_objective(
            [ce], [z], [y], torch.ones(1, dtype=ce.dtype, device=ce.device), anchors, work.anchors
        )
    except torch.linalg.LinAlgError:  # overflowing codes: diverged, as above
        return None
    fit_value = float(fit.detach()) if fit is not None else 0.0
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if work.encoder_scale != 1.0:
        for p in encoder.parameters():
            if p.grad is not None:
                p.grad.mul_(work.encoder_scale)
    if work.prox_mu > 0 and work.prox_ref:
        add_prox_grad(list(work.prox_ref), work.prox_mu)
    clip_and_step(opt, params, work.optim.grad_clip)
    return float(ce.detach()), fit_value


def adapt_encoder(
    encoder: nn.Module,
    head: nn.Module,
    anchors: AnchorModule,
    split: Split,
    cfg_optim: OptimConfig,
    cfg_anchors: AnchorConfig,
    steps: int,
    generator: torch.Generator,
    device: torch.device,
    train_head: bool = False,
    loss_cfg=None,
    logp: torch.Tensor | None = None,
) -> dict:
    """A new client's adaptation: ``steps`` local steps of CE + lambda_fit * fit that move only
    its encoder (and its head when heads are local: it has no global one to hold to); the
    head and the anchors are frozen. Returns ``local_train``'s record."""
    frozen = [p for p in [*anchors.parameters(), *([] if train_head else head.parameters())] if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        params = list(encoder.parameters()) + (list(head.parameters()) if train_head else [])
        opt = make_optimizer(params, cfg_optim)
        work = LocalWork(steps, cfg_optim, cfg_anchors, loss=loss_cfg, logp=logp)
        return local_train(encoder, head, anchors, split, opt, work, generator, device)
    finally:
        for p in frozen:
            p.requires_grad_(True)
