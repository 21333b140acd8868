"""One run loop for both modes: the life of a run, written once.

``run_loop`` owns the epochs (centralized) or rounds (federated), the evaluation cadence,
best-checkpoint tracking on validation ``acc_wg``, early stopping, the resume checkpoint
after every epoch/round, Ctrl-C, the progress bar, the metrics records and the summary.
A mode supplies a ``Trainer``: the centralized trainer (``fedanchors.centralized``) and
the federated driver (``server.driver``, the ServerApp's main) both implement it, so a
metric, a checkpoint and a summary key mean the same thing in both modes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from typing import Protocol

from tqdm import tqdm

from fedanchors.errors import RunFailed
from fedanchors.metric_keys import METRICS_VERSION
from fedanchors.resume import LOOP_KEYS, Interrupted, JsonlLog, StopFlag, load, save_atomic, truncate_metrics
from fedanchors.rundir import RunDir, versions


class Trainer(Protocol):
    """What a mode implements for ``run_loop``."""

    mode: str  # "centralized" | "federated"
    unit: str  # "epoch" | "round": the loop's step, the key of every metrics record
    total: int  # epochs or rounds
    eval_every: int
    files: dict[str, str]  # checkpoint names: "resume", "best", "last"

    def setup(self) -> None:
        """Everything before the first step (federated: find the clients)."""

    def train(self, t: int) -> dict[str, float]:
        """Train epoch/round ``t`` (1-based); the training metrics of the record."""

    def evaluate(self, splits: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """Group-wise metrics (``fedanchors.metrics.summarize``) of the current model per split."""

    def extras(self) -> dict[str, float]:
        """Entries added to an evaluated record (q, anchor distances, bytes)."""

    def end(self, t: int) -> Exception | None:
        """After step ``t``, before its checkpoint; an error to raise once the checkpoint is written."""

    def on_best(self, t: int) -> None:
        """Step ``t`` is the new best (its model is about to be saved)."""

    def model_state(self) -> dict: ...

    def load_model_state(self, state: dict) -> None: ...

    def resume_state(self) -> dict: ...

    def load_resume_state(self, state: dict, path) -> None: ...

    def final(self) -> dict:
        """Summary entries computed with the best model loaded (DFR, diagnostics, device, bytes)."""

    def side_logs(self) -> dict[str, list[dict]]:
        """Records for side logs in the run directory, by file name (e.g. ``analysis.jsonl``),
        finished since the last call; the loop appends them and empties the lists."""


def evaluated(t: int, total: int, every: int) -> bool:
    """Steps that are evaluated: every ``every``-th and the last."""
    return t % every == 0 or t == total


@dataclass
class Progress:
    """Where a run stands: the best validation acc_wg so far, its step and test metrics,
    where the loop starts, the time spent before a resume, and early stopping."""

    best: float = -1.0
    best_t: int = 0
    best_test: dict | None = None
    start: int = 1
    elapsed: float = 0.0
    stopped: bool = False
    best_memory: dict | None = None  # the best model when there is no run directory


def run_loop(
    tr: Trainer,
    cfg,
    run: RunDir | None,
    resume: bool = False,
    stop: StopFlag | None = None,
    test_with_val: bool = False,
) -> dict:
    """Train ``tr`` for ``tr.total`` steps; returns (and writes) the run's summary.

    Test metrics are those of the step with the best validation ``acc_wg``: measured with
    the validation when ``test_with_val`` (one federated exchange serves both), else by
    restoring the best checkpoint at the end. Every step ends with the resume checkpoint;
    ``resume=True`` continues after it with the numbers of an uninterrupted run.
    """
    t0, unit = time.time(), tr.unit
    tr.setup()
    logs: dict[str, JsonlLog] = {}  # the trainer's side logs, by file name
    p = _resume(tr, run, logs) if resume else Progress()
    bar = tqdm(total=tr.total, initial=p.start - 1, desc=f"{cfg.name} {tr.mode}", unit=unit,
               disable=None if cfg.progress else True)  # fmt: skip
    t = p.start - 1
    splits = ("val", "test") if test_with_val else ("val",)
    with contextlib.nullcontext(stop) if stop is not None else StopFlag() as flag:
        for t in range(p.start, tr.total + 1):
            if p.stopped:
                t -= 1
                break
            record = {unit: t, **tr.train(t)}
            _drain(tr, run, logs)
            if evaluated(t, tr.total, tr.eval_every):
                _evaluate(tr, t, p, run, splits, cfg.optim.patience, record)
                bar.set_postfix(val_acc_wg=f"{record['acc_wg']:.3f}")
            bar.update(1)
            error = tr.end(t)
            if run is not None:
                state = {unit: t, "best": p.best, "best_t": p.best_t, "best_test": p.best_test, "stopped": p.stopped}
                state |= {"log_lines": {k: v.count for k, v in logs.items()}, "elapsed": p.elapsed + time.time() - t0}
                save_atomic({**state, **tr.resume_state()}, run.checkpoint(tr.files["resume"]))
            if error is not None:
                raise error
            if flag.requested and t < tr.total and not p.stopped:
                raise Interrupted(
                    f"{flag.signame} received: stopped after {unit} {t}, checkpoint written; continue with "
                    f"python -m fedanchors.simulate --resume {run.path if run is not None else '<run dir>'}",
                    flag.signum,
                )
    bar.close()
    return _summary(tr, p, t, run, t0)


def _drain(tr: Trainer, run: RunDir | None, logs: dict[str, JsonlLog]) -> None:
    """Append the trainer's new side-log records (``side_logs()``: file name -> records) and
    empty its lists; the loop knows no log by name."""
    for name, records in tr.side_logs().items():
        if records:
            logs.setdefault(name, JsonlLog(run.path / name if run is not None else None)).write(records)
            records.clear()


def _resume(tr: Trainer, run: RunDir, logs: dict[str, JsonlLog]) -> Progress:
    """The progress, trainer state and logs of the checkpoint a run resumes from."""
    unit = tr.unit
    path = run.checkpoint(tr.files["resume"])
    state = load(path, required=(unit, *LOOP_KEYS), what=f"{tr.mode} resume checkpoint")
    tr.load_resume_state(state, path)
    truncate_metrics(run.path, unit, state[unit])
    # each side log cut back to its lines at the checkpoint (older checkpoints: analysis_lines)
    lines = state.get("log_lines") or {"analysis.jsonl": state.get("analysis_lines")}
    for name, n in lines.items():
        logs[name] = JsonlLog(run.path / name)
        logs[name].truncate(unit, state[unit], n)
    return Progress(state["best"], state["best_t"], state.get("best_test"), state[unit] + 1, state["elapsed"],
                    state["stopped"])  # fmt: skip


def _evaluate(tr: Trainer, t: int, p: Progress, run: RunDir | None, splits, patience: int, record: dict) -> None:
    """Step ``t``'s evaluation into ``record``; a new best is saved; early stopping on patience."""
    out = tr.evaluate(splits)
    record.update({**out["val"], **tr.extras()})
    acc = out["val"]["acc_wg"]
    if acc > p.best:  # NaN (a group not evaluated) is never the best
        p.best, p.best_t, p.best_test = acc, t, out.get("test")
        tr.on_best(t)
        if run is not None:
            save_atomic(tr.model_state(), run.checkpoint(tr.files["best"]))
        else:
            p.best_memory = copy.deepcopy(tr.model_state())
    p.stopped = bool(patience and t - p.best_t >= patience)  # early stopping on val acc_wg
    if run is not None:
        run.log(record)


