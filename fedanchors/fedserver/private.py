"""The server's side of client-level differential privacy (``fedanchors.privacy``): a round
aggregated from the clients' releases, only ever through each group's sum. A mixin of
``ServerCore``.

Per answering group the releases are summed (all that secure aggregation would let the
server see), noised once when ``privacy.noise`` is central, and turned into the group's mean
update, loss and class moments (``group_estimate``). The head and shared encoders then move
by the groups' mean updates weighted by the method's group weights; GroupDRO reads the
noisy group losses; the anchors are fitted to the noisy moments.
"""

from __future__ import annotations

import math

import torch

from fedanchors.config import anchors_used
from fedanchors.privacy import add_noise, group_estimate, noise_generator, sum_releases, unflatten


class PrivateMixin:
    """State: ``privacy_std``, the noise's standard deviation per coordinate (central: on a
    group's sum; local: on each release), set by whoever accounts for the budget."""

    privacy_std: float = 0.0
    secure_sums: dict | None = None  # secure aggregation: group -> (summed release, clients, a member)

    def release_shapes(self, pid: int) -> dict[str, tuple]:
        """The blocks (and shapes) client ``pid``'s private reply must have."""
        shapes: dict[str, tuple] = {"loss": (1,)}
        n = sum(v.numel() for sd in self.private_layout(pid).values() for v in sd.values() if v.is_floating_point())
        if n:
            shapes["update"] = (n,)
        if anchors_used(self.cfg):
            a = self.anchors
            C, d = a.num_classes, a.means.shape[-1]
            outer = {"full": (C, d, d), "diag": (C, d), "none": (C, 0)}[a.structure]
            shapes |= {"counts": (C,), "sums": (C, d), "outer": outer}
        return shapes

    def private_layout(self, pid: int) -> dict[str, dict[str, torch.Tensor]]:
        """The parts a client's update block covers, in its order: the global head, then its
        space's shared encoder."""
        out = {"head": self.head.state_dict()} if self.cfg.federated.head_sharing == "global" else {}
        space = self.info[pid]["space"]
        if space in self.encoders:
            out[f"encoder.{space}"] = self.encoders[space].state_dict()
        return out

    def private_groups(self, rnd: int, ok, answered: list[int]) -> dict[int, dict[str, torch.Tensor]]:
        """Each answering group's estimate from the sum of its clients' releases."""
        p = self.cfg.privacy
        out = {}
        for g in answered:
            if self.secure_sums is not None:  # only the group's sum was ever seen
                total, k, member = self.secure_sums[g]
            else:
                mine = [u for u in ok if self.cgroup[u.pid] == g]
                total, k, member = sum_releases([u.release for u in mine]), len(mine), mine[0].pid
            if p.noise == "central":
                total = add_noise(total, self.privacy_std, noise_generator(p, self.cfg.seed, "central", rnd, g))
                std = self.privacy_std
            else:  # each release carries its own noise: the sum's is sqrt(K) times larger
                std = self.privacy_std * math.sqrt(k)
            est = group_estimate(total, k, p, std, self.cfg.anchors.cov_eps)
            if "update" in est:
                est["parts"] = unflatten(est.pop("update"), self.private_layout(member))
            out[g] = est
        return out

    def private_combined(self, current: dict, est: dict, answered: list[int]) -> dict:
        """Each shared part moved by its holding groups' mean updates, weighted by the group weights."""
        combined = {}
        for name, sd in current.items():
            holders = [g for g in answered if name in est[g].get("parts", {})]
            w = torch.tensor([float(self.group_weights[g]) for g in holders], dtype=torch.float64)
            if not holders or float(w.sum()) <= 0:
                continue
            w = w / w.sum()
            combined[name] = {
                k: (v.double() + sum(wi * est[g]["parts"][name][k].double() for wi, g in zip(w.tolist(), holders))).to(
                    v.dtype
                )
                if v.is_floating_point()
                else v
                for k, v in sd.items()
            }
        return combined

    @staticmethod
    def private_stats(est: dict, answered: list[int]) -> dict[str, torch.Tensor] | None:
        if "counts" not in est[answered[0]]:
            return None
        return {k: torch.stack([est[g][k].float() for g in answered]) for k in ("counts", "means", "covs")}
