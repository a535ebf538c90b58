"""Sweeps on Ray Tune: grid, failures, resume, a two-node cluster; config checks before Ray.

The sweeps share one local Ray per test session (``ray_address``, 2 CPUs on a loopback address,
DESIGN §7): starting Ray costs seconds. A driver that must not share it (the killed one, the
cluster's) runs as a subprocess.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import ray
import torch
from typer.testing import CliRunner

from mmvae_bench import sweep as sweeps
from mmvae_bench import tune
from mmvae_bench.cli import app
from mmvae_bench.errors import BenchError
from mmvae_bench.plugins import load_registry
from mmvae_bench.results import RunRecord
from tests.tiny import TINY_RUN

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
# Tiny JNF, one epoch per stage, quick protocol, large batches: a trial takes seconds on a CPU.
TINY = [*TINY_RUN, "--set", "batch_size=256"]
CLI = [sys.executable, "-c", "from mmvae_bench.cli import main; main()"]


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    # One local Ray for every sweep of the session, shut down at its end.
    with tune.ray_session(cpus=2) as address:
        yield address


@pytest.fixture(scope="session")
def sweep_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Coherence classifiers are trained once per session, by the first sweep's driver.
    return tmp_path_factory.mktemp("sweep-cache")


def _args(name: str, tmp_path: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        "jnf",
        *TINY,
        "--name",
        name,
        "--storage",
        str(tmp_path / "sweeps"),
        "--out",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(cache),
        *extra,
    ]


def _summary(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "sweeps" / name / "sweep.json").read_text())


def _ok_records(runs: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for f in sorted(runs.glob("*/results.json")):
        data = f.read_bytes()
        if json.loads(data)["status"] == "ok":
            out[f.parent.name] = (f.stat().st_mtime_ns, data)
    return out


# ---------------------------------------------------------------------------------------------
# Sweeps on the session's local Ray
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_grid_of_beta_and_flow_depth_over_seeds(
    ray_address: str, tmp_path: Path, sweep_cache: Path
) -> None:
    args = _args("grid", tmp_path, sweep_cache, "--grid", "beta=0.5,1", "--grid", "flows=1,2")
    res = runner.invoke(app, [*args, "--seeds", "2"])
    assert res.exit_code == 0, res.output
    summary = _summary(tmp_path, "grid")
    trials = summary["trials"]
    points = {(t["params"]["beta"], t["params"]["flow_depth"], t["seed"]) for t in trials}
    assert points == set(itertools.product([0.5, 1.0], [1, 2], [0, 1]))
    assert [t["status"] for t in trials] == ["ok"] * 8, trials
    for t in trials:
        # Each trial is an ordinary run record, named by sweep and grid point.
        record = RunRecord.load(tmp_path / "runs" / t["run_id"])
        assert t["run_id"].startswith("grid-beta") and record.run_id == t["run_id"]
        assert record.status == "ok" and record.seed == t["seed"]
        assert record.config["beta"] == t["params"]["beta"]
        assert record.config["flow_depth"] == t["params"]["flow_depth"]
        assert record.config["latent_dim"] == 4 and record.run["threads"] == 1
        assert record.protocol["name"] == "quick"
        assert 0.0 <= t["metrics"]["cond_coherence_1"] <= 1.0
        assert 0.0 <= t["metrics"]["joint_coherence"] <= 1.0
        assert t["node_ip"] == tune.LOOPBACK
    # Tune got every epoch of both stages, then the final metrics.
    trial_dir = tmp_path / "sweeps" / "grid" / "beta0.5-flow_depth1-s0"
    reports = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    assert [(r.get("stage"), r.get("epoch")) for r in reports[:2]] == [
        ("joint", 0),
        ("unimodal", 0),
    ]
    assert all("train/loss" in r for r in reports[:2])
    assert reports[-1]["run_status"] == "ok" and "cond_coherence_1" in reports[-1]
    # ... and a checkpoint at each stage end: the run's checkpoint.pt, copied.
    ckpts = sorted(trial_dir.glob("checkpoint_*/checkpoint.pt"))
    stages = [torch.load(c, weights_only=True)["stage"] for c in ckpts]
    assert stages == ["joint", "unimodal"]
    # The best config per metric, the table, the heat map.
    assert set(summary["best"]) == {"cond_coherence_1", "joint_coherence"}
    assert set(summary["best"]["cond_coherence_1"]["params"]) == {"beta", "flow_depth"}
    assert summary["best"]["cond_coherence_1"]["seeds"] == 2
    heatmap = Path(summary["heatmap"])
    assert heatmap.parent == tmp_path / "sweeps" / "grid"
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and heatmap.stat().st_size > 5000
    # One heat map per headline metric (no FID here): heatmap.png is the one-input coherence's.
    maps = {k: Path(v) for k, v in summary["heatmaps"].items()}
    assert maps == {
        "cond_coherence_1": heatmap,
        "joint_coherence": heatmap.parent / "heatmap-joint_coherence.png",
    }
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in maps.values())
    assert "best config per metric" in res.output and "8 ok, 0 failed" in res.output


@pytest.mark.slow
def test_a_diverging_config_fails_alone(
    ray_address: str, tmp_path: Path, sweep_cache: Path
) -> None:
    # lr = 1e30 is a valid config whose second Adam step overflows the weights: the trainer
    # raises NonFiniteLossError (step 2 here), every time.
    res = runner.invoke(app, _args("nan", tmp_path, sweep_cache, "--grid", "lr=0.001,1e30"))
    assert res.exit_code == 0, res.output
    trials = {t["params"]["lr"]: t for t in _summary(tmp_path, "nan")["trials"]}
    bad, good = trials[1e30], trials[0.001]
    assert bad["status"] == "failed"
    assert bad["error"].startswith("NonFiniteLossError: non-finite loss")
    assert RunRecord.load(tmp_path / "runs" / bad["run_id"]).status == "failed"
    assert good["status"] == "ok" and good["metrics"]["cond_coherence_1"] >= 0.0
    assert RunRecord.load(tmp_path / "runs" / good["run_id"]).status == "ok"
    assert "1 ok, 1 failed" in res.output


@pytest.mark.slow
def test_resume_after_a_killed_driver_keeps_finished_trials(
    ray_address: str, tmp_path: Path, sweep_cache: Path
) -> None:
    args = _args("resume", tmp_path, sweep_cache, "--grid", "beta=0.5,1", "--seeds", "2")
    # The first driver joins the session's Ray and is killed once two trials have finished:
    # its trials die with it, and Tune's saved state lags behind the records.
    log = tmp_path / "driver.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [*CLI, *args, "--address", ray_address],
            stdout=subprocess.DEVNULL,
            stderr=f,
            start_new_session=True,
        )
    deadline = time.monotonic() + 300
    try:
        while len(_ok_records(tmp_path / "runs")) < 2:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no two finished trials in 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _ok_records(tmp_path / "runs")
    assert 2 <= len(before) < 4

    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    trials = _summary(tmp_path, "resume")["trials"]
    assert [t["status"] for t in trials] == ["ok"] * 4, trials
    after = _ok_records(tmp_path / "runs")
    assert set(after) == {t["run_id"] for t in trials}
    # The finished trials did not run again: their records are byte for byte the same file.
    assert all(after[run_id] == before[run_id] for run_id in before)


def test_resume_of_an_unknown_sweep_is_a_user_error(tmp_path: Path) -> None:
    res = runner.invoke(app, [*_args("nope", tmp_path, tmp_path / "cache"), "--resume"])
    assert res.exit_code == 2, res.output
    assert "no sweep to resume" in res.output and "Traceback" not in res.output


class _Unpickled:
    """Creates ``flag`` if anything unpickles it."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return (open, (str(self.flag), "w"))


