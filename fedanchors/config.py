"""Typed run configuration: YAML -> frozen dataclasses, with checked overrides.

Unknown keys and wrong types are ``ConfigError``s that name the dotted key and the
closest valid one. ``--set a.b=value`` overrides are parsed as YAML scalars and checked
against the field's type, like nanoGPT's configurator but typed.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from fedanchors.errors import ConfigError
from fedanchors.group_spec import GroupSpec, compact


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-3``, ``1E5`` and ``1e+6`` are numbers
    (YAML 1.1, which PyYAML follows, reads a float without a dot as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text safely, with YAML 1.2 floats (see ``_Loader``)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


@dataclass(frozen=True)
class EncoderConfig:
    """One input space's encoder; ``kind`` is a name in the encoder registry."""

    kind: str = "cnn"
    channels: tuple[int, ...] = (32, 64)
    hidden: int = 256
    layers: int = 2  # mlp: hidden layers of width ``hidden`` before the latent layer


@dataclass(frozen=True)
class ModelConfig:
    """Latent size, the encoder per input space and the shared head."""

    latent_dim: int = 64
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)  # per-space overrides
    head: str = "linear"
    head_hidden: int = 128
    # default: PyTorch's initialisation; ntp / mup: the MLP (mlp encoder + head) in the neural
    # tangent or maximal-update parameterisation (fedanchors.parametrization)
    init: str = "default"


@dataclass(frozen=True)
class AnchorConfig:
    """Class anchors N(m_c, L_c L_c^T + eps I), their fit and separation losses."""

    eps: float = 1e-4
    init_scale: float = 1.0
    lambda_fit: float = 1e-3
    lambda_sep: float = 1e-3
    sep: str = "classifier"
    margin: float = 2.0
    samples: int = 16
    cov_eps: float = 1e-3
    server_lr: float = 0.05
    server_steps: int = 10
    # lr of the head in the server's separation steps (sep: classifier); 0 -> optim.lr, the
    # clients' lr, which is far too large when clients take plain SGD steps at lr ~1
    server_head_lr: float = 0.0
    # covariance structure of the anchors and of the class moments clients send: full
    # (Bures-Wasserstein), diag (closed-form W2 and barycenter, d numbers per class instead of
    # d^2) or none (means only; the fit is the squared distance between means)
    covariance: str = "full"
    # the fit term of the clients' loss: w2 (W2^2 between the batch's class moments and the
    # anchors) or prototype (FedProto's: the mean squared error between codes and their class
    # means, the anchors' means being the count-weighted average of the clients' class means)
    fit: str = "w2"
    # how the anchors follow the codes: "gradient" (a gradient step of lambda_fit * fit on the
    # anchors) or "barycenter" (a W2-barycenter step toward the groups' class moments: each
    # epoch centrally, each round on the server); "" is the mode's default: gradient
    # centralized, barycenter federated. Set it to compare the modes on one anchor update.
    update: str = ""


@dataclass(frozen=True)
class MethodConfig:
    """Group weighting: erm, iw, balanced (fixed lambdas) or groupdro."""

    name: str = "groupdro"
    eta: float = 0.1
    update: str = "exp"
    gamma: float = 0.9
    objective: str = "weighted"
    warmup: int = 0
    lambdas: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LossConfig:
    """The classification loss of the training objective (both modes; fedanchors.losses).

    ``ce``: cross-entropy; ``logit_adjust``: CE on logits + tau * log(prior) (Menon et al.
    2021); ``balanced_softmax``: CE on logits + log(prior) (Ren et al. 2020). The prior is the
    training class frequency: centralized from the data, federated from the clients' class
    counts. Prediction always takes the raw logits."""

    name: str = "ce"  # ce (the logistic loss) | logit_adjust | balanced_softmax | mse
    tau: float = 1.0


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and schedule shared by both modes (local optimizer in federated)."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.0
    grad_clip: float = 1.0
    batch_size: int = 128
    epochs: int = 5
    patience: int = 0  # > 0: stop after this many epochs/rounds without a better val acc_wg
    # fixed-ratio mixed batches, e.g. {confounded: 60, corrected: 4}: each step takes this many
    # examples of each group (every group named); a federated client uses its entry as its batch
    group_batch: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureConfig:
    """A frozen feature extractor in front of the classifier (fedanchors.data.features)."""

    backbone: str = ""  # "": off | resnet18 | resnet50 | vit_b_16 | dinov2_vit{s,b,l,g}14 | from_run
    layer: str = "avgpool"  # resnet: layer3 | layer4 | avgpool
    block: int = -1  # vit / dinov2: the block whose tokens are pooled (-1: the last)
    pool: str = "cls_token"  # vit / dinov2: cls_token | mean_pool_patch | mean_pool_all
    weights: str = ""  # a saved state dict of the backbone ("" : its seeded random initialisation)
    from_run: str = ""  # backbone from_run: a fedanchors run whose encoders give the features
    image_size: int = 0  # resize images to this side first (0: as they are; vit_b_16 needs 224)
    batch_size: int = 256
    cache: str = ".cache/features"  # computed once per data config and backbone, then read back


