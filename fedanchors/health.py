"""Divergence guards shared by both modes: a non-finite loss, q, anchor or weight stops the run.

A run whose loss went NaN must not go on to write a summary with numbers that look real:
``check_finite`` raises ``Diverged`` (exit code 3) before the epoch's or round's checkpoint,
so the last good checkpoint stays on disk.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from fedanchors.errors import Diverged


def all_finite(v: torch.Tensor) -> bool:
    """Every entry of ``v`` is finite. A NaN or an infinity makes a sum non-finite (IEEE
    arithmetic propagates both), so a finite sum settles it in one cheap reduction (about 30x
    faster than ``isfinite(v).all()`` on a CNN's weights); a non-finite sum, which finite values
    can also give by overflowing, is settled entry by entry."""
    if not v.is_floating_point() or not v.numel():
        return True
    v = v.detach()
    return math.isfinite(float(v.sum())) or bool(torch.isfinite(v).all())


def first_non_finite(values: dict[str, float | torch.Tensor | None]) -> tuple[str, float] | None:
    """The first (name, value) that is NaN or infinite; tensors count when any entry is."""
    for name, v in values.items():
        if v is None:
            continue
        if isinstance(v, torch.Tensor):
            if not all_finite(v):
                bad = v[~torch.isfinite(v)].flatten()[0]
                return name, float(bad)
        elif not math.isfinite(float(v)):
            return name, float(v)
    return None


def module_tensors(modules: Iterable[tuple[str, nn.Module]]) -> dict[str, torch.Tensor]:
    """Every parameter and floating buffer of ``modules`` as ``<name>.<param>``."""
    return {f"{name}.{k}": t for name, m in modules for k, t in m.state_dict().items() if t.is_floating_point()}


def check_finite(values: dict[str, float | torch.Tensor | None], where: str, lr: float, checkpoint: str) -> None:
    """Raise ``Diverged`` naming what went non-finite, where, and what to do."""
    bad = first_non_finite(values)
    if bad is None:
        return
    name, value = bad
    raise Diverged(
        f"training diverged: {name} is {value} in {where}; stopped before writing that checkpoint, "
        f"the last good one is kept ({checkpoint}); lower optim.lr (now {lr:g}) or federated.server_lr, "
        "or clip gradients (optim.grad_clip), and start a new run"
    )


def flat_params(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Each module's parameters as one detached vector (a copy), for ``moved``."""
    return {n: torch.cat([p.detach().flatten() for p in m.parameters()]).clone() for n, m in modules.items()}


def moved(before: dict[str, torch.Tensor], modules: dict[str, nn.Module]) -> dict[str, float]:
    """``move:<name>``: the L2 norm of each module's parameter change since ``before``; what a
    part learned over an epoch or a round (an encoder starved of weight barely moves)."""
    after = flat_params(modules)
    return {f"move:{n}": float((after[n] - before[n]).norm()) for n in before}
