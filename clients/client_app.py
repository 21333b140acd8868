"""The Flower ClientApp: a thin layer routing messages to ``clients.task``.

``make_client_app(cfg, state_dir)`` is used by ``python -m fedanchors.simulate``; the
module-level ``app`` serves ``flwr run`` and reads the config from the run config, once
per process. Where a client keeps its private state (``clients.task.ClientState``): the
node's own ``state-dir`` (``flower-supernode --node-config``), else the factory's
``state_dir``, else ``<run-dir>/clients`` from the run config, else Flower's context.state.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import task
from fedanchors.config import Config
from fedanchors.configure import from_run_config
from fedanchors.plugins import load_plugins

_CONFIGS: dict[tuple[str, str], Config] = {}  # per process: the run config's Config, resolved once


def _run_config(context: Context) -> Config:
    key = (str(context.run_config.get("config", "")), str(context.run_config.get("overrides", "")))
    if key not in _CONFIGS:
        _CONFIGS[key] = from_run_config(context.run_config)
    return _CONFIGS[key]


def state_location(context: Context, state_dir: str | None) -> str:
    """This node's state directory ('' for context.state)."""
    node = str(context.node_config.get("state-dir", "") or "")
    if node:
        return node
    if state_dir:
        return state_dir
    run_dir = str(context.run_config.get("run-dir", "") or "")
    return str(Path(run_dir) / "clients") if run_dir else ""


def make_client_app(cfg: Config | None = None, state_dir: str | None = None) -> ClientApp:
    """A ClientApp bound to ``cfg`` (None: read ``config``/``overrides`` from the run config)."""
    app = ClientApp()

    def bind(context: Context) -> tuple[Config, str]:
        load_plugins()  # a Ray worker or a SuperNode: the user's plugins register here too
        return (cfg if cfg is not None else _run_config(context)), state_location(context, state_dir)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return task.train(msg, context, *bind(context))

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return task.evaluate(msg, context, *bind(context))

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return task.query(msg, context, bind(context)[0])

    return app


app = make_client_app()
