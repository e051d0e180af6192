"""Device check: every registry model trains, evaluates and is benchmarked on one device.

For each model: a few training steps on one repeated batch in float32 and in mixed precision
(bf16-mixed; 16-mixed too on CUDA) through the training stage's own `SeparationSystem` on a
Lightning Trainer (loss finite and falling, gradients finite except where fp16's loss scaler
skips a step), SI-SDR of the trained model (`experiments.evaluation.metrics`), the speed stage's
`benchmark_model` (CUDA events and `max_memory_allocated` on a GPU). Optionally a 2-process
DDP run (`ddp_check`), which runs in a process of its own that Lightning relaunches per rank.
`tools/gpu_check.py` is the command line.

The batch is synthetic and in memory (a harmonic source and a noise-band source per mixture):
the check must run where neither the prepared data nor dvclive exist.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import TensorDataset

from experiments.registry import REGISTRY, build_model

REPO = Path(__file__).resolve().parents[1]
DDP_RESULT = "DDP-RESULT "  # prefix of the line rank 0 of a DDP run prints its result on

# Small constructor overrides, one per registry model (seconds per step on one CPU thread)
TINY: dict[str, dict[str, Any]] = {name: entry.tiny for name, entry in REGISTRY.items()}


@dataclass(frozen=True)
class CheckSettings:
    device: str = "cuda"  # cuda | cpu
    tiny: bool = False  # TINY configurations instead of the registry's full ones
    steps: int = 10  # training steps per precision, all on the same batch
    batch_size: int = 2
    segment_s: float = 1.0
    lr: float = 1e-3
    grad_clip: float = 5.0
    sample_rate: int = 8000
    seed: int = 0
    threads: int = 1  # CPU threads (torch.set_num_threads)
    speed_infer_s: float = 4.0
    speed_train_s: float = 2.0
    speed_repeats: int = 3
    ddp_timeout_s: float = 300.0

    @property
    def accelerator(self) -> str:
        return "gpu" if self.device == "cuda" else "cpu"

    def overrides(self, model: str) -> dict[str, Any]:
        return dict(TINY[model]) if self.tiny else {}


def precisions(device: str) -> tuple[str, ...]:
    """Lightning precisions to train in: fp16 autocast is checked on CUDA only."""
    mixed = ("bf16-mixed", "16-mixed") if device == "cuda" else ("bf16-mixed",)
    return ("32-true", *mixed)


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def synthetic_batch(batch_size: int, length: int, sample_rate: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixtures (B, T), sources (B, 2, T)): a harmonic tone with a slow envelope and a
    band-limited noise burst per mixture, at random levels; separable by their spectra."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / sample_rate
    f0 = 100 + 150 * torch.rand(batch_size, 1, generator=gen)
    harmonics = torch.arange(1, 6)[:, None, None]  # (5, 1, 1)
    tone = (torch.sin(2 * math.pi * harmonics * f0 * t) / harmonics).sum(0)
    tone = tone * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t + torch.rand(batch_size, 1,
                                                                        generator=gen)))
    noise = torch.randn(batch_size, length, generator=gen)
    spec = torch.fft.rfft(noise)
    freqs = torch.fft.rfftfreq(length, 1 / sample_rate)
    spec[:, (freqs < 1500) | (freqs > 3500)] = 0  # a 1.5-3.5 kHz band
    noise = torch.fft.irfft(spec, n=length)
    sources = torch.stack([tone, noise], 1)
    sources = sources / sources.std(-1, keepdim=True)
    sources = sources * (0.5 + torch.rand(batch_size, 2, 1, generator=gen))
    return sources.sum(1), sources


class _Record(pl.Callback):
    """Training losses per step and the count of steps with non-finite gradients."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.nonfinite_grad_steps = 0

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        # after the fp16 loss scaler's unscale_; an inf here makes the scaler skip the step
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads or not all(bool(torch.isfinite(g).all()) for g in grads):
            self.nonfinite_grad_steps += 1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(name: str, precision: str, settings: CheckSettings, mix: torch.Tensor,
        sources: torch.Tensor, devices: int = 1, strategy: str = "auto",
        ) -> tuple[torch.nn.Module, _Record, pl.Trainer]:
    """`settings.steps` steps of `name` on (mix, sources) through experiments.training's system."""
    from experiments.training.system import SeparationSystem
    from experiments.training.trainer import build_loss, param_groups

    pl.seed_everything(settings.seed, verbose=False)
    model = build_model(name, sample_rate=settings.sample_rate, **settings.overrides(name))
    train_cfg = {"lr": settings.lr, "weight_decay": 0.0, "ssm_lr": None,
                 "batch_size": settings.batch_size, "num_workers": 0}
    optimizer = torch.optim.Adam(param_groups(model, train_cfg), lr=settings.lr)
    data = TensorDataset(mix, sources)
    record = _Record()
    with tempfile.TemporaryDirectory(prefix="devicecheck-") as tmp:
        config = {"model": name, "seed": settings.seed, "train": train_cfg, "out_dir": tmp}
        system = SeparationSystem(model, optimizer, build_loss("neg_sisdr"), data, data,
                                  ReduceLROnPlateau(optimizer), config)
        trainer = pl.Trainer(
            accelerator=settings.accelerator, devices=devices, strategy=strategy,
            precision=precision, max_steps=settings.steps, max_epochs=settings.steps,
            gradient_clip_val=settings.grad_clip, callbacks=[record], logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
            default_root_dir=tmp,
        )
        trainer.fit(system)
    return system.model, record, trainer


