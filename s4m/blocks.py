"""S4M's separator block: TDANet's multi-scale block with S4 in place of attention.

The modules below are the architecture in plain torch. While `s4m.fused.is_enabled()` (the
default), `Conv1d`, `GlobLN`, the pooling and `Fusion` run through `s4m.fused` instead: the
same maths in a CPU-friendly layout with leaner backward passes (tested against this path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fused
from .global_layers import SelectiveSSM, SelfAttention
from .ssm import SSM_KINDS, S4Layer

# The layer on the coarsest (global) map: an S4 or S4D layer (the released design), a selective
# SSM, TDANet's self-attention, or none (the multi-scale convolutional path alone).
GLOBAL_LAYERS = (*SSM_KINDS, "s6", "attention", "none")
FEED_FORWARDS = ("mlp", "conv")  # S4M's pre-norm MLP | TDANet's conv feed-forward
FUSIONS = ("gated", "add")  # global map into each scale: S4M's gated fusion | TDANet's sum


class Conv1d(nn.Conv1d):
    """`nn.Conv1d` (same parameters), time-major on the fused path."""

    def forward(self, x: Tensor) -> Tensor:
        return fused.conv1d(self, x) if fused.is_enabled() else super().forward(x)


class GlobLN(nn.Module):
    """Global layer norm over (C, T) per sample, per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        if fused.is_enabled():
            return fused.glob_ln(x, self.gamma, self.beta, self.eps)
        return F.group_norm(x, 1, self.gamma, self.beta, self.eps)


def avg_pool(x: Tensor, r: int) -> Tensor:
    """Average pooling by `r` along time."""
    return fused.avg_pool(x, r) if fused.is_enabled() else F.avg_pool1d(x, r)


class PReLU(nn.PReLU):
    """`nn.PReLU` with one slope (same parameter), with `s4m.fused`'s backward on the fused path."""

    def __init__(self):
        super().__init__(num_parameters=1)

    def forward(self, x: Tensor) -> Tensor:
        return fused.prelu(x, self.weight) if fused.is_enabled() else super().forward(x)


class ConvNorm(nn.Module):
    """Conv1d ('same' padding for odd kernels) -> gLN -> optional PReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = True, act: bool = False):
        super().__init__()
        self.conv = Conv1d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups,
                           bias=bias)
        self.norm = GlobLN(c_out)
        self.act = PReLU() if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.conv(x))
        return x if self.act is None else self.act(x)


class Fusion(nn.Module):
    """Local-global fusion: gLN(conv(local)) * sigmoid(gLN(conv(glob))) + gLN(conv(glob)), the
    global terms nearest-resampled to the local rate (depthwise convs)."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.local_embedding = ConvNorm(channels, channels, kernel, groups=channels, bias=False)
        self.global_act = ConvNorm(channels, channels, kernel, groups=channels, bias=False)
        self.global_embedding = ConvNorm(channels, channels, kernel, groups=channels, bias=False)

    def forward(self, local: Tensor, glob: Tensor) -> Tensor:
        if fused.is_enabled():
            return fused.fusion(self, local, glob)
        t = local.shape[-1]
        gate = F.interpolate(torch.sigmoid(self.global_act(glob)), size=t, mode="nearest")
        shift = F.interpolate(self.global_embedding(glob), size=t, mode="nearest")
        return self.local_embedding(local) * gate + shift


