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
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.atomic import write_text
from experiments.env import environment, environment_markdown
from experiments.published import PUBLISHED, load_published
from experiments.reporting.figures import (
    plot_ablation_heatmap,
    plot_sisdri_vs_macs,
    plot_speed_vs_length,
    plot_training_curves,
    validation_curves,
)
from experiments.reporting.inputs import (
    BF16_EVAL,
    RUNS,
    load_ablation,
    load_results,
    read_json,
    read_summary,
)
from experiments.reporting.paper import (
    figure_value,
    macs_at_conventions,
    paper_vs_here,
    params_vs_here,
    published_results,
    reconstruction_note,
)
from experiments.reporting.rule import NOT_A_RESULT, QualityRule, Verdict, finite
from experiments.training.budget import BUDGET_TOLERANCE

REPORTS = Path("reports")


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_text(path, frame.to_csv(index=False, float_format="%.4g"))




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
        "train wall (s)": results["train_wall_s"],
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
    complexity_json = read_json(reports / "complexity.json") or {}
    speed_json = read_json(reports / "speed.json") or {}
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
    tiny_ratio = figure_value(
        published["models"].get("s4m_tiny", {}).get("macs_ratio_to_sepformer"))
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
    cost_s = ", ".join(f"{x:g}" for x in dict.fromkeys(finite(ablation["cost_seconds"])))
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
