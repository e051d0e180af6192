"""DVC stage `speed`: inference and training-step time and peak memory of every model in
`models`, each in a process of its own.

`python -m experiments.stages.speed [--models NAME ...] [--out-dir reports]`

Writes reports/speed.csv and reports/speed.json (with the machine, threads and commit it was
measured with), prints S4M-tiny's goal ratios, and measures inference time and peak memory at
each of `speed.lengths_s` (reports/speed_vs_length.csv; also under `lengths` in speed.json).
Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from experiments.atomic import write_table, write_text
from experiments.benchmark.speed import (
    BF16_COLUMNS,
    COLUMNS,
    COMPILED_COLUMNS,
    DEVICE_SETTING,
    LENGTH_COLUMNS,
    REGISTRY_FACTORY,
    SpeedSettings,
    format_goals,
    length_table,
    speed_table,
)
from experiments.config import load_profile, require
from experiments.env import environment, resolve_device
from experiments.published import load_published
from experiments.registry import check_model_names

SHOWN = ("model", "device", "threads", "infer_s_median", "infer_s_min", "infer_s_max", "rtf",
         "train_step_s", "peak_mem_mb", "infer_peak_mem_mb")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-dir", default="reports")
    parser.add_argument("--models", nargs="+", help="subset of params.yaml `models`")
    args = parser.parse_args(argv)
    cfg = load_profile(args.params)
    settings = SpeedSettings.from_config(cfg)
    sample_rate, seed = int(require(cfg, "data.sample_rate")), int(require(cfg, "seed"))
    names = args.models or list(require(cfg, "models"))
    check_model_names(names, f"{args.params}: `models`")
    device = resolve_device(settings.device, DEVICE_SETTING)  # fail before starting any worker
    specs = [{"model": name, "factory": REGISTRY_FACTORY,
              "kwargs": {"name": name, "sample_rate": sample_rate},
              "sample_rate": sample_rate, "seed": seed, "settings": asdict(settings)}
             for name in names]
    payload = speed_table(specs, settings.timeout_s, load_published())
    lengths = length_table(specs, settings.lengths_s, settings.length_timeout_s)
    payload = {"environment": environment(cfg["profile"], settings.threads, device),
               "settings": asdict(settings), **payload, "lengths": lengths}
    write_text(Path(args.out_dir, "speed_vs_length.csv"),
               pd.DataFrame(lengths, columns=list(LENGTH_COLUMNS)).to_csv(index=False))
    csv_path, json_path = write_table(payload, args.out_dir, "speed", COLUMNS)
    shown = [*SHOWN, *(COMPILED_COLUMNS if settings.compile else ()),
             *(BF16_COLUMNS if settings.runs_bf16(device) else ())]
    print(pd.DataFrame(payload["rows"])[shown].to_string(index=False, float_format="%.3f"))
    print(format_goals(payload["summary"]))
    print(pd.DataFrame(lengths).to_string(index=False, float_format="%.3f"))
    print(f"wrote {csv_path}, {json_path} and speed_vs_length.csv (timings on a shared machine "
          "are noisy)")


if __name__ == "__main__":
    main()
