"""Figures of the results profile: validation curves and the listening examples' spectrograms."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from experiments.atomic import atomic_path  # noqa: E402

AXES = {"step": "optimizer steps", "train_tmacs": "training MACs (T)",
        "wall_s": "training wall time (s, one thread per run, two runs at once)"}


def save(fig: plt.Figure, path: Path, dpi: int = 110) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_curves(curves: pd.DataFrame, axis: str, title: str, path: Path) -> None:
    """Validation SI-SDRi against `axis` (a column of `curves`): each seed a thin line, the
    seed mean (at the validation steps) a thick one, one colour per model; 5 and 10 dB marked."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (model, group) in enumerate(curves.groupby("model", sort=False)):
        colour = f"C{i}"
        for _, seed in group.groupby("seed"):
            ax.plot(seed[axis], seed["val_sisdri"], color=colour, alpha=0.3, linewidth=0.8)
        mean = group.groupby("step")[[axis, "val_sisdri"]].mean()
        seeds = group["seed"].nunique()
        ax.plot(mean[axis], mean["val_sisdri"], color=colour, linewidth=2,
                label=f"{model} (mean of {seeds} seed{'s' if seeds > 1 else ''})")
    for level in (5, 10):
        ax.axhline(level, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel(AXES[axis])
    ax.set_ylabel("validation SI-SDRi (dB)")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    save(fig, path)


def plot_spectrograms(examples: list[dict[str, torch.Tensor]], utt_ids: list[str],
                      sample_rate: int, title: str, path: Path) -> None:
    """One column per example, one row per signal (mixture, references, each model's
    estimates), log-magnitude STFT (32 ms Hann window, 8 ms hop) on one colour scale per
    column."""
    labels = list(examples[0])
    n_fft = int(0.032 * sample_rate)
    window = torch.hann_window(n_fft)
    fig, axes = plt.subplots(len(labels), len(examples), sharex="col", squeeze=False,
                             figsize=(5.5 * len(examples), 1.15 * len(labels)))
    for col, (signals, utt) in enumerate(zip(examples, utt_ids, strict=True)):
        specs = {label: 20 * torch.log10(torch.stft(
            wav.float(), n_fft, hop_length=n_fft // 4, window=window,
            return_complex=True).abs() + 1e-8) for label, wav in signals.items()}
        top = max(float(s.max()) for s in specs.values())
        for row, label in enumerate(labels):
            ax = axes[row, col]
            wav = signals[label]
            ax.imshow(specs[label].numpy(), origin="lower", aspect="auto", cmap="magma",
                      extent=(0, wav.numel() / sample_rate, 0, sample_rate / 2000),
                      vmin=top - 80, vmax=top)
            ax.set_yticks([0, 2, 4])
            if col == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            if row == 0:
                ax.set_title(utt, fontsize=8)
        axes[-1, col].set_xlabel("time (s); frequency 0-4 kHz")
    fig.suptitle(title, fontsize=10)
    save(fig, path, dpi=70)  # spectrograms compress badly: a few hundred kB, not MBs


def plot_quality_vs_cost(models: pd.DataFrame, path: Path, title: str) -> None:
    """Mean SI-SDRi (with its bootstrap interval) against MACs per second, one point a model."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, row in enumerate(models.itertuples()):
        err = np.array([[row.si_sdri_db - row.si_sdri_ci95_low],
                        [row.si_sdri_ci95_high - row.si_sdri_db]])
        ax.errorbar(row.macs_g_per_s, row.si_sdri_db, yerr=err, fmt="o", color=f"C{i}",
                    capsize=3)
        ax.annotate(row.model, (row.macs_g_per_s, row.si_sdri_db), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.set_xlabel("MACs per second of audio (G, fvcore)")
    ax.set_ylabel("test SI-SDRi (dB)")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    save(fig, path)


def plot_global_layers(points: pd.DataFrame, quality_label: str, path: Path,
                       legend: dict[str, str] | None = None,
                       time_label: str = "inference time (s, 1 thread)") -> None:
    """S4M's global layers (and reference models, `kind` "model") by cost: SI-SDRi against MACs
    and against 1-thread inference time, points labelled; `legend` names each kind (e.g. with
    its training budget). Without SI-SDRi (cells not trained yet) it shows MACs against time
    instead, so the costs are visible either way."""
    has_quality = bool(points["si_sdri_db"].notna().any())
    panels = ([("macs_g_per_s_fvcore", "MACs (G per second of audio, fvcore)"),
               ("infer_s_median", time_label)] if has_quality else
              [("infer_s_median", time_label)])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels, strict=True):
        y_col = "si_sdri_db" if has_quality else "macs_g_per_s_fvcore"
        valid = points[points[column].notna() & points[y_col].notna()]
        span = tuple(float(np.ptp(valid[c])) or 1.0 if len(valid) else 1.0 for c in (column, y_col))
        placed: list[tuple[float, float]] = []
        for kind, marker, colour in (("global layer", "o", "tab:blue"), ("model", "s", "0.4")):
            sel = valid[valid["kind"] == kind]
            ax.scatter(sel[column], sel[y_col], marker=marker, color=colour,
                       label=(legend or {}).get(kind, kind), zorder=3)
            for _, row in sel.sort_values(y_col, ascending=False).iterrows():
                x, y = row[column], row[y_col]
                # labels of points close to an already labelled one step down, not over it
                near = sum(abs(x - px) < 0.05 * span[0] and abs(y - py) < 0.08 * span[1]
                           for px, py in placed)
                placed.append((x, y))
                ax.annotate(row["label"], (x, y), fontsize=7, xytext=(4, 3 - 8 * near),
                            textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel(quality_label if has_quality else "MACs (G per second of audio, fvcore)")
        ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
        ax.grid(alpha=0.3)
    # below the panels: inside, it covers points wherever they fall
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", ncol=2, fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("S4M's global layer: quality against cost" if has_quality else
                 "S4M's global layer: cost (quality not measured yet)", fontsize=10)
    save(fig, path)
