"""Cost of the anchors + GroupDRO loss over plain CE, and batched W2 against a loop and POT.

    python bench/bench_loss.py            # CPU (2 cores here); on a GPU box add --device cuda

Part 1: one optimizer step (forward + backward) with the mnist_hetero encoders, batch 128,
C = 10, d = 64: full loss (CE + GroupDRO + W2 fit + separation) over a plain CE step.
Part 2: forward + backward of W2^2 for C pairs of d-dim Gaussians: our batched
``gaussian_w2`` vs a per-class loop with two eigendecompositions per class vs POT's
paired ``bures_wasserstein_distance`` (torch backend).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import interleaved  # noqa: E402
from fedanchors.centralized import CentralizedTrainer  # noqa: E402
from fedanchors.configure import load_config
from fedanchors.runs import build_data  # noqa: E402
from fedanchors.wasserstein import gaussian_w2, sqrtm_psd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def step_times(device: str) -> None:
    base = ["optim.batch_size=128", f"device={device}", "progress=false", "method.name=groupdro"]
    variants = {
        "plain CE": ["anchors.lambda_fit=0", "anchors.lambda_sep=0", "method.name=erm"],
        "full, sep=classifier": ["anchors.sep=classifier"],
        "full, sep=w2_margin": ["anchors.sep=w2_margin"],
    }
    cfg0 = load_config(REPO / "configs" / "mnist_hetero.yaml", base)
    data = build_data(cfg0.data)
    fns = {}
    for name, extra in variants.items():
        tr = CentralizedTrainer(load_config(REPO / "configs" / "mnist_hetero.yaml", base + extra), data)
        idx = tr.epoch_batches()[0]
        fns[name] = lambda tr=tr, idx=idx: (tr.train_step(idx, 0), torch.cuda.synchronize() if device == "cuda" else 0)
    t = interleaved(fns, repeats=7, inner=5)
    print(f"\n## Step time, mnist_hetero encoders, batch 128, C=10, d=64, device={device}")
    print("| loss | ms/step | ratio vs plain CE |\n|---|---|---|")
    for k, v in t.items():
        print(f"| {k} | {1e3 * v:.1f} | {v / t['plain CE']:.2f}x |")


def loop_w2(m1, s1, m2, s2):
    """Baseline: per class, sqrt(S1) by eigh, then eigh of sqrt(S1) S2 sqrt(S1)."""
    out = []
    for c in range(m1.shape[0]):
        r = sqrtm_psd(s1[c])
        cross = torch.linalg.eigvalsh(r @ s2[c] @ r).clamp_min(1e-12).sqrt().sum()
        out.append(((m1[c] - m2[c]) ** 2).sum() + torch.trace(s1[c]) + torch.trace(s2[c]) - 2 * cross)
    return torch.stack(out)


def w2_times(device: str) -> None:
    import ot

    print(f"\n## Forward + backward W2^2 of C Gaussian pairs, device={device}")
    print("| C | d | batched (ms) | per-class loop (ms) | POT paired (ms) | loop / batched | POT / batched |")
    print("|---|---|---|---|---|---|---|")
    for C in (10, 100):
        for d in (16, 64, 256):
            g = torch.Generator().manual_seed(0)
            a = torch.randn(C, d, d, generator=g)
            s2 = (a @ a.mT / d + 0.1 * torch.eye(d)).to(device)
            m2 = torch.randn(C, d, generator=g).to(device)
            f = torch.randn(C, d, d, generator=g).to(device) / d**0.5
            m1 = torch.randn(C, d, generator=g).to(device)

            def run(fn, m1=m1, f=f, m2=m2, s2=s2, d=d):
                mm = m1.clone().requires_grad_(True)
                ff = f.clone().requires_grad_(True)
                s1 = ff @ ff.mT + 1e-4 * torch.eye(d, device=device)
                fn(mm, s1, m2, s2).sum().backward()
                if device == "cuda":
                    torch.cuda.synchronize()

            fns = {
                "batched": lambda: run(gaussian_w2),
                "loop": lambda: run(loop_w2),
                "pot": lambda: run(
                    lambda a1, b1, a2, b2: ot.gaussian.bures_wasserstein_distance(a1, a2, b1, b2, paired=True) ** 2
                ),
            }
            reps = 3 if d == 256 else 5
            t = interleaved(fns, repeats=reps, inner=1 if (C == 100 and d == 256) else 3)
            print(
                f"| {C} | {d} | {1e3 * t['batched']:.1f} | {1e3 * t['loop']:.1f} | {1e3 * t['pot']:.1f} | "
                f"{t['loop'] / t['batched']:.2f}x | {t['pot'] / t['batched']:.2f}x |"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", choices=["step", "w2"], default=None)
    args = p.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.only in (None, "step"):
        step_times(args.device)
    if args.only in (None, "w2"):
        w2_times(args.device)


if __name__ == "__main__":
    main()
