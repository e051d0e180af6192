"""Published figures (experiments/published.yaml): read with safe YAML and checked.

No torch import: the report stage reads these without loading any model library.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

PUBLISHED = Path(__file__).with_name("published.yaml")
# The convention of a MAC figure and the training conditions of a quality figure (null where the
# source does not say): figures counted or trained differently are not compared directly.
MAC_KEYS = ("value", "source", "sample_rate", "input_samples", "per_second", "counter")
RESULT_KEYS = ("si_sdri", "sdri", "source", "train_subset", "sample_rate", "augmentation")


def load_published(path: str | Path = PUBLISHED) -> dict[str, Any]:
    """published.yaml, checked: every figure has a value, a source listed under `sources` and
    its conventions (MACs: MAC_KEYS; results: RESULT_KEYS)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: published figures file not found")
    with path.open() as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not {"sources", "models"} <= set(data):
        raise ValueError(f"{path}: expected top-level `sources` and `models` mappings")
    sources = data["sources"]

    def check(figure: Any, where: str, keys: Iterable[str]) -> None:
        if not isinstance(figure, dict) or not set(keys) <= set(figure):
            raise ValueError(f"{path}: {where} needs keys {sorted(keys)}")
        if figure["source"] not in sources:
            raise ValueError(f"{path}: {where} cites unknown source {figure['source']!r}")

    for name, entry in data["models"].items():
        for key in ("params_m", "macs_ratio_to_sepformer"):
            if key in entry:
                check(entry[key], f"models.{name}.{key}", ("value", "source"))
        for i, macs in enumerate(entry.get("macs", [])):
            where = f"models.{name}.macs[{i}]"
            check(macs, where, MAC_KEYS)
            if not isinstance(macs["input_samples"], int) or macs["input_samples"] < 1:
                raise ValueError(f"{path}: {where}.input_samples must be a positive integer")
            if not isinstance(macs["per_second"], bool):
                raise ValueError(f"{path}: {where}.per_second must be true or false")
        for dataset, results in entry.get("results", {}).items():
            for i, result in enumerate(results):
                check(result, f"models.{name}.results.{dataset}[{i}]", RESULT_KEYS)
    if "reference_measurements" in data:
        check(data["reference_measurements"], "reference_measurements", ("source", "models"))
    return data


def figure(published: dict[str, Any], model: str, key: str) -> dict[str, Any]:
    """One model's figure (e.g. `params_m`), {} when the sources give none."""
    return published["models"].get(model, {}).get(key) or {}
