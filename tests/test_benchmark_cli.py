"""The benchmarking CLI (python -m experiments.stages.speed): its commands, the in-turn timing
with the op profile and the knockout, and the S4M kernel split, on tiny models (no timing
assertions: the machine is shared)."""

from __future__ import annotations

import pytest
import torch

from experiments.benchmark import opcost, speed, workers
from experiments.benchmark.kernels import format_kernels, run_kernels_worker
from experiments.config import ConfigError
from experiments.registry import REGISTRY, build_model
from experiments.stages import speed as speed_stage

TINY = speed.SpeedSettings.defaults(device="cpu", threads=1, infer_seconds=0.1, warmup=1,
                                    repeats=2, ratio_repeats=2, compile=False, bf16=False)


def _tiny_spec(name: str) -> dict:
    return {"model": name, "factory": workers.REGISTRY_FACTORY,
            "kwargs": {"name": name, "sample_rate": 8000, **REGISTRY[name].tiny},
            "sample_rate": 8000, "settings": vars(TINY)}


def test_replay_makes_an_op_free_and_keeps_the_output() -> None:
    """An op made free is not run, and the model's output is what a real run gives, so the other
    ops time as they would."""
    torch.manual_seed(0)
    model = build_model("s4m_tiny", sample_rate=8000).eval()
    wav = torch.randn(1, 2000)
    with torch.inference_mode():
        reference = model(wav)
        replay = opcost.Replay(lambda name: name == "aten.conv2d")
        with opcost.OpTimes() as recorded, replay:
            model(wav)
        replay.record = False
        with opcost.OpTimes() as replayed, replay:
            out = model(wav)
    assert recorded.calls["aten.conv2d"] == replay.index == len(replay.outputs) > 0
    assert "aten.conv2d" not in replayed.calls
    assert replayed.calls["aten.linear"] == recorded.calls["aten.linear"] > 0
    torch.testing.assert_close(out, reference, rtol=0, atol=0)


def test_in_turn_with_op_profile_and_knockout() -> None:
    pair = [_tiny_spec("s4m_tiny"), _tiny_spec("convtasnet")]
    result = workers.run_in_subprocess(
        {"model": "pair", "kind": "infer", "pair": pair, "settings": vars(TINY), "profile": True,
         "knockout": 2}, 300, speed.run_in_turn_worker)
    assert list(result["times"]) == ["s4m_tiny", "convtasnet"] and result["threads"] == 1
    assert all(len(t) == 2 and min(t) > 0 for t in result["times"].values())
    medians = {name: min(t) for name, t in result["times"].items()}
    out = speed.format_in_turn(result, TINY, 8000)
    assert "ratio s4m_tiny/convtasnet:" in out and "median of 2, in turn" in out
    profile = result["profile"]
    assert profile["stream_gb_per_s"] > 0 and len(profile["models"]["s4m_tiny"]["top_ops"]) > 0
    assert profile["models"]["s4m_tiny"]["seconds"]["gemm"] > 0
    assert "floor s4m_tiny/convtasnet: GEMMs only" in opcost.format_profile(profile, medians)
    knock = result["knockout"]
    assert len(knock["ops"]) == 2 and all(len(op["saved_s"]) == 2 for op in knock["ops"].values())
    assert "timed: GEMMs" in opcost.format_knockout(knock, *medians.values())


def test_format_in_turn_with_compiled_copies() -> None:
    result = {"kind": "train", "torch": "x", "threads": 1,
              "times": {"a": [2.0], "a+compile": [1.0], "b": [4.0], "b+compile": [4.0]},
              "first_call_s": {"a": 2.0, "a+compile": 30.0, "b": 4.0, "b+compile": 40.0}}
    out = speed.format_in_turn(result, TINY, 8000).splitlines()
    assert out[:2] == ["a: compile + first call 30.0 s", "b: compile + first call 40.0 s"]
    assert "training step, batch 2 x" in out[2]
    assert out[-4:] == ["ratio a/b: 0.500", "ratio compiled a/b: 0.250",
                        "a compiled/eager: 0.500", "b compiled/eager: 1.000"]


def test_kernels_splits_the_forward() -> None:
    row = workers.run_in_subprocess(_tiny_spec("s4m_tiny"), 300, run_kernels_worker)
    assert row["forward_min_s"] <= row["forward_s"] <= row["forward_max_s"]
    assert row["kernel_s"] > 0
    assert row["rest_s"] == pytest.approx(row["forward_s"] - row["kernel_s"])
    assert format_kernels([row]).splitlines()[1].startswith("s4m_tiny")


def test_cli_commands(monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr(speed_stage, "table", lambda args, cfg, settings, specs: seen.update(
        command=args.command, models=[s["model"] for s in specs]))
    monkeypatch.setattr(speed_stage, "in_turn", lambda args, settings, specs: seen.update(
        command=args.command, ratio_repeats=settings.ratio_repeats,
        train_seconds=settings.train_seconds))
    speed_stage.main(["--models", "s4m_tiny"])  # the DVC stage's command line
    assert seen == {"command": "table", "models": ["s4m_tiny"]}
    seen.clear()
    speed_stage.main(["ratio", "--train", "--seconds", "1.5", "--repeats", "3"])
    assert seen == {"command": "ratio", "ratio_repeats": 3, "train_seconds": 1.5}
    with pytest.raises(SystemExit):
        speed_stage.main(["knockout", "--models", "s4m_tiny"])
    with pytest.raises(ConfigError, match="--models has unknown names"):
        speed_stage.main(["ratio", "--models", "no_such_model"])
