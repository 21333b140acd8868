"""``python -m fedanchors.compare runs/A runs/B [...] [--out report.md]``: runs side by side.

A Markdown table (printed, and written with ``--out``) of final and best validation
``acc_all``, ``acc_wg``, ``acc_bal``, the test metrics of the best checkpoint, every
``acc_group:*``, wall time, device and bytes communicated; and ``compare.png``, the
overlay of the runs' curves (next to ``--out``, else in the current folder).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from fedanchors.errors import DataError, FedAnchorsError
from fedanchors.metric_keys import check_comparable
from fedanchors.plots import plot_overlay, read_metrics


def read_summary(run: Path) -> dict:
    """summary.json of a run directory; missing or broken -> DataError naming it."""
    if not run.is_dir():
        raise DataError(f"run directory {run} not found")
    path = run / "summary.json"
    if not path.is_file():
        raise DataError(f"{path} not found: the run did not finish (or {run} is not a run directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{path} is not valid JSON; the run directory is damaged") from None


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if v <= 1.0 else f"{v:.1f}"
    return str(v)


def row(run: Path) -> dict[str, object]:
    """One table row for a run directory."""
    s, records = read_summary(run), read_metrics(run)
    out: dict[str, object] = {"run": run.name, "mode": s.get("mode")}
    for k in ("acc_all", "acc_wg", "acc_bal"):
        vals = [r[k] for r in records if r.get(k) is not None]
        out[f"final {k}"] = vals[-1] if vals else None
        out[f"best {k}"] = max(vals) if vals else None
    for k in sorted(k for k in s if k.startswith("test_acc")):
        out[k] = s[k]
    for k in ("test_client_acc_worst", "test_client_acc_p10"):  # populations: the client-level view
        if k in s:
            out[k] = s[k]
    out["wall s"] = s.get("wall_time_s")
    out["device"] = s.get("device")
    out["MB sent+received"] = (s["bytes_sent"] + s["bytes_received"]) / 1e6 if "bytes_sent" in s else None
    return out


def table(rows: list[dict[str, object]]) -> str:
    """A Markdown table over the union of the rows' columns, in first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def compare(runs: list[Path], out: Path | None = None, note: str = "") -> tuple[str, Path]:
    """The comparison table (Markdown) and the overlay PNG's path."""
    check_comparable({str(r): read_summary(r) for r in runs})
    md = (f"{note}\n\n" if note else "") + table([row(r) for r in runs])
    png = (out.parent if out else Path.cwd()) / "compare.png"
    plot_overlay(runs, png)
    if out:
        out.write_text(f"# fedanchors comparison\n\n{md}\n\n![curves]({png.name})\n")
    return md, png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fedanchors.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="+", type=Path, help="run directories (runs/<name>)")
    p.add_argument("--out", type=Path, help="also write the table as Markdown to this file")
    args = p.parse_args(argv)
    try:
        md, png = compare(args.runs, args.out)
    except FedAnchorsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(md)
    print(f"\ncurves: {png}" + (f"\nreport: {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
