"""Both counters with our handles give the analytic MACs of modules whose cost is known."""

import math

import pytest
import torch
from fvcore.nn import jit_analysis
from torch import nn

from experiments.complexity.costs import einsum_macs, fft_macs
from experiments.complexity.counting import count_all, count_fvcore, count_ptflops
from s4m import blocks, build_s4m, fused


class FFTConv(nn.Module):
    """Long convolution of (B, H, L) with a learned (H, L) kernel through rfft / irfft at 2L."""

    def __init__(self, channels: int = 4, length: int = 64):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(channels, length))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        n = 2 * u.shape[-1]
        spectrum = torch.fft.rfft(u, n=n) * torch.fft.rfft(self.kernel, n=n)
        return torch.fft.irfft(spectrum, n=n)[..., : u.shape[-1]]


class Cauchy(nn.Module):
    """An S4-style kernel: k(z) = sum_n c_n / (z - w_n) at L points, then x * k + x."""

    def __init__(self, channels: int = 3, states: int = 4, length: int = 5):
        super().__init__()
        self.w = nn.Parameter(torch.randn(channels, states, dtype=torch.cfloat))
        self.c = nn.Parameter(torch.randn(channels, states, dtype=torch.cfloat))
        self.register_buffer("z", torch.exp(2j * torch.pi * torch.arange(length) / length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = (self.c.unsqueeze(-1) / (self.z - self.w.unsqueeze(-1))).sum(1).real  # (H, L)
        return x * k + x


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Cauchy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.inner(x)) * 2  # real element-wise ops outside the SSM scope


class SelfAttention(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=False)[0]


class Det(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.det(x)




def _both(model: nn.Module, x: torch.Tensor, **kw) -> tuple[float, float]:
    return count_fvcore(model, x, **kw).total, count_ptflops(model, x, **kw).total


CASES = {
    # bias additions are not MACs (fvcore's convention; ptflops' default counts them)
    "linear": (nn.Linear(8, 16), (1, 5, 8), 5 * 8 * 16),
    "conv": (nn.Conv1d(4, 6, 3, padding=1), (1, 4, 20), 6 * 4 * 3 * 20),
    "depthwise_conv": (nn.Conv1d(4, 4, 3, padding=1, groups=4), (1, 4, 20), 4 * 3 * 20),
    # S4M's depthwise conv (its reference path is counted, fast path or not)
    "s4m_depthwise": (blocks.Conv1d(4, 4, 5, stride=2, padding=2, groups=4), (1, 4, 20),
                      4 * 5 * 10),
    "avg_pool": (nn.AvgPool1d(2), (1, 4, 20), 4 * 20),  # one add per input element
    "conv_transpose": (nn.ConvTranspose1d(4, 6, 4, stride=2), (1, 4, 20), 4 * 6 * 4 * 20),
    # 3 real FFTs of n = 128 over 4 channels, 1.25 n log2 n each; complex product: 4 per bin
    "fft_conv": (FFTConv(), (1, 4, 64), 3 * 1.25 * 4 * 128 * 7 + 4 * 4 * 65),
    # per step, direction and layer: 4H (I + H); layer 2 reads 2H features
    "lstm": (nn.LSTM(16, 8, num_layers=2, bidirectional=True, batch_first=True), (2, 10, 16),
             2 * 20 * 32 * (16 + 8) + 2 * 20 * 32 * (16 + 8)),
    # projections 4 L E^2, QK^T and AV 2 L^2 E
    "attention": (SelfAttention(), (1, 10, 16), 4 * 10 * 16**2 + 2 * 10**2 * 16),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_tools_give_the_analytic_count(case):
    model, shape, expected = CASES[case]
    fv, pt = _both(model, torch.randn(shape))
    assert fv == pytest.approx(expected)
    assert pt == pytest.approx(expected)


def test_defaults_miss_the_fft_and_name_it():
    counts = count_all(FFTConv(), torch.randn(1, 4, 64))
    assert counts["fvcore_default"].total == 0 and counts["ptflops_default"].total == 0
    assert {"aten::fft_rfft", "aten::fft_irfft"} <= set(counts["fvcore_default"].uncounted)
    assert {"aten::_fft_r2c", "aten::_fft_c2r"} <= set(counts["ptflops_default"].uncounted)
    assert counts["fvcore"].uncounted == {} and counts["ptflops"].uncounted == {}
    assert counts["fvcore"].by_category["fft"] == pytest.approx(3 * 1.25 * 4 * 128 * 7)


def test_ssm_scope_counts_real_elementwise_ops_only_inside_ssm_modules():
    h, n, length = 3, 4, 5
    complex_ops = h * n * length * (2 + 8 + 2)  # sub, div, sum over complex elements
    real_ops_inside = 2 * h * length  # x * k + x
    x = torch.randn(1, h, length)
    in_scope = _both(Outer(), x, ssm_scope=lambda m: isinstance(m, Cauchy))
    no_scope = _both(Outer(), x, ssm_scope=lambda m: False)
    assert in_scope == pytest.approx((complex_ops + real_ops_inside,) * 2)
    assert no_scope == pytest.approx((complex_ops,) * 2)  # complex arithmetic counts anywhere


def test_unknown_ops_are_reported_not_guessed():
    counts = count_all(Det(), torch.randn(3, 4, 4))
    assert any("det" in op for op in counts["fvcore"].uncounted)
    assert any("det" in op for op in counts["ptflops"].uncounted)


@pytest.mark.parametrize("name", ["s4m_tiny", "s4m"])
def test_s4m_cost_does_not_depend_on_the_fast_path(name):
    """Params and all four MAC totals are the same with s4m's CPU fast path on and off: the
    counters count the model, not the kernels (the fast path folds gLNs into multiply-adds)."""
    model, wav = build_s4m(name), torch.randn(1, 800)
    costs = {}
    for on in (True, False):
        with fused.enabled(on):
            counts = count_all(model, wav)
            costs[on] = (sum(p.numel() for p in model.parameters()),
                         {key: count.total for key, count in counts.items()})
    assert costs[True] == costs[False]


def test_counting_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    model.train()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    count_all(model, torch.randn(2, 4), ssm_scope=lambda m: isinstance(m, nn.Linear))
    assert model.training
    assert torch.backends.mha.get_fastpath_enabled() == fastpath
    assert fused.is_enabled()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_fft_formula():
    assert fft_macs(4 * 128, 128, real=True) == pytest.approx(1.25 * 4 * 128 * 7)
    assert fft_macs(1000, 1000, real=False) == pytest.approx(2.5 * 1000 * math.log2(1000))
    assert fft_macs(10, 1, real=True) == 0


@pytest.mark.parametrize("equation, shapes, expected", [
    ("ij,jk->ik", [(2, 3), (3, 4)], 2 * 3 * 4),
    ("bij,bjk", [(5, 2, 3), (5, 3, 4)], 5 * 2 * 3 * 4),
    ("...n,...n->...", [(2, 7, 3), (7, 3)], 2 * 7 * 3),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)], 2 * 3 * 4 + 2 * 4 * 5),
    ("ij->j", [(2, 3)], 6),
    ("ij->ji", [(2, 3)], 0),
])
def test_einsum_macs(equation, shapes, expected):
    assert einsum_macs(equation, shapes) == expected


@torch.jit.script_if_tracing
def _scripted_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.matmul(x, w)


class ScriptedHelper(nn.Module):
    """A matmul inside a script_if_tracing helper, as asteroid's filterbanks run theirs."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _scripted_matmul(x, self.w)


def test_script_if_tracing_helpers_are_traced_through():
    # pins torch.jit._trace.script, which counting replaces to trace through such helpers
    assert count_fvcore(ScriptedHelper(), torch.randn(1, 3, 8)).total == pytest.approx(3 * 8 * 4)


def test_count_all_traces_each_model_once(monkeypatch):
    # pins fvcore.nn.jit_analysis._get_scoped_trace_graph, through which counting reuses a trace
    traces = []
    trace = jit_analysis._get_scoped_trace_graph
    monkeypatch.setattr(jit_analysis, "_get_scoped_trace_graph",
                        lambda *args: traces.append(args) or trace(*args))
    count_all(FFTConv(), torch.randn(1, 4, 64))
    assert len(traces) == 1
