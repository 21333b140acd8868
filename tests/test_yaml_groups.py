"""Groups written in YAML: every shipped config builds the data it always built, user group lists
(four sources and modalities, a ColoredMNIST-style minority from transforms) train in both
modes, and every malformed list is one line at load, before any data is read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from fedanchors.configure import from_dict, load_config
from fedanchors.data import build_scenario
from fedanchors.data.sources import Pool, SourceData, source
from fedanchors.errors import ConfigError
from fedanchors.population import build_population
from tests.conftest import REPO
from tests.fixtures import make_textcaps, make_waterbirds
from tests.test_config import assert_one_line_error, cli

REFERENCE = json.loads((Path(__file__).parent / "data_reference.json").read_text())


def summary(data) -> dict:
    """Shapes, a label hash and three sums (plain, squared, row-position weighted: order counts)
    of every split: what ``tests/data_reference.json`` recorded."""
    groups = []
    for g in data.groups:
        rec = {"name": g.name, "space": g.space}
        for s in ("train", "val", "test"):
            x, y = getattr(g, s).x, getattr(g, s).y
            xd = x.double().reshape(len(x), -1)
            rec[s] = {"shape": list(x.shape), "labels": hashlib.sha256(y.numpy().tobytes()).hexdigest()[:16],
                      "sum": float(xd.sum()), "sq": float((xd**2).sum()),
                      "rows": float((xd.sum(1) * torch.arange(1, len(x) + 1, dtype=torch.float64)).sum())}  # fmt: skip
        groups.append(rec)
    return {"num_classes": data.num_classes, "class_sets": data.class_sets, "groups": groups}


def _close(a, b, where="") -> None:
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9), where
    else:
        assert a == b, where


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_shipped_configs_build_the_data_they_always_built(name, request):
    """Every shipped config's groups, now all from ``data.groups``, build what the retired Python
    scenarios and presets built: ``tests/data_reference.json`` was recorded from those functions
    (commit 8c916ec) before they were removed; bit-for-bit equality was checked then too."""
    root = (
        []
        if name.startswith("digits") and "3way" not in name
        else [f"data.root={request.getfixturevalue('shared_data')}"]
    )
    cfg = load_config(REPO / "configs" / f"{name}.yaml", root)
    assert cfg.data.groups and not cfg.data.scenario  # one way to define data
    got, ref = summary(build_scenario(cfg.data)), REFERENCE[name]
    for i, (g, r) in enumerate(zip(got["groups"], ref["groups"])):
        if g["space"] == "audio":  # FFT features: equal to float32 rounding, not bit for bit
            for s in ("train", "val", "test"):
                _close_rounded(g.pop(s), r[s], f"{name}.groups[{i}].{s}")
    rest = [{k: v for k, v in r.items() if k in g} for g, r in zip(got["groups"], ref["groups"])]
    _close(got, {**ref, "groups": rest}, name)


def _close_rounded(a: dict, b: dict, where: str) -> None:
    """A split of float32 features computed through an FFT (log-mel spectrograms): the FFT's
    rounding follows the CPU's vector instructions (the reference was recorded on another CPU;
    on an AVX-512 machine the squared sum moves by 7e-9 of itself), so the sums are compared to
    a float32 bound: 1e-6 of sum |x| <= sqrt(n * sum x^2) (Cauchy-Schwarz), times the row
    weights for the position-weighted sum. A changed transform (another hop, mel count or
    scaling) moves them by far more."""
    assert a["shape"] == b["shape"] and a["labels"] == b["labels"], where
    n = 1
    for d in a["shape"]:
        n *= d
    tol = 1e-6 * (n * b["sq"]) ** 0.5
    assert a["sq"] == pytest.approx(b["sq"], rel=1e-6), f"{where}.sq"
    assert abs(a["sum"] - b["sum"]) <= tol, f"{where}.sum"
    assert abs(a["rows"] - b["rows"]) <= tol * a["shape"][0], f"{where}.rows"


@pytest.mark.parametrize("name", ["digits", "mnist_hetero", "mnist_lt", "femnist", "confounded_mnist"])
def test_named_group_lists_build_what_their_configs_do(name, request):
    """``data.scenario: <name>`` (a YAML group list in fedanchors/data/presets/) builds the same
    groups as the shipped config of that name with the list's options."""
    root = [] if name == "digits" else [f"data.root={request.getfixturevalue('shared_data')}"]
    cfg = load_config(REPO / "configs" / f"{name}.yaml", root)
    fractions = [f"data.{k}={getattr(cfg.data, k)}" for k in ("val_fraction", "test_fraction")]
    named = load_config(None, [f"data.scenario={name}", *root, *fractions])
    _close(summary(build_scenario(named.data)), summary(build_scenario(cfg.data)), name)


