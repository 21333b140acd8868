"""Cross-field checks of a ``Config`` that a type annotation cannot express: ranges, run
names, registry names. Called by ``fedanchors.configure.from_dict``; each failure is one
``ConfigError`` line."""

from __future__ import annotations

import math

from fedanchors.config import Config, anchors_used
from fedanchors.errors import ConfigError
from fedanchors.names import check_name

MAX_RUN_NAME = 128  # a run directory's name (filesystems allow 255 bytes; "-2" suffixes and UTF-8 need room)


def validate(cfg: Config) -> None:
    """Cross-field checks a type annotation cannot express; the first failure is one line."""
    _check_numbers(cfg)
    _check_ranges(cfg)
    _check_federated(cfg)
    _check_method(cfg)
    if cfg.privacy.enabled:
        _check_privacy(cfg)
    if cfg.dfr.enabled:
        _check_dfr(cfg)
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ConfigError(f"device: {cfg.device!r} is not auto, cpu or cuda[:N]")
    _check_registered(cfg)


def _check_numbers(cfg: Config) -> None:
    """Keys that must be > 0, >= 0, and finite."""
    positive = {
        "optim.lr": cfg.optim.lr,
        "optim.batch_size": cfg.optim.batch_size,
        "model.latent_dim": cfg.model.latent_dim,
        "anchors.eps": cfg.anchors.eps,
        "federated.num_cpus": cfg.federated.num_cpus,
        "federated.eval_every": cfg.federated.eval_every,
        "optim.epochs": cfg.optim.epochs,
        "federated.rounds": cfg.federated.rounds,
        "federated.local_epochs": cfg.federated.local_epochs,
        "federated.round_timeout": cfg.federated.round_timeout,
        "federated.connect_timeout": cfg.federated.connect_timeout,
        "federated.max_missing_rounds": cfg.federated.max_missing_rounds,
        "federated.clients": cfg.federated.clients,
        "federated.partition_alpha": cfg.federated.partition_alpha,
        "federated.partition_labels": cfg.federated.partition_labels,
        "federated.server_lr": cfg.federated.server_lr,
        "federated.server_tau": cfg.federated.server_tau,
        "anchors.samples": cfg.anchors.samples,
    }
    for key, v in positive.items():
        if not v > 0:
            raise ConfigError(f"{key} must be > 0, got {v}")
    nonneg = {
        "federated.local_steps": cfg.federated.local_steps,
        "federated.eval_clients": cfg.federated.eval_clients,
        "federated.clients_per_round": cfg.federated.clients_per_round,
        "federated.actor_restarts": cfg.federated.actor_restarts,
        "federated.prox_mu": cfg.federated.prox_mu,
        "anchors.server_head_lr": cfg.anchors.server_head_lr,
        "federated.num_gpus": cfg.federated.num_gpus,
        "anchors.lambda_fit": cfg.anchors.lambda_fit,
        "anchors.lambda_sep": cfg.anchors.lambda_sep,
        "optim.weight_decay": cfg.optim.weight_decay,
        "optim.grad_clip": cfg.optim.grad_clip,
        "optim.patience": cfg.optim.patience,
        "loss.tau": cfg.loss.tau,
        "analysis.max_examples": cfg.analysis.max_examples,
        "analysis.probe_lr": cfg.analysis.probe_lr,
        "federated.max_update_norm": cfg.federated.max_update_norm,
        "federated.krum_byzantine": cfg.federated.krum_byzantine,
    }
    for key, v in nonneg.items():
        if v < 0:
            raise ConfigError(f"{key} must be >= 0, got {v}")
    for key, v in {**positive, **nonneg}.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key} must be a finite number, got {v}")


