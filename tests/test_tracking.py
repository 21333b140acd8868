"""wandb (offline, no network) and TensorBoard write into the run directory."""

from __future__ import annotations

import os

import pytest

from tests.conftest import small_config


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    from fedanchors.simulate import run

    tmp = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        # no network: offline mode, and any proxy that would be tried points nowhere
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("FEDANCHORS_PLOTS", "1")  # the figures are uploaded as images
        mp.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
        mp.setenv("WANDB_DIR", str(tmp / "elsewhere"))  # the config's run dir must win
        cfg = small_config(tmp, optim={"epochs": 2}, logging={"wandb": True, "tensorboard": True})
        summary = run(cfg)
    assert not (tmp / "elsewhere").exists()
    return tmp / "runs" / "t", summary


def test_wandb_offline_writes_its_files_into_the_run_directory(tracked_run):
    path, _ = tracked_run
    runs = list((path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"acc_wg" in log and b"acc_group:digits8" in log  # the metrics records
    assert b"lambda_fit" in log  # the config
    images = {p.name.rsplit("_", 2)[0] for p in (runs[0] / "files" / "media" / "images").glob("*.png")}
    assert images == {"plots", "samples_digits8", "samples_digits16"}


def test_tensorboard_gets_scalars_and_images(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path, summary = tracked_run
    acc = EventAccumulator(str(path / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert {"acc_wg", "acc_group/digits8", "q/digits16", "loss"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("acc_wg")] == [1, 2]
    assert {"plots", "samples_digits8"} <= set(tags["images"])
    assert os.path.getsize(next((path / "tensorboard").glob("events.out.tfevents.*"))) > 0
