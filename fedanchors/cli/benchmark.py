"""Methods side by side: ``python -m fedanchors.benchmark --config configs/bench/<name>.yaml``.

A benchmark file names a run config, the baselines to compare (``fedanchors.baselines``), a
learning-rate grid and the seeds::

    benchmark:
      config: configs/digits_3way_fed.yaml
      methods: [fedavg, lg_fedavg, fedproto, flic_like, fedanchors]
      lr: [0.003, 0.001]        # or per method: {fedavg: [0.01, 0.003], ...}
      seeds: 3
      grid_seeds: 1             # optional: choose the lr on the first seed(s) only, then run
                                # the other seeds at the chosen lr (default: every seed)
      set: {federated.clients: 10, federated.holdout: 0.2}
      target_acc_wg: 0.6        # optional: the validation acc_wg the "MB to" column counts to
      method_set: {afl: {method.eta: 0.01}}   # optional: settings for one method only

Every (method, lr, seed) is a point of ``fedanchors.sweep`` (its own directory, skipped when
done, resumed when interrupted). Each method's learning rate is the one with the best mean
validation ``acc_wg`` over the grid seeds (every seed unless ``grid_seeds`` says fewer); the
table reports that learning rate's test metrics as mean ± std over seeds (``benchmark.md``)
and ``benchmark.png`` plots test ``acc_wg`` against the MB communicated per round. The table
also gives each method's best (selected) round and how many seeds stopped on patience
(``optim.patience``); a seed that ran to the cap is reported "not converged at R". From each
run's validation curve (``fedanchors.curves``) it adds the rounds to 95% of the run's own best
validation acc_wg and the training MB (sent + received, evaluation left out) spent to reach
``target_acc_wg``, over the seeds that reached it ("k/n reached").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fedanchors.baselines import BASELINES
from fedanchors.cli.sweep import _stats, points, run_point
from fedanchors.config import read_yaml
from fedanchors.configure import load_config
from fedanchors.curves import mb_to_target, read_curve, rounds_to_fraction
from fedanchors.errors import ConfigError, FedAnchorsError

KEYS = {"config", "methods", "lr", "seeds", "grid_seeds", "set", "target_acc_wg", "method_set"}
COLUMNS = [
    ("test acc_all", "test_acc_all"),
    ("test acc_wg", "test_acc_wg"),
    ("worst client", "test_client_acc_worst"),
    ("10th-pct client", "test_client_acc_p10"),
    ("new clients acc_all", "test_new_acc_all"),
]


def load_bench(path: str) -> dict:
    raw = read_yaml(path).get("benchmark")
    if not isinstance(raw, dict) or "config" not in raw:
        raise ConfigError(f"{path}: needs a 'benchmark:' section with at least 'config'")
    unknown = set(raw) - KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown benchmark key(s) {sorted(unknown)} (valid: {', '.join(sorted(KEYS))})")
    methods = list(raw.get("methods") or BASELINES)
    bad = [m for m in methods if m not in BASELINES]
    if bad:
        raise ConfigError(f"{path}: unknown method(s) {bad}; valid: {', '.join(BASELINES)}")
    lr = raw.get("lr") or []
    lrs = {m: list(lr.get(m, [])) if isinstance(lr, dict) else list(lr) for m in methods}
    sets = _sets(raw.get("set"))
    per = raw.get("method_set") or {}
    if not isinstance(per, dict) or set(per) - set(methods) or not all(isinstance(v, dict) for v in per.values()):
        raise ConfigError(f"{path}: method_set maps some of the methods {methods} to settings, got {per!r}")
    seeds = int(raw.get("seeds", 1))
    grid_seeds = int(raw.get("grid_seeds", seeds))
    if not 1 <= grid_seeds <= seeds:
        raise ConfigError(f"{path}: grid_seeds must be between 1 and seeds ({seeds}), got {grid_seeds}")
    target = raw.get("target_acc_wg")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1):
        raise ConfigError(f"{path}: target_acc_wg must be a number in (0, 1], got {target!r}")
    return {
        "config": raw["config"], "methods": methods, "lrs": lrs, "seeds": seeds, "grid_seeds": grid_seeds, "set": sets,
        "target": None if target is None else float(target), "method_set": {m: _sets(v) for m, v in per.items()},
    }  # fmt: skip


def _sets(raw: dict | None) -> list[str]:
    return [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in (raw or {}).items()]


def _cell(xs: list) -> str:
    m, s = _stats(xs)
    return "n/a" if m != m else f"{m:.3f} ± {s:.3f}"


def choose_lr(by_lr: dict[float, list[dict]], grid_seeds: int) -> float:
    """The learning rate whose first ``grid_seeds`` runs have the best mean validation acc_wg."""
    return max(by_lr, key=lambda v: _stats([r.get("best_val_acc_wg") for r in by_lr[v][:grid_seeds]])[0])


def speed_cells(runs: list[dict], target: float | None) -> tuple[str, str]:
    """Rounds to 95% of each run's own best validation acc_wg; training MB to ``target``
    over the runs that reached it. From the curves ``_run`` attached ("n/a" without)."""
    curves = [r["curve"] for r in runs if r.get("curve")]
    if not curves:
        return "n/a", "n/a"
    to95 = _cell([rounds_to_fraction(c) for c in curves])
    if target is None:
        return to95, "n/a"
    mb = [mb_to_target(c, target) for c in curves]
    hit = [m for m in mb if m is not None]
    return to95, f"{_cell(hit) if hit else 'not reached'} ({len(hit)}/{len(curves)} reached)"


def summarize(
    results: dict[str, dict[float, list[dict]]], grid_seeds: int, target: float | None = None
) -> tuple[str, dict]:
    """Per method, the chosen learning rate's runs (every seed); the table and the rows."""
    rows = {}
    for method, by_lr in results.items():
        lr = choose_lr(by_lr, grid_seeds)
        runs = by_lr[lr]
        mb = [(r.get("bytes_sent", 0) + r.get("bytes_received", 0)) / 1e6 / max(1, r.get("rounds_run", 0))
              for r in runs]  # fmt: skip
        rows[method] = {"lr": lr, "runs": runs, "mb": mb}
    to = f"training MB to val acc_wg {target:g}" if target is not None else "training MB to target"
    head = "| method | lr | seeds | " + " | ".join(c for c, _ in COLUMNS) + " | MB per round | rounds to 95% of best"
    lines = [head + f" | {to} | best round | converged |", "|" + "---|" * (len(COLUMNS) + 8)]
    for method, r in rows.items():
        cells = [_cell([x.get(k) for x in r["runs"]]) for _, k in COLUMNS]
        unit = "round" if r["runs"][0].get("mode") == "federated" else "epoch"
        best = _cell([x.get(f"best_{unit}") for x in r["runs"]])
        to95, mb_to = speed_cells(r["runs"], target)
        lines.append(
            f"| {method} | {r['lr']:g} | {len(r['runs'])} | " + " | ".join(cells)
            + f" | {_cell(r['mb'])} | {to95} | {mb_to} | {best} | {converged(r['runs'], unit)} |"
        )  # fmt: skip
    return "\n".join(lines) + "\n", rows


