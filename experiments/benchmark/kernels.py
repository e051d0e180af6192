"""Forward time of S4M configs and its split between SSM kernel generation and the rest: per
model, params, the median (min, max) forward time at batch 1, the median time of building every
S4 kernel once (what each forward does first) and the remainder."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from experiments.benchmark.speed import (
    DEVICE_SETTING,
    SpeedSettings,
    time_calls,
)
from experiments.benchmark.workers import load_factory
from experiments.env import resolve_device


def run_kernels_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The body of a worker process (`workers.run_in_subprocess`): the model must have S4M's
    `num_frames` and `block.kernel_ffts`."""
    settings = SpeedSettings(**spec["settings"])
    torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device, DEVICE_SETTING)
    torch.manual_seed(spec.get("seed", 0))
    model = load_factory(spec["factory"])(**spec["kwargs"]).to(device).eval()
    wav = torch.randn(1, round(settings.infer_seconds * spec["sample_rate"]), device=device)
    frames = model.num_frames(wav.shape[-1])
    with torch.inference_mode():
        fwd = time_calls(lambda: model(wav), settings.warmup, settings.repeats, device)
        kern = time_calls(lambda: model.block.kernel_ffts(frames), settings.warmup,
                          settings.repeats, device)
    total, kernel = statistics.median(fwd), statistics.median(kern)
    return {"model": spec["model"], "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "forward_s": total, "forward_min_s": min(fwd), "forward_max_s": max(fwd),
            "kernel_s": kernel, "rest_s": total - kernel, "frames": frames}


def format_kernels(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'model':<10} {'params_M':>8} {'forward_s':>10} {'min_s':>7} {'max_s':>7} "
             f"{'ssm_kernel_s':>12} {'kernel_%':>8} {'rest_s':>7}"]
    lines += [f"{r['model']:<10} {r['params_m']:>8.3f} {r['forward_s']:>10.3f} "
              f"{r['forward_min_s']:>7.3f} {r['forward_max_s']:>7.3f} {r['kernel_s']:>12.4f} "
              f"{100 * r['kernel_s'] / r['forward_s']:>8.1f} {r['rest_s']:>7.3f}" for r in rows]
    return "\n".join(lines)
