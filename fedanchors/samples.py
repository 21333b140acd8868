"""What each group's inputs look like, saved at the start of a run.

Image and spectrogram groups -> ``samples_<group>.png`` (a labelled grid of training
inputs); text groups -> ``samples_<group>.txt`` (decoded captions) and ``vocab_<group>.json``
(the vocabulary built from the training split, needed to reuse the model).
"""

from __future__ import annotations

import json
from pathlib import Path

from fedanchors.data import GroupData, ScenarioData


def save_group_samples(data: ScenarioData, out: Path, per_group: int = 16, images: bool = True) -> list[Path]:
    """Write every group's sample file(s) into ``out``; returns the paths written. ``images:
    false`` (``logging.plots: false``) skips the image grids; a text group's vocabulary and
    captions are always written (the model's token ids refer to that vocabulary)."""
    written = []
    for g in data.groups:
        if "vocab" in g.meta:
            written += _text(g, out, per_group)
        elif images and g.train.x.dtype.is_floating_point and g.train.x.dim() == 4:
            written.append(_grid(g, out, per_group))
    return written


def _grid(g: GroupData, out: Path, n: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = _one_per_class(g.train.x, g.train.y, n)
    cols = min(8, len(x))
    rows = (len(x) + cols - 1) // cols
    wide = x.shape[-1] > 1.5 * x.shape[-2]  # spectrograms: time runs along the width
    fig, axes = plt.subplots(rows, cols, figsize=(cols * (2.0 if wide else 1.3), rows * 1.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[: len(x)]):
        img = x[i].permute(1, 2, 0).squeeze(-1) if x.shape[1] in (1, 3) else x[i, 0]
        kw = {"cmap": "magma", "origin": "lower", "aspect": "auto"} if wide else {"cmap": "gray"}
        ax.imshow(img.clamp(0, 1).numpy() if x.shape[1] == 3 else img.numpy(), **kw)
        ax.set_title(f"y={int(y[i])}", fontsize=8)
    fig.suptitle(f"group {g.name} (space {g.space}, input {tuple(x.shape[1:])})", fontsize=9)
    fig.tight_layout()
    path = out / f"samples_{g.name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _one_per_class(x, y, n: int):
    """Up to n examples, cycling through the classes so every class shows."""
    order, seen = [], {}
    for i, c in enumerate(y.tolist()):
        seen.setdefault(c, []).append(i)
    while len(order) < min(n, len(y)):
        for c in sorted(seen):
            if seen[c] and len(order) < n:
                order.append(seen[c].pop(0))
    return x[order], y[order]


def _text(g: GroupData, out: Path, n: int) -> list[Path]:
    vocab = g.meta["vocab"]
    sep = "" if g.meta.get("tokens") == "char" else " "
    lines = []
    for ids, y in zip(g.train.x[:n], g.train.y[:n]):
        toks = [vocab[int(t)] for t in ids if int(t) != 0]
        lines.append(f"y={int(y)}\t{sep.join(toks)}")
    txt = out / f"samples_{g.name}.txt"
    txt.write_text("\n".join(lines) + "\n")
    voc = out / f"vocab_{g.name}.json"
    voc.write_text(json.dumps({"tokens": g.meta.get("tokens"), "vocab": vocab, "classes": g.meta.get("classes")}))
    return [txt, voc]