def test_named_colored_mnist_is_the_papers_resolution(shared_data):
    """The ColoredMNIST list keeps the source's default stride 2 (the paper's 14x14); the shipped
    configs draw at 28x28 (``options: {stride: 1}``), the same four cells."""
    data = build_scenario(load_config(None, ["data.scenario=colored_mnist", f"data.root={shared_data}"]).data)
    assert data.names == [g["name"] for g in REFERENCE["colored_mnist"]["groups"]]
    assert [g.shape for g in data.groups] == [(2, 14, 14)] * 4
    assert [g.meta["majority"] for g in data.groups] == [True, False, False, True]


def test_print_config_writes_a_named_list_out_and_runs_the_same_data(tmp_path):
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: bare\ndata: {scenario: digits}\n")
    res = cli("--config", str(bare), "--print-config", "--set", "data.root=/nonexistent")
    assert res.returncode == 0, res.stderr
    assert "is a named group list" in res.stdout
    raw = yaml.safe_load(res.stdout)
    assert raw["data"]["scenario"] == "" and [g["source"] for g in raw["data"]["groups"]] == ["uci_digits"] * 2
    printed = tmp_path / "printed.yaml"
    printed.write_text(res.stdout)
    cfg = load_config(printed, ["data.root="])
    _close(summary(build_scenario(cfg.data)), REFERENCE["digits"])


FOUR = """
name: four
data:
  groups:
    - {name: uci8, source: uci_digits}
    - {name: mnist28, source: mnist, fraction: 0.45}
    - {name: mnist32, source: mnist, fraction: 0.45, resize: 32}
    - {name: audio, source: fsdd, fraction: 0.1, features: {kind: log_mel, n_mels: 32}}
model:
  latent_dim: 16
  encoder: {kind: cnn, channels: [8], hidden: 32}
optim: {epochs: 1, batch_size: 64}
federated: {rounds: 1, local_steps: 3, num_cpus: 0.5}
"""


def _four(tmp_path: Path, shared_data: Path) -> Path:
    p = tmp_path / "four.yaml"
    raw = yaml.safe_load(FOUR)
    raw["data"]["root"] = str(shared_data)
    raw["out_dir"] = str(tmp_path / "runs")
    p.write_text(yaml.safe_dump(raw))
    return p


def test_four_group_yaml_builds_what_it_says(tmp_path, shared_data):
    cfg = load_config(_four(tmp_path, shared_data))
    data = build_scenario(cfg.data)
    assert data.names == ["uci8", "mnist28", "mnist32", "audio"] and data.num_classes == 10
    spaces = {g.name: (g.space, g.shape) for g in data.groups}
    assert spaces["uci8"] == ("px8", (1, 8, 8)) and spaces["mnist28"] == ("px28", (1, 28, 28))
    assert spaces["mnist32"] == ("px32", (1, 32, 32)) and spaces["audio"] == ("spectrogram1x32x63", (1, 32, 63))
    size = {g.name: len(g.train) + len(g.val) + len(g.test) for g in data.groups}
    assert size["uci8"] == 1797
    n_mnist = 10000  # the MNIST file present here (t10k); 45% each, disjoint
    assert size["mnist28"] == size["mnist32"] == round(0.45 * n_mnist)
    a = data.groups[3]
    assert len(a.test) == 30 and len(a.train) + len(a.val) == 270  # 10% of FSDD's official test / train
    assert abs(float(a.train.x.mean())) < 0.1  # standardised with the training statistics
    assert sorted(a.meta["speakers"]) == a.meta["speakers"] and len(a.meta["owners"]["train"]) == len(a.train)


