"""Separation metrics: SI-SDR, BSS-eval SDR, permutation solving and improvements.

Definitions (documented choices):
- SI-SDR (Le Roux et al., 2019): both signals zero-meaned, estimate projected on the reference.
- SDR: BSS-eval v3 source SDR as computed by `mir_eval.separation.bss_eval_sources` (and thus
  asteroid's `get_metrics`): the estimate is projected on 512-tap delayed copies of its own
  reference (a time-invariant distortion filter is allowed), everything else counts as error.
  With the permutation fixed, this value depends on that one reference only.
- Permutation: one assignment per utterance, the one maximising the mean SI-SDR over sources
  (what a PIT-trained model optimises); every metric uses that assignment.
- Improvement: metric(estimate, reference) - metric(mixture, reference), averaged over sources.
- STOI / PESQ (narrow band at 8 kHz, wide band at 16 kHz) are options; they need the `pystoi`
  and `pesq` packages and raise a clear error when those are missing.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

BASE_METRICS = ("si_sdr", "sdr")
OPTIONAL_METRICS = {"stoi": "pystoi", "pesq": "pesq"}
BSS_FILTER_LEN = 512


def si_sdr(estimate: Tensor, reference: Tensor, zero_mean: bool = True) -> Tensor:
    """Scale-invariant SDR in dB: (..., T), (..., T) -> (...), computed in float64."""
    _check_pair(estimate, reference)
    est, ref = estimate.double(), reference.double()
    if zero_mean:
        est = est - est.mean(-1, keepdim=True)
        ref = ref - ref.mean(-1, keepdim=True)
    eps = torch.finfo(torch.float64).eps
    scale = ((est * ref).sum(-1, keepdim=True) + eps) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * ref
    noise = est - target
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


def sdr(estimate: Tensor, reference: Tensor, filter_len: int = BSS_FILTER_LEN) -> Tensor:
    """BSS-eval v3 SDR in dB of each estimate against its own reference: (..., T) -> (...)."""
    _check_pair(estimate, reference)
    est, ref = estimate.double(), reference.double()
    if (ref.abs().amax(-1) == 0).any():
        raise ValueError("sdr: a reference signal is all zeros; SDR is undefined for silence")
    n = ref.shape[-1]
    full = n + filter_len - 1
    n_fft = 1 << (full - 1).bit_length()
    ref_f = torch.fft.rfft(ref, n=n_fft)
    est_f = torch.fft.rfft(est, n=n_fft)
    auto = torch.fft.irfft(ref_f * ref_f.conj(), n=n_fft)[..., :filter_len]  # lags 0..L-1
    cross = torch.fft.irfft(est_f * ref_f.conj(), n=n_fft)[..., :filter_len]  # <s(n-k), e(n)>
    lag = torch.arange(filter_len)
    gram = auto[..., (lag[:, None] - lag[None, :]).abs()]  # (..., L, L) symmetric Toeplitz
    coeffs = _solve(gram, cross.unsqueeze(-1)).squeeze(-1)  # (..., L) distortion filter
    projection = torch.fft.irfft(ref_f * torch.fft.rfft(coeffs, n=n_fft), n=n_fft)[..., :full]
    error = torch.nn.functional.pad(est, (0, filter_len - 1)) - projection
    return 10 * torch.log10(projection.pow(2).sum(-1) / error.pow(2).sum(-1))


def _solve(gram: Tensor, rhs: Tensor) -> Tensor:
    factor, info = torch.linalg.cholesky_ex(gram)  # the Gram matrix is positive semi-definite
    if bool((info != 0).any()):  # singular (e.g. a band-limited reference): least squares
        return torch.linalg.lstsq(gram, rhs, driver="gelsd").solution
    return torch.cholesky_solve(rhs, factor)


def _check_pair(estimate: Tensor, reference: Tensor) -> None:
    if estimate.shape != reference.shape:
        raise ValueError(
            f"metrics: estimate shape {tuple(estimate.shape)} != reference shape "
            f"{tuple(reference.shape)}"
        )
    if estimate.shape[-1] == 0:
        raise ValueError("metrics: signals are empty")


def pairwise_si_sdr(estimates: Tensor, references: Tensor) -> Tensor:
    """SI-SDR of every (estimate i, reference j) pair: (S, T), (S, T) -> (S, S)."""
    return si_sdr(estimates[:, None, :].expand(-1, references.shape[0], -1),
                  references[None, :, :].expand(estimates.shape[0], -1, -1))


def best_permutation(scores: Tensor) -> tuple[int, ...]:
    """perm maximising mean_j scores[perm[j], j], i.e. estimate perm[j] goes with reference j."""
    n_src = scores.shape[-1]
    if scores.shape != (n_src, n_src):
        raise ValueError(f"best_permutation: expected a square score matrix, got {scores.shape}")
    cols = torch.arange(n_src)
    perms = list(itertools.permutations(range(n_src)))
    totals = torch.stack([scores[list(p), cols].sum() for p in perms])
    return perms[int(totals.argmax())]


def separation_metrics(
    mixture: Tensor,
    references: Tensor,
    estimates: Tensor,
    sample_rate: int,
    extra: Sequence[str] = (),
) -> tuple[dict[str, float], tuple[int, ...]]:
    """Per-utterance metrics and the solved permutation.

    mixture (T,), references (S, T), estimates (S, T). Returns ({si_sdr, si_sdr_i, sdr, sdr_i,
    [stoi, stoi_i, pesq, pesq_i]}, perm), every value the mean over sources in dB (STOI: 0-1,
    PESQ: MOS-LQO).
    """
    if mixture.dim() != 1 or references.dim() != 2 or estimates.shape != references.shape:
        raise ValueError(
            f"separation_metrics: expected mixture (T,), references and estimates (S, T); got "
            f"{tuple(mixture.shape)}, {tuple(references.shape)}, {tuple(estimates.shape)}"
        )
    if mixture.shape[-1] != references.shape[-1]:
        raise ValueError(f"separation_metrics: mixture has {mixture.shape[-1]} samples, "
                         f"references {references.shape[-1]}")
    check_optional_metrics(extra)
    perm = best_permutation(pairwise_si_sdr(estimates, references))
    est = estimates[list(perm)]
    mix = mixture.expand_as(references)
    out: dict[str, float] = {}
    for name, fn in (("si_sdr", si_sdr), ("sdr", sdr)):
        value, base = fn(est, references).mean().item(), fn(mix, references).mean().item()
        out[name], out[f"{name}_i"] = value, value - base
    for name in extra:
        value = _perceptual(name, est, references, sample_rate)
        base = _perceptual(name, mix, references, sample_rate)
        out[name], out[f"{name}_i"] = value, value - base
    return out, perm


def check_optional_metrics(names: Sequence[str]) -> None:
    """ValueError for an unknown metric name or one whose package is not installed."""
    for name in names:
        if name not in OPTIONAL_METRICS:
            raise ValueError(f"metric {name!r} is not an option (have: {sorted(OPTIONAL_METRICS)})")
        package = OPTIONAL_METRICS[name]
        if importlib.util.find_spec(package) is None:
            raise ValueError(
                f"metric {name!r} needs the `{package}` package, which is not installed; "
                f"remove it from evaluate.extra_metrics or install {package}"
            )


def _perceptual(name: str, estimates: Tensor, references: Tensor, sample_rate: int) -> float:
    est = estimates.double().cpu().numpy()
    ref = references.double().cpu().numpy()
    if name == "stoi":
        from pystoi import stoi

        values = [stoi(r, e, sample_rate, extended=False) for r, e in zip(ref, est, strict=True)]
    else:
        from pesq import pesq

        if sample_rate not in (8000, 16000):
            raise ValueError(f"pesq: needs 8 or 16 kHz audio, got {sample_rate} Hz")
        mode = "nb" if sample_rate == 8000 else "wb"
        values = [pesq(sample_rate, r, e, mode) for r, e in zip(ref, est, strict=True)]
    return float(np.mean(values))
