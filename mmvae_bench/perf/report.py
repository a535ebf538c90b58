"""Rich tables of a performance record (what ``mmvae-bench bench`` prints)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

__all__ = ["tables"]


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _spread(r: dict[str, float]) -> str:
    return f"{_num(r['q1'])}–{_num(r['q3'])}"


def _duration(s: float) -> str:
    return f"{s / 3600:.2f} h" if s > 3600 else f"{s:.0f} s"


def tables(record: dict[str, Any]) -> list[Table]:
    """One table per section of ``record`` (training, HMC, evaluation, ratios, reference)."""
    env = record["environment"]
    where = f"{env['device']}, {env['threads']} thread(s), {record['mode']} mode"
    out = []
    if record.get("training"):
        t = Table(title=f"training samples/s ({where})")
        for col in ("model", "arch", "stage", "variant", "median", "IQR", "peak MiB"):
            t.add_column(col, justify="right" if col in ("median", "IQR", "peak MiB") else "left")
        for r in record["training"]:
            mem = r.get("peak_gpu_mib", r.get("peak_rss_mib"))
            t.add_row(
                r["model"],
                r["arch"],
                r["stage"],
                r["variant"],
                _num(r["samples_per_s"]["median"]),
                _spread(r["samples_per_s"]),
                f"{mem:.0f}",
            )
        out.append(t)
    if record.get("hmc"):
        t = Table(title=f"subset posterior sampling, PolyMNIST architecture ({where})")
        for col in ("|S|", "variant", "settings", "chains", "s / 128 samples", "samples/s", "acc."):
            t.add_column(col)
        for r in record["hmc"]:
            h = r.get("hmc")
            t.add_row(
                str(r["subset_size"]),
                r["variant"],
                f"{h['steps']}x{h['n_leapfrog']} @ {h['step_size']}" if h else "flow inverse",
                str(r["chains"]),
                _num(r["s_per_128_samples"]),
                _num(r["samples_per_s"]["median"]),
                f"{r['acceptance']:.3f}" if r.get("acceptance") is not None else "",
            )
        out.append(t)
    if record.get("evaluation"):
        t = Table(title=f"coherence protocols on 10,000 PolyMNIST-sized test tuples ({where})")
        for col in ("protocol", "kernels", "per batch by |S| (s)", "joint (s)", "total", "how"):
            t.add_column(col)
        for r in record["evaluation"]:
            per = r["per_subset_size"].items()
            sizes = ", ".join(f"{k}: {v['s_per_batch']:.2g}" for k, v in per)
            total = _duration(r["total_s"])
            how = f"extrapolated, {r['batches']} batches"
            if "measured_total_s" in r:
                how += f"; measured {r['measured_total_s']:.0f} s"
            t.add_row(
                r["protocol"],
                "compiled" if r.get("compiled") else "eager",
                sizes,
                f"{r['joint_s']:.1f}",
                total,
                how,
            )
        out.append(t)
    if record.get("ratios"):
        t = Table(title="speed-ups measured side by side (same process)")
        for col in ("what", "from -> to", "speed-up"):
            t.add_column(col)
        for r in record["ratios"]:
            t.add_row(r["what"], r["vs"], f"{r['speedup']:.2f}x")
        out.append(t)
    ref = record.get("reference")
    if ref and "skipped" in ref:
        out.append(Table(title=f"same-process comparison with MultiVae skipped: {ref['skipped']}"))
    elif ref:
        out.append(_reference_table(ref, where))
    return out


def _reference_table(ref: dict[str, Any], where: str) -> Table:
    """Our JNF and MultiVae's, alternated in this process: medians, spreads, ratios."""
    p = ref["parameters"]
    n = ref["settings"]["repeats"]
    t = Table(
        title=f"JNF vs MultiVae in this process, alternating, {n} rounds ({where}; "
        f"parameters: ours {p['ours']:,}, MultiVae {p['reference']:,})"
    )
    for col in ("what", "unit", "ours (IQR)", "MultiVae (IQR)", "speed-up", "per round"):
        t.add_column(col)

    def cells(row: dict[str, Any]) -> tuple[str, str]:
        r = row["ratio"]
        return f"{r['speedup']:.2f}x", f"{r['per_round_min']:.2f}–{r['per_round_max']:.2f}x"

    for stage, row in ref["training"].items():
        o, m = row["ours"]["per_s"], row["reference"]["per_s"]
        t.add_row(
            f"stage {stage}",
            "samples/s",
            f"{_num(o['median'])} ({_spread(o)})",
            f"{_num(m['median'])} ({_spread(m)})",
            *cells(row),
        )
    h = ref["hmc"]
    s = h["hmc"]
    what = f"|S|=2 HMC {s['steps']}x{s['n_leapfrog']}, {h['chains']} chains"
    o, m = h["ours"]["s_per_call"], h["reference"]["s_per_call"]
    t.add_row(
        what,
        "s / call",
        f"{o['median_s']:.3g} ({o['q1_s']:.3g}–{o['q3_s']:.3g})",
        f"{m['median_s']:.3g} ({m['q1_s']:.3g}–{m['q3_s']:.3g})",
        *cells(h),
    )
    if h["extrapolated_to_paper_hmc"]:
        t.add_row(
            "  100x10, extrapolated",
            "s / 128 samples",
            f"{h['ours']['s_per_128_samples_at_paper_hmc']:.3g}",
            f"{h['reference']['s_per_128_samples_at_paper_hmc']:.3g}",
            "",
            "",
        )
    return t
