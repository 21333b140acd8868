"""FedAnchors aggregation on mock replies, message contents, and equivalence with centralized SGD."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.protocol import ENCODER, pack, pack_arrays, unpack
from fedanchors.aggregate import fit_anchors
from fedanchors.centralized import CentralizedTrainer
from fedanchors.config import AnchorConfig, OptimConfig
from fedanchors.data import build_scenario
from fedanchors.losses import anchor_fit_objective
from fedanchors.models import build_anchors, build_encoder
from server.strategy import FedAnchors

from .conftest import digits_groups, small_config
from .flower_harness import InProcessGrid, run_rounds, train_rounds


def mock_replies(strategy, msgs, heads, losses):
    """One reply per train message: a given head, fixed class moments and a group loss."""
    replies = []
    for msg, head, loss in zip(msgs, heads, losses):
        pid = next(p for p, n in strategy.nodes.items() if n == msg.metadata.dst_node_id)
        C, d = 10, strategy.anchors.means.shape[1]
        stats = pack_arrays(
            counts=np.full(C, 5.0),
            means=np.full((C, d), float(pid), np.float32),
            covs=np.tile(np.eye(d, dtype=np.float32), (C, 1, 1)),
        )
        metrics = MetricRecord({"partition": pid, "num-examples": 7, "loss": loss, "fit": 0.0})
        TaskIdentity.node_id = msg.metadata.dst_node_id
        space = strategy.info[pid]["space"]  # a shared encoder comes back unchanged
        enc = {"encoder": strategy.encoders[space].state_dict()} if space in strategy.encoders else {}
        replies.append(
            Message(RecordDict({"global": pack(head=head, **enc), "stats": stats, "metrics": metrics}), reply_to=msg)
        )
    TaskIdentity.node_id = 0
    return replies[::-1]  # arrival order must not matter


@pytest.mark.parametrize("method", ["erm", "iw", "balanced", "groupdro"])
def test_head_weights_and_q_update(tmp_path, method):
    # lambda_sep = 0: the classifier separation would also calibrate the head after averaging
    cfg = small_config(
        tmp_path,
        method={"name": method, "eta": 0.5, "lambdas": {"digits16": 3.0}},
        anchors={"lambda_sep": 0.0},
        data={"max_per_group": 0, "groups": digits_groups(fractions=(0.7, 0.3))},
    )
    strategy = FedAnchors(cfg, 2, 10)
    grid = InProcessGrid(cfg, 2)
    strategy.discover(grid)
    msgs = strategy.configure_train(1)
    n = [i["n"] for i in strategy.info]
    assert n[0] > 2 * n[1]  # the 0.7 / 0.3 split reached the clients
    template = strategy.head.state_dict()
    heads = [
        {k: torch.full_like(v, 1.0) for k, v in template.items()},
        {k: torch.full_like(v, 4.0) for k, v in template.items()},
    ]
    losses = [1.0, 2.0]
    strategy.aggregate_train(1, mock_replies(strategy, msgs, heads, losses))
    want_w = {
        "erm": [n[0] / sum(n), n[1] / sum(n)],
        "iw": [0.5, 0.5],
        "balanced": [0.25, 0.75],
        "groupdro": [0.5, 0.5],
    }[method]
    expected = want_w[0] * 1.0 + want_w[1] * 4.0
    for v in strategy.head.state_dict().values():
        assert torch.allclose(v, torch.full_like(v, expected), atol=1e-6)
    if method == "groupdro":
        a, b = 0.5 * math.exp(0.5 * 1.0), 0.5 * math.exp(0.5 * 2.0)
        assert strategy.method.q.tolist() == pytest.approx([a / (a + b), b / (a + b)])
        # the next round's head weights are the new q
        strategy.configure_train(2)
        assert strategy.weights.tolist() == pytest.approx([a / (a + b), b / (a + b)])


def test_failed_client_keeps_its_q(tmp_path):
    cfg = small_config(tmp_path, method={"name": "groupdro", "eta": 0.5})
    strategy = FedAnchors(cfg, 2, 10)
    grid = InProcessGrid(cfg, 2)
    strategy.discover(grid)
    msgs = strategy.configure_train(1)
    template = strategy.head.state_dict()
    replies = mock_replies(strategy, msgs, [template, template], [1.0, 2.0])
    TaskIdentity.node_id = replies[0].metadata.src_node_id
    from flwr.app import Error

    failed = Message(
        error=Error(code=1, reason="boom"),
        reply_to=next(m for m in msgs if m.metadata.dst_node_id == replies[0].metadata.src_node_id),
    )
    TaskIdentity.node_id = 0
    strategy.aggregate_train(1, [failed, replies[1]])
    assert strategy.method.q.tolist() == pytest.approx([0.5, 0.5])  # one loss: its q renormalises to its own mass


def test_anchor_step_decreases_fit_objective():
    torch.manual_seed(0)
    anchors, head = build_anchors(8, 4, 1e-4, 1.0, 0), torch.nn.Linear(8, 4)
    counts = torch.tensor([[5.0, 5.0, 0.0, 5.0], [5.0, 0.0, 5.0, 5.0]])
    means = torch.randn(2, 4, 8) * 3
    a = torch.randn(2, 4, 8, 8)
    covs = a @ a.mT / 8 + 0.1 * torch.eye(8)
    w = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        before = float(anchor_fit_objective(anchors, counts, means, covs, w))
    res = fit_anchors(
        anchors, head, counts, means, covs, w, AnchorConfig(server_steps=20, lambda_sep=0.0), OptimConfig()
    )
    assert res["fit_before"] == pytest.approx(before, rel=1e-5)
    assert res["fit"] < 0.8 * before


def test_private_encoders_never_travel(tmp_path):
    cfg = small_config(tmp_path, federated={"rounds": 2, "local_steps": 2})
    strategy, grid, _ = run_rounds(cfg, 2)
    for msg in grid.sent + grid.received:
        assert not msg.has_error()
        for name, rec in msg.content.array_records.items() if msg.has_content() else []:
            assert not any(k.startswith(ENCODER) for k in rec.keys()), (name, list(rec.keys()))
    # and the encoders did train, on the clients: their state differs from the initial weights
    data = build_scenario(cfg.data)
    for ctx in grid.contexts.values():
        g = data.groups[int(ctx.node_config["partition-id"])]
        trained = torch.load(io.BytesIO(ctx.state["client"]["blob"]), weights_only=True)["encoder"]
        init = build_encoder(cfg.model, g.space, g.shape, cfg.seed).state_dict()
        assert any(not torch.equal(trained[k], init[k]) for k in init)


def test_shared_space_encoder_is_averaged(tmp_path):
    cfg = small_config(
        tmp_path, federated={"rounds": 1, "local_steps": 1}, data={"groups": digits_groups(sizes=(8, 8))}
    )
    strategy, grid, _ = run_rounds(cfg, 2)
    assert list(strategy.encoders) == ["px8"]
    replies = [m for m in grid.received if m.metadata.message_type == "train"]
    sds = [unpack(m.content["global"], ENCODER) for m in replies]
    assert sds[0] and sds[1]
    w = strategy.weights.tolist()
    for k, v in strategy.encoders["px8"].state_dict().items():
        parts = sorted(zip(replies, sds), key=lambda t: int(t[0].content["metrics"]["partition"]))
        want = sum(wi * sd[k] for wi, (_, sd) in zip(w, parts))
        assert torch.allclose(v, want, atol=1e-6)


@pytest.mark.parametrize(
    "k,loss,weighting,schedule",
    [(3, "ce", "own", "constant"), (2, "logit_adjust", "q", "constant"), (2, "ce", "q", "constant"),
     (3, "ce", "own", "cosine")],
)  # fmt: skip
def test_federated_rounds_equal_centralized_sgd_steps(tmp_path, k, loss, weighting, schedule):
    """Anchors off, one local full-batch SGD step, no momentum: k rounds == k centralized steps
    (with a long-tail loss too: the server's prior from the clients' class counts is the
    centralized prior from the data), under either method.encoder_weighting, and with a
    cosine learning rate (round r's rate is epoch r's)."""
    common = dict(
        loss={"name": loss, "tau": 2.0},
        anchors={"lambda_fit": 0.0, "lambda_sep": 0.0},
        method={"name": "groupdro", "eta": 1.0, "encoder_weighting": weighting},
        optim={
            "name": "sgd",
            "lr": 0.5,
            "momentum": 0.0,
            "weight_decay": 0.0,
            "grad_clip": 0.0,
            "batch_size": 100000,
            "epochs": k,
            "schedule": schedule,
        },
        data={"max_per_group": 150},
        federated={"rounds": k, "local_steps": 1},
    )
    cfg = small_config(tmp_path, **common)
    data = build_scenario(cfg.data)
    tr = CentralizedTrainer(cfg, data)
    for t in range(1, k + 1):
        assert len(tr.epoch_batches()) == 1  # full batch: an epoch is one step
        tr.train(t)
    strategy, grid = train_rounds(cfg, 2)
    told = [m.content["config"].get("lr") for m in grid.sent if m.metadata.message_type == "train"]
    if schedule == "cosine":  # each round's rate reached the clients, and it fell
        want = [0.5 * 0.5 * (1 + math.cos(math.pi * r / k)) for r in range(k) for _ in range(2)]
        assert told == pytest.approx(want) and want[0] == 0.5 and want[-1] == pytest.approx(0.125)
    else:
        assert told == [None] * 2 * k  # a constant rate is not sent
    if loss != "ce":
        assert torch.allclose(torch.tensor(strategy.log_prior), tr.logp, atol=1e-6)
        assert not torch.allclose(tr.logp, torch.full_like(tr.logp, -math.log(10)), atol=1e-3)  # not uniform
        sent = [m for m in grid.sent if m.metadata.message_type == "train"]
        assert all(list(m.content["config"]["log_prior"]) == strategy.log_prior for m in sent)
    for key, v in strategy.head.state_dict().items():
        assert torch.allclose(v, tr.model.head.state_dict()[key], atol=1e-5), key
    assert torch.allclose(strategy.method.q, tr.method.q, atol=1e-5)
    assert not torch.allclose(tr.method.q, torch.full_like(tr.method.q, 0.5))  # q really moved
    for ctx in grid.contexts.values():
        p = int(ctx.node_config["partition-id"])
        state = torch.load(io.BytesIO(ctx.state["client"]["blob"]), weights_only=True)["encoder"]
        central = tr.model.encoders[data.groups[p].space].state_dict()
        for key, v in state.items():
            assert torch.allclose(v, central[key], atol=1e-5), (p, key)


def test_barycenter_step_reaches_the_closed_form():
    """Commuting (diagonal) covariances: the barycenter is N(sum a_g mu_g, (sum a_g Sigma_g^1/2)^2).

    a_g is proportional to w_g / K_g (each group averages over its K_g present classes):
    for class 0, (0.25 / 2, 0.75 / 1) -> (1/7, 6/7).
    """
    from fedanchors.aggregate import barycenter_step

    anchors = build_anchors(3, 2, 1e-6, 1.0, 0)
    counts = torch.tensor([[4.0, 4.0], [4.0, 0.0]])
    means = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]], [[3.0, 4.0, 0.0], [9.0, 9.0, 9.0]]])
    covs = torch.stack([torch.diag(torch.tensor([[1.0, 4.0, 9.0], [1.0, 1.0, 1.0]])[c]) for c in range(2)])
    covs = torch.stack([covs, torch.diag_embed(torch.tensor([[4.0, 1.0, 1.0], [5.0, 5.0, 5.0]]))])
    w = torch.tensor([0.25, 0.75])
    for _ in range(30):
        barycenter_step(anchors, counts, means, covs, w)
    a0, a1 = 1 / 7, 6 / 7
    assert torch.allclose(anchors.means[0], a0 * means[0, 0] + a1 * means[1, 0], atol=1e-5)
    assert torch.allclose(anchors.means[1], means[0, 1], atol=1e-5)  # only group 0 holds class 1
    want = torch.diag((a0 * torch.tensor([1.0, 2.0, 3.0]) + a1 * torch.tensor([2.0, 1.0, 1.0])) ** 2)
    assert torch.allclose(anchors.covariances()[0], want, atol=1e-4)


def test_running_class_stats_equal_an_exact_pass_when_the_encoder_is_still(tmp_path):
    """With lr = 0 the encoder cannot move, so stats gathered during training are exact."""
    from fedanchors.moments import class_sufficient_stats
    from fedanchors.train import LocalWork, local_train, make_optimizer

    cfg = small_config(tmp_path, optim={"name": "sgd", "lr": 1e-12, "batch_size": 32, "grad_clip": 0.0})
    g = build_scenario(cfg.data).groups[0]
    enc = build_encoder(cfg.model, g.space, g.shape, 0)
    head, anchors = torch.nn.Linear(16, 10), build_anchors(16, 10, 1e-4, 1.0, 0)
    opt = make_optimizer(list(enc.parameters()) + list(head.parameters()), cfg.optim)
    steps = 2 * math.ceil(len(g.train) / 32)  # two passes: only the last one counts
    work = LocalWork(steps, cfg.optim, cfg.anchors, num_classes=10)
    res = local_train(enc, head, anchors, g.train, opt, work, torch.Generator().manual_seed(0), torch.device("cpu"))
    with torch.no_grad():
        exact = class_sufficient_stats(enc(g.train.x), g.train.y, 10)
    assert torch.equal(res["stats"][0], exact[0]) and int(exact[0].sum()) == len(g.train)
    for a, b in zip(res["stats"][1:], exact[1:]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-3)


def test_federated_runs_repeat_exactly(tmp_path):
    """Same seed, same numbers: two federated runs give identical heads, anchors and q."""
    cfg = small_config(tmp_path, federated={"rounds": 2, "local_steps": 3})
    a, _, _ = run_rounds(cfg, 2)
    b, _, _ = run_rounds(cfg, 2)
    for (ka, va), (kb, vb) in zip(a.head.state_dict().items(), b.head.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert torch.equal(a.anchors.means, b.anchors.means) and torch.equal(a.method.q, b.method.q)


def test_early_stopping_in_both_modes(tmp_path):
    """lr ~ 0: validation acc_wg cannot improve after the first epoch/round, so patience 1 stops at 2."""
    from fedanchors.simulate import run

    frozen = {"name": "sgd", "lr": 1e-12, "epochs": 5, "patience": 1}
    s = run(small_config(tmp_path, optim=frozen))
    assert s["epochs_run"] == 2 and s["best_epoch"] == 1
    assert len((tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()) == 2
    cfg = small_config(tmp_path, optim=frozen, federated={"rounds": 5, "local_steps": 1})
    strategy, grid, s = run_rounds(cfg, 2)
    assert s["rounds_run"] == 2 and s["best_round"] == 1
    assert sum(m.metadata.message_type == "train" for m in grid.sent) == 4  # 2 clients x 2 rounds
