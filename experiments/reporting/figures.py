"""The report stage's PNG figures (matplotlib, Agg): SI-SDRi against MACs, validation curves,
the ablation heatmap, time and memory against input length."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FixedLocator,
    FuncFormatter,
    MaxNLocator,
    NullFormatter,
)

from experiments.atomic import atomic_path  # noqa: E402
from experiments.reporting.rule import NOT_A_RESULT, Verdict, finite  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def plain_log_ticks(ax: plt.Axes, axis: str = "x") -> None:
    """Log-axis ticks at 1-2-5 (finer when the range is narrow) printed as plain numbers: no
    "3x10^0" minor labels running into each other."""
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    exps = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 4, 5, 6, 8)):
        ticks = [m * 10.0**e for e in exps for m in mantissas if lo <= m * 10.0**e <= hi]
        if len(ticks) >= 3:
            break
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def stamp(ax: plt.Axes) -> None:
    ax.text(0.5, 0.5, NOT_A_RESULT.upper(), transform=ax.transAxes, ha="center", va="center",
            fontsize=16, color="0.6", alpha=0.35, rotation=20, zorder=0)


def plot_sisdri_vs_macs(results: pd.DataFrame, verdict: Verdict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sizes = 40 + 25 * results["params_m"]
    color = "C0" if verdict.is_result else "0.55"
    ax.scatter(results["macs_g_per_s"], results["si_sdri_db"], s=sizes, alpha=0.6, color=color)
    for row in results.itertuples():
        ax.annotate(row.model, (row.macs_g_per_s, row.si_sdri_db), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.15)
    plain_log_ticks(ax)
    ax.set_xlabel("MACs (G per second of audio, fvcore, FFT counted)")
    ax.set_ylabel(verdict.label("SI-SDRi (dB)") if verdict.is_result else "SI-SDRi (dB)")
    title = "SI-SDRi vs MACs (marker area ~ params)"
    if not verdict.is_result:
        title = f"SI-SDRi vs MACs: {NOT_A_RESULT}\n({verdict.reason})"
        stamp(ax)
    ax.set_title(title, fontsize=9 if not verdict.is_result else 11)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def validation_curves(models: list[str], runs: Path) -> dict[str, pd.DataFrame]:
    """Validation loss logged by DVCLive per model (models without a log are left out)."""
    curves = {}
    for model in models:
        path = runs / model / "dvclive" / "plots" / "metrics" / "val" / "loss.tsv"
        if path.is_file() and len(frame := pd.read_csv(path, sep="\t")):
            curves[model] = frame
    return curves


def plot_training_curves(curves: dict[str, pd.DataFrame], results: pd.DataFrame,
                         verdict: Verdict, path: Path) -> None:
    """Validation SI-SDR (the negated neg-SI-SDR loss) against step and against training MACs,
    one line per model."""
    fig, (by_step, by_macs) = plt.subplots(1, 2, figsize=(11, 4.2))
    info = results.set_index("model")
    no_macs = []
    for i, (model, frame) in enumerate(curves.items()):
        score = -frame["loss"]  # every training loss is a negated SI-SDR or SNR
        style = dict(color=f"C{i}", marker="o", markersize=3, label=model)
        by_step.plot(frame["step"], score, **style)
        per_step = info.loc[model, "gmacs_per_step"]
        if pd.notna(per_step):
            by_macs.plot(frame["step"] * float(per_step) / 1e3, score, **style)
        else:
            no_macs.append(model)
    losses = set(results["loss"].dropna())
    metric = "SNR" if losses == {"neg_snr"} else "SI-SDR"
    for ax in (by_step, by_macs):
        ax.set_ylabel(f"validation {metric} (dB)")
        ax.grid(alpha=0.3)
        if not curves:
            ax.text(0.5, 0.5, "no training logs found", ha="center", transform=ax.transAxes)
    by_step.set_xlabel("training step")
    by_step.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_step.set_xlim(left=0)
    by_macs.set_xlabel("training MACs (T; forward MACs x forward+backward factor)")
    if by_macs.lines:
        by_macs.set_xscale("log")
        plain_log_ticks(by_macs)
        by_macs.legend(fontsize=7)
    if by_step.lines:
        by_step.legend(fontsize=7)
    if no_macs:
        by_macs.text(0.02, 0.02, f"no MACs per step recorded: {', '.join(no_macs)}",
                     transform=by_macs.transAxes, fontsize=7)
    title = "Validation SI-SDR during training" if metric == "SI-SDR" else (
        "Validation SNR during training")
    fig.suptitle(title if verdict.is_result else f"{title}: {NOT_A_RESULT} ({verdict.reason})",
                 fontsize=10)
    save_figure(fig, path)


HEATMAP_ROWS = (
    ("si_sdri_db", "SI-SDRi (dB)", "{:.2f}"),
    ("params_m", "params (M)", "{:.3f}"),
    ("macs_g_per_s_fvcore", "MACs, fvcore (G/s)", "{:.2f}"),
    ("macs_g_per_s_ptflops", "MACs, ptflops (G/s)", "{:.2f}"),
    ("infer_s_median", "inference time (s, 1 thread)", "{:.3f}"),
)


def plot_ablation_heatmap(ablation: pd.DataFrame, verdict: Verdict, path: Path) -> None:
    """One row of panels per column (quality, then costs), one panel per SSM kind; the panels
    of a row share one colour scale (one colour bar). Cells of the global-layer axis other than
    the SSM kind's own global layer are left out (see `plot_global_layers`)."""
    ablation = ablation[ablation["global_layer"] == ablation["ssm"]]
    kinds = sorted(ablation["ssm"].unique()) if len(ablation) else []
    rows = [r for r in HEATMAP_ROWS if finite(ablation[r[0]])]
    if not kinds or not rows:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no ablation results", ha="center", va="center")
        ax.set_axis_off()
        save_figure(fig, path)
        return
    scales = sorted(ablation["num_scales"].unique())
    states = sorted(ablation["d_state"].unique())
    fig, axes = plt.subplots(len(rows), len(kinds), squeeze=False, layout="constrained",
                             figsize=(3.4 * len(kinds) + 1.4, 2.3 * len(rows) + 0.4))
    for r, (column, label, fmt) in enumerate(rows):
        values = ablation[column].astype(float)
        vmin, vmax = np.nanmin(values), np.nanmax(values)
        if vmin == vmax:
            vmin, vmax = vmin - 0.5, vmax + 0.5
        title = verdict.label(label) if column == "si_sdri_db" else label
        for ax, kind in zip(axes[r], kinds, strict=True):
            grid = (ablation[ablation["ssm"] == kind]
                    .pivot(index="num_scales", columns="d_state", values=column)
                    .reindex(index=scales, columns=states).astype(float))
            image = ax.imshow(grid.values, cmap="viridis", aspect="auto", origin="lower",
                              vmin=vmin, vmax=vmax)
            ax.set_xticks(range(len(states)), states)
            ax.set_yticks(range(len(scales)), scales)
            if r == len(rows) - 1:
                ax.set_xlabel("SSM state size (d_state)", fontsize=8)
            if ax is axes[r][0]:
                ax.set_ylabel("number of scales", fontsize=8)
            ax.set_title(f"{kind.upper()}: {title}", fontsize=8)
            for (i, j), value in np.ndenumerate(grid.values):
                if math.isfinite(value):
                    light = (value - vmin) / (vmax - vmin) > 0.6
                    ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=8,
                            color="k" if light else "w")
                else:
                    ax.text(j, i, "not run", ha="center", va="center", fontsize=7)
        fig.colorbar(image, ax=list(axes[r]), shrink=0.9).set_label(label, fontsize=8)
    fig.suptitle("S4M ablation (each row: one colour scale shared by its panels)", fontsize=10)
    save_figure(fig, path)


