"""Per-class Gaussian anchors N(m_c, S_c) with S_c = L_c L_c^T + eps I."""

from __future__ import annotations

import torch
from torch import nn


class AnchorModule(nn.Module):
    """C anchors in R^d: means m (C, d) and factors L (C, d, d), learnable.

    Factors start at the identity, so every S_c starts at (1 + eps) I: exactly the
    repeated-eigenvalue point where a naive matrix square root has NaN gradients.
    """

    def __init__(self, num_classes: int, dim: int, eps: float = 1e-4, init_scale: float = 1.0) -> None:
        super().__init__()
        self.eps = eps
        self.means = nn.Parameter(torch.randn(num_classes, dim) * init_scale)
        self.factors = nn.Parameter(torch.eye(dim).repeat(num_classes, 1, 1))

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    def covariances(self) -> torch.Tensor:
        """S (C, d, d) = L L^T + eps I."""
        eye = torch.eye(self.means.shape[1], dtype=self.means.dtype, device=self.means.device)
        return self.factors @ self.factors.mT + self.eps * eye

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised draws: n per class -> (z (C*n, d), labels (C*n,))."""
        c, d = self.means.shape
        kw = dict(dtype=self.means.dtype, device=self.means.device)
        e1 = torch.randn(c, n, d, generator=generator, **kw)
        e2 = torch.randn(c, n, d, generator=generator, **kw)
        z = self.means.unsqueeze(1) + e1 @ self.factors.mT + self.eps**0.5 * e2
        y = torch.arange(c, device=self.means.device).repeat_interleave(n)
        return z.reshape(c * n, d), y
