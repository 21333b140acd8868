"""Federated baselines in the same harness (``baseline: <name>``): each builds, trains two
rounds on digits and puts on the wire only what its method shares."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from clients.protocol import ANCHORS, ENCODER, HEAD
from fedanchors.configure import load_config, replace
from fedanchors.errors import ConfigError
from fedanchors.evaluate import evaluate_run
from fedanchors.population import eval_cohort
from fedanchors.rundir import RunDir

from .conftest import small_config
from .flower_harness import run_rounds, train_rounds

C = 10


def _keys(record) -> set[str]:
    return {k.split(".")[0] + "." for k in record.to_torch_state_dict()} if len(record) else set()


def _run(tmp_path, baseline: str, run: RunDir | None = None):
    cfg = small_config(tmp_path, mode="federated", baseline=baseline, federated={"rounds": 2, "local_steps": 2})
    server, grid, summary = run_rounds(cfg, 2, run=run)
    train_sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    train_replies = [
        m for m in grid.received if "metrics" in m.content.metric_records and "fit" in m.content["metrics"]
    ]
    return cfg, server, grid, summary, train_sent, train_replies


# what goes out to a client and what comes back, per baseline (digits: 2 groups of other pixel sizes)
WIRE = {
    "fedavg": ({HEAD, ENCODER}, {HEAD, ENCODER}, None),
    "lg_fedavg": ({HEAD}, {HEAD}, None),
    "fedproto": ({ANCHORS}, set(), 0),
    "flic_like": ({HEAD, ANCHORS}, {HEAD}, 1),
    "fedanchors": ({HEAD, ANCHORS}, {HEAD}, 2),
    "fedanchors_private": ({HEAD, ANCHORS}, {HEAD}, 2),
}


@pytest.mark.parametrize("baseline", list(WIRE))
def test_each_baseline_trains_and_sends_only_what_it_shares(tmp_path, baseline):
    cfg, server, grid, summary, sent, replies = _run(tmp_path, baseline)
    out, back, cov_dims = WIRE[baseline]
    assert len(sent) == 4 and len(replies) == 4  # 2 rounds x 2 clients
    for m in sent:
        assert _keys(m.content["global"]) == out, baseline
    for m in replies:
        assert _keys(m.content["global"]) == back, baseline
        if cov_dims is None:
            assert "stats" not in m.content.array_records  # no anchors: no class moments either
        else:
            covs = m.content.array_records["stats"]["covs"].numpy()
            d = cfg.model.latent_dim
            assert covs.shape == {0: (C, 0), 1: (C, d), 2: (C, d, d)}[cov_dims]
    assert 0.0 <= summary["test_acc_wg"] <= 1.0 and summary["rounds_run"] == 2
    if baseline == "fedavg":  # one common input space, one encoder for every client
        assert set(server.encoders) == {"common"} and {i["space"] for i in server.info} == {"common"}


def test_fedproto_prototypes_are_count_weighted_class_means(tmp_path):
    cfg = small_config(tmp_path, mode="federated", baseline="fedproto", federated={"rounds": 2, "local_steps": 2})
    server, grid = train_rounds(cfg, 2)  # the server state right after round 2's aggregation
    last = grid.received[-2:]  # round 2's two replies
    counts = torch.stack([torch.from_numpy(m.content.array_records["stats"]["counts"].numpy()) for m in last])
    means = torch.stack([torch.from_numpy(m.content.array_records["stats"]["means"].numpy()) for m in last])
    want = (counts.unsqueeze(-1) * means.double()).sum(0) / counts.sum(0).clamp_min(1).unsqueeze(-1)
    seen = counts.sum(0) > 0
    assert torch.allclose(server.anchors.means.double()[seen], want[seen], atol=1e-5)


def test_fedproto_local_heads_differ_and_evaluate_reproduces_the_summary(tmp_path):
    cfg = small_config(tmp_path, mode="federated", baseline="fedproto", federated={"rounds": 2, "local_steps": 2})
    rundir = RunDir.create(cfg)
    _, _, summary = run_rounds(cfg, 2, run=rundir)
    rundir.release()
    heads = [torch.load(p, weights_only=True)["head"] for p in sorted((rundir.path / "clients").glob("*/r2.pt"))]
    assert len(heads) == 2 and not torch.equal(heads[0]["weight"], heads[1]["weight"])
    got = evaluate_run(rundir.path)
    saved = json.loads((rundir.path / "summary.json").read_text())
    for k in ("test_acc_all", "test_acc_wg", "test_acc_group:digits8", "test_acc_group:digits16"):
        assert got[k] == saved[k], k


def test_baseline_settings_win_and_unknown_names_fail(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("mode: federated\nbaseline: lg_fedavg\nmethod: {name: groupdro}\nanchors: {lambda_fit: 0.5}\n")
    cfg = load_config(p, ["optim.lr=0.01"])
    assert cfg.method.name == "erm" and cfg.anchors.lambda_fit == 0.0 and cfg.optim.lr == 0.01
    assert cfg.federated.encoder_sharing == "client"
    with pytest.raises(ConfigError, match="did you mean 'fedproto'"):
        load_config(None, ["baseline=fedprot"])


def test_common_input_resizes_or_pads_and_fedavg_keeps_the_configs_choice(tmp_path):
    from fedanchors.data import build_scenario
    from fedanchors.data.base import resize2d

    own = build_scenario(small_config(tmp_path).data)  # digits: 1x8x8 and 1x16x16
    shapes = {g.name: tuple(g.shape) for g in own.groups}
    for how in ("resize", "pad"):
        cfg = small_config(
            tmp_path, mode="federated", baseline="fedavg", data={"max_per_group": 200, "common_input": how}
        )
        assert cfg.data.common_input == how  # the config's choice survives the baseline's default
        common = build_scenario(cfg.data)
        for g, o in zip(common.groups, own.groups):
            assert g.space == "common" and tuple(g.shape) == (1, 16, 16) and torch.equal(g.train.y, o.train.y)
            h, w = shapes[o.name][1:]
            if how == "pad":  # the original pixels at the top left, zeros elsewhere
                assert torch.equal(g.train.x[..., :h, :w], o.train.x)
                assert g.train.x[..., h:, :].abs().sum() == 0 and g.train.x[..., :, w:].abs().sum() == 0
            else:
                assert torch.equal(g.train.x, resize2d(o.train.x, 16, 16))
    assert small_config(tmp_path, mode="federated", baseline="fedavg").data.common_input == "resize"
    with pytest.raises(ConfigError, match="data.common_input: 'crop' is not one of none, resize, pad"):
        small_config(tmp_path, data={"common_input": "crop"})


def test_a_new_clients_adaptation_moves_only_its_encoder():
    from fedanchors.config import AnchorConfig, OptimConfig
    from fedanchors.data import build_scenario
    from fedanchors.models import build_anchors, build_encoder, build_head
    from fedanchors.train import adapt_encoder

    cfg = small_config(Path("/tmp"))
    g = build_scenario(cfg.data).groups[0]
    enc = build_encoder(cfg.model, g.space, g.shape, 0, g.meta)
    head, anchors = build_head(cfg.model, 10, 0), build_anchors(cfg.model.latent_dim, 10, 1e-4, 1.0, 0)
    before = {k: v.clone() for k, v in [*head.state_dict().items(), *anchors.state_dict().items()]}
    enc_before = {k: v.clone() for k, v in enc.state_dict().items()}
    adapt_encoder(
        enc, head, anchors, g.train, OptimConfig(lr=0.01), AnchorConfig(lambda_fit=0.1), 5,
        torch.Generator().manual_seed(0), torch.device("cpu"),
    )  # fmt: skip
    after = {**head.state_dict(), **anchors.state_dict()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # head and anchors frozen
    assert any(not torch.equal(enc_before[k], v) for k, v in enc.state_dict().items())
    assert all(p.requires_grad for p in [*head.parameters(), *anchors.parameters()])  # unfrozen after


def test_held_out_clients_never_train_and_report_after_adapting(tmp_path):
    cfg = small_config(
        tmp_path,
        mode="federated",
        data={"max_per_group": 300},
        federated={"rounds": 2, "local_steps": 2, "clients": 3, "holdout": 0.34, "holdout_epochs": 1},
    )
    server, grid, summary = run_rounds(cfg, 6)
    assert len(server.held) == 2 and {server.cgroup[p] for p in server.held} == {0, 1}  # one per group
    held_nodes = {server.nodes[p] for p in server.held}
    trained = {m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == "train"}
    assert not trained & held_nodes and len(trained) == 4
    adapted = [m for m in grid.sent if "config" in m.content and "adapt_epochs" in m.content["config"]]
    assert {m.metadata.dst_node_id for m in adapted} == held_nodes
    for k in ("test_new_acc_all", "test_new_acc_wg", "test_new_client_acc_mean", "test_new_client_acc_worst"):
        assert 0.0 <= summary[k] <= 1.0, k
    assert summary["test_new_acc_wg"] == min(
        summary["test_new_acc_group:digits8"], summary["test_new_acc_group:digits16"]
    )
    accs = summary["test_client_accs"]
    assert all(math.isnan(accs[p]) for p in server.held) and not any(
        math.isnan(a) for p, a in enumerate(accs) if p not in server.held
    )


def test_prototype_fit_is_fedprotos_mse():
    from fedanchors.anchors import AnchorModule
    from fedanchors.train import group_fit_losses

    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(12, 5, generator=g), torch.randint(0, 3, (12,), generator=g)
    anchors = AnchorModule(3, 5, structure="none")
    got = group_fit_losses([z], [y], anchors, 1e-3, kind="prototype")[0]
    assert torch.allclose(got, torch.nn.functional.mse_loss(z, anchors.means[y]))


def test_a_validation_cohort_selects_the_round_and_the_best_model_is_tested_on_every_client(tmp_path):
    fed = {"rounds": 3, "local_steps": 2, "clients": 3, "clients_per_round": 4, "sampling": "stratified"}
    base = small_config(tmp_path, mode="federated", data={"max_per_group": 300}, federated=fed)
    _, _, every = run_rounds(base, 6)
    # a cohort as large as each group: the same validation, and the best model restored at the
    # end (server parts and each client's private state file) gives the test taken at that round
    whole = replace(base, ["federated.eval_clients=3"])
    server, grid, same = run_rounds(whole, 6)
    assert same["best_round"] == every["best_round"]
    for k in ("test_acc_all", "test_acc_wg", "test_acc_group:digits8", "test_client_acc_worst"):
        assert same[k] == every[k], k
    assert same["test_client_accs"] == every["test_client_accs"]
    # one client per group: validation messages go to the cohort only, the final test to everyone
    one = replace(base, ["federated.eval_clients=1", f"out_dir={tmp_path / 'one'}"])
    run = RunDir.create(one)
    server, grid, summary = run_rounds(one, 6, run=run)
    assert len(server.cohort) == 2 and {server.cgroup[p] for p in server.cohort} == {0, 1}
    evals = [m for m in grid.sent if m.metadata.message_type == "evaluate"]
    val = [m for m in evals if m.content["config"]["splits"] == "val"]
    test = [m for m in evals if m.content["config"]["splits"] == "test"]
    assert {m.metadata.dst_node_id for m in val} == {server.nodes[p] for p in server.cohort}
    assert len(val) == 2 * 3 and len(test) == 6  # 3 validations of the cohort; one test of all 6
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_clients"] for r in records] == [2, 2, 2]
    assert not any(math.isnan(a) for a in summary["test_client_accs"])  # the test is over every client


def test_the_validation_cohort_is_seeded_and_holds_every_group():
    groups = [0, 0, 0, 1, 1, 1, 1, 2]
    a = eval_cohort(groups, {0}, 2, seed=1)
    assert a == eval_cohort(groups, {0}, 2, seed=1) and 0 not in a  # held-out clients never validate
    assert [sum(groups[p] == g for p in a) for g in (0, 1, 2)] == [2, 2, 1]  # a group of one: its one
    assert any(eval_cohort(groups, set(), 2, seed=s) != eval_cohort(groups, set(), 2, seed=1) for s in range(2, 9))
    assert eval_cohort(groups, set(), 9, seed=1) == list(range(8)) and eval_cohort(groups, set(), 0, 1) is None
