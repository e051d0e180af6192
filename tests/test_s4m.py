"""S4M model: configs, shapes, input checks, serialization, purity, checkpointing, param groups."""

import pytest
import torch

from s4m import CONFIGS, S4M, build_s4m, ssm_param_groups
from s4m.ssm import SSMKernel

SMALL = dict(hidden_channels=32, bottleneck_channels=16, num_blocks=2, d_state=4)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_param_counts_match_paper():
    assert set(CONFIGS) >= {"s4m_tiny", "s4m"}
    assert abs(n_params(build_s4m("s4m_tiny")) / 1.80e6 - 1) <= 0.03
    assert abs(n_params(build_s4m("s4m")) / 3.6e6 - 1) <= 0.05


def test_full_size_forward_short_input():
    model = build_s4m("s4m_tiny").eval()
    assert model.sample_rate == 8000
    with torch.no_grad():
        out = model(torch.randn(1, 801))
    assert out.shape == (1, 2, 801) and torch.isfinite(out).all()


@pytest.mark.parametrize("length", [1, 17, 333, 800])
@pytest.mark.parametrize("three_d", [False, True])
def test_any_length_gives_input_length(length, three_d):
    model = build_s4m("s4m_tiny", **SMALL).eval()
    wav = torch.randn(2, 1, length) if three_d else torch.randn(2, length)
    with torch.no_grad():
        out = model(wav)
    assert out.shape == (2, 2, length) and torch.isfinite(out).all()


@pytest.mark.parametrize("overrides", [
    dict(num_scales=3), dict(num_scales=5), dict(num_scales=2), dict(ssm="s4d"),
    dict(ssm="s4d", ssm_init="inv"), dict(d_state=8), dict(s4_scales=[0, -1]),
    dict(s4_scales="all"), dict(s4_scales=[]), dict(bidirectional=False),
])
def test_overrides_build_and_run(overrides):
    model = build_s4m("s4m_tiny", n_src=3, sample_rate=16000, **{**SMALL, **overrides}).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 555))
    assert out.shape == (1, 3, 555) and torch.isfinite(out).all()


def test_s4_placement_changes_param_count():
    tiny, full = build_s4m("s4m_tiny", **SMALL), build_s4m("s4m", **SMALL)
    assert len(full.block.ssm_layers()) == 4 and list(tiny.block.ssm_layers()) == [3]
    assert n_params(build_s4m("s4m_tiny", **SMALL, ssm="s4d")) < n_params(tiny)


@pytest.mark.parametrize("bad", [
    torch.randn(2, 2, 100),  # multi-channel
    torch.randn(1, 0),  # empty
    torch.zeros(1, 100, dtype=torch.int16),  # not float
    torch.randn(1, 1, 1, 100),  # 4-D
])
def test_bad_inputs_raise(bad):
    model = build_s4m("s4m_tiny", **SMALL)
    with pytest.raises(ValueError):
        model(bad)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="nope"):
        build_s4m("s4m_tiny", nope=1)
    with pytest.raises(ValueError, match="s4m_huge"):
        build_s4m("s4m_huge")
    for bad in (dict(num_scales=1), dict(s4_scales=[4]), dict(ssm="s5"), dict(d_state=5),
                dict(ssm_init="inv")):
        with pytest.raises(ValueError):
            build_s4m("s4m_tiny", **{**SMALL, **bad})


def test_forward_does_not_change_parameters_or_buffers():
    model = build_s4m("s4m", **SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(1, 100))
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3000))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_serialize_roundtrip(tmp_path):
    model = build_s4m("s4m_tiny", **SMALL, ssm="s4d").eval()
    path = tmp_path / "model.pt"
    torch.save(model.serialize(), path)
    loaded = S4M.from_pretrained(str(path)).eval()
    assert loaded.get_model_args() == model.get_model_args()
    wav = torch.randn(2, 500)
    with torch.no_grad():
        assert torch.equal(model(wav), loaded(wav))


def test_gradients_finite_and_checkpointing_equivalent():
    torch.manual_seed(0)
    model = build_s4m("s4m", **SMALL)
    ckpt = build_s4m("s4m", **SMALL, checkpointing=True)
    ckpt.load_state_dict(model.state_dict())
    wav = torch.randn(2, 400)
    grads = []
    for m in (model, ckpt):
        m.train()
        m(wav).square().mean().backward()
        grads.append({k: p.grad for k, p in m.named_parameters()})
    unused = {k for k, g in grads[0].items() if g is None}
    # as released, the coarsest scale's fusion output is never used by the top-down path
    assert unused and all(k.startswith("block.fuse.3.") for k in unused)
    for k, g in grads[0].items():
        if g is not None:
            assert torch.isfinite(g).all(), k
            assert torch.allclose(g, grads[1][k], atol=1e-5, rtol=1e-4), k


def test_ssm_param_groups():
    model = build_s4m("s4m_tiny", **SMALL)
    groups = ssm_param_groups(model, lr=1e-3, weight_decay=0.01, ssm_lr=5e-4)
    ssm = {id(p) for m in model.modules() if isinstance(m, SSMKernel) for p in m.parameters()}
    assert len(groups) == 2
    rest, ssm_group = groups
    assert rest["lr"] == 1e-3 and rest["weight_decay"] == 0.01
    assert ssm_group["lr"] == 5e-4 and ssm_group["weight_decay"] == 0.0
    assert {id(p) for p in ssm_group["params"]} == ssm and len(ssm) == 6  # dt, A (2), P, B, C
    assert not ssm & {id(p) for p in rest["params"]}
    assert len(rest["params"]) + len(ssm_group["params"]) == len(list(model.parameters()))
    default = ssm_param_groups(model, lr=2e-3)
    assert [g["lr"] for g in default] == [2e-3, 2e-3] and default[1]["weight_decay"] == 0.0
    torch.optim.AdamW(groups).step()  # accepted by a torch optimizer
