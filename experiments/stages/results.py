"""`make results`: the CPU results profile end to end (after `dvc repro prepare`).

`python -m experiments.stages.results [--params params.yaml] [--report-only] [--ablation]`

1. MACs of every results model (the complexity stage, written to `<out_dir>/complexity.csv`;
   counted afresh when no run has started): the equal-MAC training budget needs them;
2. every (model, seed) of params.yaml `results`, `results.parallel_runs` at a time, each in its
   own process on the profile's `threads`: training (the train stage, into
   `<runs_dir>/<model>/seed<k>`), then evaluation on the whole test split (the evaluate stage,
   into `<out_dir>/eval/<model>/seed<k>`); each process's output goes to its run folder's
   `train.log` / `evaluate.log`;
3. the report (experiments.results.report): tables, statistics, curves, listening examples.
With `--ablation [grid|global]` (`make results-ablation`, `make results-global`) it runs an S4M
ablation instead, on the same recipe: the scales x d_state x ssm cells of params.yaml `ablation`
or its global-layer axis, by the ablate stage, `results.parallel_runs` at a time, then
`<out_dir>/ablation.md`, `ablation.csv` and the figures (the global-layer axis also times its
models and the results models in turn in one process: `global_layer_times.csv`).
Run it again after an interruption: finished runs are skipped and an interrupted training
resumes from its last checkpoint; a finished run trained under other settings (a changed recipe)
is moved to `<folder>.stale`, with its evaluation, and trained again. Each invocation's wall
time is appended to `<runs_dir>/invocations.csv` (`ablation_invocations.csv` for the
ablations), copied into `<out_dir>`.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from experiments.atomic import write_text
from experiments.config import load_profile
from experiments.results.plan import Run, plan_runs, settings

# `--ablation` choices -> what the invocation log calls them
ABLATIONS = {"grid": "ablation grid", "global": "global-layer axis"}


def _stage(args: list[str], log: Path) -> None:
    """`python -m experiments.stages.<args>`, output appended to `log`; raises on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        done = subprocess.run([sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args[:1])} failed (exit {done.returncode}); see {log}")


def _one_run(run: Run, profile: str, params: str, complexity: Path) -> str:
    started = time.monotonic()
    if not run.trained():
        print(f"[results] training {run.name} ...", flush=True)
        _stage(["experiments.stages.train", "--model", run.model, "--out", str(run.run_dir),
                "--override", f"seed={run.seed}", "--profile", profile, "--params", params,
                "--complexity", str(complexity)], run.run_dir / "train.log")
    if not run.evaluated():
        print(f"[results] evaluating {run.name} ...", flush=True)
        _stage(["experiments.stages.evaluate", "--model-path", str(run.run_dir / "model.pt"),
                "--name", run.name, "--out", str(run.eval_dir), "--profile", profile,
                "--params", params], run.run_dir / "evaluate.log")
    return f"[results] {run.name} done ({time.monotonic() - started:.0f} s)"


def _ablation(cells: list[dict], profile: str, params: str, out_dir: Path, runs_dir: Path,
              parallel: int) -> list[str]:
    """Every cell not evaluated yet, `parallel` at a time; returns the failures."""
    from experiments.ablation.cell import cell_tag

    def one(cell: dict) -> str:
        tag = cell_tag(cell)
        if (out_dir / "ablation" / tag / "summary.json").is_file():
            return f"[results] ablation {tag}: done before"
        print(f"[results] ablation {tag} ...", flush=True)
        _stage(["experiments.stages.ablate", "--num-scales", str(cell["num_scales"]),
                "--d-state", str(cell["d_state"]), "--ssm", cell["ssm"], "--profile", profile,
                *(["--global-layer", cell["global_layer"]] if cell.get("global_layer") else []),
                "--params", params, "--runs-root", str(runs_dir / "ablation"),
                "--reports-root", str(out_dir / "ablation")],
               runs_dir / "ablation" / tag / "ablate.log")
        return f"[results] ablation {tag} done"

    failures = []
    with ThreadPoolExecutor(parallel) as pool:
        try:
            for cell, future in [(c, pool.submit(one, c)) for c in cells]:
                try:
                    print(future.result(), flush=True)
                except RuntimeError as err:
                    failures.append(f"{cell_tag(cell)}: {err}")
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)  # start no further cell
            raise
    return failures


