"""LibriMix metadata: the LibriSpeech and WHAM! scans and the recipe's pairing, noise assignment
and loudness gains (`generate_metadata`), written as official `libri2mix_{subset}.csv` files."""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyloudnorm as pyln

from experiments.data.audio import (
    check_audio,
    parallel_map,
    read_audio,
)

RATE = 16000  # LibriSpeech and WHAM! noise rate; gains apply at this rate
N_SRC = 2
MAX_AMP = 0.9
SPEECH_LUFS = (-33.0, -25.0)
NOISE_LUFS = (-38.0, -30.0)
MIN_SECONDS = 3
OFFICIAL_EVAL_SIZE = 3000  # dev/test mixtures in the official metadata
SUBSETS = {"train-100": "train-clean-100", "train-360": "train-clean-360", "dev": "dev-clean",
           "test": "test-clean"}
NOISE_SPLITS = {"train-100": "tr", "train-360": "tr", "dev": "cv", "test": "tt"}
MD_COLUMNS = ["mixture_ID", "source_1_path", "source_1_gain", "source_2_path", "source_2_gain",
              "noise_path", "noise_gain"]


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path


# ---------------------------------------------------------------- corpus scans

def read_speakers(librispeech_root: str | Path) -> dict[str, str]:
    """Speaker ID -> sex from LibriSpeech's SPEAKERS.TXT (`ID | SEX | SUBSET | MINUTES | NAME`)."""
    path = Path(librispeech_root) / "SPEAKERS.TXT"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LibriSpeech speaker list not found")
    sexes = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(";") or not line.strip():
            continue
        fields = [f.strip() for f in line.split("|", 4)]
        if len(fields) < 3:
            raise ValueError(f"{path}: malformed line {line!r}")
        sexes[fields[0]] = fields[1]
    return sexes


def _long_enough(df: pd.DataFrame, min_seconds: float, folder: Path, label: str,
                 what: str) -> pd.DataFrame:
    """A scan's files of at least `min_seconds`, sorted by length; how many were shorter is
    printed; none found at all is an error naming the folder."""
    if df.empty:
        raise ValueError(f"{folder}: no {what} found")
    kept = df[df["length"] >= min_seconds * RATE]
    if len(kept) < len(df):
        print(f"{label}: skipped {len(df) - len(kept)} of {len(df)} {what.split(' ', 1)[1]} "
              f"shorter than {min_seconds} s")
    return kept.sort_values("length", kind="stable").reset_index(drop=True)


def scan_librispeech(librispeech_root: str | Path, subset: str,
                     min_seconds: float = MIN_SECONDS) -> pd.DataFrame:
    """Utterances of at least `min_seconds` (the recipe's 3 s) in one subset, sorted by length
    (LibriMix's speech metadata)."""
    root = require_dir(librispeech_root, "LibriSpeech root")
    subset_dir = require_dir(root / subset, f"LibriSpeech subset {subset}")
    sexes = read_speakers(root)
    rows = []
    for path in sorted(subset_dir.rglob("*.flac")):
        speaker = path.name.split("-")[0]
        if speaker not in sexes:
            raise ValueError(f"{path}: speaker {speaker} is not in {root / 'SPEAKERS.TXT'}")
        length = check_audio(path, RATE, (1,))
        rows.append((speaker, sexes[speaker], subset, length, path.relative_to(root).as_posix()))
    df = pd.DataFrame(rows, columns=["speaker_ID", "sex", "subset", "length", "origin_path"])
    return _long_enough(df, min_seconds, subset_dir, subset, ".flac utterances")


def scan_wham_noise(wham_root: str | Path, noise_split: str,
                    min_seconds: float = MIN_SECONDS) -> pd.DataFrame:
    """Noise files of at least `min_seconds` in one WHAM! split (tr/cv/tt), sorted by length."""
    root = require_dir(wham_root, "WHAM! noise root")
    split_dir = require_dir(root / noise_split, f"WHAM! noise split {noise_split}")
    rows = []
    for path in sorted(split_dir.rglob("*.wav")):
        length = check_audio(path, RATE, (1, 2))
        augmented = "sp08" in path.name or "sp12" in path.name
        rows.append((path.name, noise_split, length, augmented, path.relative_to(root).as_posix()))
    df = pd.DataFrame(rows, columns=["noise_ID", "subset", "length", "augmented", "origin_path"])
    return _long_enough(df, min_seconds, split_dir, noise_split, ".wav noise files")


