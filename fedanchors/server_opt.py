"""Server optimizers on the aggregated update of the shared parts (head, shared encoders).

A round's pseudo-gradient is Delta = avg_i(x_i) - x, the weighted average of the clients'
models minus the server's model (Reddi et al. 2021, "Adaptive Federated Optimization",
Alg. 2). Each optimizer moves x along it:

- ``sgd``: x += lr * Delta (``lr: 1`` is plain averaging, FedAvg; kept bit for bit);
- ``momentum`` (FedAvgM, Hsu et al. 2019): m = beta1 m + Delta; x += lr * m;
- ``adam`` (FedAdam): m = beta1 m + (1 - beta1) Delta, v = beta2 v + (1 - beta2) Delta^2;
- ``yogi`` (FedYogi): v = v - (1 - beta2) Delta^2 sign(v - Delta^2);
- ``adagrad`` (FedAdagrad): v = v + Delta^2;
  the three adaptive ones then take x += lr * m / (sqrt(v) + tau), with v starting at tau^2
  and no bias correction, as in the paper.

Only floating tensors move; integer buffers (batch-norm counters) take the average. The
state (m, v per tensor) is part of the server checkpoint, so a resumed run is exact.
"""

from __future__ import annotations

import torch

from fedanchors.registry import Registry

SERVER_OPTIMIZERS: Registry = Registry("server optimizer")

State = dict[str, torch.Tensor]


class ServerOptimizer:
    """Base: ``step(current, averaged)`` returns the new model; state per tensor name."""

    def __init__(self, lr: float, beta1: float, beta2: float, tau: float) -> None:
        self.lr, self.beta1, self.beta2, self.tau = lr, beta1, beta2, tau
        self.m: State = {}
        self.v: State = {}

    def step(self, current: State, averaged: State) -> State:
        """The new values of every tensor of ``current`` given the clients' ``averaged`` ones."""
        out = {}
        for k, x in current.items():
            avg = averaged[k]
            if not x.is_floating_point():
                out[k] = avg
                continue
            delta = avg.double() - x.double()
            out[k] = (x.double() + self.direction(k, delta)).to(x.dtype)
        return out

    def direction(self, key: str, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"m": dict(self.m), "v": dict(self.v)}

    def load_state_dict(self, state: dict) -> None:
        self.m, self.v = dict(state["m"]), dict(state["v"])


@SERVER_OPTIMIZERS.register("sgd")
class ServerSGD(ServerOptimizer):
    """x += lr * Delta; with lr 1 the new model is the average itself (FedAvg), bit for bit."""

    def step(self, current: State, averaged: State) -> State:
        if self.lr == 1.0:
            return {k: averaged[k] for k in current}
        return super().step(current, averaged)

    def direction(self, key, delta):
        return self.lr * delta


@SERVER_OPTIMIZERS.register("momentum")
class ServerMomentum(ServerOptimizer):
    """FedAvgM: m = beta1 m + Delta; x += lr * m."""

    def direction(self, key, delta):
        m = self.m.get(key)
        self.m[key] = delta if m is None else self.beta1 * m + delta
        return self.lr * self.m[key]


class _Adaptive(ServerOptimizer):
    """FedAdam / FedYogi / FedAdagrad: x += lr * m / (sqrt(v) + tau)."""

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def direction(self, key, delta):
        m = self.m.get(key, torch.zeros_like(delta))
        v = self.v.get(key, torch.full_like(delta, self.tau**2))
        self.m[key] = self.beta1 * m + (1 - self.beta1) * delta
        self.v[key] = self.second_moment(v, delta * delta)
        return self.lr * self.m[key] / (self.v[key].sqrt() + self.tau)


@SERVER_OPTIMIZERS.register("adam")
class ServerAdam(_Adaptive):
    def second_moment(self, v, d2):
        return self.beta2 * v + (1 - self.beta2) * d2


@SERVER_OPTIMIZERS.register("yogi")
class ServerYogi(_Adaptive):
    def second_moment(self, v, d2):
        return v - (1 - self.beta2) * d2 * torch.sign(v - d2)


@SERVER_OPTIMIZERS.register("adagrad")
class ServerAdagrad(_Adaptive):
    def second_moment(self, v, d2):
        return v + d2


def build_server_optimizer(name: str, lr: float, beta1: float, beta2: float, tau: float) -> ServerOptimizer:
    return SERVER_OPTIMIZERS.get(name, "federated.server_opt")(lr, beta1, beta2, tau)
