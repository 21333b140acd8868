"""The message codec (``clients.protocol``): what the fast path writes and reads is exactly what
Flower's own ``Array`` writes and reads, and whatever it does not know goes to Flower's path."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from clients.protocol import from_array, pack, pack_arrays, to_array, unpack, unpack_arrays
from fedanchors.health import all_finite, first_non_finite

ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.arange(7, dtype=np.int64),
    np.array(3.5),  # 0-d: a buffer such as BatchNorm's num_batches_tracked
    np.zeros((0, 5)),
    np.array([True, False, True]),
    np.linspace(-1, 1, 24, dtype=np.float16).reshape(2, 3, 4),
    np.arange(6, dtype=np.float64).reshape(2, 3).T,  # not C-ordered: written C-ordered
]


@pytest.mark.parametrize("a", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_the_codec_writes_flowers_bytes_and_reads_what_numpy_reads(a):
    ours = to_array(a)
    flowers = Array(a if a.flags.c_contiguous else np.ascontiguousarray(a))
    assert (ours.data, ours.dtype, tuple(ours.shape), ours.stype) == (
        flowers.data,
        flowers.dtype,
        tuple(flowers.shape),
        flowers.stype,
    )
    for arr in (ours, Array(a)):  # Flower's own bytes too, Fortran-ordered ones included
        back = from_array(arr)
        ref = np.load(io.BytesIO(arr.data), allow_pickle=False)
        assert back.dtype == ref.dtype and back.shape == ref.shape and np.array_equal(back, ref)
        assert back.flags.writeable
    assert from_array(ours).flags.c_contiguous


def test_a_state_dict_round_trips_bit_for_bit_and_only_the_asked_prefix_is_read():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())
    head = torch.nn.Linear(3, 2)
    rec = pack(encoder=net.state_dict(), head=head.state_dict())
    flowers = ArrayRecord(torch_state_dict={f"encoder.{k}": v for k, v in net.state_dict().items()})
    assert all(rec[k].data == flowers[k].data for k in flowers.keys())
    got = unpack(rec, "encoder.")
    assert list(got) == list(net.state_dict())
    for k, v in net.state_dict().items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v)
    assert list(unpack(rec, "head.")) == ["weight", "bias"] and unpack(rec, "anchors.") == {}
    stats = {"counts": np.array([1.0, 2.0]), "means": np.ones((2, 3))}
    assert all(np.array_equal(unpack_arrays(pack_arrays(**stats))[k], v) for k, v in stats.items())


def test_input_the_fast_path_does_not_know_gets_flowers_answer():
    good = to_array(np.arange(4, dtype=np.float32))
    short = Array(dtype=good.dtype, shape=tuple(good.shape), stype=good.stype, data=good.data[:-2])
    with pytest.raises(ValueError):  # NumPy's own complaint about the missing bytes
        from_array(short)
    garbage = Array(dtype="float32", shape=(4,), stype="numpy.ndarray", data=b"not an npy buffer at all")
    with pytest.raises(ValueError):
        from_array(garbage)
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    pickled = Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buf.getvalue())
    with pytest.raises(ValueError):  # a pickle is refused, never loaded
        from_array(pickled)


def test_all_finite_is_exact():
    assert all_finite(torch.ones(5)) and all_finite(torch.zeros(0)) and all_finite(torch.arange(3))
    big = torch.full((4,), 3e38)  # finite entries whose float32 sum overflows
    assert not torch.isfinite(big.sum()) and all_finite(big)
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.ones(1000)
        t[517] = bad
        assert not all_finite(t)
    mixed = torch.tensor([float("inf"), -float("inf"), 1.0])  # a NaN sum, still not finite
    assert not all_finite(mixed)
    p = torch.nn.Parameter(torch.ones(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a parameter's check builds no graph and warns of none
        assert all_finite(p)
    assert first_non_finite({"w": torch.tensor([1.0, float("nan")])})[0] == "w"
