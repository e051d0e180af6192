"""DVC stage `report`: paper-style tables and figures from the other stages' outputs.

`python -m experiments.stages.report [--params params.yaml]`
"""

from __future__ import annotations

import argparse
import json

from experiments.config import load_profile
from experiments.reporting.report import build_reports


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    summary = build_reports(load_profile(args.params))
    print(json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":
    main()
