"""Prepared datasets (Libri2Mix layout or WHAM!) as asteroid dataset objects."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from experiments.config import ConfigError

SPLITS = ("train", "dev", "test")
TASKS = {"sep_clean": "mix_clean", "sep_noisy": "mix_both"}
WHAM_SPLITS = {"train": "tr", "dev": "cv", "test": "tt"}


def local_dir(out_dir: str | Path) -> Path:
    """`<out_dir>_local`, beside the prepared data and outside its DVC output: what holds only
    on this machine (CSVs with absolute paths, build timings), so the output's hash does not."""
    out = Path(os.path.abspath(out_dir))
    return out.with_name(f"{out.name}_local")


def _setting(data_cfg: dict[str, Any], key: str) -> Any:
    if key not in data_cfg:
        raise ConfigError(f"params.yaml: setting `data.{key}` is missing")
    return data_cfg[key]


def make_dataset(data_cfg: dict[str, Any], split: str, segment: float | None,
                 return_id: bool = False):
    """asteroid's `LibriMix` (sources librimix / synthetic) or `WhamDataset` (source wham) for
    the prepared data of `split` in {"train", "dev", "test"}: items (mixture (T,), sources
    (2, T)) [+ ids], with `segment` seconds (None: whole utterances)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    task = _setting(data_cfg, "task")
    if task not in TASKS:
        raise ConfigError(f"params.yaml: data.task must be one of {list(TASKS)}, got {task!r}")
    source = _setting(data_cfg, "source")
    out_dir = Path(_setting(data_cfg, "out_dir"))
    sample_rate, mode = int(_setting(data_cfg, "sample_rate")), _setting(data_cfg, "mode")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # asteroid.data imports pkg_resources
        from asteroid.data import LibriMix, WhamDataset
    if source in ("librimix", "synthetic"):
        from experiments.data.librimix import absolute_csv_dir, csv_dir

        name = data_cfg.get("train_split", "train-100") if split == "train" else split
        folder = csv_dir(out_dir, sample_rate, mode, name)
        csv = folder / f"mixture_{name}_{TASKS[task]}.csv"
        if not csv.is_file():
            raise FileNotFoundError(f"{csv}: prepared {source} data for split {split!r}, task "
                                    f"{task!r} not found; run "
                                    "`python -m experiments.stages.prepare`")
        return LibriMix(str(absolute_csv_dir(out_dir, sample_rate, mode, name)), task=task,
                        sample_rate=sample_rate, n_src=2, segment=segment, return_id=return_id)
    if source == "wham":
        from experiments.data.wham import json_dir

        folder = json_dir(out_dir, sample_rate, mode, WHAM_SPLITS[split])
        if not (folder / f"{TASKS[task]}.json").is_file():
            raise FileNotFoundError(f"{folder}: prepared WHAM! data for split {split!r} not "
                                    f"found; run `python -m experiments.stages.prepare`")
        cls = _WhamWithIds() if return_id else WhamDataset
        ds = cls(str(folder), task, sample_rate=sample_rate, segment=segment)
        split_dir = folder.parent.parent / WHAM_SPLITS[split]
        ds.mix = [[str(split_dir / p), n] for p, n in ds.mix]
        ds.sources = [[[str(split_dir / p), n] for p, n in src] for src in ds.sources]
        return ds
    raise ConfigError(f"params.yaml: data.source must be synthetic, librimix or wham, "
                      f"got {source!r}")


def _WhamWithIds():  # noqa: N802 - returns a class; asteroid is imported lazily
    from asteroid.data import WhamDataset

    class WhamWithIds(WhamDataset):
        """WhamDataset whose items end with [utterance id], like LibriMix(return_id=True)."""

        def __getitem__(self, idx: int):
            mixture, sources = super().__getitem__(idx)
            return mixture, sources, [Path(self.mix[idx][0]).stem]

    return WhamWithIds
