"""Paper-style tables (Markdown, LaTeX, CSV) and PNG figures from stage outputs.

Every number here is read from files the earlier stages wrote (evaluation summaries, training
metrics, complexity and speed tables, training logs) or from `experiments/published.yaml`;
nothing is typed by hand. Each table says where its figures were measured (the commit, machine
and threads in the evaluation summaries' and the complexity and speed JSONs' environment
blocks), and each Markdown report ends with the environment block of the machine that rendered
it.

Quality rule (`params.yaml: report`): SI-SDRi/SDRi columns count as results only when the best
model reaches `min_sisdri_db` and every model trained at least `min_steps` steps; otherwise the
table headers and figure titles say "training check, not a result" and the SI-SDRi-vs-MACs
figure is drawn as such.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
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

from experiments.atomic import atomic_path, write_text  # noqa: E402
from experiments.config import ConfigError, require  # noqa: E402
from experiments.env import environment, environment_markdown  # noqa: E402
from experiments.published import PUBLISHED, load_published  # noqa: E402
from experiments.training.budget import BUDGET_TOLERANCE  # noqa: E402

REPORTS = Path("reports")
RUNS = Path("runs")
# The paper's Table 2 reports Libri2Mix; the "paper vs here" table compares against that column.
PAPER_DATASET = "libri2mix"
NOT_A_RESULT = "training check, not a result"
REFERENCES = ("sepformer", "convtasnet")  # MAC ratios, which do not depend on the convention


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_text(path, frame.to_csv(index=False, float_format="%.4g"))


def _save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_summary(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: evaluation summary missing (run the evaluate stage)")
    return json.loads(path.read_text())


def metric_stats(summary: dict[str, Any], metric: str) -> tuple[float, float]:
    """(mean, 95% CI half-width; NaN with one utterance) of one metric of a summary."""
    stats = summary["metrics"][metric]
    ci = stats.get("ci95")
    return float(stats["mean"]), math.nan if ci is None else float(ci)


def _finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


# ---------------------------------------------------------------------------------- rule 2
@dataclass(frozen=True)
class Verdict:
    is_result: bool
    reason: str

    def label(self, text: str) -> str:
        return text if self.is_result else f"{text}, {NOT_A_RESULT}"


@dataclass(frozen=True)
class QualityRule:
    min_sisdri_db: float
    min_steps: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> QualityRule:
        sisdri, steps = require(cfg, "report.min_sisdri_db"), require(cfg, "report.min_steps")
        if not isinstance(sisdri, int | float) or not isinstance(steps, int) or steps < 0:
            raise ConfigError("params.yaml: report.min_sisdri_db must be a number and "
                              "report.min_steps a non-negative integer")
        return cls(float(sisdri), steps)

    def text(self) -> str:
        return (f"SI-SDRi counts as a result only when the best model reaches "
                f"{self.min_sisdri_db:g} dB and every model trained at least {self.min_steps} "
                "steps (params.yaml `report`)")

    def judge(self, si_sdri: Iterable[Any], steps: Iterable[Any]) -> Verdict:
        values, steps = _finite(si_sdri), list(steps)
        if not values:
            return Verdict(False, "no SI-SDRi values")
        best, reasons = max(values), []
        if best < self.min_sisdri_db:
            reasons.append(f"best SI-SDRi {best:.2f} dB < {self.min_sisdri_db:g} dB")
        known = _finite(steps)
        if len(known) < len(steps):
            reasons.append(f"{len(steps) - len(known)} run(s) without a training record")
        if known and min(known) < self.min_steps:
            reasons.append(f"fewest training steps {int(min(known))} < {self.min_steps}")
        if reasons:
            return Verdict(False, "; ".join(reasons))
        return Verdict(True, f"best SI-SDRi {best:.2f} dB >= {self.min_sisdri_db:g} dB and "
                             f"every run trained >= {self.min_steps} steps")


# ---------------------------------------------------------------------------------- inputs
def training_record(runs: Path, model: str) -> dict[str, Any]:
    """Steps, training MACs, wall time and budget from runs/<model>/train_metrics.json."""
    metrics = _read_json(runs / model / "train_metrics.json") or {}
    budget = metrics.get("budget") or {}
    return {"steps": metrics.get("steps"), "train_gmacs": metrics.get("train_gmacs"),
            "wall_time_s": metrics.get("wall_time_s"), "stopped_by": metrics.get("stopped_by"),
            "budget_mode": budget.get("mode"), "gmacs_per_step": budget.get("gmacs_per_step"),
            "budget_gmacs": budget.get("train_gmacs"),
            "loss": metrics.get("loss"), "train_threads": metrics.get("threads")}


def _row(table: pd.DataFrame, model: str, path: Path, stage: str) -> pd.Series:
    if model not in table.index:
        raise ValueError(f"{path}: no row for model {model!r} (rerun `dvc repro {stage}`)")
    return table.loc[model]


def load_results(models: list[str], reports: Path, runs: Path = RUNS) -> pd.DataFrame:
    complexity = pd.read_csv(reports / "complexity.csv").set_index("model")
    speed = pd.read_csv(reports / "speed.csv").set_index("model")
    rows = []
    for model in models:
        summary = read_summary(reports / "eval" / model)
        si_sdri, si_sdri_ci = metric_stats(summary, "si_sdr_i")
        sdri, sdri_ci = metric_stats(summary, "sdr_i")
        cost = _row(complexity, model, reports / "complexity.csv", "complexity")
        rows.append({
            "model": model, "si_sdri_db": si_sdri, "si_sdri_ci95": si_sdri_ci,
            "sdri_db": sdri, "sdri_ci95": sdri_ci, "n_utterances": int(summary["count"]),
            "params_m": float(cost["params_m"]),
            "macs_g_per_s": float(cost["macs_g_per_s_fvcore"]),
            "macs_g_per_s_ptflops": float(cost["macs_g_per_s_ptflops"]),
            "rtf": float(_row(speed, model, reports / "speed.csv", "speed")["rtf"]),
            # evaluate.bf16: the same test mixtures under bf16 autocast (NaN when off)
            **{column: summary["metrics"].get(metric, {}).get("mean", math.nan)
               for column, metric in BF16_EVAL.items()},
            **training_record(runs, model),
        })
    return pd.DataFrame(rows)


BF16_EVAL = {"si_sdri_bf16_db": "si_sdr_i_bf16", "bf16_vs_fp32_sisdr_db": "bf16_vs_fp32_si_sdr"}


def bf16_markdown(results: pd.DataFrame, verdict: Verdict) -> str:
    """Section on evaluate.bf16's check, for the models it ran for."""
    measured = results.dropna(subset=list(BF16_EVAL))
    if measured.empty:
        return ""
    table = measured[["model", "si_sdri_db", *BF16_EVAL]].rename(columns={
        "si_sdri_db": verdict.label("SI-SDRi float32 (dB)"),
        "si_sdri_bf16_db": verdict.label("SI-SDRi bf16 autocast (dB)"),
        "bf16_vs_fp32_sisdr_db": "bf16 output vs float32's, SI-SDR (dB)"})
    return ("\n## bfloat16 inference on the test mixtures (evaluate.bf16)\n\n"
            "Each model's trained weights run again under CPU bfloat16 autocast on the same test "
            "mixtures; sources in float32's order.\n\n" + markdown_table(table))


