"""The complexity and speed stages' core functions on tiny models and short inputs (no timing
assertions: the machine is shared)."""

import csv
import json
import math
import os
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from asteroid.models import ConvTasNet
from torch import nn

import experiments.env
from experiments import atomic
from experiments.benchmark import speed, timing, workers
from experiments.benchmark.goals import format_goals, goal_ratios
from experiments.benchmark.onnxrt import onnx_inference
from experiments.complexity import macs as complexity
from experiments.config import ConfigError
from experiments.published import load_published
from experiments.registry import REGISTRY, build_model
from experiments.stages import complexity as complexity_stage

TINY_CTN = dict(n_src=2, n_filters=16, kernel_size=16, stride=8, n_blocks=1, n_repeats=1,
                bn_chan=8, hid_chan=8, skip_chan=8, sample_rate=8000)


class TinySSMSeparator(nn.Module):
    """(B, T) -> (B, 2, T) through an FFT convolution: a model with MACs the defaults miss."""

    def __init__(self, length: int = 400):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(2, length) / length)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        n = 2 * wav.shape[-1]
        spec = torch.fft.rfft(wav.unsqueeze(1), n=n) * torch.fft.rfft(self.kernel, n=n)
        return torch.fft.irfft(spec, n=n)[..., : wav.shape[-1]]


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_published_file_covers_the_registry_and_cites_sources():
    published = load_published()
    for name in REGISTRY:
        entry = published["models"][name]
        assert entry["params_m"]["value"] > 0
        assert entry["params_m"]["source"] in published["sources"]
    ratio = published["models"]["s4m_tiny"]["macs_ratio_to_sepformer"]["value"]
    assert ratio == pytest.approx(0.092)


def test_published_file_with_an_unknown_source_is_rejected(tmp_path):
    bad = tmp_path / "published.yaml"
    bad.write_text(yaml.safe_dump({
        "sources": {"a": "paper"},
        "models": {"x": {"params_m": {"value": 1.0, "source": "nowhere"}}},
    }))
    with pytest.raises(ValueError, match=r"published.yaml.*models.x.params_m.*nowhere"):
        load_published(bad)


