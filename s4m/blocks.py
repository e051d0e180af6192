"""Multi-scale block of S4M (TDANet's separator block with S4 in place of attention).

Tensors are (B, C, T) but stored time-major ((B, T, C) memory, "channels-last"): on CPU the
oneDNN depthwise convs, pooling and gLN are several times faster in that layout, 1x1 convs are
plain GEMMs on the (B, T, C) view, channel LayerNorms need no copies, and broadcasting a coarse
map over time keeps the contiguous channel axis innermost. Each local/global fusion folds its
gLN into one broadcast multiply-add instead of materialising upsampled copies.

Under autocast the convolutions and GEMMs follow it; the hand-written backward of the depthwise
conv runs in the dtype its forward ran in (that of the incoming gradient) and accumulates its
weight gradient in float32, and the gLN statistics of the fusions are summed in float32
(their variance is a difference of two sums, which half precision would cancel away).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ssm import S4Layer

GLN_EPS = 1e-8


def time_major(x: Tensor) -> Tensor:
    """(B, C, T) with (B, T, C) memory; a no-op when already so."""
    return x if x.stride(1) == 1 else x.transpose(1, 2).contiguous().transpose(1, 2)


def pointwise(weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    """1x1 conv (weight (C_out, C_in, 1)) of a (B, C_in, T) map as a GEMM on its (B, T, C) view."""
    return F.linear(time_major(x).transpose(1, 2), weight[..., 0], bias).transpose(1, 2)


class GlobLN(nn.Module):
    """Global layer norm over (C, T) per sample, per-channel affine."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(time_major(x)[:, :, None], 1, self.gamma, self.beta, GLN_EPS).squeeze(2)


