"""CPU fast path of the multi-scale block: the same maths as `s4m.blocks`' plain modules, in a
memory layout and with backward passes that suit a CPU.

Maps are (B, C, T) but stored time-major ((B, T, C) memory, "channels-last"): on CPU the
oneDNN depthwise convs and pooling are several times faster in that layout, 1x1 convs are
plain GEMMs on the (B, T, C) view, channel LayerNorms need no copies, and broadcasting a coarse
map over time keeps the contiguous channel axis innermost. The gLN is one pass of sums (a chunk
of rows at a time, `_row_sums`) and one multiply-add on the (B, T, C) view, and each
local/global fusion folds its gLN into one broadcast multiply-add instead of materialising
upsampled copies.

The autograd Functions below exist for their hand-written backward passes (torch's CPU backward
of group norm and PReLU runs several times slower than the passes they need); when nothing needs
a gradient (inference, the MAC counters) the same forward runs as plain aten ops. Under autocast
the convolutions and GEMMs follow it; the depthwise conv's backward runs in the dtype its forward
ran in (that of the incoming gradient) and accumulates its weight gradient in float32, and the
gLN statistics are summed in float32 (a variance is a difference of two sums, which half
precision would cancel away).

Under torch.compile the depthwise convs, gLN and pooling are written as elementwise ops and
reductions instead (see `_compiling`), the same maths in a form the compiler fuses.

`s4m.blocks` uses this path while `is_enabled()`; `enabled(False)` gives the reference path
(plain torch modules) that the tests compare it with and the MAC counters count. The choice is
a context variable: it holds for the current thread (or asyncio task) only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_enabled: ContextVar[bool] = ContextVar("s4m_fused_enabled", default=True)


# dynamo cannot trace ContextVar.get (a graph break per call): a compiled model keeps the path
# selected when it was traced
@torch.compiler.assume_constant_result
def is_enabled() -> bool:
    """Whether `s4m.blocks` runs the fused path (the default; never under torch.export, whose
    graphs are for other runtimes)."""
    return _enabled.get() and not torch.compiler.is_exporting()


@contextmanager
def enabled(flag: bool) -> Iterator[None]:
    """Run the fused path (True) or the plain reference path (False) inside the block."""
    token = _enabled.set(flag)
    try:
        yield
    finally:
        _enabled.reset(token)


def _compiling() -> bool:
    """Whether torch.compile is tracing: inductor then gets the depthwise convs, gLN and pooling
    as plain elementwise ops and reductions on the (B, T, C) view, which it fuses with their
    neighbours into a few loops; given the oneDNN calls it would copy every map to
    channels-first and back around them."""
    return torch.compiler.is_compiling()


def _autograd(*tensors: Tensor | None) -> bool:
    """Whether autograd records an op on these tensors (then the hand-written backward pays)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _owned(grad: Tensor) -> Tensor:
    """An input gradient for a backward to return. A map with several consumers gets their
    gradients summed by autograd, in place only into a gradient that is not a view; a
    time-major map's gradient is a transposed view of a (B, T, C) tensor, so it is detached
    (a new tensor on the same memory). Under create_graph it stays in the graph."""
    return grad if torch.is_grad_enabled() else grad.detach()


# ---- layout ------------------------------------------------------------------------------------


def time_major(x: Tensor) -> Tensor:
    """(B, C, T) with (B, T, C) memory; a no-op when already so."""
    return x if x.stride(1) == 1 else x.transpose(1, 2).contiguous().transpose(1, 2)


