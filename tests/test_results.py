"""The CPU results profile: scaled registry variants, the cosine schedule, the statistics, and
`experiments.stages.results` end to end on a tiny corpus (resuming where it stopped)."""

from __future__ import annotations

import inspect
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import baselines
from experiments.config import ConfigError, load_profile
from experiments.data.synthetic import build_synthetic_dataset
from experiments.registry import (
    REGISTRY,
    SCALE_CHANGES,
    SCALES,
    build_model,
    load_model,
    save_model,
)
from experiments.results.plan import plan_runs
from experiments.results.stats import finding, model_table, paired_comparisons, time_to
from experiments.training.trainer import lr_schedule
from s4m import CONFIGS

REPO = Path(__file__).resolve().parents[1]


def _published_config(name: str) -> dict:
    entry = REGISTRY[name]
    if entry.cls == "S4M":
        return CONFIGS[name]
    if entry.baseline_config:
        return getattr(baselines, entry.baseline_config)
    params = inspect.signature(getattr(baselines, entry.cls).__init__).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_cpu_variants_halve_every_width_and_depth_they_set(name: str) -> None:
    """The one rule of SCALES["cpu"]: each width or depth override is half the published value;
    any other override is one of the model's SCALE_CHANGES["cpu"]."""
    scaled = REGISTRY[name].scaled["cpu"]
    published = _published_config(name)
    changes = SCALE_CHANGES["cpu"].get(name, {})
    assert scaled, name
    for key, value in scaled.items():
        if key in changes:
            assert value == changes[key] != published.get(key), (name, key)
        else:
            assert value * 2 == published[key], (name, key, value, published[key])


def test_scaled_variant_builds_saves_and_loads(tmp_path: Path) -> None:
    assert "cpu" in SCALES
    model = build_model("convtasnet@cpu")
    assert model.masker.bn_chan == 64 and model.registry_spec["name"] == "convtasnet@cpu"
    save_model(model, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt").eval()
    wav = torch.randn(1, 800)
    torch.testing.assert_close(loaded(wav), model.eval()(wav))
    with pytest.raises(ValueError, match="scaled variants"):
        build_model("convtasnet@gpu")


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1.0)
    train = {"schedule": "cosine", "max_steps": 110, "warmup_steps": 10}
    schedule = lr_schedule(optimizer, train)
    seen = []
    for _ in range(110):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen[0] == pytest.approx(0.1) and seen[9] == pytest.approx(1.0)
    assert seen[60] == pytest.approx(0.5) and optimizer.param_groups[0]["lr"] == pytest.approx(0)
    assert all(a >= b for a, b in zip(seen[10:], seen[11:], strict=False))
    with pytest.raises(ConfigError, match="step budget"):
        lr_schedule(optimizer, {**train, "max_steps": -1})