def _summary(tr: Trainer, p: Progress, t: int, run: RunDir | None, t0: float) -> dict:
    """The summary (written to summary.json): test metrics of the best step, with its model loaded."""
    if p.best_t == 0 or math.isnan(p.best):
        raise RunFailed(
            f"no evaluated {tr.unit} had results from every group, so there is no worst-group accuracy to report; "
            "see client_errors.log"
        )
    best_memory = p.best_memory
    if run is not None:
        save_atomic(tr.model_state(), run.checkpoint(tr.files["last"]))
        best_memory = load(run.checkpoint(tr.files["best"]), what="best checkpoint")
    tr.load_model_state(best_memory)
    test = p.best_test if p.best_test is not None else tr.evaluate(("test",))["test"]
    summary = {
        "mode": tr.mode,
        f"best_{tr.unit}": p.best_t,
        f"{tr.unit}s_run": t,
        f"{tr.unit}s_planned": tr.total,
        "stopped_early": bool(p.stopped),  # on patience (optim.patience): validation acc_wg had plateaued
        "best_val_acc_wg": p.best,
        **{f"test_{k}": v for k, v in test.items()},
        **tr.final(),
        "wall_time_s": p.elapsed + time.time() - t0,
        "versions": versions(),
        "metrics_version": METRICS_VERSION,
    }
    if run is not None:
        run.write_summary(summary)
    return summary
