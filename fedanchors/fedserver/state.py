"""What the server checkpoints: the model (head, anchors, shared encoders, q, the class
statistics, which state file holds each client's private encoder) and everything the next
round depends on for an exact resume. A mixin of ``fedanchors.fedserver.ServerCore``."""

from __future__ import annotations

from fedanchors.resume import global_rng_state, set_global_rng_state


class StateMixin:
    """``ServerCore``'s checkpointed state: its model, and an exact resume's."""

    def aggregated_parts(self) -> dict:
        """The modules the server aggregates: the head (when global) and the shared encoders."""
        head = {"head": self.head} if self.cfg.federated.head_sharing == "global" else {}
        return head | {f"enc:{s}": e for s, e in self.encoders.items()}

    def model_state(self) -> dict:
        """The server's model: head, anchors, shared encoders, q, the class statistics it was
        fitted on, and which state file holds each client's private encoder."""
        return {
            "head": self.head.state_dict(),
            "anchors": self.anchors.state_dict(),
            "encoders": {k: e.state_dict() for k, e in self.encoders.items()},
            "q": self.method.q,
            "stats": self.last_stats,
            "client_rounds": list(self.client_rounds),
        }

    def load_model_state(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.anchors.load_state_dict(state["anchors"])
        for k, e in self.encoders.items():
            e.load_state_dict(state["encoders"][k])
        self.last_stats = state["stats"]
        self.client_rounds = [int(r) for r in state["client_rounds"]]

    def resume_state(self) -> dict:
        """Everything the next round depends on (clients keep their own state)."""
        return {
            "head": self.head.state_dict(),
            "anchors": self.anchors.state_dict(),
            "encoders": {k: e.state_dict() for k, e in self.encoders.items()},
            "method": self.method.state_dict(),
            "last_losses": self.last_losses,
            "sep_gen": self.sep_gen.get_state(),
            "bytes": (self.bytes_sent, self.bytes_received, list(self.round_bytes), self.bytes_train),
            "last_stats": self.last_stats,
            "rng": global_rng_state(),
            "client_rounds": list(self.client_rounds),
            "best_rounds": list(self.best_rounds),
            "missing": list(self.missing),
            "server_opt": self.server_opt.state_dict(),
            # the gap analyses: the last analysed round's record, completed by the next round's losses
            "analysis_pending": self.analysis.pending if self.analysis is not None else None,
        }

    def load_resume_state(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.anchors.load_state_dict(state["anchors"])
        for k, e in self.encoders.items():
            e.load_state_dict(state["encoders"][k])
        self.method.load_state_dict(state["method"])
        self.last_losses = state["last_losses"]
        self.sep_gen.set_state(state["sep_gen"])
        b = state["bytes"]  # a checkpoint from before training traffic was counted apart: all of it
        self.bytes_sent, self.bytes_received = b[0], b[1]
        self.bytes_train = b[3] if len(b) > 3 else b[0] + b[1]
        self.round_bytes = [*b[2], sum(b[2])][:3]
        self.last_stats = state["last_stats"]
        self.client_rounds = [int(r) for r in state["client_rounds"]]
        self.best_rounds = [int(r) for r in state["best_rounds"]]
        self.server_opt.load_state_dict(state["server_opt"])
        self.missing = [int(m) for m in state["missing"]]
        set_global_rng_state(state["rng"])
        if self.analysis is not None:
            self.analysis.pending = state.get("analysis_pending")
