"""experiments.reporting.report on small synthetic stage outputs (no training): the quality rule
on both sides, MACs at each source's convention, LaTeX escaping, partial and empty ablation
grids, provenance of each table's figures, plain log ticks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from experiments.published import load_published
from experiments.reporting import figures, inputs, paper, report
from experiments.reporting.rule import NOT_A_RESULT, QualityRule

MODELS = ["s4m_tiny", "s4m", "convtasnet", "sepformer"]
MACS = {"s4m_tiny": 6.0, "s4m": 22.5, "convtasnet": 4.9, "sepformer": 69.3}  # G/s, fvcore
ENV = {"commit": "abc1234", "device": "cpu: Test CPU (2 cores)", "threads": "1",
       "date": "2026-01-01 00:00 UTC", "profile": "default"}


def _metrics(mean: float) -> dict[str, Any]:
    stats = {"mean": mean, "std": 1.0, "ci95": 0.5, "ci95_low": mean - 0.5,
             "ci95_high": mean + 0.5, "count": 4}
    return {"si_sdr": stats, "si_sdr_i": stats, "sdr": stats, "sdr_i": stats}


def _write(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))


def _cfg(min_sisdri_db: float = 5.0, min_steps: int = 100) -> dict[str, Any]:
    return {"profile": "default", "threads": 2, "models": MODELS,
            "data": {"source": "synthetic", "task": "sep_clean", "sample_rate": 8000,
                     "mode": "min"},
            "ablation": {"base_model": "s4m_tiny"},
            "report": {"min_sisdri_db": min_sisdri_db, "min_steps": min_steps}}


def _stage_outputs(root: Path, si_sdri: float, steps: int, cells: list[tuple] | None = None,
                   ) -> tuple[Path, Path]:
    """reports/ and runs/ as the stages write them, for MODELS."""
    reports, runs = root / "reports", root / "runs"
    for i, model in enumerate(MODELS):
        _write(reports / "eval" / model / "summary.json",
               {"count": 4, "metrics": _metrics(si_sdri - i), "env": ENV | {"threads": "2"}})
        per_step = MACS[model] * 4 * 3
        _write(runs / model / "train_metrics.json",
               {"steps": steps, "wall_time_s": 1.5, "train_wall_s": 12.5,
                "stopped_by": "max_steps",
                "loss": "neg_sisdr", "threads": 2, "train_gmacs": steps * per_step,
                "budget": {"mode": "macs", "max_steps": steps, "gmacs_per_step": per_step,
                           "train_gmacs": steps * MACS[MODELS[0]] * 4 * 3}})
        _write(runs / model / "dvclive/plots/metrics/val/loss.tsv",
               "step\tloss\n" + "".join(f"{s}\t{-si_sdri + 10 / s}\n" for s in (1, 5, 10)))
    pd.DataFrame({"model": MODELS, "params_m": [1.83, 3.53, 5.05, 25.7],
                  "macs_g_per_s_fvcore": [MACS[m] for m in MODELS],
                  "macs_g_per_s_ptflops": [MACS[m] * 1.01 for m in MODELS]}
                 ).to_csv(reports / "complexity.csv", index=False)
    # totals on 16000 samples (2 s at 8 kHz): about twice the per-second figures
    conventions = [{"model": m, "input_samples": n, "sample_rate": 8000,
                    "macs_g_fvcore": MACS[m] * n / 8000,
                    "macs_g_ptflops": MACS[m] * n / 8000 * 1.01,
                    "naive_macs_g_fvcore": 1.0, "naive_macs_g_ptflops": 2.0}
                   for m in MODELS for n in (8000, 16000)]
    _write(reports / "complexity.json", {"environment": ENV | {"commit": "c0mplex"},
                                         "settings": {"seconds": 1.0}, "conventions": conventions})
    pd.DataFrame({"model": MODELS, "rtf": [0.5, 1.2, 0.3, 2.4]}).to_csv(
        reports / "speed.csv", index=False)
    _write(reports / "speed.json", {"environment": ENV | {"commit": "5peed00"}})
    pd.DataFrame([{"model": m, "length_s": n, "status": "too_slow" if (m, n) == ("sepformer", 4)
                   else "ok", "infer_s": 0.1 * n * (i + 1), "peak_mem_mb": 10.0 * n}
                  for i, m in enumerate(MODELS) for n in (1, 2, 4)]
                 ).to_csv(reports / "speed_vs_length.csv", index=False)
    for scales, d_state, ssm, cost in cells or []:
        summary = {"count": 4, "metrics": _metrics(si_sdri - scales / 10), "env": ENV,
                   "cell": {"base_model": "s4m_tiny", "num_scales": scales, "d_state": d_state,
                            "ssm": ssm},
                   "training": {"steps": steps}, "budget": {"mode": "steps", "max_steps": steps}}
        if cost:
            summary["cost"] = {"params_m": 1.8 + d_state / 100, "seconds": 0.5,
                               "macs_g_per_s_fvcore": 5 + scales, "macs_g_per_s_ptflops": 5.1,
                               "infer_s_median": 0.01 * scales, "rtf": 0.02}
        _write(reports / "ablation" / f"scales{scales}_dstate{d_state}_{ssm}" / "summary.json",
               summary)
    (reports / "ablation").mkdir(parents=True, exist_ok=True)
    return reports, runs


FULL_GRID = [(s, d, k, True) for s in (3, 5) for d in (8, 32) for k in ("s4", "s4d")]


@pytest.fixture(scope="module")
def check_side(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Reports of runs below the rule (a training check)."""
    reports, runs = _stage_outputs(tmp_path_factory.mktemp("check"), si_sdri=-3.0, steps=20,
                                   cells=FULL_GRID)
    return reports, report.build_reports(_cfg(), reports, runs)


