"""Offline synthetic Libri2Mix: eSpeak NG speech as a LibriSpeech-shaped tree, generated noise as
a WHAM!-shaped tree, then the same metadata generation and mixing as the real corpora.

Speech comes from the libespeak-ng shipped in the `espeakng-loader` wheel, driven through its C
API with a sample callback (no root, no download). A synthetic speaker is a voice variant, an
English accent, a pitch and a speaking rate; speakers are disjoint between splits.
"""

from __future__ import annotations

import ctypes
import math
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.fft import next_fast_len

from experiments.atomic import write_text
from experiments.data import librimix, librimix_metadata
from experiments.data.audio import parallel_map, resample, write_audio

ESPEAK_RATE = 22050
RATE = librimix_metadata.RATE
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")
VARIANTS = {"m1": "M", "m2": "M", "m3": "M", "m4": "M", "m5": "M", "m6": "M", "m7": "M",
            "f1": "F", "f2": "F", "f3": "F", "f4": "F", "f5": "F"}
PITCHES = tuple(range(20, 81, 5))   # eSpeak 0-100 scale
RATES = tuple(range(135, 206, 10))  # words per minute
SPEECH_SECONDS = (4.0, 6.0)
NOISE_SECONDS = (5.0, 8.0)
SPLITS = {"train-100": "tr", "dev": "cv", "test": "tt"}
BABBLE_POOL = 24  # babble utterances per split, from voices outside the speaker set
WORDS = (
    "the a one two three four five six seven eight nine ten old new small large red green blue "
    "white black bright dark quiet loud warm cold early late happy sad quick slow river mountain "
    "garden window table chair letter morning evening winter summer market station village city "
    "forest ocean island bridge road house kitchen doctor teacher farmer sailor painter child "
    "mother father brother sister friend neighbour stranger captain walked carried opened closed "
    "found lost bought sold wrote read painted watched heard remembered forgot asked answered "
    "followed crossed reached built cleaned moved turned under over near behind beside across "
    "through before after during while because although and but then again always never often "
    "sometimes really almost nearly quickly slowly carefully gently suddenly finally together "
    "alone coffee bread apples music story picture paper stone water light sound voice journey "
    "question answer problem reason moment minute hour week year number colour weather"
).split()


@dataclass(frozen=True)
class Speaker:
    speaker_id: int
    accent: str
    variant: str
    pitch: int
    rate: int

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"

    @property
    def sex(self) -> str:
        return VARIANTS[self.variant]


def make_speakers(n_speakers: int, seed: int) -> dict[str, list[Speaker]]:
    """`n_speakers` distinct voices split train/dev/test (dev and test get a sixth each, >= 2)."""
    if n_speakers < 6:
        raise ValueError(f"synthetic data needs at least 6 speakers (2 per split), "
                         f"got {n_speakers}")
    combos = len(ACCENTS) * len(VARIANTS) * len(PITCHES) * len(RATES)
    if n_speakers > combos:
        raise ValueError(f"at most {combos} distinct synthetic speakers, asked for {n_speakers}")
    rng = np.random.default_rng([seed, 1])
    picks = rng.choice(combos, size=n_speakers, replace=False)
    variants = list(VARIANTS)
    speakers = []
    for k, code in enumerate(picks.tolist()):
        code, a = divmod(code, len(ACCENTS))
        code, v = divmod(code, len(variants))
        r, p = divmod(code, len(PITCHES))
        speakers.append(Speaker(1000 + k, ACCENTS[a], variants[v], PITCHES[p], RATES[r]))
    n_eval = max(2, round(n_speakers / 6))
    return {"train-100": speakers[: n_speakers - 2 * n_eval],
            "dev": speakers[n_speakers - 2 * n_eval : n_speakers - n_eval],
            "test": speakers[n_speakers - n_eval :]}


# ---------------------------------------------------------------- eSpeak NG through ctypes

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)
_AUDIO_OUTPUT_SYNCHRONOUS, _CHARS_UTF8, _POS_CHARACTER = 2, 1, 1
_PARAM_RATE, _PARAM_PITCH = 1, 3


