"""Named S4M configurations and `build_s4m`."""

from __future__ import annotations

import inspect
from typing import Any

from .model import S4M

_BASE: dict[str, Any] = dict(
    enc_kernel_ms=4, bottleneck_channels=128, hidden_channels=512, num_blocks=16, num_scales=4,
    d_state=16, ssm="s4", ssm_init=None, bidirectional=True, checkpointing=False,
)

CONFIGS: dict[str, dict[str, Any]] = {
    # The released design at 4 ms / 8 kHz: S4 + FF on the coarsest (global) map only. ~1.83M.
    "s4m_tiny": {**_BASE, "s4_scales": [-1]},
    # Paper's 3.6M model (design unpublished); assumption: S4 layers at every scale. ~3.53M.
    "s4m": {**_BASE, "s4_scales": "all"},
    # TDANet (Li et al., ICLR 2023; the paper's Libri2Mix model, its public configs/tdanet.yml):
    # 5 scales, multi-head self-attention (8 heads) + conv feed-forward on the global map, the
    # global map added to each scale. ~2.32M (published 2.33M). Differences from the public code:
    # no dropout or drop-path (0.1 there), and S4M's input padding (frames a multiple of 16).
    "tdanet": {**_BASE, "num_scales": 5, "s4_scales": [-1], "global_layer": "attention",
               "feed_forward": "conv", "fusion": "add"},
}

_ALLOWED = set(inspect.signature(S4M.__init__).parameters) - {"self", "n_src", "sample_rate"}


def build_s4m(name: str, sample_rate: int = 8000, n_src: int = 2, **overrides: Any) -> S4M:
    """S4M from a named config; `overrides` replace constructor kwargs (e.g. num_scales,
    d_state, ssm, ssm_init, num_blocks, s4_scales, checkpointing)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown S4M config {name!r}; have {sorted(CONFIGS)}")
    unknown = sorted(set(overrides) - _ALLOWED)
    if unknown:
        raise ValueError(f"unknown S4M override(s) {unknown}; allowed: {sorted(_ALLOWED)}")
    return S4M(n_src=n_src, sample_rate=sample_rate, **{**CONFIGS[name], **overrides})