def calls_per_point(frame: pd.DataFrame) -> str:
    """How many timed calls each point of the length sweep is (`speed.length_repeats`): one call
    is a single sample of a noisy machine, which the figure should say."""
    counts = sorted({int(n) for n in frame.get("repeats", pd.Series(dtype=float)).dropna()})
    if not counts:
        return "calls per point not recorded"
    if counts == [1]:
        return "one call per point"
    return f"median of {'/'.join(map(str, counts))} calls per point"


def plot_speed_vs_length(frame: pd.DataFrame, env: dict[str, Any], path: Path) -> None:
    """Inference time and peak memory against input length, log-log, a line per model."""
    fig, (timing, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (model, rows) in enumerate(frame.groupby("model", sort=False)):
        ok = rows[rows["status"] == "ok"]
        slow = rows.loc[rows["status"] != "ok", "length_s"]
        status = rows.loc[rows["status"] != "ok", "status"]
        label = model + (f" ({status.iloc[0].replace('_', ' ')} from "
                         f"{slow.min():g} s)" if len(slow) else "")
        for ax, column in ((timing, "infer_s"), (memory, "peak_mem_mb")):
            ax.plot(ok["length_s"], ok[column], marker="o", color=f"C{i}", label=label)
    if frame["status"].eq("ok").any():
        lengths = sorted(frame["length_s"].unique())
        timing.plot(lengths, lengths, color="0.5", linestyle=":", label="real time")
        for ax in (timing, memory):
            ax.set_xscale("log")
            ax.set_yscale("log")
            plain_log_ticks(ax, "x")
            plain_log_ticks(ax, "y")
        timing.legend(fontsize=7)
    else:
        timing.text(0.5, 0.5, "no length measurements", ha="center", transform=timing.transAxes)
    timing.set_ylabel(f"inference time (s), batch 1, {calls_per_point(frame)}")
    memory.set_ylabel("peak memory above the model's (MB)")
    for ax in (timing, memory):
        ax.set_xlabel("input length (s)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Cost against input length ({env.get('device', 'device not recorded')}, "
                 f"{env.get('threads', '?')} thread(s), commit {env.get('commit', '?')})",
                 fontsize=10)
    save_figure(fig, path)