class _Espeak:
    """libespeak-ng in synchronous mode. Its noise generator is seeded from the clock unless set,
    and synthesis carries internal state from call to call, so this is created only inside a
    freshly forked worker (see `parallel_map(fresh_process=True)`) with an explicit seed."""

    def __init__(self, rand_seed: int) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                          espeakng_loader.get_data_path().encode(), 0)
        if rate != ESPEAK_RATE:
            raise RuntimeError(f"libespeak-ng initialisation returned {rate}, expected "
                               f"{ESPEAK_RATE} Hz")
        self.chunks: list[np.ndarray] = []
        self.callback = _SYNTH_CALLBACK(self._collect)  # kept alive with the object
        self.lib.espeak_SetSynthCallback(self.callback)
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(rand_seed))
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                          ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                          ctypes.c_void_p, ctypes.c_void_p]

    def _collect(self, wav, n_samples, _events) -> int:
        if n_samples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0  # 0 = continue

    def say(self, text: str, voice: str, pitch: int, rate: int) -> np.ndarray:
        """int16 samples at 22.05 kHz."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        self.lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        self.chunks = []
        data = text.encode()
        err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                    None, None)
        if err != 0 or self.lib.espeak_Synchronize() != 0:
            raise RuntimeError(f"eSpeak NG failed (error {err}) on {text!r}")
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


def _to_16k(wav: np.ndarray) -> np.ndarray:
    x = resample(wav.astype(np.float64) / 32768.0, ESPEAK_RATE, RATE)
    peak = np.max(np.abs(x))
    return x * (0.95 / peak) if peak > 0.95 else x


def _sentence(engine: _Espeak, speaker: Speaker, rng: np.random.Generator,
              seconds: tuple[float, float] = SPEECH_SECONDS) -> np.ndarray:
    """16 kHz speech of a random word sequence whose duration falls inside `seconds`."""
    lo, hi = seconds
    n_words = max(3, round(rng.uniform(lo, hi) * speaker.rate / 60))
    words = list(rng.choice(WORDS, size=n_words + 20))
    for _ in range(30):
        audio = _to_16k(engine.say(" ".join(words[:n_words]), speaker.voice, speaker.pitch,
                                   speaker.rate))
        seconds_now = len(audio) / RATE
        if lo <= seconds_now <= hi:
            return audio
        n_words += 1 if seconds_now < lo else -1
        if n_words >= len(words):
            words += list(rng.choice(WORDS, size=20))
    raise RuntimeError(f"could not fit a sentence for {speaker} into {lo}-{hi} s")


@dataclass(frozen=True)
class _SpeakerJob:
    speaker: Speaker
    n_utterances: int
    out_dir: str  # <LibriSpeech>/<subset>/<speaker>/<chapter>
    seed: int
    seconds: tuple[float, float] = SPEECH_SECONDS


def _synthesize_speaker(job: _SpeakerJob) -> None:
    engine = _Espeak(job.seed * 100_003 + job.speaker.speaker_id)
    spk, chapter = job.speaker.speaker_id, Path(job.out_dir).name
    for k in range(job.n_utterances):
        path = Path(job.out_dir) / f"{spk}-{chapter}-{k:04d}.flac"
        # Synthesised even when the file exists: later utterances depend on the engine's state.
        audio = _sentence(engine, job.speaker, np.random.default_rng([job.seed, spk, k]),
                          job.seconds)
        if not path.is_file():
            write_audio(path, audio, RATE)


@dataclass(frozen=True)
class _BabbleJob:
    out_dir: str
    seed: int
    split_code: int


def _synthesize_babble(job: _BabbleJob) -> None:
    engine = _Espeak(job.seed * 100_003 + job.split_code)
    for k in range(BABBLE_POOL):
        rng = np.random.default_rng([job.seed, 7, job.split_code, k])
        voice = Speaker(0, str(rng.choice(ACCENTS)), str(rng.choice(list(VARIANTS))),
                        int(rng.choice(PITCHES)), int(rng.choice(RATES)))
        audio = _sentence(engine, voice, rng)
        path = Path(job.out_dir) / f"babble{k:02d}.flac"
        if not path.is_file():
            write_audio(path, audio, RATE)


# ---------------------------------------------------------------- noise

def coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Gaussian noise with a 1/f^alpha power spectrum (alpha in [0, 2]), band-limited, unit RMS."""
    n_fft = next_fast_len(n, real=True)
    spec = np.fft.rfft(rng.standard_normal(n_fft))
    freqs = np.fft.rfftfreq(n_fft, 1 / RATE)
    low, high = rng.uniform(20, 300), rng.uniform(2500, RATE / 2)
    shape = np.where((freqs >= low) & (freqs <= high), 1.0, 0.05)
    shape = shape / np.maximum(freqs, low) ** (rng.uniform(0, 2) / 2)
    x = np.fft.irfft(spec * shape, n_fft)[:n]
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def modulated_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Coloured noise under a slow sinusoidal envelope, plus a mains-like hum."""
    t = np.arange(n) / RATE
    env = 1 + rng.uniform(0.3, 0.9) * np.sin(2 * np.pi * rng.uniform(0.3, 4) * t
                                             + rng.uniform(0, 2 * np.pi))
    hum_f0 = rng.choice([50.0, 60.0])
    hum = sum(np.sin(2 * np.pi * hum_f0 * h * t) / h for h in (1, 2, 3))
    x = coloured_noise(rng, n) * env + rng.uniform(0, 0.5) * hum
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def babble_noise(rng: np.random.Generator, n: int, pool: list[np.ndarray]) -> np.ndarray:
    """3-6 overlapping talkers from the babble pool, looped at random offsets."""
    x = 0.05 * coloured_noise(rng, n)
    for idx in rng.choice(len(pool), size=int(rng.integers(3, 7)), replace=False):
        talker = pool[idx]
        reps = np.tile(talker, n // len(talker) + 2)
        start = int(rng.integers(0, len(talker)))
        x = x + rng.uniform(0.5, 1.0) * reps[start : start + n] / (np.std(talker) + 1e-12)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


@cache
def _babble_pool(babble_dir: str) -> list[np.ndarray]:
    return [sf.read(str(p))[0] for p in sorted(Path(babble_dir).glob("*.flac"))]


@dataclass(frozen=True)
class _NoiseJob:
    path: str
    babble_dir: str
    seed: int
    split_code: int
    index: int


def _make_noise(job: _NoiseJob) -> None:
    path = Path(job.path)
    if path.is_file():
        return
    rng = np.random.default_rng([job.seed, 11, job.split_code, job.index])
    n = int(rng.uniform(*NOISE_SECONDS) * RATE)
    kind = int(rng.integers(0, 3))
    if kind == 0:
        x = coloured_noise(rng, n)
    elif kind == 1:
        x = modulated_noise(rng, n)
    else:
        x = babble_noise(rng, n, _babble_pool(job.babble_dir))
    # A second, slightly different channel, as WHAM! noise is binaural.
    lag = int(rng.integers(1, 16))
    right = 0.9 * np.roll(x, lag) + 0.1 * rng.standard_normal(n)
    stereo = np.stack([x, right], axis=1)
    stereo *= rng.uniform(0.2, 0.85) / np.max(np.abs(stereo))
    write_audio(path, stereo, RATE)


# ---------------------------------------------------------------- the dataset

def write_corpora(
    corpora_dir: str | Path, n_mixtures: dict[str, int], speakers: dict[str, list[Speaker]],
    seed: int, workers: int | None = None, progress: bool = True,
    speech_seconds: tuple[float, float] = SPEECH_SECONDS,
) -> tuple[Path, Path]:
    """LibriSpeech-shaped and WHAM!-shaped trees under `corpora_dir`; returns their roots.

    Each split gets about two utterances and one noise file (1.1 for dev/test) per mixture, so
    that the recipe's pairing (each utterance and noise used once) has room.
    """
    corpora = Path(corpora_dir)
    ls_root, nz_root = corpora / "LibriSpeech", corpora / "wham_noise"
    lines = [";ID  |SEX| SUBSET           |MINUTES| NAME"]
    speaker_jobs, babble_jobs, noise_jobs = [], [], []
    for code, (split, noise_split) in enumerate(SPLITS.items()):
        subset, n_mix = librimix_metadata.SUBSETS[split], n_mixtures[split]
        spk = speakers[split]
        per_speaker = math.ceil((2 * n_mix * 1.05 + 4) / len(spk))
        for s in spk:
            chapter_dir = ls_root / subset / str(s.speaker_id) / str(100 + s.speaker_id % 100)
            speaker_jobs.append(_SpeakerJob(s, per_speaker, str(chapter_dir), seed,
                                            speech_seconds))
            minutes = per_speaker * sum(speech_seconds) / 2 / 60
            lines.append(f"{s.speaker_id:<5}| {s.sex} | {subset:<17}| {minutes:5.2f} | "
                         f"espeak-ng {s.voice} pitch {s.pitch} rate {s.rate}")
        babble_dir = corpora / "babble" / noise_split
        babble_jobs.append(_BabbleJob(str(babble_dir), seed, code))
        # dev/test drop pairs that no remaining noise covers, hence the margin there
        n_noise = n_mix + 4 if split.startswith("train") else math.ceil(n_mix * 1.1) + 4
        noise_jobs += [_NoiseJob(str(nz_root / noise_split / f"{noise_split}{k:05d}.wav"),
                                 str(babble_dir), seed, code, k) for k in range(n_noise)]
    write_text(ls_root / "SPEAKERS.TXT", "\n".join(lines) + "\n")
    parallel_map(_synthesize_any, speaker_jobs + babble_jobs, workers, "synthesise speech",
                 fresh_process=True, progress=progress)
    parallel_map(_make_noise, noise_jobs, workers, "make noise", progress=progress)
    return ls_root, nz_root


def _synthesize_any(job: _SpeakerJob | _BabbleJob) -> None:
    (_synthesize_babble if isinstance(job, _BabbleJob) else _synthesize_speaker)(job)


def build_synthetic_dataset(
    out_dir: str | Path, n_train: int, n_dev: int, n_test: int, n_speakers: int,
    sample_rate: int = 8000, mode: str = "min", seed: int = 0,
    types: tuple[str, ...] = ("mix_clean", "mix_both"), workers: int | None = None,
    keep_corpora: bool = False, progress: bool = True,
    speech_seconds: tuple[float, float] = SPEECH_SECONDS,
) -> Path:
    """Synthetic Libri2Mix in the published layout under `<out_dir>/Libri2Mix`.

    Returns the `wav<k>/<mode>` folder; splits are train-100, dev and test. Utterances last
    `speech_seconds` (a range; LibriSpeech's kept ones are 3 s and longer, shorter ones make a
    faster dataset). The intermediate corpora go to `<out_dir>/corpora` and are deleted at the
    end unless `keep_corpora`. The same arguments give byte-identical wavs whatever the number
    of workers.
    """
    n_mixtures = {"train-100": n_train, "dev": n_dev, "test": n_test}
    bad = {k: v for k, v in n_mixtures.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise ValueError(f"synthetic mixture counts must be positive integers, got {bad}")
    lo, hi = (float(v) for v in speech_seconds)
    if not 1.0 <= lo <= hi - 0.5:
        raise ValueError(f"synthetic speech_seconds must be [lo, hi] with 1 <= lo and "
                         f"lo + 0.5 <= hi (room for whole words), got {list(speech_seconds)}")
    out = Path(out_dir)
    target = librimix.mode_dir(out, sample_rate, mode)
    speakers = make_speakers(n_speakers, seed)
    librimix.check_settings(out / "synthetic.json", {"seed": seed, "n_speakers": n_speakers,
                                                     "n_mixtures": n_mixtures,
                                                     "speech_seconds": [lo, hi]}, out)
    corpora = out / "corpora"
    done = all((librimix.csv_dir(out, sample_rate, mode, s) / f"mixture_{s}_{t}.csv").is_file()
               for s in SPLITS for t in types)
    if done and not corpora.exists():  # finished earlier, corpora already removed
        return target
    ls_root, nz_root = write_corpora(corpora, n_mixtures, speakers, seed, workers, progress,
                                     (lo, hi))
    librimix.build_librimix(ls_root, nz_root, out, tuple(SPLITS), sample_rate, mode, types,
                            n_mixtures=n_mixtures, seed=seed, workers=workers, progress=progress,
                            min_seconds=lo)
    if not keep_corpora:
        shutil.rmtree(corpora)
    return target

