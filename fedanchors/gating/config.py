"""The gate's typed config (``python -m fedanchors.gating --config configs/gating/<x>.yaml``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fedanchors.config import MethodConfig, apply_overrides, build_section, read_yaml
from fedanchors.errors import ConfigError


@dataclass(frozen=True)
class ExpertSpec:
    """One expert: a fedanchors run directory; with ``config`` (and ``set`` overrides) the run is
    trained there first when it has no finished model yet."""

    name: str = ""
    run: str = ""
    config: str = ""
    set: tuple[str, ...] = ()


@dataclass(frozen=True)
class GateNetConfig:
    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.1
    routing: str = "dense"  # dense | top_k
    top_k: int = 2
    noisy: bool = True  # top_k: learned Gaussian noise on the scores while training


@dataclass(frozen=True)
class GateLossConfig:
    """Mixture NLL (always) plus four terms, each with its switch and lambda."""

    class_weights: bool = True  # NLL weighted by inverse class frequency (normalised to sum to C)
    load_balance: bool = True  # top_k only
    lambda_lb: float = 0.01
    entropy: bool = True
    lambda_h: float = 0.01
    responsibility: bool = True
    lambda_resp: float = 0.1
    resp_temperature: float = 1.0
    prior: bool = True
    lambda_prior: float = 0.1
    prior_temperature: float = 0.1


@dataclass(frozen=True)
class GateOptimConfig:
    """AdamW, linear warm-up then cosine (per epoch), gradient clipping, router temperature
    annealed linearly from ``temp_start`` (first epoch) to ``temp_end`` (last epoch)."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    grad_clip: float = 1.0
    temp_start: float = 2.0
    temp_end: float = 0.7


@dataclass(frozen=True)
class GateFederatedConfig:
    """Federated gate: one epoch of local training per round; the server averages the gates with
    the method's weights over the experts' groups (one client per group)."""

    method: MethodConfig = field(default_factory=lambda: MethodConfig(name="groupdro", eta=0.1))
    local_epochs: int = 1
    num_cpus: float = 1.0
    round_timeout: float = 600.0


@dataclass(frozen=True)
class GatingConfig:
    name: str = ""
    mode: str = "centralized"  # centralized | federated
    seed: int = 0
    out_dir: str = "runs"
    device: str = "cpu"
    experts: tuple[ExpertSpec, ...] = ()
    # head / tail: classes below head_boundary (> 0), else the scenario's class set ``head_set``
    head_boundary: int = 0
    head_set: str = "head"
    gate: GateNetConfig = field(default_factory=GateNetConfig)
    loss: GateLossConfig = field(default_factory=GateLossConfig)
    optim: GateOptimConfig = field(default_factory=GateOptimConfig)
    federated: GateFederatedConfig = field(default_factory=GateFederatedConfig)


def check(cfg: GatingConfig) -> None:
    """Ranges and names, one ConfigError line each."""
    if cfg.mode not in ("centralized", "federated"):
        raise ConfigError(f"mode: {cfg.mode!r} is not one of centralized, federated")
    if cfg.gate.routing not in ("dense", "top_k"):
        raise ConfigError(f"gate.routing: {cfg.gate.routing!r} is not one of dense, top_k")
    if len(cfg.experts) < 1:
        raise ConfigError("experts: name at least one expert run ({name, run})")
    names = [e.name for e in cfg.experts]
    if any(not n or not e.run for n, e in zip(names, cfg.experts)) or len(set(names)) != len(names):
        raise ConfigError(f"experts: every expert needs a unique name and a run directory, got {names}")
    if cfg.gate.routing == "top_k" and not 1 <= cfg.gate.top_k <= len(cfg.experts):
        raise ConfigError(f"gate.top_k must be in 1..{len(cfg.experts)} (the experts), got {cfg.gate.top_k}")
    o, lo = cfg.optim, cfg.loss
    positive = {"optim.epochs": o.epochs, "optim.batch_size": o.batch_size, "optim.lr": o.lr,
                "optim.temp_start": o.temp_start, "optim.temp_end": o.temp_end,
                "loss.resp_temperature": lo.resp_temperature, "loss.prior_temperature": lo.prior_temperature,
                "federated.local_epochs": cfg.federated.local_epochs}  # fmt: skip
    nonneg = {"optim.weight_decay": o.weight_decay, "optim.warmup_epochs": o.warmup_epochs,
              "optim.grad_clip": o.grad_clip, "gate.dropout": cfg.gate.dropout, "loss.lambda_lb": lo.lambda_lb,
              "loss.lambda_h": lo.lambda_h, "loss.lambda_resp": lo.lambda_resp,
              "loss.lambda_prior": lo.lambda_prior}  # fmt: skip
    for k, v in positive.items():
        if not (v > 0 and math.isfinite(v)):
            raise ConfigError(f"{k} must be > 0, got {v}")
    for k, v in nonneg.items():
        if not (v >= 0 and math.isfinite(v)):
            raise ConfigError(f"{k} must be >= 0, got {v}")
    if cfg.gate.dropout >= 1:
        raise ConfigError(f"gate.dropout must be < 1, got {cfg.gate.dropout}")
    if cfg.device not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"device: {cfg.device!r} is not one of cpu, cuda, auto")


def load_gating_config(path: str | None, overrides: list[str] = ()) -> GatingConfig:
    from pathlib import Path

    raw = read_yaml(path) if path else {}
    if not raw.get("name") and path:
        raw["name"] = Path(path).stem
    cfg = build_section(GatingConfig, apply_overrides(raw, list(overrides)))
    check(cfg)
    return cfg
