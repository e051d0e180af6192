"""SpeechBrain's Sepformer (Subakan et al. 2021) built from `speechbrain.lobes.models.dual_path`.

Defaults are the LibriMix/WSJ0Mix recipe hyperparameters (recipes/LibriMix/separation/hparams/
sepformer-libri2mix.yaml, identical to recipes/WSJ0Mix): 256 encoder bases of 16 samples (hop 8),
2 dual-path blocks of 8 intra + 8 inter pre-norm transformer layers (d_model 256, 8 heads,
d_ffn 1024, positional encodings, no dropout), chunks of 250; 25.68M params at 2 sources.
The model is wrapped as an asteroid `BaseModel` so it trains and serializes like the others;
it is always randomly initialised here (the recipe's default of fetching WSJ0-2mix weights is
deliberately not reproduced; see `baselines.pretrained` for loading published checkpoints).
Submodule names `encoder`, `masknet`, `decoder` match SpeechBrain's checkpoint files.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from asteroid.models.base_models import BaseModel
from speechbrain.lobes.models.dual_path import (
    Decoder,
    Dual_Path_Model,
    Encoder,
    SBTransformerBlock,
)

from baselines.asteroid_models import as_batch, covered_length


class SepformerNet(BaseModel):
    def __init__(
        self,
        n_src: int = 2,
        sample_rate: float = 8000,
        n_filters: int = 256,
        kernel_size: int = 16,
        d_model: int = 256,
        num_layers: int = 2,
        intra_layers: int = 8,
        inter_layers: int = 8,
        nhead: int = 8,
        d_ffn: int = 1024,
        dropout: float = 0.0,
        chunk_size: int = 250,
        use_positional_encoding: bool = True,
        norm_before: bool = True,
        norm: str = "ln",
        skip_around_intra: bool = True,
        linear_layer_after_inter_intra: bool = False,
    ):
        super().__init__(sample_rate=sample_rate, in_channels=1)
        if kernel_size < 2:
            raise ValueError(f"Sepformer kernel_size must be >= 2, got {kernel_size}")
        self._args = dict(
            n_src=n_src, sample_rate=sample_rate, n_filters=n_filters, kernel_size=kernel_size,
            d_model=d_model, num_layers=num_layers, intra_layers=intra_layers,
            inter_layers=inter_layers, nhead=nhead, d_ffn=d_ffn, dropout=dropout,
            chunk_size=chunk_size, use_positional_encoding=use_positional_encoding,
            norm_before=norm_before, norm=norm, skip_around_intra=skip_around_intra,
            linear_layer_after_inter_intra=linear_layer_after_inter_intra,
        )
        self.n_src = n_src
        self.kernel_size, self.stride = kernel_size, kernel_size // 2

        def transformer(layers: int) -> SBTransformerBlock:
            return SBTransformerBlock(
                num_layers=layers, d_model=d_model, nhead=nhead, d_ffn=d_ffn, dropout=dropout,
                use_positional_encoding=use_positional_encoding, norm_before=norm_before,
            )

        self.encoder = Encoder(kernel_size=kernel_size, out_channels=n_filters)
        self.masknet = Dual_Path_Model(
            in_channels=n_filters, out_channels=d_model, intra_model=transformer(intra_layers),
            inter_model=transformer(inter_layers), num_layers=num_layers, norm=norm,
            K=chunk_size, num_spks=n_src, skip_around_intra=skip_around_intra,
            linear_layer_after_inter_intra=linear_layer_after_inter_intra,
        )
        self.decoder = Decoder(
            in_channels=n_filters, out_channels=1, kernel_size=kernel_size, stride=self.stride,
            bias=False,
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x, was_1d = as_batch(wav)  # (B, T)
        batch, length = x.shape
        x = F.pad(x, (0, covered_length(length, self.kernel_size, self.stride) - length))
        feats = self.encoder(x)  # (B, N, L)
        masks = self.masknet(feats)  # (n_src, B, N, L)
        masked = (masks * feats).transpose(0, 1)  # (B, n_src, N, L)
        # SpeechBrain's Decoder squeezes every singleton dim; reshape restores (B, n_src, T').
        est = self.decoder(masked.reshape(batch * self.n_src, *masked.shape[2:]))
        est = est.reshape(batch, self.n_src, -1)[..., :length]
        return est[0] if was_1d else est

    def get_model_args(self) -> dict[str, Any]:
        return {**self._args, "sample_rate": self.sample_rate}