def test_complexity_table_and_reports(tmp_path):
    models = {"s4m_tiny": TinySSMSeparator, "sepformer": lambda: ConvTasNet(**TINY_CTN)}
    published = load_published()
    payload = complexity.complexity_table(
        models, lambda name: models[name](), seconds=0.05, sample_rate=8000, published=published)
    rows = {row["model"]: row for row in payload["rows"]}
    tiny = rows["s4m_tiny"]
    assert tiny["naive_macs_g_per_s_fvcore"] == 0 and tiny["fft_g_per_s"] > 0
    assert tiny["naive_missed_fvcore"] == pytest.approx(1.0)
    assert "fft_rfft" in tiny["naive_uncounted_fvcore"]
    assert tiny["uncounted_ops_fvcore"] == tiny["uncounted_ops_ptflops"] == "none"
    assert tiny["tools_rel_diff"] == pytest.approx(0.0, abs=1e-9)
    assert tiny["published_params_m"] == 1.8 and rows["sepformer"]["published_params_m"] == 26.0
    assert rows["sepformer"]["macs_pct_of_sepformer"] == pytest.approx(100.0)
    ratio = payload["summary"]["s4m_tiny_over_sepformer_macs"]
    assert ratio["fvcore"] == pytest.approx(
        tiny["macs_g_per_s_fvcore"] / rows["sepformer"]["macs_g_per_s_fvcore"])
    assert ratio["paper"] == pytest.approx(0.092)

    csv_path, json_path = atomic.write_table(payload, tmp_path, "complexity",
                                                   complexity.COLUMNS)
    table = _read_csv(csv_path)
    assert list(table[0]) == list(complexity.COLUMNS) and len(table) == 2
    assert json.loads(json_path.read_text())["details"]["s4m_tiny"]["fvcore"]["by_op"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["complexity.csv", "complexity.json"]


def test_counting_in_forked_workers_gives_the_same_table():
    models = {"s4m_tiny": TinySSMSeparator, "convtasnet": lambda: ConvTasNet(**TINY_CTN),
              "sepformer": lambda: ConvTasNet(**TINY_CTN)}
    published = load_published()
    serial, forked = (complexity.complexity_table(
        models, lambda name: models[name](), seconds=0.05, sample_rate=8000,
        published=published, workers=workers) for workers in (1, 2))
    assert [row["model"] for row in forked["rows"]] == list(models)
    assert forked["rows"] == serial["rows"] and forked["details"] == serial["details"]


def test_complexity_cli_on_the_registry(tmp_path):
    params = yaml.safe_load(open("params.yaml"))
    params["complexity"] = {"seconds": 0.05, "published_conventions": False}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    complexity_stage.main(["--params", str(tmp_path / "params.yaml"), "--out-dir", str(tmp_path),
                     "--models", "convtasnet"])
    (row,) = _read_csv(tmp_path / "complexity.csv")
    assert row["model"] == "convtasnet" and float(row["params_m"]) == pytest.approx(5.05, 0.01)
    assert float(row["macs_g_per_s_fvcore"]) > 1 and float(row["macs_g_per_s_ptflops"]) > 1
    assert json.loads((tmp_path / "complexity.json").read_text())["conventions"] == []


def test_speed_settings_errors_name_the_setting():
    cfg = {"profile": "x", "speed": {"device": "tpu"}}
    with pytest.raises(ConfigError, match="speed.threads"):
        speed.SpeedSettings.from_config(cfg)
    good = vars(speed.SpeedSettings.defaults())
    with pytest.raises(ConfigError, match="speed.device"):
        speed.SpeedSettings.from_config({"speed": {**good, "device": "tpu"}})
    with pytest.raises(ConfigError, match="unknown `speed` settings"):
        speed.SpeedSettings.from_config({"speed": {**good, "batch": 3}})
    with pytest.raises(ConfigError, match="speed.compile"):
        speed.SpeedSettings.from_config({"speed": {**good, "compile": "yes"}})
    with pytest.raises(ConfigError, match="speed.bf16"):
        speed.SpeedSettings.from_config({"speed": {**good, "bf16": "yes"}})


def test_bf16_auto_times_bf16_only_where_it_is_native(monkeypatch):
    good = vars(speed.SpeedSettings.defaults())
    auto = speed.SpeedSettings.from_config({"speed": {**good, "bf16": "auto"}})
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(experiments.env, "cpu_has_bf16", lambda native=native: native)
        assert auto.runs_bf16(cpu) is native and auto.runs_bf16(cuda)
        assert speed.SpeedSettings.defaults(bf16=True).runs_bf16(cpu)
        assert not speed.SpeedSettings.defaults(bf16=False).runs_bf16(cpu)


TINY_SETTINGS = speed.SpeedSettings.defaults(device="cpu", threads=1, infer_seconds=0.1,
                                             warmup=1, repeats=2, train_batch=2,
                                             train_seconds=0.1, train_repeats=2, compile=False,
                                             bf16=False, onnx=False)


def test_benchmark_model_in_process():
    result = speed.benchmark_model(ConvTasNet(**TINY_CTN), TINY_SETTINGS, sample_rate=8000)
    assert result["device"] == "cpu" and len(result["infer_s_all"]) == 2
    assert result["infer_s_min"] <= result["infer_s_median"] <= result["infer_s_max"]
    assert result["rtf"] == pytest.approx(result["infer_s_median"] / 0.1)
    assert math.isfinite(result["peak_mem_mb"]) and math.isfinite(result["infer_peak_mem_mb"])


def test_compiled_and_bf16_inference_are_measured_beside_eager():
    settings = speed.SpeedSettings(**{**vars(TINY_SETTINGS), "compile": True, "bf16": True,
                                      "repeats": 1, "train_repeats": 1})
    result = speed.benchmark_model(TinySSMSeparator(), settings, sample_rate=8000)
    assert result["compile_error"] == "", result["compile_error"]
    assert result["compile_s"] > 0 and result["infer_s_compiled"] > 0
    assert result["graph_breaks"] == 0  # one graph: rfft, multiply, irfft, slice
    assert result["compiled_vs_eager_sisdr_db"] > 60  # float rounding only
    assert result["infer_s_bf16"] > 0 and result["bf16_native"] in (True, False)
    # the FFT convolution follows autocast's fp32 list: bf16 leaves its output (almost) alone
    assert result["bf16_vs_fp32_sisdr_db"] > 40


def test_onnx_runtime_is_timed_beside_eager_or_reports_the_blocker():
    settings = speed.SpeedSettings(**{**vars(TINY_SETTINGS), "onnx": True, "infer_seconds": 0.5,
                                      "repeats": 1, "train_repeats": 1})
    torch.manual_seed(0)
    tiny = build_model("s4m_tiny", **REGISTRY["s4m_tiny"].tiny)
    result = speed.benchmark_model(tiny, settings, sample_rate=8000)
    assert result["onnx_error"] == "", result["onnx_error"]
    assert result["infer_s_onnx"] > 0 and result["infer_s_onnx_int8"] > 0
    assert result["onnx_vs_eager_sisdr_db"] >= 60
    assert 0 < result["onnx_int8_vs_fp32_sisdr_db"] < result["onnx_vs_eager_sisdr_db"]
    assert set(speed.COLUMNS) >= {"infer_s_onnx", "onnx_error"}

    class DataDependent(nn.Module):  # reduction dims from a tensor's values, as asteroid's gLN
        sample_rate = 8000

        def forward(self, wav: torch.Tensor) -> torch.Tensor:
            wav = wav - wav.mean(dim=torch.arange(1, wav.ndim).tolist(), keepdim=True)
            return torch.stack([wav, -wav], 1)

    result = onnx_inference(DataDependent(), torch.randn(1, 4000), 8000, 1, 0, 1)
    assert "data-dependent" in result["onnx_error"] and "infer_s_onnx" not in result


class GraphBreak(nn.Module):
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        wav = wav * 2
        torch._dynamo.graph_break()
        return torch.stack([wav, -wav], 1)


class Broken(nn.Module):
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no kernel for this")


def test_graph_breaks_are_counted_and_a_failing_compile_is_reported_not_raised():
    cpu = torch.device("cpu")
    result = speed.compiled_inference(GraphBreak(), torch.randn(1, 80), TINY_SETTINGS, cpu)
    assert result["graph_breaks"] >= 1 and result["compile_error"] == ""
    result = speed.compiled_inference(Broken(), torch.randn(1, 80), TINY_SETTINGS, cpu)
    assert "RuntimeError: no kernel for this" in result["compile_error"]
    assert "infer_s_compiled" not in result


def test_peak_memory_sees_an_allocation_inside_the_block():
    # Leave 320 MB freed but resident inside the C heap, as a long test session does: blocks
    # under glibc's mmap threshold (128 KiB by default) come from the heap, and a small live
    # block above them keeps the heap from shrinking. Unless PeakMemory hands these pages back
    # on entry, the block below reuses them and the resident set never grows.
    small = [torch.ones(16_000) for _ in range(5_000)]  # 64 KB each
    pin = torch.ones(10)
    del small
    with timing.PeakMemory(torch.device("cpu")) as mem:
        block = torch.ones(50_000_000)  # 200 MB, written so that it is resident
        del block
    assert mem.mib >= 150, (mem.mib, mem.method)
    del pin


def test_speed_table_runs_each_model_in_a_subprocess(tmp_path, monkeypatch):
    spec = {"model": "tiny_convtasnet", "factory": "asteroid.models:ConvTasNet",
            "kwargs": TINY_CTN, "sample_rate": 8000, "settings": vars(TINY_SETTINGS)}
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    payload = speed.speed_table([spec], timeout_s=300, published=load_published())
    # the workers' thread variables do not leak into this process
    assert os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ
    (row,) = payload["rows"]
    assert row["model"] == "tiny_convtasnet" and row["threads"] == 1
    assert row["mem_method"] in ("hwm_reset", "ru_maxrss")
    csv_path, _ = atomic.write_table(payload, tmp_path, "speed", speed.COLUMNS)
    assert list(_read_csv(csv_path)[0]) == list(speed.COLUMNS)


def test_a_failing_worker_names_the_model():
    spec = {"model": "broken", "factory": "asteroid.models:NoSuchModel", "kwargs": {},
            "sample_rate": 8000, "settings": vars(TINY_SETTINGS)}
    with pytest.raises(RuntimeError, match="'broken' failed"):
        workers.run_in_subprocess(spec, 300, speed.run_worker)


def test_a_worker_past_its_timeout_is_stopped():
    spec = {"model": "stuck", "factory": "subprocess:run", "kwargs": {"args": ["sleep", "20"]},
            "sample_rate": 8000, "settings": vars(TINY_SETTINGS)}
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"'stuck' ran past speed.timeout_s=2 s"):
        workers.run_in_subprocess(spec, 2, speed.run_worker)
    assert time.monotonic() - start < 15


