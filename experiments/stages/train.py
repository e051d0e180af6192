"""DVC stage `train@<model>`: trains one registry model on the prepared data.

`python -m experiments.stages.train --model NAME [--out DIR] [--override key=value ...]`

An override `a.b=v` replaces the existing setting `a.b` (e.g. `train.max_steps=10`); a plain
`key=v` is a constructor argument of the model (e.g. `num_scales=3`). Values are parsed as YAML.
Outputs (see `experiments.training.trainer`) go to `--out`, default `runs/<model>`; a run started
again in the same folder resumes from its last checkpoint. The step budget comes from
`train.budget` (see `experiments.training.budget`): with mode macs, from the model's MACs per
second in `--complexity` (default reports/complexity.csv).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from experiments.config import ConfigError, load_profile, require
from experiments.training.budget import apply_budget, complexity_macs, resolve_budget
from experiments.training.system import NonFiniteLossError
from experiments.training.trainer import parse_overrides, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="registry name (experiments.registry)")
    parser.add_argument("--out", default=None, help="output folder (default runs/<model>)")
    parser.add_argument("--override", action="extend", nargs="+", default=[],
                        metavar="KEY=VALUE", help="a.b=v: setting; k=v: model constructor arg")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None,
                        help="settings profile (default: params.yaml's `profile`)")
    parser.add_argument("--complexity", default="reports/complexity.csv")
    args = parser.parse_args(argv)
    cfg, model_overrides = parse_overrides(args.override, load_profile(args.params, args.profile))
    out_dir = Path(args.out or Path("runs") / args.model)
    macs_mode = require(cfg, "train.budget.mode") == "macs"
    if macs_mode and model_overrides:
        raise ConfigError(f"train.budget.mode macs: {args.complexity} counts the registry's "
                          f"{args.model}, not one with {model_overrides}; use mode steps")
    macs = None  # steps mode: MACs only to record the training MACs, when counted
    if macs_mode:
        macs = complexity_macs(args.complexity, args.model)
    elif not model_overrides:
        with contextlib.suppress(ConfigError):
            macs = complexity_macs(args.complexity, args.model)
    budget = resolve_budget(cfg, macs)
    print(f"train: {args.model}: budget {budget['mode']}, {budget['max_steps']} steps",
          file=sys.stderr)
    try:
        metrics = train(apply_budget(cfg, budget), args.model, out_dir, model_overrides, budget)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if metrics is not None:
        print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