def conv1d(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """`conv(x)` on a time-major map, kept time-major: 1x1 convs as GEMMs, depthwise 1x1 convs as
    a per-channel multiply-add (torch's CPU grouped conv loops over groups for them), other
    convs as unit-height conv2d (oneDNN's channels-last path)."""
    if conv.kernel_size[0] == 1 and conv.groups == 1 and conv.stride[0] == 1:
        return pointwise(conv.weight, conv.bias, x)
    if conv.kernel_size[0] == 1 and conv.groups > 1 and conv.groups == conv.in_channels:
        w = conv.weight[:, 0]  # (C, 1)
        return x * w if conv.bias is None else torch.addcmul(conv.bias[:, None], x, w)
    if conv.groups == conv.in_channels == conv.out_channels:
        return _Depthwise.apply(x, conv.weight, conv.bias, conv.stride[0], conv.padding[0])
    y = F.conv2d(time_major(x)[:, :, None], conv.weight[:, :, None], conv.bias,
                 (1, conv.stride[0]), (0, conv.padding[0]), 1, conv.groups)
    return y.squeeze(2)


def _depthwise(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, pad: int) -> Tensor:
    """Depthwise conv of a (B, C, T) map as a unit-height channels-last conv2d, time-major out."""
    y = F.conv2d(time_major(x)[:, :, None], weight[:, :, None], bias, (1, stride), (0, pad), 1,
                 x.shape[1])
    return y.squeeze(2)


_TAP_CHUNK = 1 << 18  # elements of the (rows, K, C) weight-gradient accumulator: ~L2-sized


def _tap_sums(xs: Tensor, g: Tensor, k: int, stride: int) -> Tensor:
    """(K, C): sum over b, i of xs[b, stride * i + j] * g[b, i] for taps j < K.

    xs (B, L, C) with rows of C contiguous, g (B, n, C). The (B, n, K, C) window products are
    accumulated a chunk of rows at a time into a cache-resident buffer, never materialised."""
    b, n, c = g.shape
    if stride * (n - 1) + k > xs.shape[1] or xs.stride(1) != c or xs.stride(2) != 1:
        raise ValueError("windows must lie inside xs, whose rows must be contiguous")
    win = xs.as_strided((b, n, k, c), (xs.stride(0), stride * c, c, 1), xs.storage_offset())
    rows = max(1, _TAP_CHUNK // (k * c))
    acc = g.new_zeros(min(rows, n), k, c, dtype=torch.promote_types(g.dtype, torch.float32))
    for bi in range(b):
        for i in range(0, n, rows):
            e = min(i + rows, n)
            acc[: e - i].addcmul_(win[bi, i:e], g[bi, i:e, None])
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


class _Depthwise(torch.autograd.Function):
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
            grad_x = F.conv_transpose2d(g[:, :, None], weight[:, :, None], None, (1, s),
                                        (0, pad), (0, extra), x.shape[1]).squeeze(2)
        g_t = g.transpose(1, 2).contiguous()  # (B, T_out, C); a no-op unless g is a slice
        if ctx.needs_input_grad[1]:
            x_t = time_major(x).transpose(1, 2).contiguous()  # (B, T, C)
            grad_w = _depthwise_weight_grad(x_t, g_t, k, s, pad)[:, None]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g_t.sum((0, 1))
        return grad_x, grad_w, grad_b, None, None


class ConvNorm(nn.Module):
    """Conv1d ('same' padding for odd kernels) -> gLN -> optional PReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = True, act: bool = False):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups,
                              bias=bias)
        self.norm = GlobLN(c_out)
        self.act = nn.PReLU() if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(conv1d(self.conv, x))
        return x if self.act is None else self.act(x)


def _align(x: Tensor, length: int) -> Tensor:
    """Nearest resampling along time for integer ratios: (B, C, T) -> (B, T', 1, C), which
    broadcasts over a (B, T', r, C) view of a time-major (B, C, T' * r) map."""
    x = time_major(x).transpose(1, 2)  # (B, T, C) contiguous
    if x.shape[1] > length:  # released top-down quirk: a finer map used as "global" input
        x = x[:, :: x.shape[1] // length]
    return x[:, :, None]


def _moments(q: Tensor, w: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample sums of w q and (w q)^2 over q (B, T, C), w (C,) or None (= 1), and the
    per-channel sums of q and q^2 over T ((B, C) each) they come from."""
    acc = torch.promote_types(q.dtype, torch.float32)  # float32 sums under autocast
    sum_q, sum_sq = q.sum(1, dtype=acc), q.square().sum(1, dtype=acc)  # (T, C) rows: vectorised
    if w is None:
        return sum_q.sum(1), sum_sq.sum(1), sum_q, sum_sq
    return (sum_q * w).sum(1), (sum_sq * w.square()).sum(1), sum_q, sum_sq


class _Moments(torch.autograd.Function):
    """`_moments` with a one-pass backward, d/dq = g1 w + 2 g2 w^2 q: autograd's square-and-
    sum backward makes three full-size temporaries. Used only when grad is enabled, so that
    no-grad traces (the MAC counters') see plain aten ops."""

    @staticmethod
    def forward(ctx, q: Tensor, w: Tensor | None) -> tuple[Tensor, Tensor]:
        s1, s2, sum_q, sum_sq = _moments(q, w)
        ctx.save_for_backward(q, w, sum_q, sum_sq)
        return s1, s2

    @staticmethod
    def backward(ctx, g1: Tensor, g2: Tensor):
        q, w, sum_q, sum_sq = ctx.saved_tensors
        g1, g2 = g1[:, None], 2 * g2[:, None]  # (B, 1)
        lin, quad = (g1, g2) if w is None else (g1 * w, g2 * w.square())  # (B, 1 or C)
        grad_q = torch.addcmul(lin[:, None], q, quad[:, None]) if ctx.needs_input_grad[0] else None
        grad_w = None
        if w is not None and ctx.needs_input_grad[1]:
            grad_w = (g1 * sum_q).sum(0) + w * (g2 * sum_sq).sum(0)
        return grad_q, grad_w


class _Modulate(torch.autograd.Function):
    """addcmul(bias, q, coef) for q (B, T', r, C) and coef, bias (B, T', 1, C). autograd's
    addcmul backward makes full-size `tensor * value` copies; this one only what it returns."""

    @staticmethod
    def forward(ctx, q: Tensor, coef: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(q, coef)
        return torch.addcmul(bias, q, coef)

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, coef = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_q = grad * coef if needs[0] else None
        grad_coef = (grad * q).sum(2, keepdim=True) if needs[1] else None
        grad_bias = grad.sum(2, keepdim=True) if needs[2] else None
        return grad_q, grad_coef, grad_bias


class Fusion(nn.Module):
    """Local-global fusion: gLN(conv(local)) * sigmoid(gLN(conv(glob))) + gLN(conv(glob)).

    The global terms are nearest-upsampled to the local rate. The local gLN is folded into
    per-channel scale/shift computed from one statistics pass, so the full-rate work is one
    depthwise conv (kernel > 1) and one broadcast multiply-add.
    """

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.local_embedding = ConvNorm(channels, channels, kernel, groups=channels, bias=False)
        self.global_act = ConvNorm(channels, channels, kernel, groups=channels, bias=False)
        self.global_embedding = ConvNorm(channels, channels, kernel, groups=channels, bias=False)

    def forward(self, local: Tensor, glob: Tensor) -> Tensor:
        b, c, t = local.shape
        gate = torch.sigmoid(self.global_act(glob))
        shift_g = self.global_embedding(glob)
        conv, norm = self.local_embedding.conv, self.local_embedding.norm
        if conv.kernel_size[0] == 1:  # per-channel scale: fold it instead of applying it
            q, scale = time_major(local), conv.weight[:, 0, 0]
        else:
            q, scale = conv1d(conv, local), None
        q_t = time_major(q).transpose(1, 2)  # (B, T, C) contiguous
        grad = torch.is_grad_enabled()
        # (B,): sums of scale * q and its square
        s1, s2 = _Moments.apply(q_t, scale) if grad else _moments(q_t, scale)[:2]
        mean = s1 / (c * t)
        rstd = (s2 / (c * t) - mean.square()).clamp_min(0).add(GLN_EPS).rsqrt()
        a = norm.gamma * rstd[:, None]  # (B, C): gLN(q) = a q + shift
        shift = norm.beta - a * mean[:, None]
        if scale is not None:
            a = a * scale
        gate, shift_g = _align(gate, t), _align(shift_g, t)  # (B, T', 1, C)
        coef = a[:, None, None] * gate
        bias = torch.addcmul(shift_g, shift[:, None, None], gate)
        q = q_t.view(b, gate.shape[1], -1, c)  # (B, T', r, C)
        out = _Modulate.apply(q, coef, bias) if grad else torch.addcmul(bias, q, coef)
        return out.view(b, t, c).transpose(1, 2)


class ResidualSSM(nn.Module):
    """Pre-norm (LayerNorm over channels) S4 layer with a residual connection."""

    def __init__(self, channels: int, **s4_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.layer = S4Layer(channels, **s4_kwargs)

    def forward(self, x: Tensor, k_f: Tensor | None = None) -> Tensor:
        x = time_major(x)
        return x + self.layer(self.norm(x.transpose(1, 2)).transpose(1, 2), k_f)


class FeedForward(nn.Module):
    """Pre-norm 1x1 C -> 2C, GELU, 1x1 2C -> C, residual."""

    def __init__(self, channels: int, expand: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Conv1d(channels, channels * expand, 1)
        self.fc2 = nn.Conv1d(channels * expand, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x_t = time_major(x).transpose(1, 2)  # (B, T, C) contiguous
        hid = F.gelu(F.linear(self.norm(x_t), self.fc1.weight[..., 0], self.fc1.bias))
        return (x_t + F.linear(hid, self.fc2.weight[..., 0], self.fc2.bias)).transpose(1, 2)


class MultiScaleBlock(nn.Module):
    """One S4M separator block on (B, in_channels, T), T a multiple of 2**(num_scales - 1).

    1x1 to `hidden` channels; scale 0 = a stride-1 depthwise conv, scale i > 0 = a stride-2
    depthwise conv of scale i-1; all scales average-pooled to the coarsest rate and summed; S4
    (if the coarsest scale is in `s4_scales`) and a feed-forward block there; each scale fused
    with that global map; top-down reconstruction to full rate; 1x1 back and a residual.
    Scales in `s4_scales` other than the coarsest get a residual S4 layer on their local
    features (right after their depthwise conv, so both the global sum and the fusion see it).

    The top-down path follows the released code exactly: it starts by fusing scale D-2 with
    scale D-3 (not D-1), so the coarsest fused map is unused for D >= 3; it is not computed and
    its fusion layer (kept for a faithful parameter count) gets no gradient.
    """

    def __init__(self, in_channels: int = 128, hidden: int = 512, num_scales: int = 4,
                 s4_scales: tuple[int, ...] = (3,), **s4_kwargs):
        super().__init__()
        if num_scales < 2:
            raise ValueError(f"num_scales must be >= 2, got {num_scales}")
        bad = [s for s in s4_scales if not 0 <= s < num_scales]
        if bad:
            raise ValueError(f"s4_scales {bad} out of range for num_scales={num_scales}")
        self.num_scales = num_scales
        coarsest = num_scales - 1
        self.proj = ConvNorm(in_channels, hidden, 1, act=True)
        self.down = nn.ModuleList(
            ConvNorm(hidden, hidden, 5, 1 if i == 0 else 2, groups=hidden)
            for i in range(num_scales)
        )
        self.fuse = nn.ModuleList(Fusion(hidden, 1) for _ in range(num_scales))
        self.recon = nn.ModuleList(Fusion(hidden, 5) for _ in range(num_scales - 1))
        self.res_conv = nn.Conv1d(hidden, in_channels, 1)
        self.global_ssm = ResidualSSM(hidden, **s4_kwargs) if coarsest in s4_scales else None
        self.ff = FeedForward(hidden)
        self.local_ssm = nn.ModuleDict(
            {str(s): ResidualSSM(hidden, **s4_kwargs) for s in sorted(s4_scales) if s != coarsest}
        )

    def ssm_layers(self) -> dict[int, ResidualSSM]:
        """Scale -> residual S4 layer, the coarsest (global) one included."""
        layers = {int(k): v for k, v in self.local_ssm.items()}
        if self.global_ssm is not None:
            layers[self.num_scales - 1] = self.global_ssm
        return layers

    def kernel_ffts(self, length: int) -> dict[str, Tensor]:
        """Every S4 kernel for a full-rate input of `length` frames, built once per forward."""
        return {str(s): m.layer.kernel_fft(length >> s) for s, m in self.ssm_layers().items()}

    def forward(self, x: Tensor, kernels: dict[str, Tensor] | None = None) -> Tensor:
        kernels = kernels if kernels is not None else self.kernel_ffts(x.shape[-1])
        depth = self.num_scales
        outs = [self.proj(x)]
        for i, down in enumerate(self.down):
            y = down(outs[-1])
            if str(i) in self.local_ssm:
                y = self.local_ssm[str(i)](y, kernels[str(i)])
            outs.append(y)
        outs = outs[1:]
        coarse = outs[-1].shape[-1]
        glob = outs[-1]
        for o in outs[:-1]:  # average pooling to the coarsest rate
            r = o.shape[-1] // coarse
            glob = glob + F.avg_pool2d(o[:, :, None], (1, r)).squeeze(2)
        if self.global_ssm is not None:
            glob = self.global_ssm(glob, kernels[str(depth - 1)])
        glob = self.ff(glob)

        used = set(range(depth - 1)) | {depth - 3 if depth >= 3 else depth - 1}
        fused = {i: self.fuse[i](outs[i], glob) for i in sorted(used)}
        expanded = self.recon[depth - 2](fused[depth - 2], fused[(depth - 3) % depth])
        for i in range(depth - 3, -1, -1):
            expanded = self.recon[i](fused[i], expanded)
        return conv1d(self.res_conv, expanded) + x
