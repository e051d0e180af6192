"""The ablate stage: one S4M grid cell measured (params, MACs, 1-thread speed), trained under
its step budget and evaluated; its summary records the cell's settings, cost, budget and steps,
which the report reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from experiments.ablation.cell import cell_budget
from experiments.config import ConfigError, load_profile
from experiments.data.synthetic import build_synthetic_dataset
from experiments.reporting.inputs import load_ablation
from experiments.stages import ablate

REPO = Path(__file__).resolve().parents[1]


def test_cell_budget_in_steps_or_from_the_cells_macs() -> None:
    cfg = load_profile(REPO / "params.yaml", "default")
    cfg["ablation"]["max_steps"] = 6
    assert cell_budget(cfg, 8.0)["max_steps"] == 6 and cell_budget(cfg, 8.0)["mode"] == "steps"
    cfg["ablation"]["max_steps"] = None  # the train budget, sized by the cell's own MACs
    cfg["train"].update(batch_size=4, segment_s=1.0,
                        budget={"mode": "macs", "train_gmacs": 960, "fwd_bwd_factor": 3})
    assert cell_budget(cfg, 8.0)["max_steps"] == 10 and cell_budget(cfg, 16.0)["max_steps"] == 5
    cfg["ablation"]["max_steps"] = 0
    with pytest.raises(ConfigError, match="ablation.max_steps"):
        cell_budget(cfg, 8.0)


def test_ablate_stage_writes_settings_cost_and_budget(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    build_synthetic_dataset(tmp_path / "data", n_train=4, n_dev=2, n_test=2, n_speakers=6,
                            seed=0, types=("mix_clean",), workers=1, progress=False)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["threads"] = 1
    params["data"]["out_dir"] = str(tmp_path / "data")
    params["profiles"]["smoke"]["data"] = {}
    params["profiles"]["smoke"]["ablation"] = {"max_steps": 1, "cost_seconds": 0.1}
    params["profiles"]["smoke"]["evaluate"] = {"max_utterances": 1, "n_examples": 0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert ablate.main(["--num-scales", "2", "--d-state", "4", "--ssm", "s4d"]) == 0

    summary = json.loads(Path("reports/ablation/scales2_dstate4_s4d/summary.json").read_text())
    assert summary["cell"] == {"base_model": "s4m_tiny", "num_scales": 2, "d_state": 4,
                               "ssm": "s4d"}
    assert summary["budget"]["mode"] == "steps" and summary["budget"]["max_steps"] == 1
    assert summary["training"]["steps"] == 1 and summary["training"]["stopped_by"] == "max_steps"
    cost = summary["cost"]
    assert cost["seconds"] == 0.1 and cost["threads"] == 1
    assert 1.0 < cost["params_m"] < 2.5  # S4M-tiny is 1.83M at 3 scales, d_state 64
    for key in ("macs_g_per_s_fvcore", "macs_g_per_s_ptflops", "infer_s_median", "rtf",
                "train_step_s"):
        assert math.isfinite(cost[key]) and cost[key] > 0, key
    assert cost["macs_g_per_s_ptflops"] == pytest.approx(cost["macs_g_per_s_fvcore"], rel=0.05)
    assert summary["budget"]["gmacs_per_step"] == pytest.approx(
        cost["macs_g_per_s_fvcore"] * 2 * 0.25 * 3)  # smoke: batch 2 x 0.25 s, factor 3

    (row,) = load_ablation(Path("reports"))[0].to_dict("records")
    assert (row["num_scales"], row["d_state"], row["ssm"], row["steps"]) == (2, 4, "s4d", 1)
    assert row["params_m"] == cost["params_m"]


def test_a_cells_cost_times_eager_pytorch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost columns are params, MACs and eager 1-thread times: no ONNX export per cell,
    whatever `speed.onnx` says for the speed stage."""
    from experiments.ablation import cell
    from experiments.benchmark import speed
    from experiments.registry import REGISTRY, build_model

    def no_export(*args, **kwargs):
        raise AssertionError("an ablation cell exported its model to ONNX")

    monkeypatch.setattr(speed, "onnx_inference", no_export)
    model = build_model("s4m_tiny", **REGISTRY["s4m_tiny"].tiny)
    cost = cell.measure_cost(model, 0.25, 8000)
    assert cost["params_m"] > 0 and cost["infer_s_median"] > 0 and cost["threads"] == 1
