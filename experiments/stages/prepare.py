"""DVC stage `prepare`: builds the dataset that params.yaml's active profile names.

`python -m experiments.stages.prepare [--params params.yaml] [--profile NAME]`
"""

from __future__ import annotations

import argparse

from experiments.config import load_profile
from experiments.data.prepare import prepare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument("--profile", default=None, help="profile (default: params' `profile`)")
    args = parser.parse_args(argv)
    prepare(load_profile(args.params, args.profile))


if __name__ == "__main__":
    main()
