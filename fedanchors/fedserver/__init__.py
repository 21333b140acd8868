"""The federated server without Flower: its state and its maths over parsed client replies.

``ServerCore`` (``core``) holds the head, the anchors, the shared encoders, GroupDRO's q and
each client's bookkeeping; it plans a round (group weights, the sampled clients, what each
is told) and aggregates the round's ``ClientUpdate`` s (the aggregation rule, the server
optimizer, the anchor fit, GroupDRO's step); ``evaluation`` turns clients' counts into the
group-wise metrics; ``state`` is what it checkpoints; ``analysis`` the gap analyses over the
replies. ``server.strategy.FedAnchors`` adds only the messages: it builds them from a plan
and parses replies into these types, so everything here is testable without flwr.
"""

from fedanchors.fedserver.core import ClientUpdate, ServerCore

__all__ = ["ClientUpdate", "ServerCore"]
