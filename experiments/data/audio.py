"""Audio I/O with input checks, atomic writes, and a process pool with a progress bar."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from scipy.signal import firwin, resample_poly
from tqdm import tqdm

from experiments.atomic import atomic_path


def check_audio(path: str | Path, sample_rate: int, channels: Sequence[int] = (1,)) -> int:
    """Frames of `path` after checking it exists and has the expected rate and channel count."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: audio file not found")
    info = sf.info(str(path))
    if info.samplerate != sample_rate:
        raise ValueError(f"{path}: sample rate {info.samplerate} Hz, expected {sample_rate} Hz")
    if info.channels not in channels:
        expected = " or ".join(map(str, channels))
        raise ValueError(f"{path}: {info.channels} channels, expected {expected}")
    return info.frames


def read_audio(
    path: str | Path,
    sample_rate: int,
    channels: Sequence[int] = (1,),
    dtype: str = "float32",
    stop: int | None = None,
) -> np.ndarray:
    """Samples of `path` (first channel only), checking rate and channel count first."""
    check_audio(path, sample_rate, channels)
    data, _ = sf.read(str(path), dtype=dtype, stop=stop)
    return data[:, 0] if data.ndim > 1 else data



def write_audio(
    path: str | Path, data: np.ndarray, sample_rate: int, subtype: str | None = None
) -> None:
    """Writes under a temporary name, then renames: an interrupted run leaves no truncated file."""
    fmt = Path(path).suffix.lstrip(".").upper()
    with atomic_path(path) as tmp:
        sf.write(str(tmp), data, sample_rate, subtype=subtype, format=fmt)


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def resolve_workers(workers: int | None) -> int:
    return max(1, workers if workers else (os.cpu_count() or 1))


def parallel_map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    workers: int | None = None,
    desc: str = "",
    fresh_process: bool = False,
    progress: bool = True,
) -> list[Any]:
    """[fn(x) for x in items] over forked worker processes, in order, with a progress bar.

    fresh_process=True runs every item in a newly forked process: eSpeak NG keeps synthesis
    state across calls within a process, so only a fresh process per item gives output that is
    independent of how items were scheduled.
    """
    items = list(items)
    workers = min(resolve_workers(workers), max(1, len(items)))
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
    try:
        if workers == 1 and not fresh_process:
            out = []
            for x in items:
                out.append(fn(x))
                bar.update()
            return out
        ctx = mp.get_context("fork")
        with ctx.Pool(workers, maxtasksperchild=1 if fresh_process else None) as pool:
            chunk = 1 if fresh_process else max(1, min(16, len(items) // (workers * 8)))
            out = []
            for res in pool.imap(fn, items, chunksize=chunk):
                out.append(res)
                bar.update()
            return out
    finally:
        bar.close()


@cache
def _lowpass(up: int, down: int) -> np.ndarray:
    # The filter scipy's resample_poly designs by default (Kaiser, beta 5), built once per ratio.
    max_rate = max(up, down)
    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """`x` from `from_rate` to `to_rate` along its last axis: `scipy.signal.resample_poly` with
    scipy's default filter (Kaiser-windowed FIR), built once per ratio and in x's precision;
    ceil(T * to_rate / from_rate) samples. The same rate gives a copy of `x`. The one resampler
    of the project: data preparation and the separation of users' files both use it."""
    g = math.gcd(int(from_rate), int(to_rate))
    up, down = int(to_rate) // g, int(from_rate) // g
    if up == down == 1:
        return np.array(x, copy=True)
    return resample_poly(x, up, down, axis=-1, window=_lowpass(up, down).astype(x.dtype))
