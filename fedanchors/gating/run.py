"""The gate's run: experts made ready, the epoch loop of both modes, selection, the run folder.

Splits (the long-tail gate): the experts trained on the ``expert`` split (their runs'
``data.gating_fraction`` held 10% of each class out of training); the gate trains on that
``gating`` split, is selected on validation balanced accuracy (the mean of head and tail
accuracy) and reported on test.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch

from fedanchors.errors import RunFailed
from fedanchors.gating import core
from fedanchors.gating.config import GatingConfig
from fedanchors.gating.experts import GateSplit
from fedanchors.gating.losses import group_priors
from fedanchors.models import stable_seed
from fedanchors.rundir import _jsonable


class CentralGate:
    """The gate on all gating examples in one process."""

    def __init__(self, cfg: GatingConfig, splits: dict[str, GateSplit], head: torch.Tensor) -> None:
        self.cfg, self.C = cfg, splits["gating"].logits.shape[-1]
        self.blocks = {s: (*core.prepare(d.logits), d.y) for s, d in splits.items()}
        _, post, y = self.blocks["gating"]
        self.head_of_class = (~head).long()  # 0 head, 1 tail
        self.cw = core.class_weights(torch.bincount(y, minlength=self.C))
        lc = cfg.loss
        self.priors = group_priors(post, y, self.head_of_class, 2, lc.prior_temperature) if lc.prior else None
        self.net = core.build_gate(cfg, post.shape[1])
        self.opt = core.make_opt(self.net, cfg)
        self.gen = torch.Generator().manual_seed(stable_seed(cfg.seed, "gate-batches"))

    def train(self, epoch: int, temperature: float, lr: float) -> dict[str, float]:
        for g in self.opt.param_groups:
            g["lr"] = lr
        feats, post, y = self.blocks["gating"]
        c = self.cfg
        return core.train_epoch(self.net, self.opt, feats, post, y, c, self.cw, self.head_of_class, self.priors,
                                temperature, self.gen)  # fmt: skip

    def counts(self, split: str, temperature: float, uniform: bool = False) -> dict[str, torch.Tensor]:
        """The split's counts under the gate (``uniform``: the plain average of the experts)."""
        feats, post, y = self.blocks[split]
        w = torch.full(post.shape[:2], 1.0 / post.shape[1]) if uniform else core.route(self.net, feats, temperature)
        return core.count_stats(post, w, y, self.C)

    def state(self) -> dict:
        return copy.deepcopy(self.net.state_dict())

    def load(self, state: dict) -> None:
        self.net.load_state_dict(state)


def gate_loop(trainer, cfg: GatingConfig, head: torch.Tensor, names: list[str], out: Path) -> dict:
    """Epochs with the annealed temperature and scheduled lr; the best epoch by validation
    balanced accuracy is kept and reported on test (with each expert and the oracle)."""
    o = cfg.optim
    history, best, best_state, best_t = [], None, None, o.temp_start
    with open(out / "metrics.jsonl", "w") as log:
        for epoch in range(o.epochs):
            t = core.router_temperature(epoch, o.epochs, o.temp_start, o.temp_end)
            lr = o.lr * core.lr_factor(epoch, o.epochs, o.warmup_epochs)
            tr = trainer.train(epoch, t, lr)
            if not all(math.isfinite(v) for v in tr.values()):
                raise RunFailed(f"epoch {epoch + 1}: the gate's loss is not finite ({tr}); lower optim.lr")
            val = core.metrics(trainer.counts("val", t), head, names)
            rec = {"epoch": epoch + 1, "temperature": t, "lr": lr}
            rec |= {f"train_{k}": v for k, v in tr.items()} | {f"val_{k}": v for k, v in val.items()}
            history.append(rec)
            log.write(json.dumps(_jsonable(rec)) + "\n")
            if best is None or val["balanced_acc"] > history[best]["val_balanced_acc"]:
                best, best_state, best_t = epoch, trainer.state(), t
    trainer.load(best_state)
    torch.save(best_state, out / "best_gate.pt")
    test = core.metrics(trainer.counts("test", best_t), head, names)
    mean = core.metrics(trainer.counts("test", best_t, uniform=True), head, names)  # reference: no gate
    (out / "history.json").write_text(json.dumps(_jsonable(history), indent=1) + "\n")
    summary = {"best_epoch": best + 1, "temperature": best_t, "val_balanced_acc": history[best]["val_balanced_acc"]}
    summary |= {f"test_{k}": v for k, v in test.items()}
    return summary | {f"test_average_{k}": mean[k] for k in ("acc", "head_acc", "tail_acc", "balanced_acc")}


def plot_history(out: Path) -> Path | None:
    """history.png: validation balanced / head / tail accuracy, the loss and the effective experts."""
    from fedanchors.plots import _pyplot

    plt = _pyplot()
    hist = json.loads((out / "history.json").read_text())
    x = [r["epoch"] for r in hist]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for k in ("val_balanced_acc", "val_head_acc", "val_tail_acc", "val_oracle_balanced_acc"):
        ax[0].plot(x, [r[k] for r in hist], label=k[4:])
    ax[0].set_title("validation accuracy")
    ax[0].legend(fontsize=7)
    for k in [k for k in hist[0] if k.startswith("train_")]:
        ax[1].plot(x, [r[k] for r in hist], label=k[6:])
    ax[1].set_title("training terms")
    ax[1].legend(fontsize=7)
    ax[2].plot(x, [r["val_effective_experts"] for r in hist], label="effective experts")
    for k in [k for k in hist[0] if k.startswith("val_load:")]:
        ax[2].plot(x, [r[k] for r in hist], label=k[4:])
    ax[2].set_title("routing (validation)")
    ax[2].legend(fontsize=7)
    for a in ax:
        a.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=110)
    plt.close(fig)
    return out / "history.png"
