"""Spoken digits: WAV reading (standard library ``wave``), log-mel front end, FSDD loader.

The front end is ``torch.stft`` and a triangular mel filter bank (HTK mel scale), no
torchaudio: log(mel @ |STFT|^2 + 1e-6) on waveforms cut or zero-padded to a fixed length.
"""

from __future__ import annotations

import re
import wave
from pathlib import Path

import numpy as np
import torch

from fedanchors.errors import DataError

SAMPLE_RATE = 8000
_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono 16-bit PCM -> (float32 samples in [-1, 1], rate); a bad file is a DataError naming it."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, OSError) as e:
        raise DataError(f"{path} is not a readable WAV file ({e}); replace it with an intact copy") from None
    if width != 2:
        raise DataError(f"{path}: {8 * width}-bit samples, expected 16-bit PCM; convert or replace it")
    if len(raw) != n * channels * width or n == 0:
        raise DataError(f"{path} is truncated ({len(raw)} of {n * channels * width} bytes); replace it")
    x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    return x.reshape(-1, channels).mean(1), rate


def fix_length(x: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad to ``length`` samples."""
    return x[:length] if len(x) >= length else np.pad(x, (0, length - len(x)))


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, rate: int, fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    """Triangular filters (n_mels, n_fft // 2 + 1) on the HTK mel scale."""
    fmax = fmax or rate / 2
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return torch.tensor(np.clip(np.minimum(up, down), 0.0, None), dtype=torch.float32)


def log_mel(waves: torch.Tensor, rate: int, n_fft: int = 256, hop: int = 128, n_mels: int = 32) -> torch.Tensor:
    """(N, L) waveforms -> (N, n_mels, 1 + L // hop) log-mel power spectrograms."""
    window = torch.hann_window(n_fft, dtype=waves.dtype)
    spec = torch.stft(waves, n_fft, hop_length=hop, window=window, center=True, return_complex=True)
    power = spec.abs() ** 2  # (N, n_fft // 2 + 1, T)
    return torch.log(mel_filterbank(n_mels, n_fft, rate).to(waves.dtype) @ power + 1e-6)


def load_fsdd(root: Path, seconds: float = 1.0) -> dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """FSDD's ``recordings/{digit}_{speaker}_{index}.wav``: official split (index 0-4 = test).

    -> {"train"|"test": (waveforms (N, L), labels (N,), speakers)} at 8 kHz, L = seconds * 8000.
    """
    rec = root / "recordings"
    if not rec.is_dir():
        raise DataError(
            f"FSDD recordings folder {rec} not found; set data.root (or FEDANCHORS_DATA) to the folder "
            "holding fsdd/recordings"
        )
    files = sorted(p for p in rec.iterdir() if _NAME.match(p.name))
    if not files:
        raise DataError(f"no FSDD recordings named <digit>_<speaker>_<index>.wav in {rec}")
    length = int(seconds * SAMPLE_RATE)
    out: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "test": ([], [], [])}
    for p in files:
        digit, speaker, index = _NAME.match(p.name).groups()
        x, rate = read_wav(p)
        if rate != SAMPLE_RATE:
            raise DataError(f"{p}: {rate} Hz, expected {SAMPLE_RATE} Hz like the rest of FSDD; replace it")
        part = out["test" if int(index) <= 4 else "train"]
        part[0].append(fix_length(x, length))
        part[1].append(int(digit))
        part[2].append(speaker)
    return {k: (torch.tensor(np.stack(w)), torch.tensor(y), s) for k, (w, y, s) in out.items() if y}
