"""The environment block every report carries (commit, versions, device, threads, profile, date)
and what the CPU computes natively."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from typing import Any

from experiments.config import ConfigError

PACKAGES = ("torch", "asteroid", "speechbrain", "pytorch-lightning", "fvcore", "ptflops", "dvc")


# What `dvc repro` itself rewrites: a run from a clean checkout is not "dirty" because of them.
PIPELINE_OUTPUTS = ("dvc.lock", "reports")


def git_commit() -> str:
    """HEAD's short hash, with `+dirty` when tracked files other than the pipeline's outputs
    differ from it; `unknown` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
             *(f":(exclude){path}" for path in PIPELINE_OUTPUTS)],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def resolve_device(name: str, setting: str = "device") -> Any:
    """The torch device `name` names: "auto" is CUDA when available, else the CPU; a named
    device must exist. A clear ConfigError names `setting` (e.g. "params.yaml: `speed.device`"
    or "--device") otherwise. The one device resolver of the project."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"{setting}={name!r}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting}={name!r}: no CUDA device is available to this torch")
    return device


def device_name(device: Any = "cpu") -> str:
    """A CUDA device's name (torch is imported only then) or the CPU model and core count."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu: {_cpu_model()} ({os.cpu_count()} cores)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def environment(profile: str, threads: int, device: Any = "cpu") -> dict[str, str]:
    return {
        "commit": git_commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": profile,
        "device": device_name(device),
        "threads": str(threads),
        **package_versions(),
    }


def environment_markdown(env: dict[str, str]) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in env.items())
    return f"| environment | |\n|---|---|\n{rows}\n"


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX flags); elsewhere bf16
    autocast is emulated: the same numbers, many times slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def runs_bf16(value: bool | str, setting: str, device_type: str = "cpu") -> bool:
    """Whether a bf16 check runs, from its setting: true, false, or auto (on CUDA and on CPUs
    that compute bf16 natively; elsewhere emulated bf16 costs minutes per model)."""
    if value == "auto":
        return device_type == "cuda" or cpu_has_bf16()
    if not isinstance(value, bool):
        raise ConfigError(f"params.yaml: `{setting}` must be true, false or auto, got {value!r}")
    return value
