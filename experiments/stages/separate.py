"""Separate your own recordings with a trained or published model.

`python -m experiments.stages.separate --model runs/s4m_tiny/model.pt IN [IN ...] --out DIR`
(installed as `s4m-separate`). IN: audio files or folders (searched recursively). Writes
DIR/<name>/s1.wav ... (see experiments.separation). `--backend onnx` runs the model under ONNX
Runtime on the CPU: an .onnx file of the export stage as it is, any other model exported first
(into a temporary folder, for inputs up to the window's length). Exit status: 0 when every file
was separated or skipped, 1 when any failed (one `error:` line each), 2 for a bad model or
setting.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from experiments.deploy.onnx import OnnxSeparator, export_onnx
from experiments.env import resolve_device
from experiments.registry import load_model
from experiments.separation import (
    DEFAULT_WINDOW_S,
    model_n_src,
    model_rate,
    separate_files,
    window_samples,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="s4m-separate", description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", help="audio files or folders")
    p.add_argument("--model", required=True, help="runs/<model>/model.pt, an asteroid model "
                   "file or a SpeechBrain sepformer folder")
    p.add_argument("--out", default="separated", help="output folder (default: %(default)s)")
    p.add_argument("--glob", help="pattern of files to take from folders (default: audio "
                   "suffixes)")
    p.add_argument("--window-s", type=float, default=DEFAULT_WINDOW_S, help="window length")
    p.add_argument("--hop-s", type=float, help="window hop (default: half the window)")
    p.add_argument("--channel", type=int, help="use this channel (from 0) instead of a downmix")
    p.add_argument("--keep-model-rate", action="store_true", help="write at the model's rate")
    p.add_argument("--float", action="store_true", help="write 32-bit float, not the input's "
                   "subtype")
    p.add_argument("--normalize", action="store_true", help="scale each output to the input's "
                   "peak")
    p.add_argument("--overwrite", action="store_true", help="redo files whose outputs exist")
    p.add_argument("--n-src", type=int, help="fail unless the model separates this many")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="torch (default): PyTorch on --device; onnx: ONNX Runtime on the CPU")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default); torch backend")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def load_separator(args: argparse.Namespace) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model `args` ask for, on its backend; ValueError naming the model or setting."""
    threads = args.threads or torch.get_num_threads()
    path = Path(args.model)
    if path.suffix == ".onnx":
        if args.backend != "onnx":
            raise ValueError(f"{path}: an ONNX file; pass --backend onnx")
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        model = OnnxSeparator(path, threads)
    else:
        if args.backend == "onnx" and args.device not in ("auto", "cpu"):
            raise ValueError(f"--device {args.device}: --backend onnx runs on the CPU")
        model = load_model(args.model).eval()
        if args.backend == "torch":
            return model.to(resolve_device(args.device, "--device"))
        with tempfile.TemporaryDirectory() as tmp:  # the session holds the graph in memory
            info = export_onnx(model, Path(tmp) / "model.onnx", max_seconds=args.window_s)
            if not info["exported"]:
                raise ValueError(f"{path}: does not export to ONNX ({info['blocker']})")
            model = OnnxSeparator(Path(tmp) / "model.onnx", threads)
    if args.window_s > model.max_seconds:
        raise ValueError(f"{path}: takes inputs up to {model.max_seconds:g} s, --window-s is "
                         f"{args.window_s:g}")
    return model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_separator(args)
        declared = model_n_src(model)
        if args.n_src is not None and declared not in (None, args.n_src):
            raise ValueError(f"{args.model}: the model separates {declared} sources, "
                             f"--n-src asks for {args.n_src}")
        window_samples(args.window_s, args.hop_s, model_rate(model))  # before any file
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = separate_files(
        model, args.inputs, args.out, glob=args.glob, overwrite=args.overwrite,
        float_out=args.float, progress=not args.quiet, window_s=args.window_s, hop_s=args.hop_s,
        channel=args.channel, keep_model_rate=args.keep_model_rate, normalize=args.normalize,
        n_src=args.n_src,
    )
    print(summary.line())
    return 1 if summary.count("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
