"""Library baselines (asteroid Conv-TasNet, DPRNN, SuDoRM-RF; SpeechBrain Sepformer).

Build them through `experiments.models.build_model`; this package holds the classes, their
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
from baselines.sepformer import SepformerNet

# registry name -> (class, published configuration); the class defaults fill in the rest.
BASELINES: dict[str, tuple[type[BaseModel], dict[str, Any]]] = {
    "convtasnet": (ConvTasNetModel, CONVTASNET_CONFIG),
    "dprnn": (DPRNNTasNetModel, DPRNN_CONFIG),
    "sudormrf": (SuDORMRFNetModel, SUDORMRF_CONFIG),
    "sepformer": (SepformerNet, {}),
}


def constructor_options(cls: type) -> set[str]:
    """Named constructor arguments a registry override may set (not n_src / sample_rate)."""
    params = inspect.signature(cls.__init__).parameters.values()
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named - {"self", "n_src", "sample_rate"}


def build_baseline(
    name: str, sample_rate: float = 8000, n_src: int = 2, **overrides: Any
) -> BaseModel:
    """A freshly initialised baseline with its published configuration updated by `overrides`."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; baselines: {', '.join(BASELINES)}")
    cls, config = BASELINES[name]
    unknown = sorted(set(overrides) - constructor_options(cls))
    if unknown:
        raise ValueError(
            f"unknown override(s) {unknown} for {name}; allowed: {sorted(constructor_options(cls))}"
        )
    return cls(n_src=n_src, sample_rate=sample_rate, **{**config, **overrides})


__all__ = [
    "BASELINES",
    "ConvTasNetModel",
    "DPRNNTasNetModel",
    "SepformerNet",
    "SuDORMRFNetModel",
    "build_baseline",
    "constructor_options",
    "load_asteroid_model",
    "load_speechbrain_sepformer",
]
