"""WHAM! from a tiny fake wsj0-2mix tree and WHAM!-shaped noise with its mixing metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyloudnorm as pyln
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from experiments.data import make_dataset
from experiments.data.wham import build_wham

UTTS = ("011a0101_0.5_20oc0102_-0.5.wav", "40na010x_1.2_027c0105_-1.2.wav")


def make_tree(root: Path, noise_scale: float = 0.1) -> tuple[Path, Path, dict]:
    """wsj0-2mix (8 kHz, min) for tr and tt; noise with scaling npz (tt) or mix_param_meta (tr)."""
    rng = np.random.default_rng(0)
    wsj, noise_root = root / "wsj0-2mix", root / "wham_noise"
    meta = {}
    for split in ("tr", "tt"):
        rows = []
        for k, utt in enumerate(UTTS):
            n8 = 8000 * 3 + 517 * k
            for src in ("s1", "s2"):
                path = wsj / "wav8k" / "min" / split / src / utt
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, 0.2 * rng.standard_normal(n8), 8000, subtype="FLOAT")
            start, end = 2 * (300 + 50 * k), 400
            noise = noise_scale * rng.standard_normal((2 * n8 + start + end, 2))
            path = noise_root / split / utt
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, noise, 16000, subtype="FLOAT")
            rows.append((utt, start, end, -3.0 + 4 * k))
        meta[split] = pd.DataFrame(rows, columns=["utterance_id", "noise_samples_beginning_16k",
                                                  "noise_samples_end_16k",
                                                  "target_speaker1_snr_db"])
    (noise_root / "metadata").mkdir()
    meta["tr"].to_csv(noise_root / "metadata" / "mix_param_meta_tr.csv", index=False)
    gains = {"speech": np.array([0.8, 1.1]), "noise": np.array([1.0, 0.7])}
    np.savez(noise_root / "metadata" / "scaling_tt.npz", utterance_id=np.array(UTTS),
             speech_start_sample_16k=meta["tt"]["noise_samples_beginning_16k"].to_numpy(),
             scaling_wham_speech_8k_min=gains["speech"], scaling_wham_noise_8k_min=gains["noise"])
    return wsj, noise_root, {"meta": meta, "gains": gains}


def test_released_scaling_is_applied_as_the_wham_scripts_do(tmp_path):
    wsj, noise_root, info = make_tree(tmp_path)
    out = tmp_path / "out"
    build_wham(wsj, noise_root, out, 8000, "min", splits=("tt",), workers=2, progress=False)
    split_dir = out / "WHAM/wav8k/min/tt"
    for k, utt in enumerate(UTTS):
        g_s, g_n = info["gains"]["speech"][k], info["gains"]["noise"][k]
        s1 = sf.read(wsj / "wav8k/min/tt/s1" / utt)[0] * g_s
        s2 = sf.read(wsj / "wav8k/min/tt/s2" / utt)[0] * g_s
        start = int(info["meta"]["tt"]["noise_samples_beginning_16k"][k]) // 2
        noise = resample_poly(sf.read(noise_root / "tt" / utt)[0][:, 0], 8000, 16000) * g_n
        noise = noise[start : start + len(s1)]
        want = {"s1": s1, "s2": s2, "noise": noise, "mix_clean": s1 + s2,
                "mix_single": s1 + noise, "mix_both": s1 + s2 + noise}
        for name, signal in want.items():
            got, rate = sf.read(split_dir / name / utt)
            assert rate == 8000
            np.testing.assert_allclose(got, signal, atol=1e-6)
    listing = json.loads((out / "WHAM/wav8k/min/json/tt/mix_both.json").read_text())
    assert [Path(p).name for p, _ in listing] == list(UTTS)
    assert all(not Path(p).is_absolute() and (out / "WHAM/wav8k/min/tt" / p).is_file()
               for p, _ in listing)
    assert [n for _, n in listing] == [8000 * 3, 8000 * 3 + 517]


def test_scaling_from_mix_param_meta_hits_target_snr_under_the_clip_limit(tmp_path):
    wsj, noise_root, info = make_tree(tmp_path, noise_scale=0.6)
    out = tmp_path / "out"
    build_wham(wsj, noise_root, out, 8000, "min", splits=("tr",), workers=1, progress=False)
    meter = pyln.Meter(8000)
    for k, utt in enumerate(UTTS):
        outputs = {d: sf.read(out / "WHAM/wav8k/min/tr" / d / utt)[0]
                   for d in ("s1", "s2", "noise", "mix_clean", "mix_single", "mix_both")}
        snr = meter.integrated_loudness(outputs["s1"]) - meter.integrated_loudness(outputs["noise"])
        assert snr == pytest.approx(info["meta"]["tr"]["target_speaker1_snr_db"][k], abs=0.01)
        # Loud noise (0.6 std) would clip, so everything is scaled to peak exactly at 0.9.
        assert max(np.max(np.abs(x)) for x in outputs.values()) == pytest.approx(0.9, abs=1e-6)


def test_prepared_wham_loads_with_asteroid(tmp_path):
    wsj, noise_root, _ = make_tree(tmp_path)
    out = tmp_path / "out"
    build_wham(wsj, noise_root, out, 8000, "min", splits=("tt",), workers=1, progress=False)
    cfg = {"source": "wham", "out_dir": str(out), "sample_rate": 8000, "mode": "min",
           "task": "sep_noisy"}
    ds = make_dataset(cfg, "test", segment=None, return_id=True)
    mixture, sources, ids = ds[1]
    assert len(ds) == 2 and sources.shape == (2, mixture.shape[0]) and ids == [Path(UTTS[1]).stem]
    mixture, sources = make_dataset({**cfg, "task": "sep_clean"}, "test", segment=1.0)[0]
    assert mixture.shape == (8000,)
    np.testing.assert_allclose(mixture.numpy(), sources.sum(0).numpy(), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="json/tr"):
        make_dataset(cfg, "train", segment=1.0)
    (tmp_path / "out").rename(tmp_path / "moved")  # json paths re-rooted on load
    mixture, sources = make_dataset({**cfg, "out_dir": str(tmp_path / "moved")}, "test",
                                    segment=None)[1]
    assert mixture.shape[0] == 8000 * 3 + 517


def test_wham_bad_inputs(tmp_path):
    wsj, noise_root, _ = make_tree(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="scaling_cv.npz"):
        build_wham(wsj, noise_root, out, splits=("cv",), workers=1, progress=False)
    (wsj / "wav8k/min/tt/s2" / UTTS[0]).unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)tt: 1 audio files are missing.*s2"):
        build_wham(wsj, noise_root, out, splits=("tt",), workers=1, progress=False)
    sf.write(noise_root / "tr" / UTTS[1], np.zeros((60000, 2)), 8000)
    with pytest.raises(ValueError, match="sample rate 8000 Hz, expected 16000"):
        build_wham(wsj, noise_root, out, splits=("tr",), workers=1, progress=False)
    with pytest.raises(FileNotFoundError, match="data.wsj0_2mix_root"):
        build_wham(tmp_path / "none", noise_root, out, workers=1, progress=False)