def test_a_killed_worker_is_reported_as_died():
    spec = {"model": "aborts", "factory": "os:abort", "kwargs": {}, "sample_rate": 8000,
            "settings": vars(TINY_SETTINGS)}
    with pytest.raises(workers.WorkerDied, match=r"'aborts' died \(exit code -6\)"):
        workers.run_in_subprocess(spec, 300, speed.run_worker)


def test_length_sweep_marks_a_slow_model_instead_of_failing():
    settings = {**vars(TINY_SETTINGS), "length_repeats": 1}
    tiny = {"model": "tiny_convtasnet", "factory": "asteroid.models:ConvTasNet",
            "kwargs": TINY_CTN, "sample_rate": 8000, "settings": settings}
    stuck = {"model": "stuck", "factory": "subprocess:run", "kwargs": {"args": ["sleep", "20"]},
             "sample_rate": 8000, "settings": settings}
    rows = speed.length_table([tiny, stuck], lengths=[0.2, 0.1], timeout_s=3)
    assert [(r["model"], r["length_s"], r["status"]) for r in rows] == [
        ("tiny_convtasnet", 0.1, "ok"), ("tiny_convtasnet", 0.2, "ok"),
        ("stuck", 0.1, "too_slow"), ("stuck", 0.2, "too_slow")]
    assert all(r["infer_s"] > 0 and r["rtf"] == pytest.approx(r["infer_s"] / r["length_s"])
               and r["threads"] == 1 for r in rows[:2])
    assert rows[3]["infer_s"] is None  # not run: slower than the limit at a shorter length
    assert list(rows[0]) == list(speed.LENGTH_COLUMNS)


