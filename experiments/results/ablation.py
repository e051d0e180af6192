"""The S4M ablation grid on the results recipe (`make results-ablation`): every cell of
params.yaml `ablation` (base `ablation.base_model` of the results profile), trained and
evaluated by the ablate stage into `<runs_dir>/ablation/<tag>` and `<out_dir>/ablation/<tag>`;
the table (cost and quality columns, 95% intervals) and the heatmap."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from experiments.atomic import write_text
from experiments.config import require
from experiments.reporting.figures import plot_ablation_heatmap
from experiments.reporting.inputs import load_ablation
from experiments.reporting.report import markdown_table
from experiments.reporting.rule import NOT_A_RESULT, QualityRule
from experiments.results.figures import plot_global_layers

# the global-layer figure's 1-thread times, measured by `time_global_points`
TIMES_CSV = "global_layer_times.csv"


def grid_cells(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The scales x state size x SSM kind cells (`make results-ablation`)."""
    axes = ("num_scales", "d_state", "ssm")
    values = [require(cfg, f"ablation.{axis}") for axis in axes]
    return [dict(zip(axes, cell, strict=True)) for cell in itertools.product(*values)]


def global_cells(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The global-layer axis at `ablation.global_at` (`make results-global`)."""
    at = require(cfg, "ablation.global_at")
    return [{"num_scales": at["num_scales"], "d_state": at["d_state"], "ssm": "s4",
             "global_layer": layer} for layer in require(cfg, "ablation.global_layers")]


def time_global_points(cfg: dict[str, Any], out_dir: Path) -> Path:
    """1-thread inference time of every point of figures/global_layers.png (the axis's models and
    the results profile's), untrained, timed in turn in one fresh process (a b c, then c b a,
    ...: `speed.ratio_repeats` rounds after `speed.warmup` calls, `speed.infer_seconds` of noise,
    batch 1), so that no point is timed beside another's training. Writes
    `<out_dir>/global_layer_times.csv` (medians and minima, with the machine) and returns it."""
    import statistics
    from dataclasses import asdict, replace

    import pandas as pd

    from experiments.benchmark.speed import SpeedSettings, run_in_turn_worker
    from experiments.benchmark.workers import REGISTRY_FACTORY, run_in_subprocess
    from experiments.env import device_name

    sample_rate = int(require(cfg, "data.sample_rate"))
    settings = replace(SpeedSettings.from_config(cfg), device="cpu", threads=1)
    base = require(cfg, "ablation.base_model")
    points = [("global layer", cell["global_layer"], {"name": base, **cell})
              for cell in global_cells(cfg)]
    points += [("model", name, {"name": name}) for name in require(cfg, "results.models")]
    spec = {"model": "the global-layer figure's models", "kind": "infer", "seed": cfg["seed"],
            "settings": asdict(settings),
            "pair": [{"model": label, "factory": REGISTRY_FACTORY, "sample_rate": sample_rate,
                      "kwargs": {**kwargs, "sample_rate": sample_rate}}
                     for _, label, kwargs in points]}
    print(f"[results] timing the {len(points)} models of the global-layer figure in turn ...",
          flush=True)
    result = run_in_subprocess(spec, settings.timeout_s * len(points), run_in_turn_worker)
    path = out_dir / TIMES_CSV
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = pd.DataFrame([{
        "kind": kind, "label": label,
        "infer_s_median": statistics.median(result["times"][label]),
        "infer_s_min": min(result["times"][label]), "rounds": len(result["times"][label]),
        "seconds": settings.infer_seconds, "sample_rate": sample_rate,
        "threads": result["threads"], "device": device_name("cpu"), "torch": result["torch"]}
        for kind, label, _ in points])
    write_text(path, rows.to_csv(index=False, float_format="%.4g"))
    return path


def global_points(table: Any, cfg: dict[str, Any], out_dir: Path) -> Any:
    """The global-layer axis's cells and the results profile's models (mean SI-SDRi over seeds,
    costs from its complexity table) as labelled points for `plot_global_layers`; 1-thread
    times from `<out_dir>/global_layer_times.csv` (`time_global_points`) where it exists (the
    cells' own were taken beside other training), else the cells' own."""
    import pandas as pd

    at = require(cfg, "ablation.global_at")
    axis = table[(table["num_scales"] == at["num_scales"]) & (table["d_state"] == at["d_state"])
                 & table["global_layer"].isin(require(cfg, "ablation.global_layers"))
                 & ((table["ssm"] == "s4") | (table["global_layer"] != table["ssm"]))]
    points = [axis.assign(kind="global layer", label=axis["global_layer"])]
    summary, complexity = out_dir / "summary.csv", out_dir / "complexity.csv"
    if summary.is_file() and complexity.is_file():
        runs = pd.read_csv(summary).groupby("model", as_index=False)["si_sdri_db"].mean()
        costs = pd.read_csv(complexity).rename(columns={"name": "model"})
        models = runs.merge(costs, on="model", how="left")
        points.append(models.assign(kind="model", label=models["model"]))
    columns = ["kind", "label", "si_sdri_db", "macs_g_per_s_fvcore", "infer_s_median"]
    points = pd.concat([p.reindex(columns=columns) for p in points], ignore_index=True)
    times = out_dir / TIMES_CSV
    if times.is_file():
        timed = pd.read_csv(times).set_index(["kind", "label"])["infer_s_median"]
        points["infer_s_median"] = [timed.get(key, float("nan"))
                                    for key in zip(points["kind"], points["label"], strict=True)]
    return points


def build_ablation_report(cfg: dict[str, Any], out_dir: Path, invocations: Path, what: str,
                          running_s: float) -> str:
    """ablation.csv, ablation.md and the figures from the cells evaluated so far; each
    command's wall time is the sum of its logged invocations (and of the running one,
    `running_s`, which is `what`)."""
    import pandas as pd

    logged = pd.read_csv(invocations) if invocations.is_file() else pd.DataFrame(
        columns=["what", "wall_s"])
    wall = logged.groupby("what")["wall_s"].sum().to_dict()
    wall[what] = wall.get(what, 0.0) + running_s
    commands = {"ablation grid": "make results-ablation", "global-layer axis":
                "make results-global"}
    took = "; ".join(f"`{commands.get(k, k)}` ({k}) {v / 60:.1f} min"
                     for k, v in sorted(wall.items()))
    table, _ = load_ablation(out_dir)
    rule = QualityRule.from_config(cfg)
    verdict = rule.judge(table["si_sdri_db"], table["steps"])
    table.to_csv(out_dir / "ablation.csv", index=False, float_format="%.4g")
    plot_ablation_heatmap(table, verdict, out_dir / "figures" / "ablation_heatmap.png")
    budget = cfg["ablation"].get("train_gmacs") or cfg["train"]["budget"]["train_gmacs"]
    # the cells and the results models train on different budgets: the legend says which
    # ... and each kind's report rule labels its own numbers
    summary = out_dir / "summary.json"
    models_status = ("results" if summary.is_file() and json.loads(summary.read_text())[
        "is_result"] else NOT_A_RESULT)
    status = "results" if verdict.is_result else NOT_A_RESULT
    legend = {"global layer": f"global layer: {budget / 1000:g} T, seed {cfg['seed']} ({status})",
              "model": f"make results model: {cfg['train']['budget']['train_gmacs'] / 1000:g}"
                       f" T, mean over seeds ({models_status})"}
    times = out_dir / TIMES_CSV
    time_label = (f"inference time (s, 1 thread, {pd.read_csv(times)['seconds'].iloc[0]:g} s of "
                  "audio, timed in turn)" if times.is_file() else
                  f"inference time (s, 1 thread, {cfg['ablation']['cost_seconds']:g} s of audio)")
    plot_global_layers(global_points(table, cfg, out_dir), "test SI-SDRi (dB)",
                       out_dir / "figures" / "global_layers.png", legend, time_label)
    write_text(out_dir / "ablation.md", "\n".join([
        "# S4M ablation on the CPU results recipe: scales x state size x SSM kind, and the "
        "global layer", "",
        f"Base model `{cfg['ablation']['base_model']}` with each cell's overrides, one seed "
        f"({cfg['seed']}), {budget:g} G training MACs per cell (steps from the cell's own "
        "MACs), the recipe of reports/cpu/results.md; cost columns on "
        f"{cfg['ablation']['cost_seconds']:g} s of audio, one thread. Wall time of all "
        f"invocations: {took}.", "",
        f"Quality columns: **{status}** ({verdict.reason}); si_sdri_ci95 is the half-width of "
        "the 95% interval over the test utterances (one seed per cell: the variation from seed to "
        "seed is not in it).", "",
        markdown_table(table, floatfmt=".4g") if len(table) else "no cells", "",
        "Figures: figures/ablation_heatmap.png (scales x state size), "
        "figures/global_layers.png (the global-layer axis by cost, beside the profile's models "
        "from summary.csv; its 1-thread times are global_layer_times.csv's, every model timed "
        "in turn in one process, where that file exists).", ""]))
    return f"[results] ablation: {len(table)} cells in {out_dir}; {verdict.reason}"
