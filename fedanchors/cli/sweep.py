"""Grid sweeps: ``python -m fedanchors.sweep --config X --grid optim.lr=0.1,0.01 [--seeds 3]``.

Every point of the product (grid values x seeds x modes) runs in its own directory
``<out>/<hash>``, the hash taken over the base config's settings that differ from the
defaults and the point's overrides (so a release that adds a setting keeps the points); a
finished point holds a ``done`` marker and its resolved settings (``settings.json``), and a
relaunch skips it unless a setting it ran with has since changed (a changed default: the
point is set aside and runs again); an interrupted one resumes from its checkpoint. The sweep ends with a
table sorted by the mean validation ``acc_wg`` over seeds (``<out>/sweep.md``).

``--config`` takes a run config, or a sweep file with a ``sweep:`` section::

    sweep:
      config: configs/confounded_mnist.yaml
      grid: {optim.lr: [0.01, 0.001], method.lambdas.corrected: [1, 4]}
      seeds: 2
      modes: [centralized]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
from pathlib import Path

from fedanchors.config import Config, parse_override, read_yaml, resolved_dict, yaml_load
from fedanchors.configure import load_config, replace
from fedanchors.data.groups import parse_groups
from fedanchors.errors import ConfigError, Diverged, FedAnchorsError, RunFailed
from fedanchors.group_spec import compact

DONE = "done"
FAILED = "failed"  # a point whose run diverged or could not give honest results: an outcome, kept
SETTINGS = "settings.json"  # a finished point's resolved config, flat: what its reuse is checked against
_RUN_KEYS = {"name", "out_dir", "progress"}  # where and how a point ran, not what


def flat_settings(cfg: Config) -> dict:
    """The config as {"section.key": value} (lists and group specs as values; each group spec
    with only its fields that differ from their defaults, so a release that adds a group field
    keeps the points too)."""
    out: dict = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(resolved_dict(cfg), "")
    return out


def _recorded(key: str, value):
    """A recorded setting as this release writes it: group specs recorded in full (before
    they were compacted) are compacted; ones this release cannot read are left as they are."""
    if key != "data.groups" or not isinstance(value, list):
        return value
    try:
        return json.loads(json.dumps([compact(g) for g in parse_groups(value, SETTINGS)]))
    except (ConfigError, TypeError, ValueError):
        return value


def changed_settings(base: Config) -> dict:
    """The base config's settings that differ from the defaults (what a point's hash covers)."""
    default = flat_settings(Config())
    return {k: v for k, v in flat_settings(base).items() if k not in default or default[k] != v}


def stale_setting(d: Path, cfg: Config) -> str | None:
    """The first setting a finished point ran with that ``cfg`` now sets otherwise (None: the
    same run; a point from before ``settings.json`` is taken as it is)."""
    path = d / SETTINGS
    if not path.is_file():
        return None
    ran = json.loads(path.read_text())
    now = json.loads(json.dumps(flat_settings(cfg)))  # tuples as lists, as recorded
    return next((k for k in sorted(ran) if k in now and k not in _RUN_KEYS and _recorded(k, ran[k]) != now[k]), None)


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["optim.lr=0.1,0.01", ...]`` -> {"optim.lr": [0.1, 0.01]} (values parsed as YAML)."""
    grid: dict[str, list] = {}
    for text in items:
        path, _ = parse_override(text)
        raw = text.partition("=")[2]
        grid[".".join(path)] = [yaml_load(v) for v in raw.split(",") if v.strip()]
        if not grid[".".join(path)]:
            raise ConfigError(f"--grid {text!r}: give at least one value, e.g. --grid optim.lr=0.1,0.01")
    return grid


def _fmt(v) -> str:
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def points(base: Config, grid: dict[str, list], seeds: int, modes: list[str]) -> list[dict]:
    """Every point: its overrides (grid part and full), its hash and its grid key."""
    out = []
    base_text = json.dumps(changed_settings(base), sort_keys=True)
    for values in itertools.product(*grid.values()):
        sets = [f"{k}={_fmt(v)}" for k, v in zip(grid, values)]
        for mode in modes:
            for s in range(seeds):
                full = [*sets, f"mode={mode}", f"seed={base.seed + s}"]
                digest = hashlib.sha1((base_text + "\n".join(full)).encode()).hexdigest()[:12]
                out.append({"key": (*sets, f"mode={mode}"), "overrides": full, "hash": digest})
    return out


def run_point(base: Config, point: dict, out: Path) -> dict:
    """Run one point unless its ``done`` marker exists; returns its summary."""
    from fedanchors.cli.simulate import resume, run

    d = out / point["hash"]
    cfg = replace(base, [*point["overrides"], f"name={point['hash']}", f"out_dir={out}", "progress=false"])
    if (d / DONE).is_file() or (d / FAILED).is_file():
        if (key := stale_setting(d, cfg)) is not None:  # ran under a default that has changed since
            print(f"{point['hash']}: ran with another {key}; set aside and run again", file=sys.stderr)
            _set_aside(d, out, point["hash"], "stale")
        elif (d / DONE).is_file():
            return json.loads((d / "summary.json").read_text()) | {"skipped": True}
        else:  # the same seed fails the same way: not run again
            return {"failed": (d / FAILED).read_text().strip(), "skipped": True}
    ckpt = d / "checkpoints" / ("server_resume.pt" if cfg.mode == "federated" else "resume.pt")
    try:
        if d.exists() and ckpt.is_file() and not (d / "summary.json").exists():
            summary = resume(str(d), None, [])  # an interrupted point continues from its checkpoint
        else:
            if d.exists():  # an attempt that left no checkpoint: kept aside, never overwritten
                _set_aside(d, out, point["hash"], "incomplete")
            summary = run(cfg)
    except (Diverged, RunFailed) as e:  # a result of this point (a method that diverges), not a bug
        _record(d, point, cfg, FAILED, f"{type(e).__name__}: {e}\n")
        return {"failed": f"{type(e).__name__}: {e}", "skipped": False}
    _record(d, point, cfg, DONE, "")
    return summary | {"skipped": False}


