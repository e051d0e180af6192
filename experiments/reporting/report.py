"""Paper-style tables (Markdown, LaTeX, CSV) and PNG figures from stage outputs.

Every number here is read from files the earlier stages wrote (evaluation summaries, complexity
and speed tables, training logs) or from `experiments/published.yaml`; nothing is typed by hand.
Each Markdown report ends with the environment block of the machine that generated it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.atomic import atomic_path, write_text  # noqa: E402
from experiments.env import environment, environment_markdown  # noqa: E402
from experiments.published import PUBLISHED, load_published  # noqa: E402

REPORTS = Path("reports")
RUNS = Path("runs")
# The paper's Table 2 reports Libri2Mix; the "paper vs here" table compares against that column.
PAPER_DATASET = "libri2mix"


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_text(path, frame.to_csv(index=False, float_format="%.2f"))


def _save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def read_summary(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: evaluation summary missing (run the evaluate stage)")
    return json.loads(path.read_text())


def metric_stats(summary: dict[str, Any], metric: str) -> tuple[float, float]:
    """(mean, 95% CI half-width) of one metric of an evaluation summary."""
    stats = summary["metrics"][metric]
    return float(stats["mean"]), float(stats["ci95"])


def load_results(models: list[str], reports: Path) -> pd.DataFrame:
    complexity = pd.read_csv(reports / "complexity.csv").set_index("model")
    speed = pd.read_csv(reports / "speed.csv").set_index("model")
    rows = []
    for model in models:
        summary = read_summary(reports / "eval" / model)
        si_sdri, si_sdri_ci = metric_stats(summary, "si_sdr_i")
        sdri, sdri_ci = metric_stats(summary, "sdr_i")
        rows.append({
            "model": model,
            "si_sdri_db": si_sdri,
            "si_sdri_ci95": si_sdri_ci,
            "sdri_db": sdri,
            "sdri_ci95": sdri_ci,
            "n_utterances": int(summary["count"]),
            "params_m": float(complexity.loc[model, "params_m"]),
            "macs_g_per_s": float(complexity.loc[model, "macs_g_per_s_fvcore"]),
            "rtf": float(speed.loc[model, "rtf"]),
        })
    return pd.DataFrame(rows)


def _value(figure: dict[str, Any] | None, key: str = "value") -> float | None:
    value = None if figure is None else figure.get(key)
    return None if value is None else float(value)


def paper_vs_here(results: pd.DataFrame, published: dict[str, Any]) -> pd.DataFrame:
    """Published figures beside ours: Libri2Mix SI-SDRi/SDRi (first entry of the published
    results, the paper's Table 2 where it has the model), params and MACs."""
    rows = []
    for row in results.itertuples():
        entry = published["models"].get(row.model, {})
        paper = (entry.get("results", {}).get(PAPER_DATASET) or [None])[0]
        paper_si, paper_sdr = _value(paper, "si_sdri"), _value(paper, "sdri")
        paper_params = _value(entry.get("params_m"))
        paper_macs = _value(entry.get("macs_g_per_s"))
        rows.append({
            "model": row.model,
            "si_sdri_paper": paper_si,
            "si_sdri_here": row.si_sdri_db,
            "si_sdri_diff": None if paper_si is None else row.si_sdri_db - paper_si,
            "sdri_paper": paper_sdr,
            "sdri_here": row.sdri_db,
            "params_m_paper": paper_params,
            "params_m_here": row.params_m,
            "params_m_diff": None if paper_params is None else row.params_m - paper_params,
            "macs_g_per_s_paper": paper_macs,
            "macs_g_per_s_here": row.macs_g_per_s,
            "source": paper["source"] if paper else "–",
        })
    return pd.DataFrame(rows)


def load_ablation(reports: Path) -> pd.DataFrame:
    """One row per ablation cell, its settings read from the `cell` its summary records."""
    columns = ["num_scales", "d_state", "ssm", "si_sdri_db", "si_sdri_ci95", "sdri_db"]
    rows = []
    root = reports / "ablation"
    for path in sorted(root.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        cell = summary.get("cell")
        if not isinstance(cell, dict):
            raise ValueError(f"{path}: no `cell` settings (written by an older ablate stage; "
                             "rerun it with `dvc repro -f ablate`)")
        si_sdri, ci = metric_stats(summary, "si_sdr_i")
        rows.append({"num_scales": int(cell["num_scales"]), "d_state": int(cell["d_state"]),
                     "ssm": str(cell["ssm"]), "si_sdri_db": si_sdri, "si_sdri_ci95": ci,
                     "sdri_db": metric_stats(summary, "sdr_i")[0]})
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["ssm", "num_scales", "d_state"], ignore_index=True)


def markdown_table(frame: pd.DataFrame) -> str:
    cells = frame.astype(object).where(frame.notna(), None)  # tabulate's missingval needs None
    return cells.to_markdown(index=False, floatfmt=".2f", missingval="–") + "\n"


def results_display(results: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "model": results["model"],
        "SI-SDRi (dB)": [f"{m:.2f} ± {c:.2f}" for m, c in
                         zip(results["si_sdri_db"], results["si_sdri_ci95"], strict=True)],
        "SDRi (dB)": [f"{m:.2f} ± {c:.2f}" for m, c in
                      zip(results["sdri_db"], results["sdri_ci95"], strict=True)],
        "params (M)": results["params_m"],
        "MACs (G/s)": results["macs_g_per_s"],
        "RTF": results["rtf"],
    })


