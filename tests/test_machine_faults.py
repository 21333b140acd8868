"""Issue 25: names that cannot break keys or paths, bad values in data, a full or read-only
disk, SIGTERM. Each test fails on the code before the change (a group ``x/y`` died with a
traceback writing its sample image; a full disk ended in torch's zip-writer traceback;
SIGTERM left a Ray stack dump and exit 15; NaN pixels were reported as a diverged loss).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from fedanchors.config import save_config
from fedanchors.errors import ConfigError, DataError
from fedanchors.fileio import WriteError, append_line, save_atomic, write_error
from fedanchors.registry import Registry

from .conftest import small_config
from .test_config import assert_one_line_error, cli
from .test_resume import _finished, _records, _start, _wait_for

# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("name", "a:b", "':'"),
        ("name", "x/y", "'/'"),
        ("name", "..", "'..'"),
        ("name", "a" * 65, "more than 64"),
        ("name", "tab\there", "'\\t'"),
        ("space", "px:8", "':'"),
        ("space", "px.8", "'.'"),
    ],
)
def test_group_and_space_names_are_checked_at_load(tmp_path, key, value, why):
    group = {"name": "u", "source": "uci_digits", key: value}
    res = cli("--set", f"data.groups=[{json.dumps(group)}]", "--set", f"out_dir={tmp_path}/runs")
    assert_one_line_error(res, f"data.groups[0].{key}", "not a valid name", why)
    assert not (tmp_path / "runs").exists()  # nothing written


def test_names_in_other_keys_and_registries_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"model.encoders.a:b: 'a:b' is not a valid name"):
        small_config(tmp_path, model={"encoders": {"a:b": {"kind": "mlp"}}})
    with pytest.raises(ConfigError, match="federated.group_clients.x/y"):
        small_config(tmp_path, federated={"group_clients": {"x/y": 2}})
    with pytest.raises(ConfigError, match="at most 128"):
        small_config(tmp_path, name="r" * 129)
    with pytest.raises(ValueError, match="not a valid name"):
        Registry("method").register("a:b")
    from fedanchors.data.base import GroupData, ScenarioData, Split

    s = Split(torch.zeros(1, 1), torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ConfigError, match="group 'p/q'"):  # data built in Python (a test, a library user) too
        ScenarioData([GroupData("p/q", "px8", s, s, s)], 10)


@pytest.mark.parametrize(
    ("group", "needle"),
    [
        ({"resize": 0}, "resize must be 4..1024"),
        ({"resize": 4096}, "resize must be 4..1024"),
        ({"dots": {"n": 1, "classes": [12]}}, "dots.classes"),
        ({"partition": {"kind": "dirichlet", "alpha": 0}}, "alpha must be > 0"),
    ],
)
def test_transform_ranges(tmp_path, group, needle):
    g = {"name": "m", "source": "mnist"} | group
    res = cli("--set", f"data.groups=[{json.dumps(g)}]", "--set", f"out_dir={tmp_path}/runs")
    assert_one_line_error(res, needle)


def test_audio_feature_ranges(tmp_path):
    for features, needle in (({"n_fft": 16000}, "at most the 8000 samples"), ({"n_mels": 200}, "frequency bins")):
        g = {"name": "a", "source": "fsdd", "features": {"kind": "log_mel"} | features}
        assert_one_line_error(cli("--set", f"data.groups=[{json.dumps(g)}]", "--print-config"), needle)


# -- bad values in data ---------------------------------------------------------------------


def test_nan_pixels_in_femnist_name_the_file_and_writer(tmp_path, shared_data):
    root = tmp_path / "data" / "femnist"
    shutil.copytree(shared_data / "femnist", root)
    victim = sorted((root / "train").glob("*.json"))[0]
    raw = json.loads(victim.read_text())
    writer = raw["users"][1]
    raw["user_data"][writer]["x"][3][100] = float("nan")  # json writes NaN, and reads it back
    victim.write_text(json.dumps(raw))
    res = cli("--config", "configs/femnist.yaml", "--set", f"data.root={tmp_path / 'data'}",
              "--set", f"out_dir={tmp_path}/runs")  # fmt: skip
    assert_one_line_error(res, str(victim), f"writer {writer!r}", "example 3", "nan")
    assert "diverged" not in res.stderr and not (tmp_path / "runs").exists()


def test_non_finite_inputs_of_any_scenario_are_refused():
    from fedanchors.data.base import check_finite_rows

    x = torch.zeros(4, 2)
    x[2, 1] = float("inf")
    with pytest.raises(DataError, match=r"src: example 2 \(speaker_b\) holds inf"):
        check_finite_rows(x, "src", ["a", "b", "speaker_b", "c"])
    check_finite_rows(torch.zeros(3, 2), "src")  # finite: no error


# -- writes the machine refuses -------------------------------------------------------------


def test_write_errors_name_the_file_the_cause_and_the_way_on(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("mode: centralized\n")
    (run / "checkpoints" / "resume.pt").write_bytes(b"x")
    for code, needle in ((errno.ENOSPC, "free disk space"), (errno.EROFS, "read-only"), (errno.EACCES, "permission")):
        msg = str(write_error(OSError(code, os.strerror(code)), run / "metrics.jsonl"))
        assert str(run / "metrics.jsonl") in msg and errno.errorcode[code] in msg and needle in msg
        assert f"--resume {run}" in msg and "\n" not in msg


def test_a_failed_write_keeps_the_last_good_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_atomic({"epoch": 1}, path)
    append_line(tmp_path / "m.jsonl", '{"epoch": 1}')
    real_open, real_write = open, os.write

    def full(p, *a, **k):
        if str(p).endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device", str(p))
        return real_open(p, *a, **k)

    def half(fd, data):  # a short write, then the disk is full
        real_write(fd, bytes(data[:3]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(WriteError, match="No space left on device"):
        save_atomic({"epoch": 2}, path)
    monkeypatch.setattr("builtins.open", real_open)
    assert torch.load(path, weights_only=True) == {"epoch": 1} and not (tmp_path / "c.pt.tmp").exists()
    monkeypatch.setattr(os, "write", half)
    with pytest.raises(WriteError):
        append_line(tmp_path / "m.jsonl", '{"epoch": 2}')
    monkeypatch.setattr(os, "write", real_write)
    assert (tmp_path / "m.jsonl").read_text() == '{"epoch": 1}\n'  # never half a line


def _mount_tmpfs(where: Path, kib: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)], capture_output=True)
    assert res.returncode == 0, f"mounting a tmpfs failed (needs root): {res.stderr.decode()}"


def _usage(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


STEPS = 6


@pytest.fixture(scope="module", params=["centralized", "federated"])
def reference(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(mode, config, a finished uninterrupted run of it): what the interrupted runs must end as."""
    mode, tmp = request.param, tmp_path_factory.mktemp(f"ref-{request.param}")
    cfg = small_config(
        tmp, mode=mode, optim={"epochs": STEPS}, federated={"rounds": STEPS}, data={"max_per_group": 300}
    )
    save_config(cfg, tmp / "c.yaml")
    ref = _start(tmp / "c.yaml", "reference", "--set", f"out_dir={tmp / 'roomy'}")
    assert ref.wait(timeout=600) == 0, ref.communicate()
    return mode, tmp / "c.yaml", tmp / "roomy" / "reference"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_a_full_disk_stops_with_one_line_and_resumes_once_space_is_back(tmp_path, reference):
    """out_dir on a tmpfs too small for the whole run: exit 5 and one line naming the file and
    ENOSPC, the last good checkpoint loads, and after the space is back --resume ends exactly
    like the run on a roomy disk. Then a read-only remount mid-run: EROFS, also one line."""
    mode, config, done = reference
    need = _usage(done)
    resume = done / "checkpoints" / ("server_resume.pt" if mode == "federated" else "resume.pt")
    last = done / "checkpoints" / ("last_server.pt" if mode == "federated" else "last.pt")
    # what a run holds mid-way (no plots, summary or last checkpoint), plus room for part of
    # the next atomic checkpoint write: the disk fills during a later step
    base = need - sum(p.stat().st_size for p in done.glob("*.png")) - last.stat().st_size
    small = tmp_path / "small"
    _mount_tmpfs(small, (base + resume.stat().st_size // (2 if mode == "centralized" else -2)) // 1024)
    try:
        res = cli("--config", str(config), "--set", "name=full", "--set", f"out_dir={small}")
        assert res.returncode == 5, res.stderr[-2000:]
        line = res.stderr.strip().splitlines()[-1]
        assert line.startswith("error: cannot write ") and "ENOSPC" in line and f"--resume {small / 'full'}" in line
        assert "Traceback" not in res.stderr and "inline_container" not in res.stderr
        ckpt = small / "full" / "checkpoints" / ("server_resume.pt" if mode == "federated" else "resume.pt")
        state = torch.load(ckpt, weights_only=True)  # the last good one, whole
        assert 1 <= state["round" if mode == "federated" else "epoch"] < STEPS
        assert not list(small.rglob("*.tmp"))  # no fragment holds the space
        subprocess.run(["mount", "-o", f"remount,size={need * 4 // 1024}k", str(small)], check=True)
        res = cli("--resume", str(small / "full"))
        assert res.returncode == 0, res.stderr[-2000:]
        assert _finished(small / "full") == _finished(done)
        if mode == "federated":  # the read-only disk is the same code path: checked once, centralized
            return
        # a disk that turns read-only mid-run: EROFS, the same one line
        longer = _start(config, "ro", "--set", f"out_dir={small}", "--set", "optim.epochs=400",
                        "--set", "federated.rounds=400")  # fmt: skip
        _wait_for(small / "ro", "round" if mode == "federated" else "epoch", 2, longer)
        for _ in range(100):  # busy while the run holds a file open for writing: try again between writes
            if subprocess.run(["mount", "-o", "remount,ro", str(small)], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the tmpfs could not be remounted read-only (busy for 5 s)")
        _, err = longer.communicate(timeout=300)
        assert longer.returncode == 5, err[-2000:]
        assert "Read-only file system (EROFS)" in err.strip().splitlines()[-1] and "Traceback" not in err
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


# -- SIGTERM --------------------------------------------------------------------------------


def _survivors(pgid: int) -> list[int]:
    from .test_distributed import _group

    return _group(pgid)


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_and_resumes_exactly(tmp_path, reference):
    mode, config, done = reference
    proc = _start(config, "termed", "--set", f"out_dir={tmp_path}")
    unit = "round" if mode == "federated" else "epoch"
    _wait_for(tmp_path / "termed", unit, 2, proc)
    os.kill(proc.pid, signal.SIGTERM)  # what kill, a scheduler or a container stop sends
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert lines[-1].startswith("stopped: SIGTERM received: stopped after ") and "--resume" in lines[-1], err
    assert "SIGTERM received at time" not in err and "logging.cc" not in err and "Traceback" not in err
    assert not _survivors(proc.pid), "a process the run started outlived it"
    assert max(r[unit] for r in _records(tmp_path / "termed")) < STEPS
    res = cli("--resume", str(tmp_path / "termed"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert _finished(tmp_path / "termed") == _finished(done)


def test_sigterm_and_sigint_exit_codes():
    from fedanchors.resume import Aborted, Interrupted

    assert Interrupted("x", signal.SIGTERM).exit_code == 143 and Interrupted("x").exit_code == 130
    assert Aborted(signal.SIGTERM).exit_code == 143 and str(Aborted(signal.SIGTERM)) == "SIGTERM"


def test_a_client_that_cannot_write_its_state_stops_the_run_naming_the_file(tmp_path, monkeypatch):
    """A client's refused write (in its own process under Ray) comes back as an error reply;
    the server stops with the client's one line, not a skipped client every later round."""
    import clients.task as task
    from server.driver import FederatedTrainer
    from server.strategy import FedAnchors

    from .flower_harness import InProcessGrid

    cfg = small_config(tmp_path, mode="federated", federated={"rounds": 3, "local_steps": 1})
    grid = InProcessGrid(cfg, 2, str(tmp_path / "clients"))
    trainer = FederatedTrainer(cfg, grid, FedAnchors(cfg, 2, 10))
    trainer.setup()
    trainer.train(1)
    real = task.write_atomic

    def full(path, data):
        if "/clients/1/" in str(path):
            raise write_error(OSError(errno.ENOSPC, "No space left on device"), path)
        real(path, data)

    monkeypatch.setattr(task, "write_atomic", full)
    with pytest.raises(WriteError) as err:
        trainer.train(2)
    msg = str(err.value)
    assert msg.startswith(f"cannot write {tmp_path / 'clients' / '1' / 'r2.pt'}: No space left") and "\n" not in msg
    assert err.value.exit_code == 5
