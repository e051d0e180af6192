"""tools/infer_ratio.py's knockout (issue 17): an op made free is not run, and the model's
output is what a real run gives, so the other ops time as they would."""

from __future__ import annotations

import torch

from experiments.registry import build_model
from tools.infer_ratio import OpTimes, Replay


def test_replay_makes_an_op_free_and_keeps_the_output() -> None:
    torch.manual_seed(0)
    model = build_model("s4m_tiny", sample_rate=8000).eval()
    wav = torch.randn(1, 2000)
    with torch.inference_mode():
        reference = model(wav)
        replay = Replay(lambda name: name == "aten.conv2d")
        with OpTimes() as recorded, replay:
            model(wav)
        replay.record = False
        with OpTimes() as replayed, replay:
            out = model(wav)
    assert recorded.calls["aten.conv2d"] == replay.index == len(replay.outputs) > 0
    assert "aten.conv2d" not in replayed.calls
    assert replayed.calls["aten.linear"] == recorded.calls["aten.linear"] > 0
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
