"""Sweeps: every point runs once into a hash-named directory; the table pools seeds."""

from __future__ import annotations

import json
import statistics

import pytest

from fedanchors import sweep
from fedanchors.config import save_config
from tests.conftest import data_config, small_config


@pytest.mark.slow
def test_sweep_runs_each_point_once_and_tabulates(tmp_path, capsys):
    cfg = small_config(tmp_path, optim={"epochs": 2})
    save_config(cfg, tmp_path / "base.yaml")
    args = ["--config", str(tmp_path / "base.yaml"), "--grid", "optim.lr=0.01,0.001"]
    args += ["--grid", "method.name=erm,groupdro", "--seeds", "2", "--out", str(tmp_path / "sw")]
    assert sweep.main(args) == 0
    first = capsys.readouterr()
    dirs = sorted(p for p in (tmp_path / "sw").iterdir() if p.is_dir())
    assert len(dirs) == 8 and all((d / "done").is_file() for d in dirs)
    assert "8 point(s) run, 0 skipped" in first.err

    assert sweep.main(args) == 0  # the relaunch runs nothing new
    second = capsys.readouterr()
    assert "0 point(s) run, 8 skipped" in second.err
    assert second.out == first.out
    assert len([p for p in (tmp_path / "sw").iterdir() if p.is_dir()]) == 8

    # the table: one row per grid point, mean and std over its two seeds, best first
    by_point: dict[str, list[dict]] = {}
    for d in dirs:
        overrides = json.loads((d / "point.json").read_text())
        key = " ".join(o for o in overrides if not o.startswith("seed="))
        by_point.setdefault(key, []).append(json.loads((d / "summary.json").read_text()))
    assert all(len(v) == 2 for v in by_point.values()) and len(by_point) == 4
    rows = [line for line in first.out.splitlines() if line.startswith("| optim.lr")]
    expected = sorted(
        ((statistics.mean(r["best_val_acc_wg"] for r in runs), key, runs) for key, runs in by_point.items()),
        key=lambda t: (-t[0], t[1]),
    )
    assert len(rows) == 4
    for row, (mean, key, runs) in zip(rows, expected):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == key and cells[1] == "2" and cells[2] == "0"
        std = statistics.stdev(r["best_val_acc_wg"] for r in runs)
        assert cells[3] == f"{mean:.4f} ± {std:.4f}"
        test_mean = statistics.mean(r["test_acc_wg"] for r in runs)
        assert cells[4].startswith(f"{test_mean:.4f}")


