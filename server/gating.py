"""The federated gate's server (the long-tail gate): one round per gate epoch over the Grid.

Each client (one group of the experts' runs) trains the gate for ``federated.local_epochs``
on its own gating data; the server averages the gates with the method's weights over the
groups (GroupDRO by default, its q following the clients' mixture losses) and sums the
clients' per-class counts into the metrics ``fedanchors.gating.core`` defines. The class
weights and the group priors come from the clients' gating class counts and each expert's
head / tail correct counts, sent once at setup. ``FederatedGate`` implements the trainer
that ``fedanchors.gating.run.gate_loop`` drives.
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from clients.protocol import pack, unpack, unpack_arrays
from fedanchors.errors import FedAnchorsError
from fedanchors.gating import core
from fedanchors.gating.config import GatingConfig
from fedanchors.gating.experts import expert_config, group_models
from fedanchors.gating.losses import priors_from_counts
from fedanchors.methods import build_method
from fedanchors.runs import build_data
from server.grid import GuardedGrid
from server.simulation import simulate_apps


class FederatedGate:
    def __init__(self, cfg: GatingConfig, runs: list[Path], groups: list[str], head: torch.Tensor, C: int) -> None:
        self.cfg, self.runs, self.groups, self.head, self.C = cfg, runs, groups, head, C
        self.E = len(runs)
        self.net = core.build_gate(cfg, self.E)
        self.method = build_method(cfg.federated.method, groups)
        self.heads = []  # per expert, per group: the expert's head state dict (the server holds the heads)
        data = build_data(expert_config(runs[0]).data)  # the experts share their data (checked)
        for run in runs:
            ecfg = expert_config(run)
            heads = group_models(run, ecfg, data, torch.device("cpu"))[1]
            self.heads.append([h.state_dict() for h in heads])
        self.grid: Grid | None = None
        self.nodes: dict[int, int] = {}
        self.sizes = torch.zeros(len(groups))
        self.losses: torch.Tensor | None = None

    def _payload(self, pid: int) -> dict:
        return pack(gate=self.net.state_dict(), **{f"expert{i}": h[pid] for i, h in enumerate(self.heads)})

    def _send(self, kind: str, conf: dict) -> list[tuple[int, Message]]:
        msgs = [
            Message(
                RecordDict({"global": self._payload(pid), "config": ConfigRecord(conf)}),
                message_type=kind,
                dst_node_id=nid,
                group_id=kind,
            )  # fmt: skip
            for pid, nid in sorted(self.nodes.items())
        ]
        replies = list(self.grid.send_and_receive(msgs, timeout=self.cfg.federated.round_timeout))
        bad = [r for r in replies if r.has_error()]
        if bad or len(replies) < len(msgs):
            reason = bad[0].error.reason.strip().splitlines()[-1] if bad else "no reply"
            raise FedAnchorsError(f"federated gate: a client failed ({reason})")
        return sorted(((int(r.content["metrics"]["partition"]), r) for r in replies), key=lambda t: t[0])

    def setup(self, grid: Grid) -> None:
        """Which node holds which group (a bare query), then the class weights and group
        priors from the clients' gating class counts and the experts' head / tail hits."""
        self.grid = grid
        deadline = time.time() + 60
        while len(ids := list(grid.get_node_ids())) < len(self.groups) and time.time() < deadline:
            time.sleep(0.1)
        who = [Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=n, group_id="who") for n in ids]
        replies = list(grid.send_and_receive(who, timeout=self.cfg.federated.round_timeout))
        for r in replies:
            if r.has_error():
                raise FedAnchorsError(f"federated gate setup: a client failed ({r.error.reason.strip()[-300:]})")
        self.nodes = {
            int(r.content["metrics"]["partition"]): r.metadata.src_node_id for r in replies if not r.has_error()
        }
        if sorted(self.nodes) != list(range(len(self.groups))):
            raise FedAnchorsError(
                f"federated gate: clients {sorted(self.nodes)} answered; expected one per group ({self.groups})"
            )
        got = self._send(MessageType.QUERY, {"head": [bool(v) for v in self.head]})
        stats = [{k: torch.from_numpy(v) for k, v in unpack_arrays(r.content["stats"]).items()} for _, r in got]
        self.sizes = torch.stack([s["counts"].sum() for s in stats]).double()
        self.cw = core.class_weights(sum(s["counts"] for s in stats)).tolist()
        pri = priors_from_counts(sum(s["hits"] for s in stats), sum(s["n"] for s in stats),
                                 self.cfg.loss.prior_temperature)  # fmt: skip
        self.priors = pri.flatten().tolist() if self.cfg.loss.prior else []

    def train(self, epoch: int, temperature: float, lr: float) -> dict[str, float]:
        conf = {"epoch": epoch, "temperature": temperature, "lr": lr, "head": [bool(v) for v in self.head],
                "class_weights": self.cw, "priors": self.priors}  # fmt: skip
        w = self.method.weights(self.sizes, self.losses, epoch).float()
        replies = self._send(MessageType.TRAIN, conf)
        states = [unpack(r.content["global"], "gate.") for _, r in replies]
        avg = {k: sum(wi * s[k].float() for wi, s in zip(w, states)).to(states[0][k].dtype) for k in states[0]}
        self.net.load_state_dict(avg)
        metrics = [dict(r.content["metrics"]) for _, r in replies]
        self.losses = torch.tensor([m["nll"] for m in metrics], dtype=torch.float64)
        self.method.step(self.losses, epoch)
        keys = [k for k in metrics[0] if k not in ("partition", "num-examples")]
        out = {k: float(sum(wi * m[k] for wi, m in zip(w.tolist(), metrics))) for k in keys}
        return out | {f"q:{g}": float(q) for g, q in zip(self.groups, self.method.q)}

    def counts(self, split: str, temperature: float, uniform: bool = False) -> dict[str, torch.Tensor]:
        conf = {"split": split, "temperature": temperature, "uniform": uniform}
        replies = self._send(MessageType.EVALUATE, conf)
        out = None
        for _, r in replies:
            out = core.add_stats(out, {k: torch.from_numpy(v) for k, v in unpack_arrays(r.content["stats"]).items()})
        return out

    def state(self) -> dict:
        return copy.deepcopy(self.net.state_dict())

    def load(self, state: dict) -> None:
        self.net.load_state_dict(state)


def run_federated_gate(trainer: FederatedGate, loop) -> dict:
    """Flower simulation (Ray backend) with one SuperNode per group; ``loop()`` runs in the ServerApp."""
    from clients.gating import make_gate_client_app

    holder: dict = {"abort": threading.Event()}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            trainer.setup(GuardedGrid(grid, holder["abort"]))
            holder["summary"] = loop()
        except Exception as e:  # noqa: BLE001 - surfaced by simulate_apps as one line
            holder["error"] = e

    f = trainer.cfg.federated
    client = make_gate_client_app(trainer.cfg, [str(r) for r in trainer.runs])
    return simulate_apps(app, client, len(trainer.groups), holder, f.num_cpus, 0.0, {}, 0)
