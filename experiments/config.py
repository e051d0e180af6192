"""Reads params.yaml (safe YAML) and resolves the active profile."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

DEFAULT_PARAMS = Path("params.yaml")
REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


class ConfigError(ValueError):
    """A setting in params.yaml is missing or invalid; the message names it."""


class _Loader(yaml.SafeLoader):
    """Safe YAML that reads exponent floats without a dot (`3e-3`) as floats, as YAML 1.2, DVC
    and Python do; YAML 1.1 (PyYAML) reads them as strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."))


def read_yaml(text: Any) -> Any:
    """YAML text or stream -> Python values (safe; `_Loader`'s floats)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    with path.open() as f:
        params = read_yaml(f)
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


def repo_defaults(section: str) -> Any:
    """The top-level `section` of the repository's params.yaml (the default profile's values):
    the fallback of code called without a params file."""
    params = load_params(REPO_PARAMS)
    if section not in params:
        raise ConfigError(f"{REPO_PARAMS}: top-level section `{section}` is missing")
    return params[section]


def parse_override(item: str, flag: str) -> tuple[str, Any]:
    """`key=value` (given as a `flag` argument) -> (key, value read as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{flag} {item!r}: expected key=value")
    return key, read_yaml(raw)


def apply_overrides(cfg: dict[str, Any], items: Iterable[str], flag: str, *,
                    new_keys: bool = False) -> dict[str, Any]:
    """A copy of cfg with each `a.b=value` of items set. A setting cfg lacks is a ConfigError
    naming it, unless new_keys: then it is added (and the mappings on its way)."""
    cfg = copy.deepcopy(cfg)
    for item in items:
        key, value = parse_override(item, flag)
        *parents, leaf = key.split(".")
        node: Any = cfg
        for depth, part in enumerate(parents, 1):
            if new_keys:
                node.setdefault(part, {})
            node = node.get(part)
            if not isinstance(node, dict):
                if not new_keys:
                    break
                raise ConfigError(f"{flag} {item!r}: {'.'.join(parents[:depth])} is not a mapping")
        if not isinstance(node, dict) or not (new_keys or leaf in node):
            raise ConfigError(f"{flag} {key}: no such setting in params.yaml")
        node[leaf] = value
    return cfg