def _per_utterance(shift: float, noise: float = 0.5, n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    base = rng.normal(8, 2, n)
    rows = []
    for model, offset in (("ref", shift), ("other", 0.0)):
        for seed in (0, 1):
            values = base + offset + rng.normal(0, noise, n)
            rows.append(pd.DataFrame({"model": model, "seed": seed, "utt_id": range(n),
                                      "si_sdr_i": values, "sdr_i": values + 0.5}))
    return pd.concat(rows)


def _runs(per_utt: pd.DataFrame) -> pd.DataFrame:
    means = per_utt.groupby(["model", "seed"], sort=False)[["si_sdr_i", "sdr_i"]].mean()
    return means.rename(columns={"si_sdr_i": "si_sdri_db", "sdr_i": "sdri_db"}).reset_index()


def test_paired_comparison_finds_a_real_difference_and_none_where_there_is_none() -> None:
    better = _per_utterance(shift=1.0)
    models = model_table(_runs(better), better, resamples=500)
    ref = models.set_index("model").loc["ref"]
    assert ref["seeds"] == 2 and ref["si_sdri_ci95_low"] < ref["si_sdri_db"] < ref[
        "si_sdri_ci95_high"]
    paired = paired_comparisons(better, "ref", resamples=500).iloc[0]
    assert paired["p_value"] < 1e-6 and paired["rank_biserial"] > 0.9
    assert 0.5 < paired["median_diff_db"] < 1.5  # the true shift is 1 dB
    assert paired["median_diff_ci95_low"] < paired["median_diff_db"] < paired[
        "median_diff_ci95_high"]
    assert "ref" in finding(paired_comparisons(better, "ref", 500), models)
    assert "better than other" in finding(paired_comparisons(better, "ref", 500), models)

    same = _per_utterance(shift=0.0)
    paired_same = paired_comparisons(same, "ref", resamples=500)
    assert paired_same.iloc[0]["p_value"] > 0.05
    assert "no significant difference from other" in finding(
        paired_same, model_table(_runs(same), same, 500))


def test_time_to_threshold_is_the_first_validation_of_the_seed_mean() -> None:
    curves = pd.DataFrame({"model": "m", "seed": [0, 0, 0, 1, 1, 1], "step": [1, 2, 3] * 2,
                           "val_sisdri": [2, 6, 9, 4, 4, 12], "train_tmacs": [1, 2, 3] * 2,
                           "wall_s": [10, 20, 30, 12, 22, 32]})
    table = time_to(curves, [5.0, 10.0, 20.0]).set_index("threshold_db")
    assert table.loc[5.0, "steps"] == 2 and table.loc[5.0, "wall_s"] == 21  # mean 5.0 at step 2
    assert table.loc[10.0, "steps"] == 3 and math.isnan(table.loc[20.0, "steps"])


@pytest.mark.slow
def test_make_results_runs_reports_and_continues_where_it_stopped(tmp_path: Path,
                                                                   monkeypatch) -> None:
    prepared = tmp_path / "prepared"
    build_synthetic_dataset(prepared, n_train=6, n_dev=2, n_test=3, n_speakers=6, seed=0,
                            types=("mix_clean",), workers=1, progress=False)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(out_dir=str(prepared))
    params["results"].update(
        models=["convtasnet@cpu", "s4m_tiny@cpu"],
        seeds={"convtasnet@cpu": [0], "s4m_tiny@cpu": [0, 1]}, left_out={},
        runs_dir=str(tmp_path / "runs"), out_dir=str(tmp_path / "out"), bootstrap_resamples=200,
        example_seconds=0.5)
    params["profiles"]["cpu"]["train"].update(
        budget={"mode": "macs", "train_gmacs": 12, "fwd_bwd_factor": 3}, segment_s=0.25,
        batch_size=2, warmup_steps=1, val_check_interval=2, limit_val_batches=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    command = [sys.executable, "-m", "experiments.stages.results", "--params",
               str(tmp_path / "params.yaml")]
    stale = tmp_path / "out" / "complexity.csv"  # e.g. committed, counted by older code
    stale.parent.mkdir()
    stale.write_text("model,macs_g_per_s_fvcore\nconvtasnet@cpu,1e-6\ns4m_tiny@cpu,1e-6\n")
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                           stdin=subprocess.DEVNULL)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "0 of 3 runs done" in first.stdout
    assert pd.read_csv(stale)["macs_g_per_s_fvcore"].gt(0.01).all()  # counted afresh

    out = tmp_path / "out"
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns[:7]) == ["model", "seed", "steps", "train_gmacs", "wall_s",
                                         "si_sdri_db", "sdri_db"]
    assert sorted(zip(summary["model"], summary["seed"], strict=True)) == [
        ("convtasnet@cpu", 0), ("s4m_tiny@cpu", 0), ("s4m_tiny@cpu", 1)]
    # equal training MACs, rounded to whole steps: 12 G / (MACs/s x 0.5 s x 3)
    assert (summary["train_gmacs"].sub(12).abs() / 12 <= 0.5).all()
    assert len(pd.read_csv(out / "per_utterance.csv")) == 3 * 3
    paired = pd.read_csv(out / "paired.csv")
    assert list(paired["other"]) == ["convtasnet@cpu"] and paired["p_value"].between(0, 1).all()
    curves = pd.read_csv(out / "curves.csv")
    assert curves["wall_s"].gt(0).all() and curves["val_sisdri"].map(math.isfinite).all()
    wavs = sorted(p.name for p in (out / "examples").glob("*.wav"))
    assert len(wavs) == 2 * (3 + 2 * 2)
    for png in ("figures/curves_steps.png", "figures/curves_macs.png", "figures/curves_wall.png",
                "figures/sisdri_vs_macs.png", "examples/spectrograms.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    report = json.loads((out / "summary.json").read_text())
    assert report["is_result"] is False and report["runs_missing"] == []
    markdown = (out / "results.md").read_text()
    assert "training check, not a result" in markdown and report["finding"] in markdown

    # Interrupted: one run's evaluation lost; another killed after its last checkpoint, before
    # its export. The second invocation continues both and retrains nothing.
    (out / "eval/s4m_tiny@cpu/seed1/summary.json").unlink()
    steps = summary.set_index("model").loc["convtasnet@cpu", "steps"]
    for name in ("train_metrics.json", "model.pt"):
        (tmp_path / "runs/convtasnet@cpu/seed0" / name).unlink()
    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                            stdin=subprocess.DEVNULL)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "1 of 3 runs done; 2 to go" in second.stdout
    assert "training s4m_tiny@cpu/seed1" not in second.stdout
    assert "evaluating s4m_tiny@cpu/seed1" in second.stdout
    resumed = json.loads((tmp_path / "runs/convtasnet@cpu/seed0/train_metrics.json").read_text())
    assert resumed["resumed"] is True and resumed["steps"] == steps
    assert len(pd.read_csv(out / "invocations.csv")) == 2
    cfg = load_profile(tmp_path / "params.yaml", "cpu")
    assert cfg["threads"] == 1 and cfg["train"]["schedule"] == "cosine"

    # A changed recipe: the finished runs say what changed, and one set aside keeps its files.
    runs = plan_runs(cfg)
    assert [run.changed_settings(cfg) for run in runs] == [[]] * 3
    lr = cfg["train"]["lr"]
    cfg["train"]["lr"] = lr / 2
    assert [run.changed_settings(cfg) for run in runs] == [[f"train.lr {lr} -> {lr / 2}"]] * 3
    cfg["train"]["lr"] = lr  # and a scale redefined: the trained model is no longer that scale
    convtasnet = REGISTRY["convtasnet"].scaled["cpu"]
    monkeypatch.setitem(REGISTRY["convtasnet"].scaled, "cpu", {**convtasnet, "hid_chan": 64})
    assert [run.changed_settings(cfg) for run in runs] == [
        [f"model.hid_chan {convtasnet['hid_chan']} -> 64"] if run.model == "convtasnet@cpu"
        else [] for run in runs]
    moved = runs[0].set_aside()
    assert not runs[0].run_dir.exists() and (moved[0] / "model.pt").is_file()
    assert (moved[1] / "summary.json").is_file() and not runs[0].trained()

    # The ablation grid on the same recipe: one cell and one of the global-layer axis, their
    # cost and quality columns.
    params["ablation"].update(num_scales=[3], d_state=[8], ssm=["s4d"], cost_seconds=0.1,
                              global_layers=["s6"], global_at={"num_scales": 3, "d_state": 8})
    params["profiles"]["cpu"]["ablation"]["train_gmacs"] = 6
    params["profiles"]["cpu"]["speed"] = {"infer_seconds": 0.25, "ratio_repeats": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for which in ("grid", "global"):
        grid = subprocess.run([*command, "--ablation", which], cwd=tmp_path,
                              capture_output=True, text=True, timeout=900,
                              stdin=subprocess.DEVNULL)
        assert grid.returncode == 0, grid.stdout[-3000:] + grid.stderr[-3000:]
    ablation = pd.read_csv(out / "ablation.csv")
    assert list(zip(ablation["num_scales"], ablation["d_state"], ablation["ssm"],
                    ablation["global_layer"], strict=True)) == [(3, 8, "s4", "s6"),
                                                                 (3, 8, "s4d", "s4d")]
    assert ablation[["si_sdri_db", "params_m", "macs_g_per_s_fvcore", "infer_s_median"]].map(
        math.isfinite).all(axis=None)
    assert "training check, not a result" in (out / "ablation.md").read_text()
    assert (out / "figures/ablation_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "figures/global_layers.png").read_bytes()[:4] == b"\x89PNG"
    # every point of that figure timed in turn in one process, beside nothing else
    times = pd.read_csv(out / "global_layer_times.csv")
    assert list(zip(times["kind"], times["label"], strict=True)) == [
        ("global layer", "s6"), ("model", "convtasnet@cpu"), ("model", "s4m_tiny@cpu")]
    assert times["infer_s_median"].gt(0).all() and (times["rounds"] == 2).all()
    assert (times["threads"] == 1).all() and (times["seconds"] == 0.25).all()
    timed = pd.read_csv(out / "ablation_invocations.csv")["what"].tolist()
    assert timed == ["ablation grid", "global-layer axis"]


def test_readme_states_the_committed_finding() -> None:
    """The README's sentence on S4M-tiny against the baselines is the committed report's."""
    finding = json.loads((REPO / "reports/cpu/summary.json").read_text())["finding"]
    readme = " ".join((REPO / "README.md").read_text().split())
    assert " ".join(finding.split()) in readme


def test_readme_quotes_the_committed_results_table() -> None:
    """The README's results table is reports/cpu/models.csv, row for row, at its precision."""
    models = pd.read_csv(REPO / "reports/cpu/models.csv")
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("**What it measured**"):]
    rows = re.findall(r"^\| `(\S+@cpu)` \|(.*)\|$", section.split("\n\n", 2)[1], re.M)
    quoted = {name: [c.strip() for c in cells.split("|")] for name, cells in rows}
    assert list(quoted) == list(models["model"]), "the README's results table lists other models"
    for r in models.itertuples():
        std = "" if pd.isna(r.si_sdri_seed_std) else f", ±{r.si_sdri_seed_std:.2f}"
        assert quoted[r.model] == [
            f"{r.params_m:.2f}M", f"{r.macs_g_per_s:.2f}", str(r.seeds), str(r.steps),
            f"{r.si_sdri_db:.2f} [{r.si_sdri_ci95_low:.2f}, {r.si_sdri_ci95_high:.2f}]{std}",
            f"{r.sdri_db:.2f}"], r.model


def test_readme_quotes_the_committed_global_layer_axis() -> None:
    """The README's global-layer numbers are reports/cpu/ablation.csv's, and the 'within'
    spread of the global layers is smaller than the seed spread it is compared with."""
    at = yaml.safe_load((REPO / "params.yaml").read_text())["ablation"]["global_at"]
    table = pd.read_csv(REPO / "reports/cpu/ablation.csv").query(
        f"num_scales == {at['num_scales']} and d_state == {at['d_state']} and ssm == 's4'"
    ).set_index("global_layer")  # the axis's cells, not the grid's
    readme = " ".join((REPO / "README.md").read_text().split())
    quoted = re.search(r"test SI-SDRi s4 ([\d.]+), s4d ([\d.]+), s6 ([\d.]+), attention "
                       r"([\d.]+), none ([\d.]+) dB", readme)
    assert quoted, "the README's global-layer sentence changed form"
    layers = ["s4", "s4d", "s6", "attention", "none"]
    assert [float(x) for x in quoted.groups()] == [
        round(table.loc[layer, "si_sdri_db"], 2) for layer in layers]
    within = re.search(r"the four global layers lie within ([\d.]+) dB of each other, less than "
                       r"the ([\d.]+) dB between S4M-tiny@cpu's seeds", readme)
    seeds = pd.read_csv(REPO / "reports/cpu/summary.csv").query("model == 's4m_tiny@cpu'")
    layer_db = table.loc[layers[:4], "si_sdri_db"]
    assert within and float(within[1]) == round(layer_db.max() - layer_db.min(), 2)
    assert float(within[2]) == round(seeds["si_sdri_db"].max() - seeds["si_sdri_db"].min(), 2)
    assert float(within[1]) < float(within[2])


def test_readme_quotes_the_committed_ablation_grid() -> None:
    """The README's grid table is reports/cpu/ablation.csv's grid cells, row for row, and its
    sentence on the number of scales (every 3-scale cell below every 5-scale one) is the table's."""
    table = pd.read_csv(REPO / "reports/cpu/ablation.csv")
    axes = yaml.safe_load((REPO / "params.yaml").read_text())["ablation"]
    grid = table[(table["global_layer"] == table["ssm"])
                 & table["num_scales"].isin(axes["num_scales"])
                 & table["d_state"].isin(axes["d_state"])].sort_values(
        ["num_scales", "d_state", "ssm"])
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("**What the grid measured**"):]
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (s4d?) \|(.*)\|$", section.split("\n\n", 2)[1],
                      re.M)
    assert len(rows) == len(grid) == 8, "the README's grid table lists other cells"
    for (scales, d_state, ssm, cells), r in zip(rows, grid.itertuples(), strict=True):
        assert (int(scales), int(d_state), ssm) == (r.num_scales, r.d_state, r.ssm)
        assert [c.strip() for c in cells.split("|")] == [
            str(r.steps), f"{r.macs_g_per_s_fvcore:.2f}",
            f"{r.si_sdri_db:.2f} ± {r.si_sdri_ci95:.2f}", f"{r.sdri_db:.2f}"], r
    text = " ".join(section.split())
    by_scales = grid.groupby("num_scales")["si_sdri_db"]
    quoted = re.search(r"the 3-scale cells end at ([-\d.]+) to ([-\d.]+) dB, the 5-scale cells "
                       r"at ([-\d.]+) to ([-\d.]+) dB", text)
    assert quoted, "the README's sentence on the scales changed form"
    assert [float(x) for x in quoted.groups()] == [
        round(v, 2) for v in (by_scales.min()[3], by_scales.max()[3], by_scales.min()[5],
                              by_scales.max()[5])]
    assert by_scales.max()[3] < by_scales.min()[5]


