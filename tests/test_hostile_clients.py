"""Issue 25: untrusted client replies, robust aggregation rules, the update-norm bound.

A client is someone else's machine. Each check here fails on the code before the change:
one NaN reply stopped the whole run as "training diverged", and a huge finite update was
averaged in at full weight.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from fedanchors.aggregate import AGGREGATIONS, AggregationOptions, clip_update, krum_scores
from fedanchors.reply_checks import evaluation_problem, scalar_problem, state_problem, stats_problem

from .conftest import small_config
from .flower_harness import InProcessGrid, run_rounds, train_rounds

OPTS = AggregationOptions(trim_fraction=0.2, byzantine=1)


def _states(rows: list[list[float]]) -> list[dict[str, torch.Tensor]]:
    """One state per row: tensor ``a`` is the first two numbers, ``b`` the rest."""
    return [
        {"a": torch.tensor(r[:2], dtype=torch.float64), "b": torch.tensor(r[2:], dtype=torch.float64)} for r in rows
    ]


ROWS = [[1.0, -2.0, 0.5], [3.0, 0.0, 0.25], [-1.0, 5.0, 1e6], [2.0, 1.0, 0.0], [0.0, 4.0, -3.0]]


# -- aggregation rules against their formulas --------------------------------------------------


def test_mean_is_fedavgs_weighted_mean():
    w = [1.0, 2.0, 0.5, 0.5, 1.0]
    out = AGGREGATIONS.get("mean")(_states(ROWS), w, OPTS)
    expect = (np.array(ROWS) * np.array(w)[:, None]).sum(0) / sum(w)
    assert torch.allclose(torch.cat([out["a"], out["b"]]), torch.tensor(expect), atol=1e-9)


@pytest.mark.parametrize("n", [5, 4])
def test_median_is_the_coordinate_wise_median(n):
    rows = ROWS[:n]
    out = AGGREGATIONS.get("median")(_states(rows), [9.0] * n, OPTS)  # weights play no part
    assert torch.allclose(torch.cat([out["a"], out["b"]]), torch.tensor(np.median(np.array(rows), 0)), atol=1e-12)


def test_trimmed_mean_is_yins_beta_trimmed_mean():
    out = AGGREGATIONS.get("trimmed_mean")(_states(ROWS), [1.0] * 5, OPTS)
    expect = scipy_stats.trim_mean(np.array(ROWS), 0.2, axis=0)  # drops floor(0.2 * 5) = 1 per end
    assert torch.allclose(torch.cat([out["a"], out["b"]]), torch.tensor(expect), atol=1e-12)
    hand = np.sort(np.array(ROWS), 0)[1:4].mean(0)
    assert np.allclose(expect, hand)


def test_krum_picks_the_vector_closest_to_its_neighbours():
    vecs = torch.tensor(ROWS, dtype=torch.float64)
    d2 = ((vecs[:, None] - vecs[None]) ** 2).sum(-1)
    # f = 1, n = 5: each score sums the n - f - 2 = 2 smallest distances to the others
    hand = torch.stack([d2[i][torch.arange(5) != i].sort().values[:2].sum() for i in range(5)])
    assert torch.allclose(krum_scores(vecs, 1), hand)
    out = AGGREGATIONS.get("krum")(_states(ROWS), [1.0] * 5, OPTS)
    best = int(hand.argmin())
    assert best != 2  # the outlier is never chosen
    assert torch.equal(torch.cat([out["a"], out["b"]]), vecs[best])
    with pytest.raises(ValueError, match="at least 5"):
        AGGREGATIONS.get("krum")(_states(ROWS[:4]), [1.0] * 4, OPTS)


def test_clip_update_bounds_the_norm_of_the_update():
    ref = {"a": torch.zeros(2, dtype=torch.float64), "b": torch.ones(1, dtype=torch.float64)}
    state = {"a": torch.tensor([3.0, 0.0], dtype=torch.float64), "b": torch.tensor([5.0], dtype=torch.float64)}
    out, norm = clip_update(state, ref, 1.0)
    assert norm == pytest.approx(5.0)  # ||(3, 0, 4)||
    delta = torch.cat([out["a"] - ref["a"], out["b"] - ref["b"]])
    assert float(delta.norm()) == pytest.approx(1.0) and torch.allclose(delta, torch.tensor([0.6, 0.0, 0.8]).double())
    same, _ = clip_update(state, ref, 10.0)
    assert same is state  # inside the bound: untouched


# -- reply checks -------------------------------------------------------------------------------


def test_state_problem_names_shape_dtype_and_finiteness():
    ref = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    assert state_problem({"w": torch.ones(2, 3), "b": torch.ones(2)}, ref, "head") == ""
    assert "shape" in state_problem({"w": torch.ones(3, 2), "b": torch.ones(2)}, ref, "head")
    assert "dtype" in state_problem({"w": torch.ones(2, 3, dtype=torch.int64), "b": torch.ones(2)}, ref, "head")
    assert "non-finite" in state_problem({"w": torch.full((2, 3), math.inf), "b": torch.ones(2)}, ref, "head")
    assert "missing" in state_problem({"w": torch.ones(2, 3)}, ref, "head")


def _stats(cov: np.ndarray, counts=(3.0, 0.0)) -> dict[str, np.ndarray]:
    return {"counts": np.array(counts), "means": np.zeros((2, 2)), "covs": np.stack([cov, np.eye(2)])}


def test_stats_problem_requires_counts_and_psd_covariances():
    assert stats_problem(_stats(np.eye(2)), 2, 2, "full") == ""
    assert "negative counts" in stats_problem(_stats(np.eye(2), (-1.0, 2.0)), 2, 2, "full")
    assert "not symmetric" in stats_problem(_stats(np.array([[1.0, 0.5], [0.0, 1.0]])), 2, 2, "full")
    assert "semidefinite" in stats_problem(_stats(np.array([[1.0, 0.0], [0.0, -0.5]])), 2, 2, "full")
    assert "non-finite" in stats_problem(_stats(np.array([[np.nan, 0.0], [0.0, 1.0]])), 2, 2, "full")
    diag = {"counts": np.array([2.0, 1.0]), "means": np.zeros((2, 2)), "covs": np.array([[1.0, -1.0], [1.0, 1.0]])}
    assert "negative variances" in stats_problem(diag, 2, 2, "diag")
    assert "shape" in stats_problem(_stats(np.eye(2)), 3, 2, "full")


def test_scalar_and_evaluation_problems():
    assert scalar_problem("loss", 0.3, 0.0) == "" and "not finite" in scalar_problem("loss", math.nan, 0.0)
    assert "below" in scalar_problem("loss", -1.0, 0.0) and "not a number" in scalar_problem("loss", "x")
    good = {"val_correct": [1, 2], "val_total": [2, 2], "val_loss": 1.5}
    assert evaluation_problem(good, ["val"], 2) == ""
    assert "more correct" in evaluation_problem(good | {"val_correct": [3, 2]}, ["val"], 2)
    assert ">= 0" in evaluation_problem(good | {"val_total": [-2, 2]}, ["val"], 2)
    assert "missing" in evaluation_problem(good, ["test"], 2)


# -- faulty and hostile clients in real rounds --------------------------------------------------


def test_a_nan_reply_is_rejected_and_never_averaged(tmp_path, caplog):
    """One client of three in group digits16 sends NaN every round: before, the run stopped
    ("training diverged"); now its reply is rejected, logged with node and round, and the
    others' rounds go on with finite models."""
    fed = {"rounds": 3, "clients": 3, "local_steps": 2, "faults": [{"partition": 4, "kind": "nan"}]}
    cfg = small_config(tmp_path, mode="federated", federated=fed)
    with caplog.at_level(logging.WARNING, logger="fedanchors.server"):
        server, grid, summary = run_rounds(cfg, 6)
    rejected = [r.getMessage() for r in caplog.records if "reply rejected" in r.getMessage()]
    assert len(rejected) == 3 and all("client 4 (node" in m and "in train" in m for m in rejected)
    assert [m.split(":")[0] for m in rejected] == ["round 1", "round 2", "round 3"]
    assert all(bool(torch.isfinite(v).all()) for v in server.head.state_dict().values())
    assert math.isfinite(summary["test_acc_wg"])
    sent = [r for r in grid.received if r.content.metric_records and "loss" in r.content["metrics"]]
    assert any(math.isnan(r.content["metrics"]["loss"]) for r in sent)  # the fault really was sent


