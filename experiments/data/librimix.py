"""Libri2Mix from a LibriSpeech tree and a WHAM! noise tree, following the LibriMix recipe.

Metadata (pairs of utterances, noise, gains) either comes from the official
`libri2mix_{subset}.csv` files or is generated with the recipe's algorithm
(`experiments.data.librimix_metadata`); mixing, here, then applies the gains at 16 kHz,
resamples with `resample_poly`, fits lengths (min/max) and sums.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from experiments.atomic import write_text
from experiments.config import ConfigError
from experiments.data.audio import (
    parallel_map,
    read_audio,
    resample,
    write_audio,
    write_csv,
)
from experiments.data.librimix_metadata import (
    MD_COLUMNS,
    MIN_SECONDS,
    RATE,
    SUBSETS,
    generate_metadata,
    require_dir,
)

MIX_TYPES = ("mix_clean", "mix_both", "mix_single")


def mode_dir(out_dir: str | Path, sample_rate: int, mode: str) -> Path:
    """`<out_dir>/Libri2Mix/wav8k/min`, the published layout."""
    if sample_rate not in (8000, 16000):
        raise ConfigError(f"params.yaml: data.sample_rate must be 8000 or 16000, got {sample_rate}")
    if mode not in ("min", "max"):
        raise ConfigError(f"params.yaml: data.mode must be 'min' or 'max', got {mode!r}")
    return Path(out_dir) / "Libri2Mix" / f"wav{sample_rate // 1000}k" / mode


def csv_dir(out_dir: str | Path, sample_rate: int, mode: str, split: str) -> Path:
    """One folder per split holding only its mixture CSVs, as asteroid's LibriMix expects."""
    return mode_dir(out_dir, sample_rate, mode) / "metadata" / split


def absolute_csv_dir(out_dir: str | Path, sample_rate: int, mode: str, split: str) -> Path:
    """The split's mixture CSVs with absolute paths, as official LibriMix writes them, so that
    asteroid's `LibriMix(csv_dir=...)` opens them from any working directory: the folder
    `csv_dir(local_dir(out_dir), ...)`, (re)written from the relative CSVs in `out_dir` when
    missing or when `out_dir` has moved."""
    from experiments.data import local_dir

    src = csv_dir(out_dir, sample_rate, mode, split)
    dst = csv_dir(local_dir(out_dir), sample_rate, mode, split)
    split_dir = Path(os.path.abspath(mode_dir(out_dir, sample_rate, mode) / split))
    names = set()
    for path in sorted(src.glob("mixture_*.csv")):
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        for col in [c for c in df.columns if c.endswith("_path")]:
            df[col] = [str(split_dir / p) for p in df[col]]
        text, target = df.to_csv(index=False), dst / path.name
        if not target.is_file() or target.read_text() != text:
            write_text(target, text)
        names.add(path.name)
    for stale in dst.glob("mixture_*.csv"):
        if stale.name not in names:
            stale.unlink()
    return dst


# ---------------------------------------------------------------- mixing

