"""Populations: many clients per group, partitioners, sampling, dropouts, group-level aggregation."""

from __future__ import annotations

import io

import pytest
import torch

from fedanchors.data import build_scenario
from fedanchors.population import PARTITIONERS, build_population, drop_out, sample_clients
from server.strategy import FedAnchors

from .conftest import digits_groups, small_config
from .flower_harness import InProcessGrid, run_rounds, train_rounds
from .test_config import assert_one_line_error, cli
from .test_strategy import mock_replies


def _fed(tmp_path, **fed):
    return small_config(tmp_path, mode="federated", data={"max_per_group": 0}, federated=fed).federated


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
def test_partitions_are_disjoint_cover_the_group_and_repeat(tmp_path, kind):
    cfg = small_config(
        tmp_path, mode="federated", data={"max_per_group": 0}, federated={"clients": 7, "partition": kind}
    )
    data = build_scenario(cfg.data)
    a, b = build_population(data, cfg.federated, 0), build_population(data, cfg.federated, 0)
    other = build_population(data, cfg.federated, 1)
    assert len(a) == 14 and [c.group for c in a] == [0] * 7 + [1] * 7
    for gi, g in enumerate(data.groups):
        mine = [c for c in a if c.group == gi]
        for split in ("train", "val", "test"):
            rows = torch.cat([getattr(c, split) for c in mine])
            assert sorted(rows.tolist()) == list(range(len(getattr(g, split))))  # disjoint and covering
        assert all(len(c.train) > 0 for c in mine)
    assert all(torch.equal(x.train, y.train) for x, y in zip(a, b))  # same seed, same partition
    assert any(not torch.equal(x.train, y.train) for x, y in zip(a, other))
    if kind == "shards":  # at most partition_labels (2) labels per client
        y = data.groups[0].train.y
        assert max(len(set(y[c.train].tolist())) for c in a if c.group == 0) == 2


def test_dirichlet_label_skew_grows_as_alpha_falls(tmp_path):
    """Mean total-variation distance between a client's label distribution and the group's."""
    y = build_scenario(small_config(tmp_path, data={"max_per_group": 0}).data).groups[0].train.y
    whole = torch.bincount(y, minlength=10).double() / len(y)

    def skew(alpha: float) -> float:
        parts = PARTITIONERS.get("dirichlet")(y, 10, 0, _fed(tmp_path, partition_alpha=alpha))
        tv = [0.5 * (torch.bincount(y[p], minlength=10).double() / len(p) - whole).abs().sum() for p in parts]
        return float(torch.stack(tv).mean())

    measured = [skew(a) for a in (100.0, 1.0, 0.1)]
    assert measured[0] < 0.15 and measured[0] < measured[1] < measured[2] and measured[2] > 0.5, measured


def test_sampling_is_seeded_and_stratified():
    groups = [0] * 8 + [1] * 2  # a minority group of 2 clients among 10
    rounds = [sample_clients(groups, 3, "stratified", 0, r) for r in range(1, 41)]
    assert all(len(s) == 3 and {groups[p] for p in s} == {0, 1} for s in rounds)  # every group, every round
    assert rounds == [sample_clients(groups, 3, "stratified", 0, r) for r in range(1, 41)]
    assert len({tuple(s) for s in rounds}) > 10  # and it varies over rounds
    uniform = [sample_clients(groups, 3, "uniform", 0, r) for r in range(1, 41)]
    assert any(1 not in {groups[p] for p in s} for s in uniform)  # uniform may miss the minority
    assert sample_clients(groups, 0, "stratified", 0, 1) == list(range(10))
    kept = [drop_out(list(range(1000)), 0.3, 0, r) for r in (1, 2)]
    assert kept[0] == drop_out(list(range(1000)), 0.3, 0, 1) and kept[0] != kept[1]
    assert 650 < len(kept[0]) < 750


def test_balanced_sampling_takes_as_many_clients_from_every_group():
    groups = [0] * 88 + [1] * 22  # FEMNIST's hi / lo writers
    rounds = [sample_clients(groups, 14, "balanced", 0, r) for r in range(1, 201)]
    assert all(len(s) == 14 == len(set(s)) for s in rounds)
    assert all(sum(groups[p] for p in s) == 7 for s in rounds)  # 7 of each, every round
    assert rounds == [sample_clients(groups, 14, "balanced", 0, r) for r in range(1, 201)]
    seen = [sum(p in s for s in rounds) for p in range(110)]  # within a group, uniform
    assert min(seen[88:]) > 40 and max(seen[:88]) < 35, seen  # lo: 7/22 of 200 = 64, hi: 7/88 = 16
    # a group smaller than its share gives all it has, the others share the rest
    small = [0] * 10 + [1] * 2 + [2] * 10
    for r in range(1, 21):
        s = sample_clients(small, 9, "balanced", 1, r)
        counts = sorted(sum(small[p] == gi for p in s) for gi in (0, 2))
        assert sum(small[p] == 1 for p in s) == 2 and counts == [3, 4]
    odd = [sum(groups[p] for p in sample_clients(groups, 15, "balanced", 0, r)) for r in range(1, 41)]
    assert set(odd) == {7, 8}  # the one left over goes to either group


