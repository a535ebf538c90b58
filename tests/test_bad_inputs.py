"""A corpus of bad inputs to every command (issue 11 item 10): each one a user error.

Every case runs the command line in-process and asserts the error contract: exit code 2,
``error: <message>`` on stderr, no traceback, a message naming the actual problem (a substring
per case), and nothing written, changed or deleted outside the command's writable folder
(``--out``, or the run folder for ``evaluate``): a sibling ``victim/`` folder, the case's
inputs and its working directory are snapshotted (names, types, sizes, mtimes, sha256) before
and after, so nothing may appear next to ``--out`` either.

Set-up that costs is shared: one tiny trained run (and a second one, whose checkpoint is
"another run's"), trained once per module and copied into each case that needs it. No case
trains more than one tiny epoch; most fail before any training. Sweep cases must fail in
``sweep.py`` (``sweep_config``, ``check_sweep_inputs``), before Ray: ``mmvae_bench.tune`` is
replaced by a module whose ``run_sweep`` fails the case.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import stat
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from mmvae_bench import present
from mmvae_bench.cli import app
from tests.data.fixtures import write_html_page
from tests.test_leaderboard import record as ok_record
from tests.tiny import TINY_JNF, TINY_NETS, TINY_RUN

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


# -- the case's world --------------------------------------------------------------------------
@dataclass
class Env:
    """One case's folder: ``out`` (writable), ``victim`` and ``inp`` (read-only), ``cwd``."""

    root: Path
    trained: Path  # the module's trained run (never written; copied by cases)
    other: Path  # a second trained run of the same config
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def victim(self) -> Path:
        return self.root / "victim"

    @property
    def inp(self) -> Path:
        return self.root / "in"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def run(self) -> Path:
        return self.out / "r"


Setup = Callable[[Env], Any]
Text = str | Callable[[Env], str]


@dataclass(frozen=True)
class Case:
    """A bad command line and what its error must say.

    Attributes:
        id: the case's name.
        args: the command line (``Env`` -> arguments).
        message: a substring of the error (``where="error"``: the ``error:`` line on stderr;
            ``"output"``: anywhere in the output, for commands that list problems first).
        setup: writes the case's inputs before the snapshot.
        writable: where the command may write (default ``--out``).
        keep: files inside ``writable`` that must not change (an existing run's record).
        absent: paths that must not exist afterwards.
        env: environment variables for the command.
    """

    id: str
    args: Callable[[Env], list[str]]
    message: Text
    setup: tuple[Setup, ...] = ()
    writable: Callable[[Env], Path] = lambda e: e.out
    keep: Callable[[Env], list[Path]] = lambda e: []
    absent: Callable[[Env], list[Path]] = lambda e: []
    where: str = "error"
    env: Callable[[Env], dict[str, str]] = lambda e: {}
    skip: str | None = None  # why the case cannot run on this machine


def _text(t: Text, e: Env) -> str:
    return t(e) if callable(t) else t


# -- set-up helpers ------------------------------------------------------------------------------
def put(rel: str, data: bytes | str | Callable[[Env], bytes | str]) -> Setup:
    """Write ``root/rel`` (parents created)."""

    def setup(e: Env) -> None:
        path = e.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        value = data(e) if callable(data) else data
        if isinstance(value, str):
            path.write_text(value)
        else:
            path.write_bytes(value)

    return setup


def mkdir(rel: str) -> Setup:
    return lambda e: (e.root / rel).mkdir(parents=True, exist_ok=True)


def tensor_file(rel: str, obj: Any) -> Setup:
    def setup(e: Env) -> None:
        path = e.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, path)

    return setup


def copy_run(e: Env) -> None:
    shutil.copytree(e.trained, e.run)


def edit_record(change: Callable[[dict[str, Any]], Any]) -> Setup:
    """Copy the trained run and change its ``results.json`` (``change`` edits the dict)."""

    def setup(e: Env) -> None:
        copy_run(e)
        path = e.run / "results.json"
        rec = json.loads(path.read_text())
        change(rec)
        path.write_text(json.dumps(rec))

    return setup


