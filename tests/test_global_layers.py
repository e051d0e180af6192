"""S4M's global-layer choice (s4, s4d, s6, attention, none) and TDANet built from the same block."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiments.complexity.counting import count_all
from experiments.registry import build_model, load_model, save_model
from s4m import build_s4m
from s4m.blocks import GLOBAL_LAYERS
from s4m.global_layers import selective_scan

SMALL = dict(bottleneck_channels=16, hidden_channels=32, num_blocks=2, num_scales=3, d_state=4)


def test_released_s4m_tiny_is_unchanged() -> None:
    """Parameters and the output of a fixed input as before the global-layer choice existed."""
    torch.manual_seed(0)
    model = build_s4m("s4m_tiny").eval()
    torch.manual_seed(1)
    with torch.no_grad():
        out = model(torch.randn(1, 800))
    assert sum(p.numel() for p in model.parameters()) == 1_828_967
    assert model.block.global_mixer is None and model.block.global_ssm is not None
    assert out.abs().sum().item() == pytest.approx(139.95935, rel=1e-4)
    torch.testing.assert_close(out[0, 0, :4], torch.tensor([0.022445, -0.051338, -0.000127,
                                                            0.081769]), atol=1e-5, rtol=0)


def test_selective_scan_is_the_recurrence() -> None:
    torch.manual_seed(0)
    batch, length, width, state = 2, 37, 6, 4  # 37: not a multiple of the chunk
    u, b, c = (torch.randn(batch, length, n, dtype=torch.float64) for n in (width, state, state))
    dt = torch.rand(batch, length, width, dtype=torch.float64) * 0.5
    a = -torch.rand(width, state, dtype=torch.float64) * 3
    h, expected = torch.zeros(batch, width, state, dtype=torch.float64), []
    for t in range(length):
        h = torch.exp(dt[:, t, :, None] * a) * h + (dt[:, t] * u[:, t])[..., None] * b[:, t, None]
        expected.append(torch.einsum("ben,bn->be", h, c[:, t]))
    torch.testing.assert_close(selective_scan(u, dt, a, b, c), torch.stack(expected, 1))
    # a step that forgets almost everything stays finite
    assert torch.isfinite(selective_scan(u, dt * 1e4, a, b, c)).all()


@pytest.mark.parametrize("layer", GLOBAL_LAYERS)
def test_every_global_layer_separates_trains_and_runs_anywhere(layer: str,
                                                               tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("s4m_tiny", global_layer=layer, **SMALL)
    wav = torch.randn(2, 1001)
    assert model(wav).shape == (2, 2, 1001)
    # one training step moves the weights and leaves them finite
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(wav).pow(2).mean().backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # meta (shapes only) and bf16 autocast
    model.eval()
    with torch.no_grad():
        meta = build_model("s4m_tiny", global_layer=layer, **SMALL).to("meta")
        assert meta(wav.to("meta")).shape == (2, 2, 1001)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isfinite(model(wav)).all()
    save_model(model, tmp_path / "m.pt")
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "m.pt").eval()(wav), model(wav))


def test_global_layers_are_counted_alike_by_both_tools() -> None:
    """fvcore and ptflops within 2% for every variant; every global layer adds counted MACs
    (attention's products and the selective scan are not zero)."""
    torch.set_num_threads(1)
    wav = torch.randn(1, 4000)
    totals = {}
    for layer in GLOBAL_LAYERS:
        counts = count_all(build_model("s4m_tiny", global_layer=layer, **SMALL).eval(), wav)
        fv, pt = counts["fvcore"].total, counts["ptflops"].total
        assert abs(fv - pt) <= 0.02 * fv, (layer, fv, pt)
        totals[layer] = fv
    assert all(totals[layer] > totals["none"] * 1.01 for layer in GLOBAL_LAYERS if layer != "none")


def test_tdanet_is_s4m_block_with_attention_conv_feed_forward_and_added_fusion() -> None:
    model = build_model("tdanet")
    block = model.block
    assert block.num_scales == 5 and block.fuse is None and block.global_ssm is None
    assert type(block.global_mixer).__name__ == "SelfAttention"
    assert type(block.ff).__name__ == "ConvFeedForward"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(2.33e6, rel=0.03)


def test_unknown_choices_are_named() -> None:
    with pytest.raises(ValueError, match="global_layer"):
        build_s4m("s4m_tiny", global_layer="mamba")
    with pytest.raises(ValueError, match="fusion"):
        build_s4m("s4m_tiny", fusion="concat")
    with pytest.raises(ValueError, match="heads"):
        build_s4m("s4m_tiny", global_layer="attention", hidden_channels=20)
