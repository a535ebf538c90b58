"""The ``mmvae-bench`` command line: parses options, builds configs, calls the library.

User errors (:class:`BenchError`) print ``error: ...`` to stderr and exit with code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.logging import RichHandler
from rich.text import Text

from mmvae_bench.config import (
    DEFAULT_CACHE_DIR,
    Device,
    HMCName,
    LRSchedule,
    MemoryFormat,
    Precision,
    ProtocolName,
    RunConfig,
    SamplerKind,
    coerce_value,
    fid_extractor,
    parse_assignments,
)
from mmvae_bench.errors import BenchError
from mmvae_bench.plugins import Registry, load_registry
from mmvae_bench.present import (
    classifiers_table,
    console,
    datasets_table,
    err_console,
    leaderboard_build_report,
    leaderboard_pages,
    leaderboard_tables,
    models_table,
    print_error,
    print_record,
    print_sweep,
    print_wall_time,
    problems_table,
    say,
)

app = typer.Typer(
    name="mmvae-bench",
    help="Train, evaluate and rank multimodal VAEs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
classifiers_app = typer.Typer(help="Coherence classifiers.", no_args_is_help=True)
app.add_typer(classifiers_app, name="classifiers")

F = TypeVar("F", bound=Callable[..., Any])

# One torch thread per core pair by default: measured on a 2-core machine, a process with 2
# threads slowed ~100x while another process held a core, and 1 thread did not. Half the
# cores keeps a laptop responsive and leaves room for a second job; --threads overrides.
DEFAULT_THREADS = max(1, min(8, (os.cpu_count() or 2) // 2))


def parse_threads(value: str) -> int | Literal["auto"]:
    """``--threads``: an integer >= 1 or ``auto``."""
    if value == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        raise BenchError(f"--threads must be >= 1 or 'auto', got {value!r}") from None
    if n < 1:
        raise BenchError(f"--threads must be >= 1 or 'auto', got {value!r}")
    return n


PluginOpt = Annotated[
    list[Path] | None,
    typer.Option("--plugin", help="Load a model plugin from a Python file (repeatable)."),
]
# Options several commands share, declared once.
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or auto.")]
ThreadsOpt = Annotated[int, typer.Option(help="torch threads.")]
MEMORY_FORMAT_HELP = (
    "The nets' memory format while training: contiguous, channels-last, or auto (each stage "
    "times both at its start and keeps the faster; the choice changes a run's last digits)."
)
PublishedDataOpt = Annotated[Path | None, typer.Option(help="Where published datasets live.")]
CacheDirOpt = Annotated[Path, typer.Option(help="Dataset/classifier cache.")]
DEFAULT_CACHE = DEFAULT_CACHE_DIR
ClassifierWeightsOpt = Annotated[
    Path | None,
    typer.Option(
        help="Folder of coherence-classifier weights <modality>.pt (published or your own), "
        "used instead of the cached classifiers."
    ),
]
TrackerOpt = Annotated[
    str | None,
    typer.Option(
        help="Track the run in mlflow or tensorboard (the tracking extra: "
        "pip install 'mmvae-bench[tracking]')."
    ),
]
TrackingUriOpt = Annotated[
    str | None,
    typer.Option(
        help="MLflow tracking URI (e.g. http://127.0.0.1:5000); default: a SQLite store "
        "<out>/mlflow.db with artifacts in <out>/mlartifacts."
    ),
]
HMC_HELP = (
    "Sampler of the subset posteriors (JNF's HMC): paper (100x10 at step 0.01) or adaptive "
    "(dual-averaged step, Gaussian-product start; BENCHMARKS.md, HMC samplers)."
)
SAMPLER_HELP = (
    "Where joint coherence and unconditional FID draw z from: prior, or gmm/flow fitted to the "
    "training set's joint embeddings after training (saved as <run>/sampler.pt)."
)


def user_errors(fn: F) -> F:
    """Map BenchError to ``error: ...`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BenchError as e:
            print_error(str(e))
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )


def _registry(plugins: list[Path] | None) -> Registry:
    return load_registry(tuple(plugins or ()))


def parse_epochs(items: list[str] | None) -> dict[str, int]:
    """``--epochs 5`` (every stage) or ``--epochs joint=5 --epochs unimodal=2``."""
    out: dict[str, int] = {}
    for item in items or []:
        for part in item.split(","):
            stage, sep, raw = part.partition("=")
            key, value = (stage.strip(), raw) if sep else ("*", stage)
            if not key:
                raise BenchError(f"--epochs expects N or STAGE=N, got {part!r}")
            n = coerce_value(f"--epochs {key}", value.strip(), int)
            if n < 0:
                raise BenchError(f"--epochs {key} must be >= 0, got {n}")
            out[key] = n
    return out


FIDExtractorOpt = Annotated[
    str | None,
    typer.Option(
        help="FID features: classifier (offline, the coherence classifier's penultimate "
        "layer) or inception (needs its weights). Default: inception when "
        "--inception-weights is given, else classifier."
    ),
]
InceptionWeightsOpt = Annotated[
    Path | None,
    typer.Option(help="Inception v3 weights (weights-inception-2015-12-05-6726825d.pth)."),
]


# Options left out of the recorded command line: a tracking URI may carry credentials.
_UNRECORDED = frozenset({"tracking_uri"})


def command_line(ctx: typer.Context) -> list[str]:
    """The running command as a canonical command line: its arguments, then every option
    given a value other than its default (what the record stores to reproduce the run)."""
    parts = ["mmvae-bench", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        if param.name in _UNRECORDED:
            continue
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":
            parts += [str(v) for v in (value if isinstance(value, list | tuple) else [value])]
            continue
        if value == param.default or value is None or value == [] or value == ():
            continue
        if getattr(param, "is_flag", False):
            flag = param.opts[0] if value else (param.secondary_opts or [None])[0]
            parts += [flag] if flag else []
            continue
        for v in value if param.multiple else [value]:
            parts += [param.opts[0], str(v)]
    return parts


def protocol_choice(quick: bool, protocol: str | None) -> str:
    """``--quick`` or ``--protocol NAME`` (default full); both naming different ones is an error."""
    if quick and protocol not in (None, "quick"):
        raise BenchError(f"--quick conflicts with --protocol {protocol}; give one of them")
    name = "quick" if quick else (protocol or "full")
    return coerce_value("--protocol", name, ProtocolName)


def fid_choice(fid: bool, extractor: str | None, inception_weights: Path | None) -> str | None:
    """The FID extractor ``--fid/--fid-extractor/--inception-weights`` ask for (None: no FID)."""
    if not fid:
        if extractor or inception_weights:
            raise BenchError("--fid-extractor/--inception-weights need --fid")
        return None
    return fid_extractor(extractor or True, inception_weights, what="--fid-extractor")


@app.command()
@user_errors
def run(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name (see `mmvae-bench models`).")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "polymnist-lite",
    seed: Annotated[int, typer.Option(help="Seed of init, batching and sampling.")] = 0,
    epochs: Annotated[
        list[str] | None,
        typer.Option(help="Epochs for every stage (N) or per stage (STAGE=N); repeatable."),
    ] = None,
    device: DeviceOpt = "auto",
    threads: Annotated[
        str,
        typer.Option(
            help="torch threads, or auto: training and the evaluation's HMC keep the faster "
            "of 1 thread and every core, re-measured every 30 s (for a machine whose load "
            "changes)."
        ),
    ] = str(DEFAULT_THREADS),
    out: Annotated[Path, typer.Option(help="Folder for run records.")] = Path("runs"),
    quick: Annotated[bool, typer.Option(help="Use the quick evaluation protocol.")] = False,
    protocol: Annotated[
        str | None, typer.Option(help="Evaluation protocol: full or quick (default: full).")
    ] = None,
    hmc: Annotated[str | None, typer.Option(help=HMC_HELP + " Default: the protocol's.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Model config field, KEY=VALUE (repeatable)."),
    ] = None,
    data_dir: PublishedDataOpt = None,
    cache_dir: CacheDirOpt = DEFAULT_CACHE,
    precision: Annotated[str, typer.Option(help="Mixed precision: no, bf16, fp16.")] = "no",
    memory_format: Annotated[str, typer.Option(help=MEMORY_FORMAT_HELP)] = "contiguous",
    compile_: Annotated[
        bool, typer.Option("--compile", help="torch.compile the nets and HMC's flow kernels.")
    ] = False,
    evaluate: Annotated[bool, typer.Option(help="Evaluate after training.")] = True,
    classifier_weights: ClassifierWeightsOpt = None,
    sampler: Annotated[str, typer.Option(help=SAMPLER_HELP)] = "prior",
    fid: Annotated[
        bool,
        typer.Option(help="Also compute FID per image modality (evaluate --fid adds it later)."),
    ] = False,
    fid_extractor: FIDExtractorOpt = None,
    inception_weights: InceptionWeightsOpt = None,
    run_id: Annotated[
        str | None, typer.Option(help="Fixed run id (letters, digits, . _ + = -).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the run --run-id if it exists (its files are deleted).")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue the run --run-id: from its last finished stage, or only its "
            "evaluation when training had finished (same settings required)."
        ),
    ] = False,
    plugin: PluginOpt = None,
    tracker: TrackerOpt = None,
    tracking_uri: TrackingUriOpt = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="paper: the published runs' architecture and training (PolyMNIST; --set "
            "overrides a field)."
        ),
    ] = None,
    validation: Annotated[
        float | None,
        typer.Option(help="Fraction of the training split held out (default: preset's, or 0)."),
    ] = None,
    lr_patience: Annotated[
        int | None,
        typer.Option(help="ReduceLROnPlateau patience in epochs (default: preset's, or none)."),
    ] = None,
    keep_best: Annotated[
        bool | None,
        typer.Option(
            help="End each stage with its best-validation parameters (default: preset's)."
        ),
    ] = None,
    lr_schedule: Annotated[
        str | None,
        typer.Option(
            help="cosine: each stage's learning rate decays to 0 along a half cosine over its "
            "steps (default: constant, or the preset's plateau schedule)."
        ),
    ] = None,
) -> None:
    """Train a model, evaluate it, and write runs/<run-id>/results.json."""
    from mmvae_bench.runner import default_run_id
    from mmvae_bench.runner import run as run_model
    from mmvae_bench.tracking import RunTracking, tracking_config

    started = time.perf_counter()
    if overwrite and resume:
        raise BenchError("--overwrite and --resume exclude each other")
    if resume and run_id is None:
        raise BenchError("--resume needs the --run-id of the run to continue")
    registry = _registry(plugin)
    entry = registry.model(model)
    registry.dataset(dataset)
    overrides = parse_assignments(set_ or [], entry.config)
    tracking = tracking_config(tracker, tracking_uri)
    cfg = RunConfig(
        model=model,
        dataset=dataset,
        seed=seed,
        device=coerce_value("--device", device, Device),
        threads=parse_threads(threads),
        out=out,
        protocol=protocol_choice(quick, protocol),
        hmc=None if hmc is None else coerce_value("--hmc", hmc, HMCName),
        data_dir=data_dir,
        cache_dir=cache_dir,
        epochs=parse_epochs(epochs),
        overrides=overrides,
        precision=coerce_value("--precision", precision, Precision),
        memory_format=coerce_value("--memory-format", memory_format, MemoryFormat),
        compile=compile_,
        evaluate=evaluate,
        classifier_weights=classifier_weights,
        sampler=coerce_value("--sampler", sampler, SamplerKind),
        fid=fid_choice(fid, fid_extractor, inception_weights),
        inception_weights=inception_weights,
        run_id=run_id,
        plugins=tuple(plugin or ()),
        tracker=tracking.kind if tracking else None,
        preset=preset,
        validation=validation,
        lr_patience=lr_patience,
        keep_best=keep_best,
        lr_schedule=None
        if lr_schedule is None
        else coerce_value("--lr-schedule", lr_schedule, LRSchedule),
    )
    if tracking is not None and cfg.run_id is None:
        # The tracked run is named by the run id: fix it before the run starts.
        cfg = dataclasses.replace(cfg, run_id=default_run_id(cfg))
    with RunTracking(tracking, Path(out) / (cfg.run_id or "-")) as track:
        record = run_model(
            cfg,
            registry,
            mode="overwrite" if overwrite else "resume" if resume else "new",
            progress=True,
            status=say,
            on_epoch=track.epoch,
            command=command_line(ctx),
        )
        track.finished(record)
    print_record(record, Path(out) / record.run_id)
    print_wall_time(time.perf_counter() - started, record)


@app.command()
@user_errors
def models(plugin: PluginOpt = None) -> None:
    """List the model plugins: stages, source (distribution or file), and broken ones."""
    console.print(models_table(_registry(plugin)))


@app.command()
@user_errors
def datasets(plugin: PluginOpt = None) -> None:
    """List the datasets (built-in ones need no download)."""
    console.print(datasets_table(_registry(plugin)))


@classifiers_app.command("train")
@user_errors
def classifiers_train(
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "polymnist-lite",
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs per classifier (default: the dataset's).")
    ] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = DEFAULT_THREADS,
    data_dir: PublishedDataOpt = None,
    cache_dir: CacheDirOpt = DEFAULT_CACHE,
) -> None:
    """Train and cache the coherence classifiers of a dataset, with their test accuracy."""
    from mmvae_bench.eval.classifiers import classifier_dir, train_classifiers
    from mmvae_bench.runner import load_dataset, resolve_device
    from mmvae_bench.threads import set_torch_threads

    set_torch_threads(threads)
    reg = _registry(None)
    ds = load_dataset(reg, dataset, data_dir=data_dir, cache_dir=cache_dir)
    result = train_classifiers(ds, cache_dir, epochs=epochs, device=resolve_device(device))
    console.print(classifiers_table(dataset, result, ds.classifier_floor))
    console.print(Text(f"cached in {classifier_dir(ds, cache_dir, epochs)}"))


# == data: fetch and check published datasets (issue 4) =====================================
data_app = typer.Typer(help="Published datasets: download and verify.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DataDirOpt = Annotated[
    Path | None, typer.Option(help="Folder that holds (or receives) the dataset's files.")
]


def _data_entry(name: str, data_dir: Path | None, action: str) -> tuple[Any, Path | None]:
    """The dataset entry and its data dir; built-ins need neither a download nor a folder."""
    entry = _registry(None).dataset(name)
    if entry.builtin:
        return entry, None
    if data_dir is None:
        raise BenchError(f"`mmvae-bench data {action} {name}` needs --data-dir DIR")
    return entry, data_dir.expanduser()


@data_app.command("fetch")
@user_errors
def data_fetch(
    name: Annotated[str, typer.Argument(help="Dataset name (see `mmvae-bench datasets`).")],
    data_dir: DataDirOpt = None,
) -> None:
    """Download a published dataset into --data-dir, with checksums; resumes partial files."""
    entry, folder = _data_entry(name, data_dir, "fetch")
    if folder is None:
        console.print(Text(f"{name} is built in: it needs no download"))
        return
    if entry.fetch is None:
        raise BenchError(f"dataset '{name}' provides no download; see `mmvae-bench datasets`")
    entry.fetch(folder)
    console.print(
        f"{name} is in {folder}; verify with `mmvae-bench data check {name} --data-dir {folder}`",
        markup=False,
    )


@data_app.command("check")
@user_errors
def data_check(
    name: Annotated[str, typer.Argument(help="Dataset name (see `mmvae-bench datasets`).")],
    data_dir: DataDirOpt = None,
) -> None:
    """Verify a published dataset's files in --data-dir (presence, checksums, shapes, counts).

    Exits 2 when any problem is found, 0 when the files are sound.
    """
    entry, folder = _data_entry(name, data_dir, "check")
    if folder is None:
        console.print(Text(f"{name} is built in: nothing to check"))
        return
    if entry.check is None:
        raise BenchError(f"dataset '{name}' provides no check")
    problems = entry.check(folder)
    if not problems:
        console.print(Text(f"{name} in {folder}: no problems found"))
        return
    console.print(problems_table(f"{name} in {folder}: {len(problems)} problem(s)", problems))
    raise BenchError(f"{len(problems)} problem(s) with {name} in {folder}")


# == end data ================================================================================


# == evaluate: re-evaluate a saved run (issue 5) ==============================================
@app.command()
@user_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (results.json, checkpoint.pt).")],
    protocol: Annotated[
        str | None, typer.Option(help="Evaluation protocol: full or quick (default: the run's).")
    ] = None,
    quick: Annotated[bool, typer.Option(help="Use the quick evaluation protocol.")] = False,
    hmc: Annotated[str | None, typer.Option(help=HMC_HELP + " Default: the run's.")] = None,
    fid: Annotated[bool, typer.Option(help="Compute FID per image modality.")] = True,
    fid_extractor: FIDExtractorOpt = None,
    inception_weights: InceptionWeightsOpt = None,
    classifier_weights: ClassifierWeightsOpt = None,
    sampler: Annotated[str | None, typer.Option(help=SAMPLER_HELP + " Default: the run's.")] = None,
    refit_sampler: Annotated[
        bool, typer.Option(help="Fit the latent sampler again instead of loading sampler.pt.")
    ] = False,
    device: DeviceOpt = "auto",
    threads: Annotated[
        str,
        typer.Option(
            help="torch threads, or auto: HMC keeps the faster of 1 thread and every core, "
            "re-measured every 30 s."
        ),
    ] = str(DEFAULT_THREADS),
    plugin: PluginOpt = None,
    tracker: TrackerOpt = None,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Re-evaluate a saved run from its checkpoint and update its record atomically.

    The record's metrics are replaced, its protocol updated and an entry appended to its
    ``evaluations`` history; the sample grids (samples.png, prior_samples.png) are redrawn.
    The latent sampler is loaded from sampler.pt when it is of the requested kind, else
    fitted (seeded by the run's seed) and saved there; the record's ``sampler`` entry says
    which one produced the metrics.
    """
    from mmvae_bench.runner import evaluate_run, fid_settings, resolve_device
    from mmvae_bench.threads import set_torch_threads, start_threads
    from mmvae_bench.tracking import RunTracking, tracking_config

    n_threads = parse_threads(threads)
    set_torch_threads(start_threads(n_threads))
    if sampler is not None:
        sampler = coerce_value("--sampler", sampler, SamplerKind)
    settings = fid_settings(fid_choice(fid, fid_extractor, inception_weights), inception_weights)
    tracking = tracking_config(tracker, tracking_uri)
    with RunTracking(tracking, Path(run_dir), kind="evaluate") as track:
        record = evaluate_run(
            run_dir,
            _registry(plugin),
            protocol=protocol_choice(quick, protocol) if quick or protocol else None,
            fid=settings,
            classifier_weights=classifier_weights,
            sampler=sampler,
            refit_sampler=refit_sampler,
            hmc=None if hmc is None else coerce_value("--hmc", hmc, HMCName),
            device=resolve_device(device),
            threads=n_threads,
            status=say,
        )
        track.finished(record)
    print_record(record, Path(run_dir))


# == end evaluate ============================================================================


# == leaderboard: build and show (issue 5) ===================================================
leaderboard_app = typer.Typer(help="Leaderboards from run records.", no_args_is_help=True)
app.add_typer(leaderboard_app, name="leaderboard")


@leaderboard_app.command("build")
@user_errors
def leaderboard_build(
    runs: Annotated[Path, typer.Option(help="Folder searched for run records.")] = Path("runs"),
    out: Annotated[Path, typer.Option(help="Where leaderboards are written.")] = Path(
        "leaderboards"
    ),
    figures: Annotated[bool, typer.Option(help="Write figures next to the tables.")] = True,
    references: Annotated[
        Path | None,
        typer.Option(
            help="Published figures to show beside the rows (JSON); default: "
            "<out>/reference/published.json when it exists."
        ),
    ] = None,
) -> None:
    """Aggregate run records into <out>/<dataset>.json and .md, with figures."""
    from mmvae_bench.leaderboard import build_leaderboards

    report = build_leaderboards(
        runs,
        out,
        command=f"mmvae-bench leaderboard build --runs {runs} --out {out}"
        + (f" --references {references}" if references else ""),
        figures=figures,
        references=references,
    )
    leaderboard_build_report(report)


@leaderboard_app.command("html")
@user_errors
def leaderboard_html(
    out: Annotated[Path, typer.Option(help="The leaderboards folder (its *.json).")] = Path(
        "leaderboards"
    ),
) -> None:
    """Rewrite every leaderboard's HTML page and index.html from the JSONs alone (no records)."""
    from mmvae_bench.leaderboard import write_html_pages

    leaderboard_pages(write_html_pages(out))


@leaderboard_app.command("show")
@user_errors
def leaderboard_show(
    dataset: Annotated[str, typer.Argument(help="Dataset name.")],
    out: Annotated[Path, typer.Option(help="Where leaderboards were written.")] = Path(
        "leaderboards"
    ),
) -> None:
    """Print a built leaderboard as tables (one per protocol)."""
    from mmvae_bench.leaderboard import load_leaderboard, table

    leaderboard_tables(dataset, load_leaderboard(out, dataset), table, out)


# == end leaderboard =========================================================================


# == sweep: Ray Tune grid sweeps (issue 6) ===================================================
@app.command()
@user_errors
def sweep(
    model: Annotated[
        str | None, typer.Argument(help="Model name (or `model` in the --config file).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Sweep file (TOML; keys as these options with _, grid and set as tables, "
            "e.g. benchmarks/jnf_mhd.toml). Options given here override it."
        ),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name.")] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            help="Grid axis FIELD=V1,V2,... over any model config field (repeatable); "
            "alias: flows = flow_depth."
        ),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="N (seeds 0..N-1) or a list S1,S2,... (default: 1)")
    ] = None,
    cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all).")] = None,
    cpus_per_trial: Annotated[
        float | None, typer.Option(help="CPUs per trial (default: 1).")
    ] = None,
    gpus_per_trial: Annotated[
        float | None,
        typer.Option(help="GPUs per trial; a fraction shares a GPU (default: 0)."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="Join a Ray cluster (auto or HOST:PORT, started with `ray start`); "
            "--out, --storage and data must then be on a shared filesystem."
        ),
    ] = None,
    storage: Annotated[
        Path | None, typer.Option(help="Folder of sweeps (Tune experiments) (default: sweeps).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Sweep name (default: MODEL-DATASET-TIME).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the interrupted sweep --name (same options).")
    ] = False,
    max_concurrent: Annotated[int | None, typer.Option(help="At most N trials at once.")] = None,
    heatmap: Annotated[
        str | None, typer.Option(help="Heat map axes X,Y (default: the first two grid axes).")
    ] = None,
    epochs: Annotated[
        list[str] | None,
        typer.Option(help="Epochs for every stage (N) or per stage (STAGE=N); repeatable."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Fixed model config field, KEY=VALUE (repeatable)."),
    ] = None,
    quick: Annotated[bool, typer.Option(help="Use the quick evaluation protocol.")] = False,
    protocol: Annotated[
        str | None, typer.Option(help="Evaluation protocol: full or quick (default: full).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch threads per trial (default: 1).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for run records (default: runs).")
    ] = None,
    data_dir: PublishedDataOpt = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Dataset/classifier cache (default: .cache/mmvae-bench)."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto (default: auto).")] = None,
    precision: Annotated[str | None, typer.Option(help="Mixed precision: no, bf16, fp16.")] = None,
    memory_format: Annotated[str | None, typer.Option(help=MEMORY_FORMAT_HELP)] = None,
    evaluate: Annotated[
        bool | None, typer.Option("--evaluate/--no-evaluate", help="Evaluate each trial.")
    ] = None,
    sampler: Annotated[str | None, typer.Option(help=SAMPLER_HELP + " Default: prior.")] = None,
    fid: Annotated[
        bool | None, typer.Option("--fid/--no-fid", help="FID in each trial's evaluation.")
    ] = None,
    fid_extractor: FIDExtractorOpt = None,
    inception_weights: InceptionWeightsOpt = None,
    classifier_weights: Annotated[
        Path | None,
        typer.Option(help="Folder of coherence-classifier weights <modality>.pt for every trial."),
    ] = None,
    plugin: PluginOpt = None,
    tracker: Annotated[
        str | None,
        typer.Option(
            help="Track the sweep (a parent run) and each trial in mlflow or tensorboard."
        ),
    ] = None,
    tracking_uri: TrackingUriOpt = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Only check the sweep (options, data, every grid point's model); no Ray.",
        ),
    ] = False,
) -> None:
    """Sweep a grid of configs x seeds on Ray Tune; each trial is an ordinary run."""
    from mmvae_bench import sweep as sweeps

    # The command line in sweep-file keys (sweep.SWEEP_KEYS): parameters named as the keys go
    # across as given; the few that need parsing or another name are converted here.
    params = {k: v for k, v in locals().items() if k in sweeps.SWEEP_KEYS}
    given = {
        **params,
        "grid": sweeps.parse_pairs(grid, "--grid", lists=True) if grid else None,
        "set": sweeps.parse_pairs(set_, "--set") if set_ else None,
        "epochs": parse_epochs(epochs) if epochs else None,
        "quick": True if quick else None,
        "resume": True if resume else None,
        "fid": _sweep_fid(fid, fid_extractor, inception_weights),
        "plugins": plugin or None,
    }
    base = sweeps.load_sweep_file(config) if config else {}
    values = sweeps.merge_sweep_values(base, {k: v for k, v in given.items() if v is not None})
    registry = _registry([Path(p) for p in values.get("plugins", [])])
    cfg = sweeps.sweep_config(values, registry)  # every check before Ray is imported
    sweeps.check_sweep_inputs(cfg, registry)
    if check:
        say(f"sweep {cfg.name}: {len(cfg.trials())} trials checked (--check: not run)")
        return
    from mmvae_bench.tune import run_sweep

    summary = run_sweep(cfg, status=say)
    print_sweep(summary)


def _sweep_fid(fid: bool | None, extractor: str | None, weights: Path | None) -> str | bool | None:
    """--fid/--no-fid for a sweep: None leaves the sweep file's ``fid`` alone."""
    if fid is False:
        return False  # overrides a file's fid
    if fid is None and not (extractor or weights):
        return None
    return fid_choice(bool(fid), extractor, weights)


# == end sweep ===============================================================================


# == bench: performance suite (issue 7) ======================================================
@app.command()
@user_errors
def bench(
    device: DeviceOpt = "auto",
    out: Annotated[
        Path | None,
        typer.Option(help="JSON record (default benchmarks/perf/<mode>-<device>.json)."),
    ] = None,
    quick: Annotated[bool, typer.Option(help="Tiny sizes: a smoke run of about a minute.")] = False,
    threads: Annotated[
        int, typer.Option(help="torch threads (1: timings stay sane beside other jobs).")
    ] = 1,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models to train (default: all).")
    ] = None,
    archs: Annotated[
        str, typer.Option(help="Comma-separated architectures for training.")
    ] = "polymnist,mhd,mnist-svhn",
    sections: Annotated[
        str, typer.Option(help="Comma-separated sections: training, hmc, evaluation.")
    ] = "training,hmc,evaluation",
    compile_: Annotated[
        bool,
        typer.Option("--compile", help="Also time HMC and evaluation with compiled flow kernels."),
    ] = False,
    precision: Annotated[str, typer.Option(help="Training autocast: no, bf16, fp16.")] = "no",
    hmc_model: Annotated[str, typer.Option(help="Model whose subset posteriors use HMC.")] = "jnf",
    preset: Annotated[
        str | None,
        typer.Option(
            help="paper: also time our JNF and MultiVae's side by side at the preset's sizes."
        ),
    ] = None,
    plugin: PluginOpt = None,
) -> None:
    """Performance suite: training samples/s per stage, HMC samples/s, protocol time, memory."""
    from mmvae_bench.perf import BenchSettings, run_bench, tables
    from mmvae_bench.runner import resolve_device

    def names(raw: str | None) -> tuple[str, ...] | None:
        return tuple(n.strip() for n in raw.split(",") if n.strip()) if raw else None

    registry = _registry(plugin)
    dev = resolve_device(coerce_value("--device", device, Device))
    settings = BenchSettings(
        device=str(dev),
        quick=quick,
        threads=threads,
        models=names(models),
        archs=names(archs) or (),
        sections=names(sections) or (),
        compile=compile_,
        precision=coerce_value("--precision", precision, Precision),
        hmc_model=hmc_model,
        preset=preset,
    )
    path = out or Path("benchmarks/perf") / f"{'quick' if quick else 'full'}-{dev.type}.json"
    record = run_bench(settings, registry, out=path, progress=say)
    for t in tables(record):
        console.print(t)
    console.print(Text(f"record: {path} ({record['wall_s']:.0f} s)"))


# == end bench ===============================================================================


# == import: models trained elsewhere (issue 12) ==============================================
import_app = typer.Typer(help="Models trained by other libraries, as run folders.")
app.add_typer(import_app, name="import")


@import_app.command("multivae")
@user_errors
def import_multivae(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="A MultiVae saved folder (model.save(DIR)).")],
    dataset: Annotated[str, typer.Option(help="The dataset it was trained on.")] = "polymnist",
    data_dir: PublishedDataOpt = None,
    cache_dir: CacheDirOpt = DEFAULT_CACHE,
    out: Annotated[Path, typer.Option(help="Folder for run records.")] = Path("runs"),
    run_id: Annotated[str | None, typer.Option(help="Run id (default: generated).")] = None,
    plugin: PluginOpt = None,
) -> None:
    """Import a MultiVae JNF, MVAE, MMVAE or MoPoE as a trained run (weights converted)."""
    from mmvae_bench.interop.multivae import import_folder

    registry = _registry(plugin)
    registry.dataset(dataset)
    record = import_folder(
        source,
        registry,
        dataset=dataset,
        data_dir=data_dir,
        cache_dir=cache_dir,
        out=out,
        run_id=run_id,
        command=command_line(ctx),
    )
    console.print(
        Text(
            f"imported {record.imported.model_class if record.imported else '?'} as "
            f"{record.model}: {Path(out) / record.run_id} (evaluate it with `mmvae-bench "
            f"evaluate {Path(out) / record.run_id}`)"
        )
    )


# == end import ==============================================================================


# == new-model =================================================================================
@app.command("new-model")
@user_errors
def new_model(
    name: Annotated[str, typer.Argument(help="Registry name of the model, lower-kebab: my-vae.")],
    directory: Annotated[
        Path, typer.Option("--dir", help="Folder to create the package folder NAME in.")
    ] = Path("."),
) -> None:
    """Write an out-of-tree model plugin package NAME that installs and passes the kit."""
    from mmvae_bench.scaffold import new_model as scaffold_new_model

    made = scaffold_new_model(name, directory)
    console.print(Text(f"wrote {made.path}: " + ", ".join(made.files)), soft_wrap=True)
    steps = "\n".join(f"  {step}" for step in made.next_steps)
    console.print(Text(f"next:\n{steps}"), soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    app()
