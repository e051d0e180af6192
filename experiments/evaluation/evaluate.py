"""Evaluation of any registry-loadable model on the prepared test split.

`evaluate()` writes to its `out_dir`, each file through a temporary name:
- `per_utterance.csv`: utt_id, length_s, perm, si_sdr, si_sdr_i, sdr, sdr_i (+ stoi/pesq and
  their improvements when `evaluate.extra_metrics` asks for them), definitions in
  `experiments.evaluation.metrics`; with `evaluate.bf16` (true, or auto on a CPU with native
  bf16) also `si_sdr_i_bf16` (the same model under bfloat16 autocast, sources ordered as
  float32's) and `bf16_vs_fp32_si_sdr` (the bf16 estimates' SI-SDR against the float32 ones: how
  much precision the model loses);
- `summary.json`: mean, std, 95% confidence interval (Student t) and count per metric, plus the
  environment block;
- `examples/<utt>_{mix,ref1,ref2,est1,est2}.wav` for the first `evaluate.n_examples`
  utterances (estimates ordered as the references) and `examples/spectrogram.png` of the first
  one; `examples/` exists even when `evaluate.n_examples` is 0.
Utterances are taken in the dataset's order, the first `evaluate.max_utterances` (null: all).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from matplotlib.figure import Figure  # not pyplot: no GUI backend to pick, a faster import
from scipy import stats
from tqdm import tqdm

from experiments.atomic import atomic_path, write_text
from experiments.config import ConfigError, require
from experiments.env import cpu_has_bf16, environment, runs_bf16
from experiments.evaluation.metrics import check_optional_metrics, separation_metrics, si_sdr


def summarize(values: list[float]) -> dict[str, Any]:
    """mean, sample std, 95% CI (Student t half-width and bounds), count; NaN-free input."""
    arr = np.asarray(values, dtype=np.float64)
    n = int(arr.size)
    if n == 0:
        raise ValueError("summarize: no values")
    mean = float(arr.mean())
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None, "ci95_low": None, "ci95_high": None,
                "count": n}
    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "std": std, "ci95": half, "ci95_low": mean - half,
            "ci95_high": mean + half, "count": n}


def _write_wav(path: Path, wav: torch.Tensor, sample_rate: int) -> None:
    with atomic_path(path) as tmp:
        sf.write(tmp, wav.numpy(), sample_rate, subtype="FLOAT", format="WAV")


def spectrogram_figure(path: Path, signals: dict[str, torch.Tensor], sample_rate: int,
                       title: str) -> None:
    """One log-magnitude STFT panel per signal (32 ms Hann window, 8 ms hop), shared scale."""
    n_fft = int(0.032 * sample_rate)
    window = torch.hann_window(n_fft)
    fig = Figure(figsize=(8, 1.8 * len(signals)))
    axes = fig.subplots(len(signals), 1, sharex=True)
    for ax, (label, wav) in zip(np.atleast_1d(axes), signals.items(), strict=True):
        spec = torch.stft(wav.float(), n_fft, hop_length=n_fft // 4, window=window,
                          return_complex=True).abs()
        db = 20 * torch.log10(spec + 1e-8)
        extent = (0, wav.numel() / sample_rate, 0, sample_rate / 2000)
        ax.imshow(db.numpy(), origin="lower", aspect="auto", extent=extent, cmap="magma",
                  vmin=float(db.max()) - 80, vmax=float(db.max()))
        ax.set_ylabel(f"{label}\nkHz")
    np.atleast_1d(axes)[-1].set_xlabel("time (s)")
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")


def _utt_id(raw: Any, index: int) -> str:
    if isinstance(raw, list | tuple):
        return "_".join(str(r) for r in raw)
    return str(raw) if raw is not None else f"utt{index:05d}"


def bf16_metrics(model: torch.nn.Module, mixture: torch.Tensor, sources: torch.Tensor,
                 estimates: torch.Tensor, perm: tuple[int, ...]) -> dict[str, float]:
    """The model's output under CPU bfloat16 autocast against its float32 `estimates` and, in
    their order `perm` (a precision check, not a second evaluation), against the references."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(mixture[None])[0].float()
    mixture_sisdr = si_sdr(mixture.expand_as(sources), sources)
    return {"si_sdr_i_bf16": float((si_sdr(low[list(perm)], sources) - mixture_sisdr).mean()),
            "bf16_vs_fp32_si_sdr": float(si_sdr(low, estimates).mean())}


