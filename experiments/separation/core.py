"""`separate_file`: one recording through a separation model, in overlapping windows.

Inputs longer than a window go through the model in windows of `window` samples every `hop`
samples (the last one ending at the last sample). Each window's estimates are put in the order
that best matches the previous window's on their overlap, so a speaker stays in one output, and
cross-faded with Hann windows. Memory for the model is bounded by the window; the waveforms are
held whole. (asteroid 0.7.0's `LambdaOverlapAdd` does the same but applies the inverse of the
best permutation for three or more sources, its correlation matrix being transposed relative
to `PITLossWrapper`'s convention, and runs two windows of zero padding; hence this loop.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from experiments.data.audio import resample
from experiments.separation.audio import read_mono

# 8 s windows: several times the 1-4 s segments models are trained on, so each window holds
# whole utterances and global layers (S4, gLN) see enough context, while the model's memory
# stays small. The default hop is half the window: periodic Hann windows then sum to exactly
# 1, every sample is estimated twice with the estimate near a window edge weighted near zero
# (no seams), and the 4 s overlap gives the speaker alignment a long stretch to correlate.
# Cost: about twice the whole-file compute.
DEFAULT_WINDOW_S = 8.0


@dataclass(frozen=True)
class Separation:
    sources: np.ndarray  # (n_src, T) float32
    sample_rate: int
    input_subtype: str  # the input file's libsndfile subtype (PCM_16, FLOAT, ...)
    input_seconds: float
    notes: tuple[str, ...]  # one-line notices for the user (downmix)


def model_rate(model: torch.nn.Module) -> int:
    """The model's sample rate in Hz (its `sample_rate` attribute, a whole number)."""
    rate = getattr(model, "sample_rate", None)
    if not isinstance(rate, int | float) or rate <= 0 or rate != int(rate):
        raise ValueError(f"{type(model).__name__} has no usable sample_rate (got {rate!r})")
    return int(rate)


def model_n_src(model: torch.nn.Module) -> int | None:
    """The number of sources the model declares (registry spec or attribute), if any."""
    spec = getattr(model, "registry_spec", None) or {}
    n_src = spec.get("n_src", getattr(model, "n_src", None))
    return int(n_src) if n_src is not None else None


def window_samples(window_s: float, hop_s: float | None, rate: int) -> tuple[int, int]:
    """(window, hop) in samples at `rate`, the hop at most half the window so that every
    sample away from the file's ends lies inside two windows."""
    if not window_s > 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    window = max(2, round(window_s * rate))
    hop = window // 2 if hop_s is None else round(hop_s * rate)
    if not 0 < hop <= window // 2:
        raise ValueError(f"hop_s={hop_s} must be positive and at most half of window_s="
                         f"{window_s} ({hop} samples for a {window}-sample window at {rate} Hz)")
    return window, hop