@pytest.mark.parametrize("mode", ["centralized", "federated"])
def test_four_group_yaml_trains_in_both_modes(tmp_path, shared_data, mode):
    p = _four(tmp_path, shared_data)
    res = cli("--config", str(p), "--set", f"mode={mode}", "--set", "progress=false")
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((tmp_path / "runs" / "four" / "summary.json").read_text())
    for g in ("uci8", "mnist28", "mnist32", "audio"):
        assert 0 <= s[f"test_acc_group:{g}"] <= 1
    assert s["test_acc_wg"] == min(s[f"test_acc_group:{g}"] for g in ("uci8", "mnist28", "mnist32", "audio"))


COLOURED = """
data:
  root: {root}
  groups:
    - {{name: majority, source: mnist, fraction: 0.8, colour: {{agreement: 1.0, test_agreement: 0.0}}, majority: true}}
    - {{name: minority, source: mnist, fraction: 0.2, colour: {{agreement: 0.0, test_agreement: 1.0}}, majority: false}}
"""


def test_coloured_minority_from_transforms_only(tmp_path, shared_data):
    p = tmp_path / "c.yaml"
    p.write_text(COLOURED.format(root=shared_data))
    data = build_scenario(load_config(p).data)
    assert data.num_classes == 2 and len(data.spaces()) == 1  # one derived space: image2x14x14
    assert data.groups[0].space == "image2x14x14"
    for g, agree in zip(data.groups, (True, False)):
        for name in ("train", "val", "test"):
            s = getattr(g, name)
            hue = (s.x[:, 1].flatten(1).sum(1) > 0).long()  # ink in the green channel
            assert float(s.x[:, 0].flatten(1).sum(1).mul(s.x[:, 1].flatten(1).sum(1)).abs().sum()) == 0.0
            wanted = agree if name != "test" else not agree  # test_agreement flips the correlation
            assert bool(((hue == s.y) == wanted).all())
    n = sum(len(getattr(data.groups[1], s)) for s in ("train", "val", "test"))
    assert n == round(0.2 * 10000) and data.groups[1].meta["majority"] is False


def test_longtail_classes_and_count_selection(shared_data):
    groups = [
        {"name": "head", "source": "mnist", "fraction": 0.5, "classes": [0, 1, 2, 3, 4], "imbalance": 10},
        {"name": "tail", "source": "mnist", "fraction": 0.5, "classes": [5, 6, 7, 8, 9], "count": 500},
    ]
    cfg = from_dict({"data": {"root": str(shared_data), "groups": groups}})
    head, tail = build_scenario(cfg.data).groups
    counts = torch.bincount(head.train.y, minlength=10)[:5].tolist()
    assert counts[0] > counts[4] and round(counts[0] / counts[4]) == 10 and counts == sorted(counts, reverse=True)
    assert set(head.test.y.tolist()) == {0, 1, 2, 3, 4} and set(tail.train.y.tolist()) == {5, 6, 7, 8, 9}
    assert len(tail.train) + len(tail.val) + len(tail.test) == 500


def test_dots_and_their_removal(shared_data):
    dots = {"n": 6, "size": 2, "classes": [8], "splits": ["train"]}
    groups = [
        {"name": "confounded", "source": "mnist", "fraction": 0.5, "dots": dots},
        {"name": "corrected", "source": "mnist", "fraction": 0.5, "classes": [8], "dots": {**dots, "remove": True}},
    ]
    from fedanchors.data.transforms import dot_mask

    conf, corr = build_scenario(from_dict({"data": {"root": str(shared_data), "groups": groups}}).data).groups
    mask = dot_mask(28, 6, 2, 0)
    eights = conf.train.y == 8
    assert bool((conf.train.x[eights][:, 0, mask] == 1).all()) and not bool((conf.test.x[:, 0, mask] == 1).all())
    assert float(corr.train.x[:, 0, mask].abs().sum()) == 0.0 and conf.space == corr.space == "px28"


