"""Asteroid's Conv-TasNet, DPRNN-TasNet and SuDoRM-RF with their published configurations.

The classes below subclass the library models without touching their layers, constructor
arguments or state-dict keys, so asteroid model files load into them and their `serialize()`
output (which names the library class) loads back into plain asteroid. `forward` only adds
input checks and pads the waveform to a length the encoder frames cover to the last sample,
then trims the estimates back to the input's length.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from asteroid.masknn.norms import GlobLN
from asteroid.models import ConvTasNet, DPRNNTasNet, SuDORMRFNet

# asteroid egs/librimix/ConvTasNet/local/conf.yml: the paper's best non-causal setting
# (N=512, L=16, B=128, H=512, Sc=128, P=3, X=8, R=3, gLN) with a ReLU mask; 5.05M params.
CONVTASNET_CONFIG: dict[str, Any] = dict(
    n_filters=512, kernel_size=16, stride=8, bn_chan=128, hid_chan=512, skip_chan=128,
    conv_kernel_size=3, n_blocks=8, n_repeats=3, norm_type="gLN", mask_act="relu",
)
# Luo et al. 2020, 2-sample window: N=64 filters, 64-dim features, 6 blocks of BLSTMs with
# 128 units per direction, chunks of 250 with 50% overlap; 2.61M params. (asteroid's recipe
# uses bn_chan=128 instead, which gives 3.65M.)
DPRNN_CONFIG: dict[str, Any] = dict(
    n_filters=64, kernel_size=2, stride=1, bn_chan=64, hid_size=128, chunk_size=250,
    hop_size=125, n_repeats=6, norm_type="gLN", mask_act="sigmoid", bidirectional=True,
    rnn_type="LSTM", num_layers=1, dropout=0.0,
)
# Tzinis et al. 2020, SuDoRM-RF 1.0x (asteroid egs/librimix/SuDORMRFNet): 512 bases of 21
# samples (hop 10), 128-channel bottleneck, 16 U-ConvBlocks of depth 4, softmax masks.
SUDORMRF_CONFIG: dict[str, Any] = dict(
    n_filters=512, kernel_size=21, stride=10, bn_chan=128, num_blocks=16, upsampling_depth=4,
    mask_act="softmax",
)


def as_batch(wav: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(T,), (B, T) or (B, 1, T) float waveform -> ((B, T), whether the input was 1-D)."""
    if not isinstance(wav, torch.Tensor) or not wav.is_floating_point():
        kind = wav.dtype if isinstance(wav, torch.Tensor) else type(wav).__name__
        raise ValueError(f"expected a floating-point waveform tensor, got {kind}")
    if wav.ndim == 3:
        if wav.shape[1] != 1:
            raise ValueError(f"expected one channel (B, 1, T), got shape {tuple(wav.shape)}")
        wav = wav[:, 0]
    elif wav.ndim not in (1, 2):
        raise ValueError(f"expected a waveform (T,), (B, T) or (B, 1, T), got {tuple(wav.shape)}")
    if wav.numel() == 0:
        raise ValueError(f"empty waveform of shape {tuple(wav.shape)}")
    return (wav.unsqueeze(0), True) if wav.ndim == 1 else (wav, False)


def covered_length(length: int, kernel: int, stride: int) -> int:
    """Smallest length >= `length` whose last sample falls in the last frame of a
    (kernel, stride) unpadded convolution."""
    if length <= kernel:
        return kernel
    return kernel + math.ceil((length - kernel) / stride) * stride


class _WholeLength:
    """Mixin for asteroid encoder-masker-decoder models: checked input, output of input length."""

    library_name: str

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x, was_1d = as_batch(wav)  # (B, T)
        length = x.shape[-1]
        fb = self.encoder.filterbank
        x = F.pad(x, (0, covered_length(length, fb.kernel_size, fb.stride) - length))
        est = super().forward(x)[..., :length]  # (B, n_src, T)
        return est[0] if was_1d else est

    def serialize(self) -> dict[str, Any]:
        package = super().serialize()
        package["model_name"] = self.library_name  # loadable by plain asteroid too
        return package


class ConvTasNetModel(_WholeLength, ConvTasNet):
    library_name = "ConvTasNet"


class DPRNNTasNetModel(_WholeLength, DPRNNTasNet):
    """Under CPU autocast the masker (its LSTMs) runs in float32: oneDNN has bf16 LSTM kernels
    only for AVX-512 CPUs and fails elsewhere. On other devices it follows autocast."""

    library_name = "DPRNNTasNet"

    def forward_masker(self, tf_rep: torch.Tensor) -> torch.Tensor:
        if tf_rep.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward_masker(tf_rep.float())
        return super().forward_masker(tf_rep)


class SuDORMRFNetModel(_WholeLength, SuDORMRFNet):
    """SuDoRM-RF pads internally to a multiple of its resampling factor; any length works."""

    library_name = "SuDORMRFNet"

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x, was_1d = as_batch(wav)
        est = SuDORMRFNet.forward(self, x)[..., : x.shape[-1]]
        return est[0] if was_1d else est


def with_group_norms(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose asteroid gLN layers are torch's `GroupNorm(1, C)` with the same
    gain, bias and eps: the same function (mean and biased variance over every non-batch dim,
    then a per-channel affine), with static reduction dims. asteroid's `GlobLN` takes its dims
    from `torch.arange(...).tolist()`, a data-dependent value that torch.export cannot trace."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, GlobLN):
            norm = torch.nn.GroupNorm(1, module.channel_size, eps=1e-8)  # GlobLN's EPS
            with torch.no_grad():
                norm.weight.copy_(module.gamma)
                norm.bias.copy_(module.beta)
            model.set_submodule(name, norm)
    return model