def _check_ranges(cfg: Config) -> None:
    """Bounded values: fractions, probabilities, betas, the analyses' counts, names."""
    a = cfg.analysis
    if a.projections < 1 or a.jacobian_examples < 1 or not a.probe_C > 0:
        raise ConfigError("analysis.projections and analysis.jacobian_examples must be >= 1, analysis.probe_C > 0")
    if any(t < 1 for t in a.at):
        raise ConfigError(f"analysis.at lists epochs (rounds) from 1, got {list(a.at)}")
    if not 0 <= cfg.data.gating_fraction < 1:
        raise ConfigError(f"data.gating_fraction must be in [0, 1), got {cfg.data.gating_fraction}")
    if cfg.federated.fault_partition < -1:
        raise ConfigError(
            f"federated.fault_partition must be -1 (off) or a partition id >= 0, got {cfg.federated.fault_partition}"
        )
    if cfg.federated.engine == "inprocess" and cfg.federated.ray_init:
        raise ConfigError("federated.ray_init is for the ray engine; leave it empty with federated.engine: inprocess")
    check_run_name(cfg.name)
    _check_robustness(cfg.federated)
    if not 0 <= cfg.federated.dropout < 1:
        raise ConfigError(f"federated.dropout must be in [0, 1), got {cfg.federated.dropout}")
    for g, k in cfg.federated.group_clients.items():
        if k < 1:
            raise ConfigError(f"federated.group_clients.{g} must be >= 1, got {k}")
    for key in ("server_beta1", "server_beta2"):
        if not 0 <= getattr(cfg.federated, key) < 1:
            raise ConfigError(f"federated.{key} must be in [0, 1), got {getattr(cfg.federated, key)}")
    for key, v in {"data.val_fraction": cfg.data.val_fraction, "data.test_fraction": cfg.data.test_fraction}.items():
        if not 0 < v < 1:
            raise ConfigError(f"{key} must be in (0, 1), got {v}")
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1:
        raise ConfigError("data.val_fraction + data.test_fraction must be < 1")


def _check_federated(cfg: Config) -> None:
    """Combinations of federated options that cannot work together."""
    if cfg.mode == "federated" and cfg.federated.head_sharing == "local":
        if cfg.dfr.enabled:
            raise ConfigError("dfr replaces the one global head; with federated.head_sharing: local there is none")
        if cfg.federated.server_opt != "sgd" and cfg.federated.encoder_sharing == "client":
            raise ConfigError(
                "federated.server_opt acts on the averaged head and shared encoders; with local heads and "
                "private encoders nothing is averaged, so leave it at sgd"
            )
    if not 0 <= cfg.federated.holdout < 1 or cfg.federated.holdout_epochs < 1:
        raise ConfigError(
            f"federated.holdout must be in [0, 1) and holdout_epochs >= 1, got {cfg.federated.holdout}, "
            f"{cfg.federated.holdout_epochs}"
        )
    if cfg.anchors.fit == "prototype" and cfg.anchors.covariance != "none":
        raise ConfigError(
            "anchors.fit: prototype fits class means only; set anchors.covariance: none (the prototypes are means)"
        )


CLIENT_LEVEL = ("afl", "qffl", "drfa")  # the methods whose papers define their weights over devices


def _check_method(cfg: Config) -> None:
    """What the method weights, and the methods that only have a federated reading."""
    m, f = cfg.method, cfg.federated
    if m.level == "client" and m.name not in CLIENT_LEVEL:
        raise ConfigError(f"method.level: client is defined for {', '.join(CLIENT_LEVEL)}, not {m.name}; use group")
    if m.level == "client" and cfg.mode != "federated":
        raise ConfigError("method.level: client weighs clients, which only federated mode has; use group")
    if m.level == "client" and m.floor:
        raise ConfigError("method.floor names groups; at method.level: client Lambda is the simplex over clients")
    if m.name == "drfa" and cfg.mode != "federated":
        raise ConfigError("method.name: drfa is federated only (its sampling and snapshot are the method); use afl")
    # GroupDRO's knobs: inert under the fixed weightings (erm, iw, balanced: no step, as eta is
    # inert there), refused where another method's own step would seem to read them
    own = m.name in ("groupdro", "erm", "iw", "balanced")
    if not 0 <= m.mix <= 1 or (m.mix > 0 and not own):
        raise ConfigError(f"method.mix (GroupDRO's share kept by ERM) must be in [0, 1], groupdro only; got {m.mix}")
    if m.eta_unit == "epoch" and not own:
        raise ConfigError(f"method.eta_unit: epoch scales GroupDRO's q step; {m.name} takes eta per update, use update")
    if m.adjustment < 0 or (m.adjustment > 0 and not own):
        raise ConfigError(
            f"method.adjustment (GroupDRO's C / sqrt(n_g)) must be >= 0 and set only with groupdro, got {m.adjustment}"
        )
    if m.lipschitz < 0 or m.loss_clients < 0:
        raise ConfigError(f"method.lipschitz and method.loss_clients must be >= 0, got {m.lipschitz}, {m.loss_clients}")
    if m.name == "qffl" and cfg.mode == "federated" and (f.aggregation != "mean" or f.max_update_norm > 0):
        raise ConfigError(
            "method.name: qffl takes the q-FedAvg server step in place of the aggregation rule; "
            "set federated.aggregation: mean and federated.max_update_norm: 0"
        )
    if m.name == "qffl" and cfg.mode == "federated" and m.q_fair > 0 and m.lipschitz == 0 and cfg.optim.name != "sgd":
        # L (w - w_k) stands for a gradient only after plain SGD steps; after Adam's, whose moves do
        # not scale with lr, L = 1 / lr shrank the step ~500-fold on mnist_audio (docs/baselines.md)
        raise ConfigError(
            f"method.lipschitz: 0 takes q-FedAvg's L = 1 / optim.lr, which assumes local SGD; with optim.name: "
            f"{cfg.optim.name} set method.lipschitz to about F / ||w - w_k||^2 (1.0 on mnist_audio) "
            "or use optim.name: sgd"
        )


