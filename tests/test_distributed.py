"""Real distributed runs: Flower's Deployment Engine (a SuperLink and one SuperNode per
group as separate processes, the run submitted with ``flwr run``) and a local Ray cluster
(``ray start --head``) that a simulation joins through ``federated.ray_init``. Both end
with a complete run directory and the simulation engine's metrics for the same seed; every
process a test starts is stopped by it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import DATA, REPO
from .tls import Certs, make_certs

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SETS = ["federated.rounds=2", "progress=false", "data.max_per_group=200", "model.encoder.hidden=32"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path) -> dict:
    """The Flower processes' environment: this venv's executables first on PATH (the SuperLink
    starts ``flower-superexec`` by name), even when the suite runs without the venv activated."""
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    extra = {"FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FEDANCHORS_DATA": str(DATA), "PATH": path}
    return os.environ | extra


def _group(pgid: int) -> list[int]:
    """Live processes of a process group (from /proc)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(p.name))
    return out


class Federation:
    """A SuperLink and ``nodes`` SuperNodes on 127.0.0.1, each in its own process group; a
    Flower configuration file naming the SuperLink as ``test``. Insecure, or with ``certs``
    (``tests.tls``): TLS with the SuperLink's certificate, SuperNode authentication on, and
    each SuperNode's public key registered (``flwr supernode register``) before it starts."""

    def __init__(self, tmp: Path, nodes: int, certs: Certs | None = None) -> None:
        self.home, self.port, self.nodes, self.procs, self.certs = tmp / "flwr-home", _port(), nodes, [], certs
        self.home.mkdir(parents=True, exist_ok=True)
        trust = f'root-certificates = "{certs.ca}"' if certs else "insecure = true"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{self.port}"\n{trust}\n'
        )
        self.logs = tmp / "flwr-logs"
        self.logs.mkdir(exist_ok=True)

    def _start(self, name: str, *args: str, threads: int = 0) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        env = _env(self.home) | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
        proc = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def flwr(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args], env=_env(self.home), cwd=REPO, capture_output=True, text=True, timeout=60
        )

    def __enter__(self) -> Federation:
        secure = ["--insecure"]
        if self.certs:
            c = self.certs
            secure = ["--ssl-ca-certfile", str(c.ca), "--ssl-certfile", str(c.cert), "--ssl-keyfile", str(c.key)]
            secure.append("--enable-supernode-auth")
        self._start("superlink", "flower-superlink", *secure, "--port", str(self.port), "--database",
                    ":flwr-in-memory:", "--disable-runtime-dependency-installation")  # fmt: skip
        self.wait_for_superlink()
        for p in range(self.nodes):
            if self.certs:
                res = self.flwr("supernode", "register", f"{self.certs.nodes[p]}.pub", "test", "--format", "json")
                assert res.returncode == 0 and json.loads(res.stdout)["success"], res.stdout + res.stderr
            self.start_node(p)
        time.sleep(3)
        return self

    def wait_for_superlink(self, timeout: float = 90.0) -> None:
        """Until the SuperLink answers ``flwr ls`` (a loaded machine can take well over the few
        seconds it usually needs to start)."""
        deadline = time.time() + timeout
        while True:
            res = self.flwr("ls", "test", "--format", "json")
            try:
                if "runs" in json.loads(res.stdout):
                    return
            except json.JSONDecodeError:
                pass
            assert time.time() < deadline, f"no SuperLink after {timeout:g} s: {self.log('superlink')[-2000:]}"
            time.sleep(1)

    def start_node(self, p: int, key: Path | None = None, ca: Path | None = None, **extra: str) -> subprocess.Popen:
        """SuperNode ``p`` (its own key and the right CA unless ``key`` / ``ca`` say otherwise)."""
        trust = ["--insecure"]
        if self.certs:
            trust = ["--root-certificates", str(ca or self.certs.ca)]
            trust += ["--auth-supernode-private-key", str(key or self.certs.nodes[p])]
        more = [x for k, v in extra.items() for x in (f"--{k.replace('_', '-')}", v)]
        return self._start(
            f"supernode{p}" + (f"-{key.name if key else ''}{ca.stem if ca else ''}" if key or ca else ""),
            "flower-supernode", *trust, "--superlink", f"127.0.0.1:{self.port}", "--port", str(_port()),
            "--node-config", f"partition-id={p} num-partitions={max(self.nodes, 1)}", *more,
            threads=1,  # as Ray gives each 1-CPU client, so the numbers equal the simulation's
        )  # fmt: skip

    def run(self, config: str, sets: list[str], run_dir: Path) -> subprocess.CompletedProcess:
        rc = f"config='{config}' overrides='{' '.join(sets)}' run-dir='{run_dir}'"
        return subprocess.run(
            [str(BIN / "flwr"), "run", ".", "test", "--run-config", rc, "--stream"],
            env=_env(self.home) | {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )

    def last_run(self) -> dict:
        runs = json.loads(self.flwr("ls", "test", "--format", "json").stdout)["runs"]
        return max(runs, key=lambda r: r["pending-at"])

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=20)
        deadline = time.time() + 20
        while any(_group(p.pid) for p in self.procs) and time.time() < deadline:
            time.sleep(0.2)
        for p in self.procs:  # the ServerApp/ClientApp processes the engine started too
            for pid in _group(p.pid):
                os.kill(pid, signal.SIGKILL)
        assert not any(_group(p.pid) for p in self.procs), "a Flower process outlived the test"


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _simulate(tmp_path: Path, *sets: str) -> Path:
    args = ["--config", "configs/digits_fed.yaml", "--set", f"out_dir={tmp_path / 'sim'}"]
    for s in [*SETS, *sets]:
        args += ["--set", s]
    res = subprocess.run(
        [sys.executable, "-m", "fedanchors.simulate", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout[res.stdout.index("{\n") :]  # after any line Ray's raylet pushes to the driver
    return Path(json.loads(out)["run_dir"])


def _same_run(a: Path, b: Path) -> None:
    ra, rb = _records(a), _records(b)
    assert [r["round"] for r in ra] == [r["round"] for r in rb] == [1, 2]
    for x, y in zip(ra, rb):
        assert x == y
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    skip = {"wall_time_s", "run_dir"}
    assert {k: v for k, v in sa.items() if k not in skip} == {k: v for k, v in sb.items() if k not in skip}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """digits_fed (SETS) on the simulation engine: the reference of the distributed runs."""
    return _simulate(tmp_path_factory.mktemp("simulated"))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> tuple[Path, dict, str]:
    """The same run on the Deployment Engine, insecure: (run dir, flwr status, output)."""
    if not shutil.which("flower-superlink", path=str(BIN)):
        pytest.fail("flower-superlink is not installed beside this Python (flwr >= 1.41)")
    tmp = tmp_path_factory.mktemp("deployed")
    with Federation(tmp, 2) as fed:
        res = fed.run("configs/digits_fed.yaml", SETS, tmp / "deployed")
        status = fed.last_run()
    return tmp / "deployed", status, res.stdout[-3000:] + res.stderr[-2000:]


def test_deployment_engine_run_matches_the_simulation(deployed, simulated):
    run_dir, status, output = deployed
    assert status["status"] == "finished:completed", (status, output)
    for f in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "checkpoints/best_server.pt",
        "checkpoints/last_server.pt",
    ):
        assert (run_dir / f).is_file(), f
    assert sorted(p.name for p in (run_dir / "clients").iterdir()) == ["0", "1"]  # private state, per SuperNode
    _same_run(run_dir, simulated)


def test_supernode_count_mismatch_fails_at_once_with_one_line(tmp_path):
    """Three SuperNodes for two groups: the run fails in seconds (not after round_timeout)
    with one line naming both numbers; one SuperNode too few fails after connect_timeout."""
    with Federation(tmp_path, 3) as fed:
        fed.run("configs/digits_fed.yaml", [*SETS, "federated.round_timeout=600"], tmp_path / "three")
        status = fed.last_run()
    assert status["status"] == "finished:failed"
    assert "3 clients connected but the config has 2 groups" in status["status-details"]
    assert "\n" not in status["status-details"].strip()
    assert status["elapsed"] < 60  # far below round_timeout=600
    with Federation(tmp_path, 1) as fed:
        fed.run("configs/digits_fed.yaml", [*SETS, "federated.connect_timeout=5"], tmp_path / "one")
        status = fed.last_run()
    assert status["status"] == "finished:failed"
    assert "only 1 of 2 clients" in status["status-details"] and "connect_timeout=5" in status["status-details"]


def test_a_run_joins_a_local_ray_cluster(tmp_path, simulated):
    """``ray start --head`` on 127.0.0.1, the run joins it with federated.ray_init.address."""
    port = _port()
    env = os.environ | {"RAY_ADDRESS": "", "FLWR_TELEMETRY_ENABLED": "0"}
    temp = Path("/tmp") / f"ray-fa-{port}"  # Ray's socket paths must stay short
    start = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port)]
    start += ["--num-cpus", "2", "--include-dashboard", "false", "--temp-dir", str(temp), "--disable-usage-stats"]
    res = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert res.returncode == 0, res.stderr[-2000:]
        joined = _simulate(tmp_path / "cluster", f"federated.ray_init={{address: '127.0.0.1:{port}'}}")
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
    status = subprocess.run([str(BIN / "ray"), "status", "--address", f"127.0.0.1:{port}"], capture_output=True)
    assert status.returncode != 0  # the cluster is gone
    _same_run(joined, simulated)