SPEED_MODES = {"eager": "infer_s_median", "compiled": "infer_s_compiled", "bf16": "infer_s_bf16",
               "onnx fp32": "infer_s_onnx", "onnx int8": "infer_s_onnx_int8"}
# per mode, the speed.csv column with its output's SI-SDR against eager float32's (int8: against
# ONNX float32's, itself within the export parity of eager's)
SPEED_AGREEMENT = {"compiled": "compiled_vs_eager_sisdr_db", "bf16": "bf16_vs_fp32_sisdr_db",
                   "onnx fp32": "onnx_vs_eager_sisdr_db", "onnx int8": "onnx_int8_vs_fp32_sisdr_db"}


def mac_rate_table(complexity: pd.DataFrame, speed: pd.DataFrame,
                   reference: str = "sepformer") -> pd.DataFrame:
    """Inference time per mode measured by the speed stage (eager; compiled and bf16 when
    `speed.compile` / `speed.bf16` were on), the MAC rate it achieves (fvcore MACs of the input
    / time), the time ratio to `reference` in the same mode, the output's SI-SDR against eager
    float32's, and for compiled mode the compile time and graph breaks."""
    rows = []
    for mode, column in SPEED_MODES.items():
        if column not in speed or speed[column].isna().all():
            continue
        times = speed[column]
        for model, seconds in times.items():
            if model not in complexity.index or pd.isna(seconds):
                continue
            audio_s = float(speed.loc[model, "infer_seconds"])
            gmacs = float(complexity.loc[model, "macs_g_per_s_fvcore"]) * audio_s
            ref = times.get(reference)
            agreement = speed.loc[model].get(SPEED_AGREEMENT.get(mode, ""))
            rows.append({"model": model, "mode": mode, "audio s": audio_s, "time s": seconds,
                         "GMAC/s achieved": gmacs / seconds,
                         f"time / {reference}": (seconds / ref if ref and pd.notna(ref)
                                                 else None),
                         "vs eager SI-SDR (dB)": agreement,
                         "compile s": speed.loc[model].get("compile_s") if mode == "compiled"
                         else None,
                         "graph breaks": speed.loc[model].get("graph_breaks")
                         if mode == "compiled" else None})
    return pd.DataFrame(rows).dropna(axis=1, how="all")  # columns of modes not measured