def _foreign_sweep(tmp_path: Path, name: str) -> Path:
    # A Tune experiment folder that mmvae-bench did not create: its tuner.pkl runs code.
    folder = tmp_path / "sweeps" / name
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(pickle.dumps(_Unpickled(tmp_path / "unpickled")))
    (folder / sweeps.STATE_FILE).write_text("{}")
    return folder


def test_resume_refuses_a_folder_the_suite_did_not_create(tmp_path: Path) -> None:
    _foreign_sweep(tmp_path, "foreign")
    out = _error([*_args("foreign", tmp_path, tmp_path / "cache"), "--resume"])
    assert "was not created by mmvae-bench sweep; refusing to restore its pickled Tune state" in (
        " ".join(out.split())
    )
    assert not (tmp_path / "unpickled").exists()


def test_resume_refuses_a_marker_whose_token_this_cache_never_issued(tmp_path: Path) -> None:
    # A copied (or forged) folder carries a well-formed marker, but the token is not ours.
    folder = _foreign_sweep(tmp_path, "copied")
    marker = {"created_by": "mmvae-bench sweep", "token": "0123456789abcdef" * 2}
    (folder / tune.MARKER).write_text(json.dumps(marker))
    out = " ".join(_error([*_args("copied", tmp_path, tmp_path / "cache"), "--resume"]).split())
    assert "was not created by mmvae-bench sweep" in out and "its token is not in" in out
    assert not (tmp_path / "unpickled").exists()


