"""Separate users' recordings with any model `experiments.registry.load_model` reads.

`separate_file(model, path)` returns the estimated sources as arrays at the input's sample rate
(resampled to the model's rate and back with a polyphase filter, long files in overlapping
windows whose speaker order is kept); `separate_files` runs it over files and folders and writes
`<out>/<name>/s1.wav ...`. The CLI is `python -m experiments.stages.separate` (`s4m-separate`).
"""

from experiments.data.audio import resample
from experiments.separation.audio import AUDIO_SUFFIXES, read_mono
from experiments.separation.batch import (
    FileResult,
    RunSummary,
    find_inputs,
    output_subtype,
    separate_files,
    write_sources,
)
from experiments.separation.core import (
    DEFAULT_WINDOW_S,
    Separation,
    model_n_src,
    model_rate,
    separate_file,
    separate_waveform,
    window_samples,
)

__all__ = [
    "AUDIO_SUFFIXES", "DEFAULT_WINDOW_S", "FileResult", "RunSummary", "Separation",
    "find_inputs", "model_n_src", "model_rate", "output_subtype", "read_mono", "resample",
    "separate_file", "separate_files", "separate_waveform", "window_samples",
    "write_sources",
]