def _log_invocation(log: Path, out_dir: Path, started: float, wall: float, what: str) -> None:
    """Appends to `log`, in the runs folder (the log belongs to those runs: a fresh clone's
    runs start a new one), and copies it into the reports folder `out_dir`."""
    rows = pd.read_csv(log) if log.is_file() else pd.DataFrame()
    row = pd.DataFrame([{"started_utc": pd.Timestamp(started, unit="s").isoformat(),
                         "wall_s": round(wall, 1), "what": what}])
    text = pd.concat([rows, row]).to_csv(index=False)
    write_text(log, text)
    write_text(out_dir / log.name, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--report-only", action="store_true",
                        help="only rebuild the report from the runs done so far")
    parser.add_argument("--ablation", nargs="?", const="grid", choices=sorted(ABLATIONS),
                        help="run an S4M ablation on the results recipe instead: the scales x "
                             "d_state x ssm grid (default) or the global-layer axis")
    args = parser.parse_args(argv)
    started_at, started = time.time(), time.monotonic()
    # stopped (Ctrl-C, SIGTERM to the process group): the time so far is logged as an
    # invocation of its own, so that the totals stay the sum of every invocation's wall time
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args, started_at, started)
    except KeyboardInterrupt:
        profile = settings(load_profile(args.params))["profile"]
        results = settings(load_profile(args.params, profile))
        log = Path(results["runs_dir"]) / ("ablation_invocations.csv" if args.ablation
                                           else "invocations.csv")
        what = ABLATIONS[args.ablation] if args.ablation else "runs (interrupted)"
        _log_invocation(log, Path(results["out_dir"]), started_at, time.monotonic() - started,
                        what)
        print("[results] stopped; run the same command again to continue", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run(args: argparse.Namespace, started_at: float, started: float) -> int:
    profile = settings(load_profile(args.params))["profile"]
    cfg = load_profile(args.params, profile)  # `results` is top-level: every profile has it
    results = settings(cfg)
    out_dir = Path(results["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = plan_runs(cfg)
    failures: list[str] = []
    if args.ablation:
        from experiments.results import ablation

        what = ABLATIONS[args.ablation]
        if not args.report_only:
            cells = getattr(ablation, f"{args.ablation}_cells")(cfg)
            failures = _ablation(cells, profile, args.params, out_dir,
                                 Path(results["runs_dir"]), results["parallel_runs"])
            if args.ablation == "global" and not failures:
                ablation.time_global_points(cfg, out_dir)  # with nothing else running
        log = Path(results["runs_dir"]) / "ablation_invocations.csv"
        print(ablation.build_ablation_report(cfg, out_dir, log, what,
                                             time.monotonic() - started))
        _log_invocation(log, out_dir, started_at, time.monotonic() - started, what)
    elif not args.report_only:
        complexity = out_dir / "complexity.csv"
        counted = [*results["models"], *(results.get("left_out") or {})]
        # counted afresh when no run has started (a committed count may predate the counting
        # code); an interrupted set of runs keeps the counts its step budgets came from
        started_runs = any(run.run_dir.exists() for run in runs)
        if (not started_runs or not complexity.is_file()
                or set(pd.read_csv(complexity)["model"]) != set(counted)):
            print("[results] counting MACs of the results models ...", flush=True)
            _stage(["experiments.stages.complexity", "--profile", profile, "--params",
                    args.params, "--out-dir", str(out_dir), "--models", *counted],
                   Path(results["runs_dir"]) / "complexity.log")
        for run in runs:
            changed = run.changed_settings(cfg)
            if changed:
                moved = ", ".join(map(str, run.set_aside()))
                print(f"[results] {run.name} was trained with other settings "
                      f"({'; '.join(changed)}): moved to {moved}, training it again", flush=True)
        todo = [run for run in runs if not run.evaluated()]
        print(f"[results] {len(runs) - len(todo)} of {len(runs)} runs done; "
              f"{len(todo)} to go, {results['parallel_runs']} at a time", flush=True)
        with ThreadPoolExecutor(results["parallel_runs"]) as pool:
            futures = {pool.submit(_one_run, run, profile, args.params, complexity): run
                       for run in todo}
            try:
                for future, run in futures.items():
                    try:
                        print(future.result(), flush=True)
                    except RuntimeError as err:
                        failures.append(f"{run.name}: {err}")
                        print(f"[results] {run.name}: {err}", file=sys.stderr, flush=True)
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)  # start no further run
                raise
    if not args.ablation:
        from experiments.results.report import build_report

        what = "report only" if args.report_only else f"{len(runs)} runs + report"
        summary = build_report(cfg, runs, running_s=time.monotonic() - started)
        _log_invocation(Path(results["runs_dir"]) / "invocations.csv", out_dir, started_at,
                        time.monotonic() - started,
                        what)
        print(summary)
    if failures:
        print("[results] failed runs (rerun to retry):\n  " + "\n  ".join(failures),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
