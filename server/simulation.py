"""Run a federated config on Flower's simulation engine with the Ray backend."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import threading
import warnings

import torch

from fedanchors.config import Config
from fedanchors.data import ScenarioData
from fedanchors.errors import ConfigError, FedAnchorsError
from fedanchors.fileio import as_write_error
from fedanchors.population import population_size
from fedanchors.resume import StopFlag
from fedanchors.rundir import RunDir
from server import reaper


@contextlib.contextmanager
def _actor_pool_cap(clients: int):
    """Flower sizes its Ray actor pool by the CPUs alone (4 actors for 2 clients at
    ``num_cpus: 0.5``, 2,000 at 0.001); no more actors than clients can ever be busy, so
    cap the pool at the number of clients while the simulation runs."""
    from flwr.simulation.ray_transport import ray_actor

    original = ray_actor.pool_size_from_resources

    def capped(client_resources):
        return min(original(client_resources), clients)

    ray_actor.pool_size_from_resources = capped
    # Flower ends its actors with a ``terminate`` task; with ``max_task_retries`` (restarts
    # after a crash) Ray retries that task and prints a warning per actor: kill them instead
    original_end = ray_actor.BasicActorPool.terminate_all_actors

    def kill_all(pool) -> None:
        import ray

        for actor in pool.pool:
            ray.kill(actor, no_restart=True)

    ray_actor.BasicActorPool.terminate_all_actors = kill_all
    # ``ray.init`` replaces the SIGTERM handler with ``sys.exit(15)``: keep fedanchors' own
    # (resume.StopFlag: stop after the round's checkpoint, exit 143), installed before it
    import ray._private.utils as ray_utils

    original_sigterm = ray_utils.set_sigterm_handler
    ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        ray_actor.pool_size_from_resources = original
        ray_actor.BasicActorPool.terminate_all_actors = original_end
        ray_utils.set_sigterm_handler = original_sigterm


def check_ray_init(ray_init: dict) -> None:
    """``federated.ray_init`` keys must be ``ray.init`` keywords (checked before Ray starts)."""
    if not ray_init:  # nothing to check: Ray is not imported (0.3 s) for it
        return
    import inspect

    import ray

    params = inspect.signature(ray.init).parameters
    valid = sorted(n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD)
    for key in ray_init:
        if key not in params or params[key].kind is inspect.Parameter.VAR_KEYWORD:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (valid: {', '.join(valid)})"
            raise ConfigError(f"federated.ray_init.{key}: not a ray.init keyword{hint}")


def check_resources(cfg: Config) -> None:
    """Reject resource requests Ray cannot satisfy, before Ray starts."""
    f = cfg.federated
    check_ray_init(f.ray_init)
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
    # see fedanchors.simulate.main (effective only before ray is first imported)
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def run_federated(cfg: Config, data: ScenarioData, run: RunDir, resume: bool = False) -> dict:
    """One Flower client per client of each group, ``federated.rounds`` rounds; the summary.

    Every round ends with ``checkpoints/server_resume.pt`` (clients keep theirs under
    ``<run>/clients``); ``resume=True`` continues after the last one. Ctrl-C stops after
    the current round's checkpoint.
    """
    _quiet()  # before flwr is imported (so the apps are imported here, not at the top)
    from clients.client_app import make_client_app
    from server.server_app import make_server_app

    f = cfg.federated
    n = population_size(cfg.federated, data, cfg.seed)
    holder: dict = {"abort": threading.Event()}
    with StopFlag() as stop:
        client_app = make_client_app(cfg, str(run.path.resolve() / "clients"))
        if f.engine == "inprocess":  # the same driver and ClientApp, messages in memory (server.memory)
            return _inprocess(cfg, client_app, n, data, run, resume, stop)
        server_app = make_server_app(
            cfg, n, data.num_classes, run, holder, data.class_sets, resume=resume, stop_flag=stop
        )
        return simulate_apps(server_app, client_app, n, holder, f.num_cpus, f.num_gpus, f.ray_init, f.actor_restarts)


def _inprocess(cfg: Config, client_app, n: int, data: ScenarioData, run: RunDir, resume: bool, stop) -> dict:
    from clients.node import scenario
    from server.memory import run_inprocess

    scenario(cfg, data)  # the clients share the driver's process: the data read once, not twice
    try:
        return run_inprocess(cfg, client_app, n, data.num_classes, run, data.class_sets, resume, stop)
    except FedAnchorsError:
        raise
    except Exception as e:  # as the Ray engine reports it: a refused write names its file
        err = as_write_error(e)
        raise err if err is not None else FedAnchorsError(f"federated run failed: {e}") from None


def simulate_apps(
    server_app, client_app, n: int, holder: dict, num_cpus: float, num_gpus: float, ray_init: dict, restarts: int
) -> dict:
    """Run a ServerApp and a ClientApp with ``n`` SuperNodes on Flower's Ray backend; the
    ServerApp leaves its result in ``holder["summary"]`` (or its error in ``holder["error"]``)
    and watches ``holder["abort"]`` (set here when the engine stops)."""
    _quiet()
    from flwr.simulation import run_simulation

    init_args = {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False, **ray_init}
    resources = {
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        # a Ray worker that dies (OOM killer, kill -9) is restarted and its task retried: the
        # client answers in the same round from the same state file, so the run stays exact
        "max_restarts": restarts,
        "max_task_retries": restarts,
    }
    backend = {"client_resources": resources, "init_args": init_args}
    reaper.start()  # Ray's helper processes end with this process, even after kill -9
    with _actor_pool_cap(n):
        try:
            run_simulation(server_app, client_app, num_supernodes=n, backend_name="ray", backend_config=backend)
        except Exception as e:  # the engine failed: the finally below releases the ServerApp thread
            cause = e.__cause__.__cause__ if e.__cause__ and e.__cause__.__cause__ else (e.__cause__ or e)
            reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            holder.setdefault("error", FedAnchorsError(f"the Flower simulation engine failed: {reason}"))
        finally:
            holder["abort"].set()
    if "error" in holder:
        err = holder["error"]
        err = as_write_error(err) or err  # a refused write in the ServerApp: the one line naming the file
        raise err if isinstance(err, FedAnchorsError) else FedAnchorsError(f"federated run failed: {err}")
    if "summary" not in holder:
        raise FedAnchorsError("the Flower simulation ended before the server finished; see the log above")
    return holder["summary"]
