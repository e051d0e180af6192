"""ONNX export of registry models, ONNX Runtime sessions, parity against eager and int8.

Export uses torch's dynamo exporter (opset OPSET) with a dynamic batch and a dynamic length up
to `max_seconds`; a model that does not export gets the exporter's innermost error as its
blocker instead of a file. int8 is ONNX Runtime's dynamic quantization (weights int8, activations
quantized per call), which needs no calibration data.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.atomic import atomic_path
from experiments.evaluation.metrics import si_sdr
from experiments.registry import export_ready, frame_for_export

OPSET = 18
MAX_BATCH = 64
# A runtime's float32 output counts as the model's own at this SI-SDR against eager PyTorch's
PARITY_DB = 60.0
# int8 keeps a model's quality when its SI-SDRi on test mixtures is within this of float32's
INT8_SISDRI_TOLERANCE_DB = 0.2


def blocker(err: BaseException) -> str:
    """The innermost cause of an export failure, one line: what stops the model exporting."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


def export_onnx(model: torch.nn.Module, path: Path, max_seconds: float,
                example_seconds: float = 1.0) -> dict[str, Any]:
    """Writes `model` to `path` as ONNX and checks it; returns {exported, file_mb, export_s} or
    {exported: False, blocker}. The graph takes (batch, samples) float32, batch <= MAX_BATCH,
    up to `max_seconds` of audio; S4M-family graphs take the framed waveform (`separate` frames
    it from the framing in the file's metadata)."""
    import onnx

    sample_rate = model.sample_rate
    ready, framing = export_ready(model, max_seconds)
    example = torch.randn(2, math.ceil(min(example_seconds, max_seconds) * sample_rate))  # 2: a
    # size of 1 would be fixed
    longest = math.ceil(max_seconds * sample_rate)
    if framing:
        example, _ = frame_for_export(example, framing)
        hop = framing["stride"] * framing["frame_multiple"]
        units = torch.export.Dim("units", min=1, max=longest // hop + 2)
        samples = hop * units + (framing["kernel"] - framing["stride"])
    else:
        samples = torch.export.Dim("samples", min=math.ceil(0.1 * sample_rate), max=longest)
    dims = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH), 1: samples},)
    started = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.onnx.export(ready, (example,), dynamo=True, dynamic_shapes=dims,
                                        opset_version=OPSET, verbose=False)
        graph = program.model_proto
        shape = graph.graph.input[0].type.tensor_type.shape.dim
        fixed = [f"{name} {d.dim_value}" for name, d in zip(("batch", "length"), shape,
                                                           strict=True) if not d.dim_param]
        if fixed:  # the exporter fell back to the example's sizes
            return {"exported": False,
                    "blocker": f"exported with fixed input sizes ({', '.join(fixed)}): the "
                               "model's code computes them as Python numbers"}
        meta = {"sample_rate": sample_rate, "max_seconds": max_seconds, **(framing or {})}
        onnx.helper.set_model_props(graph, {k: str(v) for k, v in meta.items()})
        with atomic_path(path) as tmp:
            onnx.save(graph, str(tmp))
            onnx.checker.check_model(str(tmp))
    except Exception as err:  # any exporter failure is the model's blocker, reported
        return {"exported": False, "blocker": blocker(err)}
    return {"exported": True, "file_mb": path.stat().st_size / 2**20,
            "export_s": time.perf_counter() - started}


def session(path: Path, threads: int = 1):
    """An ONNX Runtime CPU session with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def separate(sess, wav: torch.Tensor) -> torch.Tensor:
    """(B, T) float waveform -> (B, n_src, T) estimates through an ONNX Runtime session of an
    `export_onnx` file (framed first where its metadata says so)."""
    meta = sess.get_modelmeta().custom_metadata_map
    length, start = wav.shape[-1], 0
    if "frame_multiple" in meta:
        framing = {k: int(meta[k]) for k in ("kernel", "stride", "frame_multiple")}
        wav, start = frame_for_export(wav, framing)
    feed = {sess.get_inputs()[0].name: wav.detach().float().numpy()}
    return torch.from_numpy(np.asarray(sess.run(None, feed)[0]))[..., start:start + length]


class OnnxSeparator:
    """An `export_onnx` file as a separation model for `experiments.separation`: called on (B, T)
    float waveforms at `sample_rate` Hz, up to `max_seconds` long, returns (B, n_src, T) through
    ONNX Runtime on the CPU."""

    def __init__(self, path: str | Path, threads: int = 1):
        try:
            self.session = session(Path(path), threads)
        except Exception as err:  # ONNX Runtime's own exception types
            raise ValueError(f"{path}: not loadable by ONNX Runtime ({blocker(err)})") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        if "sample_rate" not in meta or "max_seconds" not in meta:
            raise ValueError(f"{path}: not an export_onnx file (no sample_rate and max_seconds "
                             "in its metadata)")
        self.sample_rate = int(float(meta["sample_rate"]))
        self.max_seconds = float(meta["max_seconds"])
        n_src = self.session.get_outputs()[0].shape[1]  # (batch, n_src, samples)
        self.n_src = n_src if isinstance(n_src, int) else None

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        return separate(self.session, wav)


def parity_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """The lowest SI-SDR (dB) of `estimate`'s sources against `reference`'s (B, n_src, T),
    without zero-mean: how closely a runtime reproduces eager PyTorch."""
    scores = si_sdr(estimate.double(), reference.double(), zero_mean=False)
    return float(scores.min())


def export_with_int8(model: torch.nn.Module, path: Path, max_seconds: float,
                     threads: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """`export_onnx` to `path` and its dynamic int8 copy beside it (`<stem>.int8.onnx`):
    (export info with `int8_file_mb`, {"fp32": session, "int8": session}); no sessions when
    the model does not export."""
    info = export_onnx(model, path, max_seconds)
    if not info["exported"]:
        return info, {}
    int8_path = path.with_suffix(".int8.onnx")
    quantize_int8(path, int8_path)
    info["int8_file_mb"] = int8_path.stat().st_size / 2**20
    return info, {"fp32": session(path, threads), "int8": session(int8_path, threads)}


def grouped_convs(path: Path) -> list[str]:
    """The names of `path`'s grouped (e.g. depthwise) Conv nodes."""
    import onnx

    return [node.name for node in onnx.load(str(path), load_external_data=False).graph.node
            if node.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in node.attribute)]


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime dynamic quantization of `source` (int8 weights) to `target`. Grouped
    convolutions stay float32: ONNX Runtime runs them as ConvInteger far slower than in float
    (S4M-tiny at 4 s, one thread: 8.96 s with them quantized, 5.18 s without, float32 5.01 s)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(target) as tmp:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8,
                         nodes_to_exclude=grouped_convs(source))
