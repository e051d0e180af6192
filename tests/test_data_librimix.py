"""Libri2Mix from a LibriSpeech-shaped and a WHAM!-shaped tree built here on tiny signals."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyloudnorm as pyln
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from experiments.config import ConfigError
from experiments.data import make_dataset
from experiments.data.librimix import build_librimix, create_split, extend_noise, read_metadata
from experiments.data.librimix_metadata import MAX_AMP, generate_metadata, loudness_gains

LSB = 2.0**-15  # PCM_16 quantisation step


def _tone(rng: np.random.Generator, seconds: float, f0: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * f0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
            + 0.05 * rng.standard_normal(len(t)))


def make_corpus(root: Path, n_speakers: int = 4, per_speaker: int = 3,
                noise_seconds: tuple[float, ...] = (6.0,) * 8, seed: int = 0) -> tuple[Path, Path]:
    """LibriSpeech/dev-clean with `n_speakers` x `per_speaker` utterances and wham_noise/cv."""
    rng = np.random.default_rng(seed)
    ls, nz = root / "LibriSpeech", root / "wham_noise"
    lines = [";ID  |SEX| SUBSET |MINUTES| NAME"]
    for s in range(n_speakers):
        spk = 100 + s
        lines.append(f"{spk} | {'MF'[s % 2]} | dev-clean | 1.0 | Reader | with bar")
        for k in range(per_speaker):
            path = ls / "dev-clean" / str(spk) / "7" / f"{spk}-7-{k:04d}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, _tone(rng, rng.uniform(3.2, 4.5), 120 + 40 * s), 16000)
    (ls / "SPEAKERS.TXT").write_text("\n".join(lines) + "\n")
    for k, seconds in enumerate(noise_seconds):
        path = nz / "cv" / f"n{k:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.1 * rng.standard_normal((int(seconds * 16000), 2)), 16000)
    return ls, nz


def _metadata(ls: Path, nz: Path, noise: str = "cv/n00.wav") -> pd.DataFrame:
    a, b = "dev-clean/100/7/100-7-0000.flac", "dev-clean/101/7/101-7-0001.flac"
    return pd.DataFrame([["100-7-0000_101-7-0001", a, 0.6, b, 0.9, noise, 0.5]],
                        columns=["mixture_ID", "source_1_path", "source_1_gain", "source_2_path",
                                 "source_2_gain", "noise_path", "noise_gain"])


@pytest.mark.parametrize(("sample_rate", "mode"), [(8000, "min"), (16000, "max")])
def test_mixing_matches_independent_computation(tmp_path, sample_rate, mode):
    ls, nz = make_corpus(tmp_path)
    md = _metadata(ls, nz)
    create_split(md, ls, nz, tmp_path / "out", "dev", sample_rate, mode,
                 ["mix_clean", "mix_both", "mix_single"], workers=1, progress=False)
    s1 = sf.read(ls / md.source_1_path[0])[0] * 0.6
    s2 = sf.read(ls / md.source_2_path[0])[0] * 0.9
    noise = sf.read(nz / md.noise_path[0])[0][: max(len(s1), len(s2)), 0] * 0.5
    parts = [resample_poly(x, sample_rate, 16000) for x in (s1, s2, noise)]
    n = (min if mode == "min" else max)(len(p) for p in parts)
    parts = [np.pad(p, (0, max(0, n - len(p))))[:n] for p in parts]
    expected = {"s1": parts[0], "s2": parts[1], "noise": parts[2],
                "mix_clean": parts[0] + parts[1], "mix_both": sum(parts),
                "mix_single": parts[0] + parts[2]}
    split_dir = tmp_path / "out" / "Libri2Mix" / f"wav{sample_rate // 1000}k" / mode / "dev"
    for name, want in expected.items():
        got, rate = sf.read(split_dir / name / f"{md.mixture_ID[0]}.wav")
        assert rate == sample_rate and got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4)
    csv_dir = split_dir.parent / "metadata" / "dev"
    assert sorted(p.name for p in csv_dir.iterdir()) == [
        "mixture_dev_mix_both.csv", "mixture_dev_mix_clean.csv", "mixture_dev_mix_single.csv"]
    both = pd.read_csv(csv_dir / "mixture_dev_mix_both.csv")
    assert list(both.columns) == ["mixture_ID", "mixture_path", "source_1_path", "source_2_path",
                                  "noise_path", "length"]
    # paths relative to the split folder: the prepared data can move
    assert both.length[0] == n and not Path(both.noise_path[0]).is_absolute()
    assert (split_dir / both.noise_path[0]).is_file()
    assert list(pd.read_csv(csv_dir / "mixture_dev_mix_clean.csv").columns) == [
        "mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length"]
    assert list(pd.read_csv(csv_dir / "mixture_dev_mix_single.csv").columns) == [
        "mixture_ID", "mixture_path", "source_1_path", "noise_path", "length"]


def test_short_noise_is_extended_with_hann_crossfades():
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(20000)
    out = extend_noise(noise, 50000)
    half = np.hanning(16001)[:8001]  # rising half; the falling half is its mirror
    assert len(out) == 50000
    np.testing.assert_array_equal(out[:20000 - 8001], noise[:20000 - 8001])
    joint = noise[-8001:] * half[::-1] + noise[:8001] * half
    np.testing.assert_allclose(out[20000 - 8001 : 20000], joint, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out[20000 : 20000 + 3000], noise[8001 : 11001])


def test_noisy_mixture_with_short_noise_uses_the_extension(tmp_path):
    ls, nz = make_corpus(tmp_path, noise_seconds=(1.5,))
    md = _metadata(ls, nz)
    create_split(md, ls, nz, tmp_path / "out", "dev", 16000, "max", ["mix_both"], workers=1,
                 progress=False)
    s1 = sf.read(ls / md.source_1_path[0])[0]
    s2 = sf.read(ls / md.source_2_path[0])[0]
    want = extend_noise(sf.read(nz / md.noise_path[0])[0][:, 0], max(len(s1), len(s2))) * 0.5
    got = sf.read(tmp_path / "out/Libri2Mix/wav16k/max/dev/noise" / f"{md.mixture_ID[0]}.wav")[0]
    np.testing.assert_allclose(got, want, atol=LSB)


def test_loudness_gains_follow_targets_and_clipping_rules():
    rng = np.random.default_rng(2)
    speech = [_tone(rng, 4.0, 150), _tone(rng, 4.0, 230)]
    noise = 0.1 * rng.standard_normal(len(speech[0]))
    meter = pyln.Meter(16000)
    gains = loudness_gains(speech + [noise], [-30.0, -27.0, -35.0])
    for x, g, target in zip(speech + [noise], gains, [-30.0, -27.0, -35.0], strict=True):
        assert meter.integrated_loudness(x * g) == pytest.approx(target, abs=0.01)
    # A target that would clip: the source is peak-normalised to MAX_AMP instead.
    spiky = speech[0].copy()
    spiky[100] = 40.0
    g = loudness_gains([spiky, speech[1], noise], [-25.0, -25.0, -30.0])
    assert np.max(np.abs(spiky * g[0])) <= MAX_AMP + 1e-9
    # Loud sources whose sum exceeds MAX_AMP are scaled down together.
    loud = [x * 3 for x in speech]
    g = loudness_gains(loud + [noise], [-5.0, -5.0, -10.0])
    mixture = sum(x * gi for x, gi in zip(loud + [noise], g, strict=True))
    assert np.max(np.abs(mixture)) == pytest.approx(MAX_AMP, rel=1e-3)
    with pytest.raises(ValueError, match="silent"):
        loudness_gains([np.zeros(64000), speech[1], noise], [-30.0, -30.0, -35.0])


def test_generated_metadata_follows_the_recipe(tmp_path):
    ls, nz = make_corpus(tmp_path, n_speakers=4, per_speaker=4, noise_seconds=(6.0,) * 10)
    md, info = generate_metadata(ls, nz, "dev", 6, seed=3, workers=1, progress=False)
    again, _ = generate_metadata(ls, nz, "dev", 6, seed=3, workers=2, progress=False)
    other, _ = generate_metadata(ls, nz, "dev", 6, seed=4, workers=1, progress=False)
    pd.testing.assert_frame_equal(md, again)
    assert not md.equals(other)
    assert len(md) == 6 and md.mixture_ID.is_unique
    assert (info.speaker_1_ID != info.speaker_2_ID).all()
    pairs = {frozenset(r) for r in zip(md.source_1_path, md.source_2_path, strict=True)}
    assert len(pairs) == 6
    meter = pyln.Meter(16000)
    for row in md.itertuples():
        assert row.mixture_ID == f"{Path(row.source_1_path).stem}_{Path(row.source_2_path).stem}"
        s1 = sf.read(ls / row.source_1_path)[0]
        assert -33.05 <= meter.integrated_loudness(s1 * row.source_1_gain) <= -24.95
        nz_audio = sf.read(nz / row.noise_path)[0][:, 0]
        assert -38.05 <= meter.integrated_loudness(nz_audio * row.noise_gain) <= -29.95
    # train: every utterance at most once; too many mixtures asked is an error naming the split
    with pytest.raises(ValueError, match="dev-clean: asked for 500"):
        generate_metadata(ls, nz, "dev", 500, seed=3, workers=1, progress=False)


def test_short_utterances_are_skipped_with_a_count(tmp_path, capsys):
    ls, nz = make_corpus(tmp_path)
    sf.write(ls / "dev-clean/100/7/100-7-0099.flac", np.zeros(16000) + 0.1, 16000)
    md, _ = generate_metadata(ls, nz, "dev", 2, seed=0, workers=1, progress=False)
    assert "skipped 1 of 13 utterances shorter than 3 s" in capsys.readouterr().out
    assert not md.source_1_path.str.contains("0099").any()


def test_build_generate_resume_and_load_with_asteroid(tmp_path):
    ls, nz = make_corpus(tmp_path, n_speakers=4, per_speaker=4, noise_seconds=(6.0,) * 10)
    out = tmp_path / "prepared"
    build_librimix(ls, nz, out, ["dev"], 8000, "min", ["mix_clean", "mix_both"],
                   n_mixtures={"dev": 3}, seed=0, workers=2, progress=False)
    wav = next((out / "Libri2Mix/wav8k/min/dev/mix_both").glob("*.wav"))
    stamp = wav.stat().st_mtime_ns
    # An interrupted write leaves only a temporary name, which never counts as done.
    (wav.parent / f".{wav.name}.part").write_bytes(b"partial")
    victim = [p for p in sorted((out / "Libri2Mix/wav8k/min/dev/s1").glob("*.wav"))
              if p.name != wav.name][0]
    content = victim.read_bytes()
    victim.unlink()
    build_librimix(ls, nz, out, ["dev"], 8000, "min", ["mix_clean", "mix_both"],
                   n_mixtures={"dev": 3}, seed=0, workers=2, progress=False)
    assert victim.read_bytes() == content and wav.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="other settings"):
        build_librimix(ls, nz, out, ["dev"], 8000, "min", ["mix_clean"], n_mixtures={"dev": 3},
                       seed=1, workers=1, progress=False)
    cfg = {"source": "librimix", "out_dir": str(out), "sample_rate": 8000, "mode": "min",
           "task": "sep_noisy"}
    ds = make_dataset(cfg, "dev", segment=None, return_id=True)
    mixture, sources, ids = ds[0]
    assert len(ds) == 3 and sources.shape == (2, mixture.shape[0]) and len(ids) == 2
    ds = make_dataset({**cfg, "task": "sep_clean"}, "dev", segment=1.0)
    mixture, sources = ds[1]
    assert mixture.shape == (8000,) and sources.shape == (2, 8000)
    np.testing.assert_allclose(mixture.numpy(), sources.sum(0).numpy(), atol=2 * LSB)
    with pytest.raises(FileNotFoundError, match="train-100"):
        make_dataset(cfg, "train", segment=1.0)


def test_official_metadata_drives_mixing(tmp_path):
    ls, nz = make_corpus(tmp_path)
    md_dir = tmp_path / "official"
    md_dir.mkdir()
    _metadata(ls, nz).to_csv(md_dir / "libri2mix_dev-clean.csv", index=False)
    build_librimix(ls, nz, tmp_path / "out", ["dev"], 8000, "min", ["mix_clean"],
                   metadata_dir=md_dir, workers=1, progress=False)
    split = tmp_path / "out/Libri2Mix/wav8k/min/dev"
    assert sorted(p.name for p in split.iterdir()) == ["mix_clean", "s1", "s2"]
    assert not (tmp_path / "out" / "metadata").exists()


def test_bad_inputs_give_clear_errors(tmp_path):
    ls, nz = make_corpus(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="nowhere.*data.librispeech_root"):
        build_librimix(tmp_path / "nowhere", nz, out, ["dev"], workers=1, progress=False)
    md = _metadata(ls, nz, noise="cv/missing.wav")
    with pytest.raises(FileNotFoundError, match=r"(?s)1 referenced audio files.*cv/missing.wav"):
        create_split(md, ls, nz, out, "dev", 8000, "min", ["mix_both"], workers=1, progress=False)
    bad = ls / "dev-clean/101/7/101-7-0001.flac"
    sf.write(bad, np.zeros(16000 * 4) + 0.1, 22050)
    with pytest.raises(ValueError, match=r"101-7-0001.flac: sample rate 22050 Hz"):
        create_split(_metadata(ls, nz), ls, nz, out, "dev", 8000, "min", ["mix_clean"],
                     workers=2, progress=False)
    sf.write(bad, np.zeros((16000 * 4, 2)) + 0.1, 16000)
    with pytest.raises(ValueError, match=r"101-7-0001.flac: 2 channels, expected 1"):
        create_split(_metadata(ls, nz), ls, nz, out, "dev", 8000, "min", ["mix_clean"],
                     workers=1, progress=False)
    with pytest.raises(ConfigError, match="data.types"):
        create_split(_metadata(ls, nz), ls, nz, out, "dev", 8000, "min", ["mix_loud"],
                     workers=1, progress=False)
    with pytest.raises(ConfigError, match="data.sample_rate"):
        create_split(_metadata(ls, nz), ls, nz, out, "dev", 44100, "min", ["mix_clean"],
                     workers=1, progress=False)
    broken = tmp_path / "broken.csv"
    pd.DataFrame({"mixture_ID": ["a"]}).to_csv(broken, index=False)
    with pytest.raises(ValueError, match="broken.csv: missing columns"):
        read_metadata(broken)
    os.remove(ls / "SPEAKERS.TXT")
    with pytest.raises(FileNotFoundError, match="SPEAKERS.TXT"):
        generate_metadata(ls, nz, "dev", 2, seed=0, workers=1, progress=False)
