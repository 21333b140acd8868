"""Run the real ClientApp, FedAnchors server and federated driver in one process, without Ray.

A stand-in Grid delivers each message to the ClientApp with that node's own Context
(as Flower's simulation does), so tests can check aggregation and messages exactly and
fast. The real Ray path is covered separately by tests/test_ray.py.
"""

from __future__ import annotations

from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import make_client_app
from fedanchors.config import Config
from fedanchors.loop import run_loop
from fedanchors.rundir import RunDir
from server.driver import FederatedTrainer, val_serves_test
from server.strategy import FedAnchors


class InProcessGrid:
    """A Grid with ``num_nodes`` nodes; records every message sent and received."""

    def __init__(self, cfg: Config, num_nodes: int, state_dir: str | None = None) -> None:
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 0, 0
        self.app = make_client_app(cfg, state_dir)
        self.ids = [1000 + 7 * i for i in range(num_nodes)][::-1]  # not in partition order
        self.contexts = {
            nid: Context(1, nid, {"partition-id": p, "num-partitions": num_nodes}, RecordDict(), {})
            for p, nid in enumerate(sorted(self.ids))
        }
        self.sent: list[Message] = []
        self.received: list[Message] = []

    def get_node_ids(self):
        return list(self.ids)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            self.sent.append(msg)
            TaskIdentity.node_id = msg.metadata.dst_node_id
            try:
                reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as e:  # as Flower does: an error reply, the round goes on
                reply = Message(error=Error(code=1, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
            TaskIdentity.node_id = 0
            self.received.append(reply)
            replies.append(reply)
        return replies


def run_rounds(
    cfg: Config, num_clients: int, num_classes: int = 10, run: RunDir | None = None, rounds: int = 0
) -> tuple[FedAnchors, InProcessGrid, dict]:
    """``cfg.federated.rounds`` (or ``rounds``) rounds through the shared loop and the real
    federated driver; returns the server, the grid and the summary."""
    grid = InProcessGrid(cfg, num_clients, str(run.path / "clients") if run is not None else None)
    errors = run.path / "client_errors.log" if run is not None else None
    server = FedAnchors(cfg, num_clients, num_classes, errors=errors)
    trainer = FederatedTrainer(cfg, grid, server)
    trainer.total = rounds or trainer.total
    summary = run_loop(trainer, cfg, run, test_with_val=val_serves_test(cfg))
    return server, grid, summary


def train_rounds(cfg: Config, num_clients: int, num_classes: int = 10) -> tuple[FedAnchors, InProcessGrid]:
    """Only the train exchanges of ``cfg.federated.rounds`` rounds: the server state after the last."""
    grid = InProcessGrid(cfg, num_clients)
    server = FedAnchors(cfg, num_clients, num_classes)
    trainer = FederatedTrainer(cfg, grid, server)
    trainer.setup()
    for t in range(1, cfg.federated.rounds + 1):
        trainer.train(t)
    return server, grid