def pointwise(weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    """1x1 conv (weight (C_out, C_in, 1)) of a (B, C_in, T) map as a GEMM on its (B, T, C) view."""
    return F.linear(time_major(x).transpose(1, 2), weight.squeeze(-1), bias).transpose(1, 2)


def conv1d(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """`conv(x)` on a time-major map, kept time-major: 1x1 convs as GEMMs, depthwise 1x1 convs as
    a per-channel multiply-add (torch's CPU grouped conv loops over groups for them), other
    convs as unit-height conv2d (oneDNN's channels-last path)."""
    if conv.kernel_size[0] == 1 and conv.groups == 1 and conv.stride[0] == 1:
        return pointwise(conv.weight, conv.bias, x)
    if conv.kernel_size[0] == 1 and conv.groups > 1 and conv.groups == conv.in_channels:
        w = conv.weight.squeeze(-1)  # (C, 1)
        return x * w if conv.bias is None else torch.addcmul(conv.bias[:, None], x, w)
    if conv.groups == conv.in_channels == conv.out_channels:
        return depthwise(x, conv.weight, conv.bias, conv.stride[0], conv.padding[0])
    y = F.conv2d(time_major(x)[:, :, None], conv.weight[:, :, None], conv.bias,
                 (1, conv.stride[0]), (0, conv.padding[0]), 1, conv.groups)
    return y.squeeze(2)


def glob_ln(x: Tensor, gamma: Tensor, beta: Tensor, eps: float, step: int = 1,
            scale: Tensor | None = None) -> Tensor:
    """Global layer norm of scale * x for a (B, C, T) map x, scale (C,) or None (= 1), computed
    on its (B, T, C) view; `step` > 1 returns only every step-th frame (statistics still over
    all of them)."""
    if _compiling():  # float32 statistics under autocast, as group_norm's
        x_t = x.transpose(1, 2).to(torch.promote_types(x.dtype, torch.float32))  # (B, T, C)
        x_t = x_t if scale is None else x_t * scale
        mean = x_t.mean((1, 2), keepdim=True)
        var = (x_t.square().mean((1, 2), keepdim=True) - mean.square()).clamp_min(0)
        return ((x_t[:, ::step] - mean) * (var + eps).rsqrt() * gamma + beta).transpose(1, 2)
    x = time_major(x)
    if _autograd(x, scale, gamma, beta):
        return GlobLNFn.apply(x, scale, gamma, beta, eps, step)
    return GlobLNFn.forward(None, x, scale, gamma, beta, eps, step)


def avg_pool(x: Tensor, r: int) -> Tensor:
    """Average pooling by `r` along time, channels-last."""
    if _compiling():
        b, c, t = x.shape
        return x.transpose(1, 2)[:, : t // r * r].reshape(b, t // r, r, c).mean(2).transpose(1, 2)
    return F.avg_pool2d(time_major(x)[:, :, None], (1, r)).squeeze(2)


# ---- depthwise conv ----------------------------------------------------------------------------


def depthwise(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, pad: int) -> Tensor:
    """Depthwise conv of a (B, C, T) map (weight (C, 1, K)), time-major out."""
    if _autograd(x, weight, bias):
        return DepthwiseFn.apply(x, weight, bias, stride, pad)
    return _depthwise(x, weight, bias, stride, pad)


def _depthwise(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, pad: int) -> Tensor:
    if _compiling():
        x_t = F.pad(x.transpose(1, 2), (0, 0, pad, pad))  # (B, T + 2 pad, C)
        k = weight.shape[-1]
        n = (x_t.shape[1] - k) // stride + 1
        y = sum(x_t[:, j: j + stride * (n - 1) + 1: stride] * weight[:, 0, j] for j in range(k))
        return (y if bias is None else y + bias).transpose(1, 2)
    y = F.conv2d(time_major(x)[:, :, None], weight[:, :, None], bias, (1, stride), (0, pad), 1,
                 x.shape[1])
    return y.squeeze(2)


_TAP_CHUNK = 1 << 19  # elements of the (rows, K, C) accumulator: 2 MiB, faster than L2-sized


def _tap_sums(xs: Tensor, g: Tensor, k: int, stride: int) -> Tensor:
    """(K, C): sum over b, i of xs[b, stride * i + j] * g[b, i] for taps j < K.

    xs (B, L, C) with rows of C contiguous, g (B, n, C). The (B, n, K, C) window products are
    accumulated a chunk of rows at a time into a cache-resident buffer, never materialised."""
    b, n, c = g.shape
    if stride * (n - 1) + k > xs.shape[1] or xs.stride(1) != c or xs.stride(2) != 1:
        raise ValueError("windows must lie inside xs, whose rows must be contiguous")
    win = xs.as_strided((b, n, k, c), (xs.stride(0), stride * c, c, 1), xs.storage_offset())
    rows = max(1, _TAP_CHUNK // (k * c))
    pairs = [p for bi in range(b)
             for p in zip(win[bi].split(rows), g[bi, :, None].split(rows), strict=True)]
    # the first chunk's product starts the accumulator (float32 at least): no zero fill
    acc = pairs[0][0].to(torch.promote_types(g.dtype, torch.float32)) * pairs[0][1]
    for w_rows, g_rows in pairs[1:]:
        acc[: len(w_rows)].addcmul_(w_rows, g_rows)
    return acc.sum(0)


def _depthwise_weight_grad(x: Tensor, g: Tensor, k: int, stride: int, pad: int) -> Tensor:
    """(C, K) weight gradient of a depthwise conv; x (B, T, C), g (B, T_out, C) contiguous.
    Outputs whose windows lie inside x read it in place; only the few edge windows see a
    zero-padded copy (of at most K rows)."""
    t, n = x.shape[1], g.shape[1]
    first, end = -(-pad // stride), (t + pad - k) // stride + 1  # outputs [first, end) inside x
    if end <= first:  # short input: pad it all
        return _tap_sums(F.pad(x, (0, 0, pad, pad)), g, k, stride).t()
    grad_w = _tap_sums(x[:, stride * first - pad:], g[:, first:end], k, stride)
    if first > 0:
        left = F.pad(x[:, : stride * (first - 1) + k - pad], (0, 0, pad, 0))
        grad_w += _tap_sums(left, g[:, :first], k, stride)
    if end < n:
        right = x[:, stride * end - pad:]
        right = F.pad(right, (0, 0, 0, stride * (n - 1 - end) + k - right.shape[1]))
        grad_w += _tap_sums(right, g[:, end:], k, stride)
    return grad_w.t()


class DepthwiseFn(torch.autograd.Function):
    """Depthwise conv with a hand-written backward: oneDNN's depthwise backward on CPU is ~40x
    its forward. grad_input is a depthwise transposed conv of the output gradient (oneDNN's
    deconvolution is as fast as the forward); grad_weight is K shifted products summed over
    (B, T) on the time-major views (`_tap_sums`)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int,
                pad: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.pad, ctx.has_bias = stride, pad, bias is not None
        return _depthwise(x, weight, bias, stride, pad)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        # under autocast the forward conv ran in the autocast dtype, which `grad` has; autograd
        # casts the returned gradients back to the dtypes of x and weight
        x, weight = x.to(grad.dtype), weight.to(grad.dtype)
        s, pad, k = ctx.stride, ctx.pad, weight.shape[-1]
        g = time_major(grad)  # (B, C, T_out), (B, T_out, C) memory
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # output_padding: input samples past the last window (strided convs)
            extra = (x.shape[-1] + 2 * pad - k) % s
            grad_x = _owned(F.conv_transpose2d(g[:, :, None], weight[:, :, None], None, (1, s),
                                               (0, pad), (0, extra), x.shape[1]).squeeze(2))
        g_t = g.transpose(1, 2).contiguous()  # (B, T_out, C); a no-op unless g is a slice
        if ctx.needs_input_grad[1]:
            x_t = time_major(x).transpose(1, 2).contiguous()  # (B, T, C)
            grad_w = _depthwise_weight_grad(x_t, g_t, k, s, pad)[:, None]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g_t.sum((0, 1))
        return grad_x, grad_w, grad_b, None, None


# ---- PReLU -------------------------------------------------------------------------------------


def prelu(x: Tensor, weight: Tensor) -> Tensor:
    """`F.prelu(x, weight)` for a single shared slope (weight (1,))."""
    if _autograd(x, weight) and not _compiling():
        return PReLUFn.apply(x, weight)
    return F.prelu(x, weight)


class PReLUFn(torch.autograd.Function):
    """PReLU with one slope, with a backward of vectorised passes: torch's CPU PReLU backward
    (and `torch.where` on a bool mask) runs about 20x slower than an elementwise pass."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.to(torch.promote_types(grad.dtype, x.dtype))  # under autocast: may differ
        pos = torch.ops.aten.threshold_backward(grad, x, 0)  # grad where x > 0, else 0
        grad_x = torch.lerp(pos, grad, weight.to(grad.dtype)) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:  # sum of grad * x where x <= 0, accumulated in float32
            grad_w = (grad - pos).mul_(x).sum(dtype=torch.promote_types(x.dtype, torch.float32))
            grad_w = grad_w.reshape(weight.shape)
        return grad_x, grad_w


# ---- fusion ------------------------------------------------------------------------------------


def _by_r(x: Tensor, frames: int) -> Tensor:
    """A time-major (B, C, T) map as (B, T', r, C), T' = `frames`, T = T' r: a view."""
    b, c, _ = x.shape
    return x.transpose(1, 2).view(b, frames, -1, c)


def _align(x: Tensor) -> Tensor:
    """(B, C, T') -> (B, T', 1, C), which broadcasts over a (B, T', r, C) view of a time-major
    (B, C, T' r) map: nearest upsampling by r."""
    return time_major(x).transpose(1, 2)[:, :, None]


def _sum_r(a: Tensor, b: Tensor | None = None) -> Tensor:
    """Sum over r of a (or of a * b) for (B, T', r, C) maps, kept as (B, T', 1, C). Slice by
    slice: on CPU a reduction over such a short middle axis runs about 2x slower than r - 1
    adds, and the product is never written at full size."""
    r = a.shape[2]
    if _compiling() or (b is None and r > 4):  # a long axis: the reduction is as fast
        return (a if b is None else a * b).sum(2, keepdim=True)
    if b is None:
        if r == 1:
            return a
        out = a[:, :, :1] + a[:, :, 1:2]
        for i in range(2, r):
            out.add_(a[:, :, i: i + 1])
        return out
    out = a[:, :, :1] * b[:, :, :1]
    for i in range(1, r):
        out.addcmul_(a[:, :, i: i + 1], b[:, :, i: i + 1])
    return out


_ROW_CHUNK = 1 << 17  # elements per operand in one `_row_sums` step: the chunks stay in cache


def _row_sums(a: Tensor, b: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sums over time of a and of a * b (b None: a * a) for (B, T, C) maps: (B, C) each, in
    float32 at least. Summed a chunk of rows at a time into cache-resident accumulators, so each
    map is read from memory once for both sums and no full-size product is written."""
    acc = torch.promote_types(a.dtype, torch.float32)  # float32 sums under autocast
    if _compiling():  # the compiler fuses the plain form into one loop
        return a.sum(1, dtype=acc), (a * (a if b is None else b)).sum(1, dtype=acc)
    batch, t, c = a.shape
    rows = min(t, max(1, _ROW_CHUNK // (batch * c)))
    # every chunk's view from one `split` call: per-chunk slicing cost as much as the adds
    chunks_a = a.split(rows, 1)
    chunks_b = chunks_a if b is None else b.split(rows, 1)
    sum_a = chunks_a[0].to(acc, copy=True)  # the first chunk starts the accumulators
    sum_ab = sum_a * chunks_b[0]
    for x, y in zip(chunks_a[1:], chunks_b[1:], strict=True):
        n = x.shape[1]  # rows, or fewer in the last chunk
        sa, sab = (sum_a, sum_ab) if n == rows else (sum_a[:, :n], sum_ab[:, :n])
        sa.add_(x)
        sab.addcmul_(x, y)
    return sum_a.sum(1), sum_ab.sum(1)


def _norm_stats(q: Tensor, w: Tensor | None, eps: float,
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """gLN statistics of w q for q (B, T, C), w (C,) or None (= 1): mean and 1/std ((B,) each),
    and the per-channel sums of q and q^2 over T ((B, C) each) that w's gradient needs."""
    n = q.shape[1] * q.shape[2]
    sum_q, sum_sq = _row_sums(q)  # one pass over q
    if w is None:
        s1, s2 = sum_q.sum(1), sum_sq.sum(1)
    else:
        s1, s2 = (sum_q * w).sum(1), (sum_sq * w.square()).sum(1)
    mean = s1 / n
    rstd = (s2 / n - mean.square()).clamp_min(0).add(eps).rsqrt()
    return mean, rstd, sum_q, sum_sq


def _norm_backward(grad_a: Tensor, grad_shift: Tensor, gamma: Tensor, w: Tensor | None,
                   mean: Tensor, rstd: Tensor, sum_q: Tensor, sum_sq: Tensor, n: int,
                   ) -> tuple[Tensor, ...]:
    """Back through gLN(w q) = a q + shift, a = gamma rstd w, shift = beta - gamma rstd mean,
    given the gradients of a and shift ((B, C)) and q's per-channel sums sum_q, sum_sq
    (`_norm_stats`): gamma's, beta's and w's gradients, and the gradients of the sums
    s1 = sum of w q and s2 = sum of (w q)^2 over (T, C) ((B,) each), which reach q."""
    ws = 1 if w is None else w
    grad_gamma = (grad_a * ws * rstd[:, None] - grad_shift * (rstd * mean)[:, None]).sum(0)
    grad_beta = grad_shift.sum(0)
    grad_w = None if w is None else (grad_a * gamma * rstd[:, None]).sum(0)
    grad_rstd = (gamma * (grad_a * ws - grad_shift * mean[:, None])).sum(1)
    grad_mean = -(gamma * grad_shift).sum(1) * rstd
    # rstd = (s2 / n - mean^2 + eps)^-1/2, mean = s1 / n
    grad_var = -0.5 * grad_rstd * rstd**3
    grad_s1, grad_s2 = (grad_mean - 2 * mean * grad_var) / n, grad_var / n
    if w is not None:  # through s1 and s2 too
        grad_w += (grad_s1[:, None] * sum_q + 2 * w * grad_s2[:, None] * sum_sq).sum(0)
    return grad_gamma, grad_beta, grad_w, grad_s1, grad_s2


def _sums_input_grad(q: Tensor, w: Tensor | None, grad_s1: Tensor, grad_s2: Tensor) -> Tensor:
    """The gradient of q through the sums s1 = sum of w q and s2 = sum of (w q)^2 over (T, C),
    given grad_s1, grad_s2 (B,): one full-size pass, a new tensor to add the rest to."""
    # per-channel even without w: addcmul broadcasting two per-sample scalars over a map runs
    # ~3x slower on CPU than with per-channel (B, 1.., C) operands
    ws = q.new_ones(q.shape[-1]) if w is None else w
    lin = (grad_s1[:, None] * ws).view(q.shape[0], *[1] * (q.ndim - 2), -1)  # (B, 1.., C)
    quad = (2 * grad_s2[:, None] * ws * ws).view_as(lin)
    return torch.addcmul(lin, q, quad)


def norm_modulate(x: Tensor, w: Tensor | None, gamma: Tensor, beta: Tensor, gate: Tensor,
                  shift_g: Tensor, eps: float) -> Tensor:
    """gLN(w x) * gate + shift_g, time-major, for a (B, C, T) map x, w (C,) or None (= 1),
    gLN's affine gamma, beta (C,), and gate and shift_g (B, T', 1, C) at a coarser rate
    (T = T' r), repeated r times: one statistics pass over x, then one broadcast multiply-add
    on x's (B, T', r, C) view."""
    x = time_major(x)
    if _autograd(x, w, gamma, beta, gate, shift_g):
        return NormModulateFn.apply(x, w, gamma, beta, gate, shift_g, eps)
    return NormModulateFn.forward(None, x, w, gamma, beta, gate, shift_g, eps)


def _affine(gamma: Tensor, beta: Tensor, w: Tensor | None, mean: Tensor, rstd: Tensor,
            ) -> tuple[Tensor, Tensor]:
    """Per-sample scale a and shift ((B, C)) of the gLN of w q with affine gamma, beta (w (C,)
    or None = 1; mean and rstd those of w q): gLN(w q) = a q + shift."""
    a = gamma * rstd[:, None]
    shift = beta - a * mean[:, None]
    return (a if w is None else a * w), shift


def _modulation(gamma: Tensor, beta: Tensor, w: Tensor | None, mean: Tensor, rstd: Tensor,
                gate: Tensor, shift_g: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """coef, bias ((B, T', 1, C)) with gLN(w q) * gate + shift_g = q coef + bias, and the
    per-sample scale and shift ((B, C)) of q's gLN: gLN(w q) = a q + shift."""
    a, shift = _affine(gamma, beta, w, mean, rstd)
    coef = a[:, None, None] * gate
    bias = torch.addcmul(shift_g, shift[:, None, None], gate)
    return coef, bias, a, shift


class NormModulateFn(torch.autograd.Function):
    """`norm_modulate` (x time-major) with a hand-written backward: the full-size work is two
    sums over r and x's gradient in two passes (autograd makes several full-size temporaries
    and adds up two gradients of x, from the statistics and from the multiply-add)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor | None, gamma: Tensor, beta: Tensor, gate: Tensor,
                shift_g: Tensor, eps: float) -> Tensor:
        q = _by_r(x, gate.shape[1])
        mean, rstd, sum_q, sum_sq = _norm_stats(x.transpose(1, 2), w, eps)
        coef, bias, a, shift = _modulation(gamma, beta, w, mean, rstd, gate, shift_g)
        if ctx is not None:  # None: called without autograd (`norm_modulate`)
            ctx.save_for_backward(x, w, gamma, gate, mean, rstd, sum_q, sum_sq, coef, a, shift)
        return torch.addcmul(bias, q, coef).flatten(1, 2).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w, gamma, gate, mean, rstd, sum_q, sum_sq, coef, a, shift = ctx.saved_tensors
        q, grad = _by_r(x, gate.shape[1]), _by_r(time_major(grad), gate.shape[1])
        # out = q coef + bias, coef = a gate, bias = shift_g + shift gate
        grad_coef = _sum_r(grad, q)  # (B, T', 1, C)
        grad_bias = _sum_r(grad)
        grad_gate = grad_coef * a[:, None, None] + grad_bias * shift[:, None, None]
        grad_gamma, grad_beta, grad_w, grad_s1, grad_s2 = _norm_backward(
            (grad_coef * gate).sum((1, 2)), (grad_bias * gate).sum((1, 2)), gamma, w, mean, rstd,
            sum_q, sum_sq, q[0].numel())
        grad_q = _sums_input_grad(q, w, grad_s1, grad_s2).addcmul_(grad, coef)
        grad_x = _owned(grad_q.flatten(1, 2).transpose(1, 2))
        return grad_x, grad_w, grad_gamma, grad_beta, grad_gate, grad_bias, None


class GlobLNFn(torch.autograd.Function):
    """gLN of w x for a time-major (B, C, T) map x, w (C,) or None (= 1), output (time-major)
    at every step-th frame (statistics over all): one pass of sums and one multiply-add
    forward, one pass of sums and two passes backward (torch's group norm backward is ~4x
    slower in either layout). Works on the (B, T, C) view inside."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor | None, gamma: Tensor, beta: Tensor, eps: float,
                step: int) -> Tensor:
        q = x.transpose(1, 2)  # (B, T, C) contiguous
        mean, rstd, sum_q, sum_sq = _norm_stats(q, w, eps)
        a, shift = _affine(gamma, beta, w, mean, rstd)
        if ctx is not None:  # None: called without autograd (`glob_ln`)
            ctx.save_for_backward(x, w, gamma, mean, rstd, a, sum_q, sum_sq)
            ctx.step = step
        return torch.addcmul(shift[:, None], q[:, ::step], a[:, None]).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w, gamma, mean, rstd, a, sum_q, sum_sq = ctx.saved_tensors
        q, g = x.transpose(1, 2), time_major(grad).transpose(1, 2)  # (B, T, C), (B, T', C)
        sum_grad, sum_grad_q = _row_sums(g, q[:, :: ctx.step])
        grad_gamma, grad_beta, grad_w, grad_s1, grad_s2 = _norm_backward(
            sum_grad_q, sum_grad, gamma, w, mean, rstd, sum_q, sum_sq, q[0].numel())
        grad_q = _sums_input_grad(q, w, grad_s1, grad_s2)
        grad_q[:, :: ctx.step].addcmul_(g, a[:, None])
        return _owned(grad_q.transpose(1, 2)), grad_w, grad_gamma, grad_beta, None, None


class _GlobLN(Protocol):
    gamma: Tensor
    beta: Tensor
    eps: float


class _ConvNorm(Protocol):
    """What `_conv_norm` reads of a `s4m.blocks.ConvNorm`."""

    conv: nn.Conv1d
    norm: _GlobLN


class _Fusion(Protocol):
    """What `fusion` reads of a `s4m.blocks.Fusion`."""

    local_embedding: _ConvNorm
    global_act: _ConvNorm
    global_embedding: _ConvNorm


def _conv_norm(module: _ConvNorm, x: Tensor, step: int) -> Tensor:
    """gLN(conv(x)) of a `s4m.blocks.ConvNorm` without activation, every step-th frame; a
    per-channel scale (a depthwise 1x1 conv) is folded into the gLN instead of applied."""
    conv, norm = module.conv, module.norm
    if conv.kernel_size[0] == 1 and conv.groups == conv.in_channels and conv.bias is None:
        return glob_ln(x, norm.gamma, norm.beta, norm.eps, step, conv.weight.view(-1))
    return glob_ln(conv1d(conv, x), norm.gamma, norm.beta, norm.eps, step)


def fusion(module: _Fusion, local: Tensor, glob: Tensor) -> Tensor:
    """`module(local, glob)` (a `s4m.blocks.Fusion`) with the local gLN folded into a
    per-channel scale and shift from one statistics pass, so the full-rate work is one depthwise
    conv (kernel > 1) and one broadcast multiply-add; time-major out."""
    # the released top-down quirk feeds a finer map as "global" input: its gLN statistics are
    # over all of its frames, the rest is only needed at the `step` frames nearest-resampling keeps
    step = max(1, glob.shape[-1] // local.shape[-1])
    gate = torch.sigmoid(_conv_norm(module.global_act, glob, step))
    shift_g = _conv_norm(module.global_embedding, glob, step)
    conv, norm = module.local_embedding.conv, module.local_embedding.norm
    if conv.kernel_size[0] == 1:  # per-channel scale: fold it instead of applying it
        x, scale = local, conv.weight.view(-1)
    else:
        x, scale = conv1d(conv, local), None
    return norm_modulate(x, scale, norm.gamma, norm.beta, _align(gate), _align(shift_g),
                         norm.eps)