def latex_table(display: pd.DataFrame, caption: str) -> str:
    """A booktabs table; pandas escapes LaTeX's special characters (_ % & # ...)."""
    latex = display.style.hide(axis="index").format(precision=2, escape="latex", na_rep="--")
    latex = latex.format_index(escape="latex", axis=1).to_latex(
        caption=caption.replace("_", r"\_"), position="t", position_float="centering", hrules=True,
        column_format="l" + "r" * (len(display.columns) - 1))
    return latex.replace("±", r"$\pm$")


def training_curves(models: list[str], runs: Path) -> dict[str, dict[str, pd.DataFrame]]:
    """Train and validation loss curves logged by DVCLive, per model (missing logs skipped)."""
    curves: dict[str, dict[str, pd.DataFrame]] = {}
    for model in models:
        metrics_dir = runs / model / "dvclive" / "plots" / "metrics"
        for split in ("train", "val"):
            path = metrics_dir / split / "loss.tsv"
            if path.is_file() and len(frame := pd.read_csv(path, sep="\t")):
                curves.setdefault(model, {})[split] = frame
    return curves


def plot_sisdri_vs_macs(results: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = 40 + 25 * results["params_m"]
    ax.scatter(results["macs_g_per_s"], results["si_sdri_db"], s=sizes, alpha=0.6)
    for row in results.itertuples():
        ax.annotate(row.model, (row.macs_g_per_s, row.si_sdri_db), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("MACs (G per second of audio, fvcore, FFT counted)")
    ax.set_ylabel("SI-SDRi (dB)")
    ax.set_title("SI-SDRi vs MACs (marker area ~ params)")
    ax.grid(alpha=0.3)
    _save_figure(fig, path)


def plot_training_curves(curves: dict[str, dict[str, pd.DataFrame]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (model, splits) in enumerate(curves.items()):
        color = f"C{i}"
        if "train" in splits:
            ax.plot(splits["train"]["step"], splits["train"]["loss"], color=color, alpha=0.5,
                    marker=".", label=f"{model} train")
        if "val" in splits:
            ax.plot(splits["val"]["step"], splits["val"]["loss"], color=color, marker="o",
                    linestyle="--", label=f"{model} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (negative SI-SDR, dB)")
    ax.set_title("Training curves (solid: train, dashed: validation)")
    if curves:
        ax.legend(fontsize=6, ncol=2)
    else:
        ax.text(0.5, 0.5, "no training logs found", ha="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    _save_figure(fig, path)


def plot_ablation_heatmap(ablation: pd.DataFrame, path: Path) -> None:
    kinds = sorted(ablation["ssm"].unique()) if len(ablation) else []
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(4.5 * max(1, len(kinds)), 3.8),
                             squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        grid = ablation[ablation["ssm"] == kind].pivot(
            index="num_scales", columns="d_state", values="si_sdri_db")
        image = ax.imshow(grid.values, cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(grid.columns)), grid.columns)
        ax.set_yticks(range(len(grid.index)), grid.index)
        ax.set_xlabel("SSM state size")
        ax.set_ylabel("number of scales")
        ax.set_title(f"SI-SDRi (dB), {kind.upper()}")
        for (i, j), value in pd.DataFrame(grid.values).stack().items():
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w", fontsize=9)
        fig.colorbar(image, ax=ax)
    if not kinds:
        axes[0][0].text(0.5, 0.5, "no ablation results", ha="center")
    _save_figure(fig, path)


def build_reports(cfg: dict[str, Any], reports: Path = REPORTS, runs: Path = RUNS,
                  published_path: Path = PUBLISHED) -> dict[str, Any]:
    models = list(cfg["models"])
    env = environment(cfg["profile"], int(cfg["threads"]))
    env_md = "\n## Environment\n\n" + environment_markdown(env)
    results = load_results(models, reports)
    published = load_published(published_path)
    sources = "\n".join(f"- `{key}`: {text}" for key, text in published["sources"].items())
    versus = paper_vs_here(results, published)
    ablation = load_ablation(reports)
    display = results_display(results)
    budget = cfg.get("train", {})
    cell_budget = cfg["ablation"].get("max_time_s") or budget.get("max_time_s")
    scope = (
        f"Profile `{cfg['profile']}`: dataset `{cfg['data'].get('source')}` "
        f"({cfg['data'].get('task')}, {cfg['data'].get('sample_rate')} Hz, "
        f"{cfg['data'].get('mode')}); every model trained with the same budget "
        f"(max_time_s={budget.get('max_time_s')}, max_steps={budget.get('max_steps')}, "
        f"segment {budget.get('segment_s')} s), an equal-compute comparison. SI-SDRi/SDRi: mean "
        "± 95% confidence interval over test utterances. MACs per second of input audio (fvcore, "
        "FFTs and SSM ops counted); RTF: inference time / audio duration."
    )
    _write_csv(reports / "results.csv", results)
    write_text(reports / "results.md",
                      f"# Results\n\n{scope}\n\n{markdown_table(display)}{env_md}")
    write_text(reports / "results.tex",
                      latex_table(display, f"Results, profile {cfg['profile']}"))
    write_text(reports / "paper_vs_here.md",
                      "# Paper vs here\n\nPublished figures (experiments/published.yaml; Libri2Mix "
                      "results from the S4M paper's Table 2 where it lists the model) beside this "
                      "run's. Differences are here minus paper. Only the paper profile on the real "
                      "corpus is comparable in dB; "
                      f"params and MACs are comparable on any profile.\n\n{markdown_table(versus)}"
                      f"\nSources:\n\n{sources}\n{env_md}")
    _write_csv(reports / "ablation.csv", ablation)
    write_text(reports / "ablation.md",
                      f"# S4M ablation: scales x state size x SSM kind\n\nBase model "
                      f"`{cfg['ablation']['base_model']}` with each cell's overrides; training "
                      f"time budget {cell_budget} s per cell, otherwise the main table's "
                      "settings.\n\n"
                      f"{markdown_table(ablation)}{env_md}")
    figures = reports / "figures"
    plot_sisdri_vs_macs(results, figures / "sisdri_vs_macs.png")
    plot_training_curves(training_curves(models, runs), figures / "training_curves.png")
    plot_ablation_heatmap(ablation, figures / "ablation_heatmap.png")
    summary = {
        "profile": cfg["profile"],
        "si_sdri_db": {r.model: round(r.si_sdri_db, 2) for r in results.itertuples()},
        "best_ablation": (ablation.sort_values("si_sdri_db").iloc[-1][
            ["num_scales", "d_state", "ssm", "si_sdri_db"]].to_dict() if len(ablation) else None),
    }
    write_text(reports / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    return summary
