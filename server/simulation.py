"""Run a federated config on Flower's simulation engine with the Ray backend."""

from __future__ import annotations

import logging
import os
import warnings

import torch

from fedanchors.config import Config
from fedanchors.data import ScenarioData
from fedanchors.errors import ConfigError, FedAnchorsError
from fedanchors.resume import StopFlag
from fedanchors.rundir import RunDir


def check_resources(cfg: Config) -> None:
    """Reject resource requests Ray cannot satisfy, before Ray starts."""
    f = cfg.federated
    joins_cluster = "address" in f.ray_init
    if f.num_gpus > 0 and not joins_cluster and not torch.cuda.is_available():
        raise ConfigError(
            f"federated.num_gpus={f.num_gpus} but no CUDA GPU is visible; set federated.num_gpus: 0 "
            "(or run on a GPU machine / join a GPU Ray cluster with federated.ray_init.address)"
        )
    if f.num_gpus > 1 and f.num_gpus != int(f.num_gpus):
        raise ConfigError(f"federated.num_gpus={f.num_gpus}: above 1 it must be a whole number of GPUs")
    cpus = f.ray_init.get("num_cpus", os.cpu_count() or 1)
    if not joins_cluster and f.num_cpus > cpus:
        raise ConfigError(
            f"federated.num_cpus={f.num_cpus} exceeds the {cpus} CPUs Ray gets here, so no client could start; "
            f"use at most {cpus}"
        )
    if f.min_clients < 1:
        raise ConfigError("federated.min_clients must be >= 1")


def _quiet() -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    # read by flwr at import; client failures are reported by the strategy (one line each, full
    # tracebacks in <run>/client_errors.log). FLWR_LOG_LEVEL=INFO shows Flower's own log.
    os.environ.setdefault("FLWR_LOG_LEVEL", "CRITICAL")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def run_federated(cfg: Config, data: ScenarioData, run: RunDir, resume: bool = False) -> dict:
    """One Flower client per group, ``federated.rounds`` rounds; returns the summary.

    Every round ends with ``checkpoints/server_resume.pt`` (clients keep theirs under
    ``<run>/clients``); ``resume=True`` continues after the last one. Ctrl-C stops after
    the current round's checkpoint.
    """
    _quiet()
    from flwr.simulation import run_simulation

    from clients.client_app import make_client_app
    from server.server_app import make_server_app

    f = cfg.federated
    if f.min_clients > len(data.groups):
        raise ConfigError(f"federated.min_clients={f.min_clients} exceeds the {len(data.groups)} groups (clients)")
    holder: dict = {}
    init_args = {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False, **f.ray_init}
    backend = {"client_resources": {"num_cpus": f.num_cpus, "num_gpus": f.num_gpus}, "init_args": init_args}
    with StopFlag() as stop:
        server_app = make_server_app(
            cfg, len(data.groups), data.num_classes, run, holder, data.class_sets, resume=resume, stop_flag=stop
        )
        run_simulation(
            server_app,
            make_client_app(cfg),
            num_supernodes=len(data.groups),
            backend_name="ray",
            backend_config=backend,
        )
    if "error" in holder:
        err = holder["error"]
        raise err if isinstance(err, FedAnchorsError) else FedAnchorsError(f"federated run failed: {err}")
    if "strategy" not in holder:
        raise FedAnchorsError("the Flower simulation ended before the server started; see the log above")
    summary = holder["strategy"].finish()
    run.write_summary(summary)
    return summary