def evaluate(model: torch.nn.Module, mix: torch.Tensor, sources: torch.Tensor,
             precision: str, sample_rate: int) -> dict[str, float]:
    """Mean SI-SDR and SI-SDRi (dB) of the model's estimates, inferred on the model's device
    (under the precision's autocast), scored on the CPU by experiments.evaluation.metrics."""
    from experiments.evaluation.metrics import separation_metrics

    device = next(model.parameters()).device
    dtype = autocast_dtype(precision)
    model.eval()
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype,
                                                enabled=dtype is not None):
        est = model(mix.to(device)).float().cpu()
    scores = [separation_metrics(m, s, e, sample_rate)[0] for m, s, e in zip(mix, sources, est,
                                                                            strict=True)]
    return {k: sum(s[k] for s in scores) / len(scores) for k in ("si_sdr", "si_sdr_i")}


def speed(name: str, settings: CheckSettings) -> dict[str, Any]:
    """experiments.benchmark.speed.benchmark_model on the check's device."""
    from experiments.benchmark.speed import SpeedSettings, benchmark_model

    bench = SpeedSettings.defaults(device=settings.device, threads=settings.threads,
                                   infer_seconds=settings.speed_infer_s, warmup=1,
                                   repeats=settings.speed_repeats,
                                   train_batch=settings.batch_size,
                                   train_seconds=settings.speed_train_s, train_repeats=2,
                                   compile=False, bf16=False)
    model = build_model(name, sample_rate=settings.sample_rate, **settings.overrides(name))
    return benchmark_model(model, bench, settings.sample_rate, settings.seed)


# ---- checks and their table ---------------------------------------------------------------------

def _row(model: str, check: str, run: Callable[[], str]) -> dict[str, Any]:
    """Runs one check; an exception or an AssertionError is a FAIL row (traceback on stderr)."""
    started = time.monotonic()
    try:
        detail, status = run(), "ok"
    except Exception as err:  # every failure becomes a row; the check goes on
        traceback.print_exc(file=sys.stderr)
        detail, status = f"{type(err).__name__}: {err}".splitlines()[0][:160], "FAIL"
    return {"model": model, "check": check, "status": status, "detail": detail,
            "seconds": round(time.monotonic() - started, 1)}


def _train_and_eval(name: str, precision: str, settings: CheckSettings, mix: torch.Tensor,
                    sources: torch.Tensor) -> str:
    model, record, _ = fit(name, precision, settings, mix, sources)
    losses = record.losses
    assert len(losses) == settings.steps, f"{len(losses)} of {settings.steps} steps ran"
    assert all(math.isfinite(v) for v in losses), f"non-finite loss: {losses}"
    skipped = record.nonfinite_grad_steps
    # fp16's loss scaler skips the first steps while it lowers its scale (2**16 to start)
    # from overflowing gradients; at least 3 steps must update. Other precisions skip none.
    allowed = settings.steps - 3 if precision == "16-mixed" else 0
    assert skipped <= allowed, f"{skipped} steps with non-finite gradients"
    last = sum(losses[-2:]) / len(losses[-2:])  # the mean of the last two steps
    assert last < losses[0], f"loss not falling: {losses[0]:.3f} -> {last:.3f}"
    scores = evaluate(model, mix, sources, precision, settings.sample_rate)
    assert all(math.isfinite(v) for v in scores.values()), f"non-finite SI-SDR {scores}"
    return (f"loss {losses[0]:.2f} -> {last:.2f} in {len(losses)} steps"
            + (f" ({skipped} skipped)" if skipped else "")
            + f"; SI-SDR {scores['si_sdr']:.2f} dB, SI-SDRi {scores['si_sdr_i']:.2f} dB")