@pytest.fixture(scope="module")
def result_side(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Reports of runs that meet the rule (a result)."""
    reports, runs = _stage_outputs(tmp_path_factory.mktemp("result"), si_sdri=15.0, steps=500,
                                   cells=FULL_GRID)
    return reports, report.build_reports(_cfg(), reports, runs)


# ---------------------------------------------------------------------------------- rule 2
def test_quality_rule_both_sides() -> None:
    rule = QualityRule(min_sisdri_db=5.0, min_steps=100)
    assert rule.judge([2.0, 6.0], [100, 150]).is_result
    low = rule.judge([2.0, 4.9], [100, 150])
    assert not low.is_result and "4.90 dB < 5 dB" in low.reason
    short = rule.judge([2.0, 6.0], [99, 150])
    assert not short.is_result and "fewest training steps 99 < 100" in short.reason
    unknown = rule.judge([6.0, 7.0], [None, 150])
    assert not unknown.is_result and "without a training record" in unknown.reason
    assert not rule.judge([], []).is_result
    assert low.label("SI-SDRi (dB)") == f"SI-SDRi (dB), {NOT_A_RESULT}"


def test_reports_label_a_training_check(check_side: tuple[Path, dict[str, Any]]) -> None:
    reports, summary = check_side
    assert summary["quality"]["is_result"] is False
    assert summary["ablation_quality"]["is_result"] is False
    results_md = (reports / "results.md").read_text()
    header = results_md.split("\n| model")[1].split("\n")[0]
    assert f"| SI-SDRi (dB), {NOT_A_RESULT}" in header and f"| SDRi (dB), {NOT_A_RESULT}" in header
    assert "best SI-SDRi -3.00 dB < 5 dB" in results_md
    assert "fewest training steps 20 < 100" in results_md
    assert NOT_A_RESULT in (reports / "results.tex").read_text()
    assert f"si_sdri_db, {NOT_A_RESULT}" in (reports / "ablation.md").read_text()
    assert f"SI-SDRi here, {NOT_A_RESULT}" in (reports / "paper_vs_here.md").read_text()
    # the budget and each model's steps are stated
    assert "Equal compute" in results_md and "s4m_tiny 20, s4m 20" in results_md
    # each model's actual training MACs against the budget (the first model's), the rest flagged
    assert f"Actual training MACs: {MODELS[0]} " in results_md and "(+0%)" in results_md
    assert f"Off the budget by more than 5% (a step does not divide it finely enough): " \
           f"{', '.join(MODELS[1:])}" in results_md
    for name in ("sisdri_vs_macs", "training_curves", "ablation_heatmap", "speed_vs_length"):
        assert (reports / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_train_wall_is_the_training_over_every_resumption(
        check_side: tuple[Path, dict[str, Any]]) -> None:
    """A resumed run's last invocation (wall_time_s 1.5 s) is not its training time (12.5 s)."""
    reports, _ = check_side
    table = pd.read_csv(reports / "results.csv")
    assert (table["train_wall_s"] == 12.5).all()
    main_table = (reports / "results.md").read_text().split("\n| model")[1].split("\n\n")[0]
    assert main_table.count(" 12.50 |") == len(MODELS) and " 1.50 |" not in main_table


def test_reports_state_a_result_when_the_rule_holds(
        result_side: tuple[Path, dict[str, Any]]) -> None:
    reports, summary = result_side
    assert summary["quality"] == {"is_result": True, "reason": (
        "best SI-SDRi 15.00 dB >= 5 dB and every run trained >= 100 steps")}
    results_md = (reports / "results.md").read_text()
    header = results_md.split("\n| model")[1].split("\n")[0]
    assert "| SI-SDRi (dB) " in header and NOT_A_RESULT not in results_md
    assert "**result** (best SI-SDRi 15.00 dB" in results_md
    assert NOT_A_RESULT not in (reports / "results.tex").read_text()
    assert summary["steps"] == dict.fromkeys(MODELS, 500)


def test_the_rule_comes_from_params() -> None:
    assert QualityRule.from_config(_cfg(min_sisdri_db=-10, min_steps=10)) == QualityRule(-10, 10)
    with pytest.raises(ValueError, match="report.min_steps"):
        QualityRule.from_config(_cfg() | {"report": {"min_sisdri_db": 1}})


# ---------------------------------------------------------------------------------- provenance
def test_each_table_names_where_its_figures_were_measured(
        check_side: tuple[Path, dict[str, Any]]) -> None:
    reports, _ = check_side
    results_md = (reports / "results.md").read_text()
    measured = results_md.split("## Where these figures were measured")[1]
    assert "c0mplex" in measured and "5peed00" in measured and "abc1234" in measured
    assert "Test CPU" in measured
    assert "c0mplex" in (reports / "paper_vs_here.md").read_text()
    lengths = results_md.split("## Inference time against input length")[1]
    assert "too slow" in lengths and "1 s" in lengths and "| 1.2 " in lengths


# ---------------------------------------------------------------------------------- published
def test_macs_at_each_source_convention(check_side: tuple[Path, dict[str, Any]]) -> None:
    reports, _ = check_side
    published = load_published()
    conventions = pd.DataFrame(json.loads((reports / "complexity.json").read_text())[
        "conventions"])
    table = paper.macs_at_conventions(MODELS, published, conventions)
    row = {(r.model, r.source): r for r in table.itertuples()}
    # SepReformer: ptflops, total on 16000 samples at 8 kHz, not per second
    s4m = row["s4m", "sepreformer"]
    assert s4m.published == 38.4 and "not per second" in s4m.convention
    assert s4m.here == pytest.approx(22.5 * 2 * 1.01)
    assert s4m._7 == pytest.approx(22.5 * 2 * 1.01 / 38.4)  # here / published
    # SPMamba / SonicSim: 16000 samples at 16 kHz, per second (1 s), counter not stated: fvcore
    ctn = row["convtasnet", "sonicsim"]
    assert ctn.here == pytest.approx(4.9 * 2) and "16 kHz" in ctn.convention
    # sudo_rm_rf issue: 8000 samples at 8 kHz per second = our own convention
    assert row["convtasnet", "sudormrf_issue3"].here == pytest.approx(4.9)
    # ratios within a source do not depend on the convention
    frame = table.set_index(["model", "source"])
    assert frame.loc[("s4m", "sepreformer"), "published / sepformer"] == pytest.approx(38.4 / 86.9)
    assert frame.loc[("s4m", "sepreformer"), "here / sepformer"] == pytest.approx(22.5 / 69.3)
    assert frame.loc[("s4m", "sepreformer"), "here / convtasnet"] == pytest.approx(22.5 / 4.9)
    assert math.isnan(frame.loc[("convtasnet", "spmamba"), "published / sepformer"])

    text = (reports / "paper_vs_here.md").read_text()
    assert "**Our S4M reconstruction**" in text and "38.4 G" in text and "3.53M params" in text
    assert "train-100" in text and "speed perturbation" in text  # quality conditions


def test_sudormrf_rows_are_the_model_we_build() -> None:
    sudormrf = load_published()["models"]["sudormrf"]
    assert sudormrf["params_m"]["value"] == 2.7
    assert [(r["si_sdri"], r["sdri"]) for r in sudormrf["results"]["libri2mix"]] == [(13.5, 14.0)]
    assert [(r["si_sdri"], r["sdri"]) for r in sudormrf["results"]["wham"]] == [(12.9, 13.3)]


def test_published_figures_without_conventions_are_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "published.yaml"
    bad.write_text(json.dumps({"sources": {"a": "paper"}, "models": {
        "x": {"macs": [{"value": 1.0, "source": "a", "sample_rate": 8000}]}}}))
    with pytest.raises(ValueError, match=r"models.x.macs\[0\] needs keys"):
        load_published(bad)


# ---------------------------------------------------------------------------------- LaTeX
def test_latex_escaping_through_pandas(check_side: tuple[Path, dict[str, Any]]) -> None:
    reports, _ = check_side
    results = inputs.load_results(MODELS, reports, reports.parent / "runs")
    results.loc[0, "model"] = "s4m_tiny & 50% #1"
    verdict = QualityRule(5.0, 100).judge(results["si_sdri_db"], results["steps"])
    latex = report.latex_table(report.results_display(results, verdict), "Results, profile x_y")
    assert r"s4m\_tiny \& 50\% \#1" in latex and r"x\_y" in latex
    assert r"$\pm$" in latex and "±" not in latex
    assert r"\begin{table}" in latex and r"\toprule" in latex


# ---------------------------------------------------------------------------------- ablation
def test_ablation_report(check_side: tuple[Path, dict[str, Any]]) -> None:
    reports, summary = check_side
    text = (reports / "ablation.md").read_text()
    assert "mode steps, 20 steps" in text and "0.5 s of audio" in text
    assert pd.read_csv(reports / "ablation.csv")["macs_g_per_s_fvcore"].notna().sum() == 8
    assert summary["best_ablation"]["num_scales"] == 3


def test_partial_and_old_ablation_cells(tmp_path: Path) -> None:
    cells = [(3, 8, "s4", True), (5, 32, "s4", True), (3, 8, "s4d", False)]  # s4d: no cost
    reports, _ = _stage_outputs(tmp_path, si_sdri=-3.0, steps=20, cells=cells)
    ablation, summaries = inputs.load_ablation(reports)
    assert len(ablation) == 3 and len(summaries) == 3
    s4d = ablation[ablation["ssm"] == "s4d"].iloc[0]
    assert s4d["steps"] == 20 and math.isnan(float(s4d["params_m"]))
    verdict = QualityRule(5.0, 10).judge(ablation["si_sdri_db"], ablation["steps"])
    figures.plot_ablation_heatmap(ablation, verdict, tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_empty_ablation_grid(tmp_path: Path) -> None:
    ablation, summaries = inputs.load_ablation(tmp_path)
    assert ablation.empty and summaries == []
    assert list(ablation.columns) == inputs.ABLATION_COLUMNS
    verdict = QualityRule(5.0, 10).judge(ablation["si_sdri_db"], ablation["steps"])
    assert not verdict.is_result and verdict.reason == "no SI-SDRi values"
    figures.plot_ablation_heatmap(ablation, verdict, tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_ablation_cell_without_settings_is_rejected(tmp_path: Path) -> None:
    reports, _ = _stage_outputs(tmp_path, si_sdri=-3.0, steps=20)
    _write(reports / "ablation/x/summary.json", {"count": 1, "metrics": _metrics(0.0)})
    with pytest.raises(ValueError, match=r"x/summary.json: no `cell` settings"):
        inputs.load_ablation(reports)


# ---------------------------------------------------------------------------------- figures
@pytest.mark.parametrize(("lo", "hi"), [(2.4, 69.3), (4.0, 7.0), (0.3, 3000.0)])
def test_log_ticks_are_plain_numbers(lo: float, hi: float) -> None:
    fig, ax = plt.subplots()
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    figures.plain_log_ticks(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    minor = [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    plt.close(fig)
    assert len(labels) >= 3 and not minor
    assert all(float(label) > 0 and "10^" not in label and "times" not in label
               for label in labels)


# ----------------------------------------------------------------------------------- MAC rate
def test_mac_rate_per_mode_and_ratio_to_sepformer_in_the_same_mode() -> None:
    complexity = pd.DataFrame({"model": ["s4m_tiny", "sepformer"],
                               "macs_g_per_s_fvcore": [6.0, 69.0]}).set_index("model")
    speed = pd.DataFrame({"model": ["s4m_tiny", "sepformer"], "infer_seconds": [4.0, 4.0],
                          "infer_s_median": [1.2, 6.0], "infer_s_compiled": [0.6, None],
                          "compile_s": [70.0, None], "graph_breaks": [0, None],
                          "compiled_vs_eager_sisdr_db": [95.0, None],
                          "infer_s_bf16": [None, None]}).set_index("model")
    rates = report.mac_rate_table(complexity, speed).set_index(["model", "mode"])
    assert rates.loc[("s4m_tiny", "eager"), "GMAC/s achieved"] == pytest.approx(24 / 1.2)
    assert rates.loc[("sepformer", "eager"), "GMAC/s achieved"] == pytest.approx(276 / 6.0)
    assert rates.loc[("s4m_tiny", "eager"), "time / sepformer"] == pytest.approx(0.2)
    # a mode Sepformer was not measured in has no ratio; a mode nobody was measured in, no rows
    assert pd.isna(rates.loc[("s4m_tiny", "compiled"), "time / sepformer"])
    assert ("sepformer", "compiled") not in rates.index
    assert "bf16" not in rates.index.get_level_values("mode")
    compiled = rates.loc[("s4m_tiny", "compiled")]
    assert (compiled["compile s"], compiled["graph breaks"]) == (70.0, 0)
    assert compiled["vs eager SI-SDR (dB)"] == 95.0
    assert rates.loc[("s4m_tiny", "eager"), ["compile s", "vs eager SI-SDR (dB)"]].isna().all()
    eager_only = report.mac_rate_table(complexity, speed[["infer_seconds", "infer_s_median"]])
    assert "compile s" not in eager_only and "vs eager SI-SDR (dB)" not in eager_only


def test_bf16_evaluation_section_only_for_models_it_ran_for(tmp_path: Path) -> None:
    reports, runs = _stage_outputs(tmp_path, si_sdri=-3.0, steps=20)
    path = reports / "eval" / "s4m_tiny" / "summary.json"
    summary = json.loads(path.read_text())
    low = _metrics(-3.2)["si_sdr_i"]
    summary["metrics"] |= {"si_sdr_i_bf16": low, "bf16_vs_fp32_si_sdr": low | {"mean": 38.5}}
    _write(path, summary)
    report.build_reports(_cfg(), reports, runs)
    results = pd.read_csv(reports / "results.csv").set_index("model")
    assert results.loc["s4m_tiny", "si_sdri_bf16_db"] == -3.2
    assert results.loc["s4m_tiny", "bf16_vs_fp32_sisdr_db"] == 38.5
    assert results.drop("s4m_tiny")["si_sdri_bf16_db"].isna().all()
    section = (reports / "results.md").read_text().split("## bfloat16 inference")[1]
    section = section.split("\n## ")[0]
    assert f"SI-SDRi bf16 autocast (dB), {NOT_A_RESULT}" in section
    assert "| s4m_tiny" in section and "38.50" in section and "sepformer" not in section
    _stage_outputs(tmp_path, si_sdri=-3.0, steps=20)  # evaluate.bf16 off: no section
    report.build_reports(_cfg(), reports, runs)
    assert "bfloat16" not in (reports / "results.md").read_text()


@pytest.mark.parametrize("repeats, label", [
    ([1, 1], "one call per point"), ([3, 3], "median of 3 calls per point"),
    ([1, 3], "median of 1/3 calls per point"), (None, "calls per point not recorded"),
])
def test_length_figure_says_how_many_calls_per_point(repeats, label):
    frame = pd.DataFrame({"model": ["a", "a"], "length_s": [1.0, 4.0]})
    if repeats is not None:
        frame["repeats"] = repeats
    assert figures.calls_per_point(frame) == label
