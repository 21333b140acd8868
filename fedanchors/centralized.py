"""The centralized mode: every group in one process, the baseline federated runs face.

Mixed batches are drawn from the union of the groups' training sets; each group's
sub-batch goes through the encoder of its input space (no padding across spaces). The
loss is sum_g w_g CE_g + lambda_fit sum_g w_g fit_g + lambda_sep sep, with w from the
method; GroupDRO updates q after the optimizer step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedanchors import dynamics
from fedanchors.aggregate import barycenter_step
from fedanchors.analysis import anchor_w2, chunks, cross_group_w2, group_class_gaussians
from fedanchors.config import Config, anchor_update
from fedanchors.data import ScenarioData
from fedanchors.dfr import check_dfr_layer, layer_view, linear_head, select_and_fit
from fedanchors.health import check_finite, flat_params, module_tensors, moved
from fedanchors.loop import run_loop
from fedanchors.losses import anchor_fit_objective, class_loss, log_prior
from fedanchors.methods import Method, build_method
from fedanchors.metrics import client_accuracies, client_summary, group_metrics
from fedanchors.models import build_anchors, build_encoder, build_head, stable_seed
from fedanchors.population import build_population, has_population
from fedanchors.resume import MISMATCH, global_rng_state, mismatch, set_global_rng_state
from fedanchors.rundir import RunDir, resolve_device, seed_everything
from fedanchors.train import (
    GroupCycler,
    batches,
    clip_and_step,
    group_batch_sizes,
    group_objective,
    lr_at,
    make_optimizer,
    own_rates,
    separation_loss,
    set_lr,
    steps_per_epoch,
)


class CentralModel(nn.Module):
    """Encoders per input space, the shared head and the anchors."""

    def __init__(self, cfg: Config, data: ScenarioData) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(
            {s: build_encoder(cfg.model, s, g.shape, cfg.seed, g.meta) for s, g in data.spaces().items()}
        )
        self.head = build_head(cfg.model, data.num_classes, cfg.seed)
        a = cfg.anchors
        self.anchors = build_anchors(
            cfg.model.latent_dim, data.num_classes, a.eps, a.init_scale, cfg.seed, a.covariance
        )


class CentralizedTrainer:
    """Owns model, optimizer and method; ``train_step`` on one mixed batch. Implements
    ``fedanchors.loop.Trainer`` (one epoch per step of the loop)."""

    mode, unit, eval_every = "centralized", "epoch", 1
    files = {"resume": "resume.pt", "best": "best.pt", "last": "last.pt"}

    def __init__(self, cfg: Config, data: ScenarioData, device: torch.device | None = None) -> None:
        seed_everything(cfg.seed, cfg.deterministic)
        if cfg.dfr.enabled and cfg.dfr.val == "split_from_train":  # DFR's examples never train the model
            from fedanchors.data import carve_gating

            data = carve_gating(data, cfg.dfr.val_ratio, cfg.data.split_seed)
        self.cfg, self.data = cfg, data
        self.device = device or resolve_device(cfg.device)
        self.model = CentralModel(cfg, data).to(self.device)
        self.method: Method = build_method(cfg.method, data.names)
        self.method.sizes = torch.tensor([len(g.train) for g in data.groups])
        self.params = [p for p in self.model.parameters()]
        self.opt = make_optimizer(self.params, cfg.optim)
        self.gen = torch.Generator().manual_seed(stable_seed(cfg.seed, "batches"))
        self.sep_gen = torch.Generator(self.device).manual_seed(stable_seed(cfg.seed, "separation"))
        self.train_x = [g.train.x.to(self.device) for g in data.groups]
        self.train_y = [g.train.y.to(self.device) for g in data.groups]
        sizes = torch.tensor([len(g.train) for g in data.groups])
        self.owner = torch.repeat_interleave(torch.arange(len(sizes)), sizes)  # union index -> group
        self.offset = torch.cumsum(sizes, 0) - sizes
        self.group_batch = group_batch_sizes(data.names, cfg.optim)
        self.cyclers = [GroupCycler(int(n), self.gen) for n in sizes]
        self.steps = steps_per_epoch(sizes.tolist(), data.names, cfg.optim)
        self.total = cfg.optim.epochs
        f = cfg.federated
        self.population = build_population(data, f, cfg.seed) if has_population(f, data) else None
        self.barycenter = anchor_update(cfg) == "barycenter"
        # the training class prior of the long-tail losses (loss.name), from every group's labels
        counts = sum(torch.bincount(g.train.y, minlength=data.num_classes) for g in data.groups)
        self.logp = log_prior(counts).to(self.device)
        self.analysis_out: list[dict] = []  # finished analysis records, drained by the loop

    # -- fedanchors.loop.Trainer ---------------------------------------------------------
    def setup(self) -> None:
        pass

    def train(self, t: int) -> dict[str, float]:
        """Epoch ``t``: the step means of the objective's terms (analysed first when due)."""
        record = self.analyse(t) if dynamics.due(self.cfg, t) else None
        set_lr(self.opt, lr_at(self.cfg.optim, t, self.total))
        sums: dict[str, float] = {}
        before = flat_params(self.parts())
        steps = self.epoch_batches()
        for idx in steps:
            for k, v in self.train_step(idx, t - 1).items():
                sums[k] = sums.get(k, 0.0) + v
        out = {k: v / len(steps) for k, v in sums.items()} | moved(before, self.parts())
        if self.barycenter and self.cfg.anchors.lambda_fit > 0:
            out["anchor_fit"] = self.barycenter_step(t)
        self.check_model(f"epoch {t}")
        if record is not None:
            if "_losses" in record:  # the change of each group's loss over the epoch just trained
                after = self.group_losses(self.analysis_batches())
                for i, n in enumerate(self.data.names):
                    record[f"obs_epoch_change:{n}"] = float(after[i] - record["_losses"][i])
                del record["_losses"]
            self.analysis_out.append(record)
        return out

    # -- the gap analyses (fedanchors.dynamics) -----------------------------------------
    def analysis_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per group, the full batch the analyses use: its training split, or its first
        ``analysis.max_examples`` in a fixed seeded order."""
        out, m = [], self.cfg.analysis.max_examples
        for g, (x, y) in enumerate(zip(self.train_x, self.train_y)):
            idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(stable_seed(self.cfg.seed, "an", g)))
            idx = idx[:m] if m else idx
            out.append((x[idx.to(x.device)], y[idx.to(y.device)]))
        return out

    def parts(self) -> dict[str, nn.Module]:
        """The head and each space's encoder (``move:*``)."""
        return {"head": self.model.head} | {f"enc:{s}": e for s, e in self.model.encoders.items()}

    def _encoders(self) -> list[nn.Module]:
        return [self.model.encoders[g.space] for g in self.data.groups]

    @torch.no_grad()
    def group_losses(self, batches) -> torch.Tensor:
        was = self.model.training
        self.model.eval()
        m = self.model
        out = [
            float(class_loss(m.head(e(x)), y, self.cfg.loss, self.logp)) for e, (x, y) in zip(self._encoders(), batches)
        ]
        self.model.train(was)
        return torch.tensor(out, dtype=torch.float64)

    def analyse(self, t: int) -> dict:
        """The configured analyses on the model entering epoch ``t`` (eval mode: no dropout)."""
        a, cfg, names = self.cfg.analysis, self.cfg, self.data.names
        batches, encs, head = self.analysis_batches(), self._encoders(), self.model.head
        was = self.model.training
        self.model.eval()
        rec: dict = {"epoch": t}
        try:
            if a.gradient_basis or a.gap_dynamics:
                G, losses, params = dynamics.group_gradients(encs, head, batches, cfg.loss, self.logp)
                shared = dynamics.shared_mask(params, head, encs)
                if a.gradient_basis:
                    rec |= dynamics.basis(G, shared, names)
                if a.gap_dynamics:
                    sizes = torch.tensor([len(g.train) for g in self.data.groups])
                    p = self.method.weights(sizes, losses, t - 1).double()
                    lr = a.probe_lr or cfg.optim.lr
                    new = dynamics.probe_step(encs, head, batches, G, params, p, lr, cfg.loss, self.logp)
                    pred = dynamics.rates(G @ G.T, p)
                    rec |= dynamics.gap_terms(names, losses, pred, (new - losses) / lr, p)
                    rec["_losses"] = losses
            if a.static_dynamic:
                rec |= self.static_dynamic()
            if a.jacobian:
                gen = torch.Generator().manual_seed(stable_seed(cfg.seed, "jacobian", t))
                for n, e, (x, _) in zip(names, encs, batches):
                    jac = dynamics.encoder_head_jacobians(e, head, x[: a.jacobian_examples], a.projections, gen)
                    rec |= {f"{k}:{n}": v for k, v in jac.items()}
        finally:
            self.model.train(was)
        return rec

    def static_dynamic(self) -> dict[str, float]:
        """Validation accuracy gap of the model and of a group-balanced probe on its frozen codes."""
        names = self.data.names
        val = self.metrics("val")
        model = {n: val[f"acc_group:{n}"] for n in names}
        z_tr, y_tr, g_tr = self.codes("train")
        z_va, y_va, g_va = self.codes("val")
        seed = stable_seed(self.cfg.seed, "static-probe")
        probe = dynamics.probe_accuracies(z_tr, y_tr, g_tr, z_va, y_va, g_va, self.cfg.analysis.probe_C,
                                          self.data.num_classes, seed, names)  # fmt: skip
        return dynamics.decomposition(model, probe)

    def barycenter_step(self, t: int) -> float:
        """``anchors.update: barycenter``: one W2-barycenter step of the anchors toward the
        groups' class moments of their training codes (the federated server's rule, on exact
        moments), weighted by the method's group weights; returns the fit objective after it."""
        C, eps = self.data.num_classes, self.cfg.anchors.cov_eps
        stats = [
            group_class_gaussians(self.model.encoders[g.space], x, g.train.y, C, eps, self.model.anchors.structure)
            for g, x in zip(self.data.groups, self.train_x)
        ]
        counts, means, covs = (torch.stack([s[i] for s in stats]) for i in range(3))
        sizes = torch.tensor([len(g.train) for g in self.data.groups])
        w = self.method.weights(sizes, None, t - 1).float()
        w = w / w.sum()
        anchors = self.model.anchors
        barycenter_step(
            anchors, counts, means.to(anchors.means.dtype), covs.to(anchors.means.dtype), w,
            by_counts=self.cfg.anchors.fit == "prototype",
        )  # fmt: skip
        with torch.no_grad():
            return float(anchor_fit_objective(anchors, counts, means, covs, w))

    def evaluate(self, splits: tuple[str, ...]) -> dict[str, dict[str, float]]:
        return {s: self.metrics(s) | self.client_metrics(s) for s in splits}

    def client_metrics(self, split: str) -> dict[str, float]:
        """With a federated population in the config (``federated.clients``), the same
        client-level accuracies the federated run reports, on the same client slices."""
        if self.population is None:
            return {}
        encoders = [self.model.encoders[g.space] for g in self.data.groups]
        accs = client_accuracies(encoders, self.model.head, self.data, self.population, split, self.device)
        return client_summary(accs, [c.group for c in self.population], self.data.names) | {"client_accs": accs}

    def extras(self) -> dict[str, float]:
        out = anchor_w2(dict(self.model.encoders), self.model.anchors, self.data)
        return out | {f"q:{n}": float(q) for n, q in zip(self.data.names, self.method.q)}

    def end(self, t: int) -> None:
        return None

    def on_best(self, t: int) -> None:
        pass

    def side_logs(self) -> dict[str, list[dict]]:
        return {"analysis.jsonl": self.analysis_out}  # the gap analyses' finished records

    def model_state(self) -> dict:
        return {"model": self.model.state_dict(), "method": self.method.state_dict()}

    def load_model_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])

    def final(self) -> dict:
        """Cross-group distances and DFR, with the best model loaded."""
        out = {}
        if len(self.data.groups) > 1:  # how close the groups' class Gaussians sit in the latent space
            out.update(
                {f"test_{k}": v for k, v in cross_group_w2(dict(self.model.encoders), self.data, "test").items()}
            )
        if self.cfg.dfr.enabled:
            out.update(self.dfr())
        return out | {"device": str(self.device)}

    def epoch_batches(self) -> list[torch.Tensor]:
        """This epoch's mixed batches of union indices: uniform over the union, or with
        ``optim.group_batch`` a fixed number from each group per batch (small groups cycle)."""
        if not self.group_batch:
            return batches(len(self.owner), self.cfg.optim.batch_size, self.gen)
        return [
            torch.cat([self.offset[g] + c.take(b) for g, (c, b) in enumerate(zip(self.cyclers, self.group_batch))])
            for _ in range(self.steps)
        ]

    def train_step(self, idx: torch.Tensor, epoch: int) -> dict[str, float]:
        """One optimizer step on the mixed batch ``idx``; returns the step's scalars."""
        cfg, m = self.cfg, self.model
        owner = self.owner[idx]
        present = [g for g in range(len(self.data.groups)) if bool((owner == g).any())]
        xs, ys = {}, {}
        for g in present:
            rows = idx[owner == g] - self.offset[g]
            xs[g], ys[g] = self.train_x[g][rows], self.train_y[g][rows]
        zs = self._encode(xs)
        ces = [class_loss(m.head(zs[g]), ys[g], cfg.loss, self.logp) for g in present]
        zs, ys = [zs[g] for g in present], [ys[g] for g in present]
        G = len(self.data.groups)
        losses = torch.full((G,), float("nan"), dtype=torch.float64)
        losses[present] = torch.stack(ces).detach().double().cpu()
        counts = torch.bincount(owner, minlength=G)
        w = self.method.weights(counts, losses, epoch)[present].to(self.device, torch.float32)
        try:
            loss, ce, fit = group_objective(ces, zs, ys, w, m.anchors, cfg.anchors, self.barycenter)
        except torch.linalg.LinAlgError:  # only on overflowing codes
            self.check({"the W2 fit (an eigendecomposition failed)": float("nan")}, f"epoch {epoch + 1}")
        out = {"loss": float(ce.detach())}
        if fit is not None:
            out["fit"] = float(fit.detach())
        if cfg.anchors.lambda_sep > 0:
            sep = separation_loss(m.anchors, m.head, cfg.anchors, self.sep_gen)
            loss = loss + cfg.anchors.lambda_sep * sep
            out["sep"] = float(sep.detach())
        self.check(out, f"epoch {epoch + 1}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.method.encoder_weighting == "own":
            spaces = [self.data.groups[g].space for g in present]
            own_rates(dict(self.model.encoders), spaces, w.tolist())
        clip_and_step(self.opt, self.params, cfg.optim.grad_clip)
        if cfg.method.eta_unit == "epoch":
            self.method.rate = len(idx) / len(self.owner)
        self.method.step(losses, epoch)
        self.check({"q": self.method.q}, f"epoch {epoch + 1}")
        return out

    def check(self, values: dict, where: str) -> None:
        """Stop the run (``Diverged``) when any of ``values`` is NaN or infinite."""
        check_finite(values, where, self.cfg.optim.lr, "checkpoints/resume.pt")

    def check_model(self, where: str) -> None:
        """Every weight, buffer and anchor of the model is finite."""
        self.check(module_tensors([("model", self.model)]), where)

    def _encode(self, xs: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Latent codes per group; groups of one input space go through its encoder in one
        call (one set of batch-norm statistics, no sub-batch of a single example)."""
        out = {}
        for space, enc in self.model.encoders.items():
            gs = [g for g in xs if self.data.groups[g].space == space]
            if gs:
                z = enc(torch.cat([xs[g] for g in gs]))
                out.update(zip(gs, torch.split(z, [len(xs[g]) for g in gs])))
        return out

    def metrics(self, split: str, head: nn.Module | None = None) -> dict[str, float]:
        """Group-wise metrics on ``val`` or ``test`` (with another ``head`` when given)."""
        encoders = [self.model.encoders[g.space] for g in self.data.groups]
        return group_metrics(encoders, head or self.model.head, self.data, split, self.device)

    @torch.no_grad()
    def codes(self, split: str, layer: str = "last_hidden") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Codes (``layer``: the latent code or an encoder layer's output), labels and group
        indices of every group's ``split`` (encoders in eval mode)."""
        zs, ys, gs = [], [], []
        for k, g in enumerate(self.data.groups):
            part = getattr(g, split)
            zs += [z for _, z in chunks(layer_view(self.model.encoders[g.space], layer), part.x, self.device)]
            ys.append(part.y)
            gs.append(torch.full((len(part),), k))
        return torch.cat(zs).double().numpy(), torch.cat(ys).numpy(), torch.cat(gs).numpy()

    def dfr(self) -> dict:
        """DFR on ``dfr.layer``'s features of the validation split (``dfr.val: original``) or of
        the held-out share of train (``split_from_train``); the new head's test metrics as
        ``dfr_test_*``."""
        d = self.cfg.dfr
        check_dfr_layer(self.cfg, self.data)
        z, y, g = self.codes("val" if d.val == "original" else "gating", d.layer)
        seed = stable_seed(self.cfg.seed, "dfr")
        C, scores, W, b = select_and_fit(z, y, g, d, self.data.num_classes, seed)
        encoders = [layer_view(self.model.encoders[grp.space], d.layer) for grp in self.data.groups]
        test = group_metrics(encoders, linear_head(W, b).to(self.device), self.data, "test", self.device)
        return {"dfr_C": C, **{f"dfr_val_wg:C={c}": v for c, v in scores.items()}} | {
            f"dfr_test_{k}": v for k, v in test.items()
        }

    def resume_state(self) -> dict:
        """Everything the next epoch depends on: weights, optimizer, q and every generator."""
        return {"trainer": self.trainer_state()}

    def trainer_state(self) -> dict:
        return {
            **self.model_state(),
            "opt": self.opt.state_dict(),
            "gen": self.gen.get_state(),
            "sep_gen": self.sep_gen.get_state(),
            "cyclers": [c.order for c in self.cyclers],
            "rng": global_rng_state(),
        }

    def load_resume_state(self, state: dict, path=None) -> None:
        """Restore ``resume_state``; a state of another shape is a one-line ``CheckpointError``."""
        state = state["trainer"]
        try:
            self.model.load_state_dict(state["model"])
            self.method.load_state_dict(state["method"])
            self.opt.load_state_dict(state["opt"])
            self.gen.set_state(state["gen"])
            self.sep_gen.set_state(state["sep_gen"])
            if len(state["cyclers"]) != len(self.cyclers):
                raise ValueError("group count differs")
            for c, order in zip(self.cyclers, state["cyclers"]):
                c.order = order
            set_global_rng_state(state["rng"])
        except MISMATCH as e:
            raise mismatch(f"resume checkpoint {path}", "this run's model", e) from None


def run_centralized(cfg: Config, data: ScenarioData, run: RunDir | None, resume: bool = False) -> dict:
    """Train for ``optim.epochs`` through the shared loop (``fedanchors.loop``): validate every
    epoch, test the best-``acc_wg`` checkpoint; ``resume=True`` continues from ``resume.pt``."""
    return run_loop(CentralizedTrainer(cfg, data), cfg, run, resume=resume)
