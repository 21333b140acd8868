"""Client-level differential privacy: the clipping bounds, the noise's calibration, the
accountant against dp-accounting's own computation, moments that survive the noise, the
budget, the bad inputs, and a real federated round where the server sees only releases."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from fedanchors.config_sections import PrivacyConfig
from fedanchors.errors import ConfigError
from fedanchors.moments import class_sufficient_stats
from fedanchors.privacy import add_noise, client_release, clip_rows, group_estimate, noise_generator, sum_releases

from .conftest import REPO, small_config
from .flower_harness import run_rounds

P = PrivacyConfig(enabled=True, noise_multiplier=1.0, clip_update=0.5, clip_code=2.0, clip_loss=4.0, seeded_noise=True)


def _codes(gen, n, d=3, scale=10.0):
    return torch.randn(n, d, generator=gen, dtype=torch.float64) * scale


def test_clipping_bounds_hold_and_every_block_has_norm_at_most_one():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        z = clip_rows(_codes(gen, 40), P.clip_code)
        assert float(z.norm(dim=1).max()) <= P.clip_code + 1e-9
        y = torch.randint(0, 4, (40,), generator=gen)
        update = torch.randn(30, generator=gen, dtype=torch.float64) * 100
        rel = client_release(update, class_sufficient_stats(z, y, 4), 40, 17.0, P)
        assert set(rel) == {"update", "counts", "sums", "outer", "loss"}
        for k, v in rel.items():
            assert float(v.norm()) <= 1 + 1e-9, k
        assert float(rel["loss"]) == 1.0  # 17 clipped to clip_loss = 4, over 4
    inside = torch.tensor([[0.3, 0.4, 0.0]], dtype=torch.float64)
    assert torch.equal(clip_rows(inside, 2.0), inside)  # a code inside the bound is unchanged


def test_the_release_is_the_normalised_statistics_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # inside B = 2
    y = torch.tensor([0, 1, 1])
    rel = client_release(None, class_sufficient_stats(z, y, 2), 3, 2.0, P)
    assert rel["counts"].tolist() == pytest.approx([1 / 3, 2 / 3])
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    assert torch.allclose(rel["sums"], t([[1 / 6, 0.0], [1 / 6, 2 / 6]]))  # sum z / (n B)
    assert torch.allclose(rel["outer"][1], t([[1 / 12, 1 / 12], [1 / 12, 2 / 12]]))  # sum zz^T / (n B^2)
    assert float(rel["loss"]) == 0.5 and "update" not in rel


def test_the_noise_has_the_calibrated_standard_deviation():
    zero = {"a": torch.zeros(20000, dtype=torch.float64), "b": torch.zeros(100, 100, dtype=torch.float64)}
    for std in (0.3, 2.5):
        noisy = add_noise(zero, std, noise_generator(P, 0, "t", std))
        x = torch.cat([v.reshape(-1) for v in noisy.values()])
        se = std / math.sqrt(2 * x.numel())  # the sample standard deviation's standard error
        assert abs(float(x.std()) - std) < 4 * se and abs(float(x.mean())) < 4 * std / math.sqrt(x.numel())
    a = add_noise(zero, 1.0, noise_generator(P, 0, "k"))["a"]
    assert torch.equal(a, add_noise(zero, 1.0, noise_generator(P, 0, "k"))["a"])  # seeded_noise: repeats
    q = PrivacyConfig(enabled=True, noise_multiplier=1.0)  # the default: from the OS, never the same
    assert not torch.equal(add_noise(zero, 1.0, noise_generator(q, 0, "k"))["a"], a)


def test_noisy_moments_stay_finite_and_positive_definite_over_1000_rounds():
    gen = torch.Generator().manual_seed(1)
    C, d, eps = 3, 4, 1e-4
    for rnd in range(1000):
        clients = []
        for _ in range(3):  # tiny clients: 1-4 codes, some classes absent
            n = int(torch.randint(1, 5, (1,), generator=gen))
            z = clip_rows(_codes(gen, n, d), P.clip_code)
            clients.append(
                client_release(None, class_sufficient_stats(z, torch.randint(0, C, (n,), generator=gen), C), n, 1.0, P)
            )
        std = [0.01, 1.0, 50.0][rnd % 3]
        total = add_noise(sum_releases(clients), std, noise_generator(P, 0, "m", rnd))
        est = group_estimate(total, 3, P, std, eps)
        assert bool((est["counts"] >= 0).all()) and 0 <= float(est["loss"]) <= P.clip_loss
        for k in ("means", "covs"):
            assert bool(torch.isfinite(est[k]).all()), (rnd, k)
        assert float(est["means"].norm(dim=1).max()) <= P.clip_code + 1e-9
        assert float(torch.linalg.eigvalsh(est["covs"]).min()) >= eps * (1 - 1e-6), rnd


def test_the_accountant_equals_dp_accountings_own_computation(tmp_path):
    from dp_accounting import dp_event, rdp
    from dp_accounting.privacy_accountant import NeighboringRelation

    from server.privacy import accounting, epsilon, noise_for

    cfg = small_config(
        tmp_path, mode="federated", federated={"clients_per_round": 10, "sampling": "uniform"},
        privacy={"enabled": True, "noise_multiplier": 1.1, "delta": 1e-5},
    )  # fmt: skip
    acc = accounting(cfg, 100)
    ours = epsilon(cfg, acc, 1.1, 50)
    ref = rdp.RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    ref.compose(dp_event.SampledWithoutReplacementDpEvent(100, 10, dp_event.GaussianDpEvent(1.1)), 50)
    assert ours == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    everyone = small_config(tmp_path, mode="federated", privacy={"enabled": True, "noise_multiplier": 2.0})
    plain = rdp.RdpAccountant()
    plain.compose(dp_event.GaussianDpEvent(2.0), 30)
    assert epsilon(everyone, accounting(everyone, 100), 2.0, 30) == pytest.approx(plain.get_epsilon(1e-5), rel=1e-9)
    z = noise_for(small_config(tmp_path, mode="federated", privacy={"enabled": True, "target_epsilon": 4.0},
                               federated={"clients_per_round": 10, "sampling": "uniform"}), acc, 50)  # fmt: skip
    assert epsilon(cfg, acc, z, 50) <= 4.0 < epsilon(cfg, acc, z * 0.99, 50)


@pytest.mark.parametrize(
    ("privacy", "federated", "key"),
    [
        ({"target_epsilon": -1.0}, {}, "privacy.target_epsilon"),
        ({}, {}, "privacy.target_epsilon"),  # neither a target nor a noise multiplier
        ({"target_epsilon": 4.0, "delta": 1.5}, {}, "privacy.delta"),
        ({"target_epsilon": 4.0, "clip_code": 0.0}, {}, "privacy.clip_code"),
        ({"target_epsilon": 4.0, "clip_update": -1.0}, {}, "privacy.clip_update"),
        ({"target_epsilon": 4.0}, {"clients_per_round": 1}, "federated.sampling"),
        ({"target_epsilon": 4.0, "noise": "both"}, {}, "privacy.noise"),
    ],
)
def test_bad_privacy_settings_are_one_line(tmp_path, privacy, federated, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        small_config(tmp_path, mode="federated", privacy={"enabled": True, **privacy}, federated=federated)


def test_a_budget_the_rounds_would_exceed_stops_before_training(tmp_path):
    out = tmp_path / "runs"
    sets = ["mode=federated", "federated.rounds=200", "privacy.enabled=true", "privacy.noise_multiplier=0.5",
            "privacy.target_epsilon=1.0", f"out_dir={out}"]  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-m", "fedanchors.simulate", "--config", "configs/digits_fed.yaml",
         *[a for s in sets for a in ("--set", s)]],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "privacy.target_epsilon=1" in r.stderr and "run at most" in r.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing written


@pytest.mark.parametrize("noise", ["central", "local"])
def test_a_private_round_sends_only_bounded_releases(tmp_path, noise):
    cfg = small_config(
        tmp_path, mode="federated",
        federated={"rounds": 3, "local_steps": 2, "clients": 3, "clients_per_round": 4, "sampling": "uniform"},
        privacy={"enabled": True, "target_epsilon": 8.0, "noise": noise, "seeded_noise": True},
    )  # fmt: skip
    server, grid, summary = run_rounds(cfg, 6)
    train = [m for m in grid.received if "private" in m.content.array_records]
    assert len(train) == 3 * 4
    for m in train:  # nothing but the release and who sent it: no head, no moments, no loss in the clear
        assert set(m.content.array_records) == {"private"}
        assert set(m.content["metrics"]) == {"partition", "num-examples"}
    assert 0 < summary["privacy_epsilon"] <= 8.0 and summary["privacy_noise_multiplier"] > 0
    assert 0 <= summary["test_acc_wg"] <= 1
    for v in server.head.state_dict().values():
        assert bool(torch.isfinite(v).all())
    assert bool(torch.isfinite(server.anchors.means).all())


def test_a_diverged_private_round_stops_as_a_divergence(tmp_path):
    from fedanchors.errors import Diverged

    cfg = small_config(
        tmp_path, mode="federated", federated={"rounds": 2, "local_steps": 3},
        optim={"lr": 1e8, "name": "sgd", "grad_clip": 0.0},
        privacy={"enabled": True, "noise_multiplier": 1.0, "seeded_noise": True},
    )  # fmt: skip
    with pytest.raises(Diverged, match="all replies non-finite"):  # not "0 client replies": every block was sent
        run_rounds(cfg, 2)