def test_a_folder_the_suite_created_passes_the_trust_check(tmp_path: Path) -> None:
    values = {"model": "jnf", "dataset": "circles-squares", "name": "mine"}
    values |= {"storage": str(tmp_path / "sweeps"), "cache_dir": str(tmp_path / "cache")}
    tune._claim_folder(sweeps.sweep_config(values, load_registry()))
    folder = tmp_path / "sweeps" / "mine"
    (folder / "tuner.pkl").write_bytes(b"")
    (folder / sweeps.STATE_FILE).write_text(json.dumps({"seeds": [7]}))
    # The next check (same settings) is reached: the marker and its token were accepted.
    out = _error([*_args("mine", tmp_path, tmp_path / "cache"), "--resume"])
    assert "was started with other settings" in " ".join(out.split())


# ---------------------------------------------------------------------------------------------
# The local Ray listens on loopback only; a bad --address fails in seconds, before Ray
# ---------------------------------------------------------------------------------------------


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


@pytest.mark.slow  # alone it starts the session's Ray (~10 s); after the sweeps, 0.5 s
def test_every_socket_of_the_local_ray_listens_on_loopback(ray_address: str) -> None:
    assert ray.get(ray.remote(lambda: os.getpid()).remote()) != os.getpid()  # a worker is up
    driver = psutil.Process()
    procs = {p.pid: p for p in [driver, *driver.children(recursive=True)]}
    listening = []
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in procs:
            with contextlib.suppress(psutil.Error):
                listening.append((c.laddr.ip, c.laddr.port, procs[c.pid].name()))
    listing = "\n".join(f"{ip} {port} {name}" for ip, port, name in sorted(listening))
    # The GCS and the raylet at least (each found as the driver's descendant).
    assert {"gcs_server", "raylet"} <= {name for _, _, name in listening}, listing
    assert all(_loopback(ip) for ip, _, _ in listening), listing
    assert ray_address.rpartition(":")[0] == tune.LOOPBACK


def test_a_dead_address_fails_within_seconds_naming_it(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port('127.0.0.1')}"
    t0 = time.monotonic()
    out = _error([*_args("dead", tmp_path, tmp_path / "cache"), "--address", address])
    assert time.monotonic() - t0 < 30
    assert f"no Ray cluster at {address}" in " ".join(out.split())
    assert not (tmp_path / "sweeps").exists()


def test_auto_follows_ray_address_and_checks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = f"127.0.0.1:{_free_port('127.0.0.1')}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    out = _error([*_args("auto", tmp_path, tmp_path / "cache"), "--address", "auto"])
    assert f"no Ray cluster at {address}" in " ".join(out.split())


def test_an_address_that_is_not_a_gcs_is_named(tmp_path: Path) -> None:
    # An HTTP/1 server (as the dashboard's port would be) answers the probe with text.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        address = f"127.0.0.1:{srv.getsockname()[1]}"

        def answer() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        out = _error([*_args("http", tmp_path, tmp_path / "cache"), "--address", address])
        thread.join(5)
    assert f"{address} answers but is not a Ray GCS" in " ".join(out.split())


