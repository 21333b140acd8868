"""The robust federated objectives' group weights against their papers' formulas, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fedanchors.config import MethodConfig
from fedanchors.errors import ConfigError
from fedanchors.methods import build_method
from fedanchors.methods.robust import project_lambda, project_simplex

GROUPS = ["a", "b", "c"]
COUNTS = torch.tensor([60, 30, 10])


def method(name: str, **kw):
    return build_method(MethodConfig(name=name, **kw), GROUPS)


def test_simplex_projection_is_the_closest_feasible_point():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        v = torch.randn(5, generator=gen, dtype=torch.float64) * 2
        floor = torch.rand(5, generator=gen, dtype=torch.float64) * 0.15
        p = project_lambda(v, floor)
        assert float(p.sum()) == pytest.approx(1.0) and bool((p >= floor - 1e-12).all())
        # optimality: (v - p) . (x - p) <= 0 for every feasible x (a convex set's projection)
        for _ in range(20):
            x = floor + torch.distributions.Dirichlet(torch.ones(5, dtype=torch.float64)).sample() * (1 - floor.sum())
            assert float((v - p) @ (x - p)) <= 1e-9
    assert project_simplex(torch.tensor([0.6, 0.8], dtype=torch.float64)).tolist() == pytest.approx([0.4, 0.6])
    inside = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    assert project_simplex(inside).tolist() == pytest.approx(inside.tolist())  # a point of the set stays


def test_afl_ascends_on_the_losses_and_stays_in_lambda():
    m = build_method(MethodConfig(name="afl", eta=0.1), ["a", "b"])
    assert m.weights(torch.tensor([5, 5]), None, 0).tolist() == pytest.approx([0.5, 0.5])
    m.step(torch.tensor([1.0, 3.0]), 0)  # (0.5, 0.5) + 0.1 (1, 3) = (0.6, 0.8) -> minus 0.2 each
    assert m.q.tolist() == pytest.approx([0.4, 0.6], abs=1e-12)
    f = build_method(MethodConfig(name="afl", eta=0.1, floor={"a": 0.45}), ["a", "b"])
    f.step(torch.tensor([1.0, 3.0]), 0)  # (0.6, 0.8) - floor = (0.15, 0.8) -> onto 0.55 simplex: (0, 0.55)
    assert f.q.tolist() == pytest.approx([0.45, 0.55], abs=1e-12)
    for _ in range(50):  # a group that keeps losing more takes all the mass Lambda allows
        f.step(torch.tensor([0.1, 5.0]), 0)
    assert f.q.tolist() == pytest.approx([0.45, 0.55], abs=1e-12)


def test_cvar_is_the_mean_at_k_groups_and_the_max_at_one():
    losses = torch.tensor([0.3, 1.2, 0.7], dtype=torch.float64)
    assert method("fgdro_cvar", top_k=3).weights(COUNTS, losses, 0).tolist() == pytest.approx([1 / 3] * 3)
    assert method("fgdro_cvar", top_k=1).weights(COUNTS, losses, 0).tolist() == [0.0, 1.0, 0.0]
    assert method("fgdro_cvar", top_k=2).weights(COUNTS, losses, 0).tolist() == [0.0, 0.5, 0.5]


def test_kl_is_uniform_at_a_large_temperature_and_the_max_at_a_small_one():
    losses = torch.tensor([0.3, 1.2, 0.7], dtype=torch.float64)
    for temperature, want in ((1e6, [1 / 3] * 3), (1e-3, [0.0, 1.0, 0.0])):
        m = method("fgdro_kl", temperature=temperature, gamma=0.5)
        assert m.weights(COUNTS, None, 0).tolist() == pytest.approx([1 / 3] * 3)  # no estimate yet
        m.step(losses, 0)
        assert m.weights(COUNTS, losses, 0).tolist() == pytest.approx(want, abs=1e-6)
    m = method("fgdro_kl", temperature=0.5, gamma=0.5)
    m.step(losses, 0)
    m.step(torch.tensor([0.5, float("nan"), 0.1], dtype=torch.float64), 1)  # b absent: keeps its average
    u = torch.tensor([0.5 * 0.3 + 0.5 * 0.5, 1.2, 0.5 * 0.7 + 0.5 * 0.1], dtype=torch.float64)
    assert torch.allclose(m.u, u)
    assert m.weights(COUNTS, None, 2).tolist() == pytest.approx(torch.softmax(u / 0.5, 0).tolist())


def test_qffl_weights_follow_p_times_loss_to_the_q_and_q0_is_erm():
    losses = torch.tensor([0.3, 1.2, 0.7], dtype=torch.float64)
    p = COUNTS.double() / COUNTS.sum()
    erm = build_method(MethodConfig(name="erm"), GROUPS).weights(COUNTS, losses, 0)
    assert method("qffl", q_fair=0.0).weights(COUNTS, losses, 0).tolist() == pytest.approx(erm.tolist())
    want = p * losses**2 / (p * losses**2).sum()
    assert method("qffl", q_fair=2.0).weights(COUNTS, losses, 0).tolist() == pytest.approx(want.tolist())
    assert math.isclose(float(method("qffl", q_fair=2.0).weights(COUNTS, None, 0).sum()), 1.0)


@pytest.mark.parametrize(
    "name,kw,needle",
    [
        ("afl", {"floor": {"a": 0.7, "b": 0.5}}, "method.floor"),
        ("afl", {"floor": {"a": -0.1}}, "method.floor"),
        ("afl", {"floor": {"zz": 0.1}}, "unknown group"),
        ("fgdro_cvar", {"top_k": 0}, "method.top_k must be in 1..3"),
        ("fgdro_cvar", {"top_k": 4}, "method.top_k must be in 1..3"),
        ("qffl", {"q_fair": -1.0}, "method.q_fair"),
        ("fgdro_kl", {"temperature": 0.0}, "method.temperature"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(name, kw, needle):
    with pytest.raises(ConfigError, match=needle):
        method(name, **kw)


def test_a_bad_setting_stops_the_cli_before_any_run_directory(tmp_path):
    from .test_config import assert_one_line_error, cli

    res = cli("--set", "method.name=fgdro_cvar", "--set", "method.top_k=9", "--set", f"out_dir={tmp_path}")
    assert_one_line_error(res, "method.top_k must be in 1..2")
    assert not any(tmp_path.iterdir())
