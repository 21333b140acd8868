"""The benchmark runner: per-method learning-rate selection on validation, and one real run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedanchors.benchmark import summarize

from .conftest import REPO


def _summary(val, test, mb_rounds=(1e6, 1e6, 2)):
    sent, received, rounds = mb_rounds
    return {"best_val_acc_wg": val, "test_acc_wg": test, "test_acc_all": test, "bytes_sent": sent,
            "bytes_received": received, "rounds_run": rounds}  # fmt: skip


def test_each_method_reports_its_best_validation_learning_rate():
    results = {
        "a": {0.1: [_summary(0.5, 0.9), _summary(0.6, 0.9)], 0.01: [_summary(0.7, 0.1), _summary(0.7, 0.2)]},
        "b": {0.1: [_summary(0.9, 0.4, (2e6, 2e6, 2))]},
    }
    md, rows = summarize(results)
    assert rows["a"]["lr"] == 0.01 and rows["b"]["lr"] == 0.1  # chosen on validation, never on test
    assert "| a | 0.01 | 2 | 0.150 ± 0.071 | 0.150 ± 0.071 |" in md
    assert rows["b"]["mb"] == [2.0]  # (sent + received) / rounds, in MB


@pytest.mark.slow
def test_benchmark_runs_two_methods_end_to_end(tmp_path):
    spec = tmp_path / "b.yaml"
    sets = {"federated.rounds": 1, "federated.local_steps": 1, "data.max_per_group": 100, "federated.num_cpus": 0.5}
    bench = {"config": "configs/digits_fed.yaml", "methods": ["lg_fedavg", "fedanchors"], "lr": [0.003], "seeds": 1}
    spec.write_text(json.dumps({"benchmark": {**bench, "set": sets}}))
    res = subprocess.run(
        [sys.executable, "-m", "fedanchors.benchmark", "--config", str(spec), "--out", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    md = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| lg_fedavg | 0.003 | 1 |" in md and "| fedanchors | 0.003 | 1 |" in md
    assert (tmp_path / "out" / "benchmark.png").is_file()
