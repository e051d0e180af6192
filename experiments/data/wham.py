"""WHAM! from a built wsj0-2mix and the WHAM! noise release, following the WHAM! scripts.

Inputs: `<wsj0_2mix_root>/wav{8k,16k}/{min,max}/{tr,cv,tt}/{s1,s2}/<utt>.wav` and
`<wham_noise_root>/{tr,cv,tt}/<utt>.wav` (2-channel, 16 kHz, one noise per utterance) with
`metadata/scaling_{split}.npz`, or, without it, `metadata/mix_param_meta_{split}.csv`, from which
the scaling is computed as the WHAM! scripts do (BS.1770 loudness, target SNR of speaker 1).
Outputs the six folders per split and the json lists that asteroid's WhamDataset reads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyloudnorm as pyln
import soundfile as sf

from experiments.atomic import write_text
from experiments.config import ConfigError
from experiments.data.audio import check_audio, parallel_map, resample, write_audio

NOISE_RATE = 16000
MAX_SAMPLE_AMP = 0.9
SPLITS = ("tr", "cv", "tt")
OUTPUTS = ("mix_clean", "mix_single", "mix_both", "s1", "s2", "noise")


def mode_dir(out_dir: str | Path, sample_rate: int, mode: str) -> Path:
    if sample_rate not in (8000, 16000) or mode not in ("min", "max"):
        raise ConfigError(f"params.yaml: WHAM! needs data.sample_rate in (8000, 16000) and "
                          f"data.mode in (min, max), got {sample_rate}, {mode!r}")
    return Path(out_dir) / "WHAM" / f"wav{sample_rate // 1000}k" / mode


def json_dir(out_dir: str | Path, sample_rate: int, mode: str, split: str) -> Path:
    return mode_dir(out_dir, sample_rate, mode) / "json" / split


def _read(path: Path, rate: int, channels: Sequence[int] = (1,)) -> np.ndarray:
    check_audio(path, rate, channels)
    data, _ = sf.read(str(path))  # float64, as the WHAM! scripts read
    return data[:, 0] if data.ndim > 1 else data


def align(s1: np.ndarray, s2: np.ndarray, noise: np.ndarray, mode: str,
          start_16k: int, sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Places speech inside the noise at its start sample: `min` crops the noise to the speech,
    `max` pads the speech with zeros to the noise length."""
    start = start_16k // 2 if sample_rate == 8000 else start_16k
    end = start + len(s1)
    if mode == "min":
        return s1, s2, noise[start:end]
    s1_full, s2_full = np.zeros_like(noise), np.zeros_like(noise)
    s1_full[start:end], s2_full[start:end] = s1, s2
    return s1_full, s2_full, noise