@pytest.mark.parametrize(
    "address", ["ray://127.0.0.1:10001", "127.0.0.1", "head:port", "127.0.0.1:70000", "::1:6379"]
)
def test_an_address_must_be_host_port_or_auto(tmp_path: Path, address: str) -> None:
    out = _error([*_args("bad", tmp_path, tmp_path / "cache"), "--address", address])
    assert f"--address must be HOST:PORT (a Ray head's GCS address) or 'auto', got {address!r}" in (
        " ".join(out.split())
    )


# ---------------------------------------------------------------------------------------------
# A two-node cluster on this machine
# ---------------------------------------------------------------------------------------------


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _nodes(ray: str, address: str, env: dict[str, str]) -> int:
    res = subprocess.run(
        [ray, "status", "--address", address], env=env, capture_output=True, text=True
    )
    return res.stdout.count(" node_") if res.returncode == 0 else 0


@pytest.fixture
def two_node_cluster() -> Iterator[str]:
    """A head on 127.0.0.2 and a worker on 127.0.0.3, one CPU each; yields the address.

    Both run ``ray start --block`` in their own process group with their own temp dir, so
    teardown stops exactly these processes (``ray stop`` would stop every Ray on the machine)
    and no other session's ``ray.init()`` finds this cluster.
    """
    ray = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's unix sockets live there
    port = _free_port("127.0.0.2")
    address = f"127.0.0.2:{port}"
    common = ["--num-cpus", "1", "--temp-dir", temp, "--block"]
    head_cmd = [ray, "start", "--head", "--node-ip-address", "127.0.0.2", "--port", str(port)]
    worker_cmd = [ray, "start", "--address", address, "--node-ip-address", "127.0.0.3"]
    procs: list[subprocess.Popen] = []
    try:
        for cmd, n in (([*head_cmd, "--include-dashboard", "false"], 1), (worker_cmd, 2)):
            procs.append(
                subprocess.Popen(
                    [*cmd, *common],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            deadline = time.monotonic() + 90
            while _nodes(ray, address, env) < n:
                assert all(p.poll() is None for p in procs), "ray start exited"
                assert time.monotonic() < deadline, f"{n} node(s) not up in 90 s"
                time.sleep(0.5)
        yield address
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_sweep_on_a_two_node_cluster(
    two_node_cluster: str, tmp_path: Path, sweep_cache: Path
) -> None:
    args = _args("cluster", tmp_path, sweep_cache, "--grid", "beta=0.5,1", "--seeds", "2")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    res = subprocess.run(
        [*CLI, *args, "--address", two_node_cluster], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    trials = _summary(tmp_path, "cluster")["trials"]
    assert [t["status"] for t in trials] == ["ok"] * 4, trials
    # One CPU per node and per trial: the trials ran on both nodes.
    assert {t["node_ip"] for t in trials} == {"127.0.0.2", "127.0.0.3"}


# ---------------------------------------------------------------------------------------------
# Configs: checked before Ray starts
# ---------------------------------------------------------------------------------------------


def _error(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    return res.output


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("nope=1,2", "unknown config field 'nope'"),
        ("beta=0.5,abc", "beta must be a number, got 'abc'"),
        ("flows=0,1", "flow_depth must be >= 1, got 0"),
        ("beta", "--grid expects beta=0.5,1,2.5"),
    ],
)
def test_bad_grid_exits_2_naming_it(tmp_path: Path, grid: str, message: str) -> None:
    out = _error(_args("bad", tmp_path, tmp_path / "cache", "--grid", grid))
    assert message in " ".join(out.split())
    assert not (tmp_path / "sweeps").exists()


def test_unknown_field_lists_valid_fields_and_aliases(tmp_path: Path) -> None:
    out = " ".join(_error(_args("bad", tmp_path, tmp_path, "--grid", "depth=1")).split())
    assert "flow_depth" in out and "beta" in out and "flows = flow_depth" in out


def test_grid_axis_and_set_of_the_same_field_conflict(tmp_path: Path) -> None:
    out = _error(_args("bad", tmp_path, tmp_path, "--grid", "flows=1,2", "--set", "flow_depth=2"))
    assert "both a grid axis and --set" in " ".join(out.split())


def test_sweep_file_rejects_unknown_keys(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('model = "jnf"\ndataset = "circles-squares"\ngird = {beta = [1]}\n')
    out = " ".join(_error(["sweep", "--config", str(f)]).split())
    assert "unknown key(s) ['gird']" in out and "grid" in out and "max_concurrent" in out


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("jnf_*.toml")), ids=str)
def test_benchmark_sweep_files_are_valid(path: Path) -> None:
    cfg = sweeps.sweep_config(sweeps.load_sweep_file(path), load_registry())
    assert set(cfg.grid) == {"beta", "flow_depth"} and len(cfg.seeds) == 3
    assert len(cfg.trials()) == 27 and cfg.heatmap == ("beta", "flow_depth")
    assert cfg.run.out.is_absolute() and cfg.run.cache_dir.is_absolute()


def test_command_line_overrides_the_sweep_file(tmp_path: Path) -> None:
    base = sweeps.load_sweep_file(ROOT / "benchmarks" / "jnf_circles.toml")
    over = {"grid": sweeps.parse_pairs(["beta=2"], "--grid", lists=True), "seeds": "0,7"}
    cfg = sweeps.sweep_config(sweeps.merge_sweep_values(base, over), load_registry())
    assert cfg.grid == {"beta": (2.0,), "flow_depth": (1, 2, 3)}
    assert cfg.seeds == (0, 7)
    assert (
        cfg.run_id({"beta": 2.0, "flow_depth": 1}, 7)
        == "jnf-circles-beta-flows-beta2.0-flow_depth1-s7"
    )


@pytest.mark.parametrize(("raw", "seeds"), [(3, (0, 1, 2)), ("2", (0, 1)), ([4, 9], (4, 9))])
def test_seeds_are_a_count_or_a_list(raw: object, seeds: tuple[int, ...]) -> None:
    values = {"model": "jnf", "dataset": "circles-squares", "seeds": raw}
    assert sweeps.sweep_config(values, load_registry()).seeds == seeds


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"seeds": 0}, "seeds must be >= 1"),
        ({"gpus_per_trial": 1.5}, "gpus_per_trial must be a fraction"),
        ({"device": "cuda"}, "device cuda needs gpus_per_trial > 0"),
        ({"cpus": 2, "address": "auto"}, "cpus sizes a local Ray"),
        ({"heatmap": "beta,seed", "grid": {"beta": [1]}}, "heatmap takes two distinct grid axes"),
        ({"name": "a/b"}, "is not a safe name"),
        ({"protocol": "slow"}, "protocol must be one of \\['full', 'quick'\\], got 'slow'"),
        ({"sampler": "vamp"}, "sampler must be one of"),
        ({"fid": "swav"}, "fid must be one of"),
        ({"fid": "inception", "inception_weights": "/nowhere/w.pth"}, "w.pth"),
        ({"classifier_weights": "/nowhere", "fid": False}, None),
    ],
)
def test_sweep_settings_are_checked(values: dict, message: str | None) -> None:
    values = {"model": "jnf", "dataset": "circles-squares", **values}
    if message is None:  # valid: passed on to every trial's run
        run = sweeps.sweep_config(values, load_registry()).run
        assert run.classifier_weights == Path("/nowhere") and run.fid is None
        return
    with pytest.raises(BenchError, match=message):
        sweeps.sweep_config(values, load_registry())