@dataclass(frozen=True)
class DataConfig:
    """Which groups (a named scenario or preset, or ``groups`` written out), where the files are,
    and how each group is split."""

    scenario: str = ""  # "" with no groups: digits
    groups: tuple[GroupSpec, ...] = ()  # groups written in YAML (fedanchors.group_spec)
    root: str = ""  # "" -> $FEDANCHORS_DATA, else ../shared/data
    download: bool = False
    split_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    max_per_group: int = 0  # 0: all
    # resize | pad: every group brought to the largest channel count and pixel size among them
    # in one input space, ``common`` (one encoder for every client: FedAvg over heterogeneous
    # inputs); channels zero-padded, pixels by bilinear resize or by zero padding at the
    # bottom and right (system 1's pad_to_max collate). "none": each group keeps its shape
    common_input: str = "none"
    # > 0: this share of each group's training split, per class (seeded), is held out as the
    # ``gating`` split (system 4: experts train on the rest, a gate on it; fedanchors.gating)
    gating_fraction: float = 0.0
    features: FeatureConfig = field(default_factory=FeatureConfig)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FederatedConfig:
    """Flower simulation: rounds, local work, Ray resources and fault tolerance."""

    rounds: int = 5
    local_epochs: int = 1
    local_steps: int = 0  # > 0 overrides local_epochs
    eval_every: int = 1  # evaluate (val and test on every client) every N rounds and after the last
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    ray_init: dict[str, Any] = field(default_factory=dict)
    class_stats: str = "running"  # running: from the last local pass; exact: an extra pass after training
    min_clients: int = 1
    round_timeout: float = 600.0
    # how long the server waits for one client per group to connect (too many fail at once)
    connect_timeout: float = 60.0
    # server optimizer on the averaged update of the head and shared encoders (fedanchors.server_opt):
    # sgd with server_lr 1 is plain averaging; momentum = FedAvgM; adam / yogi / adagrad (Reddi et al.)
    server_opt: str = "sgd"
    server_lr: float = 1.0
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 1e-3
    prox_mu: float = 0.0  # FedProx: + prox_mu/2 ||w - w_global||^2 on the head and shared encoders
    reset_client_opt: bool = False  # true: a client's optimizer state starts fresh every round
    # the group loss a client reports (GroupDRO's q reads it): mean CE over its local steps, or the
    # CE of its first step, taken at the global model (what GroupDRO's update assumes; K > 1 local
    # steps on a single-label client drive the mean toward 0 for every group)
    group_loss: str = "mean"
    # a group with no reply (train or evaluate) for this many rounds in a row ends the run
    max_missing_rounds: int = 3
    actor_restarts: int = 3  # a Ray worker that dies is restarted (and its task retried) this often
    fault_partition: int = -1  # testing aid: this partition raises ...
    fault_round: int = 0  # ... from this round (train and evaluate) ...
    fault_rounds: int = 1  # ... for this many rounds
    # populations (fedanchors.population): clients per group, how a group's examples are cut
    clients: int = 1  # clients holding each group ...
    group_clients: dict[str, int] = field(default_factory=dict)  # ... or per group
    partition: str = "iid"  # iid | dirichlet | shards
    partition_alpha: float = 0.5  # dirichlet concentration (smaller: more label skew)
    partition_labels: int = 2  # shards: labels per client
    clients_per_round: int = 0  # sampled clients per round (0: all)
    sampling: str = "stratified"  # stratified (one client of every group first) | uniform
    dropout: float = 0.0  # probability that a sampled client does not answer (seeded)
    # space: an input space's encoder is averaged over the clients of that space (never across
    # spaces); client: every client keeps its own encoder, which never leaves it (LG-FedAvg)
    encoder_sharing: str = "space"
    # global: one head averaged by the server; local: each client keeps and trains its own
    # head, which never leaves it (FedProto), and predicts with it
    head_sharing: str = "global"
    # new clients at test time: this share of each group's clients (at most all but one) never
    # trains; after training each adapts only its own encoder for ``holdout_epochs`` local
    # epochs against the frozen head and anchors (CE + the fit), then is evaluated (test_new_*)
    holdout: float = 0.0
    holdout_epochs: int = 2