def _check_privacy(cfg: Config) -> None:
    """The privacy section's ranges, and what its mechanism and accounting cannot cover."""
    from fedanchors import dynamics

    p, f, m = cfg.privacy, cfg.federated, cfg.method
    if cfg.mode != "federated":
        raise ConfigError("privacy protects what clients send: it needs mode: federated")
    if p.target_epsilon < 0 or p.noise_multiplier < 0 or (p.target_epsilon == 0 and p.noise_multiplier == 0):
        raise ConfigError(
            f"privacy.target_epsilon must be > 0 (or give privacy.noise_multiplier > 0), got "
            f"target_epsilon={p.target_epsilon:g}, noise_multiplier={p.noise_multiplier:g}"
        )
    if not 0 < p.delta < 1:
        raise ConfigError(f"privacy.delta must be in (0, 1), e.g. 1e-5, got {p.delta:g}")
    for key in ("clip_update", "clip_code", "clip_loss"):
        if not (math.isfinite(getattr(p, key)) and getattr(p, key) > 0):
            raise ConfigError(f"privacy.{key} must be a finite bound > 0, got {getattr(p, key)}")
    if f.clients_per_round > 0 and f.sampling != "uniform":
        raise ConfigError(
            "privacy accounts for clients drawn uniformly: set federated.sampling: uniform "
            "(or federated.clients_per_round: 0, every client every round)"
        )
    if m.level == "client" or m.name in ("drfa", "qffl"):
        raise ConfigError(
            f"method.name: {m.name} (method.level: {m.level}) reads single clients' models or losses, which "
            "privacy sums per group; use a group-level method (erm, groupdro, afl, fgdro_cvar, fgdro_kl)"
        )
    if f.aggregation != "mean" or f.max_update_norm > 0:
        raise ConfigError(
            "privacy bounds each update (privacy.clip_update) and sees only sums: set federated.aggregation: "
            "mean and leave federated.max_update_norm at 0"
        )
    if anchors_used(cfg) and f.class_stats != "running":
        raise ConfigError("privacy clips the codes of the running statistics: set federated.class_stats: running")
    if dynamics.enabled(cfg):
        raise ConfigError("the gap analyses read single clients' replies, which privacy hides; turn analysis off")
    if p.secure_aggregation and p.secagg_threshold < 2:
        raise ConfigError(
            f"privacy.secagg_threshold must be >= 2 (shares that rebuild a key), got {p.secagg_threshold}"
        )
    if p.secure_aggregation and 0 < f.clients_per_round < p.secagg_threshold:
        raise ConfigError(
            f"privacy.secagg_threshold={p.secagg_threshold} needs that many clients of a group in a round, and "
            f"federated.clients_per_round={f.clients_per_round} is fewer; raise it or lower the threshold"
        )


