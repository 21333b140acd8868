"""The robust methods' federated parts: q-FedAvg's server step (by hand, at q = 0 and against
Flower's QFedAvg), DRFA's sampling, snapshot and lambda step, client-level weights, and the
bad inputs they reject."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from fedanchors.config import Config, to_dict
from fedanchors.configure import from_dict
from fedanchors.errors import ConfigError
from fedanchors.fedserver import ServerCore
from fedanchors.methods.qfedavg import qfedavg_step

from .conftest import REPO, small_config
from .flower_harness import run_rounds


def _head(*vals):
    return {"head": {"w": torch.tensor(vals, dtype=torch.float64)}}


def test_qfedavg_step_by_hand():
    # w = (1, 2); L = 4, q = 2; unit 1: w1 = (0, 2), F = 0.5, p = 1/4; unit 2: w2 = (1, 0), F = 2, p = 3/4
    # g1 = L (w - w1) = (4, 0), |g1|^2 = 16: Delta1 = 1/4 * 0.5^2 * g1 = (0.25, 0),
    # h1 = 1/4 (2 * 0.5 * 16 + 4 * 0.25) = 4.25
    # g2 = (0, 8), |g2|^2 = 64: Delta2 = 3/4 * 2^2 * g2 = (0, 24), h2 = 3/4 (2 * 2 * 64 + 4 * 4) = 204
    out = qfedavg_step(_head(1.0, 2.0), [_head(0.0, 2.0), _head(1.0, 0.0)], [0.5, 2.0], [0.25, 0.75], 2.0, 4.0)
    want = torch.tensor([1 - 0.25 / 208.25, 2 - 24 / 208.25], dtype=torch.float64)
    assert torch.allclose(out["head"]["w"], want, atol=1e-6)


def test_qfedavg_at_q0_and_l_one_over_lr_is_fedavg():
    gen = torch.Generator().manual_seed(0)
    cur = {"head": {"w": torch.randn(3, 4, generator=gen), "b": torch.randn(4, generator=gen)}}
    units = [{"head": {k: v + torch.randn(v.shape, generator=gen) for k, v in cur["head"].items()}} for _ in range(3)]
    p = [0.5, 0.3, 0.2]
    out = qfedavg_step(cur, units, [0.7, 1.9, 0.2], p, 0.0, 1 / 0.05)
    for k in cur["head"]:
        avg = sum(pi * u["head"][k] for pi, u in zip(p, units))
        assert torch.allclose(out["head"][k], avg, atol=1e-6)


def test_qfedavg_step_equals_flowers_qfedavg_on_the_same_replies():
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import QFedAvg
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 0, 0  # as the harness does
    gen = np.random.default_rng(0)
    cur = {"w": gen.normal(size=(5, 3)), "b": gen.normal(size=3)}
    clients = [{k: v + gen.normal(size=v.shape) * 0.1 for k, v in cur.items()} for _ in range(4)]
    losses = [0.4, 1.3, 2.2, 0.9]
    strategy = QFedAvg(client_learning_rate=0.05, q=1.5)
    strategy.current_arrays = ArrayRecord({k: torch.from_numpy(v.copy()) for k, v in cur.items()})
    replies = []
    for i, (sd, loss) in enumerate(zip(clients, losses)):
        ins = Message(RecordDict(), dst_node_id=10 + i, message_type="train")
        content = RecordDict(
            {"arrays": ArrayRecord({k: torch.from_numpy(v.copy()) for k, v in sd.items()}),
             "metrics": MetricRecord({"train_loss": loss, "num-examples": 10})}
        )  # fmt: skip
        replies.append(Message(content, reply_to=ins))
    theirs, _ = strategy.aggregate_train(1, replies)
    t = {k: torch.from_numpy(v) for k, v in cur.items()}
    ours = qfedavg_step(
        {"head": t},
        [{"head": {k: torch.from_numpy(v) for k, v in c.items()}} for c in clients],
        losses,
        [0.25] * 4,
        1.5,
        1 / 0.05,
    )  # fmt: skip  (equal shares: Flower averages the sampled devices uniformly)
    for k, v in zip(theirs.keys(), theirs.to_numpy_ndarrays()):
        assert np.allclose(ours["head"][k].numpy(), v, atol=1e-6), k


def _core(name: str, level: str = "group", per_round: int = 1, clients=(2, 2), **method) -> ServerCore:
    raw = to_dict(Config())
    raw.update(name="t", progress=False, mode="federated")
    raw["model"].update(latent_dim=4, encoder={"kind": "mlp", "hidden": 8})
    raw["method"].update(name=name, level=level, **method)
    raw["federated"].update(clients_per_round=per_round, sampling="uniform")
    core = ServerCore(from_dict(raw), sum(clients), 10)
    info = [
        {"group": g, "gi": gi, "space": "px8", "shape": (1, 8, 8), "meta": {}, "n": 10 + p, "class_counts": [1] * 10}
        for gi, (g, k) in enumerate(zip("ab", clients)) for p in range(k)
    ]  # fmt: skip
    core.setup(info)
    return core


def test_drfa_draws_groups_and_clients_in_proportion_to_lambda():
    core = _core("drfa")
    core.method.q = torch.tensor([0.2, 0.8], dtype=torch.float64)
    hits = torch.zeros(2)
    rounds = 3000
    for r in range(1, rounds + 1):
        core.plan_round(r)
        assert len(core.sampled) == 1 and core.weights.sum() == pytest.approx(1.0)
        hits[core.cgroup[core.sampled[0]]] += 1
    sd = (0.2 * 0.8 / rounds) ** 0.5
    assert abs(float(hits[1]) / rounds - 0.8) < 4 * sd, hits
    c = _core("drfa", level="client", clients=(2, 2))
    lam = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    c.method.q = lam.clone()
    freq = torch.zeros(4)
    for r in range(1, rounds + 1):
        c.plan_round(r)
        freq[c.sampled[0]] += 1
    assert torch.allclose(freq / rounds, lam.float(), atol=4 * (0.25 / rounds) ** 0.5), freq


def test_drfa_multiple_draws_weigh_by_their_count():
    core = _core("drfa", level="client", per_round=5, clients=(1, 2))
    core.method.q = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)  # every draw is client 2
    core.plan_round(1)
    assert core.sampled == [2] and core.weights.tolist() == [0.0, 0.0, 1.0]
    assert core.group_weights.tolist() == [0.0, 1.0]


def test_drfa_lambda_step_from_the_snapshot_losses():
    core = _core("drfa", level="client", per_round=2, clients=(2, 2), eta=0.1)
    core.snapshot = {"head": core.head.state_dict()}
    assert core.loss_query(1) == core.loss_query(1) and len(core.loss_query(1)) == 2  # seeded, U = clients_per_round
    m = lambda loss, n: {"train_loss": loss * n, "train_total": [n]}  # noqa: E731  summed loss, as clients send
    out = core.aggregate_loss_query(1, [(0, m(1.0, 10)), (3, m(3.0, 13))])
    # v = (N / U) F: (4/2) (1, 0, 0, 3) = (2, 0, 0, 6); lambda = Proj((1/4) 1 + 0.1 v) = Proj(.45, .25, .25, .85)
    v = torch.tensor([0.45, 0.25, 0.25, 0.85], dtype=torch.float64)
    tau = (v.sum() - 1) / 4  # all stay positive: a uniform shift
    assert torch.allclose(core.method.q, v - tau, atol=1e-9)
    assert out["drfa_snapshot_loss"] == pytest.approx(2.0) and core.snapshot is None
    assert float(core.method.q.sum()) == pytest.approx(1.0)


def test_client_level_afl_weights_clients_and_sums_them_per_group():
    core = _core("afl", level="client", per_round=0, clients=(1, 3), eta=0.5)
    core.plan_round(1)
    assert core.weights.tolist() == pytest.approx([0.25] * 4) and core.group_weights.tolist() == pytest.approx(
        [0.25, 0.75]
    )
    core.method.step(torch.tensor([2.0, 0.0, 0.0, 0.0], dtype=torch.float64), 0)  # client 0 lost most
    core.plan_round(2)
    assert core.weights.argmax() == 0 and float(core.weights.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("method", "federated", "key"),
    [
        ({"name": "fgdro_cvar", "level": "client"}, {}, "method.level"),
        ({"name": "afl", "level": "clients"}, {}, "method.level"),
        ({"name": "qffl", "q_fair": -1.0}, {}, "method.q_fair"),
        ({"name": "qffl"}, {"aggregation": "median"}, "federated.aggregation"),
        ({"name": "qffl"}, {}, "method.lipschitz"),  # L = 1 / lr after local Adam steps
        ({"name": "fgdro_cvar", "top_k": 3}, {}, "method.top_k"),
        ({"name": "afl", "floor": {"digits8": 0.7, "digits16": 0.6}}, {}, "method.floor"),
        ({"name": "afl", "level": "client", "floor": {"digits8": 0.1}}, {}, "method.floor"),
    ],
)
def test_bad_robust_settings_are_one_line(tmp_path, method, federated, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg = small_config(tmp_path, mode="federated", method=method, federated=federated)
        from fedanchors.preflight import check_against_data
        from fedanchors.runs import build_data

        check_against_data(cfg, build_data(cfg.data))


def test_drfa_is_federated_only_and_client_level_needs_two_clients(tmp_path):
    with pytest.raises(ConfigError, match="drfa is federated only"):
        small_config(tmp_path, mode="centralized", method={"name": "drfa"})
    one = tmp_path / "one.yaml"
    one.write_text(
        "mode: federated\nmethod: {name: afl, level: client}\n"
        "data: {groups: [{name: d, source: uci_digits, resize: 8, space: px8}]}\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "fedanchors.simulate", "--config", str(one), "--set", f"out_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "method.level: client" in r.stderr and "1 client" in r.stderr


def _fed(tmp_path, method: dict, **federated):
    f = {"rounds": 2, "local_steps": 3, "clients": 2, "clients_per_round": 2, "sampling": "uniform", **federated}
    return small_config(tmp_path, mode="federated", method=method, federated=f)


def test_drfa_round_sends_a_snapshot_and_queries_uniform_clients(tmp_path):
    cfg = _fed(tmp_path, {"name": "drfa", "eta": 0.05, "level": "client"})
    server, grid, summary = run_rounds(cfg, 4)
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert all(0 < float(m.content["config"]["snapshot_at"]) <= 1 for m in train)
    replies = [m for m in grid.received if "snapshot" in m.content.array_records]
    assert replies and len(replies) == sum(1 for m in grid.received if "fit" in m.content["metrics"])
    queries = [
        m for m in grid.sent if m.metadata.message_type == "evaluate" and m.content["config"]["splits"] == "train"
    ]
    assert len(queries) == 2 * 2  # U = clients_per_round each round
    assert not torch.allclose(server.method.q, torch.full((4,), 0.25, dtype=torch.float64))  # lambda moved
    assert float(server.method.q.sum()) == pytest.approx(1.0) and bool((server.method.q >= 0).all())
    assert 0 <= summary["test_acc_wg"] <= 1 and summary["rounds_run"] == 2


def test_federated_qffl_at_q0_is_fedavg_and_moves_the_head_otherwise(tmp_path):
    heads = {}
    for name, q in (("erm", 0.0), ("qffl", 0.0), ("qffl", 5.0)):
        own_l = {"lipschitz": 1.0} if q > 0 else {}  # q = 0 at the default L = 1 / lr; q > 0 after Adam needs L
        cfg = _fed(tmp_path / f"{name}{q}", {"name": name, "q_fair": q, **own_l}, rounds=1, local_steps=2)
        server, _, _ = run_rounds(cfg, 4)
        heads[name, q] = server.head.state_dict()
    for k, v in heads["erm", 0.0].items():
        assert torch.allclose(heads["qffl", 0.0][k], v, atol=1e-6), k
    assert any(not torch.allclose(heads["qffl", 5.0][k], v, atol=1e-4) for k, v in heads["erm", 0.0].items())
