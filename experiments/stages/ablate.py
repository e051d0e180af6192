"""DVC stage `ablate@<cell>`: one S4M ablation grid cell, trained and evaluated in one process.

`python -m experiments.stages.ablate --num-scales N --d-state D --ssm {s4,s4d}`

The base model is `ablation.base_model` with the cell's constructor overrides; training and
evaluation settings are the profile's, as for the main models, except that `ablation.max_time_s`
(when set) replaces the training time budget. Outputs go to `runs/ablation/<tag>` and
`reports/ablation/<tag>`; the evaluation summary records the cell's settings under `cell`, which
is what the report reads (never the folder name).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.config import load_profile, require
from experiments.evaluation.evaluate import evaluate
from experiments.training.trainer import NonFiniteLossError, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-scales", type=int, required=True)
    parser.add_argument("--d-state", type=int, required=True)
    parser.add_argument("--ssm", choices=("s4", "s4d"), required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cfg = load_profile(args.params)
    if require(cfg, "ablation.max_time_s") is not None:
        cfg["train"]["max_time_s"] = cfg["ablation"]["max_time_s"]
    cell = {"num_scales": args.num_scales, "d_state": args.d_state, "ssm": args.ssm}
    tag = f"scales{args.num_scales}_dstate{args.d_state}_{args.ssm}"
    run_dir = Path("runs/ablation") / tag
    base = require(cfg, "ablation.base_model")
    try:
        train(cfg, base, run_dir, cell)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = evaluate(cfg, run_dir / "model.pt", tag, Path("reports/ablation") / tag,
                       extra={"cell": {"base_model": base, **cell}})
    print(json.dumps({"cell": tag, **{m: round(s["mean"], 2)
                                      for m, s in summary["metrics"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
