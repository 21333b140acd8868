"""The gap-analysis study's model options: the MLP classifier (layers, NTP / muP, MSE), frozen backbones with
cached features (a saved ResNet-18 state dict, an earlier run's encoders), DFR on any layer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from fedanchors.config import LossConfig
from fedanchors.configure import load_config, replace
from fedanchors.errors import ConfigError
from fedanchors.losses import class_loss
from fedanchors.models import build_encoder, build_head
from fedanchors.parametrization import ScaledLinear
from fedanchors.runs import build_data
from tests.conftest import small_config


def test_mse_loss_formula():
    z, y = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 1.0]]), torch.tensor([0, 2])
    want = 0.5 * ((1.0**2 + 1.0 + 0.25) + (0.0 + 0.0 + 0.0)) / 2
    assert float(class_loss(z, y, LossConfig("mse"), None)) == pytest.approx(want)
    assert float(class_loss(z, y, LossConfig("ce"), None)) == pytest.approx(float(F.cross_entropy(z, y)))


def _mlp(init: str, width: int):
    cfg = load_config(None, [f"model.init={init}", "model.encoder.kind=mlp", f"model.encoder.hidden={width}",
                             f"model.latent_dim={width}", "model.encoder.layers=2"])  # fmt: skip
    return build_encoder(cfg.model, "px8", (1, 8, 8), 0), build_head(cfg.model, 10, 0)


@pytest.mark.parametrize("init", ["ntp", "mup"])
def test_ntp_and_mup_width_scaling(init):
    torch.manual_seed(0)
    x = torch.randn(512, 1, 8, 8)
    stats = {}
    for n in (64, 1024):
        enc, head = _mlp(init, n)
        lins = [m for m in [*enc.modules(), head] if isinstance(m, ScaledLinear)]
        assert len(lins) == 4  # input, hidden, latent (hidden), output
        with torch.no_grad():
            z = enc(x)
            stats[n] = (float(z.std()), float(head(z).std()))
        m_in, m_out = lins[0].multiplier, lins[-1].multiplier
        if init == "ntp":
            assert m_in == pytest.approx(1 / 8) and m_out == pytest.approx(1 / math.sqrt(n))
            assert float(lins[1].weight.detach().std()) == pytest.approx(1.0, rel=0.05)
        else:
            assert m_in == pytest.approx(math.sqrt(n / 64)) and m_out == pytest.approx(1 / math.sqrt(n))
            assert float(lins[1].weight.detach().std()) == pytest.approx(1 / math.sqrt(n), rel=0.05)
    # hidden features O(1) in width for both; the output O(1) under NTP, O(1/sqrt(n)) under muP
    assert stats[1024][0] == pytest.approx(stats[64][0], rel=0.3)
    ratio = stats[64][1] / stats[1024][1]
    assert ratio == pytest.approx(1.0, rel=0.3) if init == "ntp" else ratio == pytest.approx(4.0, rel=0.3)


def test_mlp_layers_and_init_errors():
    cfg = load_config(None, ["model.encoder.kind=mlp", "model.encoder.layers=3", "model.encoder.hidden=32"])
    enc = build_encoder(cfg.model, "px8", (1, 8, 8), 0)
    assert sum(isinstance(m, torch.nn.Linear) for m in enc.modules()) == 4
    with pytest.raises(ConfigError, match="MLP"):
        build_encoder(load_config(None, ["model.init=mup"]).model, "px8", (1, 8, 8), 0)  # a CNN
    with pytest.raises(ConfigError, match="model.init"):
        load_config(None, ["model.init=xavier"])


def test_backbone_features_from_a_saved_resnet18_are_cached(tmp_path):
    torch.manual_seed(3)
    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    sets = ["data.features.backbone=resnet18", f"data.features.weights={tmp_path / 'r18.pt'}",
            f"data.features.cache={tmp_path / 'cache'}", "data.max_per_group=120"]  # fmt: skip
    cfg = load_config(None, [*sets, "data.features.layer=avgpool"])
    data = build_data(cfg.data)
    g = data.groups[0]
    assert g.space == "px8@resnet18" and g.shape == (512,)
    raw = build_data(replace(cfg, ["data.features.backbone="]).data).groups[0]
    net.eval()
    with torch.no_grad():  # the features are the saved network's pooled layer4 on the 3-channel image
        x = torch.cat([raw.train.x[:5], torch.zeros(5, 2, 8, 8)], 1)
        want = torch.flatten(net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(
            net.maxpool(net.relu(net.bn1(net.conv1(x))))))))), 1)  # fmt: skip
    assert torch.allclose(g.train.x[:5], want, atol=1e-5)
    files = list((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    build_data(cfg.data)  # read back, not recomputed
    assert files[0].stat().st_mtime_ns == stamp
    l3 = build_data(load_config(None, [*sets, "data.features.layer=layer3"]).data)
    assert l3.groups[0].shape == (256,) and len(list((tmp_path / "cache").glob("*.pt"))) == 2
    # an MLP trains on the cached features, in both modes' shared code
    from fedanchors.centralized import CentralizedTrainer

    mlp = replace(cfg, ["model.encoder.kind=mlp", "model.encoder.hidden=32", "model.latent_dim=16"])
    tr = CentralizedTrainer(mlp, data)
    assert math.isfinite(tr.train(1)["loss"])
    bad = load_config(None, ["data.features.backbone=resnet18", f"data.features.weights={tmp_path / 'none.pt'}"])
    with pytest.raises(ConfigError, match="does not exist"):
        build_data(bad.data)
    with pytest.raises(ConfigError, match="not one of"):
        build_data(load_config(None, ["data.features.backbone=resnet19"]).data)


def test_features_from_an_earlier_run(tmp_path):
    from fedanchors.simulate import run

    first = small_config(tmp_path, name="enc")
    summary = run(first)
    cfg = replace(first, ["data.features.backbone=from_run", f"data.features.from_run={summary['run_dir']}",
                          f"data.features.cache={tmp_path / 'cache'}"])  # fmt: skip
    data = build_data(cfg.data)
    from fedanchors.evaluate import restore

    encoders, _ = restore(__import__("pathlib").Path(summary["run_dir"]), first, build_data(first.data), "best",
                          torch.device("cpu"))  # fmt: skip
    raw = build_data(first.data)
    for g, r, enc in zip(data.groups, raw.groups, encoders):
        assert g.shape == (first.model.latent_dim,)
        with torch.no_grad():
            assert torch.allclose(g.val.x, enc.eval()(r.val.x), atol=1e-5)
    from fedanchors.centralized import CentralizedTrainer

    mlp = replace(cfg, ["model.encoder.kind=mlp", "model.encoder.hidden=32", "model.init=mup", "loss.name=mse"])
    tr = CentralizedTrainer(mlp, data)  # an MLP (muP, squared loss) on the earlier run's codes
    assert math.isfinite(tr.train(1)["loss"]) and 0 <= tr.metrics("val")["acc_wg"] <= 1


def test_dfr_on_an_inner_layer_and_split_from_train(tmp_path):
    from fedanchors.centralized import CentralizedTrainer
    from tests.test_dynamics import GROUPS

    dfr = {"enabled": True, "layer": "layer_1", "val": "split_from_train", "val_ratio": 0.25, "Cs": [1.0], "subsets": 1}
    with pytest.raises(ConfigError, match="input spaces"):  # digits: two pixel sizes, two encoders
        from fedanchors.simulate import check_against_data

        c2 = small_config(tmp_path, dfr=dfr)
        check_against_data(c2, build_data(c2.data))
    cfg = small_config(tmp_path, dfr=dfr, data={"scenario": "", "groups": GROUPS, "max_per_group": 0})
    data = build_data(cfg.data)
    tr = CentralizedTrainer(cfg, data)
    for g0, g1 in zip(data.groups, tr.data.groups):  # a quarter of each class held out of training
        assert len(g1.train) + len(g1.gating) == len(g0.train)
        assert len(g1.gating) == pytest.approx(0.25 * len(g0.train), abs=10)
    tr.train(1)
    out = tr.dfr()
    assert 0 <= out["dfr_test_acc_wg"] <= 1 and out["dfr_C"] == 1.0
    z, _, _ = tr.codes("gating", "layer_1")
    assert z.shape[1] == 8 * 8 * 8  # the first conv block's ReLU (8 channels, 8x8) before pooling
    with pytest.raises(ConfigError, match="layer_"):
        load_config(None, ["dfr.enabled=true", "dfr.layer=block2"])
    with pytest.raises(ConfigError, match="federated DFR"):
        load_config(None, ["mode=federated", "dfr.enabled=true", "dfr.layer=layer_1"])


def test_vit_features_read_the_chosen_block():
    """ViT-B/16's last block with the class token is what torchvision feeds its head; an earlier
    block and the mean pools give other vectors of the same width."""
    from fedanchors.features import ViTFeatures

    torch.manual_seed(0)
    net = torchvision.models.vit_b_16(weights=None).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        net.heads = torch.nn.Identity()
        want = net(x)
        got = ViTFeatures(net, -1, "cls_token")(x)
        early = ViTFeatures(net, 3, "mean_pool_patch")(x)
    assert torch.allclose(got, want, atol=1e-4)
    assert early.shape == (2, 768) and not torch.allclose(early, got, atol=1e-2)
    with pytest.raises(ConfigError, match="block"):
        ViTFeatures(net, 12, "cls_token")
