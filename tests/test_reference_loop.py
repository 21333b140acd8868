"""fedanchors' federated FedAvg against the plain PyTorch loop (bench/reference_fedavg.py):
the same writers, sampled clients, batches and SGD give the same global model."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import yaml

from fedanchors.configure import load_config
from fedanchors.simulate import run

from .conftest import REPO


def _reference():
    spec = importlib.util.spec_from_file_location("reference_fedavg", REPO / "bench" / "reference_fedavg.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_fedavg_and_the_reference_loop_reach_the_same_global_model(tmp_path, shared_data):
    """11 FEMNIST writers, 4 sampled a round, 1 local epoch of SGD with momentum, 3 rounds."""
    raw = yaml.safe_load((REPO / "configs" / "bench" / "floor" / "femnist.yaml").read_text())
    raw["data"]["groups"][0]["fraction"] = 0.1
    raw["data"]["root"] = str(shared_data)
    raw["federated"].update(clients_per_round=4, rounds=3, local_epochs=1)
    raw.update(out_dir=str(tmp_path / "runs"), progress=False)
    path = tmp_path / "femnist_small.yaml"
    path.write_text(yaml.safe_dump(raw))
    summary = run(load_config(path))
    ref_mod = _reference()
    ref, model = ref_mod.train(str(path), 3)
    state = torch.load(tmp_path / "runs" / "floor_femnist" / "checkpoints" / "last_server.pt", weights_only=True)
    state = state.get("model", state)
    (space,) = state["encoders"]
    ours = {f"0.{k}": v for k, v in state["encoders"][space].items()}
    ours |= {f"1.{k}": v for k, v in state["head"].items()}
    theirs = model.state_dict()
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        assert torch.allclose(ours[k].float(), v.float(), atol=1e-5), k
    # and they trained: the head is far from its initial weights
    fresh = ref_mod.build_head(load_config(path).model, 62, 0).state_dict()
    assert not torch.allclose(theirs["1.weight"], fresh["weight"], atol=1e-2)
    assert summary["test_acc_all"] == pytest.approx(ref["test_acc"], abs=1e-6)
