"""Per-run curves (``plots.png``) and the overlay of several runs, matplotlib with Agg."""

from __future__ import annotations

import json
import math
from pathlib import Path

from fedanchors.errors import DataError


def read_metrics(run: Path) -> list[dict]:
    """metrics.jsonl of a run directory; missing or broken -> DataError naming it."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path} not found: {run} is not a finished fedanchors run directory")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path} is not valid JSON lines (line {e.lineno}); was the run interrupted mid-write?"
        ) from None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _x(records: list[dict]) -> tuple[list[int], str]:
    key = "round" if "round" in records[0] else "epoch"
    return [r[key] for r in records], key


def _series(records: list[dict], key: str) -> list[float]:
    return [r.get(key) if r.get(key) is not None else math.nan for r in records]


def _keys(records: list[dict], prefix: str) -> list[str]:
    return sorted({k for r in records for k in r if k.startswith(prefix)})


def plot_run(run: Path) -> Path:
    """Panels from metrics.jsonl: group accuracies, q, losses, W2 to the anchors; with a
    population, the client-level accuracy over time and its distribution at the last record."""
    records = read_metrics(run)
    plt = _pyplot()
    x, xlabel = _x(records)
    clients = any(r.get("client_accs") for r in records)
    fig, ax = plt.subplots(2, 3 if clients else 2, figsize=(16 if clients else 11, 7.5))
    a = ax[0, 0]
    for k in _keys(records, "acc_group:"):
        a.plot(x, _series(records, k), marker=".", label=k.split(":", 1)[1])
    a.plot(x, _series(records, "acc_wg"), "k-", lw=2.5, label="worst group")
    a.plot(x, _series(records, "acc_bal"), "k:", lw=1.5, label="balanced")
    a.set(title="validation accuracy per group", ylabel="accuracy")
    a = ax[0, 1]
    for k in _keys(records, "q:"):
        a.plot(x, _series(records, k), marker=".", label=k.split(":", 1)[1])
    a.set(title="GroupDRO weights q", ylabel="q", ylim=(0, 1))
    a = ax[1, 0]
    for k, style in (("loss", "-"), ("fit", "--"), ("sep", ":")):
        if any(k in r for r in records):
            a.plot(x, _series(records, k), style, marker=".", label={"loss": "weighted CE"}.get(k, k))
    a.set(title="training losses (weighted CE, W2 fit, separation)", yscale="log")
    a = ax[1, 1]
    for prefix, split in (("w2_anchor:", "val"), ("w2_anchor_train:", "train")):
        for k in _keys(records, prefix):
            a.plot(x, _series(records, k), marker=".", label=f"{k.split(':', 1)[1]} ({split})")
    a.set(title="W2^2 between anchors and each group's class Gaussians", yscale="log")
    if clients:
        _client_panels(ax[0, 2], ax[1, 2], records, x)
    for a in ax.flat:
        if a.get_xlabel():
            continue
        a.set_xlabel(xlabel)
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.suptitle(run.name)
    fig.tight_layout()
    path = run / "plots.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _client_panels(curves, hist, records: list[dict], x: list[int]) -> None:
    """Worst, 10th-percentile and mean client accuracy per record; the histogram of every
    client's accuracy at the last record that has them."""
    mean = [
        sum(a for a in r["client_accs"] if a is not None) / max(1, sum(a is not None for a in r["client_accs"]))
        if r.get("client_accs")
        else math.nan
        for r in records
    ]
    curves.plot(x, _series(records, "client_acc_worst"), "k-", marker=".", label="worst client")
    curves.plot(x, _series(records, "client_acc_p10"), "C3-", marker=".", label="10th percentile")
    curves.plot(x, mean, "C0--", label="mean client")
    curves.set(title="client-level validation accuracy", ylabel="accuracy")
    last = next(r for r in reversed(records) if r.get("client_accs"))
    accs = [a for a in last["client_accs"] if a is not None]
    hist.hist(accs, bins=20, range=(0, 1), color="C0")
    hist.set(title=f"client accuracies, last record ({len(accs)} clients)", xlabel="accuracy", ylabel="clients")


def plot_overlay(runs: list[Path], out: Path) -> Path:
    """Validation worst-group (solid) and overall (dashed) accuracy of several runs on one chart."""
    plt = _pyplot()
    fig, a = plt.subplots(figsize=(8, 5))
    for i, run in enumerate(runs):
        records = read_metrics(run)
        x, xlabel = _x(records)
        colour = f"C{i}"
        a.plot(x, _series(records, "acc_wg"), "-", color=colour, marker=".", label=f"{run.name}: worst group")
        a.plot(x, _series(records, "acc_all"), "--", color=colour, label=f"{run.name}: overall")
    a.set(xlabel="epoch / round", ylabel="validation accuracy", title="runs compared")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