def _checked(model: Callable[[torch.Tensor], torch.Tensor],
             n_src: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(chunk: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, n_src, T)
        est = model(chunk)
        batch, length = chunk.shape
        if (est.ndim != 3 or est.shape[0] != batch or est.shape[-1] != length
                or (n_src is not None and est.shape[1] != n_src)):
            expected = f"({batch}, {n_src if n_src is not None else 'n_src'}, {length})"
            raise ValueError(f"model returned shape {tuple(est.shape)} for a {(batch, length)} "
                             f"input, expected {expected}")
        return est

    return run


def _chunk_starts(length: int, window: int, hop: int) -> list[int]:
    """Window starts every `hop`; the last window ends at the last sample (no zero padding)."""
    return [*range(0, length - window, hop), length - window]


def _alignment(previous: torch.Tensor, current: torch.Tensor) -> list[int]:
    """Order of `current`'s sources that best matches `previous` on their common samples
    (both (n_src, overlap)): the assignment maximising the summed inner products, which is
    the one minimising the summed squared differences."""
    score = (previous @ current.T).double().cpu().numpy()  # [i, j] = <previous_i, current_j>
    rows, cols = linear_sum_assignment(score, maximize=True)
    return [int(c) for _, c in sorted(zip(rows, cols, strict=True))]


def separate_waveform(model: Callable[[torch.Tensor], torch.Tensor], wav: torch.Tensor,
                      window: int, hop: int | None = None, n_src: int | None = None,
                      progress: bool = False) -> torch.Tensor:
    """(T,) waveform at the model's rate -> (n_src, T) estimates. Inputs up to `window`
    samples go through the model whole; longer ones in speaker-aligned overlapping windows.
    Call under `torch.inference_mode()`."""
    net = _checked(model, n_src)
    length = wav.shape[-1]
    if length <= window:
        return net(wav[None])[0]
    hop = window // 2 if hop is None else hop
    if not 0 < hop <= window // 2:
        raise ValueError(f"hop of {hop} samples: must be positive and at most half the window "
                         f"({window} samples)")
    starts = _chunk_starts(length, window, hop)
    taper = torch.hann_window(window, periodic=True, dtype=wav.dtype, device=wav.device)
    out = weight = previous = None
    for index, start in enumerate(tqdm(starts, desc="windows", unit="win", leave=False,
                                       disable=not progress)):
        est = net(wav[None, start:start + window])[0]  # (n_src, window)
        if previous is None:
            out, weight = est.new_zeros(est.shape[0], length), est.new_zeros(length)
        else:
            overlap = starts[index - 1] + window - start
            est = est[_alignment(previous[:, -overlap:], est[:, :overlap])]
        # Hann cross-fades between windows; the file's first and last samples are covered by
        # one window only, which is flat there.
        w = taper.clone()
        if index == 0:
            w[: window // 2] = 1
        if index == len(starts) - 1:
            w[window // 2:] = 1
        out[:, start:start + window] += est * w
        weight[start:start + window] += w
        previous = est
    # With hop = window / 2 the weights already sum to 1; other hops leave a ripple.
    return out / weight


def _device_of(model: Callable[[torch.Tensor], torch.Tensor]) -> torch.device:
    """Where `model` takes its input: its parameters' device; the CPU for a module without
    parameters or a runtime session (`experiments.deploy.onnx.OnnxSeparator`)."""
    params = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
    param = next(params, None)
    return param.device if param is not None else torch.device("cpu")


def separate_file(model: Callable[[torch.Tensor], torch.Tensor], path: str | Path, *,
                  window_s: float = DEFAULT_WINDOW_S, hop_s: float | None = None,
                  channel: int | None = None, keep_model_rate: bool = False,
                  normalize: bool = False, n_src: int | None = None,
                  progress: bool = False) -> Separation:
    """Separate one audio file with `model` (a module in eval mode, on its device, or any
    callable with a `sample_rate`, such as an ONNX Runtime `OnnxSeparator`).

    The file (any rate, channels downmixed or `channel` picked) is resampled to the model's
    rate, separated in windows of `window_s` seconds every `hop_s` (default: half a window),
    and the estimates resampled back to the file's rate and length (unless `keep_model_rate`).
    `normalize` scales each estimate to the input's peak. `n_src`: the number of sources the
    model must return. Returns the (n_src, T) float32 estimates and their sample rate; bad
    input: ValueError naming the file.
    """
    rate = model_rate(model)
    window, hop = window_samples(window_s, hop_s, rate)
    audio = read_mono(path, channel)
    mix = resample(audio.samples, audio.sample_rate, rate)
    try:
        with torch.inference_mode():
            wav = torch.from_numpy(mix).to(_device_of(model))
            est = separate_waveform(model, wav, window, hop, n_src, progress)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    sources = est.float().cpu().numpy()
    out_rate = rate
    if not keep_model_rate:
        sources = resample(sources, rate, audio.sample_rate)[:, : audio.samples.size]
        out_rate = audio.sample_rate
    if normalize:
        peaks = np.abs(sources).max(axis=1, keepdims=True)
        gain = np.divide(np.abs(audio.samples).max(), peaks, out=np.ones_like(peaks),
                         where=peaks > 0)
        sources = sources * gain
    return Separation(np.ascontiguousarray(sources, dtype=np.float32), out_rate, audio.subtype,
                      audio.samples.size / audio.sample_rate, audio.notes)
