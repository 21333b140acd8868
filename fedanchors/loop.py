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
from typing import Protocol

from tqdm import tqdm

from fedanchors.dynamics import AnalysisLog
from fedanchors.errors import RunFailed
from fedanchors.metric_keys import METRICS_VERSION
from fedanchors.resume import LOOP_KEYS, Interrupted, StopFlag, load, save_atomic, truncate_metrics
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


def evaluated(t: int, total: int, every: int) -> bool:
    """Steps that are evaluated: every ``every``-th and the last."""
    return t % every == 0 or t == total


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
    analysis = AnalysisLog(run.path if run is not None else None)
    best, best_t, best_test, start, elapsed, stopped = -1.0, 0, None, 1, 0.0, False
    best_memory = None  # the best model when there is no run directory
    if resume:
        path = run.checkpoint(tr.files["resume"])
        state = load(path, required=(unit, *LOOP_KEYS), what=f"{tr.mode} resume checkpoint")
        tr.load_resume_state(state, path)
        best, best_t, best_test = state["best"], state["best_t"], state.get("best_test")
        elapsed, stopped, start = state["elapsed"], state["stopped"], state[unit] + 1
        truncate_metrics(run.path, unit, state[unit])
        analysis.truncate(unit, state[unit], state.get("analysis_lines"))
    bar = tqdm(
        total=tr.total,
        initial=start - 1,
        desc=f"{cfg.name} {tr.mode}",
        unit=unit,
        disable=None if cfg.progress else True,
    )
    t = start - 1
    patience = cfg.optim.patience
    splits = ("val", "test") if test_with_val else ("val",)
    with contextlib.nullcontext(stop) if stop is not None else StopFlag() as flag:
        for t in range(start, tr.total + 1):
            if stopped:
                t -= 1
                break
            record = {unit: t, **tr.train(t)}
            if getattr(tr, "analysis_out", None):  # system 3's analyses (fedanchors.dynamics)
                analysis.write(tr.analysis_out)
                tr.analysis_out.clear()
            if evaluated(t, tr.total, tr.eval_every):
                out = tr.evaluate(splits)
                record.update({**out["val"], **tr.extras()})
                acc = out["val"]["acc_wg"]
                if acc > best:  # NaN (a group not evaluated) is never the best
                    best, best_t, best_test = acc, t, out.get("test")
                    tr.on_best(t)
                    if run is not None:
                        save_atomic(tr.model_state(), run.checkpoint(tr.files["best"]))
                    else:
                        best_memory = copy.deepcopy(tr.model_state())
                bar.set_postfix(val_acc_wg=f"{acc:.3f}")
                stopped = bool(patience and t - best_t >= patience)  # early stopping on val acc_wg
                if run is not None:
                    run.log(record)
            bar.update(1)
            error = tr.end(t)
            if run is not None:
                state = {unit: t, "best": best, "best_t": best_t, "best_test": best_test, "stopped": stopped}
                state["analysis_lines"] = analysis.count
                state["elapsed"] = elapsed + time.time() - t0
                save_atomic({**state, **tr.resume_state()}, run.checkpoint(tr.files["resume"]))
            if error is not None:
                raise error
            if flag.requested and t < tr.total and not stopped:
                where = run.path if run is not None else "<run dir>"
                raise Interrupted(
                    f"{flag.signame} received: stopped after {unit} {t}, checkpoint written; continue with "
                    f"python -m fedanchors.simulate --resume {where}",
                    flag.signum,
                )
    bar.close()
    if best_t == 0 or math.isnan(best):
        raise RunFailed(
            f"no evaluated {unit} had results from every group, so there is no worst-group accuracy to report; "
            "see client_errors.log"
        )
    if run is not None:
        save_atomic(tr.model_state(), run.checkpoint(tr.files["last"]))
        best_memory = load(run.checkpoint(tr.files["best"]), what="best checkpoint")
    tr.load_model_state(best_memory)
    test = best_test if best_test is not None else tr.evaluate(("test",))["test"]
    summary = {
        "mode": tr.mode,
        f"best_{unit}": best_t,
        f"{unit}s_run": t,
        "best_val_acc_wg": best,
        **{f"test_{k}": v for k, v in test.items()},
        **tr.final(),
        "wall_time_s": elapsed + time.time() - t0,
        "versions": versions(),
        "metrics_version": METRICS_VERSION,
    }
    if run is not None:
        run.write_summary(summary)
    return summary
