"""The federated driver: the ServerApp's main, running the shared loop over a Grid.

``FederatedTrainer`` implements ``fedanchors.loop.Trainer`` with ``FedAnchors``'s maths and
messages: a round is one train exchange (and, every ``federated.eval_every`` rounds, one
evaluate exchange) with the clients through the Grid itself. ``serve`` is the body of both
ServerApps: ``python -m fedanchors.simulate`` (Flower's simulation engine) and ``flwr run``
(the Deployment Engine, or a Flower-launched simulation).
"""

from __future__ import annotations

import copy
import dataclasses

from flwr.serverapp import Grid

from fedanchors.config import Config
from fedanchors.dfr import fit_balanced, gaussian_codes, linear_head
from fedanchors.loop import run_loop
from fedanchors.models import stable_seed
from fedanchors.resume import MISMATCH, mismatch
from fedanchors.rundir import RunDir
from server.privacy import check_budget
from server.secure import aggregate_secure
from server.strategy import FedAnchors


def run_dfr(server: FedAnchors, grid: Grid) -> dict:
    """DFR on the server: a head fitted on codes drawn group-balanced from the clients'
    class Gaussians, one per C; each is evaluated by the clients, C is picked on
    validation worst-group accuracy (``fedanchors.dfr`` explains the choice)."""
    if server.last_stats is None:
        return {}
    cfg = server.cfg
    st = server.last_stats
    seed = stable_seed(cfg.seed, "dfr")
    z, y, g = gaussian_codes(st["counts"], st["means"], st["covs"], cfg.dfr.samples_per_group, seed)
    one = dataclasses.replace(cfg.dfr, subsets=1)  # the draw is balanced already
    kept, rnd, results = copy.deepcopy(server.head.state_dict()), cfg.federated.rounds + 1, {}
    for C in cfg.dfr.Cs:
        W, b = fit_balanced(z, y, g, C, one, server.anchors.num_classes, seed)
        server.head.load_state_dict(linear_head(W, b).state_dict())
        replies = grid.send_and_receive(
            server.configure_evaluate(rnd, ("val", "test")), timeout=cfg.federated.round_timeout
        )
        out = server.aggregate_evaluate(rnd, replies, ("val", "test"))
        results[C] = (out["val"], out["test"])
    server.head.load_state_dict(kept)
    best = max(cfg.dfr.Cs, key=lambda c: (results[c][0]["acc_wg"], -c))
    return {
        "dfr_C": best,
        **{f"dfr_val_wg:C={c}": v[0]["acc_wg"] for c, v in results.items()},
        **{f"dfr_test_{k}": v for k, v in results[best][1].items()},
    }


class FederatedTrainer:
    """One round per step of the loop; the server state lives in ``self.server``."""

    mode, unit = "federated", "round"
    files = {"resume": "server_resume.pt", "best": "best_server.pt", "last": "last_server.pt"}

    def __init__(self, cfg: Config, grid: Grid, server: FedAnchors) -> None:
        self.cfg, self.grid, self.server = cfg, grid, server
        self.total, self.eval_every = cfg.federated.rounds, cfg.federated.eval_every
        self.timeout = cfg.federated.round_timeout
        self.rnd = 0
        self.budget = None  # privacy: the accountant (server.privacy), made once the clients are known
        self.train_record: dict[str, float] = {}

    def setup(self) -> None:
        self.server.discover(self.grid)
        self.budget = check_budget(self.cfg, len(self.server.training()))
        if self.budget is not None:
            self.server.privacy_std = self.budget.std

    def side_logs(self) -> dict[str, list[dict]]:
        """The gap analyses' finished records (the loop writes and clears them)."""
        return {"analysis.jsonl": self.server.analysis.out} if self.server.analysis is not None else {}

    def train(self, t: int) -> dict[str, float]:
        self.rnd = t
        if self.budget is not None:
            self.budget.check(t)  # stops before a round that would exceed privacy.target_epsilon
        replies = self.grid.send_and_receive(self.server.configure_train(t), timeout=self.timeout)
        if self.cfg.privacy.enabled and self.cfg.privacy.secure_aggregation:
            out = aggregate_secure(self.server, self.grid, t, replies, self.timeout)
        else:
            out = self.server.aggregate_train(t, replies)
        query = self.server.configure_loss_query(t)  # DRFA: the snapshot's losses, for lambda's step
        if query:
            out |= self.server.aggregate_loss_query(t, self.grid.send_and_receive(query, timeout=self.timeout))
        return out

    def evaluate(self, splits: tuple[str, ...]) -> dict[str, dict[str, float]]:
        s = self.server
        replies = self.grid.send_and_receive(s.configure_evaluate(self.rnd, splits), timeout=self.timeout)
        out = s.aggregate_evaluate(self.rnd, replies, splits)
        out["val"] = out.get("val", {}) | {"eval_complete": out.pop("complete")}
        if s.asked is not None and s.cohort is not None and splits == ("val",):
            out["val"]["eval_clients"] = len(s.asked)  # the record's validation is over the cohort
        return out

    def extras(self) -> dict[str, float]:
        out = self.server.record_extras()
        if self.budget is not None:
            out["privacy_epsilon"] = self.budget.epsilon(self.rnd)
        return out

    def end(self, t: int) -> Exception | None:
        self.server.count_missing()
        return self.server.missing_error(t)

    def on_best(self, t: int) -> None:
        self.server.best_rounds = list(self.server.client_rounds)  # clients keep these state files

    def model_state(self) -> dict:
        return self.server.model_state()

    def load_model_state(self, state: dict) -> None:
        self.server.load_model_state(state)

    def resume_state(self) -> dict:
        return self.server.resume_state()

    def load_resume_state(self, state: dict, path) -> None:
        try:
            self.server.load_resume_state(state)
        except MISMATCH as e:
            raise mismatch(f"server checkpoint {path}", "this run's clients", e) from None
        self.rnd = int(state["round"])

    def final(self) -> dict:
        s = self.server
        out = run_dfr(s, self.grid) if self.cfg.dfr.enabled else {}
        if s.held:  # new clients: adapt to the selected model, then evaluate
            replies = self.grid.send_and_receive(s.configure_adapt(self.total + 2), timeout=self.timeout)
            out |= s.aggregate_adapt(self.total + 2, replies)
        device = "cpu" if self.cfg.federated.num_gpus == 0 else "cuda"
        if self.budget is not None:
            b = self.budget
            out |= {"privacy_epsilon": b.epsilon(self.rnd), "privacy_delta": self.cfg.privacy.delta,
                    "privacy_noise_multiplier": b.z, "privacy_noise_std": b.std}  # fmt: skip
        totals = {"bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received, "bytes_train": s.bytes_train}
        return out | totals | {"device": device}


def serve(
    cfg: Config,
    grid: Grid,
    num_clients: int,
    num_classes: int,
    run: RunDir | None,
    class_sets: dict[str, list[int]] | None = None,
    resume: bool = False,
    stop=None,
) -> dict:
    """Run ``cfg`` over ``grid`` (clients already started by the engine); the summary."""
    errors = run.path / "client_errors.log" if run is not None else None
    server = FedAnchors(cfg, num_clients, num_classes, class_sets, errors)
    trainer = FederatedTrainer(cfg, grid, server)
    return run_loop(trainer, cfg, run, resume=resume, stop=stop, test_with_val=val_serves_test(cfg))


def val_serves_test(cfg: Config) -> bool:
    """One exchange serves validation and test, unless a cohort validates during training
    (``federated.eval_clients``): then the best round's model is tested on every client at the end."""
    return cfg.federated.eval_clients == 0
