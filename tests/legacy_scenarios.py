"""The four scenario functions as they were before they became presets (commit 8d8e947),
kept verbatim in logic as a reference: the presets must build exactly these tensors, on
whatever machine the tests run. Registered as ``legacy_<name>`` Python scenarios."""

from __future__ import annotations

import torch

from fedanchors.data.audio import SAMPLE_RATE, load_fsdd, log_mel
from fedanchors.data.base import (
    SCENARIOS,
    ScenarioData,
    Split,
    data_root,
    group_fractions,
    make_group,
    make_group_fixed_test,
    resize,
    scenario,
    scenario_options,
    split_fractions,
)
from fedanchors.data.digits import DigitsOptions, load_uci_digits
from fedanchors.data.mnist import MnistHeteroOptions, load_mnist, mnist_pool
from fedanchors.data.multimodal import Digits3WayOptions, MnistAudioOptions


def _register(name: str, options: type):
    return (lambda fn: fn) if f"legacy_{name}" in SCENARIOS else scenario(f"legacy_{name}", options)


@_register("digits", DigitsOptions)
def digits(cfg) -> ScenarioData:
    opts = scenario_options(DigitsOptions, cfg)
    names = ["digits8", "digits16"]
    sizes = group_fractions(opts.sizes, names)
    x, y = load_uci_digits()
    parts = split_fractions(len(y), group_fractions(opts.fractions, names), cfg.split_seed)
    groups = []
    for i, (name, idx, side) in enumerate(zip(names, parts, sizes)):
        xi = resize(x[idx], int(side))
        groups.append(make_group(name, f"px{int(side)}", xi, y[idx], cfg, cfg.split_seed + 1 + i))
    return ScenarioData(groups, 10)


@_register("mnist_hetero", MnistHeteroOptions)
def mnist_hetero(cfg) -> ScenarioData:
    opts = scenario_options(MnistHeteroOptions, cfg)
    names = ["mnist28", "mnist32"]
    fractions = group_fractions(opts.fractions, names)
    if opts.pool:
        x, y = mnist_pool(cfg)
        parts = split_fractions(len(y), fractions, cfg.split_seed)
        groups = []
        for i, (n, p) in enumerate(zip(names, parts)):
            side = 28 if n == "mnist28" else 32
            groups.append(make_group(n, n, resize(x[p], side), y[p], cfg, cfg.split_seed + 1 + i))
        return ScenarioData(groups, 10)
    files = load_mnist(cfg)
    (xtr, ytr), (xte, yte) = files["train"], files["test"]
    tr_parts = split_fractions(len(ytr), fractions, cfg.split_seed)
    te_parts = split_fractions(len(yte), fractions, cfg.split_seed + 100)
    groups = []
    for i, (n, ptr, pte) in enumerate(zip(names, tr_parts, te_parts)):
        side = 28 if n == "mnist28" else 32
        test = Split(resize(xte[pte], side), yte[pte])
        groups.append(make_group_fixed_test(n, n, resize(xtr[ptr], side), ytr[ptr], test, cfg, cfg.split_seed + 1 + i))
    return ScenarioData(groups, 10)


def _spectrograms(waves: torch.Tensor, opts: MnistAudioOptions) -> torch.Tensor:
    parts = [log_mel(w, SAMPLE_RATE, opts.n_fft, opts.hop, opts.n_mels) for w in torch.split(waves, 512)]
    return torch.cat(parts).unsqueeze(1)


@_register("mnist_audio", MnistAudioOptions)
def mnist_audio(cfg) -> ScenarioData:
    opts = scenario_options(MnistAudioOptions, cfg)
    x, y = mnist_pool(cfg)
    (idx,) = split_fractions(len(y), [opts.image_fraction], cfg.split_seed)
    image = make_group("image", "image", x[idx], y[idx], cfg, cfg.split_seed + 1)
    fsdd = load_fsdd(data_root(cfg) / "fsdd", opts.seconds)
    xtr, ytr = _spectrograms(fsdd["train"][0], opts), fsdd["train"][1]
    xte, yte = _spectrograms(fsdd["test"][0], opts), fsdd["test"][1]
    mean, std = xtr.mean(), xtr.std()
    audio = make_group_fixed_test(
        "audio", "audio", (xtr - mean) / std, ytr, Split((xte - mean) / std, yte), cfg, cfg.split_seed + 2
    )
    return ScenarioData([image, audio], 10)


@_register("digits_3way", Digits3WayOptions)
def digits_3way(cfg) -> ScenarioData:
    opts = scenario_options(Digits3WayOptions, cfg)
    names = ["mnist28", "mnist32"]
    xd, yd = load_uci_digits()
    groups = [make_group("digits8", "px8", xd, yd, cfg, cfg.split_seed + 1)]
    x, y = mnist_pool(cfg)
    parts = split_fractions(len(y), group_fractions(opts.fractions, names), cfg.split_seed)
    for i, (name, p) in enumerate(zip(names, parts)):
        side = 28 if name == "mnist28" else 32
        groups.append(make_group(name, f"px{side}", resize(x[p], side), y[p], cfg, cfg.split_seed + 2 + i))
    return ScenarioData(groups, 10)
