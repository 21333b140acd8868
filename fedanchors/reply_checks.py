"""What the server checks in a client's reply before any of it is used (Flower-free).

A client is someone else's machine: a reply may be faulty or hostile. Each check returns ""
for a sound value, else the reason, which the server logs with the client, node and round;
the reply is then rejected (counted like a failed client) and never averaged. Checks:
arrays of the expected names, shapes and a float dtype, all finite; scalars finite and in
range; class statistics with counts >= 0 and covariances symmetric positive semidefinite
within a tolerance; evaluation counts integral, >= 0 and correct <= total.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedanchors.health import all_finite

PSD_TOL = 1e-3  # relative: eigenvalues >= -tol * (1 + largest |eigenvalue|); asymmetry <= tol * (1 + max |entry|)


def state_problem(got: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor], what: str) -> str:
    """``got`` must hold exactly ``ref``'s tensors (names, shapes), floating point and finite."""
    if set(got) != set(ref):
        missing, extra = sorted(set(ref) - set(got)), sorted(set(got) - set(ref))
        return f"{what}: expected tensors {missing[:3]} missing, unexpected {extra[:3]}"
    for k, r in ref.items():
        v = got[k]
        if tuple(v.shape) != tuple(r.shape):
            return f"{what}.{k}: shape {list(v.shape)}, expected {list(r.shape)}"
        if not v.is_floating_point():
            return f"{what}.{k}: dtype {v.dtype}, expected floating point"
        if not all_finite(v):
            return f"{what}.{k}: non-finite values"
    return ""


def scalar_problem(name: str, v: object, low: float = -math.inf) -> str:
    """A finite number >= ``low``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"{name}: not a number ({type(v).__name__})"
    if not math.isfinite(v):
        return f"{name}: {v} is not finite"
    if v < low:
        return f"{name}: {v} is below {low:g}"
    return ""


def stats_problem(stats: Mapping[str, np.ndarray], num_classes: int, dim: int, structure: str) -> str:
    """Class statistics: counts (C,) >= 0, means (C, d), covs (C, d, d) symmetric PSD (full),
    (C, d) >= 0 (diag) or (C, 0) (none); all finite."""
    if set(stats) != {"counts", "means", "covs"}:
        return f"class statistics: arrays {sorted(stats)}, expected counts, means, covs"
    counts, means, covs = (np.asarray(stats[k]) for k in ("counts", "means", "covs"))
    cov_shape = {"full": (num_classes, dim, dim), "diag": (num_classes, dim), "none": (num_classes, 0)}[structure]
    for name, a, shape in (("counts", counts, (num_classes,)), ("means", means, (num_classes, dim)),
                           ("covs", covs, cov_shape)):  # fmt: skip
        if a.shape != shape:
            return f"class statistics.{name}: shape {list(a.shape)}, expected {list(shape)}"
        if a.dtype.kind not in "fiu":
            return f"class statistics.{name}: dtype {a.dtype} is not numeric"
        if not np.isfinite(a).all():
            return f"class statistics.{name}: non-finite values"
    if (counts < 0).any():
        return "class statistics.counts: negative counts"
    present = counts > 0
    if structure == "diag" and (covs[present] < 0).any():
        return "class statistics.covs: negative variances"
    if structure == "full" and present.any():
        c = torch.from_numpy(np.ascontiguousarray(covs[present])).double()
        scale = 1 + c.abs().amax(dim=(-2, -1))
        if bool(((c - c.mT).abs().amax(dim=(-2, -1)) > PSD_TOL * scale).any()):
            return "class statistics.covs: not symmetric"
        low = torch.linalg.eigvalsh(0.5 * (c + c.mT))
        if bool((low[..., 0] < -PSD_TOL * (1 + low.abs().amax(-1))).any()):
            return "class statistics.covs: not positive semidefinite"
    return ""


def counts_problem(name: str, v: object, num_classes: int) -> str:
    """A list of ``num_classes`` integers >= 0."""
    if not isinstance(v, Sequence) or len(v) != num_classes:
        return f"{name}: expected {num_classes} per-class counts"
    if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in v):
        return f"{name}: counts must be integers >= 0"
    return ""


def evaluation_problem(metrics: Mapping[str, object], splits: Sequence[str], num_classes: int) -> str:
    """An evaluation reply: per split, correct and total counts (correct <= total) and a loss >= 0."""
    for s in splits:
        for k in (f"{s}_correct", f"{s}_total", f"{s}_loss"):
            if k not in metrics:
                return f"{k}: missing"
        why = (
            counts_problem(f"{s}_correct", metrics[f"{s}_correct"], num_classes)
            or counts_problem(f"{s}_total", metrics[f"{s}_total"], num_classes)
            or scalar_problem(f"{s}_loss", metrics[f"{s}_loss"], 0.0)
        )
        if why:
            return why
        if any(c > t for c, t in zip(metrics[f"{s}_correct"], metrics[f"{s}_total"])):
            return f"{s}_correct: more correct than evaluated examples"
    return ""
