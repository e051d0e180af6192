"""S4M model: configs, shapes, input checks, serialization, purity, checkpointing, param groups,
the fused CPU path against the plain reference modules."""

import ast
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from s4m import CONFIGS, S4M, SSM_MODULES, build_s4m, fused, ssm_param_groups
from s4m.blocks import Conv1d, Fusion, GlobLN
from s4m.ssm import SSMKernel

SMALL = dict(hidden_channels=32, bottleneck_channels=16, num_blocks=2, d_state=4)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_exact_param_counts():
    # s4m_tiny: the released model file's count, tensor for tensor; against the published
    # figures: tests/test_models.py (published.yaml)
    assert set(CONFIGS) >= {"s4m_tiny", "s4m"}
    assert n_params(build_s4m("s4m_tiny")) == 1_828_967
    assert n_params(build_s4m("s4m")) == 3_533_927


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
    dict(s4_scales="all"), dict(s4_scales=[]), dict(bidirectional=False), dict(n_filters=40),
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
                dict(ssm_init="inv"), dict(n_filters=0)):
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


def test_encoder_filters_default_to_the_released_count():
    """K//2+1 filters of the 4 ms kernel unless `n_filters` says otherwise; the mask head and
    decoder follow the encoder."""
    released, wide = build_s4m("s4m_tiny", **SMALL), build_s4m("s4m_tiny", **SMALL, n_filters=40)
    assert released.encoder.out_channels == 17 and wide.encoder.out_channels == 40
    assert wide.decoder.in_channels == 2 * 40 and n_params(wide) > n_params(released)


@pytest.mark.parametrize("n_filters", [None, 24])
def test_serialize_roundtrip(tmp_path, n_filters):
    model = build_s4m("s4m_tiny", **SMALL, ssm="s4d", n_filters=n_filters).eval()
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
    own = model.param_groups(lr=1e-3, weight_decay=0.01, ssm_lr=5e-4)  # the trainer's hook
    fresh = ssm_param_groups(model, lr=1e-3, weight_decay=0.01, ssm_lr=5e-4)
    assert [{**g, "params": list(map(id, g["params"]))} for g in own] == [
        {**g, "params": list(map(id, g["params"]))} for g in fresh]


def test_ssm_modules_are_the_s4_layers_and_kernels():
    model = build_s4m("s4m", **SMALL)
    ssm = [m for m in model.modules() if isinstance(m, SSM_MODULES)]
    assert len(ssm) == 2 * len(model.block.ssm_layers())  # each S4Layer and its kernel
    assert {type(m).__name__ for m in ssm} == {"S4Layer", "DPLRKernel"}


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("length", [1, 2, 3, 6, 9, 16])
def test_depthwise_backward_gradcheck(stride, length):
    from s4m.fused import DepthwiseFn
    torch.manual_seed(0)
    x = torch.randn(2, length, 3, dtype=torch.float64).transpose(1, 2).requires_grad_()
    w = torch.randn(3, 1, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: DepthwiseFn.apply(*a, stride, 2), (x, w, b))
    ref = torch.nn.functional.conv1d(x, w, b, stride, 2, 1, 3)
    assert torch.allclose(DepthwiseFn.apply(x, w, b, stride, 2), ref)


def test_depthwise_weight_grad_chunks(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 37, dtype=torch.float64)
    w = torch.randn(3, 1, 5, dtype=torch.float64)
    g = torch.randn(2, 3, 19, dtype=torch.float64)
    ref = torch.ops.aten.convolution_backward(g, x, w, None, (2,), (2,), (1,), False, (0,), 3,
                                              (True, True, False))
    monkeypatch.setattr(fused, "_TAP_CHUNK", 5 * 3 * 4)  # 4-row chunks, a partial last one
    xt = fused.time_major(x).requires_grad_()
    wt = w.clone().requires_grad_()
    fused.DepthwiseFn.apply(xt, wt, None, 2, 2).backward(g)
    assert torch.allclose(xt.grad, ref[0]) and torch.allclose(wt.grad, ref[1])


# None: one chunk of rows; 18: 3-row chunks of these (2, T, 3) maps, the last one partial
ROW_CHUNKS = [None, 18]


