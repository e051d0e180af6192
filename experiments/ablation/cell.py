"""One ablation cell: `ablation.base_model` with the cell's constructor overrides (num_scales,
d_state, ssm, and global_layer on the global-layer axis), its cost measured (params; MACs per
second with fvcore and ptflops; inference and training-step time with one thread, all on
`ablation.cost_seconds` of audio), then trained under the cell budget and evaluated. The
evaluation summary records `cell` (the settings), `cost`, `budget` and `training` (steps, wall
time, what stopped it): the report reads these, never the folder name.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from experiments.benchmark.speed import SpeedSettings, benchmark_model
from experiments.complexity.macs import measure
from experiments.config import ConfigError, require
from experiments.evaluation.evaluate import evaluate
from experiments.training.budget import apply_budget, resolve_budget
from experiments.training.trainer import train

COST_KEYS = ("params_m", "macs_g_per_s_fvcore", "macs_g_per_s_ptflops",
             "naive_macs_g_per_s_fvcore", "naive_macs_g_per_s_ptflops")
SPEED_KEYS = ("infer_s_median", "rtf", "infer_peak_mem_mb", "train_step_s", "peak_mem_mb")


def cell_tag(cell: dict[str, Any]) -> str:
    tag = f"scales{cell['num_scales']}_dstate{cell['d_state']}_{cell['ssm']}"
    return f"{tag}_global-{cell['global_layer']}" if cell.get("global_layer") else tag


def measure_cost(model: torch.nn.Module, seconds: float, sample_rate: int,
                 seed: int = 0) -> dict[str, Any]:
    """Params, MACs per second (both counters, ours and naive) and 1-thread CPU timings of one
    forward (batch 1) and one training step (batch 1) on `seconds` of noise."""
    row, _ = measure("cell", model, seconds, sample_rate, seed)
    settings = SpeedSettings.defaults(device="cpu", threads=1, infer_seconds=seconds, warmup=1,
                                      repeats=3, train_batch=1, train_seconds=seconds,
                                      train_repeats=1, compile=False, bf16=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        speed = benchmark_model(copy.deepcopy(model), settings, sample_rate, seed)
    finally:
        torch.set_num_threads(threads)
    return {**{k: row[k] for k in COST_KEYS}, **{k: speed[k] for k in SPEED_KEYS},
            "seconds": seconds, "sample_rate": sample_rate, "threads": 1,
            "mem_method": speed["mem_method"]}


def cell_budget(cfg: dict[str, Any], macs_g_per_s: float) -> dict[str, Any]:
    """`ablation.max_steps` steps when set; otherwise `train.budget` with the cell's MACs (and
    `ablation.train_gmacs` as its training MACs when that is set)."""
    steps = require(cfg, "ablation.max_steps")
    if steps is None:
        gmacs = cfg["ablation"].get("train_gmacs")
        if gmacs is not None:
            cfg = copy.deepcopy(cfg)
            cfg["train"]["budget"] = {**cfg["train"]["budget"], "train_gmacs": gmacs}
        return resolve_budget(cfg, macs_g_per_s)
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError("params.yaml: ablation.max_steps must be a positive integer or null")
    cfg = copy.deepcopy(cfg)
    cfg["train"]["budget"] = {**cfg["train"]["budget"], "mode": "steps"}
    cfg["train"]["max_steps"] = steps
    return resolve_budget(cfg, macs_g_per_s)


def run_cell(cfg: dict[str, Any], cell: dict[str, Any], runs_root: Path = Path("runs/ablation"),
             reports_root: Path = Path("reports/ablation")) -> dict[str, Any]:
    """Measures, trains and evaluates one cell; returns the evaluation summary."""
    from experiments.registry import build_model

    base = require(cfg, "ablation.base_model")
    sample_rate, seed = int(require(cfg, "data.sample_rate")), int(require(cfg, "seed"))
    seconds = require(cfg, "ablation.cost_seconds")
    if not isinstance(seconds, int | float) or seconds <= 0:
        raise ConfigError("params.yaml: ablation.cost_seconds must be a positive number")
    tag = cell_tag(cell)
    torch.manual_seed(seed)
    print(f"[ablate] {tag}: measuring cost on {seconds:g} s ...", flush=True)
    cost = measure_cost(build_model(base, sample_rate=sample_rate, **cell), float(seconds),
                        sample_rate, seed)
    budget = cell_budget(cfg, cost["macs_g_per_s_fvcore"])
    print(f"[ablate] {tag}: budget {budget['mode']}, {budget['max_steps']} steps", flush=True)
    metrics = train(apply_budget(cfg, budget), base, runs_root / tag, cell, budget)
    training = {k: metrics.get(k) for k in ("steps", "epochs", "wall_time_s", "fit_time_s",
                                           "stopped_by", "best_val_loss", "train_gmacs")}
    return evaluate(cfg, runs_root / tag / "model.pt", tag, reports_root / tag,
                    extra={"cell": {"base_model": base, **cell}, "cost": cost,
                           "budget": budget, "training": training})
