"""Reading the stages' outputs for the reports: evaluation summaries, training records, the
complexity and speed tables, and the ablation cells."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

RUNS = Path("runs")
# results columns of the evaluation's bf16 run (evaluate.bf16) -> its summary's metrics
BF16_EVAL = {"si_sdri_bf16_db": "si_sdr_i_bf16", "bf16_vs_fp32_sisdr_db": "bf16_vs_fp32_si_sdr"}


def read_json(path: Path) -> dict[str, Any] | None:
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


def training_record(runs: Path, model: str) -> dict[str, Any]:
    """Steps, training MACs, wall time and budget from runs/<model>/train_metrics.json. The wall
    time is the training's over every resumption (`train_wall_s`), not the last invocation's."""
    metrics = read_json(runs / model / "train_metrics.json") or {}
    budget = metrics.get("budget") or {}
    return {"steps": metrics.get("steps"), "train_gmacs": metrics.get("train_gmacs"),
            "train_wall_s": metrics.get("train_wall_s"), "stopped_by": metrics.get("stopped_by"),
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
