"""The privacy-utility plot (docs/privacy_utility.png) from the table's figures.

    python bench/plot_privacy.py [--data docs/privacy_utility.json] [--out docs/privacy_utility.png]

``--data`` holds, per population, the test acc_wg without privacy and at each epsilon (null
where the run diverged), copied from the runs' ``summary.json`` files into docs/privacy.md's
table; ``--collect DIR ...`` prints the same figures from sweep or run directories instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def collect(dirs: list[str]) -> list[dict]:
    """(epsilon, test acc_wg, noise multiplier) of every run under ``dirs`` (no privacy: epsilon null)."""
    out = []
    for d in dirs:
        for path in sorted(Path(d).rglob("summary.json")):
            s = json.loads(path.read_text())
            eps = s.get("privacy_epsilon")
            out.append({"run": str(path.parent), "epsilon": eps, "noise_multiplier": s.get("privacy_noise_multiplier"),
                        "test_acc_wg": s.get("test_acc_wg"), "test_acc_all": s.get("test_acc_all")})  # fmt: skip
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for i, (name, pop) in enumerate(data.items()):
        color = f"C{i}"
        pts = sorted((float(e), a) for e, a in pop["private"].items() if a is not None)
        if pts:
            ax.plot([e for e, _ in pts], [a for _, a in pts], "o-", color=color, label=f"{name}")
        ax.axhline(pop["none"], color=color, ls="--", lw=1, label=f"{name}: no privacy")
        failed = sorted(float(e) for e, a in pop["private"].items() if a is None)
        if failed:  # diverged, or no complete evaluation: drawn below zero, one row per population
            y = -0.03 - 0.025 * i
            ax.plot(failed, [y] * len(failed), "x", color=color, label=f"{name}: diverged / no result")
    ax.set_xticks([1, 4, 8], ["1", "4", "8"])
    ax.set_xlabel("epsilon (delta 1e-5)")
    ax.set_ylabel("test acc_wg")
    ax.set_ylim(-0.15, 1.0)
    ax.legend(fontsize=6.5, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="docs/privacy_utility.json")
    p.add_argument("--out", default="docs/privacy_utility.png")
    p.add_argument("--collect", nargs="*", help="print the figures of these run / sweep directories and stop")
    args = p.parse_args()
    if args.collect:
        print(json.dumps(collect(args.collect), indent=1))
        return 0
    plot(json.loads(Path(args.data).read_text()), Path(args.out))
    print(f"plot: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
