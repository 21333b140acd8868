"""Client-level differential privacy of a client's round message: the maths, without Flower.

Under ``privacy.enabled`` a client sends, instead of its head, loss and class moments, one
*release*: blocks of bounded L2 norm (each at most 1, so the whole at most sqrt(k) for k
blocks):

- ``update``: its head (and shared encoder) after local training minus the model it was
  sent, flattened, clipped to ``clip_update`` and divided by it;
- ``counts``, ``sums``, ``outer``: the sufficient statistics of its latent codes, each code
  first clipped to norm ``clip_code`` = B, divided by its example count n (and by B, B^2):
  class frequencies n_c / n, sum_c z / (n B), sum_c z z^T / (n B^2). Their norms are at most
  1 because sum_c ||sum_{i in c} z_i|| <= sum_i ||z_i|| <= n B (and ||z z^T||_F = ||z||^2);
  every class is present, zero-filled, so the shape says nothing;
- ``loss``: its loss clipped to [0, ``clip_loss``], divided by it.

Dividing by n makes every client count once: the server's moments are the mixture of its
clients' class distributions (each client weighted 1), not the example-weighted pool that
the non-private path computes. One Gaussian mechanism covers the whole release: noise of
standard deviation ``z * sensitivity`` on every coordinate, sensitivity sqrt(k) when a client
is added or removed, 2 sqrt(k) when one is replaced (the relation under which sampling a fixed
number of clients without replacement is analysed). ``central``: the server adds it once to
each group's sum; ``local``: each client adds it to its own release.

``group_estimate`` turns a group's (noisy) sum into what the server uses: the mean update,
the loss, and class moments made robust to the noise (counts floored, means clipped to B,
covariances projected onto [cov_eps, B^2] eigenvalues), so noise cannot produce a NaN, a
negative count or a covariance that is not positive definite.
"""

from __future__ import annotations

import math
import os

import torch

from fedanchors.config_sections import PrivacyConfig
from fedanchors.health import all_finite
from fedanchors.models import stable_seed

BLOCKS = ("update", "counts", "sums", "outer", "loss")


def clip_rows(z: torch.Tensor, bound: float) -> torch.Tensor:
    """Each row of ``z`` scaled to L2 norm at most ``bound`` (rows inside are unchanged)."""
    norms = z.norm(dim=-1, keepdim=True)
    return z * (bound / norms.clamp_min(bound))


def clip_norm(v: torch.Tensor, bound: float) -> torch.Tensor:
    """``v`` scaled to L2 norm at most ``bound``."""
    n = float(v.norm())
    return v * (bound / n) if n > bound else v


