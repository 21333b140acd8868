"""The benchmark runner: per-method learning-rate selection on validation, and one real run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedanchors.benchmark import load_bench, summarize
from fedanchors.configure import load_config
from fedanchors.curves import mb_to_target, read_curve, rounds_to_fraction
from fedanchors.errors import ConfigError, DataError

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
    md, rows = summarize(results, grid_seeds=2)
    assert rows["a"]["lr"] == 0.01 and rows["b"]["lr"] == 0.1  # chosen on validation, never on test
    assert "| a | 0.01 | 2 | 0.150 ± 0.071 | 0.150 ± 0.071 |" in md
    assert rows["b"]["mb"] == [2.0]  # (sent + received) / rounds, in MB


def test_with_grid_seeds_the_learning_rate_is_chosen_on_the_first_seeds_only():
    # 0.1's first seed validates best; its later seeds (run only at the chosen lr) are worse
    results = {"a": {0.1: [_summary(0.8, 0.5), _summary(0.1, 0.4), _summary(0.1, 0.6)], 0.01: [_summary(0.7, 0.9)]}}
    md, rows = summarize(results, grid_seeds=1)
    assert rows["a"]["lr"] == 0.1 and len(rows["a"]["runs"]) == 3
    assert "| a | 0.1 | 3 | 0.500 ± 0.100 |" in md
    assert summarize(results, grid_seeds=3)[1]["a"]["lr"] == 0.01  # over every seed: 0.33 < 0.7


def test_the_table_says_which_seeds_converged():
    done = {**_summary(0.5, 0.9), "mode": "federated", "best_round": 40, "stopped_early": True, "rounds_planned": 300}
    capped = {**done, "best_round": 290, "stopped_early": False, "rounds_run": 300}
    md, _ = summarize({"a": {0.1: [done, dict(done)]}, "b": {0.1: [done, capped]}}, grid_seeds=1)
    row = {line.split(" | ")[0][2:]: line for line in md.splitlines()[2:]}
    assert row["a"].endswith("| 40.000 ± 0.000 | 2/2 |")
    assert row["b"].endswith("| 165.000 ± 176.777 | 1/2; not converged at 300 |")


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "bench").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_benchmarks_load_and_every_method_builds(path):
    spec = load_bench(str(path))
    assert len(spec["methods"]) >= 2 and spec["seeds"] == 3
    for method in spec["methods"]:
        own = spec["method_set"].get(method, [])
        cfg = load_config(REPO / spec["config"], [*spec["set"], *own, f"baseline={method}"])
        assert cfg.baseline == method and cfg.mode == "federated"
        assert cfg.federated.holdout > 0 or cfg.federated.clients == 1  # new clients wherever a group has several
        assert (cfg.data.common_input != "none") == (method == "fedavg")


@pytest.mark.slow
def test_benchmark_runs_two_methods_end_to_end(tmp_path):
    spec = tmp_path / "b.yaml"
    sets = {"federated.rounds": 1, "federated.local_steps": 1, "data.max_per_group": 100}
    sets["federated.engine"] = "inprocess"  # the harness is under test here, not Ray (tests/test_ray.py)
    lr = {"lg_fedavg": [0.003, 0.001], "fedanchors": [0.003]}
    bench = {"config": "configs/digits_fed.yaml", "methods": ["lg_fedavg", "fedanchors"], "lr": lr, "seeds": 2}
    bench["grid_seeds"] = 1  # lg_fedavg: 2 lrs at seed 0, then seed 1 at the chosen one; fedanchors: 2 runs
    spec.write_text(json.dumps({"benchmark": {**bench, "set": sets}}))
    res = subprocess.run(
        [sys.executable, "-m", "fedanchors.benchmark", "--config", str(spec), "--out", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    md = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| lg_fedavg | 0.00" in md and "| fedanchors | 0.003 | 2 |" in md
    assert len([d for d in (tmp_path / "out").iterdir() if (d / "point.json").is_file()]) == 5
    row = next(line for line in md.splitlines() if line.startswith("| lg_fedavg"))
    assert row.split(" | ")[2] == "2"  # the chosen lr's two seeds
    assert (tmp_path / "out" / "benchmark.png").is_file()


def _curve(tmp_path, name, rows):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_curve(path)


def test_curve_figures_count_training_traffic_up_to_the_first_round_that_reaches(tmp_path):
    rows = [
        {"round": 10, "acc_wg": 0.2, "bytes_sent": 9e6, "bytes_received": 1e6, "bytes_train": 4e6},
        {"round": 15, "loss": 1.0, "bytes_train": 1e6},  # a record without an evaluation: its bytes still count
        {"round": 20, "acc_wg": 0.58, "bytes_train": 2e6},
        {"round": 30, "acc_wg": 0.61, "bytes_train": 2e6},
        {"round": 40, "acc_wg": 0.5, "bytes_train": 2e6},
    ]
    curve = _curve(tmp_path, "a", rows)
    assert rounds_to_fraction(curve) == 20  # 0.58 >= 0.95 * 0.61 = 0.5795; 0.2 is not
    assert rounds_to_fraction(curve, 1.0) == 30
    assert mb_to_target(curve, 0.6) == pytest.approx(9.0)  # 4 + 1 + 2 + 2: up to round 30
    assert mb_to_target(curve, 0.7) is None
    # without bytes_train (an older run), every byte counts
    old = _curve(tmp_path, "old", [{"epoch": 1, "acc_wg": 0.7, "bytes_sent": 3e6, "bytes_received": 1e6}])
    assert mb_to_target(old, 0.6) == pytest.approx(4.0) and rounds_to_fraction(old) == 1


def test_a_corrupt_metrics_line_is_one_clear_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"round": 1, "acc_wg": 0.5}\n{"round": 2, "acc_w\n')
    with pytest.raises(DataError, match="line 2 is not JSON"):
        read_curve(path)


def test_the_table_gives_rounds_to_95_percent_and_mb_to_the_target():
    fast = [{"step": 10, "acc_wg": 0.7, "mb": 5.0}, {"step": 20, "acc_wg": 0.72, "mb": 10.0}]
    slow = [{"step": 10, "acc_wg": 0.3, "mb": 5.0}, {"step": 20, "acc_wg": 0.5, "mb": 10.0}]
    a = [{**_summary(0.72, 0.7), "curve": fast}, {**_summary(0.72, 0.7), "curve": fast}]
    b = [{**_summary(0.5, 0.5), "curve": fast}, {**_summary(0.5, 0.5), "curve": slow}]
    md, _ = summarize({"a": {0.1: a}, "b": {0.1: b}}, grid_seeds=1, target=0.7)
    assert "training MB to val acc_wg 0.7" in md.splitlines()[0]
    row = {line.split(" | ")[0][2:]: line.split(" | ") for line in md.splitlines()[2:]}
    assert row["a"][9:11] == ["10.000 ± 0.000", "5.000 ± 0.000 (2/2 reached)"]
    assert row["b"][9:11] == ["15.000 ± 7.071", "5.000 ± 0.000 (1/2 reached)"]  # the slow seed never reached 0.7
    md, _ = summarize({"b": {0.1: [b[1]]}}, grid_seeds=1, target=0.7)
    assert "| not reached (0/1 reached) |" in md


def test_method_set_reaches_its_method_only():
    spec = load_bench(str(REPO / "configs" / "bench" / "femnist_robust.yaml"))
    cfgs = {m: load_config(REPO / spec["config"], [*spec["set"], *spec["method_set"].get(m, []), f"baseline={m}"])
            for m in ("afl", "fedanchors")}  # fmt: skip
    assert cfgs["afl"].method.eta == 0.1 and cfgs["afl"].method.eta_unit == "update"  # AFL's lambda step
    assert cfgs["fedanchors"].method.eta == 1.0 and cfgs["fedanchors"].method.eta_unit == "epoch"  # as shipped


def test_a_bad_target_is_one_clear_error(tmp_path):
    spec = tmp_path / "b.yaml"
    spec.write_text(json.dumps({"benchmark": {"config": "configs/digits_fed.yaml", "target_acc_wg": 7}}))
    with pytest.raises(ConfigError, match="target_acc_wg must be a number in"):
        load_bench(str(spec))
    spec.write_text(json.dumps({"benchmark": {"config": "configs/digits_fed.yaml", "methods": ["fedavg"],
                                              "method_set": {"afl": {"method.eta": 0.1}}}}))  # fmt: skip
    with pytest.raises(ConfigError, match="method_set maps some of the methods"):
        load_bench(str(spec))