def mixes(s1: np.ndarray, s2: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
    return {"mix_clean": s1 + s2, "mix_single": noise + s1, "mix_both": noise + s1 + s2,
            "s1": s1, "s2": s2, "noise": noise}


def scaling_from_snr(s1: np.ndarray, s2: np.ndarray, noise: np.ndarray, snr_db: float,
                     sample_rate: int) -> tuple[float, float]:
    """(speech gain, noise gain) for aligned signals: speaker 1 at `snr_db` over the noise by
    integrated loudness, then everything scaled down together if any output peaks over 0.9."""
    meter = pyln.Meter(sample_rate)
    gain = 10 ** ((snr_db + meter.integrated_loudness(noise) - meter.integrated_loudness(s1)) / 20)
    peak = max(np.max(np.abs(x)) for x in mixes(s1 * gain, s2 * gain, noise).values())
    noise_gain = MAX_SAMPLE_AMP / peak if peak > MAX_SAMPLE_AMP else 1.0
    return gain * noise_gain, noise_gain


@dataclass(frozen=True)
class _Job:
    utt: str
    s1: str
    s2: str
    noise: str
    start_16k: int
    speech_gain: float | None  # None: compute from snr_db
    noise_gain: float | None
    snr_db: float | None
    out: str
    sample_rate: int
    mode: str


def _make_one(job: _Job) -> int:
    out = Path(job.out)
    paths = {d: out / d / job.utt for d in OUTPUTS}
    if all(p.is_file() for p in paths.values()):
        return sf.info(str(paths["mix_both"])).frames
    s1 = _read(Path(job.s1), job.sample_rate)
    s2 = _read(Path(job.s2), job.sample_rate)
    if len(s1) != len(s2):
        raise ValueError(f"{job.s1}, {job.s2}: wsj0-2mix sources differ in length")
    noise = _read(Path(job.noise), NOISE_RATE, (1, 2))
    noise = resample(noise, NOISE_RATE, job.sample_rate)
    if job.speech_gain is None:
        a1, a2, an = align(s1, s2, noise, job.mode, job.start_16k, job.sample_rate)
        speech_gain, noise_gain = scaling_from_snr(a1, a2, an, job.snr_db, job.sample_rate)
    else:
        speech_gain, noise_gain = job.speech_gain, job.noise_gain
    s1, s2, noise = align(s1 * speech_gain, s2 * speech_gain, noise * noise_gain, job.mode,
                          job.start_16k, job.sample_rate)
    if len(noise) != len(s1):
        raise ValueError(f"{job.noise}: noise too short for {job.utt} (start {job.start_16k})")
    for name, signal in mixes(s1, s2, noise).items():
        write_audio(paths[name], signal, job.sample_rate, subtype="FLOAT")
    return len(s1)


def _split_params(noise_root: Path, split: str, sample_rate: int, mode: str) -> pd.DataFrame:
    """Per utterance: start sample and either the released scaling or the target SNR."""
    sr = f"{sample_rate // 1000}k"
    npz_path = noise_root / "metadata" / f"scaling_{split}.npz"
    csv_path = noise_root / "metadata" / f"mix_param_meta_{split}.csv"
    if npz_path.is_file():
        npz = np.load(npz_path, allow_pickle=True)
        keys = ["utterance_id", "speech_start_sample_16k", f"scaling_wham_speech_{sr}_{mode}",
                f"scaling_wham_noise_{sr}_{mode}"]
        missing = [k for k in keys if k not in npz.files]
        if missing:
            raise ValueError(f"{npz_path}: missing arrays {missing}")
        return pd.DataFrame({"utt": [str(u) for u in npz[keys[0]]],
                             "start": npz[keys[1]].astype(int),
                             "speech_gain": npz[keys[2]].astype(float),
                             "noise_gain": npz[keys[3]].astype(float), "snr": None})
    if csv_path.is_file():
        md = pd.read_csv(csv_path)
        cols = ["utterance_id", "noise_samples_beginning_16k", "target_speaker1_snr_db"]
        missing = [c for c in cols if c not in md.columns]
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing}")
        return pd.DataFrame({"utt": md[cols[0]].astype(str), "start": md[cols[1]].astype(int),
                             "speech_gain": None, "noise_gain": None,
                             "snr": md[cols[2]].astype(float)})
    raise FileNotFoundError(f"{npz_path}: WHAM! scaling not found (nor {csv_path})")


def build_wham(
    wsj0_2mix_root: str | Path, wham_noise_root: str | Path, out_dir: str | Path,
    sample_rate: int = 8000, mode: str = "min", splits: Sequence[str] = SPLITS,
    workers: int | None = None, progress: bool = True,
) -> Path:
    """WHAM! under `<out_dir>/WHAM/wav<k>/<mode>`; returns that folder."""
    wsj_root, noise_root = Path(wsj0_2mix_root), Path(wham_noise_root)
    for root, key in ((wsj_root, "wsj0_2mix_root"), (noise_root, "wham_noise_root")):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: folder not found (data.{key})")
    target = mode_dir(out_dir, sample_rate, mode)
    for split in splits:
        if split not in SPLITS:
            raise ConfigError(f"params.yaml: unknown WHAM! split {split!r}; known: {SPLITS}")
        params = _split_params(noise_root, split, sample_rate, mode)
        wsj_dir = wsj_root / f"wav{sample_rate // 1000}k" / mode / split
        missing = [str(p) for u in params["utt"]
                   for p in (wsj_dir / "s1" / u, wsj_dir / "s2" / u, noise_root / split / u)
                   if not p.is_file()]
        if missing:
            shown = "\n  ".join(missing[:5])
            raise FileNotFoundError(f"WHAM! {split}: {len(missing)} audio files are missing, "
                                    f"e.g.\n  {shown}")
        jobs = [_Job(r.utt, str(wsj_dir / "s1" / r.utt), str(wsj_dir / "s2" / r.utt),
                     str(noise_root / split / r.utt), int(r.start),
                     None if r.speech_gain is None else float(r.speech_gain),
                     None if r.noise_gain is None else float(r.noise_gain),
                     None if r.snr is None else float(r.snr), str(target / split), sample_rate,
                     mode)
                for r in params.itertuples(index=False)]
        lengths = parallel_map(_make_one, jobs, workers, f"WHAM! {split}", progress=progress)
        root = Path()  # paths relative to the split folder, so the prepared data can move
        for name in OUTPUTS:
            entries = [[str(root / name / u), n] for u, n in zip(params["utt"], lengths,
                                                                 strict=True)]
            write_text(json_dir(out_dir, sample_rate, mode, split) / f"{name}.json",
                       json.dumps(entries, indent=0))
    return target
