"""The config's sections: one frozen dataclass per YAML section (``model:``, ``anchors:``,
``data:`` ...), their fields, defaults and what each means. ``fedanchors.config`` assembles
them into ``Config`` and builds, checks and overrides them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedanchors.group_spec import GroupSpec


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
    """Group weighting (``fedanchors.methods``): erm, iw, balanced (fixed lambdas), groupdro,
    and the robust objectives afl, qffl, drfa, fgdro_cvar, fgdro_kl."""

    name: str = "groupdro"
    eta: float = 0.1  # GroupDRO's and AFL's step size on the group weights
    update: str = "exp"
    gamma: float = 0.9  # exp_smooth's memory; fgdro_kl's moving average of the group losses
    objective: str = "weighted"
    warmup: int = 0
    lambdas: dict[str, float] = field(default_factory=dict)
    floor: dict[str, float] = field(default_factory=dict)  # afl: Lambda = {lambda in the simplex, lambda_g >= floor_g}
    top_k: int = 1  # fgdro_cvar: the mean of the K largest group losses
    temperature: float = 1.0  # fgdro_kl: p = softmax(u / temperature), u the averaged losses
    q_fair: float = 1.0  # qffl: the fairness exponent q (0: ERM)
    lipschitz: float = 0.0  # qffl's q-FedAvg step: the Lipschitz estimate L (0: 1 / optim.lr; local SGD only)
    level: str = "group"  # group | client: what the method weights (client: afl, qffl, drfa; federated)
    loss_clients: int = 0  # drfa: clients asked for the snapshot's loss (0: federated.clients_per_round)
    # own: an encoder learns from its holders' losses renormalised to sum 1 (a group's private
    # encoder at full rate, whatever its weight); q: from the method's weights as they are
    encoder_weighting: str = "q"
    # update: eta per q step (a batch centralized, a round federated); epoch: per pass over the
    # training data (each step's eta scaled by the examples it trained on / the training set)
    eta_unit: str = "update"
    # groupdro: weights (1 - mix) q + mix n_g / N, the adversary moves at most 1 - mix of the mass
    # (the uncertainty set {q: q_g >= mix n_g / N}); 0: Sagawa et al.'s GroupDRO, 1: ERM
    mix: float = 0.0
    adjustment: float = 0.0  # groupdro: Sagawa et al.'s C, the q step reads L_g + C / sqrt(n_g)


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
    # the learning rate over the budget (epochs centralized, rounds federated): constant, or
    # cosine from optim.lr at the first to near 0 at the last (fedanchors.train.lr_at)
    schedule: str = "constant"
    # fixed-ratio mixed batches, e.g. {confounded: 60, corrected: 4}: each step takes this many
    # examples of each group (every group named); a federated client uses its entry as its batch
    group_batch: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureConfig:
    """A frozen feature extractor in front of the classifier (fedanchors.features)."""

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
    """Which groups (``groups`` written out, or a named group list: ``scenario``), where the
    files are, and how each group is split."""

    # a named group list, fedanchors/data/presets/<scenario>.yaml ("" with no groups: digits)
    scenario: str = ""
    groups: tuple[GroupSpec, ...] = ()  # groups written in YAML (fedanchors.group_spec)
    # named class subsets, each reported as ``acc_<name>`` over every test example of its classes
    class_sets: dict[str, tuple[int, ...]] = field(default_factory=dict)
    root: str = ""  # "" -> $FEDANCHORS_DATA, else ../shared/data
    download: bool = False
    split_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    max_per_group: int = 0  # 0: all
    # resize | pad: every group brought to the largest channel count and pixel size among them
    # in one input space, ``common`` (one encoder for every client: FedAvg over heterogeneous
    # inputs); channels zero-padded, pixels by bilinear resize or by zero padding at the
    # bottom and right (the pixel-size study's pad_to_max collate). "none": each group keeps its shape
    common_input: str = "none"
    # > 0: this share of each group's training split, per class (seeded), is held out as the
    # ``gating`` split (the long-tail gate: experts train on the rest, a gate on it; fedanchors.gating)
    gating_fraction: float = 0.0
    features: FeatureConfig = field(default_factory=FeatureConfig)


@dataclass(frozen=True)
class FaultSpec:
    """Testing aid: a client that misbehaves (``federated.faults``) from ``from_round`` for
    ``rounds`` rounds (0: to the end). ``nan``: its training reply's head (and shared encoder)
    and loss are NaN; ``scale``: it sends ``global + scale * (its update)``, an update ``scale``
    times too large (a client that raises instead: ``fault_partition``)."""

    partition: int = 0
    kind: str = "nan"
    from_round: int = 1
    rounds: int = 0
    scale: float = 1000.0


@dataclass(frozen=True)
class FederatedConfig:
    """Flower simulation: rounds, local work, Ray resources and fault tolerance."""

    rounds: int = 5
    local_epochs: int = 1
    local_steps: int = 0  # > 0 overrides local_epochs
    eval_every: int = 1  # evaluate (val and test on every client) every N rounds and after the last
    # > 0: validate during training on a fixed, seeded cohort of this many clients per group
    # (best round and patience on it, test not taken then); the best model is tested on every client
    eval_clients: int = 0
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # ray: Flower's simulation engine on Ray (parallel clients, fractional GPUs, clusters);
    # inprocess: the same driver and ClientApp in this process, messages in memory (server.memory)
    engine: str = "ray"
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
    faults: tuple[FaultSpec, ...] = ()  # testing aid: misbehaving clients (nan / scale replies)
    # how the clients' heads and shared encoders become one (fedanchors.aggregate.AGGREGATIONS):
    # mean (FedAvg, weighted by the method), or the robust median / trimmed_mean / krum, where
    # every client of positive weight counts once (the method's group weights do not enter)
    aggregation: str = "mean"
    trim_fraction: float = 0.1  # trimmed_mean: this share of the clients dropped at each end, per coordinate
    krum_byzantine: int = 1  # krum: the number f of Byzantine clients tolerated (needs >= 2f + 3 replies)
    # > 0: each client's update of the head and shared encoders (reply - global) is scaled down to
    # at most this L2 norm before aggregation
    max_update_norm: float = 0.0
    # populations (fedanchors.population): clients per group, how a group's examples are cut
    clients: int = 1  # clients holding each group ...
    group_clients: dict[str, int] = field(default_factory=dict)  # ... or per group
    partition: str = "iid"  # iid | dirichlet | shards
    partition_alpha: float = 0.5  # dirichlet concentration (smaller: more label skew)
    partition_labels: int = 2  # shards: labels per client
    clients_per_round: int = 0  # sampled clients per round (0: all)
    # stratified (one client of every group first) | balanced (as many from every group) | uniform
    sampling: str = "stratified"
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
    # plots.png, analysis.png and the samples_<group> files; $FEDANCHORS_PLOTS=0 turns them
    # off for every run of a session (batch jobs, the test suite), whatever the config says
    plots: bool = True


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
    """The gap analyses (fedanchors.dynamics), each on or off, at chosen epochs / rounds."""

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


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level differential privacy of what a client sends each round (federated only;
    ``fedanchors.privacy``): its head (and shared encoder) update clipped to ``clip_update``,
    its class statistics from latent codes clipped to ``clip_code`` and normalised by its
    example count, its loss clipped to [0, ``clip_loss``], one Gaussian mechanism over them,
    the noise added on the client (``local``) or after the server sums a group's clients
    (``central``). ``target_epsilon`` (with ``delta``) picks the noise multiplier for the
    planned rounds; or give ``noise_multiplier`` (then ``target_epsilon``, if given, is a
    budget the run stops before exceeding). ``seeded_noise``: noise from the run's seed, so a
    study repeats exactly; a deployment's must not be (the default draws it from the OS)."""

    enabled: bool = False
    noise: str = "central"  # central (the server adds it to each group's sum) | local (each client)
    target_epsilon: float = 0.0
    delta: float = 1.0e-5
    noise_multiplier: float = 0.0  # 0: chosen from target_epsilon for federated.rounds
    clip_update: float = 1.0  # L2 bound on a client's whole update (head and shared encoder)
    clip_code: float = 1.0  # L2 bound on each latent code before its statistics are taken
    clip_loss: float = 5.0  # the group loss GroupDRO reads, clipped to [0, clip_loss]
    seeded_noise: bool = False
    secure_aggregation: bool = False  # the server learns only each group's sum (SecAgg+, clients.secagg)
    secagg_threshold: int = 3  # Shamir threshold: shares that rebuild a key; clients a group's sum needs