def _record(d: Path, point: dict, cfg: Config, marker: str, text: str) -> None:
    """A finished point: its overrides, its resolved settings, then its marker (last: a point
    with a marker is whole)."""
    (d / "point.json").write_text(json.dumps(point["overrides"]) + "\n")
    (d / SETTINGS).write_text(json.dumps(flat_settings(cfg), sort_keys=True) + "\n")
    (d / marker).write_text(text)


def _set_aside(d: Path, out: Path, name: str, why: str) -> None:
    """Move a point's directory to ``<name>-<why>-<k>``: kept, never overwritten."""
    k = 1
    while (aside := out / f"{name}-{why}-{k}").exists():
        k += 1
    shutil.move(str(d), aside)


def _stats(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0


def _cell(stats: tuple[float, float]) -> str:
    return f"{stats[0]:.4f} ± {stats[1]:.4f}"


def table(results: list[tuple[dict, dict]]) -> str:
    """Markdown: one row per grid point (seeds pooled), sorted by mean validation acc_wg."""
    groups: dict[tuple, list[dict]] = {}
    for point, summary in results:
        groups.setdefault(point["key"], []).append(summary)
    rows = []
    for key, runs in groups.items():
        val = _stats([r.get("best_val_acc_wg") for r in runs])
        test = _stats([r.get("test_acc_wg") for r in runs])
        acc = _stats([r.get("test_acc_all") for r in runs])
        failed = sum("failed" in r for r in runs)
        rows.append((val, test, acc, key, len(runs), failed))
    rows.sort(key=lambda r: (-r[0][0] if not math.isnan(r[0][0]) else math.inf, " ".join(r[3])))  # ties: by name
    lines = [
        "| point | seeds | failed | val acc_wg | test acc_wg | test acc_all |",
        "|---|---|---|---|---|---|",
    ]
    for val, test, acc, key, n, failed in rows:  # mean ± std over the seeds that finished
        lines.append(f"| {' '.join(key)} | {n} | {failed} | {_cell(val)} | {_cell(test)} | {_cell(acc)} |")
    return "\n".join(lines) + "\n"


def load_spec(path: str | None, grid_args: list[str], seeds: int | None, modes: str | None, sets: list[str]):
    """Base config, grid, seeds and modes from a run config + flags or a sweep file."""
    raw = read_yaml(path) if path else {}
    spec = raw.get("sweep")
    if spec is not None:
        if not isinstance(spec, dict) or "config" not in spec:
            raise ConfigError(f"{path}: the sweep section needs a 'config' (the run config to sweep)")
        unknown = set(spec) - {"config", "grid", "seeds", "modes"}
        if unknown:
            raise ConfigError(f"{path}: unknown sweep key(s) {sorted(unknown)} (valid: config, grid, seeds, modes)")
        base_path = spec["config"]
        grid = {str(k): list(v) if isinstance(v, list) else [v] for k, v in (spec.get("grid") or {}).items()}
        seeds = seeds or int(spec.get("seeds", 1))
        modes_list = modes.split(",") if modes else list(spec.get("modes", []))
        name = Path(path).stem
    else:
        base_path, grid, modes_list, name = path, {}, modes.split(",") if modes else [], None
    grid.update(parse_grid(grid_args))
    base = load_config(base_path, sets)
    if name:
        base = replace(base, [f"name={name}"])
    modes_list = modes_list or [base.mode]
    for m in modes_list:
        if m not in ("centralized", "federated"):
            raise ConfigError(f"--modes: {m!r} is not centralized or federated")
    for k, vs in grid.items():  # every value must make a valid config, before anything runs
        for v in vs:
            replace(base, [f"{k}={_fmt(v)}"])
    return base, grid, seeds or 1, modes_list


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("WANDB_MODE", "offline")
    p = argparse.ArgumentParser(prog="python -m fedanchors.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="run config, or a sweep file with a 'sweep:' section")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a swept key (repeatable)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per point: seed, seed+1, ... (default 1)")
    p.add_argument("--modes", default=None, help="centralized,federated (default: the config's mode)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="sweep directory (default <out_dir>/sweep-<name>)")
    args = p.parse_args(argv)
    try:
        base, grid, seeds, modes = load_spec(args.config, args.grid, args.seeds, args.modes, args.overrides)
        if seeds < 1:
            raise ConfigError("--seeds must be >= 1")
        out = Path(args.out or Path(base.out_dir) / f"sweep-{base.name or 'run'}")
        out.mkdir(parents=True, exist_ok=True)
        pts = points(base, grid, seeds, modes)
        results = []
        for i, pt in enumerate(pts, 1):
            summary = run_point(base, pt, out)
            state = "skipped (done)" if summary["skipped"] else "ran"
            if "failed" in summary:
                state = f"failed{' before' if summary['skipped'] else ''}: {summary['failed']}"
            print(f"[{i}/{len(pts)}] {pt['hash']} {' '.join(pt['overrides'])}: {state}", file=sys.stderr)
            results.append((pt, summary))
    except FedAnchorsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md = table(results)
    (out / "sweep.md").write_text(md)
    print(md)
    ran = sum(not s["skipped"] for _, s in results)
    print(f"{ran} point(s) run, {len(results) - ran} skipped; table: {out / 'sweep.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