def test_aggregation_over_several_clients_per_group_by_hand(tmp_path):
    """iw: w_g = 1/2 split over a group's answering clients by examples; a group's loss is the
    example-weighted mean of its clients' losses; one client of group 0 missing renormalises."""
    cfg = small_config(
        tmp_path,
        mode="federated",
        method={"name": "iw"},
        anchors={"lambda_sep": 0.0, "lambda_fit": 0.0},
        data={"max_per_group": 0},
        federated={"clients": 3, "partition": "dirichlet", "partition_alpha": 0.3},
    )
    strategy = FedAnchors(cfg, 6, 10)
    grid = InProcessGrid(cfg, 6)
    strategy.discover(grid)
    n = [i["n"] for i in strategy.info]
    assert strategy.cgroup == [0, 0, 0, 1, 1, 1] and len(set(n)) > 2  # uneven clients
    msgs = strategy.configure_train(1)
    template = strategy.head.state_dict()
    heads = [{k: torch.full_like(v, float(p + 1)) for k, v in template.items()} for p in range(6)]
    losses = [0.5, 1.0, 2.0, 3.0, 1.5, 0.25]
    replies = mock_replies(strategy, msgs, heads, losses)
    dropped = next(r for r in replies if strategy._partition(r) == 1)
    strategy.aggregate_train(1, [r for r in replies if r is not dropped])
    answering = {0: [0, 2], 1: [3, 4, 5]}
    w = {p: 0.5 * n[p] / sum(n[q] for q in ps) for ps in answering.values() for p in ps}
    want = sum(w[p] * (p + 1) for p in w) / sum(w.values())
    for v in strategy.head.state_dict().values():
        assert torch.allclose(v, torch.full_like(v, want), atol=1e-6)
    for g, ps in answering.items():
        loss_g = sum(n[p] * losses[p] for p in ps) / sum(n[p] for p in ps)
        assert float(strategy.last_losses[g]) == pytest.approx(loss_g)


def test_k_clients_per_group_equal_one_client_per_group(tmp_path):
    """Full participation, anchors off, one full-batch plain SGD step: splitting each group over
    4 clients (shared encoder per space, averaged) gives the head, q and encoders of the
    one-client-per-group run to 1e-5."""
    common = dict(
        anchors={"lambda_fit": 0.0, "lambda_sep": 0.0},
        method={"name": "groupdro", "eta": 1.0},
        optim={"name": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "grad_clip": 0.0, "batch_size": 10**5},
        data={"max_per_group": 300},
    )
    one, _ = train_rounds(small_config(tmp_path, federated={"rounds": 3, "local_steps": 1}, **common), 2)
    fed = {"rounds": 3, "local_steps": 1, "clients": 4, "partition": "dirichlet", "partition_alpha": 0.5}
    many, _ = train_rounds(small_config(tmp_path, federated=fed, **common), 8)
    assert sorted(many.encoders) == ["px16", "px8"]  # each space's encoder is averaged over its 4 clients
    for k, v in one.head.state_dict().items():
        assert torch.allclose(v, many.head.state_dict()[k], atol=1e-5), k
    assert torch.allclose(one.method.q, many.method.q, atol=1e-5)
    assert not torch.allclose(one.method.q, torch.full_like(one.method.q, 0.5))


def test_k_clients_encoders_equal_the_private_ones(tmp_path):
    common = dict(
        anchors={"lambda_fit": 0.0, "lambda_sep": 0.0},
        method={"name": "erm"},
        optim={"name": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "grad_clip": 0.0, "batch_size": 10**5},
        data={"max_per_group": 300},
    )
    one, grid = train_rounds(small_config(tmp_path, federated={"rounds": 2, "local_steps": 1}, **common), 2)
    fed = {"rounds": 2, "local_steps": 1, "clients": 3}
    many, many_grid = train_rounds(small_config(tmp_path, federated=fed, **common), 6)
    for ctx in many_grid.contexts.values():  # the server holds a shared space's encoder: no copy per client
        assert torch.load(io.BytesIO(ctx.state["client"]["blob"]), weights_only=True)["encoder"] is None
    for ctx in grid.contexts.values():
        p = int(ctx.node_config["partition-id"])
        private = torch.load(io.BytesIO(ctx.state["client"]["blob"]), weights_only=True)["encoder"]
        shared = many.encoders[one.info[p]["space"]].state_dict()
        for k, v in private.items():
            assert torch.allclose(v, shared[k], atol=1e-5), (p, k)