@dataclass(frozen=True)
class LoggingConfig:
    """Trackers beside metrics.jsonl (which is always written)."""

    wandb: bool = False
    wandb_mode: str = "offline"  # offline needs no network; `wandb sync` uploads later
    wandb_project: str = "fedanchors"
    tensorboard: bool = False


@dataclass(frozen=True)
class DFRConfig:
    """Deep feature reweighting after training: a new last layer on group-balanced codes."""

    enabled: bool = False
    Cs: tuple[float, ...] = (10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01)  # inverse L1 strengths tried
    subsets: int = 10  # balanced subsamples averaged (centralized)
    samples_per_group: int = 1000  # codes drawn per group from the class Gaussians (federated)
    # which features the new last layer reads: last_hidden (the latent code, the head's input)
    # or layer_k (the output of the encoder's k-th ReLU, k from 1); centralized only for layer_k
    layer: str = "last_hidden"
    # where its group-balanced examples come from: original (the validation split) or
    # split_from_train (val_ratio of each class of the training split, held out of training)
    val: str = "original"
    val_ratio: float = 0.2


@dataclass(frozen=True)
class AnalysisConfig:
    """System 3's analyses (fedanchors.dynamics), each on or off, at chosen epochs / rounds."""

    gradient_basis: bool = False
    gap_dynamics: bool = False
    static_dynamic: bool = False
    jacobian: bool = False
    at: tuple[int, ...] = ()  # epochs (rounds) analysed, e.g. [1, 10, 100]; empty: every one
    max_examples: int = 2048  # per group, for the full-batch gradients and losses (0: all)
    probe_lr: float = 0.0  # centralized probe step's size (0: optim.lr)
    projections: int = 8  # random projections per Jacobian estimate
    jacobian_examples: int = 256  # per group
    probe_C: float = 1.0  # inverse L1 strength of the static part's group-balanced probe


def anchors_used(cfg) -> bool:
    """Whether the run uses the anchors at all (a fit, a separation, or DFR's draws from the
    class moments); when not, clients send no class moments and the server no anchors."""
    a = cfg.anchors
    return a.lambda_fit > 0 or a.lambda_sep > 0 or cfg.dfr.enabled


def anchor_update(cfg) -> str:
    """``anchors.update`` resolved for the run's mode."""
    return cfg.anchors.update or ("barycenter" if cfg.mode == "federated" else "gradient")