def test_sweep_rejects_a_bad_grid_before_running(tmp_path, capsys):
    cfg = small_config(tmp_path)
    save_config(cfg, tmp_path / "base.yaml")
    code = sweep.main(
        ["--config", str(tmp_path / "base.yaml"), "--grid", "optim.lrr=0.1,0.2", "--out", str(tmp_path / "sw")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "optim.lrr" in err[0] and "optim.lr" in err[0]
    assert not any((tmp_path / "sw").glob("*/done"))


def test_a_point_that_diverges_is_recorded_failed_and_the_sweep_goes_on(tmp_path, capsys):
    """A diverging point (lr 100) is an outcome of the study, not an error of the sweep: it
    is marked failed with its reason, counted in the table, and not rerun on a relaunch."""
    cfg = small_config(tmp_path, optim={"epochs": 2})
    save_config(cfg, tmp_path / "base.yaml")
    args = ["--config", str(tmp_path / "base.yaml"), "--grid", "optim.lr=100,0.01", "--out", str(tmp_path / "sw")]
    assert sweep.main(args) == 0
    out = capsys.readouterr()
    failed = [d for d in (tmp_path / "sw").iterdir() if (d / "failed").is_file()]
    done = [d for d in (tmp_path / "sw").iterdir() if (d / "done").is_file()]
    assert len(failed) == 1 and len(done) == 1
    assert (failed[0] / "failed").read_text().startswith("Diverged: training diverged")
    assert "failed: Diverged: training diverged" in out.err
    row = next(x for x in out.out.splitlines() if x.startswith("| optim.lr=100 "))
    assert [c.strip() for c in row.strip("|").split("|")][1:3] == ["1", "1"]
    assert sweep.main(args) == 0
    assert "0 point(s) run, 2 skipped" in capsys.readouterr().err


def test_a_new_default_setting_keeps_the_points_and_a_changed_one_reruns(tmp_path, monkeypatch, capsys):
    """A point's hash covers only the settings that differ from the defaults: a release that
    adds a setting at its default finds the finished points. A point whose recorded settings
    disagree with the config now (a default that changed) is set aside and runs again."""
    from fedanchors.cli import sweep as cli_sweep
    from fedanchors.configure import replace

    cfg = small_config(tmp_path, optim={"epochs": 1})
    assert "optim.schedule" not in cli_sweep.changed_settings(cfg)  # at its default: not hashed
    moved = replace(cfg, ["optim.schedule=cosine"])
    assert cli_sweep.changed_settings(moved)["optim.schedule"] == "cosine"
    pts = [cli_sweep.points(c, {"optim.lr": [0.01]}, 1, ["centralized"])[0]["hash"] for c in (cfg, moved)]
    assert pts[0] != pts[1]

    save_config(cfg, tmp_path / "base.yaml")
    args = ["--config", str(tmp_path / "base.yaml"), "--grid", "optim.lr=0.01", "--out", str(tmp_path / "sw")]
    assert sweep.main(args) == 0
    (point,) = [d for d in (tmp_path / "sw").iterdir() if d.is_dir()]
    settings = json.loads((point / "settings.json").read_text())
    assert settings["optim.lr"] == 0.01 and settings["optim.epochs"] == 1
    capsys.readouterr()
    # a finished point from a release before optim.schedule: its record lacks the key, and it is kept
    del settings["optim.schedule"]
    (point / "settings.json").write_text(json.dumps(settings))
    assert sweep.main(args) == 0
    assert "0 point(s) run, 1 skipped" in capsys.readouterr().err
    # the same point recorded under another value of a setting (a default that changed since)
    settings["optim.weight_decay"] = 0.5
    (point / "settings.json").write_text(json.dumps(settings))
    assert sweep.main(args) == 0
    err = capsys.readouterr().err
    assert "ran with another optim.weight_decay; set aside and run again" in err and "1 point(s) run" in err
    assert (tmp_path / "sw" / f"{point.name}-stale-1" / "summary.json").is_file()  # kept, not lost
    assert json.loads((point / "settings.json").read_text())["optim.weight_decay"] != 0.5


def test_group_specs_are_hashed_and_checked_without_their_defaults(tmp_path):
    """A group spec counts in a point's hash and record with only the fields it sets, so a
    release that adds a group field at its default finds the finished points (recorded in
    full before, they still match); a recorded group that differs is stale."""
    import dataclasses

    from fedanchors.cli import sweep as cli_sweep
    from fedanchors.configure import replace

    groups = [
        {"name": "hi", "source": "uci_digits", "fraction": 0.8},
        {"name": "lo", "source": "uci_digits", "resize": 4},
    ]
    cfg = dataclasses.replace(small_config(tmp_path), data=data_config(groups))
    assert cli_sweep.changed_settings(cfg)["data.groups"] == groups  # only what was written
    d = tmp_path / "point"
    d.mkdir()
    full = json.loads(json.dumps([dataclasses.asdict(g) for g in cfg.data.groups]))
    assert "greyscale" in full[0] and "clients" in full[1]  # every field, as recorded before
    record = cli_sweep.flat_settings(cfg) | {"data.groups": full}
    (d / "settings.json").write_text(json.dumps(record))
    assert cli_sweep.stale_setting(d, cfg) is None
    assert cli_sweep.stale_setting(d, replace(cfg, ["optim.lr=0.5"])) == "optim.lr"
    for change in ({"resize": 6}, {"nonsense": 1}):  # another value; a field this release cannot read
        record["data.groups"] = [full[0], full[1] | change]
        (d / "settings.json").write_text(json.dumps(record))
        assert cli_sweep.stale_setting(d, cfg) == "data.groups"
