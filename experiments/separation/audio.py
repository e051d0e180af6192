"""Reading users' audio files as checked mono float arrays, and polyphase resampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

# What a folder search picks up unless a glob is given: containers libsndfile reads.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au",
                  ".caf", ".w64", ".rf64")


@dataclass(frozen=True)
class MonoAudio:
    samples: np.ndarray  # (T,) float32
    sample_rate: int
    subtype: str  # libsndfile's, e.g. PCM_16, PCM_24, FLOAT, VORBIS
    channels: int
    notes: tuple[str, ...]  # one-line notices for the user (downmix)


def read_mono(path: str | Path, channel: int | None = None) -> MonoAudio:
    """A file soundfile reads -> mono float32 samples: the mean of the channels, or channel
    `channel` (0-based). Missing, unreadable, empty, non-finite: ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        info = sf.info(path)
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.SoundFileError, OSError) as err:
        reason = getattr(err, "error_string", None) or str(err)
        raise ValueError(f"{path}: not readable as audio ({reason})") from err
    if data.shape[0] == 0:
        raise ValueError(f"{path}: empty (no samples)")
    notes = []
    if channel is not None:
        if not 0 <= channel < data.shape[1]:
            raise ValueError(f"{path}: has {data.shape[1]} channel(s), no channel {channel} "
                             "(channels count from 0)")
        mono = data[:, channel]
    elif data.shape[1] > 1:
        mono = data.mean(axis=1)
        notes.append(f"{path}: {data.shape[1]} channels downmixed to mono "
                     "(--channel picks one instead)")
    else:
        mono = data[:, 0]
    if not np.isfinite(mono).all():
        raise ValueError(f"{path}: contains NaN or infinite samples")
    return MonoAudio(np.ascontiguousarray(mono), int(rate), info.subtype, data.shape[1],
                     tuple(notes))