def test_rejected_replies_count_like_a_missing_client(tmp_path):
    """Its group's only client is hostile every round: max_missing_rounds ends the run as it
    does for a client that never answers (no worst-group accuracy over the other group)."""
    from fedanchors.errors import RunFailed

    fed = {"rounds": 5, "max_missing_rounds": 2, "faults": [{"partition": 1, "kind": "nan"}]}
    cfg = small_config(tmp_path, mode="federated", federated=fed)
    with pytest.raises(RunFailed, match=r"digits16 \(client 1\) gave no reply for 2 rounds"):
        run_rounds(cfg, 2)


def _head_after(tmp_path, **fed) -> dict[str, torch.Tensor]:
    base = {"rounds": 1, "clients": 3, "local_steps": 2}
    server, _ = train_rounds(small_config(tmp_path, mode="federated", federated=base | fed), 6)
    return {k: v.clone() for k, v in server.head.state_dict().items()}


def test_a_huge_update_moves_the_mean_but_not_the_median_or_the_bound(tmp_path):
    clean = _head_after(tmp_path)
    attack = {"faults": [{"partition": 2, "kind": "scale", "scale": 1000.0}]}

    def dist(h):
        return float(torch.sqrt(sum(((h[k] - clean[k]) ** 2).sum() for k in h)))

    mean = dist(_head_after(tmp_path, **attack))
    median = dist(_head_after(tmp_path, aggregation="median", **attack))
    bounded = dist(_head_after(tmp_path, max_update_norm=1.0, **attack))
    clean_median = dist(_head_after(tmp_path, aggregation="median"))
    assert mean > 50 * max(median, bounded)  # the mean is dragged far away; the others are not
    assert median < 2 * clean_median + 1e-6  # the median barely notices one outlier


