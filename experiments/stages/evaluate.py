"""DVC stage `evaluate@<model>`: any registry-loadable model on the prepared test split.

`python -m experiments.stages.evaluate --model-path PATH [--name NAME] [--out DIR]`

Writes `per_utterance.csv`, `summary.json` and example wavs to `--out` (default
`reports/eval/<name>/`); see `experiments.evaluation.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.config import load_profile
from experiments.evaluation.evaluate import evaluate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True,
                        help="registry package, asteroid model file or SpeechBrain folder")
    parser.add_argument("--name", default=None, help="label (default: the file's parent name)")
    parser.add_argument("--out", default=None, help="output folder (default reports/eval/<name>)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None,
                        help="settings profile (default: params.yaml's `profile`)")
    args = parser.parse_args(argv)
    name = args.name or Path(args.model_path).resolve().parent.name
    out_dir = Path(args.out or Path("reports") / "eval" / name)
    summary = evaluate(load_profile(args.params, args.profile), args.model_path, name, out_dir)
    brief = {m: round(s["mean"], 2) for m, s in summary["metrics"].items()}
    print(json.dumps({"name": name, "count": summary["count"], **brief}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