def converged(runs: list[dict], unit: str) -> str:
    """How many seeds stopped on patience (validation acc_wg flat for ``optim.patience``); the
    others ran to their cap and are reported "not converged at R"."""
    done = sum(bool(r.get("stopped_early")) for r in runs)
    if done == len(runs):
        return f"{done}/{len(runs)}"
    caps = sorted({r.get(f"{unit}s_planned", r.get(f"{unit}s_run")) for r in runs if not r.get("stopped_early")})
    return f"{done}/{len(runs)}; not converged at {', '.join(str(c) for c in caps)}"


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, r in rows.items():
        acc = _stats([x.get("test_acc_wg") for x in r["runs"]])
        mb = _stats(r["mb"])
        ax.errorbar(mb[0], acc[0], xerr=mb[1], yerr=acc[1], fmt="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("MB per round (sent + received)")
    ax.set_ylabel("test acc_wg (mean ± std over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _run(method: str, base, pts: list[dict], out: Path, by_lr: dict[float, list[dict]]) -> None:
    for pt in pts:
        summary = run_point(base, pt, out)
        metrics = out / pt["hash"] / "metrics.jsonl"
        if metrics.is_file() and "failed" not in summary:
            summary["curve"] = read_curve(metrics)
        lr = float(next(o for o in pt["overrides"] if o.startswith("optim.lr=")).split("=")[1])
        by_lr.setdefault(lr, []).append(summary)
        state = "skipped (done)" if summary["skipped"] else "ran"
        print(f"{method} {pt['hash']} {' '.join(pt['overrides'])}: {state}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("WANDB_MODE", "offline")
    p = argparse.ArgumentParser(prog="python -m fedanchors.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="a benchmark file with a 'benchmark:' section")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="benchmark directory (default <out_dir>/benchmark-<name>)")
    args = p.parse_args(argv)
    try:
        spec = load_bench(args.config)
        name = Path(args.config).stem
        results: dict[str, dict[float, list[dict]]] = {}
        out = None
        for method in spec["methods"]:
            own = spec["method_set"].get(method, [])
            base = load_config(
                spec["config"], [*spec["set"], *own, *args.overrides, f"baseline={method}", f"name={name}"]
            )
            out = out or Path(args.out or Path(base.out_dir) / f"benchmark-{name}")
            out.mkdir(parents=True, exist_ok=True)
            by_lr = results.setdefault(method, {})
            grid = {"optim.lr": spec["lrs"][method] or [base.optim.lr]}
            _run(method, base, points(base, grid, spec["grid_seeds"], ["federated"]), out, by_lr)
            if spec["seeds"] > spec["grid_seeds"]:  # the other seeds at the chosen lr only
                lr = choose_lr(by_lr, spec["grid_seeds"])
                rest = points(base, {"optim.lr": [lr]}, spec["seeds"], ["federated"])[spec["grid_seeds"] :]
                _run(method, base, rest, out, by_lr)
    except FedAnchorsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md, rows = summarize(results, spec["grid_seeds"], spec["target"])
    grids = {tuple(v) for v in spec["lrs"].values()}
    md += (
        f"\nLearning rate per method chosen on mean validation acc_wg over the first {spec['grid_seeds']} of "
        f"{spec['seeds']} seed(s) from {', '.join(str(list(g)) for g in grids) if any(grids) else 'the config'}.\n"
    )
    (out / "benchmark.md").write_text(md)
    plot(rows, out / "benchmark.png")
    print(md)
    print(f"table: {out / 'benchmark.md'}, plot: {out / 'benchmark.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