def extend_noise(noise: np.ndarray, length: int) -> np.ndarray:
    """Loops `noise` to `length` samples with 0.5 s Hann cross-fades (the LibriMix recipe)."""
    window = np.hanning(RATE + 1)
    fade_in, fade_out = window[: len(window) // 2 + 1], window[len(window) // 2 :: -1]
    n = len(fade_out)
    if len(noise) < n:
        raise ValueError(f"noise of {len(noise)} samples is too short to cross-fade ({n} needed)")
    out = noise
    while len(out) < length:
        out = np.concatenate((out[:-n], out[-n:] * fade_out + noise[:n] * fade_in, noise[n:]))
    return out[:length]


def mix_sources(
    speech: Sequence[np.ndarray], speech_gains: Sequence[float], noise: np.ndarray,
    noise_gain: float, sample_rate: int, mode: str,
) -> dict[str, np.ndarray]:
    """s1, s2, noise and the three mixtures at `sample_rate` from 16 kHz inputs.

    `noise` must already be at least as long as the longest utterance (see `extend_noise`).
    """
    scaled = [s * g for s, g in zip(speech, speech_gains, strict=True)] + [noise * noise_gain]
    resampled = [resample(x, RATE, sample_rate) for x in scaled]
    if mode == "min":
        n = min(len(x) for x in resampled)
        fitted = [x[:n] for x in resampled]
    else:
        n = max(len(x) for x in resampled)
        fitted = [np.pad(x, (0, n - len(x))) for x in resampled]
    s1, s2, nz = fitted
    return {"s1": s1, "s2": s2, "noise": nz, "mix_clean": s1 + s2, "mix_both": s1 + s2 + nz,
            "mix_single": s1 + nz}


@dataclass(frozen=True)
class _MixJob:
    mix_id: str
    speech: tuple[str, str]
    gains: tuple[float, float]
    noise: str
    noise_gain: float
    out: str
    sample_rate: int
    mode: str
    subdirs: tuple[str, ...]


def _mix_one(job: _MixJob) -> int:
    """Writes one mixture's files; returns the mixture length (skips files already complete)."""
    out = Path(job.out)
    paths = {d: out / d / f"{job.mix_id}.wav" for d in job.subdirs}
    if all(p.is_file() for p in paths.values()):
        return sf.info(str(paths[job.subdirs[-1]])).frames
    speech = [read_audio(p, RATE) for p in job.speech]
    length = max(len(s) for s in speech)
    noise = read_audio(job.noise, RATE, (1, 2), stop=length)
    if len(noise) < length:
        noise = extend_noise(noise, length)
    signals = mix_sources(speech, job.gains, noise, job.noise_gain, job.sample_rate, job.mode)
    for d, p in paths.items():
        write_audio(p, signals[d], job.sample_rate)
    return len(signals["s1"])


def _subdirs(types: Sequence[str]) -> tuple[str, ...]:
    bad = [t for t in types if t not in MIX_TYPES]
    if bad or not types:
        raise ConfigError(f"params.yaml: data.types must be a non-empty subset of "
                          f"{list(MIX_TYPES)}, got {list(types)}")
    ordered = [t for t in MIX_TYPES if t in types]
    noise = [] if ordered == ["mix_clean"] else ["noise"]
    return ("s1", "s2", *noise, *ordered)


def read_metadata(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LibriMix metadata CSV not found")
    md = pd.read_csv(path)
    missing = [c for c in MD_COLUMNS if c not in md.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return md


def _check_files(md: pd.DataFrame, librispeech_root: Path, wham_root: Path, source: str) -> None:
    missing = [str(librispeech_root / p) for c in ("source_1_path", "source_2_path")
               for p in md[c] if not (librispeech_root / p).is_file()]
    missing += [str(wham_root / p) for p in md["noise_path"] if not (wham_root / p).is_file()]
    if missing:
        shown = "\n  ".join(missing[:5])
        raise FileNotFoundError(f"{source}: {len(missing)} referenced audio files are missing, "
                                f"e.g.\n  {shown}")


def create_split(
    md: pd.DataFrame, librispeech_root: str | Path, wham_root: str | Path, out_dir: str | Path,
    split: str, sample_rate: int, mode: str, types: Sequence[str], workers: int | None = None,
    progress: bool = True, source: str = "metadata",
) -> Path:
    """Writes one split's wavs and its mixture CSVs; returns the split's CSV folder."""
    ls_root, nz_root = Path(librispeech_root), Path(wham_root)
    _check_files(md, ls_root, nz_root, source)
    subdirs = _subdirs(types)
    split_dir = mode_dir(out_dir, sample_rate, mode) / split
    for d in subdirs:
        (split_dir / d).mkdir(parents=True, exist_ok=True)
    jobs = [_MixJob(r.mixture_ID, (str(ls_root / r.source_1_path), str(ls_root / r.source_2_path)),
                    (float(r.source_1_gain), float(r.source_2_gain)), str(nz_root / r.noise_path),
                    float(r.noise_gain), str(split_dir), sample_rate, mode, subdirs)
            for r in md.itertuples(index=False)]
    lengths = parallel_map(_mix_one, jobs, workers, f"mix {split} {sample_rate // 1000}k {mode}",
                           progress=progress)
    out_csv = csv_dir(out_dir, sample_rate, mode, split)
    # paths relative to the split folder, so the prepared data can move (DVC cache, other clones)
    root = Path()
    for mix_type in (t for t in MIX_TYPES if t in subdirs):
        srcs = ["source_1_path"] if mix_type == "mix_single" else ["source_1_path", "source_2_path"]
        cols = {"mixture_ID": md["mixture_ID"],
                "mixture_path": [str(root / mix_type / f"{m}.wav") for m in md["mixture_ID"]]}
        for i, c in enumerate(srcs):
            cols[c] = [str(root / f"s{i + 1}" / f"{m}.wav") for m in md["mixture_ID"]]
        if mix_type != "mix_clean":
            cols["noise_path"] = [str(root / "noise" / f"{m}.wav") for m in md["mixture_ID"]]
        cols["length"] = lengths
        write_csv(out_csv / f"mixture_{split}_{mix_type}.csv", pd.DataFrame(cols))
    return out_csv


def build_librimix(
    librispeech_root: str | Path, wham_root: str | Path, out_dir: str | Path,
    splits: Sequence[str] = ("train-100", "dev", "test"), sample_rate: int = 8000,
    mode: str = "min", types: Sequence[str] = ("mix_clean", "mix_both"),
    metadata_dir: str | Path | None = None, n_mixtures: dict[str, int | None] | None = None,
    seed: int = 0, workers: int | None = None, progress: bool = True,
    min_seconds: float = MIN_SECONDS,
) -> Path:
    """Libri2Mix under `<out_dir>/Libri2Mix`; returns its `wav<k>/<mode>` folder.

    With `metadata_dir`, the official `libri2mix_{subset}.csv` files drive the mixing; without,
    metadata is generated (seeded) into `<out_dir>/metadata` from utterances and noises of at
    least `min_seconds`, and reused by a re-run with the same settings. Finished wavs are
    skipped on a re-run.
    """
    ls_root = require_dir(librispeech_root, "LibriSpeech root (data.librispeech_root)")
    nz_root = require_dir(wham_root, "WHAM! noise root (data.wham_noise_root)")
    unknown = [s for s in splits if s not in SUBSETS]
    if unknown:
        raise ConfigError(f"params.yaml: data.splits has unknown splits {unknown}; "
                          f"known: {list(SUBSETS)}")
    n_mixtures = n_mixtures or {}
    if metadata_dir is None:
        md_dir = Path(out_dir) / "metadata"
        settings = {"librispeech_root": _recorded_root(ls_root, out_dir),
                    "wham_root": _recorded_root(nz_root, out_dir),
                    "seed": seed, "n_mixtures": {s: n_mixtures.get(s) for s in splits},
                    "min_seconds": min_seconds}
        check_settings(md_dir / "generation.json", settings, out_dir)
    else:
        md_dir = require_dir(metadata_dir, "LibriMix metadata folder (data.metadata_dir)")
    for split in splits:
        md_path = md_dir / f"libri2mix_{SUBSETS[split]}.csv"
        if metadata_dir is None and not md_path.is_file():
            md, info = generate_metadata(ls_root, nz_root, split, n_mixtures.get(split), seed,
                                         workers, progress, min_seconds)
            write_csv(md_dir / f"libri2mix_{SUBSETS[split]}_info.csv", info)
            write_csv(md_path, md)
        md = read_metadata(md_path)
        create_split(md, ls_root, nz_root, out_dir, split, sample_rate, mode, types, workers,
                     progress, source=str(md_path))
    return mode_dir(out_dir, sample_rate, mode)


def _recorded_root(root: Path, out_dir: str | Path) -> str:
    """A corpus root as generation.json records it: relative to `out_dir` when inside it (the
    synthetic corpora), so that file does not depend on where the checkout is."""
    root, out = root.resolve(), Path(out_dir).resolve()
    return root.relative_to(out).as_posix() if root.is_relative_to(out) else str(root)


def check_settings(path: Path, settings: dict, out_dir: str | Path) -> None:
    """Records `settings` in `path`; an `out_dir` built with other settings is an error, since
    resuming it would mix files of two builds."""
    if path.is_file():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(settings)):
            raise ConfigError(f"{path}: {out_dir} was built with other settings ({old}); delete "
                              f"{out_dir} to rebuild with {settings}")
    else:
        write_text(path, json.dumps(settings, indent=1, sort_keys=True))