def _speed(name: str, settings: CheckSettings) -> str:
    result = speed(name, settings)
    values = [result[k] for k in ("infer_s_median", "train_step_s", "peak_mem_mb")]
    assert all(math.isfinite(v) and v >= 0 for v in values), f"bad timings {values}"
    if settings.device == "cuda":
        assert result["mem_method"] == "cuda_max_allocated", result["mem_method"]
        assert result["peak_mem_mb"] > 0, "no CUDA memory measured"
    return (f"infer {settings.speed_infer_s:g} s: {result['infer_s_median']:.4f} s "
            f"(RTF {result['rtf']:.4f}); train step {result['train_step_s']:.4f} s; "
            f"peak {result['peak_mem_mb']:.0f} MiB ({result['mem_method']}); {result['device']}")


def ddp_check(settings: CheckSettings, model: str = "s4m_tiny",
              precision: str = "bf16-mixed") -> str:
    """2-process DDP run of `model` in a fresh interpreter (Lightning relaunches it per rank);
    both ranks must end with the same weights."""
    command = [sys.executable, "-m", "tools.gpu_check", "--ddp-worker", "--device",
               settings.device, "--models", model, "--precision", precision,
               "--steps", str(settings.steps), "--threads", str(settings.threads)]
    if settings.tiny:
        command.append("--tiny")
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          timeout=settings.ddp_timeout_s)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(DDP_RESULT)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"DDP worker exited with {proc.returncode}; output above")
    result = json.loads(lines[-1].removeprefix(DDP_RESULT))
    digests, losses = result["digests"], result["losses"]
    assert result["world_size"] == 2 and len(digests) == 2, result
    assert len(set(digests)) == 1, f"ranks end with different weights: {digests}"
    assert all(math.isfinite(v) for v in losses), f"non-finite loss: {losses}"
    return (f"{model} {precision}, 2 ranks, {len(losses)} steps, loss {losses[0]:.2f} -> "
            f"{losses[-1]:.2f}, same weights on both ranks")


def ddp_worker(name: str, precision: str, settings: CheckSettings) -> None:
    """Body of each DDP rank: rank 0 prints the result line `ddp_check` reads."""
    mix, sources = synthetic_batch(2 * settings.batch_size, round(settings.segment_s
                                   * settings.sample_rate), settings.sample_rate, settings.seed)
    strategy = "ddp_find_unused_parameters_true"  # S4M's unused top-down fusion layer
    _, record, trainer = fit(name, precision, settings, mix, sources, devices=2,
                             strategy=strategy)
    if trainer.global_rank == 0:
        system = trainer.lightning_module
        print(DDP_RESULT + json.dumps({"world_size": trainer.world_size,
                                       "digests": system.rank_digests,
                                       "losses": record.losses}), flush=True)


def run_checks(settings: CheckSettings, models: Sequence[str],
               ddp: bool) -> list[dict[str, Any]]:
    """Every check's row, in order: per model each precision's training + evaluation, then
    its speed; the DDP run last (a `skip` row when `ddp` is false)."""
    torch.set_num_threads(settings.threads)
    length = round(settings.segment_s * settings.sample_rate)
    mix, sources = synthetic_batch(settings.batch_size, length, settings.sample_rate,
                                   settings.seed)
    rows = []
    for name in models:
        for precision in precisions(settings.device):
            rows.append(_row(name, f"train+eval {precision}",
                             lambda n=name, p=precision: _train_and_eval(n, p, settings, mix,
                                                                         sources)))
            _print_progress(rows[-1])
        rows.append(_row(name, "speed", lambda n=name: _speed(n, settings)))
        _print_progress(rows[-1])
    if ddp:
        rows.append(_row("s4m_tiny", "ddp x2", lambda: ddp_check(settings)))
    else:
        rows.append({"model": "s4m_tiny", "check": "ddp x2", "status": "skip",
                     "detail": "needs 2 GPUs" if settings.device == "cuda" else "not asked for",
                     "seconds": 0.0})
    return rows


def _print_progress(row: dict[str, Any]) -> None:
    print(f"[check] {row['model']} {row['check']}: {row['status']} ({row['seconds']} s)",
          file=sys.stderr, flush=True)


def format_rows(rows: Iterable[dict[str, Any]]) -> str:
    """One left-aligned text table: model, check, status, seconds, detail."""
    columns = ("model", "check", "status", "seconds", "detail")
    cells = [columns, *([str(row[c]) for c in columns] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def tiny_settings(device: str = "cpu") -> CheckSettings:
    """The configuration a CPU-only machine runs in seconds (and the tests use)."""
    return replace(CheckSettings(device=device, tiny=True), steps=4, segment_s=0.25,
                   speed_infer_s=0.25, speed_train_s=0.25, speed_repeats=1, lr=3e-3)
