"""Reads params.yaml (safe YAML) and resolves the active profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A setting in params.yaml is missing or invalid; the message names it."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    with path.open() as f:
        params = yaml.safe_load(f)
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


def load_profile(path: str | Path = DEFAULT_PARAMS, profile: str | None = None) -> dict[str, Any]:
    """Top-level settings deep-merged with the active profile's overrides (profile keys win).

    The result has `profile` (its name), `seed`, `threads`, `models`, `ablation` and the
    profile's sections (`data`, `train`, `evaluate`, ...).
    """
    params = load_params(path)
    name = profile or params.get("profile")
    profiles = params.get("profiles") or {}
    if name not in profiles:
        raise ConfigError(
            f"{path}: profile {name!r} is not defined under `profiles` (have: {sorted(profiles)})"
        )
    defaults = {k: v for k, v in params.items() if k != "profiles"}
    merged = OmegaConf.merge(OmegaConf.create(defaults), OmegaConf.create(profiles[name] or {}))
    cfg = OmegaConf.to_container(merged)  # mappings merge key by key, lists are replaced
    cfg["profile"] = name
    return cfg


def require(cfg: dict[str, Any], dotted: str) -> Any:
    """cfg["a"]["b"] for "a.b", or a ConfigError naming the missing setting."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(
                f"params.yaml: setting `{dotted}` is missing (profile {cfg.get('profile')!r})"
            )
        node = node[part]
    return node