def test_sampled_dropped_and_failing_clients_do_not_stop_the_run(tmp_path):
    fed = {"rounds": 4, "clients": 3, "clients_per_round": 3, "dropout": 0.3, "fault_partition": 4, "fault_round": 1}
    fed |= {"fault_rounds": 2}
    cfg = small_config(tmp_path, mode="federated", federated=fed)
    server, grid, summary = run_rounds(cfg, 6)
    trained = [m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == "train"]
    assert 0 < len(trained) <= 4 * 3  # only the sampled clients, minus dropouts, were asked to train
    assert summary["rounds_run"] == 4 and 0 <= summary["test_acc_wg"] <= 1


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["federated.partition=dirichlets"], "did you mean 'dirichlet'"),
        (["federated.partition=dirichlet", "federated.partition_alpha=0"], "partition_alpha must be > 0"),
        (["federated.clients=5000"], "fewer than its 5000 clients"),
        (["federated.clients=3", "federated.clients_per_round=7"], "exceeds the population of 6 clients"),
        (["federated.group_clients={digits9: 2}"], "names no group ['digits9']"),
    ],
)
def test_bad_population_settings_are_one_line(tmp_path, sets, needle):
    args = ["--config", "configs/digits_fed.yaml", "--set", f"out_dir={tmp_path}"]
    for s in sets:
        args += ["--set", s]
    assert_one_line_error(cli(*args), needle)
    assert not any(tmp_path.iterdir())


def test_validation_and_test_follow_each_clients_label_mix(tmp_path):
    cfg = small_config(
        tmp_path, mode="federated", data={"max_per_group": 0}, federated={"clients": 6, "partition": "shards"}
    )
    data = build_scenario(cfg.data)
    for c in build_population(data, cfg.federated, 0):
        g = data.groups[c.group]
        held = set(g.train.y[c.train].tolist())
        assert set(g.test.y[c.test].tolist()) <= held and set(g.val.y[c.val].tolist()) <= held


def test_client_level_metrics_in_both_modes(tmp_path, figures):
    """Worst, 10th-percentile and std of client accuracy, per group and overall, from the same
    client slices in both modes; with one full-batch SGD step they agree across modes."""
    from fedanchors.metrics import client_summary
    from fedanchors.rundir import RunDir
    from fedanchors.simulate import run

    s = client_summary([0.5, 0.9, float("nan"), 0.7], [0, 0, 1, 1], ["a", "b"])
    assert s["client_acc_worst"] == 0.5 and s["client_acc_worst:b"] == 0.7 and s["client_acc_std:b"] == 0.0
    assert s["client_acc_p10:a"] == pytest.approx(0.54)
    common = dict(
        anchors={"lambda_fit": 0.0, "lambda_sep": 0.0},
        method={"name": "erm"},
        optim={"name": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "grad_clip": 0.0, "batch_size": 10**5},
        data={"max_per_group": 300, "groups": digits_groups(sizes=(8, 8))},
        federated={"rounds": 2, "local_steps": 1, "clients": 3, "partition": "dirichlet"},
    )
    common["optim"]["epochs"] = 2
    central = run(small_config(tmp_path / "c", **common))
    cfg = small_config(tmp_path / "f", mode="federated", **common)
    rundir = RunDir.create(cfg)
    _, _, fed = run_rounds(cfg, 6, run=rundir)
    rundir.release()
    keys = [k for k in fed if k.startswith("test_client_acc_")]
    assert len(keys) == 9  # worst, p10, std x (all, digits8, digits16)
    assert central["test_client_accs"] == pytest.approx(fed["test_client_accs"], abs=1e-6)  # one per client
    assert (tmp_path / "c" / "runs" / "t" / "plots.png").is_file()  # with the client panels
    for k in keys:
        assert central[k] == pytest.approx(fed[k], abs=1e-6), k
    assert fed["test_client_acc_worst"] <= fed["test_acc_wg"]  # a client is no better than its group's worst