def test_readme_quotes_the_committed_global_layer_times() -> None:
    """The README's 1-thread times of the global-layer figure are global_layer_times.csv's."""
    times = pd.read_csv(REPO / "reports/cpu/global_layer_times.csv").set_index("label")
    readme = " ".join((REPO / "README.md").read_text().split())
    labels = {"none": "none", "s4": "s4", "s4d": "s4d", "attention": "attention", "s6": "s6",
              "SuDoRM-RF@cpu": "sudormrf@cpu", "Conv-TasNet@cpu": "convtasnet@cpu",
              "TDANet@cpu": "tdanet@cpu", "S4M-tiny@cpu": "s4m_tiny@cpu"}
    quoted = re.search(r"medians of (\d+) rounds\): (.*?)\. The s4 cell", readme)
    assert quoted, "the README's sentence on the figure's times changed form"
    assert int(quoted[1]) == times["rounds"].min() == times["rounds"].max()
    pairs = re.findall(r"([\w@-]+) ([\d.]+)(?: s)?[,;]?", quoted[2])
    assert {labels[name]: float(value) for name, value in pairs} == {
        label: round(times.loc[label, "infer_s_median"], 2) for label in labels.values()}


def test_a_stopped_invocation_logs_its_wall_time(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C or SIGTERM: the time so far is logged as an invocation, exit status 130."""
    from experiments.stages import results as stage

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["results"].update(out_dir=str(tmp_path / "out"), runs_dir=str(tmp_path / "runs"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def stopped(*_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "_run", stopped)
    assert stage.main(["--params", str(tmp_path / "params.yaml")]) == 130
    assert stage.main(["--params", str(tmp_path / "params.yaml"), "--ablation", "global"]) == 130
    assert pd.read_csv(tmp_path / "out/invocations.csv")["what"].tolist() == [
        "runs (interrupted)"]
    assert (tmp_path / "runs/invocations.csv").read_text() == (
        tmp_path / "out/invocations.csv").read_text()
    assert pd.read_csv(tmp_path / "out/ablation_invocations.csv")["what"].tolist() == [
        "global-layer axis"]
