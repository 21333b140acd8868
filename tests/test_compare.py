"""compare and plots on small real run directories."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedanchors.compare import compare, row
from fedanchors.errors import DataError
from fedanchors.simulate import run

from .conftest import REPO, small_config


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDANCHORS_PLOTS", "1")  # the runs' own figures are checked below
        a = run(small_config(tmp, name="a", optim={"epochs": 2}))
        b = run(small_config(tmp, name="b", seed=1, method={"name": "erm"}, optim={"epochs": 3}))
    return [tmp / "runs" / "a", tmp / "runs" / "b"], (a, b)


def test_rows_match_the_run_files(two_runs):
    (ra, rb), (sa, sb) = two_runs
    for rdir, summary, epochs in ((ra, sa, 2), (rb, sb, 3)):
        records = [json.loads(line) for line in (rdir / "metrics.jsonl").read_text().splitlines()]
        assert len(records) == epochs
        r = row(rdir)
        assert r["run"] == rdir.name and r["mode"] == "centralized"
        assert r["final acc_wg"] == records[-1]["acc_wg"]
        assert r["best acc_wg"] == max(x["acc_wg"] for x in records)
        assert r["test_acc_wg"] == summary["test_acc_wg"] and r["device"] == "cpu"
        assert (rdir / "plots.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_writes_table_and_png(two_runs, tmp_path):
    runs, _ = two_runs
    md, png = compare(runs, tmp_path / "report.md")
    lines = md.splitlines()
    assert lines[0].startswith("| run | mode | final acc_all |") and len(lines) == 4
    assert lines[2].startswith("| a | centralized |") and lines[3].startswith("| b | centralized |")
    assert "test_acc_group:digits8" in lines[0]
    assert png == tmp_path / "compare.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert md in (tmp_path / "report.md").read_text()


def test_missing_files_give_one_line_error(two_runs, tmp_path):
    runs, _ = two_runs
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.jsonl").write_text((runs[0] / "metrics.jsonl").read_text())
    with pytest.raises(DataError, match="summary.json not found"):
        row(broken)
    res = subprocess.run(
        [sys.executable, "-m", "fedanchors.compare", str(runs[0]), str(broken)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "broken/summary.json" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "fedanchors.compare", str(tmp_path / "nope")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "not found" in res.stderr and "Traceback" not in res.stderr


def test_runs_with_other_metric_definitions_are_not_put_side_by_side(two_runs, tmp_path):
    """A run written before the metric keys got one definition (no metrics_version) is refused."""
    import shutil

    runs, _ = two_runs
    old = tmp_path / "old"
    shutil.copytree(runs[1], old)
    summary = json.loads((old / "summary.json").read_text())
    assert summary.pop("metrics_version") == 2
    (old / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(DataError, match=r"define their metric keys differently .*v2.*v1"):
        compare([runs[0], old], tmp_path / "report.md")