def test_per_group_clients_and_partition():
    groups = [
        {"name": "a", "source": "uci_digits", "fraction": 0.5, "clients": 5, "partition": {"kind": "shards"}},
        {"name": "b", "source": "uci_digits", "fraction": 0.5, "resize": 16},
    ]
    cfg = from_dict({"mode": "federated", "data": {"groups": groups}, "federated": {"clients": 2}})
    data = build_scenario(cfg.data)
    pop = build_population(data, cfg.federated, cfg.seed)
    assert [c.group for c in pop] == [0, 0, 0, 0, 0, 1, 1]
    for c in pop[:5]:  # shards: at most partition_labels (2) labels per client
        assert len(torch.unique(data.groups[0].train.y[c.train])) <= 2


def test_femnist_writers_are_units_and_natural_clients(shared_data):
    groups = [
        {"name": "hi", "source": "femnist", "fraction": 0.8, "partition": {"kind": "natural"}},
        {"name": "lo", "source": "femnist", "fraction": 0.2, "resize": 14},
    ]
    cfg = from_dict({"mode": "federated", "data": {"root": str(shared_data), "groups": groups}})
    data = build_scenario(cfg.data)
    hi, lo = data.groups
    assert data.num_classes == 62 and not set(hi.meta["writers"]) & set(lo.meta["writers"])
    assert len(hi.meta["writers"]) == 88 and len(lo.meta["writers"]) == 22  # 80% of the 110 writers
    pop = build_population(data, cfg.federated, 0)
    assert sum(c.group == 0 for c in pop) == 88 and sum(c.group == 1 for c in pop) == 1


def test_textcaps_views_get_disjoint_images_and_waterbirds_where(tmp_path):
    make_textcaps(tmp_path)
    make_waterbirds(tmp_path, per_cell=3)
    groups = [
        {"name": "image", "source": "textcaps", "fraction": 0.5, "options": {"view": "image", "top_k": 3}},
        {"name": "text", "source": "textcaps", "fraction": 0.5, "options": {"view": "text", "top_k": 3}},
        {"name": "wb_water", "source": "waterbirds", "where": {"place": 1}, "options": {"size": 16}},
    ]
    data = build_scenario(from_dict({"data": {"root": str(tmp_path), "groups": groups, "val_fraction": 0.2}}).data)
    image, text, birds = data.groups
    assert image.shape == (3, 64, 64) and text.shape == (32,) and text.meta["vocab_size"] > 2
    assert image.space != text.space and birds.space == "image3x16x16"
    # disjoint images: no image id is in both views, in any split
    for split in ("train", "test"):
        a, b = set(image.meta["units"][split].tolist()), set(text.meta["units"][split].tolist())
        assert a and b and not a & b
    # where: {place: 1} keeps the water backgrounds (blue, not green), official train+val / test
    assert len(birds.train) + len(birds.val) == 2 * 3 * 2 and len(birds.test) == 2 * 3
    for s in (birds.train, birds.val, birds.test):
        assert bool((s.x[:, 2, 0, 0] > s.x[:, 1, 0, 0]).all())


@source("test_mirror_digits", classes=10, modality="image", shape=(1, 8, 8))
def _mirror(cfg, options) -> SourceData:
    """A source defined in one decorated function: UCI digits mirrored left-right."""
    from fedanchors.data.digits import load_uci_digits

    x, y = load_uci_digits()
    return SourceData(Pool(x.flip(-1), y))


def test_a_new_source_is_one_decorated_function():
    groups = [
        {"name": "plain", "source": "uci_digits", "fraction": 0.5},
        {"name": "mirror", "source": "test_mirror_digits"},
    ]
    data = build_scenario(from_dict({"data": {"groups": groups}}).data)
    assert data.groups[1].shape == (1, 8, 8) and data.groups[0].space == data.groups[1].space == "px8"


