"""The runs of a results profile: every (model, seed) of params.yaml `results`, where its
training and evaluation live, and whether each is done (a rerun continues, it does not
restart: finished steps are skipped, an interrupted training resumes from its checkpoint)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.config import ConfigError, require
from experiments.registry import check_model_names
from experiments.reporting.inputs import read_json


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

    def changed_settings(self, cfg: dict[str, Any]) -> list[str]:
        """The settings this run's checkpoint was trained with that `cfg` (the profile) no
        longer has, as "train.lr 0.001 -> 0.002"; empty for a run that has not finished (its
        trainer checks its checkpoint) or has no checkpoint. A finished run of an older recipe
        must not be reported as a run of the current one."""
        import torch

        from experiments.training.system import CKPT_DIR, LAST
        from experiments.training.trainer import BUDGET_KEYS, train_settings

        last = self.run_dir / CKPT_DIR / LAST
        if not (self.trained() and last.is_file()):
            return []
        saved = torch.load(last, map_location="cpu", weights_only=True)["training_config"]
        recorded = read_json(self.run_dir / "train_metrics.json") or {}
        budget = require(cfg, "train.budget")
        now = {"seed": self.seed, "data": require(cfg, "data")} | {
            f"train.{k}": v for k, v in train_settings(cfg).items() if k not in BUDGET_KEYS} | {
            f"train.budget.{k}": budget.get(k) for k in ("mode", "train_gmacs")}
        was = {"seed": saved.get("seed"), "data": saved.get("data")} | {
            k: saved.get("train", {}).get(k.removeprefix("train."))
            for k in now if k.startswith("train.") and not k.startswith("train.budget.")} | {
            f"train.budget.{k}": (recorded.get("budget") or {}).get(k)
            for k in ("mode", "train_gmacs")}
        changed = [f"{k} {was[k]} -> {now[k]}" for k in now if was[k] != now[k]]
        return changed + self._changed_model(cfg)

    def _changed_model(self, cfg: dict[str, Any]) -> list[str]:
        """The constructor arguments of the trained model that the registry's `model` (a
        scale's definition may change) no longer builds, as "model.hid_chan 256 -> 128"."""
        from baselines.pretrained import load_weights_file
        from experiments.registry import build_model

        was = load_weights_file(self.run_dir / "model.pt")["model_args"]
        now = build_model(self.model, sample_rate=require(cfg, "data.sample_rate"),
                          n_src=was.get("n_src", 2)).get_model_args()
        return [f"model.{k} {was.get(k)} -> {now.get(k)}" for k in sorted(set(was) | set(now))
                if was.get(k) != now.get(k)]

    def set_aside(self) -> list[Path]:
        """Moves the run's training and evaluation folders to `<folder>.stale` (replacing an
        older one), so that it trains afresh and nothing of it is lost; returns where."""
        moved = []
        for folder in (self.run_dir, self.eval_dir):
            if folder.exists():
                stale = folder.with_name(folder.name + ".stale")
                if stale.exists():
                    shutil.rmtree(stale)
                os.replace(folder, stale)
                moved.append(stale)
        return moved


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