@dataclass(frozen=True)
class Config:
    """The whole run."""

    name: str = ""
    # a named federated baseline (fedanchors.baselines: fedavg, lg_fedavg, fedproto,
    # flic_like, fedanchors): its settings replace the config's
    baseline: str = ""
    mode: str = "centralized"
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs"
    deterministic: bool = True
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    dfr: DFRConfig = field(default_factory=DFRConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


_CHOICES = {
    "mode": ("centralized", "federated"),
    "method.update": ("exp", "softmax", "exp_smooth"),
    "method.objective": ("weighted", "max", "logsumexp"),
    "optim.name": ("adam", "sgd"),
    "loss.name": ("ce", "logit_adjust", "balanced_softmax", "mse"),
    "model.init": ("default", "ntp", "mup"),
    "dfr.val": ("original", "split_from_train"),
    "federated.class_stats": ("running", "exact"),
    "federated.group_loss": ("mean", "first"),
    "anchors.update": ("", "gradient", "barycenter"),
    "data.common_input": ("none", "resize", "pad"),
    "anchors.covariance": ("full", "diag", "none"),
    "anchors.fit": ("w2", "prototype"),
    "federated.head_sharing": ("global", "local"),
    "federated.sampling": ("stratified", "uniform"),
    "federated.encoder_sharing": ("space", "client"),
    "logging.wandb_mode": ("offline", "online", "disabled"),
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert where it is lossless."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # an already built (and checked) section
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not of type {_type_name(tp)}")
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (et, _) = typing.get_args(tp)
        return tuple(_coerce(v, et, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls: type, raw: dict, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``raw``, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint} (valid here: {', '.join(names)})")
        kwargs[k] = _coerce(v, hints[k], key)
        if key in _CHOICES and kwargs[k] not in _CHOICES[key]:
            raise ConfigError(f"{key}: {kwargs[k]!r} is not one of {', '.join(_CHOICES[key])}")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=0.01")
    key, _, raw = text.partition("=")
    if _field_type(key.strip().split(".")) is str and not raw.strip().startswith(("'", '"')):
        return key.strip().split("."), raw.strip()  # a name such as 5e1a2 or 1e5 stays text
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(
            f"--set {text!r}: the value is not valid YAML; quote it (e.g. --set 'name=\"a: b\"') or fix its syntax"
        ) from None
    if not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"--set {text!r}: empty key; expected KEY=VALUE, e.g. --set optim.lr=0.01")
    return key.strip().split("."), value


def _field_type(path: list[str]) -> Any:
    """The annotated type of the config field at ``path`` (None when it is not a field)."""
    cls: Any = Config
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
        if i == len(path) - 1:
            return cls
    return None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of ``raw`` with each ``a.b=value`` set (nested dicts created)."""
    out = _deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    return {k: _deepcopy(v) for k, v in d.items()} if isinstance(d, dict) else d


def read_yaml(path: str | os.PathLike) -> dict:
    """Parse a YAML mapping; a missing or malformed file is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found; pass an existing YAML file to --config")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (a binary file?); pass a YAML config") from None
    except OSError as e:
        raise ConfigError(f"config file {str(p)!r} cannot be read ({e.strerror}); check its permissions") from None
    try:
        raw = yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}; fix its syntax") from None
    if raw is None:
        raise ConfigError(
            f"config file {str(p)!r} is empty; give it at least one section (e.g. 'mode: centralized'), "
            "or omit --config for the built-in defaults"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
    return raw


def from_dict(raw: dict) -> Config:
    """Build and validate a Config from a plain nested mapping (a ``baseline``'s settings merged in)."""
    if raw.get("baseline"):
        from fedanchors.baselines import apply_baseline

        raw = apply_baseline(raw)
    cfg = _build(Config, raw)
    from fedanchors.config_checks import validate  # cross-field checks, in their own module

    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    """Read ``path`` (or the defaults when None), apply overrides, validate."""
    raw = read_yaml(path) if path else {}
    if not raw.get("name") and path:
        raw["name"] = Path(path).stem
    return from_dict(apply_overrides(raw, list(overrides)))


def from_run_config(run_config: dict) -> Config:
    """The Config named by Flower's flat run config (``config`` path, ``overrides`` "k=v k=v")."""
    if "config" not in run_config:
        raise ConfigError("the Flower run config has no 'config' key; pass --run-config 'config=\"configs/X.yaml\"'")
    overrides = [s for s in str(run_config.get("overrides", "")).split() if s]
    path = Path(str(run_config["config"]))
    app_dir = Path(__file__).resolve().parents[1]  # the app (a FAB installed by Flower, or the repo)
    if not path.is_absolute() and not path.exists() and (app_dir / path).exists():
        path = app_dir / path
    return load_config(str(path), overrides)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) for YAML/JSON."""
    d = dataclasses.asdict(cfg)
    return _lists(d)


def _lists(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_lists(v) for v in x]
    return x


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (groups with only the keys that differ from defaults)."""
    d = to_dict(cfg)
    d["data"]["groups"] = [compact(g) for g in cfg.data.groups]
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))


def replace(cfg: Config, overrides: list[str]) -> Config:
    """A new Config with ``a.b=value`` overrides applied and validated."""
    return from_dict(apply_overrides(to_dict(cfg), overrides))
