"""Published figures (experiments/published.yaml): read with safe YAML and checked.

No torch import: the report stage reads these without loading any model library.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

PUBLISHED = Path(__file__).with_name("published.yaml")


def load_published(path: str | Path = PUBLISHED) -> dict[str, Any]:
    """published.yaml, checked: every figure has a value and a source listed under `sources`."""
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
        for key in ("params_m", "macs_g_per_s", "macs_ratio_to_sepformer"):
            if key in entry:
                check(entry[key], f"models.{name}.{key}", ("value", "source"))
        for dataset, results in entry.get("results", {}).items():
            for i, result in enumerate(results):
                where = f"models.{name}.results.{dataset}[{i}]"
                check(result, where, ("si_sdri", "sdri", "source"))
    if "reference_measurements" in data:
        check(data["reference_measurements"], "reference_measurements", ("source", "models"))
    return data


def figure(published: dict[str, Any], model: str, key: str) -> dict[str, Any]:
    """One model's figure (e.g. `params_m`), {} when the sources give none."""
    return published["models"].get(model, {}).get(key) or {}
