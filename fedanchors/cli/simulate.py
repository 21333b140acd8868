"""Entry point: ``python -m fedanchors.simulate --config configs/digits.yaml [--set k=v ...]``
(also ``fedanchors simulate ...``).

User errors (config, data, resources) end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from fedanchors.config import Config, to_dict
from fedanchors.configure import load_config, replace
from fedanchors.errors import ConfigError, FedAnchorsError
from fedanchors.fileio import as_write_error
from fedanchors.preflight import check_against_data
from fedanchors.resume import Aborted, Interrupted

EXIT_USER_ERROR = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fedanchors.simulate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML config (default: built-in digits defaults)")
    p.add_argument(
        "--compare",
        action="store_true",
        help="run the config in both modes (same seed and sample budget) and compare them",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint (its config.yaml is used)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (a named scenario's groups written out) and exit; reads no data",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=0.01 (repeatable)",
    )
    return p.parse_args(argv)


def _checks(cfg: Config):
    """Every check that needs no run directory: device, resources, data, group names."""
    from fedanchors.rundir import resolve_device
    from fedanchors.runs import build_data

    resolve_device(cfg.device)  # device: cuda without a GPU fails here, in both modes
    federated = _federated(cfg)
    data = build_data(cfg.data)
    check_against_data(cfg, data)
    if cfg.privacy.enabled:
        from server.privacy import preflight

        preflight(cfg, data)  # a budget the planned rounds would exceed: one line, nothing written
    return federated, data


def run(cfg: Config) -> dict:
    """Run ``cfg`` in its mode; returns the summary (also written to summary.json)."""
    from fedanchors.rundir import RunDir

    federated, data = _checks(cfg)
    return _execute(cfg, data, RunDir.create(cfg), federated, resume=False)


def run_at(cfg: Config, path) -> dict:
    """Run ``cfg`` into the run directory ``path`` (made; refused if it holds a run)."""
    from pathlib import Path

    from fedanchors.rundir import RunDir

    federated, data = _checks(cfg)
    return _execute(cfg, data, RunDir.create_at(Path(path), cfg), federated, resume=False)


def resume(path: str, config: str | None, overrides: list[str]) -> dict:
    """Continue the run in ``path`` from its last checkpoint (same config, same numbers)."""
    from fedanchors.rundir import RunDir

    run_dir = RunDir.open(path)  # takes the run's lock: a second writer stops here
    try:
        cfg, federated, data = _resume_checks(run_dir, path, config, overrides)
    except BaseException:
        run_dir.release()
        raise
    return _execute(cfg, data, run_dir, federated, resume=True)


def _resume_checks(run_dir, path: str, config: str | None, overrides: list[str]):
    """Everything --resume checks before it touches the directory or starts Ray."""
    from fedanchors.resume import check_resumable

    cfg = load_config(run_dir.path / "config.yaml")
    if config or overrides:
        other = load_config(config or run_dir.path / "config.yaml", overrides)
        if config and other.name != cfg.name:
            other = replace(other, [f"name={cfg.name}"])  # a file's name comes from its stem
        diff = config_diff(cfg, other)
        if diff:
            raise ConfigError(
                f"--resume {path}: the run directory holds a different config ({', '.join(diff[:5])}); "
                "resume without --config/--set, or start a new run"
            )
    ckpt = run_dir.checkpoint("server_resume.pt" if cfg.mode == "federated" else "resume.pt")
    if (run_dir.path / "summary.json").is_file():
        raise ConfigError(f"--resume {path}: that run has finished (summary.json exists); nothing to resume")
    if not ckpt.is_file():
        raise ConfigError(f"--resume {path}: no checkpoint to resume from ({ckpt} is missing); start a new run")
    check_resumable(run_dir.path, cfg.mode)  # corrupt or missing files: one line, before Ray starts
    federated, data = _checks(cfg)
    return cfg, federated, data


def config_diff(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ, e.g. ``optim.lr: 0.001 != 0.01``."""

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.update(flat(v, key + ".") if isinstance(v, dict) and v else {key: v})
        return out

    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return [f"{k}: {fa.get(k)!r} != {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def _federated(cfg: Config):
    """The Flower layer (``server.simulation``) for a federated config, its resource request
    checked before any run directory is made; None for a centralized one. The CLI package is
    the one part of fedanchors that imports ``server`` (import-linter holds it)."""
    if cfg.mode != "federated":
        return None
    from server import simulation

    simulation.check_resources(cfg)
    return simulation


def _execute(cfg: Config, data, run_dir, federated, resume: bool) -> dict:
    from fedanchors.dynamics import plot_analysis
    from fedanchors.plots import plot_run
    from fedanchors.samples import save_group_samples
    from fedanchors.tracking import build_trackers

    run_dir.trackers = build_trackers(cfg, run_dir.path)
    images: dict = {}
    figures = cfg.logging.plots and os.environ.get("FEDANCHORS_PLOTS", "1") != "0"
    try:
        if not resume:
            save_group_samples(data, run_dir.path, images=figures)
        if federated is not None:
            summary = federated.run_federated(cfg, data, run_dir, resume=resume)
        else:
            from fedanchors.centralized import run_centralized

            summary = run_centralized(cfg, data, run_dir, resume=resume)
        summary["run_dir"] = str(run_dir.path)
        if figures:
            plot_run(run_dir.path)
            plot_analysis(run_dir.path)
        images = {p.stem: p for p in sorted(run_dir.path.glob("*.png"))}
    finally:
        last = summary.get("epochs_run", summary.get("rounds_run", 0)) if images else 0
        run_dir.close_trackers(images, int(last or 0))
        run_dir.release()
    return summary


def run_compare(cfg: Config) -> str:
    """Run ``cfg`` centralized and federated with the same seed and sample budget, then compare.

    One local epoch per round and ``federated.rounds = optim.epochs``: every example is seen
    as often in both modes; ``anchors.update`` is held fixed (``gradient`` unless set), so the
    gap is federation's, not a different anchor rule's. Writes
    ``<out_dir>/<name>-compare/report.md`` and ``compare.png``.
    """
    from pathlib import Path

    from fedanchors.compare import compare
    from fedanchors.configure import replace

    epochs = cfg.optim.epochs
    update = cfg.anchors.update or "gradient"
    runs = []
    for mode in ("centralized", "federated"):
        sets = [
            f"mode={mode}",
            f"anchors.update={update}",
            f"name={cfg.name}-{mode}",
            f"federated.rounds={epochs}",
            "federated.local_epochs=1",
            "federated.local_steps=0",
        ]
        runs.append(Path(run(replace(cfg, sets))["run_dir"]))
    out = Path(cfg.out_dir) / f"{cfg.name}-compare"
    out.mkdir(parents=True, exist_ok=True)
    md, _ = compare(runs, out / "report.md", note=f"both modes with anchors.update: {update}")
    return md


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("WANDB_MODE", "offline")
    # read when ray is first imported: Ray's C++ failure-signal handler answers SIGTERM with a
    # stack dump and exit 15; without it SIGTERM reaches fedanchors' clean stop (resume.StopFlag)
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    args = parse_args(argv)
    try:
        if args.resume:
            summary = resume(args.resume, args.config, args.overrides)
            return _print_summary(summary)
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(resolved_yaml(cfg), end="")
            return 0
        if args.compare:
            print(run_compare(cfg))
            print(f"\nreport: {cfg.out_dir}/{cfg.name}-compare/report.md (curves: compare.png)")
            return 0
        summary = run(cfg)
    except Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return e.exit_code
    except Aborted as e:  # a second Ctrl-C / SIGTERM: at once, without waiting for the step's end
        print(f"stopped at once ({e}); the last checkpoint written is where --resume continues", file=sys.stderr)
        return e.exit_code
    except FedAnchorsError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_USER_ERROR)
    except OSError as e:  # a write the machine refused anywhere else (a plot, a tracker's file)
        err = as_write_error(e)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return _print_summary(summary)


def resolved_yaml(cfg: Config) -> str:
    """The config as YAML with its groups written out: a named group list (``data.scenario:
    digits``) becomes the ``data.groups`` and ``data.class_sets`` it holds, so the printed file
    runs the same data."""
    import yaml

    from fedanchors.data import check_groups, class_sets, resolve_groups, scenario_name
    from fedanchors.group_spec import compact

    d = to_dict(cfg)
    groups = resolve_groups(cfg.data)
    head = f"# resolved config of {cfg.name or 'the defaults'}"
    if not cfg.data.groups:
        head += f"\n# data.scenario {scenario_name(cfg.data)} is a named group list; its groups are written out below"
    spaces = check_groups(groups)  # each group's input space, derived where not given
    d["data"].update(
        scenario="",
        groups=[{**compact(g), "space": spaces[g.name][0]} for g in groups],
        class_sets={k: list(v) for k, v in class_sets(cfg.data).items()},
    )
    return head + "\n" + yaml.safe_dump(d, sort_keys=False, default_flow_style=None, width=120)


def _print_summary(summary: dict) -> int:
    keys = [k for k in summary if k.startswith(("test_acc", "dfr_test_acc"))] + ["wall_time_s", "device", "run_dir"]
    print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
