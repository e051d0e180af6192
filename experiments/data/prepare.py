"""Builds the dataset that params.yaml's active profile names.

Reads `seed` and `data.*` (source, out_dir, sample_rate, mode, types, num_workers and the
source's own block). Writes the dataset under `data.out_dir`, the same bytes on every machine
(a DVC output), and what holds only on this machine under `local_dir(out_dir)`: the mixture
CSVs with absolute paths that asteroid's LibriMix opens, and the build time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from experiments.atomic import write_text
from experiments.config import ConfigError, require
from experiments.data import local_dir
from experiments.data.audio import resolve_workers

DEFAULT_TYPES = ("mix_clean", "mix_both")


def prepare(cfg: dict[str, Any], progress: bool = True) -> Path:
    """Builds the data of `cfg` (a `load_profile()` result); returns the prepared dataset folder."""
    data = require(cfg, "data")
    seed = int(require(cfg, "seed"))
    source = require(cfg, "data.source")
    out_dir = Path(require(cfg, "data.out_dir"))
    sample_rate, mode = int(require(cfg, "data.sample_rate")), require(cfg, "data.mode")
    types = tuple(data.get("types") or DEFAULT_TYPES)
    workers = resolve_workers(data.get("num_workers"))
    start = time.perf_counter()
    if source == "synthetic":
        from experiments.data.synthetic import build_synthetic_dataset

        syn = require(cfg, "data.synthetic")
        counts = {k: int(require(cfg, f"data.synthetic.{k}"))
                  for k in ("n_train", "n_dev", "n_test", "n_speakers")}
        speech = {}
        if syn.get("speech_seconds") is not None:
            seconds = syn["speech_seconds"]
            if not (isinstance(seconds, list) and len(seconds) == 2):
                raise ConfigError("params.yaml: data.synthetic.speech_seconds must be a list "
                                  f"[lo, hi] of seconds, got {seconds!r}")
            speech["speech_seconds"] = tuple(seconds)
        built = build_synthetic_dataset(out_dir, **counts, sample_rate=sample_rate, mode=mode,
                                        seed=seed, types=types, workers=workers,
                                        keep_corpora=bool(syn.get("keep_corpora", False)),
                                        progress=progress, **speech)
    elif source == "librimix":
        from experiments.data.librimix import build_librimix

        splits = tuple(data.get("splits") or ("train-100", "dev", "test"))
        n_mix = data.get("n_mixtures") or {}
        if not isinstance(n_mix, dict):
            raise ConfigError("params.yaml: data.n_mixtures must map split names to counts")
        built = build_librimix(require(cfg, "data.librispeech_root"),
                               require(cfg, "data.wham_noise_root"), out_dir, splits,
                               sample_rate, mode, types, data.get("metadata_dir"), n_mix, seed,
                               workers, progress)
    elif source == "wham":
        from experiments.data.wham import build_wham

        built = build_wham(require(cfg, "data.wsj0_2mix_root"),
                           require(cfg, "data.wham_noise_root"), out_dir, sample_rate, mode,
                           workers=workers, progress=progress)
    else:
        raise ConfigError(f"params.yaml: data.source must be synthetic, librimix or wham, "
                          f"got {source!r}")
    if source != "wham":
        from experiments.data.librimix import absolute_csv_dir

        for split_csvs in sorted(p for p in (built / "metadata").iterdir() if p.is_dir()):
            absolute_csv_dir(out_dir, sample_rate, mode, split_csvs.name)
    seconds = time.perf_counter() - start
    summary_path = out_dir / "prepare_summary.json"
    files = [p for p in out_dir.rglob("*") if p.is_file() and p != summary_path]
    summary = {"source": source, "profile": cfg.get("profile"), "seed": seed,
               "dataset": built.relative_to(out_dir).as_posix(), "files": len(files),
               "bytes": sum(p.stat().st_size for p in files)}
    write_text(summary_path, json.dumps(summary, indent=1) + "\n")
    local = local_dir(out_dir)
    metrics = {"build_seconds": round(seconds, 1), "workers": workers}
    write_text(local / "prepare_metrics.json", json.dumps(metrics, indent=1) + "\n")
    print(f"prepared {source} data in {built}: {summary['files']} files, "
          f"{summary['bytes'] / 2**20:.0f} MiB, {seconds:.1f} s on {workers} workers")
    if source != "wham":
        print(f"asteroid's LibriMix(csv_dir=...) opens {local}/{built.relative_to(out_dir)}"
              f"/metadata/<split> from any directory")
    return built
