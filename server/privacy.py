"""The privacy budget of a run: Flower's RDP accountant (``flwr.serverapp.RdpAccountant``, over
Google's ``dp-accounting``) for the mechanism ``fedanchors.privacy`` releases each round.

How a round is accounted (``accounting``):

- central noise, a fixed number m of the N training clients drawn uniformly without
  replacement (``federated.sampling: uniform``): Flower's ``without-replacement`` sampling,
  which it analyses under the *replace-one* relation, so the release's sensitivity is
  2 sqrt(k) for k blocks;
- central noise with every client every round (``clients_per_round: 0``), or local noise
  (the server sees who sent what, so sampling amplifies nothing): ``no-amplification`` under
  *add-or-remove-one*, sensitivity sqrt(k), one Gaussian mechanism per round.

Stratified sampling (a client of every group first) and DRFA's sampling by lambda give
clients unequal probabilities, which none of these analyses covers: the config checks refuse
them with privacy on. ``noise_multiplier`` is the noise's standard deviation over the
sensitivity; ``privacy.target_epsilon`` chooses the smallest one (by bisection) whose epsilon
after ``federated.rounds`` rounds is at most the target.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

from fedanchors.config import Config, anchors_used
from fedanchors.errors import ConfigError
from fedanchors.privacy import sensitivity


def blocks(cfg: Config) -> int:
    """The release's blocks: the update (a global head or a shared encoder; counted whenever
    one may be sent, which can only overstate the sensitivity), the three statistics (with
    anchors) and the loss."""
    f = cfg.federated
    update = f.head_sharing == "global" or f.encoder_sharing == "space"
    return int(update) + (3 if anchors_used(cfg) else 0) + 1


@dataclass
class Accounting:
    sampling: SamplingMethod
    relation: NeighboringRelation
    population: int
    sample: int

    @property
    def replace(self) -> bool:
        return self.relation is NeighboringRelation.REPLACE_ONE


def accounting(cfg: Config, population: int) -> Accounting:
    """How a round of this run is accounted (see the module's docstring)."""
    m = cfg.federated.clients_per_round
    if cfg.privacy.noise == "local" or m <= 0 or m >= population:
        return Accounting(
            SamplingMethod.NO_AMPLIFICATION, NeighboringRelation.ADD_OR_REMOVE_ONE, population, population
        )
    return Accounting(SamplingMethod.WITHOUT_REPLACEMENT, NeighboringRelation.REPLACE_ONE, population, m)


def epsilon(cfg: Config, acc: Accounting, z: float, rounds: int) -> float:
    """Epsilon at ``privacy.delta`` after ``rounds`` rounds at noise multiplier ``z``."""
    if rounds <= 0:
        return 0.0
    a = RdpAccountant(PrivacyConfig(cfg.privacy.delta, acc.population, acc.relation, acc.sampling))
    a.compose(GaussianPrivacyEvent(z, acc.sample, acc.population), rounds)
    return a.get_epsilon(cfg.privacy.delta)


def noise_for(cfg: Config, acc: Accounting, rounds: int) -> float:
    """The smallest noise multiplier (to 0.1%) whose epsilon after ``rounds`` is within the target."""
    target = cfg.privacy.target_epsilon
    lo, hi = 0.01, 1.0
    while epsilon(cfg, acc, hi, rounds) > target:
        lo, hi = hi, hi * 2
        if hi > 1e5:
            raise ConfigError(f"privacy.target_epsilon={target:g} cannot be met in {rounds} rounds; raise it")
    while hi - lo > 1e-3 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if epsilon(cfg, acc, mid, rounds) <= target else (mid, hi)
    return hi


class Budget:
    """A run's noise multiplier, the noise's standard deviation and the epsilon spent."""

    def __init__(self, cfg: Config, population: int) -> None:
        self.cfg, p = cfg, cfg.privacy
        self.acc = accounting(cfg, population)
        rounds = cfg.federated.rounds
        self.z = p.noise_multiplier if p.noise_multiplier > 0 else noise_for(cfg, self.acc, rounds)
        self.std = self.z * sensitivity(blocks(cfg), self.acc.replace)
        self.check(rounds, before_training=True)

    def epsilon(self, rounds: int) -> float:
        return epsilon(self.cfg, self.acc, self.z, rounds)

    def check(self, rnd: int, before_training: bool = False) -> None:
        """Stop (one line) before round ``rnd`` if it would take epsilon past the target."""
        target = self.cfg.privacy.target_epsilon
        if target <= 0 or self.epsilon(rnd) <= target * (1 + 1e-9):
            return
        last = next((r for r in range(rnd - 1, 0, -1) if self.epsilon(r) <= target), 0)
        when = f"federated.rounds={rnd}" if before_training else f"round {rnd}"
        raise ConfigError(
            f"privacy: {when} would spend epsilon={self.epsilon(rnd):.3g} at noise_multiplier={self.z:g}, "
            f"above privacy.target_epsilon={target:g} (delta={self.cfg.privacy.delta:g}); run at most {last} "
            "rounds, raise privacy.noise_multiplier, or leave it at 0 to have it chosen for the target"
        )


def check_budget(cfg: Config, population: int) -> Budget | None:
    """The run's budget (None without privacy); a budget the planned rounds would exceed is a
    ConfigError before anything is trained or written."""
    return Budget(cfg, population) if cfg.privacy.enabled else None


def preflight(cfg: Config, data) -> None:
    """The budget checked against the population before any run directory exists."""
    if not cfg.privacy.enabled or cfg.mode != "federated":
        return
    from fedanchors.population import build_population, held_out

    groups = [c.group for c in build_population(data, cfg.federated, cfg.seed)]
    check_budget(cfg, len(groups) - len(held_out(groups, cfg.federated.holdout, cfg.seed)))
