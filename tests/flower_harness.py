"""Run the real ClientApp and FedAnchors strategy in one process, without Ray.

A stand-in Grid delivers each message to the ClientApp with that node's own Context
(as Flower's simulation does), so tests can check aggregation and messages exactly and
fast. The real Ray path is covered separately by tests/test_ray.py.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import make_client_app
from fedanchors.config import Config
from server.strategy import FedAnchors


class InProcessGrid:
    """A Grid with ``num_nodes`` nodes; records every message sent and received."""

    def __init__(self, cfg: Config, num_nodes: int) -> None:
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 0, 0
        self.app = make_client_app(cfg)
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


def run_rounds(cfg: Config, num_clients: int, num_classes: int = 10) -> tuple[FedAnchors, InProcessGrid]:
    """``cfg.federated.rounds`` rounds through ``Strategy.start`` itself."""
    grid = InProcessGrid(cfg, num_clients)
    strategy = FedAnchors(cfg, num_clients, num_classes)
    strategy.start(grid, ArrayRecord(), num_rounds=cfg.federated.rounds, timeout=60)
    return strategy, grid
