"""Per-class Gaussian anchors N(m_c, S_c): full (S_c = L_c L_c^T + eps I), diagonal
(S_c = diag(f_c^2) + eps I) or means only (``anchors.covariance``)."""

from __future__ import annotations

import torch
from torch import nn

STRUCTURES = ("full", "diag", "none")


class AnchorModule(nn.Module):
    """C anchors in R^d: means m (C, d) and learnable factors whose shape is the structure's.

    ``full``: factors L (C, d, d), starting at the identity, so every S_c starts at
    (1 + eps) I: exactly the repeated-eigenvalue point where a naive matrix square root has
    NaN gradients. ``diag``: standard deviations f (C, d), starting at 1. ``none``: no
    covariance (factors (C, 0)); the fit is the squared distance between means.
    """

    def __init__(
        self, num_classes: int, dim: int, eps: float = 1e-4, init_scale: float = 1.0, structure: str = "full"
    ) -> None:
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"anchor structure {structure!r} is not one of {STRUCTURES}")
        self.eps, self.structure = eps, structure
        self.means = nn.Parameter(torch.randn(num_classes, dim) * init_scale)
        shape = {"full": (num_classes, dim, dim), "diag": (num_classes, dim), "none": (num_classes, 0)}[structure]
        start = torch.eye(dim).repeat(num_classes, 1, 1) if structure == "full" else torch.ones(shape)
        self.factors = nn.Parameter(start)

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    def covariances(self) -> torch.Tensor:
        """The structure's covariance: S (C, d, d) = L L^T + eps I; variances (C, d) = f^2 + eps;
        or (C, 0) for means only (what ``structured_w2`` takes)."""
        if self.structure == "full":
            eye = torch.eye(self.means.shape[1], dtype=self.means.dtype, device=self.means.device)
            return self.factors @ self.factors.mT + self.eps * eye
        if self.structure == "diag":
            return self.factors**2 + self.eps
        return self.factors

    def full_covariances(self) -> torch.Tensor:
        """S (C, d, d) whatever the structure (means only: eps I)."""
        s = self.covariances()
        if self.structure == "full":
            return s
        d = self.means.shape[1]
        eye = torch.eye(d, dtype=self.means.dtype, device=self.means.device)
        return torch.diag_embed(s) if self.structure == "diag" else self.eps * eye.expand(self.num_classes, d, d)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised draws: n per class -> (z (C*n, d), labels (C*n,))."""
        c, d = self.means.shape
        kw = dict(dtype=self.means.dtype, device=self.means.device)
        e1 = torch.randn(c, n, d, generator=generator, **kw)
        e2 = torch.randn(c, n, d, generator=generator, **kw)
        if self.structure == "full":
            spread = e1 @ self.factors.mT
        elif self.structure == "diag":
            spread = e1 * self.factors.unsqueeze(1)
        else:
            spread = torch.zeros_like(e1)
        z = self.means.unsqueeze(1) + spread + self.eps**0.5 * e2
        y = torch.arange(c, device=self.means.device).repeat_interleave(n)
        return z.reshape(c * n, d), y