def evaluate(cfg: dict[str, Any], model_path: str | Path, name: str, out_dir: str | Path,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluates the model file on the test split, writes the outputs; returns the summary
    (with `extra`'s keys added, e.g. an ablation cell's settings)."""
    from experiments.data import make_dataset
    from experiments.registry import load_model

    out_dir = Path(out_dir)
    data_cfg = require(cfg, "data")
    max_utts = require(cfg, "evaluate.max_utterances")
    n_examples = int(require(cfg, "evaluate.n_examples"))
    extra_metrics = list(require(cfg, "evaluate.extra_metrics") or [])
    threads = int(require(cfg, "threads"))
    bf16 = runs_bf16(require(cfg, "evaluate.bf16"), "evaluate.bf16")  # evaluation runs on CPU
    if max_utts is not None and (not isinstance(max_utts, int) or max_utts < 1):
        raise ConfigError("params.yaml: evaluate.max_utterances must be a positive int or null")
    check_optional_metrics(extra_metrics)
    torch.set_num_threads(threads)
    torch.manual_seed(int(require(cfg, "seed")))

    model = load_model(model_path).eval()
    sample_rate = int(data_cfg["sample_rate"])
    model_rate = getattr(model, "sample_rate", None)
    if model_rate is not None and int(model_rate) != sample_rate:
        raise ValueError(f"{model_path}: model runs at {model_rate} Hz but data.sample_rate is "
                         f"{sample_rate} Hz")
    dataset = make_dataset(data_cfg, "test", None, return_id=True)
    count = len(dataset) if max_utts is None else min(len(dataset), max_utts)
    if count == 0:
        raise ValueError(f"test split of {data_cfg['out_dir']}: no utterances to evaluate")

    (out_dir / "examples").mkdir(parents=True, exist_ok=True)  # a DVC output, even if empty
    rows = []
    for index in tqdm(range(count), desc=f"evaluate {name}", mininterval=5):
        mixture, sources, raw_id = dataset[index]
        with torch.inference_mode():
            estimates = model(mixture[None])[0]  # (n_src, T)
        if estimates.shape != sources.shape:
            raise ValueError(f"{model_path}: model output {tuple(estimates.shape)} does not "
                             f"match the references {tuple(sources.shape)}")
        values, perm = separation_metrics(mixture, sources, estimates, sample_rate,
                                          extra_metrics)
        if bf16:
            values |= bf16_metrics(model, mixture, sources, estimates, perm)
        utt = _utt_id(raw_id, index)
        rows.append({"utt_id": utt, "length_s": mixture.numel() / sample_rate,
                     "perm": "".join(map(str, perm)), **values})
        if index < n_examples:
            ordered = estimates[list(perm)]
            signals = {"mixture": mixture, **{f"ref{k + 1}": s for k, s in enumerate(sources)},
                       **{f"est{k + 1}": e for k, e in enumerate(ordered)}}
            for label, wav in signals.items():
                _write_wav(out_dir / "examples" / f"{utt}_{label}.wav", wav, sample_rate)
            if index == 0:
                spectrogram_figure(out_dir / "examples" / "spectrogram.png", signals, sample_rate,
                                   f"{name}: {utt} (SI-SDRi {values['si_sdr_i']:.1f} dB)")

    frame = pd.DataFrame(rows)
    metric_names = [c for c in frame.columns if c not in ("utt_id", "length_s", "perm")]
    summary = {
        "name": name, "model_path": str(model_path), "split": "test",
        "dataset": str(data_cfg["out_dir"]), "count": count,
        "metrics": {m: summarize(frame[m].tolist()) for m in metric_names},
        "env": environment(str(cfg.get("profile")), threads),
        **({"bf16_native": cpu_has_bf16()} if bf16 else {}),
        **(extra or {}),
    }
    write_text(out_dir / "per_utterance.csv", frame.to_csv(index=False))
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
