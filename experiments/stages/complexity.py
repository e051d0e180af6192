"""DVC stage `complexity`: params and MACs per second of audio for every model in `models`.

`python -m experiments.stages.complexity [--models NAME ...] [--out-dir reports]`

Writes reports/complexity.csv and reports/complexity.json (rows, per-operator details, the
S4M-tiny / Sepformer ratio, each model's MACs at the published figures' input lengths
(`conventions`), settings and the environment block).
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from experiments.atomic import write_table
from experiments.complexity.macs import COLUMNS, complexity_table, published_conventions
from experiments.config import load_profile, require
from experiments.env import environment
from experiments.published import load_published
from experiments.registry import build_model, check_model_names

SHOWN = ("model", "params_m", "published_params_m", "macs_g_per_s_fvcore", "macs_g_per_s_ptflops",
         "tools_rel_diff", "naive_macs_g_per_s_fvcore", "naive_macs_g_per_s_ptflops",
         "published_macs_g_per_s", "macs_pct_of_sepformer")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-dir", default="reports")
    parser.add_argument("--models", nargs="+", help="registry names (default: params.yaml "
                        "`models`), scaled variants <name>@<scale> included")
    parser.add_argument("--profile", default=None,
                        help="settings profile (default: params.yaml's `profile`)")
    args = parser.parse_args(argv)
    cfg = load_profile(args.params, args.profile)
    seconds = float(require(cfg, "complexity.seconds"))
    sample_rate = int(require(cfg, "data.sample_rate"))
    threads, seed = int(require(cfg, "threads")), int(require(cfg, "seed"))
    names = args.models or list(require(cfg, "models"))
    check_model_names(names, f"{args.params}: `models`")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    published = load_published()
    payload = complexity_table(
        names, lambda name: build_model(name, sample_rate=sample_rate), seconds, sample_rate,
        published, seed, workers=threads,
        conventions=(published_conventions(published)
                     if require(cfg, "complexity.published_conventions") else ()),
    )
    payload = {"environment": environment(cfg["profile"], threads),
               "settings": {"seconds": seconds, "sample_rate": sample_rate, "seed": seed},
               "sources": published["sources"], **payload}
    csv_path, json_path = write_table(payload, args.out_dir, "complexity", COLUMNS)
    print(pd.DataFrame(payload["rows"])[list(SHOWN)].to_string(index=False, float_format="%.3f"))
    ratio = payload["summary"].get("s4m_tiny_over_sepformer_macs")
    if ratio:
        pct = {k: "-" if v is None else f"{100 * v:.1f}%" for k, v in ratio.items()
               if not k.endswith("source")}
        print(f"S4M-tiny / Sepformer MACs: fvcore {pct['fvcore']}, ptflops {pct['ptflops']} "
              f"(naive fvcore {pct['naive_fvcore']}); paper {pct['paper']}, released code "
              f"measured {pct['released_code_measured']}")
    print(f"wrote {csv_path} and {json_path}")


if __name__ == "__main__":
    main()
