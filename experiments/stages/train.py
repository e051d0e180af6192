"""DVC stage `train@<model>`: trains one registry model on the prepared data.

`python -m experiments.stages.train --model NAME [--out DIR] [--override key=value ...]`

An override `a.b=v` replaces the existing setting `a.b` (e.g. `train.max_steps=10`); a plain
`key=v` is a constructor argument of the model (e.g. `num_scales=3`). Values are parsed as YAML.
Outputs (see `experiments.training.trainer`) go to `--out`, default `runs/<model>`; a run started
again in the same folder resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.config import load_profile
from experiments.training.trainer import NonFiniteLossError, parse_overrides, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="registry name (experiments.registry)")
    parser.add_argument("--out", default=None, help="output folder (default runs/<model>)")
    parser.add_argument("--override", action="extend", nargs="+", default=[],
                        metavar="KEY=VALUE", help="a.b=v: setting; k=v: model constructor arg")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cfg, model_overrides = parse_overrides(args.override, load_profile(args.params))
    out_dir = Path(args.out or Path("runs") / args.model)
    try:
        metrics = train(cfg, args.model, out_dir, model_overrides)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if metrics is not None:
        print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