# ---------------------------------------------------------------- metadata generation

def _pair_utterances(speakers: Sequence[str], rng: random.Random) -> list[tuple[int, int]]:
    """Random pairs of distinct speakers, each utterance used once; stops after 200 failed draws."""
    index = list(range(len(speakers)))
    pairs, fails = [], 0
    while len(index) >= N_SRC and fails < 200:
        pos = rng.sample(range(len(index)), N_SRC)
        pair = tuple(index[p] for p in pos)
        if len({speakers[i] for i in pair}) != N_SRC:
            fails += 1
            continue
        for p in sorted(pos, reverse=True):  # swap-remove keeps this O(1)
            index[p] = index[-1]
            index.pop()
        pairs.append(pair)
        fails = 0
    return pairs


def _assign_noise(
    pairs: list[tuple[int, int]], speech_len: np.ndarray, noise: pd.DataFrame,
    rng: random.Random, is_train: bool,
) -> tuple[list[tuple[int, int]], list[int]]:
    """A noise per pair, each used once: a random one at least as long as the longer utterance;
    failing that the longest left (train) or the pair is dropped (dev/test)."""
    pool = noise[~noise["augmented"].astype(bool)]
    if len(pairs) > len(pool):
        pool = noise
    left = list(pool.index)  # sorted by length (scan order)
    lengths = [int(noise.at[i, "length"]) for i in left]
    kept, chosen = [], []
    for pair in pairs:
        if not left:
            raise ValueError(f"only {len(pool)} noise files in WHAM! split "
                             f"{noise['subset'].iat[0]} for {len(pairs)} mixtures")
        need = int(max(speech_len[i] for i in pair))
        first = bisect.bisect_left(lengths, need)
        if first < len(left):
            pos = rng.randrange(first, len(left))
        elif is_train:
            pos = len(left) - 1
        else:
            continue
        chosen.append(left.pop(pos))
        lengths.pop(pos)
        kept.append(pair)
    return kept, chosen


def _make_pairs(
    speech: pd.DataFrame, noise: pd.DataFrame, n_mixtures: int | None, is_train: bool,
    rng: random.Random,
) -> tuple[list[tuple[int, int]], list[int]]:
    speakers = speech["speaker_ID"].astype(str).tolist()
    lengths = speech["length"].to_numpy()
    if is_train:  # every utterance at most once
        pairs = _pair_utterances(speakers, rng)
        if n_mixtures is not None:  # pairs come in random order: keep the first ones
            pairs = pairs[:n_mixtures]
        pairs, noises = _assign_noise(pairs, lengths, noise, rng, True)
        target = n_mixtures if n_mixtures is not None else len(pairs) // 100 * 100
    else:  # rounds of pairing until the target count of distinct pairs is reached
        target = n_mixtures if n_mixtures is not None else OFFICIAL_EVAL_SIZE
        pairs, noises, seen = [], [], set()
        while len(pairs) < target:
            new, new_noise = _assign_noise(_pair_utterances(speakers, rng), lengths, noise, rng,
                                           False)
            before = len(pairs)
            for pair, nz in zip(new, new_noise, strict=True):
                if frozenset(pair) not in seen:
                    seen.add(frozenset(pair))
                    pairs.append(pair)
                    noises.append(nz)
            if len(pairs) == before:
                break
    if len(pairs) < target:
        raise ValueError(f"{speech['subset'].iat[0]}: asked for {target} mixtures, the corpus "
                         f"allows only {len(pairs)}")
    return pairs[:target], noises[:target]


