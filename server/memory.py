"""``federated.engine: inprocess``: the same ServerApp driver and ClientApp on one machine,
the messages handed over in memory instead of through Ray.

Each node has its own ``Context`` (its ``partition-id`` and its ``state``, kept between
rounds), as Flower's simulation gives it; a client that raises answers with an error reply,
as Flower's does, and the round goes on. The clients run one after the other in the
driver's process: no Ray start, no actor pool, no serialisation, so a round costs what its
training costs. What Ray adds and this does not: parallel clients across CPUs or GPUs,
fractional GPUs, a Ray cluster, and a client process that can crash alone.
"""

from __future__ import annotations

import traceback

from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE = 0


class MemoryGrid:
    """A Grid over ``num_nodes`` in-process ClientApp nodes (node ids 1..n, partition i at
    node i + 1)."""

    def __init__(self, client_app, num_nodes: int, run_id: int = 1) -> None:
        self.app, self.run_id = client_app, run_id
        self.contexts = {
            p + 1: Context(run_id, p + 1, {"partition-id": p, "num-partitions": num_nodes}, RecordDict(), {})
            for p in range(num_nodes)
        }
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = run_id, 0, SERVER_NODE

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        """Each message to its node's ClientApp, in order; the replies."""
        return [self._deliver(m) for m in messages]

    def _deliver(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        TaskIdentity.node_id = node  # the reply's sender
        try:
            reply = self.app(msg, self.contexts[node])
        except Exception as e:  # as Flower's engine: an error reply with the traceback
            reason = "".join(traceback.format_exception(e)).rstrip()
            reply = Message(error=Error(code=1, reason=reason), reply_to=msg)
        finally:
            TaskIdentity.node_id = SERVER_NODE
        return reply


def run_inprocess(cfg, client_app, num_clients: int, num_classes: int, run, class_sets, resume, stop) -> dict:
    """``cfg`` over a ``MemoryGrid`` of ``num_clients`` nodes: the federated driver's summary."""
    from server.driver import serve

    grid = MemoryGrid(client_app, num_clients)
    return serve(cfg, grid, num_clients, num_classes, run, class_sets, resume, stop)
