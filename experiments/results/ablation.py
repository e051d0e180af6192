"""The S4M ablation grid on the results recipe (`make results-ablation`): every cell of
params.yaml `ablation` (base `ablation.base_model` of the results profile), trained and
evaluated by the ablate stage into `<runs_dir>/ablation/<tag>` and `<out_dir>/ablation/<tag>`;
the table (cost and quality columns, 95% intervals) and the heatmap."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from experiments.atomic import write_text
from experiments.config import require
from experiments.reporting.report import (
    NOT_A_RESULT,
    QualityRule,
    load_ablation,
    markdown_table,
    plot_ablation_heatmap,
)


def grid(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    axes = ("num_scales", "d_state", "ssm")
    values = [require(cfg, f"ablation.{axis}") for axis in axes]
    return [dict(zip(axes, cell, strict=True)) for cell in itertools.product(*values)]


def build_ablation_report(cfg: dict[str, Any], out_dir: Path, invocations: Path,
                          running_s: float) -> str:
    """ablation.csv, ablation.md and the heatmap from the cells evaluated so far; the wall time
    is the sum of the logged invocations and the running one (`running_s`)."""
    import pandas as pd

    wall_s = running_s + (float(pd.read_csv(invocations)["wall_s"].sum())
                          if invocations.is_file() else 0.0)
    table, _ = load_ablation(out_dir)
    rule = QualityRule.from_config(cfg)
    verdict = rule.judge(table["si_sdri_db"], table["steps"])
    table.to_csv(out_dir / "ablation.csv", index=False, float_format="%.4g")
    plot_ablation_heatmap(table, verdict, out_dir / "figures" / "ablation_heatmap.png")
    budget = cfg["ablation"].get("train_gmacs") or cfg["train"]["budget"]["train_gmacs"]
    status = "results" if verdict.is_result else NOT_A_RESULT
    write_text(out_dir / "ablation.md", "\n".join([
        "# S4M ablation on the CPU results recipe: scales x state size x SSM kind", "",
        f"Base model `{cfg['ablation']['base_model']}` with each cell's overrides, one seed "
        f"({cfg['seed']}), {budget:g} G training MACs per cell (steps from the cell's own "
        "MACs), the recipe of reports/cpu/results.md; cost columns on "
        f"{cfg['ablation']['cost_seconds']:g} s of audio, one thread. The invocations of "
        f"`make results-ablation` took {wall_s / 60:.1f} min in all.", "",
        f"Quality columns: **{status}** ({verdict.reason}); si_sdri_ci95 is the half-width of "
        "the 95% interval over the test utterances.", "",
        markdown_table(table, floatfmt=".4g") if len(table) else "no cells", "",
        "Figure: figures/ablation_heatmap.png.", ""]))
    return f"[results] ablation: {len(table)} cells in {out_dir}; {verdict.reason}"
