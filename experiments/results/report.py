"""The results profile's report, from its runs' training records, curves and test-split
evaluations: `<out_dir>/` summary.csv (one row per run), per_utterance.csv, models.csv
(statistics per model), paired.csv, time_to.csv, results.md, summary.json, figures/ and
examples/ (16-bit wavs of two test mixtures separated by every model, and their spectrograms).
Runs not done yet are left out and named; the report rule labels the numbers results only when
they are (params.yaml `report`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import soundfile as sf
import torch

from experiments.atomic import atomic_path, write_json, write_text
from experiments.config import require
from experiments.env import environment, environment_markdown
from experiments.registry import SCALES, load_model
from experiments.reporting.report import markdown_table
from experiments.reporting.rule import NOT_A_RESULT, QualityRule
from experiments.results import figures
from experiments.results.plan import Run, settings
from experiments.results.stats import finding, model_table, paired_comparisons, time_to

THRESHOLDS = [5.0, 10.0]


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def run_record(run: Run, macs: pd.Series) -> dict[str, Any]:
    """One finished run: training record and test-split means."""
    metrics = _json(run.run_dir / "train_metrics.json")
    summary = _json(run.eval_dir / "summary.json")["metrics"]
    budget = metrics.get("budget") or {}
    return {"model": run.model, "seed": run.seed, "params_m": metrics["params"] / 1e6,
            "macs_g_per_s": float(macs[run.model]), "steps": metrics["steps"],
            "budget_gmacs": budget.get("train_gmacs"), "train_gmacs": metrics.get("train_gmacs"),
            "budget_deviation_pct": 100 * budget.get("deviation", math.nan),
            "within_budget": budget.get("within_budget"), "wall_s": metrics["train_wall_s"],
            "threads": metrics["threads"], "stopped_by": metrics["stopped_by"],
            "si_sdri_db": summary["si_sdr_i"]["mean"], "sdri_db": summary["sdr_i"]["mean"]}


def run_curves(run: Run, gmacs_per_step: float) -> pd.DataFrame:
    """Validation SI-SDRi and training wall seconds at each validation of one run."""
    plots = run.run_dir / "dvclive" / "plots" / "metrics"
    frame = pd.read_csv(plots / "val" / "sisdri.tsv", sep="\t").rename(
        columns={"sisdri": "val_sisdri"})
    wall = pd.read_csv(plots / "wall_s.tsv", sep="\t")
    frame = frame.merge(wall, on="step", how="left")
    frame["train_tmacs"] = frame["step"] * gmacs_per_step / 1e3
    return frame.assign(model=run.model, seed=run.seed)[
        ["model", "seed", "step", "train_tmacs", "wall_s", "val_sisdri"]]


def _peak(wav: torch.Tensor) -> torch.Tensor:
    return 0.9 * wav / wav.abs().max().clamp_min(1e-8)


def listening_examples(cfg: dict[str, Any], runs: list[Run], out_dir: Path) -> list[str]:
    """The first `results.examples` test mixtures separated by every model (its first seed's
    run): 16-bit wavs cut to `results.example_seconds`, each peak-normalised to 0.9 (SI-SDR
    training leaves the estimates' scale free), estimates in the references' order; one
    spectrogram figure. Returns the written file names."""
    from experiments.data import make_dataset
    from experiments.evaluation.metrics import separation_metrics

    results, data_cfg = cfg["results"], require(cfg, "data")
    sample_rate = int(data_cfg["sample_rate"])
    keep = round(float(results["example_seconds"]) * sample_rate)
    dataset = make_dataset(data_cfg, "test", None, return_id=True)
    first = {}
    for run in runs:
        first.setdefault(run.model, run)
    models = {model: load_model(run.run_dir / "model.pt").eval() for model, run in first.items()}
    examples, utt_ids, written = [], [], []
    folder = out_dir / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(int(results["examples"])):
        mixture, sources, raw_id = dataset[index]
        utt = "_".join(map(str, raw_id)) if isinstance(raw_id, list | tuple) else str(raw_id)
        signals = {"mixture": mixture, "reference 1": sources[0], "reference 2": sources[1]}
        for model, net in models.items():
            with torch.inference_mode():
                estimates = net(mixture[None])[0]
            _, perm = separation_metrics(mixture, sources, estimates, sample_rate)
            for k, source in enumerate(perm):
                signals[f"{model} {k + 1}"] = estimates[source]
        signals = {label: wav[:keep] for label, wav in signals.items()}
        for label, wav in signals.items():
            name = f"ex{index + 1}_{label.replace(' ', '_').replace('@', '-')}.wav"
            with atomic_path(folder / name) as tmp:
                sf.write(tmp, _peak(wav).numpy(), sample_rate, subtype="PCM_16", format="WAV")
            written.append(name)
        examples.append(signals)
        utt_ids.append(utt)
    figures.plot_spectrograms(examples, utt_ids, sample_rate,
                              "Test mixtures, references and each model's estimates (seed "
                              "of its first run)", folder / "spectrograms.png")
    return written


def left_out_table(cfg: dict[str, Any], complexity: pd.DataFrame) -> pd.DataFrame:
    """The models left out of the profile: their MACs, the steps the budget would give them
    and the stated reason."""
    from experiments.training.budget import resolve_budget

    rows = []
    for name, why in (cfg["results"].get("left_out") or {}).items():
        macs = float(complexity.loc[name, "macs_g_per_s_fvcore"])
        rows.append({"model": name, "params (M)": round(complexity.loc[name, "params_m"], 3),
                     "MACs (G/s)": round(macs, 2),
                     "steps at this budget": resolve_budget(cfg, macs)["max_steps"],
                     "why left out": why})
    return pd.DataFrame(rows)


def _fmt_ci(mean: float, low: float, high: float) -> str:
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def _recipe(cfg: dict[str, Any]) -> str:
    train, results = require(cfg, "train"), cfg["results"]
    budget = train["budget"]
    synthetic = cfg["data"]["synthetic"]
    return "\n".join([
        f"- data: the embedded synthetic Libri2Mix-format corpus ({synthetic['n_train']} / "
        f"{synthetic['n_dev']} / {synthetic['n_test']} train / dev / test mixtures of "
        f"{synthetic['n_speakers']} eSpeak NG voices), {cfg['data']['sample_rate']} Hz, task "
        f"{cfg['data']['task']}",
        f"- budget: {budget['train_gmacs']:g} G training MACs per run (mode {budget['mode']}, "
        f"forward+backward = {budget['fwd_bwd_factor']} forwards), rounded to whole steps",
        f"- steps: {train['segment_s']:g} s random crops, batch {train['batch_size']}, Adam, "
        f"peak lr {train['lr']:g}, {train['schedule']} schedule with {train['warmup_steps']} "
        f"warm-up steps, gradient norm clipped at {train['grad_clip']:g}, loss {train['loss']} "
        "with PIT",
        f"- validation every {train['val_check_interval']} steps on {train['limit_val_batches']} "
        f"dev batches; the exported weights are the {train['export']} validation's",
        f"- processes: {results['parallel_runs']} runs at once, {cfg['threads']} torch "
        f"thread(s) each; train.compile {train['compile']}",
        f"- models: scaled variants `@cpu` ({SCALES['cpu']}); evaluation on every test mixture",
    ])


def build_report(cfg: dict[str, Any], runs: list[Run], running_s: float = 0.0) -> str:
    """Writes every output of the results report; returns a one-line summary. `running_s`:
    the wall seconds of the invocation still running (not yet in invocations.csv)."""
    results = cfg["results"]
    out_dir = Path(results["out_dir"])
    resamples = int(results["bootstrap_resamples"])
    complexity = pd.read_csv(out_dir / "complexity.csv").set_index("model")
    done = [run for run in runs if run.evaluated()]
    missing = [run.name for run in runs if not run.evaluated()]
    if not done:
        raise RuntimeError(f"results: no run is finished yet ({', '.join(missing)})")
    table = pd.DataFrame([run_record(r, complexity["macs_g_per_s_fvcore"]) for r in done])
    per_utt = pd.concat([pd.read_csv(r.eval_dir / "per_utterance.csv").assign(
        model=r.model, seed=r.seed) for r in done])
    curves = pd.concat([run_curves(r, float(
        _json(r.run_dir / "train_metrics.json")["budget"]["gmacs_per_step"])) for r in done])
    models = model_table(table, per_utt, resamples)
    costs = table.groupby("model", sort=False)[
        ["params_m", "macs_g_per_s", "steps", "train_gmacs", "wall_s"]].mean()
    models = models.merge(costs, left_on="model", right_index=True)
    paired = paired_comparisons(per_utt, results["reference"], resamples)
    reached = time_to(curves, THRESHOLDS)
    rule = QualityRule.from_config(cfg)
    verdict = rule.judge(models["si_sdri_db"], table["steps"])
    sentence = finding(paired, models)
    label = verdict.label

    figs = out_dir / "figures"
    for axis, stem in (("step", "curves_steps"), ("train_tmacs", "curves_macs"),
                       ("wall_s", "curves_wall")):
        figures.plot_curves(curves, axis, label("Validation SI-SDRi during training"),
                            figs / f"{stem}.png")
    figures.plot_quality_vs_cost(models, figs / "sisdri_vs_macs.png",
                                 label("Test SI-SDRi (95% bootstrap CI) against MACs"))
    wavs = listening_examples(cfg, done, out_dir)

    columns = ["model", "seed", "steps", "train_gmacs", "wall_s", "si_sdri_db", "sdri_db"]
    summary_csv = table[columns + [c for c in table.columns if c not in columns]]
    write_text(out_dir / "summary.csv", summary_csv.to_csv(index=False, float_format="%.4g"))
    write_text(out_dir / "per_utterance.csv", per_utt.to_csv(index=False, float_format="%.4f"))
    write_text(out_dir / "models.csv", models.to_csv(index=False, float_format="%.4g"))
    write_text(out_dir / "paired.csv", paired.to_csv(index=False, float_format="%.4g"))
    write_text(out_dir / "time_to.csv", reached.to_csv(index=False, float_format="%.4g"))
    write_text(out_dir / "curves.csv", curves.to_csv(index=False, float_format="%.4g"))

    invocations = Path(settings(cfg)["runs_dir"]) / "invocations.csv"  # these runs' own log
    wall_total = running_s + (
        float(pd.read_csv(invocations)["wall_s"].sum()) if invocations.is_file() else 0.0)
    left_out = left_out_table(cfg, complexity)
    markdown = _markdown(cfg, table, models, paired, reached, verdict, sentence, missing, wavs,
                         wall_total, left_out)
    write_text(out_dir / "results.md", markdown)
    write_json(out_dir / "summary.json", {
        "profile": results["profile"], "is_result": verdict.is_result, "rule": verdict.reason,
        "finding": sentence, "runs_done": len(done), "runs_missing": missing,
        "si_sdri_db": dict(zip(models["model"], models["si_sdri_db"], strict=True)),
        "best_model": models.loc[models["si_sdri_db"].idxmax(), "model"],
        "invocations_wall_s": wall_total,
    })
    return f"[results] {len(done)} runs reported in {out_dir}; {verdict.reason}"


def _markdown(cfg: dict[str, Any], table: pd.DataFrame, models: pd.DataFrame,
              paired: pd.DataFrame, reached: pd.DataFrame, verdict: Any, sentence: str,
              missing: list[str], wavs: list[str], wall_total: float,
              left_out: pd.DataFrame) -> str:
    results = cfg["results"]
    shown = pd.DataFrame({
        "model": models["model"], "seeds": models["seeds"],
        "params (M)": models["params_m"].round(3), "MACs (G/s)": models["macs_g_per_s"].round(3),
        "steps": models["steps"].round(0).astype(int),
        "train MACs (T)": (models["train_gmacs"] / 1e3).round(2),
        "wall (s)": models["wall_s"].round(0).astype(int),
        "SI-SDRi dB [95% CI]": [_fmt_ci(r.si_sdri_db, r.si_sdri_ci95_low, r.si_sdri_ci95_high)
                                for r in models.itertuples()],
        "seed std": models["si_sdri_seed_std"].round(2),
        "SDRi dB [95% CI]": [_fmt_ci(r.sdri_db, r.sdri_ci95_low, r.sdri_ci95_high)
                             for r in models.itertuples()],
    })
    runs = table[["model", "seed", "steps", "train_gmacs", "budget_deviation_pct",
                  "within_budget", "wall_s", "si_sdri_db", "sdri_db"]].round(2)
    pairs = pd.DataFrame({
        "comparison": [f"{r.reference} - {r.other}" for r in paired.itertuples()],
        "utterances": paired.get("n_utterances", []),
        "mean diff (dB)": paired.get("mean_diff_db", pd.Series(dtype=float)).round(2),
        "median diff (dB) [95% CI]": [
            _fmt_ci(r.median_diff_db, r.median_diff_ci95_low, r.median_diff_ci95_high)
            for r in paired.itertuples()],
        "Wilcoxon p": [f"{p:.2g}" for p in paired.get("p_value", [])],
        "rank-biserial r": [f"{r:+.2f}" for r in paired.get("rank_biserial", [])],
    })
    reach = reached.copy()
    for column in ("steps", "train_tmacs", "wall_s"):
        reach[column] = [("not reached" if pd.isna(v) else
                          f"{v:.0f}" if column != "train_tmacs" else f"{v:.2f}")
                         for v in reach[column]]
    reach = reach.rename(columns={"threshold_db": "validation SI-SDRi (dB)",
                                  "train_tmacs": "training MACs (T)", "wall_s": "wall (s)"})
    flagged = table[table["within_budget"] == False]  # noqa: E712 (a column of bools)
    budget_line = ("Every run's training MACs are within 5% of the budget." if flagged.empty
                   else "Off the budget by more than 5% (flagged): " + ", ".join(
                       f"{r.model} seed {r.seed} ({r.budget_deviation_pct:+.1f}%)"
                       for r in flagged.itertuples()))
    title = "CPU results: scaled models trained to separate"
    status = (f"**Status: results** ({verdict.reason})." if verdict.is_result else
              f"**Status: {NOT_A_RESULT}** ({verdict.reason}).")
    parts = [
        f"# {title}", "",
        "Generated by `make results` (profile `cpu`, experiments/results); every number below "
        "comes from the runs in `" + results["runs_dir"] + "`.", "", status, "",
        f"**Finding.** {sentence}", "",
        "## Recipe", _recipe(cfg), "",
        "## Models (mean over seeds; 95% bootstrap CI over test utterances)",
        markdown_table(shown), "", budget_line, "",
        "## Runs", markdown_table(runs), "",
        f"## Paired per-utterance comparison ({results['reference']} against each model)",
        "Per utterance, each model's SI-SDRi averaged over its seeds; Wilcoxon signed-rank "
        "test on the differences; rank-biserial r from +1 (the reference better on every "
        "utterance) to -1.", "", pairs.to_markdown(index=False, disable_numparse=True), "",
        "## Time to a validation SI-SDRi (seed mean)", markdown_table(reach), "",
        "## Figures and audio",
        "- curves: figures/curves_steps.png, figures/curves_macs.png, figures/curves_wall.png",
        "- quality against cost: figures/sisdri_vs_macs.png",
        f"- listening: examples/ ({len(wavs)} 16-bit wavs, {results['example_seconds']:g} s "
        "each, peak-normalised) and examples/spectrograms.png", "",
        "## Left out of the profile",
        markdown_table(left_out) if len(left_out) else "None.", "",
        *([f"Runs not finished yet: {', '.join(missing)}", ""] if missing else []),
        f"Wall time of the `make results` invocations so far: {wall_total / 60:.1f} min "
        "(invocations.csv).", "",
        environment_markdown(environment(results["profile"], int(cfg["threads"]))),
    ]
    return "\n".join(parts)
