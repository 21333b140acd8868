"""The Flower ServerApps: both run ``server.driver.serve`` (the shared loop) over the Grid.

``make_server_app`` is used by ``python -m fedanchors.simulate``; the module-level ``app``
serves ``flwr run`` (Deployment Engine or a Flower-launched simulation), reading the
config path, overrides and run directory from the run config.
"""

from __future__ import annotations

import json
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp

from fedanchors.config import Config
from fedanchors.configure import from_run_config
from fedanchors.errors import FedAnchorsError
from fedanchors.population import population_size
from fedanchors.rundir import RunDir
from server.driver import serve
from server.grid import GuardedGrid


def make_server_app(
    cfg: Config,
    num_clients: int,
    num_classes: int,
    run: RunDir | None,
    holder: dict,
    class_sets: dict[str, list[int]] | None = None,
    resume: bool = False,
    stop_flag=None,
) -> ServerApp:
    """A ServerApp that leaves the summary (or the error) in ``holder`` for the caller."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if "abort" in holder:  # waits end as soon as the engine fails, not after round_timeout
            grid = GuardedGrid(grid, holder["abort"])
        try:
            holder["summary"] = serve(cfg, grid, num_clients, num_classes, run, class_sets, resume, stop_flag)
        except Exception as e:  # surfaced by the caller as one line, not a Flower traceback
            holder["error"] = e

    return app


def _flwr_run_app() -> ServerApp:
    """For ``flwr run``: the config from the run config; the run directory is ``run-dir``
    when given (the clients keep their state under ``<run-dir>/clients``), else a new one
    under ``out_dir``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            _flwr_run(grid, context)
        except FedAnchorsError as e:
            # the one line in the run's log (flwr log / --stream); re-raised so that Flower marks
            # the run failed with this line as its status details (flwr ls)
            flwr_log(ERROR, "error: %s", e)
            raise

    return app


def _flwr_run(grid: Grid, context: Context) -> None:
    from fedanchors.preflight import check_against_data
    from fedanchors.runs import build_data
    from server.privacy import preflight

    cfg = from_run_config(context.run_config)
    data = build_data(cfg.data)
    check_against_data(cfg, data)
    preflight(cfg, data)
    where = str(context.run_config.get("run-dir", "") or "")
    run = RunDir.create_at(Path(where), cfg) if where else RunDir.create(cfg)
    try:
        n = population_size(cfg.federated, data, cfg.seed)
        summary = serve(cfg, grid, n, data.num_classes, run, data.class_sets)
        summary["run_dir"] = str(run.path)
        flwr_log(INFO, "summary: %s", json.dumps({k: summary[k] for k in ("test_acc_wg", "test_acc_all", "run_dir")}))
    finally:
        run.release()


app = _flwr_run_app()
