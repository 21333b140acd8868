"""The Flower ClientApp: a thin layer routing messages to ``clients.task``.

``make_client_app(cfg)`` is used by ``python -m fedanchors.simulate``; the module-level
``app`` serves ``flwr run .`` and reads the config path from the run config.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import task
from fedanchors.config import Config, from_run_config


def make_client_app(cfg: Config | None = None) -> ClientApp:
    """A ClientApp bound to ``cfg`` (None: read ``config``/``overrides`` from the run config)."""
    app = ClientApp()

    def resolve(context: Context) -> Config:
        if cfg is not None:
            return cfg
        return from_run_config(context.run_config)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return task.train(msg, context, resolve(context))

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return task.evaluate(msg, context, resolve(context))

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return task.query(msg, context, resolve(context))

    return app


app = make_client_app()
