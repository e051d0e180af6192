"""S4M: encoder, weight-shared multi-scale S4 separator, masks, decoder (asteroid BaseModel)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from asteroid.models.base_models import BaseModel
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .blocks import Conv1d, GlobLN, MultiScaleBlock, PReLU
from .optim import ssm_param_groups
from .ssm import INITS, SSM_KINDS


def resolve_scales(s4_scales: Sequence[int] | str, num_scales: int) -> tuple[int, ...]:
    """'all' or scale indices (0 = full rate; negative counts from the coarsest)."""
    if s4_scales == "all":
        return tuple(range(num_scales))
    if isinstance(s4_scales, str) or not all(isinstance(s, int) for s in s4_scales):
        raise ValueError(f"s4_scales must be 'all' or a list of ints, got {s4_scales!r}")
    bad = [s for s in s4_scales if not -num_scales <= s < num_scales]
    if bad:
        raise ValueError(f"s4_scales {bad} out of range for num_scales={num_scales}")
    return tuple(sorted({s % num_scales for s in s4_scales}))


class S4M(BaseModel):
    """S4M speech separation (Chen et al., Interspeech 2023), efficient re-implementation.

    As released: Conv1d encoder (kernel K = `enc_kernel_ms` at `sample_rate`, stride K//4,
    `n_filters` filters, K//2+1 when None as released, no bias), gLN and a 1x1 bottleneck to
    `bottleneck_channels`; one `MultiScaleBlock` applied `num_blocks` times with shared weights
    (pass i > 0 sees PReLU(depthwise 1x1(mixture features + previous output))); PReLU + 1x1
    mask head with ReLU on the encoder output; transposed-conv decoder.

    `s4_scales` picks the scales carrying S4 layers (0 = full frame rate, -1 = coarsest, or
    'all'). The released S4M-tiny has S4 (+ feed-forward) only on the pooled global map at the
    coarsest scale (`s4_scales=[-1]`). Assumption for the 3.6M `s4m` config, whose design is
    unpublished: S4 layers at every scale (`s4_scales='all'`), i.e. a residual S4 layer (same
    d_state, bidirectional) on each finer scale's local features besides the global S4 + FF.

    `global_layer` replaces the coarsest scale's S4 layer: s4, s4d, s6 (a selective SSM),
    attention (TDANet's) or none (None: the `ssm` kind); `feed_forward` ("mlp" | "conv") and
    `fusion` ("gated" | "add") pick S4M's or TDANet's layers there (`s4m.blocks`). TDANet (Li et
    al., ICLR 2023), the design S4M modifies, is this class with attention, conv and add at 5
    scales (CONFIGS["tdanet"]).

    Efficiency by design: every S4 kernel is built once per forward (pure function of the
    parameters, never cached into them) and shared by all passes; input length only changes
    internal padding. `checkpointing=True` recomputes each pass in backward (training memory).
    """

    def __init__(self, n_src: int = 2, sample_rate: float = 8000, enc_kernel_ms: float = 4,
                 bottleneck_channels: int = 128, hidden_channels: int = 512,
                 num_blocks: int = 16, num_scales: int = 4,
                 s4_scales: Sequence[int] | str = (-1,), d_state: int = 16, ssm: str = "s4",
                 ssm_init: str | None = None, bidirectional: bool = True,
                 checkpointing: bool = False, global_layer: str | None = None,
                 feed_forward: str = "mlp", fusion: str = "gated", n_filters: int | None = None):
        super().__init__(sample_rate=sample_rate)
        kernel = int(enc_kernel_ms * sample_rate // 1000)
        if kernel < 4:
            raise ValueError(f"enc_kernel_ms={enc_kernel_ms} at {sample_rate} Hz gives a kernel "
                             f"of {kernel} samples; need >= 4")
        n_filters = kernel // 2 + 1 if n_filters is None else n_filters
        for name, value in (("n_src", n_src), ("num_blocks", num_blocks), ("n_filters", n_filters)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if ssm not in SSM_KINDS:
            raise ValueError(f"ssm must be one of {SSM_KINDS}, got {ssm!r}")
        if ssm_init is not None and ssm_init not in INITS[ssm]:
            raise ValueError(f"ssm_init for ssm={ssm!r} must be one of {INITS[ssm]}")
        if not isinstance(num_scales, int) or num_scales < 2:
            raise ValueError(f"num_scales must be an integer >= 2, got {num_scales!r}")
        self._args = dict(
            n_src=n_src, sample_rate=sample_rate, enc_kernel_ms=enc_kernel_ms,
            bottleneck_channels=bottleneck_channels, hidden_channels=hidden_channels,
            num_blocks=num_blocks, num_scales=num_scales,
            s4_scales=s4_scales if isinstance(s4_scales, str) else list(s4_scales),
            d_state=d_state, ssm=ssm, ssm_init=ssm_init, bidirectional=bidirectional,
            checkpointing=checkpointing, global_layer=global_layer, feed_forward=feed_forward,
            fusion=fusion, n_filters=n_filters,
        )
        self.n_src, self.num_blocks, self.checkpointing = n_src, num_blocks, checkpointing
        self.enc_kernel, self.enc_stride = kernel, kernel // 4
        self.n_filters = n_filters
        self.frame_multiple = 2 ** (num_scales - 1)

        self.encoder = nn.Conv1d(1, self.n_filters, kernel, self.enc_stride, bias=False)
        nn.init.xavier_uniform_(self.encoder.weight)
        self.ln = GlobLN(self.n_filters)
        self.bottleneck = Conv1d(self.n_filters, bottleneck_channels, 1)
        self.block = MultiScaleBlock(
            bottleneck_channels, hidden_channels, num_scales,
            resolve_scales(s4_scales, num_scales), global_layer=global_layer,
            feed_forward=feed_forward, fusion=fusion, d_state=d_state, ssm=ssm, init=ssm_init,
            bidirectional=bidirectional,
        )
        self.concat_conv = Conv1d(bottleneck_channels, bottleneck_channels, 1,
                                  groups=bottleneck_channels)
        self.concat_act = PReLU()
        self.mask_net = nn.Sequential(
            PReLU(), Conv1d(bottleneck_channels, n_src * self.n_filters, 1)
        )
        self.decoder = nn.ConvTranspose1d(n_src * self.n_filters, n_src, kernel, self.enc_stride,
                                          bias=False)
        nn.init.xavier_uniform_(self.decoder.weight)

    def _check_input(self, wav: Tensor) -> Tensor:
        if not isinstance(wav, Tensor):
            raise ValueError(f"S4M input must be a torch.Tensor, got {type(wav).__name__}")
        if not wav.is_floating_point():
            raise ValueError(f"S4M input must be a floating-point waveform, got {wav.dtype}")
        if wav.ndim == 3:
            if wav.shape[1] != 1:
                raise ValueError(f"S4M is single-channel: expected (B, 1, T), got a "
                                 f"{wav.shape[1]}-channel input of shape {tuple(wav.shape)}")
            wav = wav[:, 0]
        if wav.ndim != 2:
            raise ValueError(f"S4M input must be (T,), (B, T) or (B, 1, T), got {tuple(wav.shape)}")
        if wav.numel() == 0:
            raise ValueError(f"S4M input is empty: shape {tuple(wav.shape)}")
        return wav.to(self.encoder.weight.dtype)

    def num_frames(self, length: int) -> int:
        """Encoder frames covering `length` samples with full overlap at both ends, rounded up
        to a multiple of 2**(num_scales-1) so every scale halves exactly."""
        k, s = self.enc_kernel, self.enc_stride
        needed = math.ceil((length + k - 2 * s) / s) + 1
        return math.ceil(needed / self.frame_multiple) * self.frame_multiple

    def forward(self, wav: Tensor) -> Tensor:
        """(B, T) or (B, 1, T) -> (B, n_src, T); a 1-D (T,) input gives (n_src, T)."""
        one_d = isinstance(wav, Tensor) and wav.ndim == 1
        wav = self._check_input(wav.unsqueeze(0) if one_d else wav)
        feats = self.forward_encoder(wav)
        est = self.forward_decoder(self.apply_masks(feats, self.forward_masker(feats)),
                                   wav.shape[-1])
        return est[0] if one_d else est

    def forward_encoder(self, wav: Tensor) -> Tensor:
        """(B, T) -> (B, n_filters, frames), the waveform zero-padded to `num_frames(T)`."""
        k, s, length = self.enc_kernel, self.enc_stride, wav.shape[-1]
        frames = self.num_frames(length)
        wav = F.pad(wav, (k - s, (frames - 1) * s + s - length))  # total (frames-1)*s + k
        return self.encoder(wav.unsqueeze(1))

    def forward_masker(self, feats: Tensor) -> Tensor:
        """(B, n_filters, frames) -> masks (B, n_src, n_filters, frames): gLN, bottleneck, the
        shared block `num_blocks` times, mask head."""
        batch, _, frames = feats.shape
        mixture = self.bottleneck(self.ln(feats))  # (B, bottleneck, frames)
        kernels = self.block.kernel_ffts(frames)
        run = self.block
        if self.checkpointing and self.training and torch.is_grad_enabled():
            def run(x: Tensor, kernels: dict[str, Tensor]) -> Tensor:
                return checkpoint(self.block, x, kernels, use_reentrant=False)
        y = run(mixture, kernels)
        for _ in range(self.num_blocks - 1):
            y = run(self.concat_act(self.concat_conv(mixture + y)), kernels)
        masks = F.relu(self.mask_net(y))
        return masks.reshape(batch, self.n_src, self.n_filters, frames)

    def apply_masks(self, feats: Tensor, masks: Tensor) -> Tensor:
        """(B, n_filters, frames) x (B, n_src, n_filters, frames) -> masked features."""
        return masks * feats.unsqueeze(1)

    def forward_decoder(self, masked: Tensor, length: int) -> Tensor:
        """(B, n_src, n_filters, frames) -> (B, n_src, length) waveforms."""
        est = self.decoder(masked.flatten(1, 2))
        start = self.enc_kernel - self.enc_stride
        return est[..., start: start + length]

    def param_groups(self, lr: float, weight_decay: float = 0.0,
                     ssm_lr: float | None = None) -> list[dict]:
        """Optimizer parameter groups: SSM parameters without weight decay and with `ssm_lr`
        (see `s4m.optim.ssm_param_groups`), the rest with `lr` and `weight_decay`."""
        return ssm_param_groups(self, lr, weight_decay, ssm_lr)

    def serialize(self) -> dict:
        """asteroid's package with plain-str versions, so it loads with weights_only=True."""
        conf = super().serialize()
        versions = conf["infos"]["software_versions"]
        conf["infos"]["software_versions"] = {k: str(v) for k, v in versions.items()}
        return conf

    def get_model_args(self) -> dict:
        return dict(self._args)

    @classmethod
    def from_pretrained(cls, pretrained_model_conf_or_path: dict | str | Path, *args, **kwargs):
        """From `serialize()`'s dict or a file holding it (loaded with weights_only=True)."""
        conf = pretrained_model_conf_or_path
        if isinstance(conf, str | Path):
            conf = torch.load(conf, map_location="cpu", weights_only=True)
        return super().from_pretrained(conf, *args, **kwargs)