def test_robust_aggregation_keys_are_checked(tmp_path):
    from fedanchors.errors import ConfigError

    with pytest.raises(ConfigError, match="federated.aggregation: unknown aggregation 'medain'.*'median'"):
        small_config(tmp_path, federated={"aggregation": "medain"})
    with pytest.raises(ConfigError, match="trim_fraction must be in"):
        small_config(tmp_path, federated={"trim_fraction": 0.5})
    with pytest.raises(ConfigError, match="max_update_norm must be >= 0"):
        small_config(tmp_path, federated={"max_update_norm": -1.0})
    with pytest.raises(ConfigError, match=r"faults\[0\].kind"):
        small_config(tmp_path, federated={"faults": [{"kind": "evil"}]})


def test_failures_are_reported_once_per_phase(tmp_path, caplog):
    """A client failing in a round's training and evaluation gets one line for each, naming
    the phase (before: the same line twice)."""
    fed = {"rounds": 2, "fault_partition": 1, "fault_round": 2, "max_missing_rounds": 5}
    cfg = small_config(tmp_path, mode="federated", federated=fed)
    grid = InProcessGrid(cfg, 2)
    from server.driver import FederatedTrainer
    from server.strategy import FedAnchors

    server = FedAnchors(cfg, 2, 10)
    trainer = FederatedTrainer(cfg, grid, server)
    trainer.setup()
    with caplog.at_level(logging.WARNING, logger="fedanchors.server"):
        for t in (1, 2):
            trainer.train(t)
            trainer.evaluate(("val",))
    lines = [r.getMessage() for r in caplog.records]
    assert [x.split(": RuntimeError")[0] for x in lines] == [
        "round 2: client 1 failed in train",
        "round 2: client 1 failed in evaluate",
    ]


