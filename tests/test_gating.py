"""The long-tail gate: long-tail losses, the gating split, the gate's features, routing, losses,
schedules, selection, and the gate over real expert runs in both modes."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fedanchors.config import LossConfig
from fedanchors.configure import load_config
from fedanchors.gating import core
from fedanchors.gating import losses as L
from fedanchors.gating.config import GateNetConfig, GatingConfig, load_gating_config
from fedanchors.gating.features import GLOBAL, PER_EXPERT, gate_features
from fedanchors.gating.model import GateNet
from fedanchors.gating.run import gate_loop
from fedanchors.losses import class_loss, log_prior
from tests.test_config import REPO, assert_one_line_error

# -- long-tail losses ---------------------------------------------------------------------


def test_logit_adjustment_and_balanced_softmax_match_their_formulas():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(6, 5, generator=g), torch.tensor([0, 1, 2, 3, 4, 4])
    n = torch.tensor([500.0, 120, 30, 8, 2])
    logp = log_prior(n)
    assert torch.allclose(logp.exp(), n / n.sum())
    for tau in (1.0, 2.0):
        got = class_loss(z, y, LossConfig("logit_adjust", tau), logp)
        pi = n / n.sum()
        want = torch.stack([-torch.log(torch.exp(z[i, y[i]]) * pi[y[i]] ** tau / (torch.exp(z[i]) * pi**tau).sum())
                            for i in range(6)]).mean()  # fmt: skip
        assert torch.allclose(got, want, atol=1e-5)
    got = class_loss(z, y, LossConfig("balanced_softmax"), logp)
    want = torch.stack([-torch.log(n[y[i]] * torch.exp(z[i, y[i]]) / (n * torch.exp(z[i])).sum()) for i in range(6)])
    assert torch.allclose(got, want.mean(), atol=1e-5)
    assert torch.allclose(class_loss(z, y, LossConfig("ce"), None), F.cross_entropy(z, y))
    # the adjustment moves the loss: tail labels cost more than under CE
    assert float(class_loss(z, y, LossConfig("logit_adjust", 1.0), logp)) > float(F.cross_entropy(z, y))


def test_gating_split_is_a_per_class_share_of_train(shared_data):
    from fedanchors.configure import replace
    from fedanchors.data import build_scenario

    cfg = load_config("configs/mnist_lt.yaml", [f"data.root={shared_data}"])
    base = build_scenario(cfg.data)
    cut = build_scenario(replace(cfg, ["data.gating_fraction=0.1"]).data)
    for g0, g1 in zip(base.groups, cut.groups):
        assert g0.gating is None and g1.gating is not None
        n0 = torch.bincount(g0.train.y, minlength=10)
        ng = torch.bincount(g1.gating.y, minlength=10)
        assert torch.equal(ng, torch.round(0.1 * n0.double()).long())  # per class, same long tail
        assert torch.equal(torch.bincount(g1.train.y, minlength=10) + ng, n0)
        # disjoint and covering: the two parts are the original rows
        rows = torch.cat([g1.train.x, g1.gating.x]).flatten(1)
        assert len(torch.unique(rows, dim=0)) == len(torch.unique(g0.train.x.flatten(1), dim=0))
        assert torch.equal(g1.val.x, g0.val.x) and torch.equal(g1.test.x, g0.test.x)


# -- features -----------------------------------------------------------------------------


def test_features_are_7e_plus_3_finite_and_independent_of_the_classes():
    g = torch.Generator().manual_seed(1)
    E, C = 3, 7
    logits = torch.randn(50, E, C, generator=g) * 3
    f = gate_features(logits)
    assert f.shape == (50, 7 * E + 3) and len(PER_EXPERT) == 7 and len(GLOBAL) == 3
    assert torch.isfinite(f).all()
    perm = torch.randperm(C, generator=g)
    assert torch.allclose(gate_features(logits[..., perm]), f, atol=1e-5)
    padded = torch.cat([logits, torch.full((50, E, 20), float("-inf"))], -1)  # 20 classes of probability 0
    assert torch.allclose(gate_features(padded[..., torch.randperm(C + 20, generator=g)]), f, atol=1e-5)
    # two classes only: top-3 mass pads, still finite; confident experts have low entropy
    two = gate_features(torch.tensor([[[10.0, -10.0], [0.0, 0.0]]]))
    assert torch.isfinite(two).all()
    assert two[0, 0] < 1e-3 and abs(float(two[0, 7]) - math.log(2)) < 1e-6  # entropy of expert 0, 1
    assert float(two[0, -1]) == 0.0  # both top classes are class 0 (tie -> index 0): no disagreement


# -- routing ------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2])
def test_top_k_leaves_exactly_k_nonzero_weights(k):
    torch.manual_seed(0)
    net = GateNet(7 * 4 + 3, 4, (16,), 0.0, "top_k", k, noisy=True)
    x = torch.randn(64, 31)
    for train in (True, False):
        net.train(train)
        w, probs, keep = net(x, 0.7)
        assert torch.equal((w > 0).sum(1), torch.full((64,), k))
        assert torch.equal(w > 0, keep)
        assert torch.allclose(w.sum(1), torch.ones(64))
    dense = GateNet(31, 4, (16,), 0.0, "dense", 2, True)
    assert bool((dense(x, 1.0)[0] > 0).all())


def test_load_balancing_is_minimal_at_uniform_use():
    E, B = 4, 400

    def lb(usage):  # every example routed (k = 1) by the usage shares, router probabilities = usage
        counts = (torch.tensor(usage) * B).round().long()
        keep = torch.zeros(B, E, dtype=torch.bool)
        keep[torch.arange(B), torch.repeat_interleave(torch.arange(E), counts)] = True
        return float(L.load_balance(torch.tensor(usage).expand(B, E), keep))

    assert lb([0.25] * 4) == pytest.approx(1.0)
    for u in ([0.4, 0.2, 0.2, 0.2], [0.7, 0.1, 0.1, 0.1], [0.5, 0.5, 0.0, 0.0], [1.0, 0, 0, 0]):
        assert lb(u) > 1.0 + 1e-6
        assert lb(u) == pytest.approx(E * sum(v * v for v in u))


# -- the other losses against hand-computed values -----------------------------------------


def test_responsibility_loss_by_hand():
    post = torch.tensor([[[0.8, 0.2], [0.4, 0.6]]])  # (1, E=2, C=2)
    w, y = torch.tensor([[0.5, 0.5]]), torch.tensor([0])
    # r = (0.5*0.8, 0.5*0.4) / 0.6 = (2/3, 1/3); T = 1: the target is r
    want = 2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.5)
    assert float(L.responsibility_loss(post, w, y, 1.0)) == pytest.approx(want, rel=1e-5)
    # T = 0.5: target proportional to r^2 = (0.8, 0.2)
    want = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert float(L.responsibility_loss(post, w, y, 0.5)) == pytest.approx(want, rel=1e-5)


def test_prior_loss_and_group_priors_by_hand():
    w = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.2, 0.8]])
    y = torch.tensor([0, 1, 3])
    group_of_class = torch.tensor([0, 0, 1, 1])  # classes 0, 1 head; 2, 3 tail
    priors = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    head = 0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)  # mean head weights (0.6, 0.4)
    tail = 0.3 * math.log(0.3 / 0.2) + 0.7 * math.log(0.7 / 0.8)
    assert float(L.prior_loss(w, y, group_of_class, priors)) == pytest.approx((head + tail) / 2, rel=1e-5)
    # priors: softmax over experts of accuracy / 0.1; expert 0 right on both head, expert 1 on the tail one
    post = torch.tensor([[[0.9, 0.1, 0, 0], [0.1, 0.9, 0, 0]],
                         [[0.1, 0.9, 0, 0], [0.9, 0.1, 0, 0]],
                         [[1.0, 0, 0, 0], [0, 0, 0, 1.0]]])  # fmt: skip
    got = L.group_priors(post, y, group_of_class, 2, 0.1)
    want_head = torch.softmax(torch.tensor([1.0, 0.0]) / 0.1, 0)
    want_tail = torch.softmax(torch.tensor([0.0, 1.0]) / 0.1, 0)
    assert torch.allclose(got, torch.stack([want_head, want_tail]), atol=1e-6)


def test_mixture_nll_class_weighting():
    post = torch.tensor([[[0.5, 0.5]], [[0.9, 0.1]]])  # (2, E=1, C=2)
    w, y = torch.ones(2, 1), torch.tensor([1, 0])
    cw = core.class_weights(torch.tensor([10, 90]))
    assert float(cw.sum()) == pytest.approx(2.0) and cw[0] > cw[1]
    want = (cw[1] * -math.log(0.5) + cw[0] * -math.log(0.9)) / (cw[0] + cw[1])
    assert float(L.mixture_nll(post, w, y, cw)) == pytest.approx(float(want), rel=1e-6)
    assert float(L.usage_entropy(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))) == pytest.approx(-math.log(2))


# -- schedules and selection --------------------------------------------------------------


def test_temperature_and_lr_schedules():
    t = [core.router_temperature(e, 11, 2.0, 0.7) for e in range(11)]
    assert t[0] == 2.0 and t[-1] == pytest.approx(0.7) and t[5] == pytest.approx(1.35)
    assert all(a > b for a, b in zip(t, t[1:]))
    f = [core.lr_factor(e, 20, 5) for e in range(20)]
    assert f[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0][:4] + [1.0])
    assert f[5] == pytest.approx(1.0) and f[-1] < 0.03 and all(a >= b for a, b in zip(f[5:], f[6:]))


class _Scripted:
    """A trainer whose validation balanced accuracy follows a script; test counts depend on the
    state loaded, so the summary shows which epoch was kept."""

    def __init__(self, val_bal, test_bal):
        self.val_bal, self.test_bal, self.epoch, self.loaded = val_bal, test_bal, -1, None

    def train(self, epoch, temperature, lr):
        self.epoch = epoch
        return {"loss": 1.0 / (epoch + 1), "nll": 1.0}

    def _stats(self, bal):  # head classes {0}: head acc = tail acc = bal
        n = 100.0
        c = torch.tensor([bal * n, bal * n], dtype=torch.float64)
        d = torch.float64
        two = torch.tensor([2 * n], dtype=d)
        return {
            "total": torch.tensor([n, n], dtype=d),
            "mix": c,
            "experts": c[None],
            "oracle": c,
            "load": two,
            "eff": two,
        }

    def counts(self, split, temperature, uniform=False):
        if split == "val":
            return self._stats(self.val_bal[self.epoch])
        return self._stats(self.test_bal[self.loaded])

    def state(self):
        return {"epoch": self.epoch}

    def load(self, state):
        self.loaded = state["epoch"]


def test_selection_keeps_the_best_validation_balanced_accuracy(tmp_path):
    val = [0.5, 0.7, 0.9, 0.6, 0.8]
    test = [0.1, 0.2, 0.3, 0.95, 0.4]  # the best test epoch (3) is not the one selected
    cfg = GatingConfig(optim=GatingConfig().optim.__class__(epochs=5, warmup_epochs=1))
    head = torch.tensor([True, False])
    out = gate_loop(_Scripted(val, test), cfg, head, ["e"], tmp_path)
    assert out["best_epoch"] == 3 and out["val_balanced_acc"] == pytest.approx(0.9)
    assert out["test_balanced_acc"] == pytest.approx(0.3)
    hist = json.loads((tmp_path / "history.json").read_text())
    assert [h["val_balanced_acc"] for h in hist] == pytest.approx(val)


# -- config errors ------------------------------------------------------------------------


def cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_gate_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text("experts: [{name: a, run: runs/x}]\ngate: {routing: sparse}\n")
    r = cli("fedanchors.gating", "--config", str(bad))
    assert_one_line_error(r, "gate.routing")
    bad.write_text("experts: [{name: a, run: runs/x}]\ngate: {routing: top_k, top_k: 3}\n")
    assert_one_line_error(cli("fedanchors.gating", "--config", str(bad)), "gate.top_k")
    bad.write_text("experts: [{name: a, run: runs/x}]\nloss: {lamda_lb: 1}\n")
    assert_one_line_error(cli("fedanchors.gating", "--config", str(bad)), "lambda_lb")
    bad.write_text(f"experts: [{{name: a, run: {tmp_path / 'nowhere'}}}]\n")
    assert_one_line_error(cli("fedanchors.gating", "--config", str(bad)), "not a run directory")
    assert GateNetConfig().hidden == (256, 128)
    with pytest.raises(Exception, match="gating_fraction"):
        load_config(None, ["data.gating_fraction=1.5"])
    with pytest.raises(Exception, match="loss.name"):
        load_config(None, ["loss.name=focal"])
    assert load_gating_config("configs/gating/mnist_lt.yaml").experts[1].name == "logit_adjust"


# -- end to end on long-tailed MNIST -------------------------------------------------------


def _gate_yaml(tmp_path, shared_data, mode: str, epochs: int) -> str:
    experts = ""
    for name, loss in (("ce", "ce"), ("bs", "balanced_softmax")):
        sets = [f"loss.name={loss}", "method.name=erm", "data.gating_fraction=0.1", "optim.epochs=1",
                "progress=false", f"data.root={shared_data}"]  # fmt: skip
        experts += (f"  - {{name: {name}, run: {tmp_path / 'experts' / name}, config: configs/mnist_lt.yaml, "
                    f"set: [{', '.join(sets)}]}}\n")  # fmt: skip
    p = tmp_path / f"gate_{mode}.yaml"
    p.write_text(f"name: g_{mode}\nmode: {mode}\nout_dir: {tmp_path / 'runs'}\nexperts:\n{experts}"
                 f"optim: {{epochs: {epochs}, warmup_epochs: 1}}\n")  # fmt: skip
    return str(p)


def test_gate_over_real_expert_runs(tmp_path, shared_data):
    from fedanchors.cli.gating import run_gate

    cfg = load_gating_config(_gate_yaml(tmp_path, shared_data, "centralized", 4))
    out = run_gate(cfg)  # trains the two experts first
    run = tmp_path / "runs" / "g_centralized"
    for name in ("ce", "bs"):
        expert = json.loads((tmp_path / "experts" / name / "summary.json").read_text())
        # the exported logits reproduce each expert run's own test accuracy
        assert out[f"test_expert:{name}:acc"] == pytest.approx(expert["test_acc_all"], abs=1e-9)
        assert out["test_oracle_balanced_acc"] >= out[f"test_expert:{name}:balanced_acc"]
    assert out["test_balanced_acc"] == pytest.approx((out["test_head_acc"] + out["test_tail_acc"]) / 2)
    assert 1.0 <= out["test_effective_experts"] <= 2.0
    assert 0.0 < out["test_average_balanced_acc"] <= out["test_oracle_balanced_acc"]
    assert sum(out[f"test_load:{n}"] for n in ("ce", "bs")) == pytest.approx(1.0)
    hist = json.loads((run / "history.json").read_text())
    assert len(hist) == 4 and out["best_epoch"] == 1 + max(range(4), key=lambda i: hist[i]["val_balanced_acc"])
    assert (run / "history.png").is_file() and (run / "summary.json").is_file()
    torch.load(run / "best_gate.pt", weights_only=True)
    # the export is made once: a second gate reuses it
    cache = tmp_path / "experts" / "ce" / "gating_logits.pt"
    stamp = cache.stat().st_mtime_ns
    again = run_gate(cfg)
    assert cache.stat().st_mtime_ns == stamp
    assert again["test_balanced_acc"] == out["test_balanced_acc"]  # same seed, same numbers
    # an expert trained on every training example is refused (the gate would see its training data)
    bad = tmp_path / "bad.yaml"
    sets = f"[optim.epochs=1, progress=false, data.root={shared_data}]"
    expert = f"{{name: a, run: {tmp_path / 'full'}, config: configs/mnist_lt.yaml, set: {sets}}}"
    bad.write_text(f"out_dir: {tmp_path / 'runs'}\nexperts:\n  - {expert}\n")
    assert_one_line_error(cli("fedanchors.gating", "--config", str(bad)), "gating_fraction")


@pytest.mark.slow
def test_federated_gate_on_ray(tmp_path, shared_data):
    """The federated gate (Flower on Ray, one client per group) over the same expert runs: the
    experts' and the oracle's metrics are the centralized ones (summed client counts)."""
    from fedanchors.cli.gating import run_gate

    central = run_gate(load_gating_config(_gate_yaml(tmp_path, shared_data, "centralized", 2)))
    fed = run_gate(load_gating_config(_gate_yaml(tmp_path, shared_data, "federated", 3)))
    for k in [k for k in central if k.startswith(("test_expert:", "test_oracle"))]:
        assert fed[k] == pytest.approx(central[k], abs=1e-12), k
    hist = json.loads((tmp_path / "runs" / "g_federated" / "history.json").read_text())
    assert len(hist) == 3 and all("train_q:head" in h for h in hist)
    q = [h["train_q:head"] for h in hist]
    assert q[0] != q[-1]  # GroupDRO's q moves with the clients' losses
    assert 0.0 <= fed["test_balanced_acc"] <= 1.0 and fed["mode"] == "federated"
