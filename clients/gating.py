"""The federated gate's ClientApp (the long-tail gate): each client is one group of the experts' runs.

It holds its own encoder of every expert run (read from the run, as its node would keep
it) and its gating, validation and test data; the server sends the experts' heads, the
gate and the schedule. Logits are computed once per process and kept.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.protocol import pack, pack_arrays, unpack
from fedanchors.gating import core
from fedanchors.gating.config import GatingConfig
from fedanchors.gating.experts import expert_config, group_models, logits_of
from fedanchors.gating.losses import group_correct
from fedanchors.models import build_head, stable_seed

_BLOCKS: dict = {}  # (runs, partition) -> {split: (features, posteriors, labels)}


def _blocks(runs: list[str], pid: int, heads: list[dict]) -> dict:
    key = (tuple(runs), pid)
    if key not in _BLOCKS:
        from pathlib import Path

        from fedanchors.runs import build_data

        logits: dict[str, list[torch.Tensor]] = {"gating": [], "val": [], "test": []}
        ys = {}
        data = build_data(expert_config(Path(runs[0])).data)  # the experts share their data (checked)
        for run, head_sd in zip(runs, heads):
            ecfg = expert_config(Path(run))
            encoders, _ = group_models(Path(run), ecfg, data, torch.device("cpu"))
            head = build_head(ecfg.model, data.num_classes, ecfg.seed)
            head.load_state_dict(head_sd)  # the server's copy of this expert's head
            g = data.groups[pid]
            for split in logits:
                part = getattr(g, split)
                logits[split].append(logits_of(encoders[pid], head, part.x, torch.device("cpu")))
                ys[split] = part.y
        _BLOCKS.clear()
        _BLOCKS[key] = {s: (*core.prepare(torch.stack(v, 1)), ys[s]) for s, v in logits.items()}
    return _BLOCKS[key]


def _heads(rec: ArrayRecord, experts: int) -> list[dict]:
    return [unpack(rec, f"expert{i}.") for i in range(experts)]


def make_gate_client_app(cfg: GatingConfig, runs: list[str]) -> ClientApp:
    app = ClientApp()
    E = len(runs)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Gating class counts and each expert's head / tail correct counts (for the priors)."""
        pid = int(context.node_config["partition-id"])
        if "config" not in msg.content.config_records:  # who is this node
            return Message(RecordDict({"metrics": MetricRecord({"partition": pid})}), reply_to=msg)
        feats, post, y = _blocks(runs, pid, _heads(msg.content["global"], E))["gating"]
        head = torch.tensor(list(msg.content["config"]["head"]), dtype=torch.bool)
        C = len(head)
        hits, n = group_correct((post.argmax(-1) == y[:, None]).float(), y, (~head).long(), 2)
        arrays = pack_arrays(counts=torch.bincount(y, minlength=C).numpy(), hits=hits.numpy(), n=n.numpy())
        return Message(RecordDict({"stats": arrays, "metrics": MetricRecord({"partition": pid})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        conf = msg.content["config"]
        rec = msg.content["global"]
        feats, post, y = _blocks(runs, pid, _heads(rec, E))["gating"]
        net = core.build_gate(cfg, E)
        net.load_state_dict(unpack(rec, "gate."))
        opt = core.make_opt(net, cfg)
        for g in opt.param_groups:
            g["lr"] = float(conf["lr"])
        head = torch.tensor(list(conf["head"]), dtype=torch.bool)
        cw = torch.tensor(list(conf["class_weights"]), dtype=torch.float32)
        priors = torch.tensor(list(conf["priors"]), dtype=torch.float32).reshape(2, E) if conf["priors"] else None
        epoch = int(conf["epoch"])
        gen = torch.Generator().manual_seed(stable_seed(cfg.seed, "gate-batches", pid, epoch))
        parts: dict = {}
        for _ in range(cfg.federated.local_epochs):
            parts = core.train_epoch(net, opt, feats, post, y, cfg, cw, (~head).long(), priors,
                                     float(conf["temperature"]), gen)  # fmt: skip
        metrics = MetricRecord({"partition": pid, "num-examples": len(y), **parts})
        return Message(RecordDict({"global": pack(gate=net.state_dict()), "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        conf = msg.content["config"]
        rec = msg.content["global"]
        feats, post, y = _blocks(runs, pid, _heads(rec, E))[str(conf["split"])]
        net = core.build_gate(cfg, E)
        net.load_state_dict(unpack(rec, "gate."))
        if conf.get("uniform"):  # the plain average of the experts (the reference without a gate)
            w = torch.full(post.shape[:2], 1.0 / post.shape[1])
        else:
            w = core.route(net, feats, float(conf["temperature"]))
        st = core.count_stats(post, w, y, post.shape[-1])
        arrays = pack_arrays(**{k: v.numpy() for k, v in st.items()})
        return Message(RecordDict({"stats": arrays, "metrics": MetricRecord({"partition": pid})}), reply_to=msg)

    return app
