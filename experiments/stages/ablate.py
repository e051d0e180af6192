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

from experiments.ablation.cell import cell_tag, run_cell
from experiments.config import load_profile
from experiments.training.trainer import NonFiniteLossError


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
