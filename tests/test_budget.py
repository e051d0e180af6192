"""Training budgets in steps or training MACs (experiments.training.budget) and the determinism
they buy: the same settings and seed give the same weights and the same scores."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from experiments.config import ConfigError, load_profile
from experiments.data.synthetic import build_synthetic_dataset
from experiments.evaluation.evaluate import evaluate
from experiments.training.budget import apply_budget, complexity_macs, resolve_budget
from experiments.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
TINY_CONVTASNET = dict(n_filters=16, bn_chan=16, hid_chan=16, skip_chan=16, n_blocks=2,
                       n_repeats=1)


def _cfg(**train: Any) -> dict[str, Any]:
    cfg = load_profile(REPO / "params.yaml", "default")
    cfg["train"].update(train)
    return cfg


def test_steps_mode_uses_max_steps() -> None:
    budget = resolve_budget(_cfg(budget={"mode": "steps", "fwd_bwd_factor": 3}, max_steps=7), 6.0)
    assert budget["mode"] == "steps" and budget["max_steps"] == 7
    assert budget["gmacs_per_step"] == pytest.approx(6.0 * 4 * 1.0 * 3)  # batch 4 x 1 s x 3
    assert "gmacs_per_step" not in resolve_budget(
        _cfg(budget={"mode": "steps", "fwd_bwd_factor": 3}, max_steps=-1))
    with pytest.raises(ConfigError, match="train.max_steps"):
        resolve_budget(_cfg(budget={"mode": "steps", "fwd_bwd_factor": 3}, max_steps=0))


def test_macs_mode_gives_equal_training_macs_and_fixed_steps() -> None:
    cfg = _cfg(budget={"mode": "macs", "train_gmacs": 1200, "fwd_bwd_factor": 3},
               batch_size=4, segment_s=1.0)
    cheap, costly = resolve_budget(cfg, 5.0), resolve_budget(cfg, 50.0)
    assert (cheap["max_steps"], costly["max_steps"]) == (20, 2)  # 1200 / (5 x 4 x 3), 1200 / 600
    assert cheap["max_steps"] * cheap["gmacs_per_step"] == pytest.approx(1200)
    assert cheap["within_budget"] and cheap["deviation"] == pytest.approx(0)
    # rounded to the nearest step: 1200 / (7 x 12) = 14.3 -> 14, 2% under the budget
    near = resolve_budget(cfg, 7.0)
    assert near["max_steps"] == 14 and near["deviation"] == pytest.approx(14 * 84 / 1200 - 1)
    assert near["within_budget"]
    # a step costing more than the budget: one step, recorded as 50x the budget and flagged
    over = resolve_budget(cfg, 5000.0)
    assert over["max_steps"] == 1 and over["actual_gmacs"] == pytest.approx(60000)
    assert not over["within_budget"] and over["deviation"] == pytest.approx(49)
    assert apply_budget(cfg, cheap)["train"]["max_steps"] == 20 and cfg["train"]["max_steps"] == -1
    with pytest.raises(ConfigError, match="MACs per second must be known"):
        resolve_budget(cfg, None)
    with pytest.raises(ConfigError, match=r"train.budget.mode='wall'"):
        resolve_budget(_cfg(budget={"mode": "wall", "fwd_bwd_factor": 3}))


def test_complexity_table_lookup(tmp_path: Path) -> None:
    path = tmp_path / "complexity.csv"
    pd.DataFrame({"model": ["a"], "macs_g_per_s_fvcore": [4.5]}).to_csv(path, index=False)
    assert complexity_macs(path, "a") == 4.5
    with pytest.raises(ConfigError, match=r"csv: no `macs_g_per_s_fvcore` for model .b."):
        complexity_macs(path, "b")
    with pytest.raises(ConfigError, match="missing.csv: not found"):
        complexity_macs(tmp_path / "missing.csv", "a")


def test_the_default_profile_budget_is_in_steps_not_wall_time() -> None:
    cfg = load_profile(REPO / "params.yaml", "default")
    assert cfg["train"]["budget"]["mode"] in ("steps", "macs")
    assert cfg["train"]["max_time_s"] is None  # a safety cap at most, never the budget


def test_two_runs_of_the_same_training_give_identical_numbers(tmp_path: Path) -> None:
    data = tmp_path / "prepared"
    build_synthetic_dataset(data, n_train=6, n_dev=2, n_test=2, n_speakers=6, seed=0,
                            types=("mix_clean",), workers=1, progress=False)
    cfg = load_profile(REPO / "params.yaml", "smoke")
    cfg["data"].update(out_dir=str(data), task="sep_clean")
    cfg["train"].update(segment_s=0.5, batch_size=2, max_epochs=5, lr=0.01, progress_bar=False,
                        val_check_interval=2, budget={"mode": "macs", "train_gmacs": 0.05,
                                                      "fwd_bwd_factor": 3})
    cfg["threads"] = 1
    budget = resolve_budget(cfg, 0.004)  # G/s: a deterministic 4 steps
    assert budget["max_steps"] == 4
    runs = []
    for name in ("first", "second"):
        metrics = train(apply_budget(copy.deepcopy(cfg), budget), "convtasnet", tmp_path / name,
                        TINY_CONVTASNET, budget)
        summary = evaluate(cfg, tmp_path / name / "model.pt", name, tmp_path / f"eval_{name}")
        runs.append((metrics, summary))
    (first, first_eval), (second, second_eval) = runs
    assert first["steps"] == second["steps"] == 4 and first["stopped_by"] == "max_steps"
    assert first["rank_weight_digests"] == second["rank_weight_digests"]
    assert first["best_val_loss"] == second["best_val_loss"]
    assert first["train_gmacs"] == pytest.approx(4 * budget["gmacs_per_step"])
    assert first_eval["metrics"]["si_sdr_i"] == second_eval["metrics"]["si_sdr_i"]
    assert first_eval["metrics"]["sdr"] == second_eval["metrics"]["sdr"]