def test_a_tls_and_authenticated_deployment_matches_the_insecure_one(tmp_path, deployed):
    """TLS (a CA and the SuperLink's certificate made in the test) and SuperNode
    authentication (each SuperNode's key registered first): the run completes and its
    metrics equal the insecure deployment's for the same seed, record by record."""
    certs = make_certs(tmp_path / "certs", nodes=2)
    with Federation(tmp_path / "secure", 2, certs) as fed:
        fed.run("configs/digits_fed.yaml", SETS, tmp_path / "secure-run")
        status = fed.last_run()
        nodes = json.loads(fed.flwr("supernode", "ls", "test", "--format", "json").stdout)["nodes"]
    assert status["status"] == "finished:completed", (status, fed.log("superlink")[-3000:])
    assert len(nodes) == 2 and all(n["online-at"] != "N/A" for n in nodes)  # both registered nodes served
    plain, plain_status, _ = deployed
    assert plain_status["status"] == "finished:completed"
    _same_run(tmp_path / "secure-run", plain)


def test_the_superlink_lets_no_unknown_or_untrusting_supernode_in(tmp_path):
    """A SuperNode whose key was never registered is refused by the SuperLink; one that does
    not trust the SuperLink's certificate cannot connect; the registered, trusting one can."""
    certs = make_certs(tmp_path / "certs", nodes=2)  # supernode1's key is never registered
    with Federation(tmp_path, 0, certs) as fed:
        res = fed.flwr("supernode", "register", f"{certs.nodes[0]}.pub", "test", "--format", "json")
        assert json.loads(res.stdout)["success"]
        retry = {"max_retries": "1", "max_wait_time": "20"}
        stranger = fed.start_node(1, key=certs.nodes[1], **retry)
        doubter = fed.start_node(0, ca=certs.other_ca, **retry)
        assert stranger.wait(timeout=120) != 0 and doubter.wait(timeout=120) != 0
        refused = fed.log(f"supernode1-{certs.nodes[1].name}")
        assert "Failed to activate SuperNode" in refused, refused[-2000:]
        assert "No SuperNode found with the given public key" in fed.log("superlink")
        assert "CERTIFICATE_VERIFY_FAILED" in fed.log(f"supernode0-{certs.other_ca.stem}")
        fed.start_node(0)
        deadline, online = time.time() + 60, []
        while time.time() < deadline and not online:
            nodes = json.loads(fed.flwr("supernode", "ls", "test", "--format", "json").stdout)["nodes"]
            online = [n for n in nodes if n["status"] == "online"]
            time.sleep(1)
    assert len(online) == 1 and len(nodes) == 1  # the registered node, and only it
