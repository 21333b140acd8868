"""Every registered encoder, head, separation loss and method, and every named group list, builds and steps."""

from __future__ import annotations

import pytest
import torch

from fedanchors.centralized import CentralizedTrainer
from fedanchors.config import EncoderConfig, ModelConfig
from fedanchors.data import build_scenario, presets
from fedanchors.losses import SEPARATIONS
from fedanchors.methods import METHODS
from fedanchors.models import ENCODERS, HEADS, build_anchors, build_encoder, build_head

from .conftest import named_groups, small_config
from .fixtures import make_textcaps, make_waterbirds

TEXT = {"bow_mlp", "char_cnn", "transformer"}
GRIDS = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 32, 63)]  # images and a log-mel spectrogram
PAIRS = [(k, s) for k in ENCODERS.names() for s in ([(20,)] if k in TEXT else GRIDS)]  # text: token ids


def test_every_encoder_is_covered():
    assert {k for k, _ in PAIRS} == set(ENCODERS.names()) and TEXT <= set(ENCODERS.names())


@pytest.mark.parametrize("kind, shape", PAIRS)
def test_encoder_builds_and_steps(kind, shape):
    cfg = ModelConfig(latent_dim=16, encoder=EncoderConfig(kind=kind, channels=(8,), hidden=32))
    enc = build_encoder(cfg, "s", shape, seed=0, meta={"vocab_size": 50})
    head = build_head(cfg, 10, seed=0)
    opt = torch.optim.Adam(list(enc.parameters()) + list(head.parameters()), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50, (6, *shape), generator=g) if kind in TEXT else torch.rand(6, *shape, generator=g)
    if kind in TEXT:
        x[:, 15:] = 0  # padding
    y = torch.arange(6) % 10
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(head(enc(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert enc(x).shape == (6, 16) and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_same_seed_same_init_different_space_different_init():
    cfg = ModelConfig(latent_dim=8)
    a, b = build_encoder(cfg, "s", (1, 8, 8), 3), build_encoder(cfg, "s", (1, 8, 8), 3)
    c = build_encoder(cfg, "t", (1, 8, 8), 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


@pytest.mark.parametrize("head", HEADS.names())
@pytest.mark.parametrize("sep", SEPARATIONS.names())
def test_heads_and_separations(head, sep):
    h = build_head(ModelConfig(latent_dim=8, head=head), 4, 0)
    anchors = build_anchors(8, 4, 1e-4, 1.0, 0)
    loss = SEPARATIONS.get(sep)(anchors, h, 5, 2.0, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(anchors.means.grad).all()


@pytest.mark.parametrize(
    "scenario,method",
    [(p, "groupdro") for p in presets()]
    + [
        ("digits", m)
        for m in METHODS.names()
        if m != "groupdro" and not getattr(METHODS.get(m), "draws_clients", False)
    ],
)
def test_named_list_and_method_take_three_finite_steps(tmp_path, scenario, method, shared_data):
    root = shared_data
    extra = {}
    data = {"scenario": scenario}
    if scenario == "textcaps":  # not downloadable here: a generated fixture in the official layout
        make_textcaps(tmp_path)
        root = tmp_path
        extra = {
            "model": {
                "latent_dim": 16,
                "encoders": {"text": {"kind": "bow_mlp", "hidden": 32}},
                "encoder": {"kind": "cnn", "channels": [8], "hidden": 32},
            }
        }
    if scenario == "waterbirds":  # not available here either: a generated fixture in its layout
        root = make_waterbirds(tmp_path, per_cell=4)
        data = {"groups": named_groups("waterbirds", size=16)}
    data |= {"root": str(root), "max_per_group": 150}
    cfg = small_config(tmp_path, data=data, method={"name": method}, **extra)
    data = build_scenario(cfg.data)
    assert len(data.groups) >= 2 and len({g.space for g in data.groups}) >= 1
    tr = CentralizedTrainer(cfg, data)
    steps = tr.epoch_batches()[:3]
    before = [p.detach().clone() for p in tr.model.parameters()]
    outs = [tr.train_step(idx, 0) for idx in steps]
    assert all(torch.isfinite(torch.tensor(list(o.values()))).all() for o in outs)
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    assert torch.isclose(tr.method.q.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_digits_groups_are_disjoint_and_split(tmp_path):
    cfg = small_config(tmp_path, data={"max_per_group": 0})
    data = build_scenario(cfg.data)
    g8, g16 = data.groups
    assert g8.shape == (1, 8, 8) and g16.shape == (1, 16, 16)
    n = sum(len(s) for g in data.groups for s in (g.train, g.val, g.test))
    assert n == 1797  # every UCI digit used exactly once
    assert len(g8.test) == round(0.2 * (len(g8.train) + len(g8.val) + len(g8.test)))


def test_mnist_pool_option(tmp_path, shared_data):
    """pool: true splits the files present; pool: false demands both official files."""
    from fedanchors.errors import DataError

    hetero = {"root": str(shared_data), "max_per_group": 0}
    cfg = small_config(tmp_path, data={"scenario": "mnist_hetero", **hetero})
    data = build_scenario(cfg.data)
    assert [g.shape for g in data.groups] == [(1, 28, 28), (1, 32, 32)]
    assert sum(len(s) for g in data.groups for s in (g.train, g.val, g.test)) == 10000
    cfg = small_config(tmp_path, data={"groups": named_groups("mnist_hetero", pool=False), **hetero})
    with pytest.raises(DataError, match="needs both official MNIST files"):
        build_scenario(cfg.data)


def test_fresh_models_are_copies_equal_to_a_new_build_and_independent():
    """The client's per-visit models come from a kept build (fedanchors.models.FreshModels):
    each copy must equal a fresh build bit for bit, leave the global RNG as a build would,
    and share no storage with the next visit's copy."""
    from fedanchors.config import AnchorConfig
    from fedanchors.models import FreshModels

    m = ModelConfig(latent_dim=8, encoder=EncoderConfig(kind="cnn", channels=[4, 8], hidden=16))
    a, fresh = AnchorConfig(), FreshModels(capacity=2)
    built = (build_encoder(m, "img", (1, 8, 8), 3), build_head(m, 5, 3), build_anchors(8, 5, a.eps, a.init_scale, 3))
    torch.manual_seed(0)
    first = fresh.get(m, a, 3, "img", (1, 8, 8), None, 5)
    after = torch.rand(1)
    torch.manual_seed(0)
    again = fresh.get(m, a, 3, "img", (1, 8, 8), None, 5)
    assert torch.equal(torch.rand(1), after)  # the RNG moved as it would without the cache
    for copy, ref in zip(first, built):
        for (k, v), w in zip(copy.state_dict().items(), ref.state_dict().values()):
            assert torch.equal(v, w), k
    with torch.no_grad():
        next(first[0].parameters()).add_(1.0)
    assert not torch.equal(next(first[0].parameters()), next(again[0].parameters()))
    other = fresh.get(m, a, 4, "img", (1, 8, 8), None, 5)  # another seed: another build
    assert not torch.equal(next(other[0].parameters()), next(again[0].parameters()))