def test_a_malformed_setup_reply_stops_the_run_naming_the_node(tmp_path, monkeypatch):
    """What a client says of itself at setup (its example count weights its share of the
    group) is checked too: a negative count is refused with one line naming the node."""
    import clients.task as task
    from fedanchors.errors import FedAnchorsError
    from server.strategy import FedAnchors

    real = task.query

    def lying(msg, context, cfg):
        reply = real(msg, context, cfg)
        if int(context.node_config["partition-id"]) == 1:
            reply.content["metrics"]["num-examples"] = -5
        return reply

    monkeypatch.setattr(task, "query", lying)
    cfg = small_config(tmp_path, mode="federated")
    grid = InProcessGrid(cfg, 2)
    with pytest.raises(FedAnchorsError, match=r"setup: node \d+: num-examples -5 is not a positive integer"):
        FedAnchors(cfg, 2, 10).discover(grid)


@pytest.mark.parametrize("rule", ["mean", "median"])
def test_a_shared_encoder_whose_holders_all_weigh_zero_stays_put(tmp_path, rule):
    """GroupDRO's q can reach exactly 0 for a group (a hostile update blew up the other
    group's loss); that group's shared encoder then gets no gradient, as centralized: it is
    left unchanged, not averaged with weights summing to 0 (which raised before)."""
    fed = {"rounds": 1, "clients": 2, "local_steps": 1, "aggregation": rule}
    method = {"name": "balanced", "lambdas": {"digits16": 0.0}}
    cfg = small_config(tmp_path, mode="federated", federated=fed, method=method)
    from server.strategy import FedAnchors

    grid = InProcessGrid(cfg, 4)
    server = FedAnchors(cfg, 4, 10)
    server.discover(grid)
    before = {s: {k: v.clone() for k, v in e.state_dict().items()} for s, e in server.encoders.items()}
    server.aggregate_train(1, grid.send_and_receive(server.configure_train(1)))
    moved = {
        s: any(not torch.equal(before[s][k], v) for k, v in e.state_dict().items()) for s, e in server.encoders.items()
    }
    assert moved == {"px8": True, "px16": False}


def test_every_reply_non_finite_is_a_divergence_not_missing_clients(tmp_path):
    """One bad client is rejected; all of them non-finite in a round means the model itself
    diverged (their aggregate would be non-finite): exit 3 naming it, not "no reply"."""
    from fedanchors.errors import Diverged

    faults = [{"partition": 0, "kind": "nan", "from_round": 2}, {"partition": 1, "kind": "nan", "from_round": 2}]
    cfg = small_config(tmp_path, mode="federated", federated={"rounds": 3, "faults": faults})
    with pytest.raises(Diverged, match=r"all replies non-finite\) is nan in round 2"):
        run_rounds(cfg, 2)


def test_the_in_place_update_norm_and_average_match_the_plain_formulas():
    """combine_parts computes clients' update norms and FedAvg's mean in reused float64
    buffers: the numbers must be the textbook ones (sqrt of summed squares; sum_i w_i s_i / sum w)."""
    from fedanchors.aggregate import update_norm, weighted_average

    gen = torch.Generator().manual_seed(0)
    ref = {"a": torch.randn(3, 4, generator=gen), "b": torch.randn(5, generator=gen)}
    states = [{k: v + torch.randn(v.shape, generator=gen) for k, v in ref.items()} for _ in range(3)]
    ref64 = {k: v.double() for k, v in ref.items()}
    work = {k: torch.empty_like(v) for k, v in ref64.items()}
    for s in states:
        want = math.sqrt(sum(float(((s[k].double() - ref64[k]) ** 2).sum()) for k in s))
        assert update_norm(s, ref64, work) == pytest.approx(want, rel=1e-12)
        assert clip_update(s, ref, 1e9)[1] == pytest.approx(want, rel=1e-12)
    w = [1.0, 2.0, 5.0]
    avg = weighted_average(states, w)
    for k in ref:
        want = sum(wi * s[k].double() for wi, s in zip(w, states)) / sum(w)
        assert torch.allclose(avg[k].double(), want, atol=1e-6) and avg[k].dtype == torch.float32
