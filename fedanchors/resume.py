"""Checkpoint/resume helpers shared by both modes, and a clean stop on Ctrl-C.

A run writes ``checkpoints/resume.pt`` (centralized, every epoch) or
``checkpoints/server_resume.pt`` plus ``clients/<partition>/r<round>.pt`` (federated,
every round), atomically. ``python -m fedanchors.simulate --resume runs/X`` continues
from the last one and ends with exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from fedanchors.errors import FedAnchorsError
from fedanchors.fileio import append_line, save_atomic, write_atomic

__all__ = ["save_atomic", "load", "CheckpointError", "Interrupted", "Aborted", "StopFlag"]  # save_atomic: fileio


class Interrupted(FedAnchorsError):
    """Ctrl-C or SIGTERM: the run stopped at a boundary after writing its checkpoint. The exit
    code is the shell's for that signal: 130 (SIGINT), 143 (SIGTERM)."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class Aborted(BaseException):
    """A second Ctrl-C or SIGTERM: stop at once (the last checkpoint written is the resume point).
    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + int(signum)


class CheckpointError(FedAnchorsError):
    """A checkpoint or client state file is missing, corrupt or of the wrong kind."""


# what loading a state of another shape raises
MISMATCH = (KeyError, RuntimeError, ValueError, TypeError, AttributeError)


def mismatch(what: str, target: str, error: Exception, fix: str = "start a new run") -> CheckpointError:
    """The one-line error of a loaded state that does not fit ``target`` (a model, the clients,
    the config): ``what`` names the file, ``error``'s first line says why, ``fix`` the way on."""
    reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    return CheckpointError(f"{what} does not match {target} ({reason})" + (f"; {fix}" if fix else ""))


def load(
    path: Path, device: torch.device | str = "cpu", required: tuple[str, ...] = (), what: str = "checkpoint"
) -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors, numbers, strings, lists, dicts:
    unpickling can never run code from a run directory). A missing, empty, truncated or
    foreign file, or one without the ``required`` keys, is a one-line ``CheckpointError``."""
    path = Path(path)
    hint = "restore it or start a new run"
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is missing; {hint}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt file for the user
        raise CheckpointError(f"{what} {path} cannot be read safely ({_reason(e)}); {hint}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} {path} does not hold a fedanchors checkpoint (not a mapping); {hint}")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(
            f"{what} {path} lacks {', '.join(missing)}: not a fedanchors checkpoint of this kind; {hint}"
        )
    return state


def _reason(e: Exception) -> str:
    """A short reason from torch.load's error (its weights-only message is a page long)."""
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:
        text = "refused by the weights-only unpickler: " + text.split("WeightsUnpickler error:", 1)[1].strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:160]


def global_rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states, as tensors and plain numbers
    (so that the checkpoint loads with ``weights_only=True``)."""
    version, key, gauss = random.getstate()
    npst = np.random.get_state(legacy=False)
    return {
        "python": [version, torch.tensor(key, dtype=torch.int64), gauss],
        "numpy": {
            "key": torch.from_numpy(npst["state"]["key"].astype(np.int64)),
            "pos": int(npst["state"]["pos"]),
            "has_gauss": int(npst["has_gauss"]),
            "gauss": float(npst["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_global_rng_state(state: dict) -> None:
    version, key, gauss = state["python"]
    random.setstate((int(version), tuple(int(k) for k in key.tolist()), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def truncate_metrics(run_path: Path, key: str, last: int) -> None:
    """Drop metrics.jsonl records past ``last`` (written after the checkpoint a kill left)."""
    path = run_path / "metrics.jsonl"
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by the kill
        if int(rec.get(key, 0)) <= last:
            keep.append(line)
    write_atomic(path, "".join(x + "\n" for x in keep).encode())


LOOP_KEYS = ("best", "best_t", "stopped", "elapsed")  # fedanchors.loop's own, in both modes
RESUME_KEYS = ("epoch", *LOOP_KEYS, "trainer")  # centralized resume.pt
TRAINER_KEYS = ("model", "method", "opt", "gen", "sep_gen", "cyclers", "rng")
SERVER_KEYS = (  # federated server_resume.pt
    "round", *LOOP_KEYS, "head", "anchors", "encoders", "method", "last_losses", "sep_gen", "bytes",
    "last_stats", "rng", "client_rounds", "best_rounds", "server_opt",
)  # fmt: skip
CLIENT_KEYS = ("encoder", "opt")  # clients/<partition>/r<round>.pt (encoder None: the server holds it)


def client_state_path(run_path: Path, partition: int, rnd: int) -> Path:
    return Path(run_path) / "clients" / str(partition) / f"r{rnd}.pt"


def check_resumable(run_path: Path, mode: str) -> None:
    """Load every file a resume will read (safely) and check its structure, before anything
    starts: a missing, corrupt or foreign checkpoint or client state file is one line naming it."""
    run_path = Path(run_path)
    if mode != "federated":
        state = load(run_path / "checkpoints" / "resume.pt", required=RESUME_KEYS, what="resume checkpoint")
        if not isinstance(state["trainer"], dict) or any(k not in state["trainer"] for k in TRAINER_KEYS):
            raise CheckpointError(
                f"resume checkpoint {run_path / 'checkpoints' / 'resume.pt'} has no complete trainer state; "
                "restore it or start a new run"
            )
        return
    state = load(run_path / "checkpoints" / "server_resume.pt", required=SERVER_KEYS, what="server checkpoint")
    for pid, rnd in enumerate(state["client_rounds"]):
        if int(rnd) > 0:
            load(client_state_path(run_path, pid, int(rnd)), required=CLIENT_KEYS, what=f"client {pid}'s state file")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; kill, a batch scheduler, a container stop


class StopFlag:
    """While active, the first Ctrl-C or SIGTERM asks the run to stop at the next epoch/round
    boundary (after its checkpoint); a second one stops at once (``Aborted``)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = int(signal.SIGINT)
        self._old: dict[int, object] = {}

    @property
    def signame(self) -> str:
        return signal.Signals(self.signum).name

    def __enter__(self) -> StopFlag:
        try:
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread (e.g. Flower's server thread): no handler
            self._old = {}
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise Aborted(signum)
        self.requested, self.signum = True, int(signum)
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        print(f"\n{self.signame}: stopping after this step's checkpoint ({again} again to stop now)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class JsonlLog:
    """A trainer's side log in the run directory (``analysis.jsonl``: the gap analyses): one
    JSON line per record, appended as the loop drains the trainer's ``side_logs()``, and cut
    back on resume to what was written when the checkpoint was taken."""

    def __init__(self, path: Path | None) -> None:
        self.path = None if path is None else Path(path)
        self.count = 0  # lines written (checkpointed with the loop's state)

    def write(self, records: list[dict]) -> None:
        if self.path is None or not records:
            return
        self.count += len(records)
        for r in records:
            append_line(self.path, json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                               for k, v in r.items()}))  # fmt: skip

    def truncate(self, unit: str, last: int, lines: int | None = None) -> None:
        """Keep what was written up to the checkpoint a run resumes from: its first ``lines``
        lines (the count checkpointed; a federated round's analysis record is completed, and
        written, a round later, so a record of round ``last`` may postdate the checkpoint), or
        without a count the records up to step ``last``. The resumed run writes the rest again."""
        if self.path is None or not self.path.is_file():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)[unit] <= last]
        keep = keep if lines is None else keep[:lines]
        write_atomic(self.path, "".join(k + "\n" for k in keep).encode())
        self.count = len(keep)
