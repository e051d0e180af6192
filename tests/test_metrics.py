"""experiments.evaluation.metrics against reference implementations and its own definitions."""

from __future__ import annotations

import warnings

import mir_eval.separation  # pinned: the BSS-eval reference
import numpy as np
import pytest
import torch

from experiments.evaluation import metrics
from experiments.evaluation.metrics import (
    best_permutation,
    check_optional_metrics,
    pairwise_si_sdr,
    sdr,
    separation_metrics,
    si_sdr,
)

SR = 8000


def _signals(seed: int = 0, n: int = 4000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two speech-like references, a mixture and imperfect estimates (filtered + leakage)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    s1 = np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    s2 = np.convolve(rng.standard_normal(n), np.hanning(9), mode="same") * 0.4
    refs = np.stack([s1, s2])
    est = np.stack([
        np.convolve(s1, [0.9, 0.3, -0.1])[:n] + 0.2 * s2 + 0.05 * rng.standard_normal(n),
        0.7 * s2 + 0.1 * s1 + 0.1 * rng.standard_normal(n),
    ])
    return refs.sum(0), refs, est


def test_si_sdr_matches_torchmetrics_and_asteroid() -> None:
    from asteroid.losses import singlesrc_neg_sisdr
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

    _, refs, est = _signals()
    est_t, ref_t = torch.tensor(est), torch.tensor(refs)
    ours = si_sdr(est_t, ref_t)
    theirs = scale_invariant_signal_distortion_ratio(est_t, ref_t, zero_mean=True)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    asteroid_value = -singlesrc_neg_sisdr(est_t.float(), ref_t.float())
    torch.testing.assert_close(ours.float(), asteroid_value, atol=1e-3, rtol=0)
    assert torch.allclose(si_sdr(3.0 * est_t + 0.5, ref_t), ours, atol=1e-9)  # scale, offset


def test_sdr_matches_mir_eval_and_asteroid_get_metrics() -> None:
    from asteroid.metrics import get_metrics

    mix, refs, est = _signals(seed=1)
    ours = sdr(torch.tensor(est), torch.tensor(refs)).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = mir_eval.separation.bss_eval_sources(refs, est, compute_permutation=False)[0]
        via_asteroid = get_metrics(mix[None], refs, est, sample_rate=SR, metrics_list=["sdr"],
                                   average=False)
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    np.testing.assert_allclose(ours, via_asteroid["sdr"], atol=1e-4)
    np.testing.assert_allclose(
        sdr(torch.tensor(mix).expand(2, -1), torch.tensor(refs)).numpy(),
        np.ravel(via_asteroid["input_sdr"]), atol=1e-4)


def test_sdr_allows_a_short_distortion_filter_but_si_sdr_does_not() -> None:
    _, refs, _ = _signals()
    ref = torch.tensor(refs[1])
    filtered = torch.tensor(np.convolve(refs[1], [0.3, -1.0, 0.5])[: ref.numel()])
    assert sdr(filtered, ref) > 35  # inside the 512-tap projection (only the cut tail is error)
    assert si_sdr(filtered, ref) < 15


def test_permutation_is_solved_and_improvement_is_output_minus_input() -> None:
    mix, refs, est = _signals(seed=2)
    mix_t, ref_t, est_t = torch.tensor(mix), torch.tensor(refs), torch.tensor(est)
    straight, perm = separation_metrics(mix_t, ref_t, est_t, SR)
    swapped, perm_swapped = separation_metrics(mix_t, ref_t, est_t.flip(0), SR)
    assert perm == (0, 1) and perm_swapped == (1, 0)
    for key, value in straight.items():
        assert swapped[key] == pytest.approx(value, abs=1e-9), key
    mixes = mix_t.expand(2, -1)
    expected_si = (si_sdr(est_t, ref_t) - si_sdr(mixes, ref_t)).mean().item()
    expected_sdr = (sdr(est_t, ref_t) - sdr(mixes, ref_t)).mean().item()
    assert straight["si_sdr_i"] == pytest.approx(expected_si, abs=1e-9)
    assert straight["sdr_i"] == pytest.approx(expected_sdr, abs=1e-9)
    unchanged, _ = separation_metrics(mix_t, ref_t, mixes.clone(), SR)
    assert unchanged["si_sdr_i"] == pytest.approx(0, abs=1e-9)
    assert unchanged["sdr_i"] == pytest.approx(0, abs=1e-9)


def test_best_permutation_three_sources() -> None:
    refs = torch.randn(3, 2000, dtype=torch.float64)
    order = [2, 0, 1]
    est = refs[order] + 0.1 * torch.randn(3, 2000, dtype=torch.float64)
    perm = best_permutation(pairwise_si_sdr(est, refs))
    # estimate perm[j] goes with reference j: est[perm[j]] = refs[order[perm[j]]] = refs[j]
    assert [order[p] for p in perm] == [0, 1, 2]


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        si_sdr(torch.randn(2, 100), torch.randn(2, 99))
    with pytest.raises(ValueError, match="all zeros"):
        sdr(torch.randn(100), torch.zeros(100))
    with pytest.raises(ValueError, match="empty"):
        si_sdr(torch.randn(0), torch.randn(0))
    with pytest.raises(ValueError, match="mixture"):
        separation_metrics(torch.randn(2, 100), torch.randn(2, 100), torch.randn(2, 100), SR)
    with pytest.raises(ValueError, match="not an option"):
        check_optional_metrics(["mos"])


def test_optional_metrics_need_their_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="needs the `pesq` package"):
        check_optional_metrics(["pesq"])
