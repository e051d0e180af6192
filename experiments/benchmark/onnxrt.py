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
from experiments.deploy.onnx import export_onnx, parity_db, quantize_int8, separate, session

# infer_s_onnx / infer_s_onnx_int8: median times of the float32 and int8 graphs;
# onnx_vs_eager_sisdr_db: float32's output against eager PyTorch's; onnx_int8_vs_fp32_sisdr_db:
# int8's against float32's (same input); onnx_error: the export blocker, the stage goes on
ONNX_COLUMNS = ("infer_s_onnx", "infer_s_onnx_int8", "onnx_vs_eager_sisdr_db",
                "onnx_int8_vs_fp32_sisdr_db", "onnx_error")


def onnx_inference(model: nn.Module, wav: torch.Tensor, sample_rate: int, threads: int,
                   warmup: int, repeats: int) -> dict[str, Any]:
    """ONNX Runtime float32 and int8 inference of `model` on `wav` (B, T), on the CPU."""
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:  # sessions hold their graphs in memory
        fp32_path, int8_path = Path(tmp, "model.onnx"), Path(tmp, "model.int8.onnx")
        info = export_onnx(model.to(cpu).eval(), fp32_path, wav.shape[-1] / sample_rate)
        if not info["exported"]:
            return {"onnx_error": info["blocker"]}
        quantize_int8(fp32_path, int8_path)
        runs = {"onnx": session(fp32_path, threads), "onnx_int8": session(int8_path, threads)}
    wav = wav.to(cpu)
    out: dict[str, Any] = {}
    for name, sess in runs.items():
        times = time_calls(lambda sess=sess: separate(sess, wav), warmup, repeats, cpu)
        out[f"infer_s_{name}"] = statistics.median(times)
    with torch.inference_mode():
        eager = model(wav)
    fp32, int8 = (separate(sess, wav) for sess in runs.values())
    return {**out, "onnx_vs_eager_sisdr_db": parity_db(eager, fp32),
            "onnx_int8_vs_fp32_sisdr_db": parity_db(fp32, int8), "onnx_error": ""}
