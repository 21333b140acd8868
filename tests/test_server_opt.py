"""Issue 17: server optimizers against Reddi et al.'s formulas on mock replies, FedProx's gradient,
and plain averaging kept bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from fedanchors.config import OptimConfig
from fedanchors.server_opt import build_server_optimizer
from fedanchors.train import add_prox_grad
from server.strategy import FedAnchors

from .conftest import small_config
from .flower_harness import InProcessGrid
from .test_strategy import mock_replies

B1, B2, TAU, LR = 0.9, 0.99, 1e-3, 0.5


def _expected(name: str, x: float, deltas: list[float]) -> float:
    """x after one server step per delta, by the papers' formulas, in plain Python floats."""
    m, v = 0.0, TAU**2
    for d in deltas:
        if name == "sgd":
            x += LR * d
            continue
        if name == "momentum":  # FedAvgM
            m = B1 * m + d
            x += LR * m
            continue
        m = B1 * m + (1 - B1) * d
        if name == "adam":
            v = B2 * v + (1 - B2) * d * d
        elif name == "yogi":
            v = v - (1 - B2) * d * d * math.copysign(1.0, v - d * d) if v != d * d else v
        elif name == "adagrad":
            v = v + d * d
        x += LR * m / (math.sqrt(v) + TAU)
    return x


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "yogi", "adagrad"])
def test_server_optimizer_matches_the_formulas_on_mock_replies(tmp_path, name):
    cfg = small_config(
        tmp_path,
        method={"name": "iw"},  # uniform weights: the average of 1 and 3 (then 2 and 6) is known
        anchors={"lambda_sep": 0.0, "lambda_fit": 0.0},
        federated={"server_opt": name, "server_lr": LR, "server_beta1": B1, "server_beta2": B2, "server_tau": TAU},
    )
    strategy = FedAnchors(cfg, 2, 10)
    grid = InProcessGrid(cfg, 2)
    strategy.discover(grid)
    template = {k: v.clone() for k, v in strategy.head.state_dict().items()}
    x0 = {k: v.double() for k, v in template.items()}
    deltas = []
    for rnd, (a, b) in enumerate([(1.0, 3.0), (2.0, 6.0), (-1.0, 0.5)], start=1):
        msgs = strategy.configure_train(rnd)
        heads = [
            {k: torch.full_like(v, a) for k, v in template.items()},
            {k: torch.full_like(v, b) for k, v in template.items()},
        ]
        before = {k: v.double() for k, v in strategy.head.state_dict().items()}
        strategy.aggregate_train(rnd, mock_replies(strategy, msgs, heads, [1.0, 1.0]))
        deltas.append({k: (a + b) / 2 - before[k] for k in before})
    for k, v in strategy.head.state_dict().items():
        flat0, got = x0[k].flatten(), v.double().flatten()
        for i in range(0, flat0.numel(), max(1, flat0.numel() // 7)):  # a sample of entries
            want = _expected(name, float(flat0[i]), [float(d[k].flatten()[i]) for d in deltas])
            assert float(got[i]) == pytest.approx(want, rel=1e-5, abs=1e-6), (k, i)


def test_sgd_with_lr_one_is_todays_averaging_bit_for_bit(tmp_path):
    base = {"anchors": {"lambda_sep": 0.0}, "method": {"name": "erm"}}
    results = []
    for fed in ({}, {"server_opt": "sgd", "server_lr": 1.0}):
        cfg = small_config(tmp_path, **base, federated=fed)
        strategy = FedAnchors(cfg, 2, 10)
        grid = InProcessGrid(cfg, 2)
        strategy.discover(grid)
        msgs = strategy.configure_train(1)
        t = strategy.head.state_dict()
        heads = [
            {k: torch.randn_like(v, generator=torch.Generator().manual_seed(i)) for k, v in t.items()} for i in (1, 2)
        ]
        strategy.aggregate_train(1, mock_replies(strategy, msgs, heads, [1.0, 2.0]))
        from fedanchors.aggregate import weighted_average

        w = [float(x) for x in strategy.weights]
        want = weighted_average(heads, w)  # today's aggregation, by definition
        for k, v in strategy.head.state_dict().items():
            assert torch.equal(v, want[k])
        results.append(strategy.head.state_dict())
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k])


