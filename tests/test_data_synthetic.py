"""The offline synthetic Libri2Mix: eSpeak NG speakers, generated noise, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from experiments.data import make_dataset
from experiments.data.synthetic import (
    ACCENTS,
    VARIANTS,
    build_synthetic_dataset,
    coloured_noise,
    make_speakers,
)

SPLITS = ("train-100", "dev", "test")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "prepared"
    build_synthetic_dataset(out, 4, 2, 2, 6, seed=5, workers=2, keep_corpora=True,
                            progress=False)
    return out


def test_speakers_are_distinct_and_disjoint_between_splits():
    speakers = make_speakers(60, seed=0)
    assert [len(speakers[s]) for s in SPLITS] == [40, 10, 10]
    everyone = [s for split in SPLITS for s in speakers[split]]
    assert len({(s.accent, s.variant, s.pitch, s.rate) for s in everyone}) == 60
    assert len({s.speaker_id for s in everyone}) == 60
    assert all(s.accent in ACCENTS and s.variant in VARIANTS for s in everyone)
    assert make_speakers(60, seed=0) == speakers and make_speakers(60, seed=1) != speakers
    with pytest.raises(ValueError, match="at least 6 speakers"):
        make_speakers(5, seed=0)


def test_librispeech_and_wham_shaped_corpora(tiny):
    corpora = tiny / "corpora"
    speakers_txt = (corpora / "LibriSpeech" / "SPEAKERS.TXT").read_text().splitlines()
    subsets = {}
    for line in speakers_txt[1:]:
        spk, _, subset = (f.strip() for f in line.split("|")[:3])
        subsets[spk] = subset
    for subset in ("train-clean-100", "dev-clean", "test-clean"):
        files = sorted((corpora / "LibriSpeech" / subset).rglob("*.flac"))
        assert files
        for f in files[:6]:
            audio, rate = sf.read(f)
            assert rate == 16000 and audio.ndim == 1 and 4.0 <= len(audio) / rate <= 6.0
            assert np.std(audio) > 0.01  # speech, not silence
            assert subsets[f.name.split("-")[0]] == subset
    for split in ("tr", "cv", "tt"):
        for f in sorted((corpora / "wham_noise" / split).glob("*.wav"))[:4]:
            audio, rate = sf.read(f)
            assert rate == 16000 and audio.shape[1] == 2 and len(audio) >= 5 * rate
            assert 0 < np.max(np.abs(audio)) <= 0.9


def test_dataset_layout_speakers_and_loading(tiny):
    speakers = {}
    for split in SPLITS:
        info = pd.read_csv(tiny / "metadata" / f"libri2mix_{_subset(split)}_info.csv")
        assert (info.speaker_1_ID != info.speaker_2_ID).all()
        speakers[split] = set(info.speaker_1_ID) | set(info.speaker_2_ID)
        folder = tiny / "Libri2Mix/wav8k/min" / split
        assert sorted(p.name for p in folder.iterdir()) == [
            "mix_both", "mix_clean", "noise", "s1", "s2"]
    assert not speakers["train-100"] & (speakers["dev"] | speakers["test"])
    assert not speakers["dev"] & speakers["test"]
    cfg = {"source": "synthetic", "out_dir": str(tiny), "sample_rate": 8000, "mode": "min",
           "task": "sep_noisy"}
    train = make_dataset(cfg, "train", segment=1.0)
    mixture, sources = train[0]
    assert len(train) == 4 and mixture.shape == (8000,) and sources.shape == (2, 8000)
    residual = mixture - sources.sum(0)  # the noise
    assert residual.abs().max() > 0.01
    test = make_dataset({**cfg, "task": "sep_clean"}, "test", segment=None)
    mixture, sources = test[0]
    assert len(test) == 2 and 4 * 8000 <= mixture.shape[0] <= 6 * 8000
    np.testing.assert_allclose(mixture.numpy(), sources.sum(0).numpy(), atol=2**-14)


def test_same_seed_gives_identical_files_whatever_the_workers(tiny, tmp_path):
    again = tmp_path / "again"
    build_synthetic_dataset(again, 4, 2, 2, 6, seed=5, workers=1, progress=False)
    assert not (again / "corpora").exists()  # removed unless keep_corpora
    wavs = sorted(p.relative_to(tiny) for p in (tiny / "Libri2Mix").rglob("*.wav"))
    assert len(wavs) == (4 + 2 + 2) * 5
    for rel in wavs:
        assert (tiny / rel).read_bytes() == (again / rel).read_bytes(), rel
    for split in SPLITS:
        a = pd.read_csv(tiny / "metadata" / f"libri2mix_{_subset(split)}.csv")
        b = pd.read_csv(again / "metadata" / f"libri2mix_{_subset(split)}.csv")
        pd.testing.assert_frame_equal(a, b)


def test_other_seed_and_short_speech_and_settings_are_checked(tmp_path):
    out = tmp_path / "other"
    build_synthetic_dataset(out, 2, 2, 2, 6, seed=6, workers=2, progress=False,
                            speech_seconds=(1.0, 2.0))
    mixtures = sorted((out / "Libri2Mix/wav8k/min/train-100/mix_clean").glob("*.wav"))
    assert len(mixtures) == 2
    # min mode: a mixture is as long as its shorter utterance
    assert all(1.0 <= sf.info(m).duration <= 2.0 for m in mixtures)
    with pytest.raises(ValueError, match="positive integers"):
        build_synthetic_dataset(tmp_path / "bad", 0, 2, 2, 6, progress=False)
    with pytest.raises(ValueError, match="speech_seconds"):
        build_synthetic_dataset(tmp_path / "bad", 2, 2, 2, 6, progress=False,
                                speech_seconds=(0.5, 2.0))


def test_coloured_noise_is_seeded_with_unit_rms():
    x = coloured_noise(np.random.default_rng(0), 48001)
    assert x.shape == (48001,) and np.sqrt(np.mean(x**2)) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(x, coloured_noise(np.random.default_rng(0), 48001))
    assert not np.allclose(x, coloured_noise(np.random.default_rng(1), 48001))


def _subset(split: str) -> str:
    return {"train-100": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}[split]
