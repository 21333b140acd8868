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


def test_adjustment_raises_small_groups_losses_in_the_q_step():
    """Sagawa et al.'s adjustment: the q step reads L_g + C / sqrt(n_g)."""
    m = build_method(MethodConfig(name="groupdro", eta=ETA, adjustment=2.0), ["a", "b", "c"])
    m.q, m.sizes = Q.clone(), torch.tensor([100, 25, 4])
    m.step(L, 0)
    adj = [1.0 + 2.0 / 10, 2.0 + 2.0 / 5, 0.5 + 2.0 / 2]
    raw = [q * math.exp(ETA * a) for q, a in zip([0.5, 0.3, 0.2], adj)]
    assert m.q.tolist() == pytest.approx([r / sum(raw) for r in raw], rel=1e-12)


def test_adjustment_config_checks():
    from fedanchors.config import Config, to_dict
    from fedanchors.configure import from_dict as load

    raw = to_dict(Config())
    raw["method"].update(name="fgdro_kl", adjustment=1.0)
    with pytest.raises(ConfigError, match="method.adjustment"):
        load(raw)
    raw["method"].update(name="afl", adjustment=0.0, mix=0.5)
    with pytest.raises(ConfigError, match="method.mix"):
        load(raw)
    # under erm GroupDRO's knobs are inert, as eta is: `--set method.name=erm` on a GroupDRO config
    raw["method"].update(name="erm", adjustment=1.0, mix=0.5, eta_unit="epoch")
    assert load(raw).method.name == "erm"
    raw["method"].update(name="afl", adjustment=0.0, mix=0.0, eta_unit="epoch")
    with pytest.raises(ConfigError, match="method.eta_unit"):
        load(raw)
    raw["method"].update(name="groupdro", encoder_weighting="both", eta_unit="update")
    with pytest.raises(ConfigError, match="method.encoder_weighting"):
        load(raw)


def test_own_rates_give_each_encoder_its_holders_renormalised_loss():
    """encoder_weighting own: after backward of sum_g w_g L_g, encoder A (held by groups 0 and 1)
    has the gradient of (w_0 L_0 + w_1 L_1) / (w_0 + w_1), private encoder B that of L_2; the
    head keeps sum_g w_g grad L_g."""
    from fedanchors.train import own_rates

    torch.manual_seed(0)
    enc = {"A": torch.nn.Linear(3, 2), "B": torch.nn.Linear(3, 2)}
    head = torch.nn.Linear(2, 1)
    x = [torch.randn(4, 3) for _ in range(3)]
    spaces, w = ["A", "A", "B"], [0.1, 0.3, 0.6]

    def losses():
        return [head(enc[s](xi)).pow(2).mean() for s, xi in zip(spaces, x)]

    def grads(loss):
        for m in [*enc.values(), head]:
            m.zero_grad()
        loss.backward()
        return {n: m.weight.grad.clone() for n, m in [*enc.items(), ("head", head)] if m.weight.grad is not None}

    ls = losses()
    want_a = grads((0.1 * ls[0] + 0.3 * ls[1]) / 0.4)["A"]
    want_b = grads(losses()[2])["B"]
    want_head = grads(sum(wi * li for wi, li in zip(w, losses())))["head"]
    for m in [*enc.values(), head]:
        m.zero_grad()
    sum(wi * li for wi, li in zip(w, losses())).backward()
    assert torch.allclose(enc["B"].weight.grad, 0.6 * want_b, atol=1e-6)  # q-weighted before
    own_rates(enc, spaces, w)
    assert torch.allclose(enc["A"].weight.grad, want_a, atol=1e-6)
    assert torch.allclose(enc["B"].weight.grad, want_b, atol=1e-6)
    assert torch.allclose(head.weight.grad, want_head, atol=1e-6)


def test_mix_keeps_erms_share():
    """method.mix a: weights (1 - a) q + a n_g / N over the present groups; a = 1 is ERM."""
    counts = torch.tensor([6, 3, 1])
    m = build_method(MethodConfig(name="groupdro", mix=0.25), ["a", "b", "c"])
    m.q = Q.clone()
    want = [0.75 * q + 0.25 * n / 10 for q, n in zip([0.5, 0.3, 0.2], [6, 3, 1])]
    assert m.weights(counts, L, 0).tolist() == pytest.approx(want, rel=1e-12)
    erm = build_method(MethodConfig(name="groupdro", mix=1.0), ["a", "b", "c"])
    erm.q = Q.clone()
    assert erm.weights(counts, L, 0).tolist() == pytest.approx([0.6, 0.3, 0.1], rel=1e-12)


def test_fixed_methods_log_their_own_weights_as_q():
    """q:<g> is the weight a method gives: ERM's examples share, balanced's normalised lambdas."""
    erm = build_method(MethodConfig(name="erm"), ["a", "b"])
    erm.sizes = torch.tensor([80, 20])
    erm.step(torch.tensor([1.0, 2.0]), 0)
    assert erm.q.tolist() == pytest.approx([0.8, 0.2])
    bal = build_method(MethodConfig(name="balanced", lambdas={"a": 1.0, "b": 3.0}), ["a", "b"])
    assert bal.q.tolist() == pytest.approx([0.25, 0.75])
