"""Multi-scale block of S4M (TDANet's separator block with S4 in place of attention).

Layout is (B, C, T) throughout. Costly full-rate work is kept to native fused kernels:
gLN is `group_norm` with one group, depthwise convs are real `groups=C` convs (oneDNN path),
pooling is a strided depthwise conv, and each local/global fusion folds its gLN into one
broadcast multiply-add instead of materialising upsampled copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ssm import S4Layer

GLN_EPS = 1e-8


class GlobLN(nn.Module):
    """Global layer norm over (C, T) per sample, per-channel affine."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, 1, self.gamma, self.beta, GLN_EPS)


def conv1d(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """`conv(x)`, except depthwise 1x1 convs run as a per-channel multiply-add: torch's CPU
    grouped conv falls back to a slow per-group loop for them."""
    if conv.kernel_size[0] == 1 and conv.groups > 1 and conv.groups == conv.in_channels:
        w = conv.weight[:, 0]  # (C, 1)
        return x * w if conv.bias is None else torch.addcmul(conv.bias[:, None], x, w)
    return conv(x)


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
    """Nearest resampling along time for integer ratios; (B,C,T) -> (B,C,T',1) broadcastable."""
    t = x.shape[-1]
    if t > length:  # released top-down quirk: a finer map used as "global" input
        return x[..., :: t // length, None]
    return x[..., None]


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
            q, scale = local, conv.weight[:, 0, 0]
            s1, s2 = q.sum(-1) * scale, torch.einsum("bct,bct->bc", q, q) * scale.square()
        else:
            q, scale = conv(local), None
            s1, s2 = q.sum(-1), torch.einsum("bct,bct->bc", q, q)
        mean = s1.sum(1) / (c * t)  # (B,)
        rstd = (s2.sum(1) / (c * t) - mean.square()).clamp_min(0).add(GLN_EPS).rsqrt()
        a = norm.gamma * rstd[:, None]  # (B, C): gLN(q) = a q + shift
        shift = norm.beta - a * mean[:, None]
        if scale is not None:
            a = a * scale
        gate, shift_g = _align(gate, t), _align(shift_g, t)  # (B, C, T', 1)
        coef = a[..., None, None] * gate
        bias = torch.addcmul(shift_g, shift[..., None, None], gate)
        return torch.addcmul(bias, q.view(b, c, gate.shape[2], -1), coef).view(b, c, t)


class ResidualSSM(nn.Module):
    """Pre-norm (LayerNorm over channels) S4 layer with a residual connection."""

    def __init__(self, channels: int, **s4_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.layer = S4Layer(channels, **s4_kwargs)

    def forward(self, x: Tensor, k_f: Tensor | None = None) -> Tensor:
        z = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return x + self.layer(z, k_f)


class FeedForward(nn.Module):
    """Pre-norm 1x1 C -> 2C, GELU, 1x1 2C -> C, residual."""

    def __init__(self, channels: int, expand: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Conv1d(channels, channels * expand, 1)
        self.fc2 = nn.Conv1d(channels * expand, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        z = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return x + self.fc2(F.gelu(self.fc1(z)))


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
        depth, hidden = self.num_scales, self.res_conv.in_channels
        outs = [self.proj(x)]
        for i, down in enumerate(self.down):
            y = down(outs[-1])
            if str(i) in self.local_ssm:
                y = self.local_ssm[str(i)](y, kernels[str(i)])
            outs.append(y)
        outs = outs[1:]
        coarse = outs[-1].shape[-1]
        glob = outs[-1]
        for o in outs[:-1]:  # average pooling as a strided depthwise conv
            r = o.shape[-1] // coarse
            glob = glob + F.conv1d(o, o.new_full((hidden, 1, r), 1 / r), stride=r, groups=hidden)
        if self.global_ssm is not None:
            glob = self.global_ssm(glob, kernels[str(depth - 1)])
        glob = self.ff(glob)

        used = set(range(depth - 1)) | {depth - 3 if depth >= 3 else depth - 1}
        fused = {i: self.fuse[i](outs[i], glob) for i in sorted(used)}
        expanded = self.recon[depth - 2](fused[depth - 2], fused[(depth - 3) % depth])
        for i in range(depth - 3, -1, -1):
            expanded = self.recon[i](fused[i], expanded)
        return self.res_conv(expanded) + x
