"""What travels in each message of the round protocol (shared by client and server).

train (server -> client): ``global`` ArrayRecord (head.*, anchors.*, and encoder.* only
when the client's input space is shared), ``config`` ConfigRecord (round, weight,
encoder_scale). Reply: ``global`` (head.*, encoder.* when shared), ``stats`` ArrayRecord
(counts (C,), means (C, d), covs (C, d, d)), ``metrics`` MetricRecord.
A private encoder never appears in any message.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message

HEAD, ANCHORS, ENCODER = "head.", "anchors.", "encoder."
# opens a client's error when its saved state (its private encoder, its optimizer) is gone or
# unreadable: not a transient failure to skip, since every later round would fail the same
# way and the client would silently leave the population; the server stops the run on it
STATE_LOST = "client state lost:"
# the marker of a client whose state file could not be written (disk full, read-only, no
# permission): the run stops with that one line, the server's last checkpoint intact
WRITE_FAILED = "client state not written:"


def pack(**modules: dict[str, torch.Tensor]) -> ArrayRecord:
    """ArrayRecord of prefixed state dicts, e.g. pack(head=..., anchors=...)."""
    flat = {f"{name}.{k}": v.detach().cpu() for name, sd in modules.items() for k, v in sd.items()}
    return ArrayRecord(torch_state_dict=flat) if flat else ArrayRecord()


def unpack(record: ArrayRecord, prefix: str) -> dict[str, torch.Tensor]:
    """The state dict stored under ``prefix`` (empty when absent)."""
    sd = record.to_torch_state_dict()
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def pack_arrays(**arrays: np.ndarray) -> ArrayRecord:
    """ArrayRecord of named numpy arrays."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def unpack_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def message_bytes(msg: Message) -> int:
    """Bytes of array payload carried by a message (arrays dominate every message)."""
    if not msg.has_content():
        return 0
    return sum(rec.count_bytes() for rec in msg.content.array_records.values())