def set_keys(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda rec: rec.update(values)


def edit_checkpoint(change: Callable[[dict[str, Any]], Any]) -> Setup:
    """Change the copied run's checkpoint (run after ``copy_run`` or ``edit_record``)."""

    def setup(e: Env) -> None:
        path = e.run / "checkpoint.pt"
        blob = torch.load(path, weights_only=True)
        change(blob)
        torch.save(blob, path)

    return setup


def replace_checkpoint(make: Callable[[Env], bytes]) -> Setup:
    def setup(e: Env) -> None:
        copy_run(e)
        (e.run / "checkpoint.pt").write_bytes(make(e))

    return setup


def _truncated(e: Env) -> bytes:
    data = (e.trained / "checkpoint.pt").read_bytes()
    return data[: len(data) // 2]


def _tensor_bytes(obj: Any) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _hold_lock(e: Env) -> None:
    # Another process's lock on the run folder: flock conflicts between open file descriptions.
    fd = os.open(e.run / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    e.cleanups.append(lambda: os.close(fd))


def _read_only_out(e: Env) -> None:
    e.out.mkdir()
    os.chmod(e.out, 0o555)
    e.cleanups.append(lambda: os.chmod(e.out, 0o755))


def _unwritable_out(e: Env) -> Path:
    """A read-only folder; as root (who writes anywhere) a path under a regular file."""
    if os.access(e.out, os.W_OK):
        return e.out / "file" / "sub"
    return e.out


def _unwritable_message(e: Env) -> str:
    return "cannot create" if os.access(e.out, os.W_OK) else "is not writable"


def _unwritable_setup(e: Env) -> None:
    _read_only_out(e)
    if os.access(e.out, os.W_OK):  # root: chmod does not stop it
        os.chmod(e.out, 0o755)
        (e.out / "file").write_text("a regular file")


# -- plugin files ------------------------------------------------------------------------------
HOOK = "from mmvae_bench.api import hookimpl\n\n\n@hookimpl\ndef mmvae_bench_models():\n"


def hook_body(body: str, head: str = "") -> str:
    return head + HOOK + "".join(f"    {line}\n" for line in body.splitlines())


def readme_plugin() -> str:
    """The README's example model (section "Write your own model", first python block)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Write your own model", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


NO_LOSS_KEY = '''

class NoLossKey(PoEVAE):
    """The README's model whose loss() names its total "total" instead of "loss"."""

    def loss(self, batch, stage, cached):
        out = super().loss(batch, stage, cached)
        return {"total": out.pop("loss"), **out}


@hookimpl
def mmvae_bench_models() -> list[ModelEntry]:
    return [
        ModelEntry(name="no-loss-key", cls=NoLossKey, config=PoEVAEConfig, description="bad")
    ]
'''

LOSS_NOT_DICT = NO_LOSS_KEY.replace(
    'return {"total": out.pop("loss"), **out}', 'return out["loss"]'
).replace("no-loss-key", "loss-not-dict")

NOT_A_VAE = """
from dataclasses import dataclass
from mmvae_bench.api import ModelConfig, ModelEntry, hookimpl


@dataclass(frozen=True, kw_only=True)
class C(ModelConfig):
    pass


@hookimpl
def mmvae_bench_models():
    return [ModelEntry(name="not-a-vae", cls=dict, config=C, description="x")]
"""

# A dataset whose load is not callable.
BAD_DATASET = """
from mmvae_bench.api import hookimpl
from mmvae_bench.data.spec import DatasetEntry


@hookimpl
def mmvae_bench_datasets():
    return [DatasetEntry(name="bad-data", load=42, description="x")]
"""


def plugin(name: str, code: str) -> Setup:
    return put(f"in/{name}", code)


# -- command lines -------------------------------------------------------------------------------
def RUN(*extra: str | Callable[[Env], str], model: str = "jnf") -> Callable[[Env], list[str]]:
    """``run MODEL`` on circles-squares, one tiny epoch, into ``--out``, then ``extra``."""
    nets = TINY_JNF if model == "jnf" else TINY_NETS

    def args(e: Env) -> list[str]:
        base = ["run", model, "--dataset", "circles-squares", "--epochs", "1", *nets]
        base += ["--out", str(e.out), "--cache-dir", str(e.cache)]
        return base + [x(e) if callable(x) else x for x in extra]

    return args


def EVAL(*extra: str | Callable[[Env], str]) -> Callable[[Env], list[str]]:
    """``evaluate`` of the copied run (``e.run``), then ``extra``."""
    return lambda e: ["evaluate", str(e.run), *[x(e) if callable(x) else x for x in extra]]


def SWEEP(*extra: str | Callable[[Env], str], model: str = "jnf") -> Callable[[Env], list[str]]:
    """``sweep MODEL`` on circles-squares into ``--out``/``--storage``, then ``extra``."""

    def args(e: Env) -> list[str]:
        base = ["sweep", model, "--dataset", "circles-squares", "--epochs", "1"]
        base += ["--out", str(e.out / "runs"), "--storage", str(e.out / "sweeps")]
        base += ["--cache-dir", str(e.cache), "--threads", "1"]
        return base + [x(e) if callable(x) else x for x in extra]

    return args


def CMD(*parts: str | Callable[[Env], str]) -> Callable[[Env], list[str]]:
    return lambda e: [x(e) if callable(x) else x for x in parts]


def p(template: str) -> Callable[[Env], str]:
    """A path under the case root: ``p("in/x.py")``."""
    return lambda e: str(e.root / template)


EVAL_AREA: Callable[[Env], Path] = lambda e: e.run  # noqa: E731
CLF_BARE = (tensor_file("in/clf/circle.pt", torch.zeros(3)), tensor_file("in/clf/square.pt", 0))
MHD_HTML = (lambda e: write_html_page(e.inp / "mhd" / "mhd_train.pt"),)
NO_GPU = not torch.cuda.is_available()


def _board(**over: Any) -> str:
    board = {"leaderboard_version": 1, "dataset": "toy", "protocols": {}, "skipped": []}
    return json.dumps({**board, **over})


def _runs_with(*records: dict[str, Any]) -> tuple[Setup, ...]:
    return tuple(put(f"runs/{i}/results.json", json.dumps(r)) for i, r in enumerate(records))


def _toml(text: str) -> Setup:
    return put("in/sweep.toml", text)


CASES: list[Case] = [
    # == run: names ==========================================================================
    Case("run-unknown-model", RUN(model="nope"), "unknown model 'nope'"),
    Case("run-model-with-markup", RUN(model="foo[/x]"), "unknown model 'foo[/x]'"),
    Case("run-unknown-dataset", RUN("--dataset", "nope"), "unknown dataset 'nope'"),
    Case("run-dataset-with-markup", RUN("--dataset", "[bold]x"), "unknown dataset '[bold]x'"),
    Case(
        "run-published-dataset-without-data-dir",
        RUN("--dataset", "mhd"),
        "dataset 'mhd' needs --data-dir",
    ),
    Case(
        "run-data-dir-with-markup",
        RUN("--dataset", "mhd", "--data-dir", "my[/data]"),
        "my[/data] does not exist",
    ),
    Case(
        "run-data-dir-missing",
        RUN("--dataset", "mhd", "--data-dir", p("in/nope")),
        lambda e: f"data dir {e.inp / 'nope'} does not exist",
    ),
    Case(
        "run-data-file-is-a-web-page",
        RUN("--dataset", "mhd", "--data-dir", p("in/mhd")),
        "is an HTML page, not",
        setup=MHD_HTML,
    ),
    # == run: --set ============================================================================
    Case("run-set-key-with-markup", RUN("--set", "be[red]ta=1"), "'be[red]ta'"),
    Case("run-set-unknown-key", RUN("--set", "betta=1"), "unknown config field 'betta'"),
    Case("run-set-without-equals", RUN("--set", "beta"), "--set expects key=value, got 'beta'"),
    Case("run-set-empty-key", RUN("--set", "=1"), "--set expects key=value, got '=1'"),
    Case("run-set-width-not-int", RUN("--set", "width=abc"), "width must be an integer"),
    Case("run-set-rescale-not-bool", RUN("--set", "rescale=maybe"), "rescale must be true or"),
    Case("run-set-beta-inf", RUN("--set", "beta=inf"), "beta must be a finite number"),
    Case("run-set-beta-nan", RUN("--set", "beta=nan"), "beta must be a finite number"),
    Case("run-set-lr-inf", RUN("--set", "lr=inf"), "lr must be a finite number"),
    Case("run-set-lr-nan", RUN("--set", "lr=nan"), "lr must be a finite number"),
    Case("run-set-lr-zero", RUN("--set", "lr=0"), "lr must be > 0"),
    Case("run-set-beta-negative", RUN("--set", "beta=-1"), "beta must be >= 0, got -1.0"),
    Case("run-set-latent-dim-zero", RUN("--set", "latent_dim=0"), "latent_dim must be >= 1"),
    Case("run-set-batch-size-zero", RUN("--set", "batch_size=0"), "batch_size must be >= 1"),
    Case(
        "run-set-flow-depth-float",
        RUN("--set", "flow_depth=1.5"),
        "flow_depth must be an integer, got '1.5'",
    ),
    # == run: numbers and choices ==============================================================
    Case("run-seed-beyond-64-bits", RUN("--seed", str(2**70)), "seed must be in 0.."),
    Case("run-seed-2-to-the-32", RUN("--seed", str(2**32)), "seed must be in 0.."),
    Case("run-seed-negative-gmm", RUN("--seed", "-1", "--sampler", "gmm"), "seed must be in 0.."),
    Case("run-epochs-negative", RUN("--epochs", "-1"), "must be >= 0, got -1"),
    Case("run-epochs-not-a-number", RUN("--epochs", "abc"), "must be an integer, got 'abc'"),
    Case("run-epochs-unknown-stage", RUN("--epochs", "bogus=1"), "unknown stage(s) ['bogus']"),
    Case("run-epochs-stage-negative", RUN("--epochs", "joint=-1"), "joint must be >= 0"),
    Case("run-epochs-empty-stage", RUN("--epochs", "=3"), "--epochs expects N or STAGE=N"),
    Case("run-threads-zero", RUN("--threads", "0"), "threads must be >= 1 or 'auto', got '0'"),
    Case("run-threads-negative", RUN("--threads", "-2"), "must be >= 1 or 'auto', got '-2'"),
    Case("run-threads-word", RUN("--threads", "many"), "must be >= 1 or 'auto', got 'many'"),
    Case("run-device-tpu", RUN("--device", "tpu"), "--device must be one of"),
    Case(
        "run-memory-format-nchw",
        RUN("--memory-format", "nchw"),
        "--memory-format must be one of ['contiguous', 'channels-last', 'auto'], got 'nchw'",
    ),
    Case(
        "run-device-cuda-without-gpu",
        RUN("--device", "cuda"),
        "no CUDA device",
        skip=None if NO_GPU else "a GPU is present",
    ),
    Case("run-precision-fp8", RUN("--precision", "fp8"), "--precision must be one of"),
    Case("run-sampler-vae", RUN("--sampler", "vae"), "--sampler must be one of"),
    Case("run-protocol-unknown", RUN("--protocol", "fast"), "--protocol must be one of"),
    Case(
        "run-quick-conflicts-with-protocol-full",
        RUN("--quick", "--protocol", "full"),
        "--quick conflicts with --protocol full",
    ),
    # == run: FID and classifier weights =======================================================
    Case(
        "run-fid-extractor-unknown",
        RUN("--fid", "--fid-extractor", "vgg"),
        "--fid-extractor must be one of",
    ),
    Case("run-fid-extractor-without-fid", RUN("--fid-extractor", "classifier"), "need --fid"),
    Case(
        "run-inception-weights-without-fid",
        RUN("--inception-weights", p("in/w.pth")),
        "need --fid",
        setup=(put("in/w.pth", "x"),),
    ),
    Case(
        "run-inception-weights-missing",
        RUN("--fid", "--inception-weights", p("in/inception.pth")),
        "Inception weights not found",
    ),
    Case(
        "run-inception-weights-bare-tensor",
        RUN("--fid", "--inception-weights", p("in/inception.pth")),
        "are not a plain tensor state dict (refusing to unpickle): it holds a Tensor",
        setup=(tensor_file("in/inception.pth", torch.zeros(3)),),
    ),
    Case(
        "run-inception-weights-not-torch",
        RUN("--fid", "--inception-weights", p("in/inception.pth")),
        "inception.pth are not a plain tensor state dict",
        setup=(put("in/inception.pth", "<html>not weights</html>"),),
    ),
    Case(
        "run-inception-not-downloaded",
        RUN("--fid", "--fid-extractor", "inception"),
        "needs its weights",
        env=lambda e: {"TORCH_HOME": str(e.inp / "torch-home")},
    ),
    Case(
        "run-classifier-weights-missing-folder",
        RUN("--classifier-weights", p("in/nope")),
        lambda e: f"classifier weights folder {e.inp / 'nope'} does not exist",
    ),
    Case(
        "run-classifier-weights-a-file",
        RUN("--classifier-weights", p("victim/a.txt")),
        "is not a folder",
    ),
    Case(
        "run-classifier-weights-bare-tensor",
        RUN("--classifier-weights", p("in/clf")),
        "not a classifier file",
        setup=CLF_BARE,
    ),
    Case(
        "run-classifier-weights-wrong-shapes",
        RUN("--classifier-weights", p("in/clf")),
        "do not fit 'circle'",
        setup=(
            tensor_file("in/clf/circle.pt", {"state_dict": {"w": torch.zeros(2)}}),
            tensor_file("in/clf/square.pt", {"state_dict": {"w": torch.zeros(2)}}),
        ),
    ),
    Case(
        "run-classifier-weights-corrupt",
        RUN("--classifier-weights", p("in/clf")),
        "is corrupt or unreadable",
        setup=(put("in/clf/circle.pt", b"\x80\x02garbage"), put("in/clf/square.pt", b"")),
    ),
    # == run: --out and run ids ================================================================
    Case(
        "run-out-is-a-file",
        RUN(),
        "is a file, not a folder",
        setup=(put("out", "a regular file"),),
        keep=lambda e: [e.out],
    ),
    Case(
        "run-out-read-only",
        lambda e: [*RUN()(e), "--out", str(_unwritable_out(e))],
        _unwritable_message,
        setup=(_unwritable_setup,),
    ),
    Case(
        "run-out-under-a-file",
        RUN("--out", p("out/file/sub")),
        "cannot create the output folder",
        setup=(put("out/file", "x"),),
        keep=lambda e: [e.out / "file"],
    ),
    Case("run-id-escapes", RUN("--run-id", "../../escape"), "'../../escape' is not a safe name"),
    Case("run-id-absolute", RUN("--run-id", p("victim")), "is not a safe name"),
    Case("run-id-hidden", RUN("--run-id", ".hidden"), "'.hidden' is not a safe name"),
    Case("run-id-with-slash", RUN("--run-id", "a/b"), "'a/b' is not a safe name"),
    Case("run-id-empty", RUN("--run-id", ""), "'' is not a safe name"),
    Case("run-id-too-long", RUN("--run-id", "x" * 129), "is not a safe name"),
    Case("run-id-with-markup", RUN("--run-id", "foo[/x]"), "'foo[/x]' is not a safe name"),
    Case(
        "run-id-exists",
        RUN("--run-id", "r"),
        "run 'r' already exists",
        setup=(copy_run,),
        keep=lambda e: [e.run / "results.json", e.run / "checkpoint.pt"],
    ),
    Case(
        "run-id-is-a-file",
        RUN("--run-id", "r", "--overwrite"),
        "exists and is not a run folder",
        setup=(put("out/r", "x"),),
        keep=lambda e: [e.run],
    ),
    Case("run-resume-without-run-id", RUN("--resume"), "--resume needs the --run-id"),
    Case(
        "run-resume-unknown-run",
        RUN("--run-id", "nope", "--resume"),
        "nothing to resume",
        absent=lambda e: [e.out / "nope"],
    ),
    Case(
        "run-resume-folder-without-record",
        RUN("--run-id", "r", "--resume"),
        "nothing to resume",
        setup=(put("out/r/notes.txt", "mine"),),
        keep=lambda e: [e.run / "notes.txt"],
    ),
    Case(
        "run-resume-other-settings",
        RUN("--run-id", "r", "--resume", "--set", "beta=2"),
        "was started with another config",
        setup=(copy_run,),
        keep=lambda e: [e.run / "results.json", e.run / "checkpoint.pt"],
    ),
    Case(
        "run-resume-other-seed",
        RUN("--run-id", "r", "--resume", "--seed", "7"),
        "was started with another seed",
        setup=(copy_run,),
        keep=lambda e: [e.run / "results.json", e.run / "checkpoint.pt"],
    ),
    Case(
        "run-resume-corrupt-record",
        RUN("--run-id", "r", "--resume"),
        "is corrupt (not JSON",
        setup=(copy_run, put("out/r/results.json", "{")),
        keep=lambda e: [e.run / "checkpoint.pt"],
    ),
    Case(
        "run-overwrite-and-resume",
        RUN("--run-id", "r", "--overwrite", "--resume"),
        "--overwrite and --resume exclude each other",
        setup=(copy_run,),
        keep=lambda e: [e.run / "results.json", e.run / "checkpoint.pt"],
    ),
    # == run/models/datasets: plugin files =====================================================
    Case("run-plugin-folder", RUN("--plugin", p("in")), "is a folder", setup=(mkdir("in"),)),
    Case("run-plugin-missing", RUN("--plugin", p("in/nope.py")), "plugin file not found"),
    Case(
        "run-plugin-not-python",
        RUN("--plugin", p("victim/a.txt")),
        "is not a .py file",
    ),
    Case(
        "run-plugin-syntax-error",
        RUN("--plugin", p("in/p.py")),
        "has a syntax error at line 1",
        setup=(plugin("p.py", "def (:\n"),),
    ),
    Case(
        "run-plugin-import-error",
        RUN("--plugin", p("in/p.py")),
        "failed to import: ModuleNotFoundError",
        setup=(plugin("p.py", "import no_such_module_xyz\n"),),
    ),
    Case(
        "run-plugin-exits-on-import",
        RUN("--plugin", p("in/p.py")),
        "called sys.exit(4) while importing",
        setup=(plugin("p.py", "import sys\nsys.exit(4)\n"),),
    ),
    Case(
        "run-plugin-registers-nothing",
        RUN("--plugin", p("in/p.py")),
        "registers no hooks: decorate its mmvae_bench_models()",
        setup=(plugin("p.py", "def mmvae_bench_models():\n    return []\n"),),
    ),
    Case(
        "run-plugin-empty",
        RUN("--plugin", p("in/p.py")),
        "registers no hooks",
        setup=(plugin("p.py", ""),),
    ),
    Case(
        "run-plugin-hook-returns-a-dict",
        RUN("--plugin", p("in/p.py")),
        "returned a dict from mmvae_bench_models()",
        setup=(plugin("p.py", hook_body("return {'a': 1}")),),
    ),
    Case(
        "run-plugin-hook-returns-none",
        RUN("--plugin", p("in/p.py")),
        "returned None from mmvae_bench_models()",
        setup=(plugin("p.py", hook_body("pass")),),
    ),
    Case(
        "run-plugin-hook-calls-sys-exit",
        RUN("--plugin", p("in/p.py")),
        "called sys.exit(3) in mmvae_bench_models()",
        setup=(plugin("p.py", hook_body("sys.exit(3)", "import sys\n")),),
    ),
    Case(
        "run-plugin-hook-raises",
        RUN("--plugin", p("in/p.py")),
        "raised RuntimeError in mmvae_bench_models(): boom",
        setup=(plugin("p.py", hook_body("raise RuntimeError('boom')")),),
    ),
    Case(
        "run-plugin-hook-bad-signature",
        RUN("--plugin", p("in/p.py")),
        "does not match the hook specification",
        setup=(plugin("p.py", HOOK.replace("models()", "models(bogus)") + "    return []\n"),),
    ),
    Case(
        "run-plugin-unknown-hook",
        RUN("--plugin", p("in/p.py")),
        "defines unknown hook(s) mmvae_bench_modles",
        setup=(plugin("p.py", HOOK.replace("models()", "modles()") + "    return []\n"),),
    ),
    Case(
        "run-plugin-twice",
        RUN("--plugin", p("in/poe.py"), "--plugin", p("in/poe.py")),
        "is given twice",
        setup=(plugin("poe.py", readme_plugin()),),
    ),
    Case(
        "run-plugin-name-clash",
        RUN("--plugin", p("in/poe.py")),
        "model name 'jnf' registered twice",
        setup=(plugin("poe.py", readme_plugin().replace('name="poe-vae"', 'name="jnf"')),),
    ),
    Case(
        "run-plugin-bad-name",
        RUN("--plugin", p("in/poe.py")),
        "registered the bad model name 'Poe_VAE'",
        setup=(plugin("poe.py", readme_plugin().replace('name="poe-vae"', 'name="Poe_VAE"')),),
    ),
    Case(
        "run-plugin-cls-not-a-model",
        RUN("--plugin", p("in/p.py")),
        "which is not a MultimodalVAE subclass",
        setup=(plugin("p.py", NOT_A_VAE),),
    ),
    Case(
        "run-plugin-loss-without-loss-key",
        RUN("--plugin", p("in/poe.py"), model="no-loss-key"),
        "NoLossKey.loss(batch, 'train') must return a dict with a scalar 'loss'",
        setup=(plugin("poe.py", readme_plugin() + NO_LOSS_KEY),),
    ),
    Case(
        "run-plugin-loss-not-a-dict",
        RUN("--plugin", p("in/poe.py"), model="loss-not-dict"),
        "must return a dict with a scalar 'loss' (the quantity to minimise) and named parts; got "
        "Tensor",
        setup=(plugin("poe.py", readme_plugin() + LOSS_NOT_DICT),),
    ),
    Case(
        "models-plugin-returns-a-string",
        CMD("models", "--plugin", p("in/p.py")),
        "returned a str from mmvae_bench_models()",
        setup=(plugin("p.py", hook_body("return 'poe-vae'")),),
    ),
    Case(
        "models-plugin-folder",
        CMD("models", "--plugin", p("in")),
        "is a folder",
        setup=(mkdir("in"),),
    ),
    Case(
        "datasets-plugin-bad-entry",
        CMD("datasets", "--plugin", p("in/p.py")),
        "with a load that is not callable",
        setup=(plugin("p.py", BAD_DATASET),),
    ),
    Case(
        "datasets-plugin-exits",
        CMD("datasets", "--plugin", p("in/p.py")),
        "called sys.exit(0) while importing",
        setup=(plugin("p.py", "raise SystemExit(0)\n"),),
    ),
    # == evaluate ================================================================================
    Case("evaluate-missing-folder", EVAL(), "the folder does not exist", writable=EVAL_AREA),
    Case(
        "evaluate-a-file",
        CMD("evaluate", lambda e: str(e.run / "results.json")),
        "it is a file, not a run folder",
        setup=(copy_run,),
        writable=EVAL_AREA,
        keep=lambda e: [e.run / "results.json"],
    ),
    Case(
        "evaluate-null-record",
        EVAL(),
        "not a JSON object",
        setup=(copy_run, put("out/r/results.json", "null")),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-list-record",
        EVAL(),
        "the record is list, not a JSON object",
        setup=(copy_run, put("out/r/results.json", "[1, 2]")),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-corrupt-record",
        EVAL(),
        "is corrupt (not JSON",
        setup=(copy_run, put("out/r/results.json", '{"schema": 2,')),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-record-not-utf8",
        EVAL(),
        "results.json is unreadable",
        setup=(copy_run, put("out/r/results.json", b"\xff\xfe\x00garbage")),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-no-record",
        EVAL(),
        "no run record at",
        setup=(copy_run, lambda e: (e.run / "results.json").unlink()),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-newer-schema",
        EVAL(),
        "version 99 was written by a newer mmvae-bench",
        setup=(edit_record(set_keys(schema=99)),),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-schema-not-a-number",
        EVAL(),
        "schema: expected a version number, got '2'",
        setup=(edit_record(set_keys(schema="2")),),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-record-missing-config",
        EVAL(),
        "missing keys ['config']",
        setup=(edit_record(lambda r: r.pop("config")),),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-record-seed-mistyped",
        EVAL(),
        "seed: expected an integer",
        setup=(edit_record(set_keys(seed="zero")),),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-record-unknown-status",
        EVAL(),
        "status: expected one of",
        setup=(edit_record(set_keys(status="done")),),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-record-run-id-escapes",
        EVAL(),
        "is invalid: run_id: run_id '../x' is not a safe name",
        setup=(edit_record(set_keys(run_id="../x")),),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-record-dataset-escapes",
        EVAL(),
        "'../victim' is not a safe name",
        setup=(edit_record(set_keys(dataset="../victim")),),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-record-dataset-absolute",
        EVAL(),
        lambda e: f"is invalid: dataset: dataset '{e.victim}' is not a safe name",
        setup=(lambda e: edit_record(set_keys(dataset=str(e.victim)))(e),),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-unfinished-run",
        EVAL(),
        "has not finished training",
        setup=(edit_record(set_keys(status="running", stages={})),),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-no-checkpoint",
        EVAL(),
        "checkpoint not found",
        setup=(copy_run, lambda e: (e.run / "checkpoint.pt").unlink()),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-bare-tensor-checkpoint",
        EVAL(),
        "is not an mmvae-bench checkpoint",
        setup=(replace_checkpoint(lambda e: _tensor_bytes(torch.zeros(3))),),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-truncated-checkpoint",
        EVAL(),
        "is corrupt or unreadable",
        setup=(replace_checkpoint(_truncated),),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-html-checkpoint",
        EVAL(),
        "is corrupt or unreadable",
        setup=(replace_checkpoint(lambda e: b"<!DOCTYPE html><html></html>"),),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-checkpoint-of-another-run",
        EVAL(),
        "belongs to another run than its record",
        setup=(copy_run, lambda e: shutil.copy(e.other / "checkpoint.pt", e.run)),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-record-config-differs-from-checkpoint",
        EVAL(),
        "was saved with another config than its record's",
        setup=(edit_record(lambda r: r["config"].update(latent_dim=5)),),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-config-does-not-fit-the-weights",
        EVAL(),
        "does not fit the model its config builds",
        setup=(
            edit_record(lambda r: r["config"].update(latent_dim=5)),
            edit_checkpoint(lambda b: b["config"].update(latent_dim=5)),
        ),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-checkpoint-of-another-model",
        EVAL(),
        "holds model 'mvae', its record says 'jnf'",
        setup=(copy_run, edit_checkpoint(lambda b: b.update(model="mvae"))),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-model-from-a-plugin-file",
        EVAL(),
        "comes from a plugin file; pass --plugin",
        setup=(
            edit_record(
                lambda r: r.update(model="poe-vae", plugins=[{"path": "/x/poe.py", "sha256": "0"}])
            ),
            edit_checkpoint(lambda b: b.update(model="poe-vae")),
        ),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-run-in-use",
        EVAL(),
        "is in use by another mmvae-bench process",
        setup=(copy_run, _hold_lock),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-sampler-unknown",
        EVAL("--sampler", "bogus"),
        "--sampler must be one of",
        setup=(copy_run,),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-protocol-unknown",
        EVAL("--protocol", "fast"),
        "--protocol must be one of",
        setup=(copy_run,),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-quick-conflicts-with-protocol-full",
        EVAL("--quick", "--protocol", "full"),
        "--quick conflicts with --protocol full",
        setup=(copy_run,),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-fid-extractor-unknown",
        EVAL("--fid-extractor", "vgg"),
        "--fid-extractor must be one of",
        setup=(copy_run,),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-fid-extractor-with-no-fid",
        EVAL("--no-fid", "--fid-extractor", "classifier"),
        "need --fid",
        setup=(copy_run,),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-inception-weights-missing",
        EVAL("--inception-weights", p("in/inception.pth")),
        "Inception weights not found",
        setup=(copy_run,),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-classifier-weights-missing-folder",
        EVAL("--classifier-weights", p("in/nope")),
        "does not exist",
        setup=(copy_run,),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-classifier-weights-bare-tensor",
        EVAL("--classifier-weights", p("in/clf")),
        "not a classifier file",
        setup=(copy_run, *CLF_BARE),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-device-tpu",
        EVAL("--device", "tpu"),
        "--device must be one of",
        setup=(copy_run,),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-threads-zero",
        EVAL("--threads", "0"),
        "threads must be >= 1 or 'auto', got '0'",
        setup=(copy_run,),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-threads-word",
        EVAL("--threads", "many"),
        "threads must be >= 1 or 'auto', got 'many'",
        setup=(copy_run,),
        writable=EVAL_AREA,
    ),
    Case(
        "evaluate-plugin-missing",
        EVAL("--plugin", p("in/nope.py")),
        "plugin file not found",
        setup=(copy_run,),
        writable=EVAL_AREA,
    ),
    # == leaderboard ===========================================================================
    Case(
        "leaderboard-build-out-is-a-file",
        CMD("leaderboard", "build", "--runs", p("runs"), "--out", p("out")),
        "is a file, not a folder",
        setup=(*_runs_with(ok_record("a", dataset="circles-squares")), put("out", "x")),
        keep=lambda e: [e.out],
    ),
    Case(
        "leaderboard-build-out-under-a-file",
        CMD("leaderboard", "build", "--runs", p("runs"), "--out", p("out/file/sub")),
        "cannot create",
        setup=(*_runs_with(ok_record("a")), put("out/file", "x")),
        keep=lambda e: [e.out / "file"],
    ),
    Case(
        "leaderboard-build-out-read-only",
        lambda e: (
            ["leaderboard", "build", "--runs", str(e.root / "runs")]
            + ["--out", str(_unwritable_out(e))]
        ),
        _unwritable_message,
        setup=(*_runs_with(ok_record("a")), _unwritable_setup),
    ),
    Case(
        "leaderboard-build-no-runs-folder",
        CMD("leaderboard", "build", "--runs", p("in/nope"), "--out", p("out")),
        "no runs folder at",
    ),
    Case(
        "leaderboard-build-no-records",
        CMD("leaderboard", "build", "--runs", p("runs"), "--out", p("out")),
        "no usable run records",
        setup=(mkdir("runs/empty"),),
    ),
    Case(
        "leaderboard-build-dataset-escapes",
        CMD("leaderboard", "build", "--runs", p("runs"), "--out", p("out")),
        "'../victim' is not a safe name",
        setup=_runs_with(ok_record("a", dataset="../victim")),
        absent=lambda e: [e.root / "victim.json", e.root / "victim.md"],
    ),
    Case(
        "leaderboard-build-dataset-absolute",
        CMD("leaderboard", "build", "--runs", p("runs"), "--out", p("out")),
        lambda e: f"dataset '{e.victim}' is not a safe name",
        setup=(
            put("runs/a/results.json", lambda e: json.dumps(ok_record("a", dataset=str(e.victim)))),
        ),
        absent=lambda e: [e.root / "victim.json", e.root / "victim.md"],
    ),
    Case(
        "leaderboard-build-run-id-escapes",
        CMD("leaderboard", "build", "--runs", p("runs"), "--out", p("out")),
        "run_id: run_id '../x' is not a safe name",
        setup=_runs_with(ok_record("../x")),
    ),
    Case(
        "leaderboard-build-corrupt-record",
        CMD("leaderboard", "build", "--runs", p("runs"), "--out", p("out")),
        "corrupt: JSONDecodeError",
        setup=(put("runs/a/results.json", "{"),),
    ),
    Case(
        "leaderboard-build-newer-schema",
        CMD("leaderboard", "build", "--runs", p("runs"), "--out", p("out")),
        "version 99 was written by a newer mmvae-bench",
        setup=_runs_with(ok_record("a", schema=99)),
    ),
    Case(
        "leaderboard-show-missing",
        CMD("leaderboard", "show", "toy", "--out", p("out")),
        "no leaderboard for 'toy'",
    ),
    Case(
        "leaderboard-show-malformed-json",
        CMD("leaderboard", "show", "toy", "--out", p("out")),
        "is corrupt",
        setup=(put("out/toy.json", '{"leaderboard_version": 1, '),),
        keep=lambda e: [e.out / "toy.json"],
    ),
    Case(
        "leaderboard-show-wrong-structure",
        CMD("leaderboard", "show", "toy", "--out", p("out")),
        "is malformed",
        setup=(put("out/toy.json", _board(protocols={"quick-1": {}}, rows=[{"x": 1}])),),
        keep=lambda e: [e.out / "toy.json"],
    ),
    Case(
        "leaderboard-show-skipped-not-a-list",
        CMD("leaderboard", "show", "toy", "--out", p("out")),
        "is malformed",
        setup=(put("out/toy.json", _board(skipped=3)),),
    ),
    Case(
        "leaderboard-show-wrong-version",
        CMD("leaderboard", "show", "toy", "--out", p("out")),
        "unknown format",
        setup=(put("out/toy.json", _board(leaderboard_version=7)),),
    ),
    Case(
        "leaderboard-show-a-list",
        CMD("leaderboard", "show", "toy", "--out", p("out")),
        "unknown format",
        setup=(put("out/toy.json", "[]"),),
    ),
    Case(
        "leaderboard-show-dataset-escapes",
        CMD("leaderboard", "show", "../victim", "--out", p("out")),
        "'../victim' is not a safe name",
    ),
    Case(
        "leaderboard-show-dataset-with-markup",
        CMD("leaderboard", "show", "foo[/x]", "--out", p("out")),
        "'foo[/x]' is not a safe name",
    ),
    # == sweep (every check in sweep.py, before Ray) ===========================================
    Case(
        "sweep-config-is-a-folder",
        SWEEP("--config", p("in")),
        "is a folder, not a TOML file",
        setup=(mkdir("in"),),
    ),
    Case("sweep-config-missing", SWEEP("--config", p("in/x.toml")), "config file not found"),
    Case(
        "sweep-config-invalid-toml",
        SWEEP("--config", p("in/sweep.toml")),
        "invalid TOML",
        setup=(_toml("grid = [\n"),),
    ),
    Case(
        "sweep-config-not-utf8",
        SWEEP("--config", p("in/sweep.toml")),
        "is unreadable",
        setup=(put("in/sweep.toml", b"\xff\xfe\x00"),),
    ),
    Case(
        "sweep-config-unknown-key",
        SWEEP("--config", p("in/sweep.toml")),
        "unknown key(s) ['bogus']",
        setup=(_toml("bogus = 1\n"),),
    ),
    Case(
        "sweep-config-grid-not-a-table",
        SWEEP("--config", p("in/sweep.toml")),
        "'grid' must be a table",
        setup=(_toml("grid = 3\n"),),
    ),
    Case(
        "sweep-config-lr-inf",
        SWEEP("--config", p("in/sweep.toml")),
        "lr must be a finite number",
        setup=(_toml("[set]\nlr = inf\n"),),
    ),
    Case(
        "sweep-config-seeds-not-a-number",
        SWEEP("--config", p("in/sweep.toml")),
        "seeds must be an integer",
        setup=(_toml('seeds = "many"\n'),),
    ),
    Case(
        "sweep-config-unknown-set-key",
        SWEEP("--config", p("in/sweep.toml")),
        "unknown config field 'betta' in --set",
        setup=(_toml("[set]\nbetta = 1\n"),),
    ),
    Case("sweep-no-model", CMD("sweep"), "a sweep needs a model"),
    Case("sweep-unknown-model", SWEEP(model="nope"), "unknown model 'nope'"),
    Case("sweep-unknown-dataset", SWEEP("--dataset", "nope"), "unknown dataset 'nope'"),
    Case("sweep-grid-unknown-field", SWEEP("--grid", "betta=1,2"), "unknown config field 'betta'"),
    Case("sweep-grid-field-with-markup", SWEEP("--grid", "be[red]ta=1"), "'be[red]ta'"),
    Case("sweep-grid-wrong-type", SWEEP("--grid", "width=a,b"), "width must be an integer"),
    Case("sweep-grid-inf", SWEEP("--grid", "beta=1,inf"), "beta must be a finite number"),
    Case("sweep-grid-no-values", SWEEP("--grid", "beta="), "--grid expects beta=0.5,1,2.5"),
    Case(
        "sweep-grid-twice",
        SWEEP("--grid", "beta=1", "--grid", "beta=2"),
        "--grid beta given twice",
    ),
    Case("sweep-grid-repeats-a-value", SWEEP("--grid", "beta=1,1"), "repeats a value"),
    Case(
        "sweep-grid-and-set",
        SWEEP("--grid", "beta=1,2", "--set", "beta=3"),
        "'beta' is both a grid axis and --set",
    ),
    Case("sweep-set-nan", SWEEP("--set", "beta=nan"), "beta must be a finite number"),
    Case("sweep-seeds-zero", SWEEP("--seeds", "0"), "seeds must be >= 1"),
    Case("sweep-seeds-negative", SWEEP("--seeds", "-3"), "seeds must be >= 1"),
    Case("sweep-seeds-not-a-number", SWEEP("--seeds", "abc"), "seeds must be an integer"),
    Case("sweep-seeds-repeated", SWEEP("--seeds", "1,1"), "seeds must be distinct"),
    Case("sweep-seed-negative", SWEEP("--seeds", "-1,5"), "seed must be in 0.."),
    Case("sweep-seed-too-big", SWEEP("--seeds", f"1,{2**40}"), "seed must be in 0.."),
    Case("sweep-resume-without-name", SWEEP("--resume"), "--resume needs the --name"),
    Case(
        "sweep-resume-unknown-sweep",
        SWEEP("--resume", "--name", "nope"),
        "no sweep to resume",
    ),
    Case("sweep-name-with-slash", SWEEP("--name", "a/b"), "sweep name 'a/b' is not a safe name"),
    Case("sweep-name-escapes", SWEEP("--name", "../x"), "sweep name '../x' is not a safe name"),
    Case("sweep-threads-zero", SWEEP("--threads", "0"), "threads must be >= 1"),
    Case("sweep-device-tpu", SWEEP("--device", "tpu"), "device must be one of"),
    Case("sweep-cuda-without-gpus", SWEEP("--device", "cuda"), "needs gpus_per_trial > 0"),
    Case("sweep-precision-fp8", SWEEP("--precision", "fp8"), "precision must be one of"),
    Case(
        "sweep-memory-format-nhwc",
        SWEEP("--memory-format", "nhwc"),
        "memory_format must be one of ['contiguous', 'channels-last', 'auto'], got 'nhwc'",
    ),
    Case("sweep-sampler-vae", SWEEP("--sampler", "vae"), "sampler must be one of"),
    Case("sweep-protocol-unknown", SWEEP("--protocol", "fast"), "protocol must be one of"),
    Case(
        "sweep-quick-conflicts-with-protocol-full",
        SWEEP("--quick", "--protocol", "full"),
        "--quick conflicts with --protocol full",
    ),
    Case("sweep-epochs-negative", SWEEP("--epochs", "joint=-1"), "joint must be >= 0"),
    Case("sweep-epochs-unknown-stage", SWEEP("--epochs", "bogus=1"), "unknown stage(s) ['bogus']"),
    Case("sweep-cpus-per-trial-zero", SWEEP("--cpus-per-trial", "0"), "cpus_per_trial must be > 0"),
    Case(
        "sweep-gpus-per-trial-fraction",
        SWEEP("--gpus-per-trial", "1.5"),
        "gpus_per_trial must be a fraction <= 1 or a whole number, got 1.5",
    ),
    Case("sweep-cpus-zero", SWEEP("--cpus", "0"), "cpus must be >= 1"),
    Case("sweep-cpus-with-address", SWEEP("--cpus", "2", "--address", "auto"), "cpus sizes a"),
    Case("sweep-max-concurrent-zero", SWEEP("--max-concurrent", "0"), "max_concurrent must be"),
    Case(
        "sweep-heatmap-unknown-axis",
        SWEEP("--grid", "beta=1,2", "--heatmap", "beta,lr"),
        "heatmap takes two distinct grid axes",
    ),
    Case(
        "sweep-fid-extractor-unknown",
        SWEEP("--fid", "--fid-extractor", "vgg"),
        "fid-extractor must be one of",
    ),
    Case("sweep-fid-extractor-without-fid", SWEEP("--fid-extractor", "classifier"), "need --fid"),
    Case(
        "sweep-inception-weights-missing",
        SWEEP("--fid", "--inception-weights", p("in/inception.pth")),
        "Inception weights not found",
    ),
    Case(
        "sweep-classifier-weights-missing-folder",
        SWEEP("--classifier-weights", p("in/nope")),
        "does not exist",
    ),
    Case(
        "sweep-classifier-weights-bare-tensor",
        SWEEP("--classifier-weights", p("in/clf")),
        "not a classifier file",
        setup=CLF_BARE,
    ),
    Case(
        "sweep-published-dataset-without-data-dir",
        SWEEP("--dataset", "mhd", "--no-evaluate"),
        "dataset 'mhd' needs --data-dir",
    ),
    Case(
        "sweep-out-is-a-file",
        SWEEP("--out", p("out")),
        "is a file, not a folder",
        setup=(put("out", "x"),),
        keep=lambda e: [e.out],
    ),
    Case("sweep-plugin-folder", SWEEP("--plugin", p("in")), "is a folder", setup=(mkdir("in"),)),
    # == data ====================================================================================
    Case(
        "data-check-web-page",
        CMD("data", "check", "mhd", "--data-dir", p("in/mhd")),
        "is an HTML page, not",
        setup=MHD_HTML,
        where="output",
    ),
    Case(
        "data-check-truncated-file",
        CMD("data", "check", "mhd", "--data-dir", p("in/mhd")),
        "is corrupt or truncated",
        setup=(put("in/mhd/mhd_train.pt", _tensor_bytes(torch.zeros(1000))[:300]),),
        where="output",
    ),
    Case(
        "data-check-missing-folder",
        CMD("data", "check", "mhd", "--data-dir", p("in/nope")),
        lambda e: f"missing {e.inp / 'nope' / 'mhd_train.pt'}",
        where="output",
    ),
    Case("data-check-unknown-dataset", CMD("data", "check", "nope"), "unknown dataset 'nope'"),
    Case("data-fetch-unknown-dataset", CMD("data", "fetch", "nope"), "unknown dataset 'nope'"),
    Case(
        "data-check-name-with-markup",
        CMD("data", "check", "foo[/x]"),
        "unknown dataset 'foo[/x]'",
    ),
    Case("data-check-without-data-dir", CMD("data", "check", "mhd"), "needs --data-dir DIR"),
    Case("data-fetch-without-data-dir", CMD("data", "fetch", "mhd"), "needs --data-dir DIR"),
    # == classifiers =============================================================================
    Case(
        "classifiers-epochs-negative",
        CMD("classifiers", "train", "--dataset", "circles-squares", "--epochs", "-1"),
        "classifier epochs must be an integer >= 1, got -1",
    ),
    Case(
        "classifiers-epochs-zero",
        CMD("classifiers", "train", "--dataset", "circles-squares", "--epochs", "0"),
        "classifier epochs must be an integer >= 1, got 0",
    ),
    Case(
        "classifiers-unknown-dataset",
        CMD("classifiers", "train", "--dataset", "nope"),
        "unknown dataset 'nope'",
    ),
    Case(
        "classifiers-published-without-data-dir",
        CMD("classifiers", "train", "--dataset", "mhd"),
        "needs --data-dir",
    ),
    Case(
        "classifiers-device-tpu",
        CMD("classifiers", "train", "--dataset", "circles-squares", "--device", "tpu"),
        "--device must be one of",
    ),
    Case(
        "classifiers-threads-zero",
        CMD("classifiers", "train", "--dataset", "circles-squares", "--threads", "0"),
        "threads must be >= 1, got 0",
    ),
    # == bench ===================================================================================
    Case("bench-device-tpu", CMD("bench", "--device", "tpu"), "--device must be one of"),
    Case("bench-precision-fp8", CMD("bench", "--precision", "fp8"), "--precision must be one of"),
]


def _param(c: Case) -> Any:
    marks = [pytest.mark.skip(reason=c.skip)] if c.skip else []
    return pytest.param(c, id=c.id, marks=marks)


# -- the shared set-up ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny JNF runs of one config (one epoch per stage, no evaluation), trained once."""
    root = tmp_path_factory.mktemp("bad-inputs")
    for run_id, seed in (("r", "0"), ("other", "1")):
        args = ["run", "jnf", *TINY_RUN, "--no-evaluate", "--seed", seed, "--run-id", run_id]
        res = runner.invoke(app, [*args, "--out", str(root / "runs")])
        assert res.exit_code == 0, res.output
    return root / "runs" / "r", root / "runs" / "other"


class RaySweepStarted(AssertionError):
    """A sweep got past sweep_config: its checks must all run before Ray."""


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_sweep(*args: Any, **kwargs: Any) -> None:
        raise RaySweepStarted("sweep_config accepted the sweep: Ray would start now")

    fake = types.ModuleType("mmvae_bench.tune")
    fake.run_sweep = run_sweep  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mmvae_bench.tune", fake)


@pytest.fixture(autouse=True)
def _bytecode_written(monkeypatch: pytest.MonkeyPatch) -> None:
    # As for a user without PYTHONDONTWRITEBYTECODE: a plugin import may not leave __pycache__.
    monkeypatch.setattr(sys, "dont_write_bytecode", False)


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tables fold long cells at 80 columns; the messages are matched unbroken.
    monkeypatch.setattr(present.console, "width", 1000)
    monkeypatch.setattr(present.err_console, "width", 1000)


def snapshot(root: Path, skip: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under ``root`` but ``skip``: type, size, mtime and sha256 of each entry."""
    found: dict[str, tuple[Any, ...]] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        for path in sorted(folder.iterdir()):
            if path == skip:
                continue
            st = path.lstat()
            digest = None
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISDIR(st.st_mode):
                stack.append(path)
            found[str(path.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                st.st_size,
                st.st_mtime_ns,
                digest,
            )
    return found


def _hash(path: Path) -> str | None:
    if path.is_dir():
        return "folder"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@pytest.fixture
def env(
    tmp_path: Path, trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Env]:
    e = Env(tmp_path / "case", *trained)
    for rel, text in (("a.txt", "keep me"), ("sub/b.bin", "\x00\x01"), ("victim.toml", "x=1")):
        (e.victim / rel).parent.mkdir(parents=True, exist_ok=True)
        (e.victim / rel).write_text(text)
    (e.root / "cwd").mkdir()
    e.cache.mkdir()
    # Relative defaults (runs/, leaderboards/, .cache/) would land here, where they are seen.
    monkeypatch.chdir(e.root / "cwd")
    yield e
    for undo in reversed(e.cleanups):
        undo()


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_is_a_user_error_that_touches_nothing_outside_out(case: Case, env: Env) -> None:
    for step in case.setup:
        step(env)
    args = case.args(env)  # before the snapshot: it may pick the folder it writes to
    writable = case.writable(env)
    kept = {str(p): _hash(p) for p in case.keep(env)}
    before = snapshot(env.root, writable)

    res = runner.invoke(app, args, env=case.env(env))

    assert not isinstance(res.exception, RaySweepStarted), "a sweep check runs after Ray starts"
    assert "Traceback" not in res.output, res.output
    assert res.exit_code == 2, f"exit {res.exit_code}: {res.output}\n{res.exception!r}"
    assert "error:" in res.stderr, res.output
    message = _text(case.message, env)
    text = res.stderr.split("error:", 1)[1] if case.where == "error" else res.output
    assert message in text, f"{message!r} not in:\n{res.output}"
    after = snapshot(env.root, writable)
    assert after == before, {
        k: (before.get(k), after.get(k))
        for k in before.keys() | after.keys()
        if before.get(k) != after.get(k)
    }
    assert {str(p): _hash(p) for p in case.keep(env)} == kept
    assert [p for p in case.absent(env) if p.exists()] == []


def test_the_corpus_is_broad() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) >= 100 and len(set(ids)) == len(ids)
    commands = {i.split("-")[0] for i in ids}
    assert {"run", "evaluate", "sweep", "leaderboard", "data", "classifiers", "models"} <= commands


def test_leaderboard_build_skips_records_whose_names_would_escape(env: Env) -> None:
    """Bad records beside a good one: the build succeeds, lists them as skipped, and writes
    nothing outside --out (no victim.json next to it, the victim folder untouched)."""
    records = (
        ok_record("good"),
        ok_record("dots", dataset="../victim"),
        ok_record("abs", dataset=str(env.victim)),
        ok_record("../x"),
    )
    for setup in _runs_with(*records):
        setup(env)
    before = snapshot(env.root, env.out)
    res = runner.invoke(
        app, ["leaderboard", "build", "--runs", str(env.root / "runs"), "--out", str(env.out)]
    )
    assert res.exit_code == 0, res.output
    assert "1 runs used, 3 records skipped" in res.output
    assert "'../victim' is not a safe name" in res.stderr
    assert snapshot(env.root, env.out) == before
    written = {p.name for p in env.out.iterdir()}
    assert {"toy.json", "toy.md"} <= written and not any("victim" in n for n in written)
    board = json.loads((env.out / "toy.json").read_text())
    assert len(board["skipped"]) == 3
