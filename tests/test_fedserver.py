"""The federated server's core without Flower: a round planned and aggregated from parsed
updates, in a process where flwr is never imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import math, sys
    import numpy as np, torch
    from fedanchors.configure import from_dict
    from fedanchors.config import Config, to_dict
    from fedanchors.fedserver import ClientUpdate, ServerCore

    raw = to_dict(Config())
    raw.update(name="t", out_dir=sys.argv[1], progress=False)
    raw["model"].update(latent_dim=4, encoder={"kind": "mlp", "hidden": 8})
    raw["method"].update(name="groupdro", eta=0.5, encoder_weighting="q")
    raw["anchors"].update(lambda_sep=0.0)
    cfg = from_dict(raw)
    core = ServerCore(cfg, 3, 10)
    info = [
        {"group": "a", "gi": 0, "space": "px8", "shape": (1, 8, 8), "meta": {}, "n": 30, "class_counts": [3] * 10},
        {"group": "a", "gi": 0, "space": "px8", "shape": (1, 8, 8), "meta": {}, "n": 10, "class_counts": [1] * 10},
        {"group": "b", "gi": 1, "space": "px16", "shape": (1, 16, 16), "meta": {}, "n": 20, "class_counts": [2] * 10},
    ]
    core.setup(info)
    assert core.names == ["a", "b"] and set(core.encoders) == {"px8"}  # two clients share px8's encoder
    config = core.plan_round(1)
    assert core.sampled == [0, 1, 2]
    # GroupDRO starts at q = (1/2, 1/2): group a's half split 3:1 over its clients by examples
    assert core.weights.tolist() == [0.375, 0.125, 0.5]
    assert config["encoder_shared"] == [True, True, False]
    assert config["encoder_scale"][:2] == [0.5, 0.5]  # px8's holders' total weight
    head = core.head.state_dict()
    d = core.anchors.means.shape[1]
    def stats(v):
        return {"counts": np.full(10, 4.0), "means": np.full((10, d), v, np.float32),
                "covs": np.tile(np.eye(d, dtype=np.float32), (10, 1, 1))}
    enc = core.encoders["px8"].state_dict()
    updates = [
        ClientUpdate(p, {"loss": loss, "fit": 0.0}, {k: torch.full_like(v, h) for k, v in head.items()},
                     {k: v.clone() for k, v in enc.items()} if p < 2 else None, stats(float(p)))
        for p, (loss, h) in enumerate([(1.0, 1.0), (3.0, 2.0), (2.0, 4.0)])
    ]
    rec = core.aggregate_round(1, updates)
    want = 0.375 * 1.0 + 0.125 * 2.0 + 0.5 * 4.0  # FedAvg's weighted mean of the heads
    for v in core.head.state_dict().values():
        assert torch.allclose(v, torch.full_like(v, want), atol=1e-6), v
    # group a's loss: its clients' example-weighted mean (30 * 1 + 10 * 3) / 40 = 1.5
    assert rec["loss"] == 0.5 * 1.5 + 0.5 * 2.0
    a, b = 0.5 * math.exp(0.5 * 1.5), 0.5 * math.exp(0.5 * 2.0)
    assert torch.allclose(core.method.q, torch.tensor([a / (a + b), b / (a + b)], dtype=core.method.q.dtype))
    m = {"test_correct": [1] * 10, "test_total": [2] * 10, "test_loss": 1.0}
    got = core.evaluation_metrics([(0, m), (2, m)], ("test",))  # client 1 missing: group a not whole
    assert got["complete"] is False and math.isnan(got["test"]["acc_wg"])
    got = core.evaluation_metrics([(0, m), (1, m), (2, m)], ("test",))
    assert got["complete"] and got["test"]["acc_wg"] == 0.5
    assert "flwr" not in sys.modules, sorted(k for k in sys.modules if k.startswith("flwr"))
    print("ok")
    """
)


def test_server_core_runs_a_round_without_flower(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
