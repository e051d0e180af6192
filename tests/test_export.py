"""ONNX export: S4M-family graphs (frozen SSM kernels, framed input) match eager PyTorch under
ONNX Runtime at any batch and length; models that cannot export are reported with a blocker."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from experiments.deploy.onnx import export_onnx, parity_db, quantize_int8, separate, session
from experiments.registry import REGISTRY, build_model


@pytest.mark.parametrize("name", ["s4m_tiny", "s4m", "tdanet"])
def test_s4m_family_exports_and_matches_eager(name: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(name, **REGISTRY[name].tiny).eval()
    info = export_onnx(model, tmp_path / "m.onnx", max_seconds=3)
    assert info["exported"], info
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["sample_rate"] == "8000" and int(meta["frame_multiple"]) >= 1
    sess = session(tmp_path / "m.onnx")
    for batch, length in ((1, 8000), (3, 4321), (2, 24000)):  # 24000: the longest allowed
        wav = torch.randn(batch, length)
        with torch.no_grad():
            expected = model(wav)
        got = separate(sess, wav)
        assert got.shape == expected.shape
        assert parity_db(expected, got) >= 60
    quantize_int8(tmp_path / "m.onnx", tmp_path / "m8.onnx")
    wav = torch.randn(1, 8000)
    assert separate(session(tmp_path / "m8.onnx"), wav).shape == (1, 2, 8000)


def test_a_model_that_does_not_export_gets_a_blocker(tmp_path: Path) -> None:
    model = build_model("convtasnet", **REGISTRY["convtasnet"].tiny).eval()
    info = export_onnx(model, tmp_path / "c.onnx", max_seconds=2)
    assert info["exported"] is False and info["blocker"]
    assert not (tmp_path / "c.onnx").exists()