class ResidualSSM(nn.Module):
    """Pre-norm (LayerNorm over channels) S4 layer with a residual connection."""

    def __init__(self, channels: int, **s4_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.layer = S4Layer(channels, **s4_kwargs)

    def forward(self, x: Tensor, k_f: Tensor | None = None) -> Tensor:
        return x + self.layer(self.norm(x.transpose(1, 2)).transpose(1, 2), k_f)


class FeedForward(nn.Module):
    """Pre-norm 1x1 C -> 2C, GELU, 1x1 2C -> C, residual."""

    def __init__(self, channels: int, expand: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Conv1d(channels, channels * expand, 1)
        self.fc2 = nn.Conv1d(channels * expand, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x_t = x.transpose(1, 2)  # (B, T, C): the 1x1 convs as linear maps over channels
        hid = F.gelu(F.linear(self.norm(x_t), self.fc1.weight.squeeze(-1), self.fc1.bias))
        return (x_t + F.linear(hid, self.fc2.weight.squeeze(-1), self.fc2.bias)).transpose(1, 2)


class ConvFeedForward(nn.Module):
    """TDANet's feed-forward: x + gLN(1x1(ReLU(dwconv5(gLN(1x1(x)))))), 2x wider inside."""

    def __init__(self, channels: int, expand: int = 2):
        super().__init__()
        hidden = expand * channels
        self.fc1 = ConvNorm(channels, hidden, 1, bias=False)
        self.dwconv = Conv1d(hidden, hidden, 5, padding=2, groups=hidden)
        self.fc2 = ConvNorm(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.relu(self.dwconv(self.fc1(x))))


class MultiScaleBlock(nn.Module):
    """One S4M separator block on (B, in_channels, T), T a multiple of 2**(num_scales - 1).

    1x1 to `hidden` channels; scale 0 = a stride-1 depthwise conv, scale i > 0 = a stride-2
    depthwise conv of scale i-1; all scales average-pooled to the coarsest rate and summed; S4
    (if the coarsest scale is in `s4_scales`) and a feed-forward block there; each scale fused
    with that global map; top-down reconstruction to full rate; 1x1 back and a residual.
    Scales in `s4_scales` other than the coarsest get a residual S4 layer on their local
    features (right after their depthwise conv, so both the global sum and the fusion see it).
    `global_layer` (None: the `ssm` kind), `feed_forward` and `fusion` pick the global map's
    layers (GLOBAL_LAYERS, FEED_FORWARDS, FUSIONS); TDANet is attention + conv + add.

    The top-down path follows the released code exactly: it starts by fusing scale D-2 with
    scale D-3 (not D-1), so the coarsest fused map is unused for D >= 3; it is not computed and
    its fusion layer (kept for a faithful parameter count) gets no gradient.
    """

    def __init__(self, in_channels: int = 128, hidden: int = 512, num_scales: int = 4,
                 s4_scales: tuple[int, ...] = (3,), global_layer: str | None = None,
                 feed_forward: str = "mlp", fusion: str = "gated", **s4_kwargs):
        super().__init__()
        if num_scales < 2:
            raise ValueError(f"num_scales must be >= 2, got {num_scales}")
        for name, value, allowed in (("global_layer", global_layer, (None, *GLOBAL_LAYERS)),
                                     ("feed_forward", feed_forward, FEED_FORWARDS),
                                     ("fusion", fusion, FUSIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
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
        self.fuse = (nn.ModuleList(Fusion(hidden, 1) for _ in range(num_scales))
                     if fusion == "gated" else None)
        self.recon = nn.ModuleList(Fusion(hidden, 5) for _ in range(num_scales - 1))
        self.res_conv = Conv1d(hidden, in_channels, 1)
        kind = global_layer or s4_kwargs.get("ssm", "s4")
        self.global_ssm = self.global_mixer = None  # the global S4/S4D layer | another layer
        if coarsest in s4_scales and kind in SSM_KINDS:
            init = s4_kwargs.get("init") if kind == s4_kwargs.get("ssm", "s4") else None
            self.global_ssm = ResidualSSM(hidden, **{**s4_kwargs, "ssm": kind, "init": init})
        elif coarsest in s4_scales and kind == "s6":
            self.global_mixer = SelectiveSSM(hidden, d_state=s4_kwargs.get("d_state", 16))
        elif coarsest in s4_scales and kind == "attention":
            self.global_mixer = SelfAttention(hidden)
        self.ff = FeedForward(hidden) if feed_forward == "mlp" else ConvFeedForward(hidden)
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
        if not torch.compiler.is_exporting():  # export keeps the length symbolic
            length = int(length)  # a size read under torch.jit.trace is a 0-d tensor
        return {str(s): m.layer.kernel_fft(length >> s) for s, m in self.ssm_layers().items()}

    # torch.compile compiles one pass and reuses it for all of the model's passes (eager: no-op);
    # unrolling the passes instead took minutes longer to compile and ran slower than eager
    @torch.compiler.nested_compile_region
    def forward(self, x: Tensor, kernels: dict[str, Tensor] | None = None) -> Tensor:
        kernels = kernels if kernels is not None else self.kernel_ffts(x.shape[-1])
        depth = self.num_scales
        # bottom-up: scale i at 1 / 2**i of the full rate
        outs = [self.proj(x)]
        for i, down in enumerate(self.down):
            y = down(outs[-1])
            if str(i) in self.local_ssm:
                y = self.local_ssm[str(i)](y, kernels[str(i)])
            outs.append(y)
        outs = outs[1:]
        # global map: every scale pooled to the coarsest rate and summed, then S4 and FF
        coarse = outs[-1].shape[-1]
        glob = outs[-1]
        for o in outs[:-1]:
            glob = glob + avg_pool(o, o.shape[-1] // coarse)
        if self.global_ssm is not None:
            glob = self.global_ssm(glob, kernels[str(depth - 1)])
        elif self.global_mixer is not None:
            glob = self.global_mixer(glob)
        glob = self.ff(glob)
        # each scale fused with the global map, then top-down reconstruction (as released)
        used = set(range(depth - 1)) | {depth - 3 if depth >= 3 else depth - 1}
        fused_maps = {i: self._fuse(i, outs[i], glob) for i in sorted(used)}
        expanded = self.recon[depth - 2](fused_maps[depth - 2], fused_maps[(depth - 3) % depth])
        for i in range(depth - 3, -1, -1):
            expanded = self.recon[i](fused_maps[i], expanded)
        return self.res_conv(expanded) + x

    def _fuse(self, scale: int, local: Tensor, glob: Tensor) -> Tensor:
        if self.fuse is not None:
            return self.fuse[scale](local, glob)
        return local + F.interpolate(glob, size=local.shape[-1], mode="nearest")
