"""Issue 4's data: the log-mel front end, FSDD loading and its errors, TextCaps, sample files."""

from __future__ import annotations

import io
import shutil
import wave

import numpy as np
import pytest
import torch

from fedanchors.data import build_scenario
from fedanchors.data.audio import load_fsdd, log_mel, mel_filterbank, read_wav
from fedanchors.data.text import build_vocab, encode, tokenize
from fedanchors.errors import DataError
from fedanchors.samples import save_group_samples

from .conftest import named_groups, small_config
from .fixtures import CLASSES, make_textcaps
from .test_config import assert_one_line_error, cli


def numpy_log_mel(x: np.ndarray, rate: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    """Direct computation: reflect-pad, Hann frames, |rfft|^2, HTK mel triangles, log."""
    pad = np.pad(x, n_fft // 2, mode="reflect")
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann, as torch.hann_window
    frames = np.stack([pad[i : i + n_fft] * window for i in range(0, len(pad) - n_fft + 1, hop)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, F)
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(mel(0), mel(rate / 2), n_mels + 2) / 2595) - 1)
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    fb = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        fb[m] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return np.log(fb @ power.T + 1e-6)


def test_log_mel_matches_numpy():
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 8000
    x = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.normal(size=t.size)).astype(np.float64)
    ours = log_mel(torch.tensor(x)[None], 8000, n_fft=256, hop=128, n_mels=32)[0].numpy()
    ref = numpy_log_mel(x, 8000, 256, 128, 32)
    assert ours.shape == ref.shape == (32, 1 + 4000 // 128)
    assert np.allclose(ours, ref, atol=1e-6, rtol=1e-6)


def test_mel_filterbank_peaks_rise():
    fb = mel_filterbank(16, 256, 8000)
    peaks = fb.argmax(1)
    assert fb.shape == (16, 129) and bool((peaks[1:] > peaks[:-1]).all()) and float(fb.max()) <= 1.0


def _write_wav(path, samples: np.ndarray, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype("<i2").tobytes())


def test_read_wav_round_trip(tmp_path):
    x = np.sin(np.linspace(0, 20, 800)).astype(np.float32) * 0.5
    _write_wav(tmp_path / "a.wav", x)
    got, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and np.allclose(got, x, atol=1e-4)


def test_corrupt_and_truncated_wav_name_the_file(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF....not a wave at all")
    with pytest.raises(DataError, match="bad.wav"):
        read_wav(tmp_path / "bad.wav")
    _write_wav(tmp_path / "cut.wav", np.zeros(800, np.float32))
    data = (tmp_path / "cut.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) - 400])
    with pytest.raises(DataError, match="cut.wav.*truncated"):
        read_wav(tmp_path / "cut.wav")


def test_fsdd_official_split(shared_data):
    parts = load_fsdd(shared_data / "fsdd")
    (xtr, ytr, str_), (_, yte, ste) = parts["train"], parts["test"]
    assert len(ytr) == 2700 and len(yte) == 300  # 6 speakers x 10 digits x (45 | 5)
    assert xtr.shape[1] == 8000 and set(str_) == set(ste) and len(set(ste)) == 6
    assert torch.bincount(yte).tolist() == [30] * 10


def test_cli_corrupt_wav_and_missing_recordings(tmp_path, shared_data):
    root = tmp_path / "data"
    shutil.copytree(shared_data / "mnist", root / "mnist")
    rec = root / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for f in sorted((shared_data / "fsdd" / "recordings").iterdir())[:20]:
        shutil.copy(f, rec / f.name)
    (rec / "3_jackson_7.wav").write_bytes(b"garbage")
    res = cli("--config", "configs/mnist_audio.yaml", "--set", f"data.root={root}", "--set", f"out_dir={tmp_path}/r")
    assert_one_line_error(res, "3_jackson_7.wav")
    shutil.rmtree(rec)
    res = cli("--config", "configs/mnist_audio.yaml", "--set", f"data.root={root}", "--set", f"out_dir={tmp_path}/r")
    assert_one_line_error(res, "recordings", "data.root")


def test_vocab_from_training_split_only():
    vocab = build_vocab(["a red car", "a red sign"], "word")
    assert vocab[:4] == ["<pad>", "<unk>", "a", "red"]
    ids = encode(["a blue car"], vocab, "word", 5)
    assert ids.tolist() == [[2, 1, vocab.index("car"), 0, 0]]  # unseen "blue" -> <unk>
    assert tokenize("Ab!", "char") == ["a", "b", "!"]


def test_textcaps_loader_on_fixture(tmp_path):
    make_textcaps(tmp_path)
    cfg = small_config(
        tmp_path,
        data={"groups": named_groups("textcaps", top_k=3, image_size=16), "root": str(tmp_path), "max_per_group": 0},
    )
    data = build_scenario(cfg.data)
    image, text = data.groups
    # per image: 8 as main class each, plus second classes on i % 3 == 0 -> Vehicle, Sign,
    # Bottle, Clock 11 images, Book 10; ties broken alphabetically
    assert data.num_classes == 3 and text.meta["classes"] == ["Bottle", "Clock", "Sign"]
    assert image.shape == (3, 16, 16) and text.train.x.dtype == torch.int64
    train_ids = {int(t) for t in text.train.x.flatten()}
    assert max(train_ids) < text.meta["vocab_size"]
    # entries without a top-3 class are dropped; each image goes to one group only
    assert len(image.train) + len(image.val) + len(text.train) // 2 + len(text.val) // 2 <= 40
    assert set(image.test.y.tolist()) <= {0, 1, 2} and len(text.test) > 0


def test_textcaps_missing_annotations(tmp_path):
    cfg = small_config(tmp_path, data={"scenario": "textcaps", "root": str(tmp_path)})
    with pytest.raises(DataError, match="TextCaps_0.1_train.json not found"):
        build_scenario(cfg.data)


def test_sample_files_written(tmp_path, shared_data):
    make_textcaps(tmp_path)
    cfg = small_config(tmp_path, data={"groups": named_groups("textcaps", top_k=3), "root": str(tmp_path)})
    written = save_group_samples(build_scenario(cfg.data), tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["samples_image.png", "samples_text.txt", "vocab_text.json"]
    assert (tmp_path / "samples_image.png").read_bytes()[:4] == b"\x89PNG"
    assert any(w in (tmp_path / "samples_text.txt").read_text() for w in ("bottle", "clock", "sign"))
    assert set(CLASSES) >= set(__import__("json").loads((tmp_path / "vocab_text.json").read_text())["classes"])
    audio = small_config(tmp_path, data={"scenario": "mnist_audio", "root": str(shared_data), "max_per_group": 40})
    out = tmp_path / "audio"
    out.mkdir()
    assert sorted(p.name for p in save_group_samples(build_scenario(audio.data), out)) == [
        "samples_audio.png",
        "samples_image.png",
    ]
    assert io.BytesIO((out / "samples_audio.png").read_bytes()).read(4) == b"\x89PNG"
