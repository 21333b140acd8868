"""GroupDRO updates, objectives and method weights against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fedanchors import groupdro
from fedanchors.config import MethodConfig
from fedanchors.errors import ConfigError
from fedanchors.methods import METHODS, build_method

Q = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
L = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
ETA = 0.5


def exp_update_by_hand():
    raw = [0.5 * math.exp(0.5 * 1.0), 0.3 * math.exp(0.5 * 2.0), 0.2 * math.exp(0.5 * 0.5)]
    return [r / sum(raw) for r in raw]


def test_update_exp():
    got = groupdro.update_q(Q, L, ETA, "exp")
    assert got.tolist() == pytest.approx(exp_update_by_hand(), rel=1e-12)


def test_update_softmax():
    raw = [math.exp(0.5), math.exp(1.0), math.exp(0.25)]
    got = groupdro.update_q(Q, L, ETA, "softmax")
    assert got.tolist() == pytest.approx([r / sum(raw) for r in raw], rel=1e-12)


def test_update_exp_smooth():
    e = exp_update_by_hand()
    want = [0.9 * q + 0.1 * ei for q, ei in zip([0.5, 0.3, 0.2], e)]
    assert groupdro.update_q(Q, L, ETA, "exp_smooth", gamma=0.9).tolist() == pytest.approx(want, rel=1e-12)


def test_missing_group_keeps_its_q():
    losses = torch.tensor([1.0, float("nan"), 0.5], dtype=torch.float64)
    got = groupdro.update_q(Q, losses, ETA, "exp")
    assert got[1].item() == 0.3
    a, c = 0.5 * math.exp(0.5), 0.2 * math.exp(0.25)
    assert got[0].item() == pytest.approx(0.7 * a / (a + c)) and got.sum().item() == pytest.approx(1.0)


def test_objective_weights():
    assert groupdro.objective_weights(Q, L, "weighted", ETA).tolist() == pytest.approx([0.5, 0.3, 0.2])
    assert groupdro.objective_weights(Q, L, "max", ETA).tolist() == [0.0, 1.0, 0.0]
    raw = [math.exp(0.5), math.exp(1.0), math.exp(0.25)]
    lse = groupdro.objective_weights(Q, L, "logsumexp", ETA)
    assert lse.tolist() == pytest.approx([r / sum(raw) for r in raw])
    assert groupdro.objective_weights(Q, None, "max", ETA).tolist() == pytest.approx([0.5, 0.3, 0.2])


def test_objective_values():
    assert groupdro.objective_value(L, Q, "weighted", ETA).item() == pytest.approx(0.5 + 0.6 + 0.1)
    assert groupdro.objective_value(L, Q, "max", ETA).item() == 2.0
    want = math.log((math.exp(0.5) + math.exp(1.0) + math.exp(0.25)) / 3) / 0.5
    assert groupdro.objective_value(L, Q, "logsumexp", ETA).item() == pytest.approx(want)


def test_logsumexp_gradient_is_its_weights():
    losses = L.clone().requires_grad_(True)
    groupdro.objective_value(losses, Q, "logsumexp", ETA).backward()
    assert losses.grad.tolist() == pytest.approx(groupdro.objective_weights(Q, L, "logsumexp", ETA).tolist())


COUNTS = torch.tensor([60, 30, 10])


@pytest.mark.parametrize(
    "name, extra, want",
    [
        ("erm", {}, [0.6, 0.3, 0.1]),
        ("iw", {}, [1 / 3, 1 / 3, 1 / 3]),
        ("balanced", {"lambdas": {"a": 1.0, "b": 3.0}}, [0.2, 0.6, 0.2]),  # c defaults to 1
        ("groupdro", {}, [1 / 3, 1 / 3, 1 / 3]),  # q starts uniform
    ],
)
def test_method_weights(name, extra, want):
    m = build_method(MethodConfig(name=name, **extra), ["a", "b", "c"])
    assert m.weights(COUNTS, L, 0).tolist() == pytest.approx(want)


def test_absent_group_gets_no_weight():
    m = build_method(MethodConfig(name="iw"), ["a", "b", "c"])
    assert m.weights(torch.tensor([5, 0, 5]), None, 0).tolist() == pytest.approx([0.5, 0.0, 0.5])


def test_groupdro_step_and_warmup():
    m = build_method(MethodConfig(name="groupdro", eta=ETA, warmup=1), ["a", "b", "c"])
    m.q = Q.clone()
    assert m.weights(COUNTS, L, 0).tolist() == pytest.approx([1 / 3] * 3)  # warm-up: uniform
    m.step(L, 0)
    assert m.q.tolist() == pytest.approx([0.5, 0.3, 0.2])  # no update during warm-up
    m.step(L, 1)
    assert m.q.tolist() == pytest.approx(exp_update_by_hand())
    assert m.weights(COUNTS, L, 1).tolist() == pytest.approx(exp_update_by_hand())


def test_balanced_rejects_unknown_group():
    with pytest.raises(ConfigError, match="unknown group"):
        build_method(MethodConfig(name="balanced", lambdas={"zz": 1.0}), ["a", "b"])


def test_every_method_registered():
    assert METHODS.names() == ["afl", "balanced", "drfa", "erm", "fgdro_cvar", "fgdro_kl", "groupdro", "iw", "qffl"]