def _check_dfr(cfg: Config) -> None:
    """DFR's layer, validation split and grid."""
    import re

    if not re.fullmatch(r"last_hidden|layer_[1-9][0-9]*", cfg.dfr.layer):
        raise ConfigError(f"dfr.layer: {cfg.dfr.layer!r} is not last_hidden or layer_<k> (k >= 1)")
    if cfg.mode == "federated" and (cfg.dfr.layer != "last_hidden" or cfg.dfr.val != "original"):
        raise ConfigError(
            "federated DFR fits on draws from the clients' class Gaussians of the latent code: it takes "
            "dfr.layer: last_hidden and dfr.val: original"
        )
    if cfg.dfr.val == "split_from_train" and not 0 < cfg.dfr.val_ratio < 1:
        raise ConfigError(f"dfr.val_ratio must be in (0, 1), got {cfg.dfr.val_ratio}")
    if cfg.dfr.val == "split_from_train" and cfg.data.gating_fraction > 0:
        raise ConfigError("dfr.val: split_from_train and data.gating_fraction both hold training data out; pick one")
    if not cfg.dfr.Cs or min(cfg.dfr.Cs) <= 0 or cfg.dfr.subsets < 1 or cfg.dfr.samples_per_group < 2:
        raise ConfigError("dfr: Cs must be non-empty and > 0, subsets >= 1, samples_per_group >= 2")
    if cfg.mode == "federated" and cfg.model.head != "linear":
        raise ConfigError("dfr in federated mode replaces a linear head; set model.head: linear")


FAULT_KINDS = ("nan", "scale")  # a client that raises: federated.fault_partition


def _check_robustness(f) -> None:
    """Aggregation options and the fault injections (testing aids) of ``federated``."""
    if not 0 <= f.trim_fraction < 0.5:
        raise ConfigError(f"federated.trim_fraction must be in [0, 0.5), got {f.trim_fraction}")
    for i, fault in enumerate(f.faults):
        key = f"federated.faults[{i}]"
        if fault.kind not in FAULT_KINDS:
            raise ConfigError(f"{key}.kind: {fault.kind!r} is not one of {', '.join(FAULT_KINDS)}")
        if fault.partition < 0 or fault.from_round < 1 or fault.rounds < 0:
            raise ConfigError(f"{key}: partition >= 0, from_round >= 1 and rounds >= 0 (0: to the end)")
        if not (math.isfinite(fault.scale) and fault.scale > 0):
            raise ConfigError(f"{key}.scale must be a finite number > 0, got {fault.scale}")


def check_run_name(name: str) -> None:
    """A run name is one path component: no separators, not ``.`` or ``..``, no NUL."""
    bad = [c for c in ("/", "\\", "\0") if c in name]
    if bad or name in (".", "..") or name.startswith("~") or len(name) > MAX_RUN_NAME:
        raise ConfigError(
            f"name: {name!r} is not a plain name (no '/', '\\', '..' or '~', at most {MAX_RUN_NAME} characters); "
            "runs are written under out_dir, so pick a name such as 'mnist_lr01' and move out_dir to change where"
        )


def _check_registered(cfg: Config) -> None:
    """Names that point into registries must exist (imported late: registries fill on import)."""
    from fedanchors import aggregate, losses, methods, models, population, server_opt, train
    from fedanchors.data import check_data_config, resolve_groups

    check_data_config(cfg.data)
    for i, g in enumerate(resolve_groups(cfg.data)):
        if g.partition is not None:
            population.PARTITIONERS.get(g.partition.kind, f"data.groups[{i}].partition.kind")
    methods.METHODS.get(cfg.method.name, "method.name")
    server_opt.SERVER_OPTIMIZERS.get(cfg.federated.server_opt, "federated.server_opt")
    aggregate.AGGREGATIONS.get(cfg.federated.aggregation, "federated.aggregation")
    train.OPTIMIZERS.get(cfg.optim.name, "optim.name")
    losses.CLASS_LOSSES.get(cfg.loss.name, "loss.name")
    population.PARTITIONERS.get(cfg.federated.partition, "federated.partition")
    losses.SEPARATIONS.get(cfg.anchors.sep, "anchors.sep")
    models.HEADS.get(cfg.model.head, "model.head")
    models.ENCODERS.get(cfg.model.encoder.kind, "model.encoder.kind")
    for space, enc in cfg.model.encoders.items():
        check_name(space, f"model.encoders.{space}", space=True)
        models.ENCODERS.get(enc.kind, f"model.encoders.{space}.kind")
    for group in cfg.federated.group_clients:
        check_name(group, f"federated.group_clients.{group}")
