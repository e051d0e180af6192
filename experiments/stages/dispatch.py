"""Runs the pending train, evaluate and ablate stages as submitit job arrays, then records them.

    python -m experiments.stages.dispatch [--executor slurm|local|debug] [-S key=value ...]
                                          [--dry-run] [--wait]
    python -m experiments.stages.dispatch --collect

Each task runs exactly the command `dvc repro` would run for its stage, in the repository (on
the cluster's shared filesystem), logging to runs/_dispatch/<job id>/. `--collect` runs
`dvc commit` for the stages whose tasks succeeded with complete outputs and lists the failed
ones with their logs; dispatch again to rerun those. Cluster settings: params.yaml `cluster:`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dvc.repo import Repo

from experiments.config import ConfigError
from experiments.dispatch.cluster import EXECUTORS, load_cluster
from experiments.dispatch.plan import PlanError
from experiments.dispatch.run import collect, dispatch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--executor", choices=EXECUTORS, default="slurm")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="cluster setting, e.g. -S partition=gpu")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the job arrays and their sbatch options; submit nothing")
    parser.add_argument("--wait", action="store_true", help="wait until the jobs have ended")
    parser.add_argument("--collect", action="store_true",
                        help="record finished stages in dvc.lock (after --wait: this run's)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    root = Path(Repo.find_root()).resolve()
    try:
        settings = load_cluster(root / args.params, args.overrides)
        if args.wait or not args.collect:
            dispatch(root, args.executor, settings, dry_run=args.dry_run, wait=args.wait)
        if args.collect and not args.dry_run:
            report = collect(root)
            return 1 if report["failed"] or report["incomplete"] else 0
    except (ConfigError, PlanError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
