"""Training budgets in steps: fixed (`train.budget.mode: steps`, the step count is
`train.max_steps`) or equal compute (`mode: macs`): every model gets the same number of training
multiply-accumulates, `train.budget.train_gmacs`, which gives each a deterministic step count,

    steps = round(train_gmacs / (MACs per second of audio x batch_size x segment_s x factor)),

with the MACs per second from the complexity stage (fvcore count, reports/complexity.csv) and
`fwd_bwd_factor` the stated cost of a training step relative to a forward pass (forward +
backward ~ 3 forwards). The budget counts one process's (rank's) batches. Rounding to whole
steps moves a run off the budget by at most half a step; a model whose single step costs more
than twice the budget still trains one step. Either way the budget records the run's actual
training MACs and its deviation from the budget, and `within_budget` is false when that
deviation exceeds BUDGET_TOLERANCE (the reports flag such runs). Wall time is never the budget:
`train.max_time_s` is only a safety cap, and a run it stops is flagged in the report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from experiments.config import ConfigError, require

MODES = ("steps", "macs")
MACS_COLUMN = "macs_g_per_s_fvcore"
BUDGET_TOLERANCE = 0.05  # relative deviation of a run's training MACs from the budget


def complexity_macs(path: str | Path, model: str, column: str = MACS_COLUMN) -> float:
    """A model's MACs per second of audio from the complexity stage's CSV."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; train.budget.mode macs needs the complexity "
                          "stage's table (`dvc repro complexity`)")
    table = pd.read_csv(path).set_index("model")
    if model not in table.index or not math.isfinite(float(table.loc[model, column])):
        raise ConfigError(f"{path}: no `{column}` for model {model!r}; rerun the complexity "
                          "stage with this model in `models`")
    return float(table.loc[model, column])


def resolve_budget(cfg: dict[str, Any], macs_g_per_s: float | None = None) -> dict[str, Any]:
    """The run's budget: {mode, max_steps, audio and (when `macs_g_per_s`, G per second of
    audio of a forward pass, is given) MACs per step}. macs mode needs `macs_g_per_s`."""
    budget = require(cfg, "train.budget")
    mode = budget.get("mode") if isinstance(budget, dict) else None
    if mode not in MODES:
        raise ConfigError(f"params.yaml: train.budget.mode={mode!r}; use one of {list(MODES)}")
    factor = require(cfg, "train.budget.fwd_bwd_factor")
    if not isinstance(factor, int | float) or factor <= 0:
        raise ConfigError("params.yaml: train.budget.fwd_bwd_factor must be a positive number")
    audio_s = float(require(cfg, "train.batch_size")) * float(require(cfg, "train.segment_s"))
    known = macs_g_per_s is not None and macs_g_per_s > 0
    costs = {"fwd_bwd_factor": factor, "audio_s_per_step": audio_s} | (
        {"macs_g_per_s": macs_g_per_s, "gmacs_per_step": macs_g_per_s * audio_s * factor}
        if known else {})
    if mode == "steps":
        steps = require(cfg, "train.max_steps")
        if not isinstance(steps, int) or not (steps >= 1 or steps == -1):
            raise ConfigError("params.yaml: train.max_steps must be a positive integer or -1 "
                              "(train.max_epochs decides) in budget mode steps")
        return {"mode": mode, "max_steps": steps, **costs}
    gmacs = require(cfg, "train.budget.train_gmacs")
    if not isinstance(gmacs, int | float) or gmacs <= 0:
        raise ConfigError("params.yaml: train.budget.train_gmacs must be a positive number")
    if not known:
        raise ConfigError(f"train.budget.mode macs: the model's MACs per second must be known "
                          f"and positive, got {macs_g_per_s}")
    steps = max(1, round(gmacs / costs["gmacs_per_step"]))
    deviation = steps * costs["gmacs_per_step"] / gmacs - 1
    return {"mode": mode, "train_gmacs": gmacs, "max_steps": steps,
            "actual_gmacs": steps * costs["gmacs_per_step"], "deviation": deviation,
            "within_budget": abs(deviation) <= BUDGET_TOLERANCE, **costs}


def apply_budget(cfg: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
    """A copy of cfg whose `train.max_steps` is the budget's step count."""
    import copy

    cfg = copy.deepcopy(cfg)
    cfg["train"]["max_steps"] = budget["max_steps"]
    return cfg
