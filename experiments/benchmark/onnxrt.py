"""ONNX Runtime inference timed beside eager PyTorch (the speed stage's `speed.onnx` columns).

The model is exported for inputs of the timed length (`experiments.deploy.onnx.export_onnx`),
run by ONNX Runtime's CPU provider with `speed.threads` intra-op threads in float32 and after
dynamic int8 quantization, and each output compared with the reference it stands in for.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments.benchmark.timing import time_calls
from experiments.deploy.onnx import export_with_int8, parity_db, separate

# infer_s_onnx / infer_s_onnx_int8: median times of the float32 and int8 graphs;
# onnx_vs_eager_sisdr_db: float32's output against eager PyTorch's; onnx_int8_vs_fp32_sisdr_db:
# int8's against float32's (same input); onnx_error: the export blocker, the stage goes on
ONNX_COLUMNS = ("infer_s_onnx", "infer_s_onnx_int8", "onnx_vs_eager_sisdr_db",
                "onnx_int8_vs_fp32_sisdr_db", "onnx_error")


def onnx_inference(model: nn.Module, wav: torch.Tensor, sample_rate: int, threads: int,
                   warmup: int, repeats: int) -> dict[str, Any]:
    """ONNX Runtime float32 and int8 inference of `model` on `wav` (B, T), both on the CPU."""
    with tempfile.TemporaryDirectory() as tmp:  # sessions hold their graphs in memory
        info, runs = export_with_int8(model, Path(tmp, "model.onnx"),
                                      wav.shape[-1] / sample_rate, threads)
    if not runs:
        return {"onnx_error": info["blocker"]}
    cpu = torch.device("cpu")
    out: dict[str, Any] = {}
    for name, sess in runs.items():
        times = time_calls(lambda sess=sess: separate(sess, wav), warmup, repeats, cpu)
        out["infer_s_onnx" if name == "fp32" else "infer_s_onnx_int8"] = statistics.median(times)
    with torch.inference_mode():
        eager = model(wav)
    fp32, int8 = separate(runs["fp32"], wav), separate(runs["int8"], wav)
    return {**out, "onnx_vs_eager_sisdr_db": parity_db(eager, fp32),
            "onnx_int8_vs_fp32_sisdr_db": parity_db(fp32, int8), "onnx_error": ""}
