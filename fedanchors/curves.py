"""A run's validation curve, read back from its ``metrics.jsonl``: how fast a method got where
it got, the figures federated papers report beside the final accuracy.

- ``rounds_to_fraction``: the first evaluated round (epoch, centralized) whose validation
  acc_wg reached ``fraction`` of the run's own best;
- ``mb_to_target``: the training traffic (``bytes_train``, MB sent + received, evaluation's
  left out) spent up to the first evaluated round whose validation acc_wg reached ``target``;
  ``None`` where the run never reached it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fedanchors.errors import DataError


def read_curve(path: Path) -> list[dict]:
    """Per record, the step (round or epoch), the validation acc_wg (``None`` where the record
    holds no evaluation) and the cumulative training MB up to it."""
    out, mb = [], 0.0
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read the run's metrics ({e.strerror}); run the point again") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path}: line {n} is not JSON; the metrics are corrupt, run the point again") from None
        step = rec.get("round", rec.get("epoch"))
        if step is None:
            continue
        b = rec.get("bytes_train")
        b = b if b is not None else (rec.get("bytes_sent") or 0) + (rec.get("bytes_received") or 0)
        mb += b / 1e6
        acc = rec.get("acc_wg")
        ok = isinstance(acc, (int, float)) and not math.isnan(acc)
        out.append({"step": int(step), "acc_wg": float(acc) if ok else None, "mb": mb})
    return out


def _first(curve: list[dict], threshold: float) -> dict | None:
    return next((r for r in curve if r["acc_wg"] is not None and r["acc_wg"] >= threshold), None)


def rounds_to_fraction(curve: list[dict], fraction: float = 0.95) -> int | None:
    """The first step whose validation acc_wg reached ``fraction`` of the curve's best."""
    accs = [r["acc_wg"] for r in curve if r["acc_wg"] is not None]
    if not accs:
        return None
    hit = _first(curve, fraction * max(accs))
    return hit["step"] if hit else None


def mb_to_target(curve: list[dict], target: float) -> float | None:
    """Training MB spent up to the first step whose validation acc_wg reached ``target``."""
    hit = _first(curve, target)
    return hit["mb"] if hit else None