@pytest.mark.parametrize("row_chunk", ROW_CHUNKS)
@pytest.mark.parametrize("scaled", [False, True])
def test_norm_modulate_gradcheck(scaled, row_chunk, monkeypatch):
    """The fused gLN + multiply-add's hand-written backward against finite differences, for
    every input (q, the folded scale, gLN's affine, the gate and the shift)."""
    if row_chunk:
        monkeypatch.setattr(fused, "_ROW_CHUNK", row_chunk)
    torch.manual_seed(0)
    q = fused.time_major(torch.randn(2, 3, 8, dtype=torch.float64)).requires_grad_()
    w = torch.randn(3, dtype=torch.float64, requires_grad=True) if scaled else None
    gamma, beta = (torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    gate, shift = (torch.randn(2, 4, 1, 3, dtype=torch.float64, requires_grad=True)
                   for _ in range(2))
    assert torch.autograd.gradcheck(
        lambda q, w, gamma, beta, gate, shift:
        fused.NormModulateFn.apply(q, w, gamma, beta, gate, shift, 1e-8),
        (q, w, gamma, beta, gate, shift))
    with torch.no_grad():  # the same forward without autograd
        assert torch.allclose(fused.norm_modulate(q, w, gamma, beta, gate, shift, 1e-8),
                              fused.NormModulateFn.apply(q, w, gamma, beta, gate, shift, 1e-8))


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("step", [1, 2])
@pytest.mark.parametrize("row_chunk", ROW_CHUNKS)
def test_glob_ln_gradcheck(row_chunk, step, scaled, monkeypatch):
    """The gLN's hand-written backward against finite differences, with and without a folded
    per-channel scale; its forward against torch's group norm (step 2: every other frame of
    it, statistics over all frames)."""
    if row_chunk:
        monkeypatch.setattr(fused, "_ROW_CHUNK", row_chunk)
    torch.manual_seed(0)
    q = fused.time_major(torch.randn(2, 3, 5, dtype=torch.float64)).requires_grad_()
    w = torch.randn(3, dtype=torch.float64, requires_grad=True) if scaled else None
    gamma, beta = (torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda *a: fused.GlobLNFn.apply(*a, 1e-8, step),
                                    (q, w, gamma, beta))
    scaled_q = q if w is None else q * w[:, None]
    ref = F.group_norm(scaled_q, 1, gamma, beta, 1e-8)
    assert torch.allclose(fused.GlobLNFn.apply(q, w, gamma, beta, 1e-8, step), ref[..., ::step])


def test_input_gradients_not_views():
    """autograd sums the gradients of a map with several consumers in place only into one that
    is not a view: the hand-written backwards return time-major input gradients as their own
    tensors (a view here makes every such sum write a fresh map)."""
    torch.manual_seed(0)
    x = fused.time_major(torch.randn(2, 3, 8)).requires_grad_()
    w = torch.randn(3, 1, 5, requires_grad=True)
    gamma, beta = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    gate = torch.randn(2, 4, 1, 3, requires_grad=True)
    outs = [fused.DepthwiseFn.apply(x, w, None, 1, 2),
            fused.GlobLNFn.apply(x, None, gamma, beta, 1e-8, 1),
            fused.NormModulateFn.apply(x, None, gamma, beta, gate, gate, 1e-8)]
    for out in outs:
        with torch.no_grad():  # as in backward()
            grad_x = out.grad_fn.apply(torch.ones_like(out))[0]
        assert not grad_x._is_view() and grad_x.stride() == x.stride()
        with torch.enable_grad():  # create_graph: the gradient stays in the graph
            grad_x = out.grad_fn.apply(torch.ones_like(out, requires_grad=True))[0]
        assert grad_x.requires_grad


@pytest.mark.parametrize("r", [1, 2, 3, 8])
def test_sum_over_r(r):
    torch.manual_seed(0)
    a, b = (torch.randn(2, 3, r, 4, dtype=torch.float64) for _ in range(2))
    assert torch.allclose(fused._sum_r(a), a.sum(2, keepdim=True))
    assert torch.allclose(fused._sum_r(a, b), (a * b).sum(2, keepdim=True))


@pytest.mark.parametrize("glob_len", [4, 32])  # 32: a finer "global" map (released quirk)
@pytest.mark.parametrize("kernel", [1, 5])
def test_fusion_same_with_and_without_grad(kernel, glob_len):
    torch.manual_seed(0)
    fusion = Fusion(6, kernel).double()
    local, glob = (torch.randn(2, 6, n, dtype=torch.float64) for n in (16, glob_len))
    with torch.no_grad():
        ref = fusion(local, glob)
    with fused.enabled(False):
        assert torch.allclose(fusion(local, glob), ref)  # the plain-torch reference path
    assert torch.allclose(fusion(local, glob), ref)
    local.requires_grad_(), glob.requires_grad_()
    assert torch.autograd.gradcheck(fusion, (local, glob))


def _outputs_and_grads(module, inputs, reference: bool):
    """module(*inputs) and the gradients of a loss on it (inputs and parameters)."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    module.zero_grad(set_to_none=True)
    with fused.enabled(not reference):
        out = module(*inputs)
    out.square().mean().backward()
    grads = [x.grad for x in inputs] + [p.grad for p in module.parameters()]
    return out.detach(), grads


def _same(a, b):
    assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("conv", [
    dict(kernel_size=1),  # pointwise: a GEMM
    dict(kernel_size=1, groups=6),  # depthwise 1x1: a multiply-add
    dict(kernel_size=1, groups=6, bias=False),
    dict(kernel_size=5, padding=2, groups=6),  # depthwise: the Depthwise Function
    dict(kernel_size=5, padding=2, stride=2, groups=6, bias=False),
    dict(kernel_size=3, padding=1, stride=2, groups=2),  # grouped: channels-last conv2d
])
def test_fused_conv_and_norm_match_reference(conv):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 17, dtype=torch.float64)
    layer = torch.nn.Sequential(Conv1d(6, 6, **conv), GlobLN(6)).double()
    ref, fast = (_outputs_and_grads(layer, [x], reference) for reference in (True, False))
    _same(fast[0], ref[0])
    for g_fast, g_ref in zip(fast[1], ref[1], strict=True):
        _same(g_fast, g_ref)


@pytest.mark.parametrize("kernel, glob_len", [(1, 4), (5, 4), (5, 32)])  # 32: finer "global"
def test_fused_fusion_matches_reference(kernel, glob_len):
    torch.manual_seed(0)
    fusion = Fusion(6, kernel).double()
    with torch.no_grad():  # non-trivial gLN affines
        for p in fusion.parameters():
            p.add_(0.3 * torch.randn_like(p))
    inputs = [torch.randn(2, 6, 16, dtype=torch.float64), torch.randn(2, 6, glob_len,
                                                                       dtype=torch.float64)]
    ref, fast = (_outputs_and_grads(fusion, inputs, reference) for reference in (True, False))
    _same(fast[0], ref[0])
    for g_fast, g_ref in zip(fast[1], ref[1], strict=True):
        _same(g_fast, g_ref)


@pytest.mark.parametrize("compiler_form", [False, True])
@pytest.mark.parametrize("name, overrides", [
    ("s4m_tiny", {}), ("s4m", {}), ("s4m", dict(num_scales=3, ssm="s4d")),
])
def test_fused_model_matches_reference(name, overrides, compiler_form, monkeypatch):
    """The whole model in float64: outputs and every parameter's gradient, both paths; the
    fused path also in the form it takes under torch.compile, here run eagerly."""
    monkeypatch.setattr(fused, "_compiling", lambda: compiler_form)
    torch.manual_seed(0)
    model = build_s4m(name, **{**SMALL, **overrides}).double().train()
    wav = torch.randn(2, 300, dtype=torch.float64)
    ref, fast = (_outputs_and_grads(model, [wav], reference) for reference in (True, False))
    _same(fast[0], ref[0])
    assert ref[0].abs().max() > 1e-3
    names = ["wav"] + [k for k, _ in model.named_parameters()]
    for name, g_fast, g_ref in zip(names, fast[1], ref[1], strict=True):
        if g_ref is None:  # the unused coarsest fusion (see MultiScaleBlock)
            assert g_fast is None and name.startswith("block.fuse."), name
            continue
        assert torch.allclose(g_fast, g_ref, rtol=1e-8, atol=1e-11), name
    model.eval()
    with torch.no_grad():
        _same(model(wav), ref[0])  # the fused path without autograd (plain aten ops)
    assert fused.is_enabled()


def test_fast_path_choice_holds_for_the_current_thread_only():
    seen = []
    with fused.enabled(False):
        other = threading.Thread(target=lambda: seen.append(fused.is_enabled()))
        other.start()
        other.join()
        assert not fused.is_enabled()
    assert seen == [True] and fused.is_enabled()


def test_fused_does_not_import_blocks():
    tree = ast.parse(Path(fused.__file__).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.split(".")[-1] == "blocks"], imported
