"""What travels in each message of the round protocol (shared by client and server).

train (server -> client): ``global`` ArrayRecord (head.*, anchors.*, and encoder.* only
when the client's input space is shared), ``config`` ConfigRecord (round, weight,
encoder_scale). Reply: ``global`` (head.*, encoder.* when shared), ``stats`` ArrayRecord
(counts (C,), means (C, d), covs (C, d, d)), ``metrics`` MetricRecord.
A private encoder never appears in any message.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

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


_NPY = "numpy.ndarray"  # Flower's stype for np.save bytes
_HEADERS: dict[tuple, bytes] = {}  # (dtype, shape) -> np.save's header for a C-ordered array
_PARSED: OrderedDict[bytes, tuple[np.dtype, tuple[int, ...]]] = OrderedDict()  # header -> dtype, shape
_PARSED_MAX = 4096  # distinct headers remembered (a model has a few dozen)


def to_array(a: np.ndarray) -> Array:
    """``Array(a)`` without ``np.save``'s per-array header writing: the header ``np.save`` writes
    for this dtype and shape (made by ``np.save`` once and kept), then the C-ordered bytes. The
    same bytes as Flower's own ``Array(ndarray)``, so any Flower peer reads them."""
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    key = (a.dtype.str, a.shape)
    header = _HEADERS.get(key)
    if header is None:
        if a.dtype.hasobject:
            return Array(a)  # refused by np.save(allow_pickle=False), as before
        full = Array(a).data
        header = full[: len(full) - a.nbytes]
        if len(_HEADERS) < _PARSED_MAX:
            _HEADERS[key] = header
    data = b"".join((header, memoryview(a).cast("B"))) if a.ndim and a.size else header + a.tobytes()
    return Array(dtype=str(a.dtype), shape=tuple(a.shape), stype=_NPY, data=data)


def _header_end(data: bytes) -> int:
    """Where an .npy buffer's header ends (0: not one this reader knows)."""
    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        return 0
    if data[6] == 1:
        return 10 + struct.unpack_from("<H", data, 8)[0]
    if data[6] in (2, 3) and len(data) >= 12:
        return 12 + struct.unpack_from("<I", data, 8)[0]
    return 0


def from_array(arr: Array) -> np.ndarray:
    """``arr.numpy()`` (a writable array, ``np.load``'s result) without parsing the same header
    again for every array: each distinct header is parsed once by NumPy's own reader and kept,
    keyed by its exact bytes, so what a header means never depends on this code. A header
    that is not a C-ordered, non-object one, or data of the wrong length, takes
    ``arr.numpy()`` (which refuses pickles and malformed input as before)."""
    data = arr.data
    end = _header_end(data) if arr.stype == _NPY else 0
    if not end or end > len(data):
        return arr.numpy()
    head = data[:end]
    meta = _PARSED.get(head)
    if meta is None:
        meta = _parse_header(head)
        if meta is None:
            return arr.numpy()
        _PARSED[head] = meta
        if len(_PARSED) > _PARSED_MAX:
            _PARSED.popitem(last=False)
    dtype, shape = meta
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(data) - end != count * dtype.itemsize:
        return arr.numpy()
    return np.frombuffer(data, dtype=dtype, count=count, offset=end).reshape(shape).copy()


def _parse_header(head: bytes) -> tuple[np.dtype, tuple[int, ...]] | None:
    """NumPy's reading of an .npy header: (dtype, shape), None unless C-ordered and not objects."""
    import io

    try:
        fp = io.BytesIO(head)
        major, _ = np.lib.format.read_magic(fp)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(fp)
    except Exception:  # noqa: BLE001 - np.load then says what is wrong
        return None
    if fortran or dtype.hasobject or fp.read(1):
        return None
    return dtype, tuple(shape)


def pack(**modules: dict[str, torch.Tensor]) -> ArrayRecord:
    """ArrayRecord of prefixed state dicts, e.g. pack(head=..., anchors=...)."""
    record = ArrayRecord()
    for name, sd in modules.items():
        for k, v in sd.items():
            record[f"{name}.{k}"] = to_array(v.detach().cpu().numpy())
    return record


def unpack(record: ArrayRecord, prefix: str) -> dict[str, torch.Tensor]:
    """The state dict stored under ``prefix`` (empty when absent); only those arrays are read."""
    return OrderedDict(
        (k[len(prefix) :], torch.from_numpy(from_array(record[k]))) for k in record.keys() if k.startswith(prefix)
    )


def pack_arrays(**arrays: np.ndarray) -> ArrayRecord:
    """ArrayRecord of named numpy arrays."""
    record = ArrayRecord()
    for k, v in arrays.items():
        record[k] = to_array(np.ascontiguousarray(v))
    return record


def unpack_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: from_array(v) for k, v in record.items()}


def message_bytes(msg: Message) -> int:
    """Bytes of array payload carried by a message (arrays dominate every message)."""
    if not msg.has_content():
        return 0
    return sum(rec.count_bytes() for rec in msg.content.array_records.values())