def loudness_gains(sources: Sequence[np.ndarray], targets: Sequence[float],
                   rate: int = RATE) -> list[float]:
    """Gains taking each source (speech..., noise; equal lengths) to its target loudness.

    A source that would reach |x| >= 1 is instead peak-normalised to MAX_AMP; if the sum of the
    normalised sources exceeds MAX_AMP all are scaled down together. Gains are measured as
    loudness differences, as in the LibriMix recipe.
    """
    meter = pyln.Meter(rate)
    loud = [meter.integrated_loudness(s) for s in sources]
    normalised = []
    for s, src_lufs, target in zip(sources, loud, targets, strict=True):
        if not np.isfinite(src_lufs):
            raise ValueError("a source is silent: its loudness is undefined")
        x = s * 10.0 ** ((target - src_lufs) / 20.0)
        if np.max(np.abs(x)) >= 1:
            x = s * MAX_AMP / np.max(np.abs(s))
        normalised.append(x)
    peak = np.max(np.abs(np.sum(normalised, axis=0)))
    weight = MAX_AMP / peak if peak > MAX_AMP else 1.0
    renorm = [meter.integrated_loudness(x * weight) for x in normalised]
    return [float(10.0 ** ((r - lufs) / 20.0)) for r, lufs in zip(renorm, loud, strict=True)]


@dataclass(frozen=True)
class _GainJob:
    speech: tuple[str, ...]
    noise: str
    targets: tuple[float, ...]


def _gains_for(job: _GainJob) -> list[float]:
    speech = [read_audio(p, RATE) for p in job.speech]
    length = max(len(s) for s in speech)
    sources = [np.pad(s, (0, length - len(s))) for s in speech]
    noise = read_audio(job.noise, RATE, (1, 2))
    sources.append(np.pad(noise, (0, max(0, length - len(noise))))[:length])
    try:
        return loudness_gains(sources, job.targets)
    except ValueError as err:
        raise ValueError(f"{', '.join(job.speech)} / {job.noise}: {err}") from err


def generate_metadata(
    librispeech_root: str | Path, wham_root: str | Path, split: str, n_mixtures: int | None,
    seed: int, workers: int | None = None, progress: bool = True,
    min_seconds: float = MIN_SECONDS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """New `libri2mix_{subset}.csv` content (and its `_info` companion) for one split.

    n_mixtures None keeps the recipe's sizes (train: all pairs rounded down to 100; dev/test: 3000).
    """
    subset = SUBSETS[split]
    speech = scan_librispeech(librispeech_root, subset, min_seconds)
    noise = scan_wham_noise(wham_root, NOISE_SPLITS[split], min_seconds)
    rng = random.Random(f"libri2mix:{seed}:{subset}")
    pairs, noise_rows = _make_pairs(speech, noise, n_mixtures, split.startswith("train"), rng)
    # Targets are drawn in mixture order before the parallel part, so results do not depend on it.
    targets = [tuple(rng.uniform(*SPEECH_LUFS) for _ in range(N_SRC)) + (rng.uniform(*NOISE_LUFS),)
               for _ in pairs]
    ls_root, nz_root = Path(librispeech_root), Path(wham_root)
    jobs = [_GainJob(tuple(str(ls_root / speech.at[i, "origin_path"]) for i in pair),
                     str(nz_root / noise.at[n, "origin_path"]), t)
            for pair, n, t in zip(pairs, noise_rows, targets, strict=True)]
    gains = parallel_map(_gains_for, jobs, workers, f"gains {split}", progress=progress)
    md_rows, info_rows = [], []
    for pair, n, g in zip(pairs, noise_rows, gains, strict=True):
        rows = [speech.iloc[i] for i in pair]
        mix_id = "_".join(Path(r["origin_path"]).stem for r in rows)
        md_rows.append([mix_id, rows[0]["origin_path"], g[0], rows[1]["origin_path"], g[1],
                        noise.at[n, "origin_path"], g[2]])
        info_rows.append([mix_id, rows[0]["speaker_ID"], rows[0]["sex"], rows[1]["speaker_ID"],
                          rows[1]["sex"]])
    md = pd.DataFrame(md_rows, columns=MD_COLUMNS)
    info = pd.DataFrame(info_rows, columns=["mixture_ID", "speaker_1_ID", "speaker_1_sex",
                                            "speaker_2_ID", "speaker_2_sex"])
    return md, info