def _env_of(payload: dict[str, Any] | None, key: str = "environment") -> dict[str, Any]:
    return (payload or {}).get(key) or {}


def provenance(rows: Iterable[tuple[str, Iterable[dict[str, Any]]]]) -> pd.DataFrame:
    """Where each group of figures was measured: commit, machine, threads, date (distinct values
    joined when the inputs differ; "–" when unrecorded)."""
    out = []
    for figures, envs in rows:
        envs = list(envs)
        cell = {key: ", ".join(dict.fromkeys(str(e[key]) for e in envs if e.get(key))) or "–"
                for key in ("commit", "device", "threads", "date", "profile")}
        out.append({"figures": figures, **cell})
    return pd.DataFrame(out)


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    cells = frame.astype(object).where(frame.notna(), None)  # tabulate's missingval needs None
    return cells.to_markdown(index=False, floatfmt=floatfmt, missingval="–") + "\n"


def _pm(means: Iterable[float], cis: Iterable[float]) -> list[str]:
    return [f"{m:.2f}" if not math.isfinite(c) else f"{m:.2f} ± {c:.2f}"
            for m, c in zip(means, cis, strict=True)]


def results_display(results: pd.DataFrame, verdict: Verdict) -> pd.DataFrame:
    return pd.DataFrame({
        "model": results["model"],
        verdict.label("SI-SDRi (dB)"): _pm(results["si_sdri_db"], results["si_sdri_ci95"]),
        verdict.label("SDRi (dB)"): _pm(results["sdri_db"], results["sdri_ci95"]),
        "steps": results["steps"].astype("Int64"),
        "train MACs (T)": results["train_gmacs"].astype(float) / 1e3,
        "train wall (s)": results["wall_time_s"],
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


def budget_text(results: pd.DataFrame) -> str:
    """The training budget as the runs recorded it, and each model's steps."""
    steps = ", ".join(f"{r.model} {'?' if pd.isna(r.steps) else int(r.steps)}"
                      for r in results.itertuples())
    modes = set(results["budget_mode"].dropna())
    if modes == {"macs"} and results["budget_gmacs"].notna().any():
        budget = float(results["budget_gmacs"].dropna().max())
        actual = ", ".join(
            f"{r.model} {r.train_gmacs / 1e3:.3g} T ({100 * (r.train_gmacs / budget - 1):+.0f}%)"
            for r in results.itertuples() if pd.notna(r.train_gmacs))
        off = [r.model for r in results.itertuples() if pd.notna(r.train_gmacs)
               and abs(r.train_gmacs / budget - 1) > BUDGET_TOLERANCE]
        text = (f"Equal compute: a budget of {budget / 1e3:.3g} T training MACs per model "
                "(steps x MACs per second of audio x audio per step x the forward+backward "
                "factor, params.yaml `train.budget`), rounded to whole steps, at least one. "
                f"Actual training MACs: {actual}")
        if off:
            text += (f". Off the budget by more than {100 * BUDGET_TOLERANCE:.0f}% (a step "
                     f"does not divide it finely enough): {', '.join(off)}")
    elif modes == {"steps"}:
        text = "Equal steps: every model trains the same number of steps (`train.max_steps`)"
    else:
        text = "Budget: " + (", ".join(sorted(modes)) or "not recorded")
    capped = list(results.loc[results["stopped_by"] == "max_time", "model"])
    caveat = (f" The wall-time safety cap stopped {', '.join(capped)}: those step counts depend "
              "on the machine's load." if capped else "")
    return f"{text}. Steps: {steps}.{caveat}"


# ---------------------------------------------------------------------------------- published
def _value(figure: dict[str, Any] | None, key: str = "value") -> float | None:
    value = None if figure is None else figure.get(key)
    return None if value is None else float(value)


def _said(value: Any) -> str:
    return "not stated" if value is None else str(value)


def paper_vs_here(results: pd.DataFrame, published: dict[str, Any], verdict: Verdict,
                  ) -> pd.DataFrame:
    """Each model's primary Libri2Mix figure (the paper's Table 2 where it has the model) with
    its training conditions, beside ours."""
    rows = []
    for row in results.itertuples():
        entry = published["models"].get(row.model, {})
        paper = (entry.get("results", {}).get(PAPER_DATASET) or [None])[0] or {}
        paper_si = _value(paper, "si_sdri")
        rows.append({
            "model": row.model, "SI-SDRi paper": paper_si, "SDRi paper": _value(paper, "sdri"),
            "training subset": _said(paper.get("train_subset")) if paper else None,
            "rate (Hz)": _said(paper.get("sample_rate")) if paper else None,
            "augmentation": _said(paper.get("augmentation")) if paper else None,
            verdict.label("SI-SDRi here"): row.si_sdri_db,
            "source": paper.get("source"),
        })
    return pd.DataFrame(rows)


def published_results(published: dict[str, Any], models: list[str]) -> pd.DataFrame:
    """Every published quality figure of our models with its training conditions."""
    rows = [{"model": model, "dataset": dataset, "task": r.get("task"), "SI-SDRi": r["si_sdri"],
             "SDRi": r["sdri"], "training subset": _said(r["train_subset"]),
             "rate (Hz)": _said(r["sample_rate"]), "augmentation": _said(r["augmentation"]),
             "source": r["source"], "note": r.get("note")}
            for model in models
            for dataset, results in published["models"].get(model, {}).get("results", {}).items()
            for r in results]
    return pd.DataFrame(rows)


def params_vs_here(results: pd.DataFrame, published: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for row in results.itertuples():
        paper = published["models"].get(row.model, {}).get("params_m") or {}
        value = _value(paper)
        rows.append({"model": row.model, "params paper (M)": value, "source": paper.get("source"),
                     "params here (M)": row.params_m,
                     "here / paper": None if value is None else row.params_m / value})
    return pd.DataFrame(rows)


def _convention(m: dict[str, Any]) -> str:
    unit = "G/s" if m["per_second"] else "G"
    per = f"per second ({m['input_samples'] / m['sample_rate']:g} s)" if m["per_second"] else (
        "total, not per second")
    return (f"{m['input_samples']} samples at {m['sample_rate'] / 1000:g} kHz, {per}, "
            f"{m['counter'] or 'counter not stated'} [{unit}]")


def ours_at(conventions: pd.DataFrame, model: str, m: dict[str, Any],
            naive: bool = False) -> float | None:
    """Our MACs at a published figure's convention: counted on its input length, with its
    counter (fvcore when it names none), divided by its duration when it is per second."""
    hit = conventions[(conventions["model"] == model)
                      & (conventions["input_samples"] == m["input_samples"])]
    if hit.empty:
        return None
    counter = "ptflops" if m["counter"] == "ptflops" else "fvcore"
    total = float(hit.iloc[0][f"{'naive_' if naive else ''}macs_g_{counter}"])
    return total / (m["input_samples"] / m["sample_rate"]) if m["per_second"] else total


def macs_at_conventions(models: list[str], published: dict[str, Any],
                        conventions: pd.DataFrame) -> pd.DataFrame:
    """Every published MAC figure of our models beside ours counted the same way, and the
    ratios to Sepformer and Conv-TasNet within the same source (convention-free)."""
    def published_of(model: str, source: str) -> dict[str, Any] | None:
        return next((m for m in published["models"].get(model, {}).get("macs", [])
                     if m["source"] == source), None)

    rows = []
    for model in models:
        for m in published["models"].get(model, {}).get("macs", []):
            here = ours_at(conventions, model, m)
            row = {"model": model, "source": m["source"], "convention": _convention(m),
                   "published": m["value"], "here": here,
                   "here (counter defaults)": ours_at(conventions, model, m, naive=True),
                   "here / published": None if here is None else here / m["value"]}
            for ref in REFERENCES:
                other = published_of(ref, m["source"])
                ours_ref = None if other is None else ours_at(conventions, ref, other)
                row[f"published / {ref}"] = None if other is None else m["value"] / other["value"]
                row[f"here / {ref}"] = (here / ours_ref if here is not None and ours_ref
                                        else None)
            rows.append(row)
    return pd.DataFrame(rows)


def reconstruction_note(results: pd.DataFrame, published: dict[str, Any],
                        conventions: pd.DataFrame, model: str = "s4m") -> str:
    """How our reconstruction of the unreleased S4M compares on params and MACs."""
    entry = published["models"].get(model, {})
    hit = results[results["model"] == model]
    if hit.empty or not entry.get("macs"):
        return ""
    m, params = entry["macs"][0], _value(entry.get("params_m"))
    here, naive = ours_at(conventions, model, m), ours_at(conventions, model, m, naive=True)
    ours_params = float(hit.iloc[0]["params_m"])
    params_text = (f"{ours_params:.2f}M params against the published {params:g}M "
                   f"({ours_params / params:.2f}x)" if params else f"{ours_params:.2f}M params")
    if here is None:
        macs_text = ("its MACs at that convention were not counted (params.yaml "
                     "`complexity.published_conventions` is off)")
    else:
        macs_text = (f"{here:.1f} G at that convention ({m['counter']} with our handles; "
                     f"{naive:.1f} G with the counter's defaults) against {m['value']:g} G "
                     f"({here / m['value']:.2f}x)")
    return (f"**Our S4M reconstruction** (the {params:g}M design is unpublished): {params_text}; "
            f"{macs_text}; published convention: {_convention(m)} (`{m['source']}`).\n")


# ---------------------------------------------------------------------------------- ablation
ABLATION_COLUMNS = [
    "num_scales", "d_state", "ssm", "global_layer", "si_sdri_db", "si_sdri_ci95", "sdri_db",
    "steps",
    "params_m", "macs_g_per_s_fvcore", "macs_g_per_s_ptflops", "infer_s_median", "rtf",
    "train_step_s", "infer_peak_mem_mb", "cost_seconds",
]


def load_ablation(reports: Path) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """One row per ablation cell (settings from the `cell` its summary records; cost, budget
    and steps from `cost` and `training`, absent in older summaries), and the cells' summaries."""
    rows, summaries = [], []
    for path in sorted((reports / "ablation").glob("*/summary.json")):
        summary = json.loads(path.read_text())
        cell = summary.get("cell")
        if not isinstance(cell, dict):
            raise ValueError(f"{path}: no `cell` settings (written by an older ablate stage; "
                             "rerun it with `dvc repro -f ablate`)")
        si_sdri, ci = metric_stats(summary, "si_sdr_i")
        cost, training = summary.get("cost") or {}, summary.get("training") or {}
        rows.append({"num_scales": int(cell["num_scales"]), "d_state": int(cell["d_state"]),
                     "ssm": str(cell["ssm"]),
                     "global_layer": cell.get("global_layer") or cell["ssm"],
                     "si_sdri_db": si_sdri, "si_sdri_ci95": ci,
                     "sdri_db": metric_stats(summary, "sdr_i")[0],
                     "steps": training.get("steps"), "cost_seconds": cost.get("seconds"),
                     **{k: cost.get(k) for k in ABLATION_COLUMNS[8:-1]}})
        summaries.append(summary)
    frame = pd.DataFrame(rows, columns=ABLATION_COLUMNS)
    frame = frame.sort_values(["ssm", "num_scales", "d_state", "global_layer"], ignore_index=True)
    return frame, summaries


# ---------------------------------------------------------------------------------- figures
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


def _stamp(ax: plt.Axes) -> None:
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
        _stamp(ax)
    ax.set_title(title, fontsize=9 if not verdict.is_result else 11)
    ax.grid(alpha=0.3)
    _save_figure(fig, path)


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
    _save_figure(fig, path)


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
    rows = [r for r in HEATMAP_ROWS if _finite(ablation[r[0]])]
    if not kinds or not rows:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no ablation results", ha="center", va="center")
        ax.set_axis_off()
        _save_figure(fig, path)
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
    _save_figure(fig, path)


def _calls_per_point(frame: pd.DataFrame) -> str:
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
    timing.set_ylabel(f"inference time (s), batch 1, {_calls_per_point(frame)}")
    memory.set_ylabel("peak memory above the model's (MB)")
    for ax in (timing, memory):
        ax.set_xlabel("input length (s)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Cost against input length ({env.get('device', 'device not recorded')}, "
                 f"{env.get('threads', '?')} thread(s), commit {env.get('commit', '?')})",
                 fontsize=10)
    _save_figure(fig, path)


def length_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Inference time (s) per model (rows) and length (columns); "too slow" where it was."""
    cells = frame.assign(cell=[f"{t:.3g}" if s == "ok" else s.replace("_", " ")
                               for t, s in zip(frame["infer_s"], frame["status"], strict=True)])
    table = cells.pivot(index="model", columns="length_s", values="cell")
    table = table.reindex(list(dict.fromkeys(frame["model"])))
    table.columns = [f"{c:g} s" for c in table.columns]
    return table.reset_index()


# ---------------------------------------------------------------------------------- assembly
def _measured_with(table: pd.DataFrame) -> str:
    return "\n## Where these figures were measured\n\n" + markdown_table(table)


def build_reports(cfg: dict[str, Any], reports: Path = REPORTS, runs: Path = RUNS,
                  published_path: Path = PUBLISHED) -> dict[str, Any]:
    models = list(cfg["models"])
    rule = QualityRule.from_config(cfg)
    env = environment(cfg["profile"], int(cfg["threads"]))
    env_md = "\n## Environment of this report\n\n" + environment_markdown(env)
    results = load_results(models, reports, runs)
    published = load_published(published_path)
    complexity_json = _read_json(reports / "complexity.json") or {}
    speed_json = _read_json(reports / "speed.json") or {}
    conventions = pd.DataFrame(complexity_json.get("conventions") or [],
                               columns=["model", "input_samples", "macs_g_fvcore",
                                        "macs_g_ptflops", "naive_macs_g_fvcore",
                                        "naive_macs_g_ptflops"])
    verdict = rule.judge(results["si_sdri_db"], results["steps"])
    evals = [read_summary(reports / "eval" / m).get("env") or {} for m in models]
    complexity_env, speed_env = _env_of(complexity_json), _env_of(speed_json)
    where = provenance([
        ("SI-SDRi, SDRi (evaluation)", evals),
        ("training (steps, wall time; threads)",
         [{"threads": t} for t in results["train_threads"].dropna().astype(int)]),
        ("params, MACs (complexity.json)", [complexity_env]),
        ("RTF, time vs length (speed.json)", [speed_env]),
    ])
    quality = (f"Quality columns: **{'result' if verdict.is_result else NOT_A_RESULT}** "
               f"({verdict.reason}). Rule: {rule.text()}.")
    scope = (
        f"Profile `{cfg['profile']}`: dataset `{cfg['data'].get('source')}` "
        f"({cfg['data'].get('task')}, {cfg['data'].get('sample_rate')} Hz, "
        f"{cfg['data'].get('mode')}). {budget_text(results)} SI-SDRi/SDRi: mean ± 95% "
        "confidence interval over test utterances. MACs per second of input audio (fvcore, "
        "FFTs and SSM ops counted); train MACs: steps x MACs per step; train wall: measured, "
        "not a budget; RTF: inference time / audio duration.\n\n" + quality
    )
    display = results_display(results, verdict)
    lengths_csv = reports / "speed_vs_length.csv"
    lengths = pd.read_csv(lengths_csv) if lengths_csv.is_file() else pd.DataFrame(
        columns=["model", "length_s", "status", "infer_s", "peak_mem_mb"])
    length_md = markdown_table(length_table(lengths), ".3g") if len(lengths) else "not measured"
    lengths_md = ("\n## Inference time against input length (s, batch 1)\n\n"
                  f"{length_md}"
                  "\nFigure: `figures/speed_vs_length.png` (time and peak memory, log-log).\n")
    rates = mac_rate_table(pd.read_csv(reports / "complexity.csv").set_index("model"),
                           pd.read_csv(reports / "speed.csv").set_index("model"))
    rates_md = ("\n## Inference: achieved MAC rate (batch 1, speed.json's threads)\n\n"
                "GMAC/s achieved = the model's fvcore MACs on the input / inference time: how "
                "close each model runs to the machine's arithmetic limit. Modes beyond eager "
                "appear with `speed.compile` / `speed.bf16` on.\n\n"
                f"{markdown_table(rates, '.3g') if len(rates) else 'not measured'}")
    _write_csv(reports / "results.csv", results)
    write_text(reports / "results.md",
               f"# Results\n\n{scope}\n\n{markdown_table(display)}{bf16_markdown(results, verdict)}"
               f"{lengths_md}{rates_md}"
               f"{_measured_with(where)}{env_md}")
    caption = f"Results, profile {cfg['profile']}" + (
        "" if verdict.is_result else f" ({NOT_A_RESULT})")
    write_text(reports / "results.tex", latex_table(display, caption))

    sources = "\n".join(f"- `{key}`: {text}" for key, text in published["sources"].items())
    macs = macs_at_conventions(models, published, conventions)
    tiny_ratio = _value(published["models"].get("s4m_tiny", {}).get("macs_ratio_to_sepformer"))
    by_model = results.set_index("model")["macs_g_per_s"]
    ratio_note = (f"S4M-tiny / Sepformer MACs: {tiny_ratio:.1%} in the paper's abstract, "
                  f"{by_model['s4m_tiny'] / by_model['sepformer']:.1%} here (fvcore, "
                  f"{complexity_json.get('settings', {}).get('seconds', '?')} s).\n"
                  if tiny_ratio and {"s4m_tiny", "sepformer"} <= set(by_model.index) else "")
    where_macs = provenance([("our MACs and params (complexity.json)", [complexity_env]),
                             ("SI-SDRi here (evaluation)", evals)])
    write_text(reports / "paper_vs_here.md", (
        "# Paper vs here\n\nPublished figures (experiments/published.yaml) beside this run's, "
        "each with the conditions it was obtained under. Quality in dB is comparable only on the "
        "paper's profile and corpus with the same training subset and augmentation; params are "
        "comparable on any profile; MACs only when counted the same way, so ours are recounted "
        "at each source's convention (input length, rate, per second or not, counter), and the "
        "ratios to Sepformer and Conv-TasNet within a source do not depend on the convention.\n\n"
        f"## Libri2Mix, primary published figure\n\n{quality}\n\n"
        f"{markdown_table(paper_vs_here(results, published, verdict))}\n"
        f"## Every published quality figure and its training conditions\n\n"
        f"{markdown_table(published_results(published, models))}\n"
        f"## Parameters\n\n{markdown_table(params_vs_here(results, published))}\n"
        "## MACs at each source's convention\n\n'here': our model (as built for "
        f"{cfg['data'].get('sample_rate')} Hz) counted on the source's input length with its "
        "counter (fvcore when it names none) and our handles (FFT, SSM, attention counted); "
        "'counter defaults': the same counter's default handles.\n\n"
        f"{markdown_table(macs, floatfmt='.3g') if len(macs) else 'no published MACs'}\n"
        f"{ratio_note}\n{reconstruction_note(results, published, conventions)}"
        f"{_measured_with(where_macs)}\nSources:\n\n{sources}\n{env_md}"))

    ablation, cells = load_ablation(reports)
    ablation_verdict = rule.judge(ablation["si_sdri_db"], ablation["steps"])
    cell_budget = "; ".join(dict.fromkeys(
        "not recorded" if not s.get("budget") else
        f"mode {s['budget'].get('mode')}, {s['budget'].get('max_steps')} steps"
        for s in cells)) or "no cells"
    cost_s = ", ".join(f"{x:g}" for x in dict.fromkeys(_finite(ablation["cost_seconds"])))
    ablation_display = ablation.rename(columns={
        "si_sdri_db": ablation_verdict.label("si_sdri_db"),
        "sdri_db": ablation_verdict.label("sdri_db")})
    where_cells = provenance([("every column (ablate stage)", [s.get("env") or {} for s in cells])])
    _write_csv(reports / "ablation.csv", ablation)
    write_text(reports / "ablation.md", (
        f"# S4M ablation: scales x state size x SSM kind\n\nBase model "
        f"`{cfg['ablation']['base_model']}` with each cell's overrides; training budget per "
        f"cell: {cell_budget}; otherwise the main table's settings. Cost columns (params, MACs "
        f"per second with fvcore and ptflops, 1-thread inference and training-step time) on "
        f"{cost_s or '?'} s of audio; figure `figures/ablation_heatmap.png`.\n\nQuality "
        f"columns: **{'result' if ablation_verdict.is_result else NOT_A_RESULT}** "
        f"({ablation_verdict.reason}). Rule: {rule.text()}.\n\n"
        f"{markdown_table(ablation_display, floatfmt='.4g') if len(ablation) else 'no cells'}"
        f"{_measured_with(where_cells)}"
        f"{env_md}"))

    figures = reports / "figures"
    plot_sisdri_vs_macs(results, verdict, figures / "sisdri_vs_macs.png")
    plot_training_curves(validation_curves(models, runs), results, verdict,
                         figures / "training_curves.png")
    plot_ablation_heatmap(ablation, ablation_verdict, figures / "ablation_heatmap.png")
    plot_speed_vs_length(lengths, speed_env, figures / "speed_vs_length.png")
    summary = {
        "profile": cfg["profile"],
        "quality": {"is_result": verdict.is_result, "reason": verdict.reason},
        "ablation_quality": {"is_result": ablation_verdict.is_result,
                             "reason": ablation_verdict.reason},
        "si_sdri_db": {r.model: round(r.si_sdri_db, 2) for r in results.itertuples()},
        "steps": {r.model: None if pd.isna(r.steps) else int(r.steps)
                  for r in results.itertuples()},
        "best_ablation": (ablation.sort_values("si_sdri_db").iloc[-1][
            ["num_scales", "d_state", "ssm", "si_sdri_db"]].to_dict() if len(ablation) else None),
    }
    write_text(reports / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    return summary