@pytest.mark.parametrize(
    ("fid", "weights", "kind"),
    [(True, None, "classifier"), ("classifier", None, "classifier"), (False, None, None)],
)
def test_sweep_fid_and_sampler_reach_the_trials_run(fid, weights, kind) -> None:
    values = {"model": "jnf", "dataset": "circles-squares", "fid": fid, "sampler": "gmm"}
    cfg = sweeps.sweep_config(values, load_registry())
    assert cfg.run.fid == kind and cfg.run.sampler == "gmm"
    # The trial's run is rebuilt from the JSON plan: the same settings arrive there.
    plan = sweeps.sweep_definition(cfg)
    trial = sweeps.trial_run_config({"params": {}, "seed": 0}, plan)
    assert trial.fid == kind and trial.sampler == "gmm"


def test_heatmap_marks_failed_cells_and_best_takes_the_mean_over_seeds(tmp_path: Path) -> None:
    def trial(beta: float, depth: int, seed: int, coherence: float | None) -> sweeps.TrialSummary:
        ok = coherence is not None
        return sweeps.TrialSummary(
            run_id=f"t{beta}-{depth}-{seed}",
            params={"beta": beta, "flow_depth": depth},
            seed=seed,
            status="ok" if ok else "failed",
            metrics={"cond_coherence_1": coherence} if ok else {},
        )

    trials = [
        trial(0.5, 1, 0, 0.6),
        trial(0.5, 1, 1, 0.8),  # mean 0.7
        trial(1.0, 1, 0, 0.9),
        trial(1.0, 1, 1, None),  # 0.9 over one seed of two
        trial(0.5, 2, 0, 0.2),
        trial(0.5, 2, 1, 0.4),
        trial(1.0, 2, 0, None),
        trial(1.0, 2, 1, None),  # no finished trial: a grey "failed" cell
    ]
    grid = {"beta": (0.5, 1.0), "flow_depth": (1, 2)}
    path = sweeps.write_heatmap(trials, grid, ("beta", "flow_depth"), tmp_path / "h.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["h.png"]  # no temp file left behind
    best = sweeps.best_configs(trials)["cond_coherence_1"]
    assert best["params"] == {"beta": 1.0, "flow_depth": 1}
    assert best["mean"] == pytest.approx(0.9) and (best["seeds"], best["of"]) == (1, 2)


def test_every_sweep_file_key_is_a_command_line_option() -> None:
    """The keys of a sweep file and the options of `mmvae-bench sweep` are one set."""
    from typer.main import get_command

    from mmvae_bench.cli import app
    from mmvae_bench.sweep import SWEEP_KEYS

    sweep = get_command(app).commands["sweep"]
    # --check (validate and stop) is an action of the command line, not a sweep setting.
    names = {p.name for p in sweep.params} - {"config", "fid_extractor", "set_", "plugin", "check"}
    assert names | {"set", "plugins"} == set(SWEEP_KEYS)


def test_fid_heat_map_and_best_config_prefer_the_lowest_fid(tmp_path: Path) -> None:
    from types import SimpleNamespace

    metrics = {
        "fid": {"classifier": {"mnist": {"unconditional": 12.5, "svhn": 30.0}, "svhn": {}}},
        "joint_coherence": 0.4,
    }
    got = sweeps.main_metrics(SimpleNamespace(metrics=metrics))
    assert got == {"joint_coherence": 0.4, "fid_classifier_mnist": 12.5}
    key = "fid_classifier_mnist"
    assert sweeps.lower_is_better(key) and not sweeps.lower_is_better("joint_coherence")

    def trial(beta: float, fid: float, seed: int) -> sweeps.TrialSummary:
        return sweeps.TrialSummary(
            run_id=f"t{beta}-{seed}",
            params={"beta": beta, "flow_depth": 1},
            seed=seed,
            status="ok",
            metrics={key: fid, "cond_coherence_1": 0.9 if beta == 0.5 else 0.1},
        )

    trials = [trial(0.5, 40.0, 0), trial(0.5, 20.0, 1), trial(1.0, 25.0, 0), trial(1.0, 27.0, 1)]
    best = sweeps.best_configs(trials)
    assert best[key]["params"]["beta"] == 1.0 and best[key]["mean"] == pytest.approx(26.0)
    assert best["cond_coherence_1"]["params"]["beta"] == 0.5  # highest coherence still wins
    assert sweeps.heatmap_metrics(trials) == ["cond_coherence_1", key]
    grid = {"beta": (0.5, 1.0), "flow_depth": (1,)}
    path = sweeps.write_heatmap(
        trials, grid, ("beta", "flow_depth"), tmp_path / "f.png", metric=key
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
