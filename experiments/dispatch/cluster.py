"""Cluster settings (params.yaml's `cluster:` block, `-S key=value` overrides) and the submitit
executor of each stage kind."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import submitit

from experiments.config import ConfigError, apply_overrides, load_params, repo_defaults

EXECUTORS = ("slurm", "local", "debug")


def load_cluster(params: str | Path, overrides: list[str]) -> dict[str, Any]:
    """params' `cluster:` block over the repository params.yaml's (the known settings and their
    defaults; `stages.<kind>` overrides them for one stage kind), then `key=value` overrides
    (dotted keys inside the block, e.g. `partition=gpu`, `stages.train.timeout_min=2880`; YAML
    values)."""
    block = load_params(params).get("cluster") or {}
    if not isinstance(block, dict):
        raise ConfigError(f"{params}: `cluster` must be a mapping")
    defaults = repo_defaults("cluster")
    settings = apply_overrides(defaults | block,
                               [item.removeprefix("cluster.") for item in overrides], "-S",
                               new_keys=True)
    for key in settings:
        if key not in defaults:
            raise ConfigError(f"{params}: unknown setting cluster.{key} (known: "
                              f"{', '.join(sorted(defaults))})")
    kind_keys = set(defaults) - {"stages"}
    for kind, extra in settings["stages"].items():
        unknown = set(extra or {}) - kind_keys
        if unknown:
            raise ConfigError(f"{params}: unknown setting(s) cluster.stages.{kind}."
                              f"{', '.join(sorted(unknown))}")
    return settings


def kind_settings(settings: dict[str, Any], kind: str) -> dict[str, Any]:
    merged = {k: v for k, v in settings.items() if k != "stages"}
    return merged | (settings["stages"].get(kind) or {})


def make_executor(executor: str, folder: Path, settings: dict[str, Any],
                  dependency: str | None = None) -> submitit.Executor:
    """A submitit executor whose jobs run this interpreter (the project's environment); its
    logs go to `folder/<job id>/`."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    log_dir = folder / "%j"
    if executor == "debug":
        return submitit.DebugExecutor(log_dir)
    if executor == "local":
        ex = submitit.LocalExecutor(log_dir, max_num_timeout=settings["max_requeues"],
                                    python=sys.executable)
        ex.update_parameters(timeout_min=settings["timeout_min"],
                             tasks_per_node=settings["tasks_per_node"],
                             gpus_per_node=settings["gpus_per_task"])
        return ex
    ex = submitit.SlurmExecutor(log_dir, max_num_timeout=settings["max_requeues"],
                                python=sys.executable)
    params: dict[str, Any] = {
        "job_name": "s4m", "time": settings["timeout_min"],
        "cpus_per_task": settings["cpus_per_task"], "mem": f"{settings['mem_gb']}GB",
        "nodes": settings["nodes"], "ntasks_per_node": settings["tasks_per_node"],
        "array_parallelism": settings["array_parallelism"],
        "additional_parameters": dict(settings["sbatch"] or {}),
    }
    optional = {"partition": settings["partition"], "account": settings["account"],
                "gpus_per_task": settings["gpus_per_task"] or None, "dependency": dependency}
    ex.update_parameters(**params, **{k: v for k, v in optional.items() if v is not None})
    return ex


def sbatch_lines(ex: submitit.SlurmExecutor, tasks: int) -> list[str]:
    """The #SBATCH lines submitit writes for an array of `tasks` tasks."""
    # private: submitit has no public way to render a job's sbatch file without submitting it
    # (tests/test_cluster.py pins it)
    from submitit.slurm.slurm import _make_sbatch_string

    text = _make_sbatch_string(command="", folder=ex.folder, map_count=tasks, **ex.parameters)
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]
