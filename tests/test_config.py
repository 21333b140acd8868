"""Config parsing and the one-line user errors of the CLI (exit code 2, no traceback)."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from fedanchors.config import Config, to_dict
from fedanchors.configure import load_config
from fedanchors.errors import ConfigError

from .conftest import REPO


def test_shipped_configs_load():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert isinstance(cfg, Config) and cfg.name
    from fedanchors.gating.config import load_gating_config

    for path in sorted((REPO / "configs" / "gating").glob("*.yaml")):  # the gate's own configs
        gate = load_gating_config(str(path))
        assert gate.name and len(gate.experts) == 3
        for e in gate.experts:  # each expert's training config loads too
            assert load_config(REPO / e.config, list(e.set)).data.gating_fraction == 0.1


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.learning_rat'.*"):
        load_config(None, ["optim.learning_rat=0.1"])
    with pytest.raises(ConfigError, match=r"did you mean 'optim.lr'"):
        load_config(None, ["optim.lrr=0.1"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"optim.epochs: expected int"):
        load_config(None, ["optim.epochs=many"])
    with pytest.raises(ConfigError, match=r"deterministic: expected true or false"):
        load_config(None, ["deterministic=3"])


def test_override_types_and_values():
    cfg = load_config(REPO / "configs" / "digits.yaml", ["optim.lr=0.5", "model.encoder.channels=[4,8]"])
    assert cfg.optim.lr == 0.5 and cfg.model.encoder.channels == (4, 8)
    assert cfg.optim.epochs == 25  # untouched keys keep the file's value
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0  # int accepted for float


def test_bad_choice_and_registry_name():
    with pytest.raises(ConfigError, match="mode: 'fed' is not one of"):
        load_config(None, ["mode=fed"])
    with pytest.raises(ConfigError, match=r"method.name: unknown method 'groupdr' \(did you mean 'groupdro'\?\)"):
        load_config(None, ["method.name=groupdr"])


def test_config_round_trips(tmp_path):
    cfg = load_config(REPO / "configs" / "digits_fed.yaml")
    from fedanchors.config import save_config
    from fedanchors.configure import from_dict

    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert from_dict(to_dict(cfg)) == cfg


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedanchors.simulate", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0]


def test_cli_unknown_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 0.1\n  epoch: 3\n")
    assert_one_line_error(cli("--config", str(bad)), "optim.epoch", "optim.epochs")


def test_cli_wrong_type_and_missing_config(tmp_path):
    assert_one_line_error(cli("--set", "optim.batch_size=big"), "optim.batch_size")
    assert_one_line_error(cli("--config", str(tmp_path / "nope.yaml")), "nope.yaml", "not found")
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: [\n")
    assert_one_line_error(cli("--config", str(broken)), "not valid YAML")


def test_cli_missing_data_path(tmp_path):
    res = cli(
        "--config",
        "configs/mnist_hetero.yaml",
        "--set",
        f"data.root={tmp_path}/nowhere",
        "--set",
        f"out_dir={tmp_path}/runs",
    )
    assert_one_line_error(res, "nowhere", "data.root")
    assert not (tmp_path / "runs").exists()  # nothing created before the data was found


def test_cli_corrupt_mnist_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20))
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip")
    res = cli(
        "--config", "configs/mnist_hetero.yaml", "--set", f"data.root={tmp_path}", "--set", f"out_dir={tmp_path}/runs"
    )
    assert_one_line_error(res, "t10k-")


def test_cli_gpu_request_without_gpu(tmp_path):
    # checked before Ray starts and before a run directory exists
    res = cli(
        "--config", "configs/digits_fed.yaml", "--set", "federated.num_gpus=0.5", "--set", f"out_dir={tmp_path}/runs"
    )
    assert_one_line_error(res, "federated.num_gpus=0.5", "no CUDA GPU")
    assert not (tmp_path / "runs").exists()


def test_cli_too_many_cpus(tmp_path):
    res = cli(
        "--config", "configs/digits_fed.yaml", "--set", "federated.num_cpus=512", "--set", f"out_dir={tmp_path}/runs"
    )
    assert_one_line_error(res, "federated.num_cpus=512")


def test_existing_run_dir_is_never_overwritten(tmp_path):
    from fedanchors.rundir import RunDir

    cfg = load_config(None, ["name=x", f"out_dir={tmp_path}"])
    first = RunDir.create(cfg)
    (first.path / "metrics.jsonl").write_text("precious\n")
    second = RunDir.create(cfg)
    assert second.path != first.path and (first.path / "metrics.jsonl").read_text() == "precious\n"


def test_library_never_imports_flwr():
    """fedanchors/ is the library; only clients/ and server/ may import Flower."""
    import pkgutil

    import fedanchors

    mods = [m.name for m in pkgutil.walk_packages(fedanchors.__path__, "fedanchors.")]
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods)
    code += "assert not [m for m in sys.modules if m.split('.')[0] == 'flwr'], 'flwr imported'\n"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(mods) > 15