BAD = [
    ({"groups": [{"name": "a", "source": "mnsit"}]}, ["data.groups[0].source", "'mnist'"]),
    ({"groups": [{"name": "a", "source": "mnist", "colur": {}}]}, ["data.groups[0].colur", "colour"]),
    (
        {
            "groups": [
                {"name": "a", "source": "mnist", "fraction": 0.7},
                {"name": "b", "source": "mnist", "fraction": 0.5},
            ]
        },
        ["source mnist sum to 1.2 > 1"],
    ),
    ({"groups": [{"name": "a", "source": "mnist", "classes": [3, 10]}]}, ["data.groups[0].classes", "[10]", "0..9"]),
    (
        {
            "groups": [
                {"name": "a", "source": "mnist", "space": "s"},
                {"name": "b", "source": "uci_digits", "space": "s"},
            ]
        },
        ["share space 's'", "[1, 28, 28]", "[1, 8, 8]"],
    ),
    ({"groups": [{"name": "a", "source": "mnist", "fraction": 0}]}, ["data.groups[0].fraction", "empty group"]),
    ({"groups": [{"name": "a", "source": "fsdd"}]}, ["data.groups[0]", "features"]),
    ({"groups": [{"name": "a", "source": "mnist", "speakers": ["jackson"]}]}, ["data.groups[0].speakers", "neither"]),
    ({"groups": [{"name": "a", "source": "uci_digits", "features": {}}]}, ["features", "audio groups"]),
    ({"groups": [{"name": "a", "source": "mnist", "options": {"pol": True}}]}, ["data.groups[0].options.pol", "pool"]),
    (
        {"groups": [{"name": "a", "source": "colored_mnist", "options": {"agreemnt": [0.9]}}]},
        ["options.agreemnt", "agreement"],
    ),
    ({"scenario": "digits", "options": {"fractions": {}}}, ["data.options", "unknown"]),
    (
        {
            "groups": [
                {"name": "a", "source": "mnist_lt", "fraction": 1, "classes": [0, 1]},
                {"name": "b", "source": "mnist_lt", "fraction": 1, "classes": [1, 2]},
            ]
        },
        ["groups a and b", "overlap"],
    ),  # fmt: skip
    ({"scenario": "digits", "class_sets": {"big": [10]}}, ["data.class_sets.big", "0..9"]),
    ({"scenario": "digits", "groups": [{"name": "a", "source": "mnist"}]}, ["both set"]),
    ({"scenario": "colord_mnist"}, ["data.scenario", "'colored_mnist'", "shipped"]),
]


@pytest.mark.parametrize("data,needles", BAD)
def test_bad_groups_fail_at_load_before_any_data_is_read(tmp_path, data, needles):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"data": {**data, "root": str(tmp_path / "no-data-here")}}))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    for n in needles:
        assert n in str(e.value), str(e.value)


def test_bad_group_is_one_line_on_the_cli(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  groups:\n    - {name: a, source: mnist, resise: 32}\n")
    assert_one_line_error(cli("--config", str(p), "--set", f"out_dir={tmp_path}"), "data.groups[0].resise", "resize")
    assert not (tmp_path / "bad").exists()


def test_readme_group_examples_build(shared_data):
    """The YAML blocks of docs/configs.md's "Define your own groups" section load and build."""
    text = (REPO / "docs" / "configs.md").read_text()
    section = text[text.index("## Define your own groups") :]
    section = section[: section.index("\n## ", 5)]
    blocks = [b.split("```", 1)[0] for b in section.split("```yaml\n")[1:]]
    assert len(blocks) == 2
    for b in blocks:
        raw = yaml.safe_load(b)
        raw["data"]["root"] = str(shared_data)
        cfg = from_dict({"mode": "federated", **raw})
        data = build_scenario(cfg.data)
        assert data.names == [g.name for g in cfg.data.groups]
        assert len(build_population(data, cfg.federated, 0)) == sum(g.clients or 1 for g in cfg.data.groups)
