"""DVC stage `ablate@<cell>`: one S4M ablation grid cell, measured, trained and evaluated in one
process.

`python -m experiments.stages.ablate --num-scales N --d-state D --ssm {s4,s4d}
[--global-layer {s4,s4d,s6,attention,none}] [--profile P] [--runs-root DIR] [--reports-root DIR]`

The base model is `ablation.base_model` with the cell's constructor overrides; training and
evaluation settings are the profile's, as for the main models, except the budget:
`ablation.max_steps` steps when set (see `experiments.ablation.cell`). Outputs go to
`<runs-root>/<tag>` and `<reports-root>/<tag>` (default `runs/ablation`, `reports/ablation`);
the evaluation summary records the cell's
settings under `cell`, its cost, budget and training, which is what the report reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from experiments.ablation.cell import cell_budget, cell_tag, measure_cost
from experiments.config import ConfigError, load_profile, require
from experiments.evaluation.evaluate import evaluate
from experiments.registry import build_model
from experiments.training.budget import apply_budget
from experiments.training.system import NonFiniteLossError
from experiments.training.trainer import train


def run_cell(cfg: dict[str, Any], cell: dict[str, Any], runs_root: Path = Path("runs/ablation"),
             reports_root: Path = Path("reports/ablation")) -> dict[str, Any]:
    """Measures, trains and evaluates one cell; returns the evaluation summary, which records
    `cell` (the settings), `cost`, `budget` and `training` (steps, wall time, what stopped it):
    the report reads these, never the folder name."""
    base = require(cfg, "ablation.base_model")
    sample_rate, seed = int(require(cfg, "data.sample_rate")), int(require(cfg, "seed"))
    seconds = require(cfg, "ablation.cost_seconds")
    if not isinstance(seconds, int | float) or seconds <= 0:
        raise ConfigError("params.yaml: ablation.cost_seconds must be a positive number")
    tag = cell_tag(cell)
    torch.manual_seed(seed)
    print(f"[ablate] {tag}: measuring cost on {seconds:g} s ...", flush=True)
    cost = measure_cost(build_model(base, sample_rate=sample_rate, **cell), float(seconds),
                        sample_rate, seed)
    budget = cell_budget(cfg, cost["macs_g_per_s_fvcore"])
    print(f"[ablate] {tag}: budget {budget['mode']}, {budget['max_steps']} steps", flush=True)
    metrics = train(apply_budget(cfg, budget), base, runs_root / tag, cell, budget)
    training = {k: metrics.get(k) for k in ("steps", "epochs", "wall_time_s", "fit_time_s",
                                           "stopped_by", "best_val_loss", "train_gmacs")}
    return evaluate(cfg, runs_root / tag / "model.pt", tag, reports_root / tag,
                    extra={"cell": {"base_model": base, **cell}, "cost": cost,
                           "budget": budget, "training": training})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-scales", type=int, required=True)
    parser.add_argument("--d-state", type=int, required=True)
    parser.add_argument("--ssm", choices=("s4", "s4d"), required=True)
    parser.add_argument("--global-layer", default=None,
                        help="the coarsest scale's layer (default: the --ssm kind)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None,
                        help="settings profile (default: params.yaml's `profile`)")
    parser.add_argument("--runs-root", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--reports-root", type=Path, default=Path("reports/ablation"))
    args = parser.parse_args(argv)
    cell = {"num_scales": args.num_scales, "d_state": args.d_state, "ssm": args.ssm}
    if args.global_layer:
        cell["global_layer"] = args.global_layer
    try:
        summary = run_cell(load_profile(args.params, args.profile), cell, args.runs_root,
                           args.reports_root)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"cell": cell_tag(cell), "steps": summary["training"]["steps"],
                      **{m: round(s["mean"], 2) for m, s in summary["metrics"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