def flatten(parts: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
    """The floating tensors of ``parts`` ({part: state dict}) as one float64 vector, in the
    parts' and state dicts' own order."""
    vs = [v.detach().double().reshape(-1) for sd in parts.values() for v in sd.values() if v.is_floating_point()]
    return torch.cat(vs) if vs else torch.zeros(0, dtype=torch.float64)


def unflatten(vec: torch.Tensor, like: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    """``flatten``'s inverse onto the shapes of ``like`` (non-floating tensors are copied from it)."""
    out, i = {}, 0
    for name, sd in like.items():
        out[name] = {}
        for k, v in sd.items():
            if not v.is_floating_point():
                out[name][k] = v
                continue
            out[name][k] = vec[i : i + v.numel()].reshape(v.shape).to(v.dtype)
            i += v.numel()
    if i != vec.numel():
        raise ValueError(f"a release of {vec.numel()} values does not fit a model of {i}")
    return out


def client_release(
    update: torch.Tensor | None, stats: tuple | None, n: int, loss: float, cfg: PrivacyConfig
) -> dict[str, torch.Tensor]:
    """A client's blocks, each of L2 norm at most 1 (see the module's docstring). ``update``:
    the flattened change of the shared parts; ``stats``: (counts, sums, outer sums) of codes
    already clipped to ``clip_code``; ``n``: the client's example count."""
    out: dict[str, torch.Tensor] = {}
    if update is not None and update.numel():
        out["update"] = clip_norm(update.double(), cfg.clip_update) / cfg.clip_update
    if stats is not None:
        b = cfg.clip_code
        counts, sums, outer = (t.double() for t in stats)
        out["counts"] = counts / n
        out["sums"] = sums / (n * b)
        out["outer"] = outer / (n * b * b)
    out["loss"] = torch.tensor([min(max(float(loss), 0.0), cfg.clip_loss) / cfg.clip_loss], dtype=torch.float64)
    return out


def sensitivity(blocks: int, replace: bool) -> float:
    """The release's L2 sensitivity: sqrt(k) (add or remove a client), 2 sqrt(k) (replace one)."""
    return (2.0 if replace else 1.0) * math.sqrt(blocks)


def noise_generator(cfg: PrivacyConfig, seed: int, *key) -> torch.Generator:
    """The noise's generator: from the run's seed with ``seeded_noise`` (a study that repeats),
    else from the operating system's randomness (what a deployment needs: seeded noise is
    known to whoever knows the seed)."""
    if cfg.seeded_noise:
        return torch.Generator().manual_seed(stable_seed(seed, "privacy-noise", *key))
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") & (2**63 - 1))


def add_noise(release: dict[str, torch.Tensor], std: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every coordinate of ``release`` plus N(0, std^2)."""
    return {k: v + std * torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in release.items()}


def sum_releases(releases: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The blockwise sum of a group's releases (what secure aggregation would reveal)."""
    return {k: sum(r[k] for r in releases) for k in releases[0]}


def _psd(cov: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Symmetrised, eigenvalues clamped to [lo, hi]: positive definite whatever the noise."""
    cov = 0.5 * (cov + cov.mT)
    vals, vecs = torch.linalg.eigh(cov)
    return (vecs * vals.clamp(lo, hi).unsqueeze(-2)) @ vecs.mT


def group_estimate(
    total: dict[str, torch.Tensor], clients: int, cfg: PrivacyConfig, noise_std: float, cov_eps: float
) -> dict[str, torch.Tensor]:
    """A group's (noisy) summed release over its ``clients`` answering clients -> the mean
    ``update`` (in the model's units), the ``loss`` (in [0, clip_loss]) and the class
    ``counts`` (client mass, >= 0), ``means`` (norm <= B) and ``covs`` (eigenvalues in
    [cov_eps, B^2]; variances for a diagonal structure, (C, 0) for none). ``noise_std``: the
    standard deviation of the noise on each coordinate of ``total``, the floor of a class's
    count when its mean and second moment are divided by it."""
    b = cfg.clip_code
    out = {"loss": (cfg.clip_loss * total["loss"] / clients).clamp(0, cfg.clip_loss).reshape(())}
    if "update" in total:
        out["update"] = cfg.clip_update * total["update"] / clients
    if "counts" not in total:
        return out
    counts = total["counts"].clamp_min(0)
    floor = counts.clamp_min(max(noise_std, 1e-6))
    means = b * total["sums"] / floor[:, None]
    means = clip_rows(means, b)
    outer = total["outer"]
    if outer.shape[-1] == 0:
        covs = outer
    elif outer.dim() == 2:  # diagonal: sums of squares -> variances
        covs = (b * b * outer / floor[:, None] - means**2).clamp(cov_eps, b * b)
    else:
        second = b * b * outer / floor[:, None, None]
        covs = _psd(second - means[:, :, None] * means[:, None, :], cov_eps, b * b)
    return out | {"counts": counts, "means": means, "covs": covs}


def private_reply(
    cfg, start: dict, end: dict, stats: tuple | None, n: int, loss: float, std: float, pid: int, rnd: int
) -> dict[str, torch.Tensor]:
    """A client's whole private reply: its release from the shared parts before (``start``)
    and after (``end``) local training, with its own noise of ``std`` when ``privacy.noise``
    is local (``std`` is 0 for central noise)."""
    p = cfg.privacy
    update = flatten(end) - flatten(start) if end else None
    release = client_release(update, stats, n, loss, p)
    if p.noise == "local":
        release = add_noise(release, std, noise_generator(p, cfg.seed, "local", pid, rnd))
    return release


def release_problem(release: dict, shapes: dict[str, tuple]) -> str:
    """Why a private reply cannot be used ("" when it can): the blocks and shapes this
    client's release must have, every value finite (noise can make them any finite number)."""
    if set(release) != set(shapes):
        return f"a private reply with blocks {sorted(release)}, expected {sorted(shapes)}"
    for k, shape in shapes.items():
        v = torch.as_tensor(release[k])
        if tuple(v.shape) != tuple(shape):
            return f"private block {k} has shape {tuple(v.shape)}, expected {tuple(shape)}"
        if not all_finite(v):
            return f"private block {k} is not finite"
    return ""
