"""experiments.evaluation.evaluate: per-utterance CSV, summary statistics, examples, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import soundfile as sf
import torch
from scipy import stats

import experiments.env
from experiments import registry
from experiments.config import ConfigError, load_profile
from experiments.data.synthetic import build_synthetic_dataset
from experiments.evaluation import evaluate as evaluate_module
from experiments.evaluation.evaluate import evaluate, summarize
from experiments.evaluation.metrics import separation_metrics
from experiments.stages.evaluate import main

REPO = Path(__file__).resolve().parents[1]
TINY_CONVTASNET = dict(n_filters=16, bn_chan=16, hid_chan=16, skip_chan=16, n_blocks=2,
                       n_repeats=1)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    build_synthetic_dataset(root, n_train=2, n_dev=2, n_test=3, n_speakers=6, seed=0,
                            types=("mix_clean",), workers=1, progress=False,
                            speech_seconds=(1.0, 1.5))  # short: bf16 is emulated on most CPUs
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    registry.save_model(registry.build_model("convtasnet", **TINY_CONVTASNET), path)
    return path


def _cfg(data_dir: Path, **evaluate_cfg: Any) -> dict[str, Any]:
    """The smoke profile on `data_dir`; float32 only unless `bf16` is given (the default, auto,
    adds the bf16 columns on CPUs with native bf16)."""
    cfg = load_profile(REPO / "params.yaml", "smoke")
    cfg["data"].update(out_dir=str(data_dir), task="sep_clean")
    cfg["evaluate"].update({"max_utterances": None, "n_examples": 2, "extra_metrics": [],
                            "bf16": False, **evaluate_cfg})
    cfg["threads"] = 1
    return cfg


def test_outputs_and_statistics(prepared: Path, model_file: Path, tmp_path: Path) -> None:
    summary = evaluate(_cfg(prepared), model_file, "tiny", tmp_path)
    frame = pd.read_csv(tmp_path / "per_utterance.csv")
    assert list(frame.columns) == ["utt_id", "length_s", "perm", "si_sdr", "si_sdr_i", "sdr",
                                   "sdr_i"]
    assert len(frame) == 3 == summary["count"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    for metric in ("si_sdr", "si_sdr_i", "sdr", "sdr_i"):
        values = frame[metric].to_numpy()
        entry = summary["metrics"][metric]
        half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
        assert entry["mean"] == pytest.approx(values.mean(), abs=1e-9)
        assert entry["ci95"] == pytest.approx(half, rel=1e-9) and entry["count"] == 3
    files = sorted(p.name for p in (tmp_path / "examples").iterdir())
    assert files == sorted([*(f"{u}_{k}.wav" for u in frame["utt_id"][:2]
                              for k in ("mixture", "ref1", "ref2", "est1", "est2")),
                            "spectrogram.png"])
    assert (tmp_path / "examples" / "spectrogram.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.rglob("*.tmp*"))

    # the first row again, by hand, with the estimate the example wavs hold
    utt = frame.iloc[0]["utt_id"]
    read = {k: torch.from_numpy(sf.read(tmp_path / "examples" / f"{utt}_{k}.wav")[0])
            for k in ("mixture", "ref1", "ref2", "est1", "est2")}
    values, perm = separation_metrics(read["mixture"], torch.stack([read["ref1"], read["ref2"]]),
                                      torch.stack([read["est1"], read["est2"]]), 8000)
    assert perm == (0, 1)
    assert values["si_sdr_i"] == pytest.approx(frame.iloc[0]["si_sdr_i"], abs=1e-3)


def test_bf16_check_beside_float32(prepared: Path, model_file: Path, tmp_path: Path) -> None:
    fp32 = evaluate(_cfg(prepared), model_file, "tiny", tmp_path / "fp32")
    both = evaluate(_cfg(prepared, bf16=True), model_file, "tiny", tmp_path / "bf16")
    frame = pd.read_csv(tmp_path / "bf16" / "per_utterance.csv")
    assert list(frame.columns)[-2:] == ["si_sdr_i_bf16", "bf16_vs_fp32_si_sdr"]
    for metric in ("si_sdr_i", "sdr_i"):  # float32's numbers are untouched
        assert both["metrics"][metric] == fp32["metrics"][metric]
    # bf16 keeps 8 significant bits: the outputs agree to roughly 20-50 dB, not exactly
    assert (frame["bf16_vs_fp32_si_sdr"].between(10, 80)).all()
    gap = (frame["si_sdr_i_bf16"] - frame["si_sdr_i"]).abs()
    assert (gap < 1.0).all() and (gap > 0).any()
    assert isinstance(both["bf16_native"], bool) and "bf16_native" not in fp32
    with pytest.raises(ConfigError, match="evaluate.bf16"):
        evaluate(_cfg(prepared, bf16="on"), model_file, "x", tmp_path / "bad")


@pytest.mark.parametrize("native", [False, True])
def test_bf16_auto_runs_the_check_where_bf16_is_native(prepared: Path, model_file: Path,
                                                       tmp_path: Path, monkeypatch,
                                                       native: bool) -> None:
    monkeypatch.setattr(experiments.env, "cpu_has_bf16", lambda: native)
    summary = evaluate(_cfg(prepared, bf16="auto"), model_file, "tiny", tmp_path)
    assert ("si_sdr_i_bf16" in summary["metrics"]) is native


class _Passthrough(torch.nn.Module):
    """Returns the mixture as every estimate: all improvements are exactly 0 dB."""

    sample_rate = 8000

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return wav[:, None, :].repeat(1, 2, 1)


def test_mixture_as_estimate_improves_nothing(prepared: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "load_model", lambda path: _Passthrough())
    summary = evaluate(_cfg(prepared, max_utterances=2), "unused", "mix", tmp_path)
    assert summary["count"] == 2
    assert summary["metrics"]["si_sdr_i"]["mean"] == pytest.approx(0, abs=1e-9)
    assert summary["metrics"]["sdr_i"]["mean"] == pytest.approx(0, abs=1e-9)


def test_bad_input_is_a_clear_error(prepared: Path, model_file: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="not an option"):
        evaluate(_cfg(prepared, extra_metrics=["mos"]), model_file, "x", tmp_path)
    monkeypatch.setattr(evaluate_module.check_optional_metrics.__globals__["importlib"].util,
                        "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="needs the `pystoi` package"):
        evaluate(_cfg(prepared, extra_metrics=["stoi"]), model_file, "x", tmp_path)
    monkeypatch.undo()
    model_16k = tmp_path / "model16k.pt"
    registry.save_model(registry.build_model("convtasnet", sample_rate=16000,
                                             **TINY_CONVTASNET), model_16k)
    with pytest.raises(ValueError, match="16000 Hz but data.sample_rate is 8000"):
        evaluate(_cfg(prepared), model_16k, "x", tmp_path)
    assert not (tmp_path / "summary.json").exists()


def test_summarize_single_value_has_no_interval() -> None:
    assert summarize([1.5]) == {"mean": 1.5, "std": None, "ci95": None, "ci95_low": None,
                                "ci95_high": None, "count": 1}
    with pytest.raises(ValueError, match="no values"):
        summarize([])


def test_cli_writes_the_default_layout(prepared: Path, model_file: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["profiles"]["smoke"]["data"]["out_dir"] = str(prepared)
    params["profiles"]["smoke"]["evaluate"]["max_utterances"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert main(["--model-path", str(model_file), "--name", "cli",
                 "--params", "params.yaml"]) == 0
    summary = json.loads((tmp_path / "reports/eval/cli/summary.json").read_text())
    assert summary["count"] == 1 and summary["metrics"]["sdr"]["ci95"] is None
