"""The client's work for each message type, over the library's functions."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients import secure
from clients.node import FRESH, client_group, scenario
from clients.protocol import ANCHORS, ENCODER, HEAD, STATE_LOST, WRITE_FAILED, pack, pack_arrays, unpack
from fedanchors.analysis import group_class_gaussians
from fedanchors.config import Config, anchors_used
from fedanchors.data import GroupData, ScenarioData
from fedanchors.fileio import WriteError, write_atomic
from fedanchors.metrics import split_counts
from fedanchors.models import stable_seed
from fedanchors.moments import class_sufficient_stats, stats_to_moments
from fedanchors.privacy import private_reply
from fedanchors.rundir import resolve_device, seed_everything
from fedanchors.train import LocalWork, adapt_encoder, local_train, make_optimizer, set_lr, steps_per_epoch


class ClientState:
    """Where a client's private state (encoder, optimizer) lives between rounds.

    With a run directory (``state_dir`` in the message config) it is one file per
    round, ``<run>/clients/<partition>/r<round>.pt``: a round starts from the file the server
    names (the last round it saw this client train), so a run resumed after a kill repeats
    the round exactly, and a missing file is an error, never a silent fresh start.
    The run directory must then be on a filesystem every node sees. Without one (a
    strategy built without a run directory, as in the in-process tests, or a stock Flower
    strategy) it is Flower's ``context.state``.
    """

    def __init__(self, context: Context, state_dir: str, pid: int) -> None:
        self.context = context
        self.dir = Path(state_dir) / str(pid) if state_dir else None

    def _rounds(self) -> list[int]:
        return sorted(int(p.stem[1:]) for p in self.dir.glob("r*.pt")) if self.dir and self.dir.is_dir() else []

    def load(self, rnd: int) -> bytes | None:
        """The state this client saved in round ``rnd`` (the server says which: the last round
        it trained); None for 0 (a fresh client). A missing file is an error naming it, never a
        silent restart from a fresh encoder."""
        if self.dir is None:
            return self.context.state["client"]["blob"] if "client" in self.context.state else None
        if rnd <= 0:
            return None
        path = self.dir / f"r{rnd}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{STATE_LOST} {path} is missing (saved after round {rnd}); restore it")
        return path.read_bytes()

    def save(self, blob: bytes, rnd: int, keep_from: int = 0, keep: int = 0) -> None:
        """Write round ``rnd``'s state; drop files older than ``keep_from`` (the round this one
        started from) except ``keep`` (the best model's, which evaluate and the test read)."""
        if self.dir is None:
            self.context.state["client"] = ConfigRecord({"blob": blob})
            return
        try:
            write_atomic(self.dir / f"r{rnd}.pt", blob)
        except WriteError as e:
            raise RuntimeError(f"{WRITE_FAILED} {e}") from None
        for old in [r for r in self._rounds() if r < keep_from and r != keep]:
            (self.dir / f"r{old}.pt").unlink(missing_ok=True)


class ClientModel:
    """This node's encoder (and optimizer state) restored from its ClientState, plus head and anchors."""

    def __init__(
        self,
        cfg: Config,
        group: GroupData,
        num_classes: int,
        blob: bytes | None,
        source: str = "context.state",
        encoder_from_server: bool = False,
    ) -> None:
        self.cfg, self.group = cfg, group
        self.encoder_from_server = encoder_from_server  # a shared space's: the server keeps it
        self.device = resolve_device(cfg.device)
        m, a = cfg.model, cfg.anchors
        enc, head, anchors = FRESH.get(m, a, cfg.seed, group.space, group.shape, group.meta, num_classes)
        self.encoder, self.head, self.anchors = enc.to(self.device), head.to(self.device), anchors.to(self.device)
        self.opt = make_optimizer(list(self.encoder.parameters()) + list(self.head.parameters()), cfg.optim)
        if blob is not None:
            try:
                state = torch.load(io.BytesIO(blob), map_location=self.device, weights_only=True)
                if state["encoder"] is not None:
                    self.encoder.load_state_dict(state["encoder"])
                elif not encoder_from_server:  # a private encoder lives only in this file
                    raise ValueError("it holds no encoder, and this client's encoder is private")
                if "head" in state:  # federated.head_sharing: local
                    self.head.load_state_dict(state["head"])
                if not cfg.federated.reset_client_opt:  # else momentum / Adam state starts fresh each round
                    self.opt.load_state_dict(state["opt"])
            except Exception as e:  # noqa: BLE001 - named in one line by the server
                raise ValueError(f"{STATE_LOST} {source} cannot be loaded ({type(e).__name__}: {e})") from None

    def load_global(self, rec: ArrayRecord) -> None:
        """Take the server's head (unless heads are local), anchors (when used) and (when
        shared) encoder."""
        head, anchors = unpack(rec, HEAD), unpack(rec, ANCHORS)
        if head:
            self.head.load_state_dict(head)
        if anchors:
            self.anchors.load_state_dict(anchors)
        enc = unpack(rec, ENCODER)
        if enc:
            self.encoder.load_state_dict(enc)

    def blob(self) -> bytes:
        """Optimizer state, the encoder unless the server holds it (a shared space's: it comes
        with every message, so a copy per client would only fill the disk) and a local head,
        to keep on this node (never sent)."""
        buf = io.BytesIO()
        encoder = None if self.encoder_from_server else self.encoder.state_dict()
        # with reset_client_opt the next visit starts a fresh optimizer: its state is not kept
        opt = None if self.cfg.federated.reset_client_opt else self.opt.state_dict()
        state = {"encoder": encoder, "opt": opt}
        if self.cfg.federated.head_sharing == "local":
            state["head"] = self.head.state_dict()
        torch.save(state, buf)
        return buf.getvalue()

    @torch.no_grad()
    def class_stats(self, running: tuple | None = None) -> dict[str, np.ndarray]:
        """Per-class count, mean and covariance of the training split in latent space.

        ``running``: sums gathered during local training; else an exact pass with the
        final encoder.
        """
        if running is None:
            counts, means, covs = group_class_gaussians(
                self.encoder,
                self.group.train.x,
                self.group.train.y,
                self.anchors.num_classes,
                self.cfg.anchors.cov_eps,
                self.anchors.structure,
            )
            return {"counts": counts.numpy(), "means": means.numpy(), "covs": covs.numpy()}
        sums = running
        means, covs = stats_to_moments(*sums, self.cfg.anchors.cov_eps)
        return {"counts": sums[0].numpy(), "means": means.numpy(), "covs": covs.numpy()}


def _is_stock(msg: Message) -> bool:
    """A stock Flower strategy (FedAvg & co.) sends ``arrays``/``config`` and wants scalar metrics."""
    return "arrays" in msg.content.array_records


def _setup(msg: Message, context: Context, cfg: Config, state_dir: str) -> tuple[int, int, ScenarioData, ClientState]:
    pid = int(context.node_config["partition-id"])
    conf = msg.content["config"]
    rnd = int(conf["server-round"] if _is_stock(msg) else conf["round"])
    seed_everything(stable_seed(cfg.seed, "client", pid, rnd), cfg.deterministic)
    return pid, rnd, scenario(cfg)[0], ClientState(context, "" if _is_stock(msg) else state_dir, pid)


def _fault(cfg: Config, pid: int, rnd: int) -> None:
    """Testing aid: ``federated.fault_partition`` raises from ``fault_round`` for ``fault_rounds`` rounds."""
    f = cfg.federated
    if pid == f.fault_partition and f.fault_round <= rnd < f.fault_round + f.fault_rounds:
        raise RuntimeError(f"injected fault: partition {pid} in round {rnd} (federated.fault_*)")


def _misbehaviour(cfg: Config, pid: int, rnd: int) -> tuple[str, float] | None:
    """Testing aid: this client's ``federated.faults`` entry active in round ``rnd`` (kind, scale)."""
    for f in cfg.federated.faults:
        if f.partition == pid and rnd >= f.from_round and (not f.rounds or rnd < f.from_round + f.rounds):
            return f.kind, f.scale
    return None


def _corrupt(parts: dict, start: dict, kind: str, scale: float) -> dict:
    """A faulty reply's arrays: NaN everywhere, or the global model plus ``scale`` x the update."""
    if kind == "nan":
        return {m: {k: torch.full_like(v, float("nan")) for k, v in sd.items()} for m, sd in parts.items()}
    return {m: {k: start[m][k] + scale * (v - start[m][k]) for k, v in sd.items()} for m, sd in parts.items()}


def _model(cfg: Config, msg: Message, data: ScenarioData, pid: int, store: ClientState) -> ClientModel:
    """The client's model from the state file of the round the server names (stock strategies:
    context.state)."""
    conf = msg.content["config"]
    rnd = int(conf.get("state_round", 0) or 0) if not _is_stock(msg) else 0
    source = str(store.dir / f"r{rnd}.pt") if store.dir is not None else "context.state"
    from_server = not _is_stock(msg) and any(k.startswith(ENCODER) for k in msg.content["global"].keys())
    return ClientModel(cfg, client_group(cfg, pid)[0], data.num_classes, store.load(rnd), source, from_server)


def _copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _log_prior(conf) -> torch.Tensor | None:
    """The global log class prior the server sends for the long-tail losses (None: not sent)."""
    v = conf.get("log_prior")
    return torch.tensor(list(v), dtype=torch.float32) if v is not None else None


def _jacobians(cfg: Config, model: ClientModel, group: GroupData, pid: int, rnd: int) -> dict[str, float]:
    """The gap analyses' Jacobian norms of the model the round starts from, on this client's training data."""
    from fedanchors.dynamics import encoder_head_jacobians

    a = cfg.analysis
    x = group.train.x[: a.jacobian_examples].to(model.device)
    gen = torch.Generator().manual_seed(stable_seed(cfg.seed, "jacobian", pid, rnd))
    return encoder_head_jacobians(model.encoder, model.head, x, a.projections, gen)


def _shared(cfg: Config, model: ClientModel, conf) -> dict[str, dict[str, torch.Tensor]]:
    """Copies of the parts the server aggregates (the global head, a shared encoder), in the
    order the server flattens them."""
    out = {"head": _copy(model.head)} if cfg.federated.head_sharing == "global" else {}
    if bool(conf["encoder_shared"]):
        out["encoder"] = _copy(model.encoder)
    return out


def _private_message(
    cfg: Config, msg, context, before: dict, after: dict, res: dict, n: int, pid: int, rnd: int, C: int
):
    """The reply under privacy: the release (``fedanchors.privacy``) and who sent it, nothing
    else; with secure aggregation only the public keys (``clients.secure``), the release
    staying here until it leaves masked."""
    stats = res["stats"] if anchors_used(cfg) else None
    if anchors_used(cfg) and stats is None:  # local training diverged: every block still sent, the loss NaN
        empty = torch.zeros(0, cfg.model.latent_dim)
        stats = class_sufficient_stats(empty, torch.zeros(0, dtype=torch.long), C, cfg.anchors.covariance)
    std = float(msg.content["config"].get("privacy_std", 0.0))
    rel = private_reply(cfg, before, after, stats, n, res["loss"], std, pid, rnd)
    if cfg.privacy.secure_aggregation:
        return secure.begin(msg, context, pid, n, rel, cfg.privacy.secagg_threshold)
    metrics = MetricRecord({"partition": pid, "num-examples": n})
    content = RecordDict({"private": pack_arrays(**{k: v.numpy() for k, v in rel.items()}), "metrics": metrics})
    return Message(content, reply_to=msg)


def _local_steps(cfg: Config, data: ScenarioData, group: GroupData) -> int:
    """A round's local steps: ``local_steps``, else ``local_epochs`` passes over the client's data
    (with fixed-ratio batches, ``optim.group_batch``, every client takes the same number)."""
    f = cfg.federated
    if f.local_steps:
        return f.local_steps
    if cfg.optim.group_batch:
        return f.local_epochs * steps_per_epoch([len(g.train) for g in data.groups], data.names, cfg.optim)
    return f.local_epochs * math.ceil(len(group.train) / cfg.optim.batch_size)


def train(msg: Message, context: Context, cfg: Config, state_dir: str = "") -> Message:
    """Local training on CE + lambda_fit * W2 fit; reply head, class statistics, loss."""
    pid, rnd, data, store = _setup(msg, context, cfg, state_dir)
    group = client_group(cfg, pid)[0]
    _fault(cfg, pid, rnd)
    bad = _misbehaviour(cfg, pid, rnd)
    model = _model(cfg, msg, data, pid, store)
    stock = _is_stock(msg)
    model.load_global(msg.content["arrays" if stock else "global"])
    start = {"head": _copy(model.head), "encoder": _copy(model.encoder)} if bad else {}
    conf = {"encoder_scale": 1.0, "encoder_shared": False} if stock else msg.content["config"]
    if "lr" in conf:  # optim.schedule: this round's learning rate
        set_lr(model.opt, float(conf["lr"]))
    f = cfg.federated
    private = cfg.privacy.enabled and not stock
    before = _shared(cfg, model, conf) if private else {}
    steps = _local_steps(cfg, data, group)
    gen = torch.Generator().manual_seed(stable_seed(cfg.seed, "batches", pid, rnd))
    jac = _jacobians(cfg, model, group, pid, rnd) if (not stock and conf.get("analysis_jacobian")) else {}
    prox = []  # FedProx: the parts the server aggregates, anchored at this round's global values
    if f.prox_mu > 0:
        shared = list(model.head.parameters()) + (list(model.encoder.parameters()) if conf["encoder_shared"] else [])
        prox = [(p, p.detach().clone()) for p in shared]
    work = LocalWork(
        steps, cfg.optim, cfg.anchors, float(conf["encoder_scale"]),
        num_classes=data.num_classes if (not stock and f.class_stats == "running" and anchors_used(cfg)) else 0,
        batch_size=cfg.optim.group_batch.get(group.name, 0), prox_mu=f.prox_mu, prox_ref=tuple(prox),
        loss=cfg.loss, logp=_log_prior(conf),
        snapshot_step=max(1, math.ceil(float(conf["snapshot_at"]) * steps)) if conf.get("snapshot_at") else 0,
        clip_code=cfg.privacy.clip_code if private else 0.0,
    )  # fmt: skip
    res = local_train(model.encoder, model.head, model.anchors, group.train, model.opt, work, gen, model.device)
    keep_from, keep = (
        (int(conf.get("state_round", 0) or 0), int(conf.get("keep_round", 0) or 0)) if not stock else (0, 0)
    )
    store.save(model.blob(), rnd, keep_from, keep)
    if stock:  # exactly one ArrayRecord and one MetricRecord, as FedAvg demands
        arrays = pack(head=model.head.state_dict(), anchors=model.anchors.state_dict())
        metrics = MetricRecord({"num-examples": len(group.train), "loss": res["loss"]})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
    if private:  # one release of bounded norm, noised here when privacy.noise is local
        after = _shared(cfg, model, conf)
        return _private_message(cfg, msg, context, before, after, res, len(group.train), pid, rnd, data.num_classes)
    shared = bool(conf["encoder_shared"])
    parts = {"encoder": model.encoder.state_dict()} if shared else {}
    if f.head_sharing == "global":
        parts["head"] = model.head.state_dict()
    loss = res["loss_first"] if f.group_loss == "first" else res["loss"]  # the group loss GroupDRO reads
    if bad:
        parts = _corrupt(parts, start, *bad)
        loss = float("nan") if bad[0] == "nan" else loss
    arrays = pack(**parts)
    metrics = MetricRecord({"partition": pid, "num-examples": len(group.train), "loss": loss, "fit": res["fit"], **jac})
    content = RecordDict({"global": arrays, "metrics": metrics})
    if anchors_used(cfg):  # the class moments the anchors are fitted to
        content["stats"] = pack_arrays(**model.class_stats(res["stats"]))
    if "snapshot" in res:  # DRFA: the shared parts at the snapshot step
        snap = res["snapshot"]
        content["snapshot"] = pack(**{k: snap[k] for k in ("head", "encoder") if k in parts})
    return Message(content, reply_to=msg)


def evaluate(msg: Message, context: Context, cfg: Config, state_dir: str = "") -> Message:
    """Per-class correct/total and summed loss on the asked splits (val and test for a stock
    strategy) with the global head."""
    pid, rnd, data, store = _setup(msg, context, cfg, state_dir)
    if msg.content["config"].get("state_round") is not None:  # FedAnchors evaluation, not a stock strategy's
        _fault(cfg, pid, rnd)
    model = _model(cfg, msg, data, pid, store)
    stock = _is_stock(msg)
    model.load_global(msg.content["arrays" if stock else "global"])
    out: dict = {"partition": pid}
    epochs = int(msg.content["config"].get("adapt_epochs", 0) or 0) if not stock else 0
    if epochs:  # a new client (federated.holdout): its own encoder, adapted to the frozen model
        group = model.group
        steps = epochs * math.ceil(len(group.train) / cfg.optim.batch_size)
        gen = torch.Generator().manual_seed(stable_seed(cfg.seed, "adapt", pid))
        res = adapt_encoder(
            model.encoder, model.head, model.anchors, group.train, cfg.optim, cfg.anchors, steps, gen,
            model.device, train_head=cfg.federated.head_sharing == "local", loss_cfg=cfg.loss,
            logp=_log_prior(msg.content["config"]),
        )  # fmt: skip
        out["adapt_loss"] = res["loss"]
    splits = ("val", "test") if stock else str(msg.content["config"]["splits"]).split(",")
    if not set(splits) <= {"train", "val", "test"}:
        raise ValueError(f"evaluate: unknown split in {splits}")
    for split in splits:
        correct, total, loss = split_counts(
            model.encoder, model.head, getattr(model.group, split), data.num_classes, 512, model.device
        )
        out.update({f"{split}_correct": correct.tolist(), f"{split}_total": total.tolist(), f"{split}_loss": loss})
    if stock:
        n = sum(out["val_total"])
        out = {"num-examples": n, "accuracy": sum(out["val_correct"]) / n, "loss": out["val_loss"] / n}
    return Message(RecordDict({"metrics": MetricRecord(out)}), reply_to=msg)


def query(msg: Message, context: Context, cfg: Config) -> Message:
    """Who this node is: partition, group, input space and shape, example count (or a step of
    secure aggregation, ``clients.secure``)."""
    pid = int(context.node_config["partition-id"])
    if "config" in msg.content.config_records and "secagg_stage" in msg.content["config"]:
        return secure.step(msg, context, pid)
    g, gi = client_group(cfg, pid)
    info = ConfigRecord(
        {"group": g.name, "space": g.space, "shape": list(g.shape), "vocab_size": int(g.meta.get("vocab_size", 0))}
    )
    metrics = {"partition": pid, "group_index": gi, "num-examples": len(g.train)}
    if cfg.loss.name != "ce":  # the long-tail losses' prior: the class counts (those the class moments carry)
        metrics["class_counts"] = torch.bincount(g.train.y, minlength=scenario(cfg)[0].num_classes).tolist()
    return Message(RecordDict({"info": info, "metrics": MetricRecord(metrics)}), reply_to=msg)