def test_goal_ratios():
    rows = [
        {"model": "s4m_tiny", "infer_s_median": 0.5, "train_step_s": 3.0, "peak_mem_mb": 2048},
        {"model": "sepformer", "infer_s_median": 5.0, "train_step_s": 20.0, "peak_mem_mb": 1},
        {"model": "convtasnet", "infer_s_median": 1.0, "train_step_s": 2.0, "peak_mem_mb": 1},
    ]
    goals = goal_ratios(rows, load_published())
    assert goals["infer_s4m_tiny_over_sepformer"]["measured"] == pytest.approx(0.1)
    assert goals["infer_s4m_tiny_over_sepformer"]["met"]
    assert goals["infer_s4m_tiny_over_sepformer"]["released_code"] == pytest.approx(4.68 / 6.37)
    assert not goals["train_step_s4m_tiny_over_convtasnet"]["met"]  # 1.5x Conv-TasNet
    assert goals["train_mem_s4m_tiny_over_released"]["measured"] == pytest.approx(2 / 9.3)
    assert "MISSED" in format_goals(goals)
    assert "infer_compiled_s4m_tiny_over_sepformer" not in goals  # speed.compile off
    rows[0]["infer_s_compiled"], rows[1]["infer_s_compiled"] = 0.4, 2.0
    compiled = goal_ratios(rows, load_published())["infer_compiled_s4m_tiny_over_sepformer"]
    assert compiled["measured"] == pytest.approx(0.2) and not compiled["met"]
    own = goal_ratios(rows, load_published())["infer_compiled_over_eager_s4m_tiny"]
    assert own["measured"] == pytest.approx(0.8) and own["met"]
    # a goal pair's medians, timed in one process, decide where they exist
    pairs = {"train": {"times": {"s4m_tiny": [2.0, 1.9, 9.0], "convtasnet": [2.0, 2.1, 2.2]}}}
    goals = goal_ratios(rows, load_published(), pairs)
    train = goals["train_step_s4m_tiny_over_convtasnet"]
    assert train["measured"] == pytest.approx(2.0 / 2.1) and train["met"]
    assert train["separate_processes"] == pytest.approx(1.5)
    assert train["round_range"] == pytest.approx([1.9 / 2.1, 9.0 / 2.2])
    assert train["method"] == "one process, in turn"
    assert goals["infer_s4m_tiny_over_sepformer"]["method"] == "separate processes"
    assert "rounds 0.90-4.09, separate processes 1.500" in format_goals(goals)
    # deployed: each model's fastest float32 path whose output keeps the export parity
    assert "deployed_s4m_tiny_over_sepformer" not in goals  # speed.onnx off
    rows[0].update(infer_s_onnx=0.3, onnx_vs_eager_sisdr_db=95.0, compiled_vs_eager_sisdr_db=90.0)
    rows[1].update(infer_s_onnx=None, compiled_vs_eager_sisdr_db=30.0)  # compiled: not the model
    deployed = goal_ratios(rows, load_published())["deployed_s4m_tiny_over_sepformer"]
    assert (deployed["s4m_tiny_path"], deployed["sepformer_path"]) == ("onnx fp32", "eager")
    assert deployed["measured"] == pytest.approx(0.3 / 5.0) and deployed["met"]


