"""Library baselines (asteroid Conv-TasNet, DPRNN, SuDoRM-RF; SpeechBrain Sepformer).

Build them through `experiments.registry.build_model`; this package holds the classes, their
published configurations and the loaders for published weights.
"""

from __future__ import annotations

import inspect
from typing import Any

from asteroid.models.base_models import BaseModel

from baselines.asteroid_models import (
    CONVTASNET_CONFIG,
    DPRNN_CONFIG,
    SUDORMRF_CONFIG,
    ConvTasNetModel,
    DPRNNTasNetModel,
    SuDORMRFNetModel,
)
from baselines.pretrained import load_asteroid_model, load_speechbrain_sepformer


def __getattr__(name: str) -> Any:
    """`SepformerNet` on first use: SpeechBrain (and torchaudio) load only when it is needed."""
    if name == "SepformerNet":
        from baselines.sepformer import SepformerNet

        return SepformerNet
    raise AttributeError(f"module 'baselines' has no attribute {name!r}")


def constructor_options(cls: type) -> set[str]:
    """Named constructor arguments a registry override may set (not n_src / sample_rate)."""
    params = inspect.signature(cls.__init__).parameters.values()
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named - {"self", "n_src", "sample_rate"}


def build_baseline(
    cls: type[BaseModel], config: dict[str, Any], sample_rate: float = 8000, n_src: int = 2,
    **overrides: Any,
) -> BaseModel:
    """A freshly initialised `cls` with its published `config` updated by `overrides`."""
    unknown = sorted(set(overrides) - constructor_options(cls))
    if unknown:
        raise ValueError(f"unknown override(s) {unknown} for {cls.__name__}; allowed: "
                         f"{sorted(constructor_options(cls))}")
    return cls(n_src=n_src, sample_rate=sample_rate, **{**config, **overrides})


__all__ = [
    "CONVTASNET_CONFIG",
    "DPRNN_CONFIG",
    "SUDORMRF_CONFIG",
    "ConvTasNetModel",
    "DPRNNTasNetModel",
    "SepformerNet",
    "SuDORMRFNetModel",
    "build_baseline",
    "constructor_options",
    "load_asteroid_model",
    "load_speechbrain_sepformer",
]
