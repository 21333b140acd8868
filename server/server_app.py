"""The Flower ServerApp: builds the FedAnchors strategy and lets ``Strategy.start`` run it.

``make_server_app`` is used by ``python -m fedanchors.simulate``; the module-level ``app``
serves ``flwr run .`` (config path and overrides from the run config).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedanchors.config import Config, from_run_config
from fedanchors.rundir import RunDir
from server.simulation import GuardedGrid
from server.strategy import FedAnchors


def make_server_app(
    cfg: Config | None,
    num_clients: int,
    num_classes: int,
    run: RunDir | None,
    holder: dict,
    class_sets: dict[str, list[int]] | None = None,
    resume: bool = False,
    stop_flag=None,
) -> ServerApp:
    """A ServerApp whose strategy is left in ``holder["strategy"]`` for the caller."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAnchors(cfg, num_clients, num_classes, run, class_sets)
        strategy.stop_flag = stop_flag
        holder["strategy"] = strategy
        if "abort" in holder:  # waits end as soon as the engine fails, not after round_timeout
            grid = GuardedGrid(grid, holder["abort"])
        try:
            done = strategy.resume_from(run.checkpoint("server_resume.pt")) if resume else 0
            rounds = cfg.federated.rounds - done
            strategy.start(grid, ArrayRecord(), num_rounds=rounds, timeout=cfg.federated.round_timeout)
            if cfg.dfr.enabled:
                strategy.run_dfr(grid)
        except Exception as e:  # surfaced by the caller as one line, not a Flower traceback
            holder["error"] = e

    return app


def _flwr_run_app() -> ServerApp:
    """For ``flwr run .``: read the config from the run config, write a normal run directory."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedanchors.data import build_scenario

        cfg = from_run_config(context.run_config)
        data = build_scenario(cfg.data)
        run = RunDir.create(cfg)
        strategy = FedAnchors(cfg, len(data.groups), data.num_classes, run, data.class_sets)
        strategy.start(grid, ArrayRecord(), num_rounds=cfg.federated.rounds, timeout=cfg.federated.round_timeout)
        if cfg.dfr.enabled:
            strategy.run_dfr(grid)
        run.write_summary(strategy.finish())

    return app


app = _flwr_run_app()