@pytest.mark.parametrize("kind", ["infer", "train", "compiled"])
def test_goal_pair_is_timed_in_turn_in_one_process(kind):
    settings = {**vars(TINY_SETTINGS), "ratio_repeats": 3}
    pair = [{"model": name, "factory": "asteroid.models:ConvTasNet", "kwargs": kwargs,
             "sample_rate": 8000} for name, kwargs in
            (("a", TINY_CTN), ("b", {**TINY_CTN, "n_repeats": 2}))]
    result = workers.run_in_subprocess({"model": "a + b", "kind": kind, "pair": pair,
                                      "settings": settings}, 300, speed.run_in_turn_worker)
    assert result["kind"] == kind and list(result["times"]) == ["a", "b"]
    assert all(len(t) == 3 and min(t) > 0 for t in result["times"].values())


def test_readme_quotes_the_committed_speed_table() -> None:
    """The README's deployed-speed paragraph is the committed reports/speed.{csv,json}."""
    repo = Path(__file__).resolve().parents[1]
    readme = " ".join((repo / "README.md").read_text().split())
    table = pd.read_csv(repo / "reports" / "speed.csv").set_index("model")
    summary = json.loads((repo / "reports" / "speed.json").read_text())["summary"]
    columns = ["infer_s_median", "infer_s_compiled", "infer_s_onnx", "infer_s_onnx_int8"]
    tiny, sep = (table.loc[m, columns].round(2).tolist() for m in ("s4m_tiny", "sepformer"))
    quoted = re.search(r"S4M-tiny takes ([\d.]+) s eager, ([\d.]+) s compiled, ([\d.]+) s under "
                       r"ONNX Runtime and ([\d.]+) s in int8; Sepformer ([\d.]+) s, ([\d.]+) s, "
                       r"([\d.]+) s and ([\d.]+) s\. Deployed \(compiled for both\), S4M-tiny / "
                       r"Sepformer is ([\d.]+), against ([\d.]+) eager / eager", readme)
    assert quoted, "the README's speed paragraph changed form"
    numbers = [float(x) for x in quoted.groups()]
    assert numbers[:8] == tiny + sep
    deployed = summary["deployed_s4m_tiny_over_sepformer"]
    assert (deployed["s4m_tiny_path"], deployed["sepformer_path"]) == ("compiled", "compiled")
    assert numbers[8] == round(deployed["measured"], 2)
    assert numbers[9] == round(summary["infer_s4m_tiny_over_sepformer"]["measured"], 2)
