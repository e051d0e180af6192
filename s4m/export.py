"""S4M ready for graph export (ONNX): the SSM kernels frozen into buffers.

An S4/S4D kernel is a pure function of the layer's parameters and the length, built with complex
arithmetic that ONNX has no types for. The first L taps of the kernel for a longer length are
the kernel for length L (the truncated impulse response; equal to float rounding), so a copy of
the model keeps each kernel once, for `max_frames` frames, as a real buffer and slices it per
input; the FFT convolution then exports as real DFTs. Inputs longer than the frozen kernels
are refused with an error naming the limit. Global layer norms (S4M's `GlobLN`, and any
`GroupNorm(1, C)` of other models) export as `TwoLevelGroupNorm`, whose statistics keep their
precision in float32 runtimes.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .blocks import GlobLN
from .ssm import SSMKernel


class FrozenKernel(nn.Module):
    """An `SSMKernel`'s output for `max_len` taps, kept as a buffer: (channels, H, L) slices."""

    def __init__(self, kernel: SSMKernel, max_len: int):
        super().__init__()
        with torch.no_grad():
            self.register_buffer("taps", kernel(max_len).detach().float())

    def forward(self, length: int) -> Tensor:
        if length > self.taps.shape[-1]:
            raise ValueError(f"input needs {length} kernel taps; frozen for "
                             f"{self.taps.shape[-1]} (export for longer inputs)")
        return self.taps[..., :length]


def with_frozen_kernels(model: nn.Module, max_frames: int) -> nn.Module:
    """A copy of `model` whose SSM kernels are `FrozenKernel`s long enough for `max_frames`
    encoder frames at full rate (each scale's layer gets its own rate's length)."""
    frozen = copy.deepcopy(model).eval()
    for block in (m for m in frozen.modules() if hasattr(m, "ssm_layers")):
        for scale, residual in block.ssm_layers().items():
            layer = residual.layer
            layer.kernel = FrozenKernel(layer.kernel, -(-max_frames // 2 ** scale))
    return frozen


class FramedS4M(nn.Module):
    """S4M on an already framed waveform, for export: the zero-padding of `S4M.forward_encoder`
    is done by the caller (`frame`), so every size in the graph is a linear function of one
    integer (frames / frame_multiple) that exporters keep symbolic. (B, (F-1)*stride + kernel),
    F a multiple of `frame_multiple` -> (B, n_src, same length); the caller cuts the input's span
    out of it (`frame`'s start)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, framed: Tensor) -> Tensor:
        m = self.model
        feats = m.encoder(framed.unsqueeze(1))
        return m.decoder(m.apply_masks(feats, m.forward_masker(feats)).flatten(1, 2))


class TwoLevelGroupNorm(nn.Module):
    """`GroupNorm(1, C)` on (B, C, ...) with its mean and variance taken as means over the
    channels, then over the rest: the same function, for export. ONNX Runtime's float32
    InstanceNormalization and ReduceMean over one whole (C x T) map lose precision with the
    map's size (relative error 3e-5 at C=128, 16 s of frames, against 3e-7 in two levels), which
    costs models with global norms their parity with eager on long inputs."""

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):
        super().__init__()
        self.weight = None if weight is None else nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rest = tuple(range(2, x.ndim))
        mean = x.mean(1, keepdim=True).mean(rest, keepdim=True)
        centered = x - mean
        var = centered.square().mean(1, keepdim=True).mean(rest, keepdim=True)
        y = centered * torch.rsqrt(var + self.eps)
        shape = (-1,) + (1,) * len(rest)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        return y if self.bias is None else y + self.bias.view(shape)


def with_two_level_norms(model: nn.Module) -> nn.Module:
    """`model` (changed in place) with every global layer norm (torch's `GroupNorm(1, C)`,
    S4M's `GlobLN`) replaced by the equivalent `TwoLevelGroupNorm`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.GroupNorm) and module.num_groups == 1:
            norm = TwoLevelGroupNorm(module.weight, module.bias, module.eps)
        elif isinstance(module, GlobLN):
            norm = TwoLevelGroupNorm(module.gamma, module.beta, module.eps)
        else:
            continue
        model.set_submodule(name, norm)
    return model


def framing(model: nn.Module) -> dict[str, int]:
    """What a caller of `FramedS4M` needs to frame a waveform: encoder kernel and stride, and
    the frame multiple (also recorded in exported files' metadata)."""
    return {"kernel": model.enc_kernel, "stride": model.enc_stride,
            "frame_multiple": model.frame_multiple}


def frame(wav: Tensor, kernel: int, stride: int, frame_multiple: int) -> tuple[Tensor, int]:
    """(B, T) -> (the zero-padded (B, (F-1)*stride + kernel) input of `FramedS4M`, the start of
    the T input samples in its output): exactly `S4M.forward_encoder`'s padding."""
    length = wav.shape[-1]
    needed = -(-(length + kernel - 2 * stride) // stride) + 1
    frames = -(-needed // frame_multiple) * frame_multiple
    start = kernel - stride
    right = (frames - 1) * stride + kernel - start - length
    return torch.nn.functional.pad(wav, (start, right)), start