def test_fedprox_gradient_is_mu_times_the_distance():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    ref = [p.detach().clone() + torch.randn_like(p) for p in lin.parameters()]
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(lin(x), y).backward()
    ce_grads = [p.grad.clone() for p in lin.parameters()]
    mu = 0.37
    add_prox_grad(list(zip(lin.parameters(), ref)), mu)
    for p, r, g in zip(lin.parameters(), ref, ce_grads):
        assert torch.allclose(p.grad, g + mu * (p.detach() - r), atol=1e-7)
    # and it is the gradient of mu/2 ||w - w_ref||^2 by autograd
    lin.zero_grad()
    (mu / 2 * sum(((p - r) ** 2).sum() for p, r in zip(lin.parameters(), ref))).backward()
    for p, r in zip(lin.parameters(), ref):
        assert torch.allclose(p.grad, mu * (p.detach() - r), atol=1e-7)


def test_fedprox_in_local_training_moves_toward_the_reference(tmp_path):
    from fedanchors.data import build_scenario
    from fedanchors.models import build_anchors, build_encoder, build_head
    from fedanchors.train import LocalWork, local_train, make_optimizer

    cfg = small_config(tmp_path, optim={"name": "sgd", "lr": 0.1, "weight_decay": 0.0, "grad_clip": 0.0})
    g = build_scenario(cfg.data).groups[0]
    outs = []
    for mu in (0.0, 2.0):
        enc = build_encoder(cfg.model, g.space, g.shape, 0, g.meta)
        head = build_head(cfg.model, 10, 0)
        anchors = build_anchors(cfg.model.latent_dim, 10, 1e-4, 1.0, 0)
        ref = [(p, torch.zeros_like(p)) for p in head.parameters()]  # a global head at 0
        opt = make_optimizer(list(enc.parameters()) + list(head.parameters()), cfg.optim)
        w0 = [p.detach().clone() for p in head.parameters()]
        work = LocalWork(1, cfg.optim, cfg.anchors, prox_mu=mu, prox_ref=tuple(ref))
        local_train(enc, head, anchors, g.train, opt, work, torch.Generator().manual_seed(0), torch.device("cpu"))
        outs.append([p.detach().clone() for p in head.parameters()])
    # one SGD step: the prox run differs by exactly -lr * mu * (w0 - 0)
    for a, b, w in zip(outs[0], outs[1], w0):
        assert torch.allclose(b - a, -0.1 * 2.0 * w, atol=1e-6)


def test_unknown_server_optimizer_is_a_config_error():
    from fedanchors.configure import load_config
    from fedanchors.errors import ConfigError

    with pytest.raises(ConfigError, match="federated.server_opt: unknown server optimizer 'adamw'"):
        load_config(None, ["federated.server_opt=adamw"])
    with pytest.raises(ConfigError, match="server_beta1"):
        load_config(None, ["federated.server_beta1=1.0"])
    assert build_server_optimizer("adam", 1.0, 0.9, 0.99, 1e-3).tau == 1e-3
    assert OptimConfig().name == "adam"


def test_group_loss_first_is_the_loss_at_the_starting_model(tmp_path):
    import torch.nn.functional as F

    from fedanchors.data import build_scenario
    from fedanchors.models import build_anchors, build_encoder, build_head
    from fedanchors.train import LocalWork, batches, local_train, make_optimizer

    cfg = small_config(tmp_path, optim={"name": "sgd", "lr": 0.5, "batch_size": 32})
    g = build_scenario(cfg.data).groups[0]
    enc, head = build_encoder(cfg.model, g.space, g.shape, 0, g.meta), build_head(cfg.model, 10, 0)
    first_batch = batches(len(g.train), 32, torch.Generator().manual_seed(3))[0]
    with torch.no_grad():
        want = float(F.cross_entropy(head(enc(g.train.x[first_batch])), g.train.y[first_batch]))
    opt = make_optimizer(list(enc.parameters()) + list(head.parameters()), cfg.optim)
    anchors = build_anchors(cfg.model.latent_dim, 10, 1e-4, 1.0, 0)
    work = LocalWork(6, cfg.optim, cfg.anchors)
    res = local_train(enc, head, anchors, g.train, opt, work, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert res["loss_first"] == pytest.approx(want, rel=1e-6)
    assert res["loss"] != pytest.approx(want, rel=1e-3)  # six steps at lr 0.5 move the mean away
