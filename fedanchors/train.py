"""Training maths shared by both modes: group losses, one optimizer step, local training."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from fedanchors.anchors import AnchorModule
from fedanchors.config import AnchorConfig, OptimConfig
from fedanchors.data.base import Split
from fedanchors.errors import ConfigError
from fedanchors.losses import SEPARATIONS, class_loss
from fedanchors.moments import batch_class_moments, class_sufficient_stats
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


def local_train(
    encoder: nn.Module,
    head: nn.Module,
    anchors: AnchorModule,
    split: Split,
    opt: torch.optim.Optimizer,
    cfg_optim: OptimConfig,
    cfg_anchors: AnchorConfig,
    steps: int,
    encoder_scale: float,
    generator: torch.Generator,
    device: torch.device,
    num_classes: int = 0,
    batch_size: int = 0,
    prox_mu: float = 0.0,
    prox_ref: list[tuple[nn.Parameter, torch.Tensor]] | None = None,
    loss_cfg=None,
    logp: torch.Tensor | None = None,
) -> dict:
    """A client's local work: ``steps`` steps of CE + lambda_fit * W2 fit (anchors fixed).

    The encoder's gradient is multiplied by ``encoder_scale``, the total aggregation
    weight of the clients that hold this encoder (w_g for a private one): with plain SGD
    this makes the federated step equal the centralized step on sum_g w_g CE_g, while
    the head takes the unscaled gradient and is averaged by the server with weights w.
    Returns the mean CE and mean fit over the steps, the CE of the first step (at the
    model the round started from: ``loss_first``), and
    with ``num_classes`` > 0 the class sufficient statistics of the latent codes of the
    last pass over the data ("running" statistics: no extra forward pass).
    ``batch_size`` (when > 0) replaces ``optim.batch_size`` (fixed-ratio group batches).
    ``prox_mu`` > 0 adds FedProx's term prox_mu/2 ||w - w_ref||^2 for the (parameter,
    reference) pairs of ``prox_ref`` (the global head and shared encoder of the round).
    ``loss_cfg`` (a LossConfig) replaces CE by a long-tail loss, with ``logp`` the global log
    class prior the server sends.
    """
    params = list(encoder.parameters()) + list(head.parameters())
    order: list[torch.Tensor] = []
    ce_sum = fit_sum = 0.0
    first: float | None = None
    stats = None
    for _ in range(steps):
        if not order:
            order = batches(len(split), batch_size or cfg_optim.batch_size, generator)
            stats = None  # a new pass: keep the statistics of the last one only
        idx = order.pop(0)
        x, y = split.x[idx].to(device), split.y[idx].to(device)
        z = encoder(x)
        ce = class_loss(head(z), y, loss_cfg, logp) if loss_cfg is not None else F.cross_entropy(head(z), y)
        if not math.isfinite(float(ce.detach())):  # diverged: report it (the server stops the run)
            return {"loss": float("nan"), "loss_first": float("nan"), "fit": float("nan"), "stats": None}
        loss = ce
        if cfg_anchors.lambda_fit > 0:
            try:
                fit = group_fit_losses([z], [y], anchors, cfg_anchors.cov_eps, kind=cfg_anchors.fit)[0]
            except torch.linalg.LinAlgError:  # overflowing codes: diverged, as above
                return {"loss": float("nan"), "loss_first": float("nan"), "fit": float("nan"), "stats": None}
            loss = loss + cfg_anchors.lambda_fit * fit
            fit_sum += float(fit.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if encoder_scale != 1.0:
            for p in encoder.parameters():
                if p.grad is not None:
                    p.grad.mul_(encoder_scale)
        if prox_mu > 0 and prox_ref:
            add_prox_grad(prox_ref, prox_mu)
        clip_and_step(opt, params, cfg_optim.grad_clip)
        ce_sum += float(ce.detach())
        if first is None:  # the loss at the model the round started from (the global one)
            first = float(ce.detach())
        if num_classes:
            part = class_sufficient_stats(z.detach().cpu(), y.cpu(), num_classes, anchors.structure)
            stats = part if stats is None else tuple(a + b for a, b in zip(stats, part))
    return {"loss": ce_sum / steps, "loss_first": first, "fit": fit_sum / steps, "stats": stats}


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
        return local_train(
            encoder, head, anchors, split, opt, cfg_optim, cfg_anchors, steps, 1.0, generator, device,
            loss_cfg=loss_cfg, logp=logp,
        )  # fmt: skip
    finally:
        for p in frozen:
            p.requires_grad_(True)
