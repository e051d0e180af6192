"""The runs of a results profile: every (model, seed) of params.yaml `results`, where its
training and evaluation live, and whether each is done (a rerun continues, it does not
restart: finished steps are skipped, an interrupted training resumes from its checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.config import ConfigError, require
from experiments.registry import check_model_names


@dataclass(frozen=True)
class Run:
    model: str
    seed: int
    run_dir: Path   # the trainer's folder: checkpoints, dvclive curves, model.pt
    eval_dir: Path  # per_utterance.csv and summary.json on the test split

    @property
    def name(self) -> str:
        return f"{self.model}/seed{self.seed}"

    def trained(self) -> bool:
        return (self.run_dir / "train_metrics.json").is_file() and (
            self.run_dir / "model.pt").is_file()

    def evaluated(self) -> bool:
        summary = self.eval_dir / "summary.json"
        return self.trained() and summary.is_file() and (
            summary.stat().st_mtime >= (self.run_dir / "model.pt").stat().st_mtime)


def settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """params.yaml `results`, checked."""
    results = require(cfg, "results")
    models = list(require(cfg, "results.models"))
    check_model_names(models, "params.yaml: `results.models`")
    seeds = require(cfg, "results.seeds")
    if not isinstance(seeds, dict) or set(seeds) != set(models):
        raise ConfigError("params.yaml: `results.seeds` must give the seeds of every model in "
                          f"`results.models` ({models})")
    for model, values in seeds.items():
        if not values or not all(isinstance(s, int) for s in values):
            raise ConfigError(f"params.yaml: `results.seeds.{model}` must be a list of ints")
    if require(cfg, "results.reference") not in models:
        raise ConfigError("params.yaml: `results.reference` must be one of `results.models`")
    parallel = require(cfg, "results.parallel_runs")
    if not isinstance(parallel, int) or parallel < 1:
        raise ConfigError("params.yaml: `results.parallel_runs` must be a positive integer")
    return results


def plan_runs(cfg: dict[str, Any]) -> list[Run]:
    """Every run, in the order `results.models` lists the models (the longest first keeps the
    cores busy to the end), seed by seed."""
    results = settings(cfg)
    runs_dir, out_dir = Path(results["runs_dir"]), Path(results["out_dir"])
    return [Run(model, seed, runs_dir / model / f"seed{seed}",
                out_dir / "eval" / model / f"seed{seed}")
            for seed_index in range(max(len(s) for s in results["seeds"].values()))
            for model in results["models"]
            for seed in results["seeds"][model][seed_index:seed_index + 1]]
