"""Experiment tracking: runs, evaluations and sweeps read back from MLflow and TensorBoard.

Values are read back through the trackers' own readers (``MlflowClient`` on the store or a
real ``mlflow server``, TensorBoard's ``EventAccumulator``) and compared with the run record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmvae_bench import sweep as sweeps
from mmvae_bench.cli import app
from mmvae_bench.errors import BenchError
from mmvae_bench.plugins import load_registry
from mmvae_bench.results import SCHEMA_VERSION, RunRecord, now
from mmvae_bench.tracking import (
    INSTALL_HINT,
    MLFLOW_ARTIFACTS,
    MLFLOW_DB,
    TAG_KIND,
    TAG_RUN_ID,
    RunTracking,
    SweepTracking,
    TrackingConfig,
    experiment_name,
    flatten_metrics,
)
from tests.tiny import TINY_JNF

runner = CliRunner()
# Two epochs per stage, so each loss has a history of two points.
TINY2 = ["--dataset", "circles-squares", "--epochs", "2", "--quick", *TINY_JNF]
EXPERIMENT = experiment_name("circles-squares")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Coherence classifiers are trained once for the module's runs.
    return tmp_path_factory.mktemp("cache")


def _run(out: Path, cache: Path, run_id: str, *extra: str) -> RunRecord:
    args = ["run", "jnf", *TINY2, "--out", str(out), "--cache-dir", str(cache)]
    res = runner.invoke(app, [*args, "--run-id", run_id, *extra])
    assert res.exit_code == 0, res.output
    return RunRecord.load(out / run_id)


def _client(uri: str):  # noqa: ANN202  (mlflow's client type, imported lazily)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:  # noqa: ANN001
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def _check_mlflow_run(client, mlrun, record: RunRecord, scratch: Path) -> None:  # noqa: ANN001
    """What a tracked run holds, against its record (artifacts downloaded into ``scratch``)."""
    run_id = mlrun.info.run_id
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == record.run_id
    assert mlrun.data.tags[TAG_RUN_ID] == record.run_id
    params = mlrun.data.params
    assert params["model"] == "jnf" and params["dataset"] == "circles-squares"
    assert params["seed"] == str(record.seed) and params["protocol"] == "quick"
    assert params["config.latent_dim"] == "4" and params["config.flow_hidden"] == "16"
    assert params["epochs.joint"] == params["epochs.unimodal"] == "2"
    assert params["run.tracker"] == "mlflow"
    # Per-epoch stage losses: steps 1, 2; the last is the stage's final loss in the record.
    for stage, s in record.stages.items():
        for part, value in s.loss.items():
            history = client.get_metric_history(run_id, f"train/{stage}/{part}")
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
            assert max(history, key=lambda m: m.step).value == pytest.approx(value, rel=1e-6)
        assert mlrun.data.metrics[f"time/{stage}_s"] == pytest.approx(s.wall_s)
        assert mlrun.data.metrics[f"time/{stage}_samples_per_s"] == pytest.approx(s.samples_per_s)
    assert mlrun.data.metrics["time/train_s"] == pytest.approx(record.timings["train_s"])
    assert mlrun.data.metrics["eval/joint_coherence"] == pytest.approx(
        record.metrics["joint_coherence"]
    )
    by_size = record.metrics["conditional_coherence_by_size"]["1"]["mean"]
    assert mlrun.data.metrics["eval/conditional_coherence_by_size/1/mean"] == pytest.approx(by_size)
    assert _artifacts(client, run_id) == {
        "config.json",
        "figures/samples.png",
        "figures/prior_samples.png",
    }
    scratch.mkdir(parents=True, exist_ok=True)
    config = json.loads(
        Path(client.download_artifacts(run_id, "config.json", str(scratch))).read_text()
    )
    assert config["config"] == record.config and config["epochs"] == record.epochs


# ---------------------------------------------------------------------------------------------
# run and evaluate
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_and_evaluate_tracked_in_the_mlflow_store_under_out(
    tmp_path: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path / "runs"
    record = _run(out, cache_dir, "r1", "--tracker", "mlflow")
    assert record.run["tracker"] == "mlflow"
    # The default store lies inside --out, and nothing of it outside.
    assert sorted(p.name for p in out.iterdir()) == sorted([MLFLOW_ARTIFACTS, MLFLOW_DB, "r1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    client = _client(f"sqlite:///{out / MLFLOW_DB}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    [mlrun] = client.search_runs([exp.experiment_id])
    _check_mlflow_run(client, mlrun, record, tmp_path_factory.mktemp("dl"))
    assert mlrun.data.tags[TAG_KIND] == "run"

    # evaluate: a run of its own (kind evaluate), its metrics at step 1 (the first evaluation).
    res = runner.invoke(app, ["evaluate", str(out / "r1"), "--no-fid", "--tracker", "mlflow"])
    assert res.exit_code == 0, res.output
    evaluated = RunRecord.load(out / "r1")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.{TAG_KIND} = 'evaluate'")
    [ev] = runs
    assert ev.info.run_name == "r1 evaluate" and ev.data.tags[TAG_RUN_ID] == "r1"
    history = client.get_metric_history(ev.info.run_id, "eval/joint_coherence")
    assert [(m.step, m.value) for m in history] == [
        (1, pytest.approx(evaluated.metrics["joint_coherence"]))
    ]
    assert "figures/samples.png" in _artifacts(client, ev.info.run_id)


@pytest.mark.slow
def test_run_tracked_in_tensorboard_event_files(tmp_path: Path, cache_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "runs"
    record = _run(out, cache_dir, "r1", "--tracker", "tensorboard")
    assert record.run["tracker"] == "tensorboard"
    logdir = out / "r1" / "tensorboard"
    assert list(logdir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    for stage, s in record.stages.items():
        for part, value in s.loss.items():
            points = events.Scalars(f"train/{stage}/{part}")
            assert [p.step for p in points] == [1, 2]
            assert points[-1].value == pytest.approx(value, rel=1e-6)
        [t] = events.Scalars(f"time/{stage}_s")
        assert t.value == pytest.approx(s.wall_s, rel=1e-6)
    [jc] = events.Scalars("eval/joint_coherence")
    assert (jc.step, jc.value) == (0, pytest.approx(record.metrics["joint_coherence"]))
    assert set(tags["images"]) == {"figures/samples.png", "figures/prior_samples.png"}
    [img] = events.Images("figures/samples.png")
    assert img.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and img.width > 50
    texts = {t: events.Tensors(t)[0].tensor_proto.string_val[0].decode() for t in tags["tensors"]}
    assert {"run", "params", "config.json", "status"} <= {t.split("/")[0] for t in texts}
    params = next(v for k, v in texts.items() if k.startswith("params"))
    assert "| config.latent_dim | 4 |" in params and "| epochs.joint | 2 |" in params
    assert sorted(p.name for p in out.iterdir()) == ["r1"]  # no MLflow store


# ---------------------------------------------------------------------------------------------
# a sweep: a parent run, one child per trial
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    from mmvae_bench import tune

    with tune.ray_session(cpus=2) as address:
        yield address


def _sweep(tmp_path: Path, cache: Path, name: str, tracker: str) -> dict:
    args = [
        "sweep",
        "jnf",
        *TINY2,
        "--set",
        "batch_size=256",
        "--grid",
        "beta=0.5,1",
        "--name",
        name,
        "--storage",
        str(tmp_path / "sweeps"),
        "--out",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(cache),
        "--tracker",
        tracker,
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "sweeps" / name / "sweep.json").read_text())
    assert [t["status"] for t in summary["trials"]] == ["ok", "ok"], summary["trials"]
    return summary


@pytest.mark.slow
def test_sweep_is_a_parent_mlflow_run_with_a_child_per_trial(
    ray_address: str, tmp_path: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    summary = _sweep(tmp_path, cache_dir, "sw", "mlflow")
    out = tmp_path / "runs"
    client = _client(f"sqlite:///{out / MLFLOW_DB}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    [parent] = client.search_runs([exp.experiment_id], filter_string=f"tags.{TAG_KIND} = 'sweep'")
    assert parent.info.run_name == "sw" and parent.info.status == "FINISHED"
    assert parent.data.params["grid.beta"] == "[0.5, 1.0]" and parent.data.params["trials"] == "2"
    best = summary["best"]["cond_coherence_1"]["mean"]
    assert parent.data.metrics["best/cond_coherence_1/mean"] == pytest.approx(best)
    assert parent.data.metrics["trials_ok"] == 2 and parent.data.metrics["trials_failed"] == 0
    maps = _heatmaps(summary)
    assert len(maps) >= 2  # one-input and joint coherence at least
    assert _artifacts(client, parent.info.run_id) == {*maps, "sweep.json"}
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == sorted(
        t["run_id"] for t in summary["trials"]
    )
    for child in children:
        assert child.data.tags[TAG_KIND] == "trial"
        record = RunRecord.load(out / child.info.run_name)
        _check_mlflow_run(client, child, record, tmp_path_factory.mktemp("dl"))
    # The parent's id is kept with the sweep, for --resume.
    saved = json.loads((tmp_path / "sweeps" / "sw" / "tracking.json").read_text())
    assert saved["parent_run_id"] == parent.info.run_id


def _heatmaps(summary: dict) -> set[str]:
    """The artifact names of every heat map the sweep wrote."""
    paths = [summary["heatmap"], *summary["heatmaps"].values()]
    return {f"figures/{Path(p).name}" for p in paths if p}


@pytest.mark.slow
def test_sweep_tracked_in_tensorboard(ray_address: str, tmp_path: Path, cache_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = _sweep(tmp_path, cache_dir, "tb", "tensorboard")
    sweep_log = EventAccumulator(str(tmp_path / "sweeps" / "tb" / "tensorboard"))
    sweep_log.Reload()
    assert sorted(sweep_log.Tags()["images"]) == sorted(_heatmaps(summary))
    [best] = sweep_log.Scalars("best/cond_coherence_1/mean")
    assert best.value == pytest.approx(summary["best"]["cond_coherence_1"]["mean"])
    for t in summary["trials"]:
        trial_log = EventAccumulator(str(tmp_path / "runs" / t["run_id"] / "tensorboard"))
        trial_log.Reload()
        assert [p.step for p in trial_log.Scalars("train/joint/loss")] == [1, 2]
        assert "eval/joint_coherence" in trial_log.Tags()["scalars"]


# ---------------------------------------------------------------------------------------------
# a real MLflow server on loopback
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the workers end with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow
def test_run_logged_to_a_real_mlflow_server(
    mlflow_server: str, tmp_path: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path / "runs"
    record = _run(out, cache_dir, "r1", "--tracker", "mlflow", "--tracking-uri", mlflow_server)
    # A URI may carry credentials: neither the run options nor the command line record it.
    assert "tracking_uri" not in record.run and record.command is not None
    assert "--tracker" in record.command and mlflow_server not in json.dumps(record.to_json())
    assert sorted(p.name for p in out.iterdir()) == ["r1"]  # the server holds everything
    client = _client(mlflow_server)
    exp = client.get_experiment_by_name(EXPERIMENT)
    [mlrun] = client.search_runs([exp.experiment_id])
    _check_mlflow_run(client, mlrun, record, tmp_path_factory.mktemp("dl"))
    # The artifacts went through the server into its artifact store.
    stored = {p.name for p in (tmp_path / "server-artifacts").rglob("*") if p.is_file()}
    assert {"config.json", "samples.png", "prior_samples.png"} <= stored


# ---------------------------------------------------------------------------------------------
# a failed run, a resumed sweep (no training: a record written by hand)
# ---------------------------------------------------------------------------------------------


def _record(run_dir: Path) -> RunRecord:
    record = RunRecord(
        schema=SCHEMA_VERSION,
        run_id=run_dir.name,
        status="running",
        model="jnf",
        dataset="circles-squares",
        seed=3,
        config={"beta": 1.0},
        run={"tracker": "mlflow"},
        protocol={"name": "quick"},
        environment={},
        created=now(),
        epochs={"joint": 2},
    )
    record.save(run_dir)
    return record


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlflow", "tensorboard"])
def test_a_run_that_raises_is_tracked_as_failed_with_its_error(tmp_path: Path, kind: str) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "r1"
    _record(run_dir)
    with pytest.raises(RuntimeError, match="boom"):
        with RunTracking(TrackingConfig(kind=kind), run_dir) as track:
            track.epoch("joint", 0, {"loss": 2.5})
            raise RuntimeError("boom")
    if kind == "mlflow":
        client = _client(f"sqlite:///{tmp_path / MLFLOW_DB}")
        [mlrun] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
        assert mlrun.info.status == "FAILED"
        assert mlrun.data.tags["mmvae_bench.error"] == "RuntimeError: boom"
        assert mlrun.data.metrics["train/joint/loss"] == 2.5 and mlrun.data.params["seed"] == "3"
    else:
        events = EventAccumulator(str(run_dir / "tensorboard"))
        events.Reload()
        [point] = events.Scalars("train/joint/loss")
        assert (point.step, point.value) == (1, 2.5)
        status = events.Tensors("status/text_summary")[0].tensor_proto.string_val[0].decode()
        assert status == "failed: RuntimeError: boom"


@pytest.mark.slow
def test_a_resumed_sweep_continues_its_parent_run(tmp_path: Path) -> None:
    values = {"model": "jnf", "dataset": "circles-squares", "tracker": "mlflow", "name": "sw"}
    values |= {"out": tmp_path / "runs", "storage": tmp_path / "sweeps"}
    cfg = sweeps.sweep_config(values, load_registry())
    summary = sweeps.SweepSummary(
        name="sw", path=cfg.path, trials=[], best={}, axes=[], heatmap=None, wall_s=1.0
    )
    first = SweepTracking(cfg.tracking, cfg)
    parent = first.start()
    first.failed(KeyboardInterrupt("stopped"))
    resumed = SweepTracking(cfg.tracking, dataclasses.replace(cfg, resume=True))
    assert resumed.start() == parent
    resumed.finished(summary)
    client = _client(f"sqlite:///{tmp_path / 'runs' / MLFLOW_DB}")
    [mlrun] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert mlrun.info.run_id == parent and mlrun.info.status == "FINISHED"
    assert mlrun.data.params["model"] == "jnf" and mlrun.data.metrics["trials_ok"] == 0


# ---------------------------------------------------------------------------------------------
# errors and helpers (fast)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "module"), [("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard")]
)
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_missing_tracker_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str, module: str, command: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    args = [command, "jnf", "--dataset", "circles-squares", "--out", str(tmp_path / "o")]
    res = runner.invoke(app, [*args, "--tracker", kind])
    assert res.exit_code == 2, res.output
    assert f"--tracker {kind} needs" in res.output and INSTALL_HINT in res.output
    assert "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []


def test_evaluate_with_a_missing_package_fails_before_evaluating(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "nothing"), "--tracker", "mlflow"])
    assert res.exit_code == 2 and INSTALL_HINT in res.output, res.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tracker", "wandb"], "--tracker must be one of ['mlflow', 'tensorboard']"),
        (["--tracking-uri", "http://127.0.0.1:5000"], "--tracking-uri needs --tracker mlflow"),
        (
            ["--tracker", "tensorboard", "--tracking-uri", "http://127.0.0.1:5000"],
            "--tracking-uri is an MLflow tracking URI",
        ),
    ],
)
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_bad_tracker_options_exit_2(
    tmp_path: Path, command: str, extra: list[str], message: str
) -> None:
    args = [command, "jnf", "--dataset", "circles-squares", "--out", str(tmp_path / "o")]
    res = runner.invoke(app, [*args, *extra])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert list(tmp_path.iterdir()) == []


def test_the_sweep_file_keys_tracker_and_tracking_uri(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text(
        'model = "jnf"\ndataset = "circles-squares"\ntracker = "mlflow"\n'
        'tracking_uri = "http://127.0.0.1:5000"\n'
    )
    values = sweeps.load_sweep_file(f)
    cfg = sweeps.sweep_config({**values, "out": tmp_path / "o"}, load_registry())
    assert cfg.run.tracker == "mlflow" and cfg.tracking_uri == "http://127.0.0.1:5000"
    assert cfg.tracking is not None and cfg.tracking.uri == "http://127.0.0.1:5000"
    assert sweeps.sweep_definition(cfg)["run"]["tracker"] == "mlflow"
    assert "tracking_uri" not in json.dumps(sweeps.sweep_definition(cfg))  # not recorded
    with pytest.raises(BenchError, match="--tracking-uri needs --tracker mlflow"):
        sweeps.sweep_config({"model": "jnf", "tracking_uri": "x"}, load_registry())


def test_flatten_metrics_keeps_finite_numbers_with_safe_names() -> None:
    metrics = {
        "joint_coherence": 0.5,
        "conditional_coherence": {"circle+square": {"m0": 0.25, "mean": 0.25}},
        "joint_label_histogram": {"circle": [3, 1]},
        "hmc_acceptance": {"a+b": float("nan")},
        "flag": True,
        "test_samples": 500,
    }
    assert flatten_metrics(metrics, "eval") == {
        "eval/joint_coherence": 0.5,
        "eval/conditional_coherence/circle_square/m0": 0.25,
        "eval/conditional_coherence/circle_square/mean": 0.25,
        "eval/test_samples": 500.0,
    }
