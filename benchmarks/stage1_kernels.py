"""Where the demo's training time goes on the CPU, and what did not buy it back (issue 14 item 4).

    .venv/bin/python benchmarks/stage1_kernels.py layers [--batch 64 --repeats 40]
    .venv/bin/python benchmarks/stage1_kernels.py batch [--rounds 2 --samples 3072]
    .venv/bin/python benchmarks/stage1_kernels.py denormal RUN_DIR [--steps 40]

``layers``: forward and backward milliseconds of each convolution of the polymnist-lite nets
(``Conv28Encoder``/``Conv28Decoder`` at width 16, batch 64) with oneDNN and with torch's own
kernels, and the GFLOP/s oneDNN reaches; for the decoders' transposed convolutions also two
exact rewrites, a matrix product plus ``fold`` and a sub-pixel form (a stride-1 convolution plus
``pixel_shuffle``), each checked against ``ConvTranspose2d`` before it is timed.
``batch``: JNF's stage-1 and stage-2 samples/s on polymnist-lite at batch 64, 128 and 256,
alternated over ``--rounds``. ``denormal``: stage-1 samples/s of a trained run's model and of a
fresh one, with and without ``torch.set_flush_denormal`` (is a trained model slower?).
All at 1 torch thread; the CPU's name is printed with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import Tensor, nn

from mmvae_bench.plugins import load_registry
from mmvae_bench.results import cpu_name
from mmvae_bench.runner import load_dataset, load_run, resolve_model_config
from mmvae_bench.train import TrainSettings, train

# (name, layer, input shape without the batch) of Conv28Encoder / Conv28Decoder at width 16
LAYERS = [
    ("encoder 3->16, 28->14", nn.Conv2d(3, 16, 4, 2, 1), (3, 28, 28)),
    ("encoder 16->32, 14->7", nn.Conv2d(16, 32, 4, 2, 1), (16, 14, 14)),
    ("encoder 32->64, 7->4", nn.Conv2d(32, 64, 3, 2, 1), (32, 7, 7)),
    ("decoder 64->32, 4->7", nn.ConvTranspose2d(64, 32, 3, 2, 1), (64, 4, 4)),
    ("decoder 32->16, 7->14", nn.ConvTranspose2d(32, 16, 4, 2, 1), (32, 7, 7)),
    ("decoder 16->3, 14->28", nn.ConvTranspose2d(16, 3, 4, 2, 1), (16, 14, 14)),
]


def transposed_by_fold(layer: nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """The layer as W^T x per input pixel, the overlapping blocks summed by ``fold``."""
    (k, _), (s, _), (p, _) = layer.kernel_size, layer.stride, layer.padding
    b, c_in, h, w = x.shape
    c_out = layer.out_channels
    cols = layer.weight.reshape(c_in, c_out * k * k).t() @ x.reshape(b, c_in, h * w)
    y = F.fold(cols, ((h - 1) * s - 2 * p + k, (w - 1) * s - 2 * p + k), k, stride=s, padding=p)
    return y + layer.bias.view(1, c_out, 1, 1)


# Sub-pixel form of a stride-2, padding-1 transposed convolution: output phase 0 (even) and 1
# (odd) along an axis take input offsets -1, 0, +1 (positions 0, 1, 2 of a 3-window) through
# these kernel taps.
_PHASE_TAPS = {4: ({0: 3, 1: 1}, {1: 2, 2: 0}), 3: ({1: 1}, {1: 2, 2: 0})}


def transposed_by_subpixel(layer: nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """The layer as one 3x3 convolution to 4x the channels, then ``pixel_shuffle(2)``."""
    k = layer.kernel_size[0]
    w = layer.weight  # (C_in, C_out, k, k)
    c_out = w.shape[1]
    phases = w.new_zeros(c_out, 2, 2, w.shape[0], 3, 3)
    for py, taps_y in enumerate(_PHASE_TAPS[k]):
        for px, taps_x in enumerate(_PHASE_TAPS[k]):
            for a, ty in taps_y.items():
                for b, tx in taps_x.items():
                    phases[:, py, px, :, a, b] = w[:, :, ty, tx].t()
    y = F.conv2d(x, phases.flatten(0, 2), layer.bias.repeat_interleave(4), padding=1)
    y = F.pixel_shuffle(y, 2)
    return y[:, :, :-1, :-1] if k == 3 else y  # k = 3: (2H - 1) rows, not 2H


def _fwd_bwd_ms(fn, x: Tensor, repeats: int) -> tuple[float, float]:
    for _ in range(3):
        fn(x).sum().backward()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    fwd = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(x).sum().backward()
    return 1e3 * fwd, 1e3 * ((time.perf_counter() - t0) / repeats - fwd)


def layers(batch: int, repeats: int) -> None:
    print(f"{cpu_name()}, 1 thread, batch {batch}: forward / backward ms")
    for name, layer, shape in LAYERS:
        # the first layer sees data (no input gradient), the others activations
        x = torch.randn(batch, *shape, requires_grad=shape[0] != 3)
        y = layer(x)
        # multiply-adds: per output value C_in k k (conv), per input value C_out k k (transposed)
        transposed = isinstance(layer, nn.ConvTranspose2d)
        flop = 2 * (x if transposed else y).numel() * layer.weight[0].numel()
        variants = {"oneDNN": layer, "torch's own": layer}
        if transposed:
            for label, rewrite in (
                ("fold", transposed_by_fold),
                ("sub-pixel", transposed_by_subpixel),
            ):
                err = (rewrite(layer, x) - y).abs().max().item()
                assert err < 1e-4, f"{label} rewrite of {name} differs by {err}"
                variants[label] = lambda x, f=rewrite, layer=layer: f(layer, x)
        cells = []
        for label, fn in variants.items():
            torch.backends.mkldnn.enabled = label != "torch's own"
            fwd, bwd = _fwd_bwd_ms(fn, x, repeats)
            torch.backends.mkldnn.enabled = True
            extra = f" ({flop / fwd / 1e6:.1f} GFLOP/s fwd)" if label == "oneDNN" else ""
            cells.append(f"{label} {fwd:.2f} / {bwd:.2f}{extra}")
        print(f"  {name:22s} " + "; ".join(cells), flush=True)


def _stage_rates(model, ds, accelerator) -> tuple[float, ...]:
    settings = TrainSettings(epochs={"joint": 1, "unimodal": 1}, progress=False)
    return tuple(r.samples_per_s for r in train(model, ds, accelerator, settings))


def batch_sizes(rounds: int, samples: int) -> None:
    registry = load_registry()
    ds = load_dataset(registry, "polymnist-lite")
    part = dataclasses.replace(ds, train=ds.train.subset(torch.arange(samples)))
    entry = registry.model("jnf")
    print(f"{cpu_name()}, 1 thread, polymnist-lite, {samples} samples: stage 1 / stage 2 samples/s")
    for r in range(rounds):
        for bs in (64, 128, 256):
            torch.manual_seed(0)
            model = entry.cls(part, resolve_model_config(entry, part, {"batch_size": bs}))
            joint, unimodal = _stage_rates(model, part, Accelerator(cpu=True))
            print(f"  round {r} batch {bs:3d}: {joint:6.0f} / {unimodal:6.0f}", flush=True)


def denormal(run_dir: Path, steps: int) -> None:
    registry = load_registry()
    print(f"{cpu_name()}, 1 thread, {steps} stage-1 steps of batch 64: samples/s")
    for flush in (False, True, False, True):
        torch.set_flush_denormal(flush)
        for which in ("fresh", "trained"):
            model, ds, _ = load_run(run_dir, registry)
            if which == "fresh":
                torch.manual_seed(0)
                model = type(model)(ds, model.config)
            part = dataclasses.replace(
                ds, train=ds.train.subset(torch.arange(steps * model.config.batch_size))
            )
            settings = TrainSettings(epochs={"joint": 1, "unimodal": 0}, progress=False)
            [report, *_] = train(model, part, Accelerator(cpu=True), settings)
            print(
                f"  flush_denormal={flush!s:5s} {which:7s}: {report.samples_per_s:.0f}", flush=True
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("layers")
    a.add_argument("--batch", type=int, default=64)
    a.add_argument("--repeats", type=int, default=40)
    b = sub.add_parser("batch")
    b.add_argument("--rounds", type=int, default=2)
    b.add_argument("--samples", type=int, default=3072)
    d = sub.add_parser("denormal")
    d.add_argument("run_dir", type=Path)
    d.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.cmd == "layers":
        layers(args.batch, args.repeats)
    elif args.cmd == "batch":
        batch_sizes(args.rounds, args.samples)
    else:
        denormal(args.run_dir, args.steps)


if __name__ == "__main__":
    main()
