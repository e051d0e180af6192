"""An ablation cell's parts: its tag (every axis in the output path), its cost (params; MACs
per second with fvcore and ptflops; inference and training-step time with one thread, all on
`ablation.cost_seconds` of audio) and its training budget. The ablate stage runs a cell.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from experiments.benchmark.speed import SpeedSettings, benchmark_model
from experiments.complexity.macs import measure
from experiments.config import ConfigError, require
from experiments.training.budget import resolve_budget

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
                                      train_repeats=1, compile=False, bf16=False, onnx=False)
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
