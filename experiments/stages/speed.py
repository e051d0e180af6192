"""DVC stage `speed` and the benchmarking CLI: time and memory of registry models.

Every measurement runs in a fresh process, on `speed.threads` threads, warm-up calls then timed
repeats.

`python -m experiments.stages.speed [table] [--models NAME ...] [--out-dir reports]`
    the DVC stage: writes reports/speed.csv and reports/speed.json (with the machine, threads and
    commit it was measured with), prints S4M-tiny's goal ratios, and measures inference time and
    peak memory at each of `speed.lengths_s` (reports/speed_vs_length.csv; also under `lengths`
    in speed.json).
`python -m experiments.stages.speed ratio [--train] [--compile] [--models A B ...]`
    the models timed in turn in one process (inference, or with --train a training step;
    --compile: torch.compile'd copies beside them): medians, minima, the first model's ratio to
    the others.
`python -m experiments.stages.speed profile [--compile]`
    ratio, then torch.profiler's self CPU time per kind of op, the GEMMs' GMAC/s, one thread's
    stream bandwidth and the first model's ratio if only its GEMMs cost time.
`python -m experiments.stages.speed knockout [--ops N]`
    ratio, then the first model's inference timed with each of its N costliest aten ops made
    free: the ratio to the second model left without that op.
`python -m experiments.stages.speed kernels` (`make bench`)
    forward time per S4M config at batch 1 and its SSM-kernel-generation share.

Defaults are params.yaml's `speed` settings; --threads, --seconds, --warmup and --repeats
override them outside `table` (--repeats: the rounds in turn, `speed.ratio_repeats`; for
kernels the calls, `speed.repeats`). Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch

from experiments.atomic import write_table, write_text
from experiments.benchmark.goals import format_goals
from experiments.benchmark.kernels import format_kernels, run_kernels_worker
from experiments.benchmark.onnxrt import ONNX_COLUMNS
from experiments.benchmark.opcost import format_knockout, format_profile
from experiments.benchmark.speed import (
    BF16_COLUMNS,
    COLUMNS,
    COMPILED_COLUMNS,
    DEVICE_SETTING,
    LENGTH_COLUMNS,
    SpeedSettings,
    format_in_turn,
    length_table,
    run_in_turn_worker,
    speed_table,
)
from experiments.benchmark.workers import REGISTRY_FACTORY, run_in_subprocess
from experiments.config import load_profile, require
from experiments.env import environment, resolve_device
from experiments.published import load_published
from experiments.registry import REGISTRY, check_model_names

SHOWN = ("model", "device", "threads", "infer_s_median", "infer_s_min", "infer_s_max", "rtf",
         "train_step_s", "peak_mem_mb", "infer_peak_mem_mb")
COMMANDS = ("table", "ratio", "profile", "knockout", "kernels")


def table(args: argparse.Namespace, cfg: dict, settings: SpeedSettings, specs: list[dict],
          ) -> None:
    device = resolve_device(settings.device, DEVICE_SETTING)  # fail before starting any worker
    payload = speed_table(specs, settings.timeout_s, load_published())
    lengths = length_table(specs, settings.lengths_s, settings.length_timeout_s)
    payload = {"environment": environment(cfg["profile"], settings.threads, device),
               "settings": asdict(settings), **payload, "lengths": lengths}
    write_text(Path(args.out_dir, "speed_vs_length.csv"),
               pd.DataFrame(lengths, columns=list(LENGTH_COLUMNS)).to_csv(index=False))
    csv_path, json_path = write_table(payload, args.out_dir, "speed", COLUMNS)
    shown = [*SHOWN, *(COMPILED_COLUMNS if settings.compile else ()),
             *(BF16_COLUMNS if settings.runs_bf16(device) else ()),
             *(ONNX_COLUMNS if settings.runs_onnx(device) else ())]
    print(pd.DataFrame(payload["rows"])[shown].to_string(index=False, float_format="%.3f"))
    print(format_goals(payload["summary"]))
    print(pd.DataFrame(lengths).to_string(index=False, float_format="%.3f"))
    print(f"wrote {csv_path}, {json_path} and speed_vs_length.csv (timings on a shared machine "
          "are noisy)")


def in_turn(args: argparse.Namespace, settings: SpeedSettings, specs: list[dict]) -> None:
    train = args.command == "ratio" and args.train
    spec = {"model": " + ".join(s["model"] for s in specs), "kind": "train" if train else "infer",
            "pair": specs, "settings": asdict(settings), "seed": specs[0]["seed"],
            "also_compiled": getattr(args, "compile", False),
            "profile": args.command == "profile",
            "knockout": args.ops if args.command == "knockout" else 0}
    result = run_in_subprocess(spec, settings.timeout_s, run_in_turn_worker)
    print(format_in_turn(result, settings, specs[0]["sample_rate"]))
    medians = {name: statistics.median(t) for name, t in result["times"].items()}
    if "profile" in result:
        print(format_profile(result["profile"], medians))
    if "knockout" in result:
        first, second = (s["model"] for s in specs[:2])
        print(format_knockout(result["knockout"], medians[first], medians[second]))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "table")  # the DVC stage's command
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml")
    timing = argparse.ArgumentParser(add_help=False)
    timing.add_argument("--threads", type=int)
    timing.add_argument("--seconds", type=float, help="audio per call (with --train: per item)")
    timing.add_argument("--sample-rate", type=int)
    timing.add_argument("--warmup", type=int)
    timing.add_argument("--repeats", type=int)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("table", parents=[common], help="the DVC stage (default)")
    sub.add_argument("--out-dir", default="reports")
    sub.add_argument("--models", nargs="+", help="subset of params.yaml `models`")
    for name, text in (("ratio", "in turn in one process"),
                       ("profile", "ratio, then torch.profiler by op kind"),
                       ("knockout", "ratio, then the first model's costliest ops made free")):
        sub = commands.add_parser(name, parents=[common, timing], help=text)
        sub.add_argument("--models", nargs="+", default=["s4m_tiny", "sepformer"])
        if name == "ratio":
            sub.add_argument("--train", action="store_true", help="time training steps")
        if name != "knockout":
            sub.add_argument("--compile", action="store_true",
                             help="also time torch.compile'd copies")
        else:
            sub.add_argument("--ops", type=int, default=8, help="ops made free (default 8)")
    sub = commands.add_parser("kernels", parents=[common, timing],
                              help="S4M forward time and its SSM-kernel share")
    sub.add_argument("--models", nargs="+",
                     default=[name for name, entry in REGISTRY.items() if entry.cls == "S4M"])
    args = parser.parse_args(argv)

    cfg = load_profile(args.params)
    settings = SpeedSettings.from_config(cfg)
    sample_rate, seed = int(require(cfg, "data.sample_rate")), int(require(cfg, "seed"))
    names = args.models or list(require(cfg, "models"))
    check_model_names(names, "--models" if args.models else f"{args.params}: `models`")
    if args.command != "table":
        sample_rate = args.sample_rate or sample_rate
        changes = {"threads": args.threads, "warmup": args.warmup,
                   "infer_seconds": args.seconds,
                   "train_seconds": args.seconds if args.command == "ratio" else None,
                   "ratio_repeats" if args.command != "kernels" else "repeats": args.repeats}
        settings = replace(settings, **{k: v for k, v in changes.items() if v is not None})
        settings.validate()
    if args.command == "knockout" and len(names) < 2:
        parser.error("knockout compares the first model with the second")
    specs = [{"model": name, "factory": REGISTRY_FACTORY,
              "kwargs": {"name": name, "sample_rate": sample_rate},
              "sample_rate": sample_rate, "seed": seed, "settings": asdict(settings)}
             for name in names]
    if args.command == "table":
        table(args, cfg, settings, specs)
    elif args.command == "kernels":
        print(f"torch {torch.__version__}, {settings.threads} thread(s), "
              f"{settings.infer_seconds:g} s at {sample_rate} Hz, batch 1, median of "
              f"{settings.repeats} after {settings.warmup} warm-up, one process per model")
        print(format_kernels([run_in_subprocess(spec, settings.timeout_s, run_kernels_worker)
                              for spec in specs]))
    else:
        in_turn(args, settings, specs)


if __name__ == "__main__":
    main()
