"""experiments.training: resume equivalence, 2-process DDP, NaN stop, bad data, outputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml

from experiments.config import ConfigError, load_profile
from experiments.data.synthetic import build_synthetic_dataset
from experiments.registry import load_model
from experiments.training import trainer as trainer_module
from experiments.training.system import NonFiniteLossError
from experiments.training.trainer import parse_overrides, train

REPO = Path(__file__).resolve().parents[1]
TINY_CONVTASNET = dict(n_filters=16, bn_chan=16, hid_chan=16, skip_chan=16, n_blocks=2,
                       n_repeats=1)
# DPRNN with dropout: the resumed run must also replay the dropout masks.
TINY_DPRNN = dict(n_filters=16, kernel_size=16, stride=8, bn_chan=16, hid_size=16,
                  chunk_size=20, hop_size=10, n_repeats=1, dropout=0.3)
TINY_TRAIN = dict(segment_s=0.5, batch_size=2, max_steps=-1, max_epochs=2, max_time_s=None,
                  lr=0.01, val_check_interval=None, limit_val_batches=None, log_every_n_steps=1,
                  progress_bar=False, early_stop_patience=50)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    build_synthetic_dataset(root, n_train=6, n_dev=2, n_test=2, n_speakers=6, seed=0,
                            types=("mix_clean",), workers=1, progress=False)
    return root


def _cfg(data_dir: Path, **train: Any) -> dict[str, Any]:
    cfg = load_profile(REPO / "params.yaml", "smoke")
    cfg["data"].update(out_dir=str(data_dir), task="sep_clean")
    cfg["train"].update(TINY_TRAIN, **train)
    cfg["threads"] = 1
    return cfg


def _last_weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


@pytest.mark.parametrize(("model", "overrides", "val_every", "crash_at"), [
    ("convtasnet", TINY_CONVTASNET, None, 4),  # last checkpoint at the end of epoch 1
    ("dprnn", TINY_DPRNN, 2, 5),  # last checkpoint mid-epoch 2 (3 steps per epoch)
])
def test_resumed_run_ends_with_the_uninterrupted_weights(
        prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str,
        overrides: dict, val_every: int | None, crash_at: int) -> None:
    cfg = _cfg(prepared, val_check_interval=val_every)
    full = train(cfg, model, tmp_path / "full", overrides)
    assert full is not None and full["steps"] == 6 and full["epochs"] == 2

    original_step = trainer_module.SeparationSystem.training_step

    def crash(self, batch, batch_nb):  # the process dies at step `crash_at`
        if self.global_step == crash_at:
            raise RuntimeError("simulated crash")
        return original_step(self, batch, batch_nb)

    monkeypatch.setattr(trainer_module.SeparationSystem, "training_step", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, model, tmp_path / "resumed", overrides)
    saved_step = torch.load(tmp_path / "resumed/checkpoints/last.ckpt",
                            weights_only=True)["global_step"]
    assert 0 < saved_step < crash_at
    monkeypatch.setattr(trainer_module.SeparationSystem, "training_step", original_step)
    resumed = train(cfg, model, tmp_path / "resumed", overrides)
    assert resumed is not None and resumed["resumed"] and resumed["steps"] == 6

    a, b = _last_weights(tmp_path / "full"), _last_weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert full["rank_weight_digests"] == resumed["rank_weight_digests"]
    other_seed = train(dict(cfg, seed=1), model, tmp_path / "seed1", overrides)
    assert other_seed["rank_weight_digests"] != full["rank_weight_digests"]  # test can fail


def test_a_sigterm_stops_training_with_an_error_and_a_rerun_resumes(
        prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning ends a fit on SIGTERM (a cluster's preemption, a stopped results run) as if it
    had succeeded; the trainer must fail instead, without outputs, so that no caller takes the
    run for finished."""
    cfg = _cfg(prepared, val_check_interval=2)
    original_step = trainer_module.SeparationSystem.training_step

    def preempted(self, batch, batch_nb):
        if self.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original_step(self, batch, batch_nb)

    monkeypatch.setattr(trainer_module.SeparationSystem, "training_step", preempted)
    with pytest.raises(KeyboardInterrupt, match="stopped by SIGTERM"):
        train(cfg, "convtasnet", tmp_path, TINY_CONVTASNET)
    assert not (tmp_path / "model.pt").exists()
    assert not (tmp_path / "train_metrics.json").exists()
    monkeypatch.setattr(trainer_module.SeparationSystem, "training_step", original_step)
    resumed = train(cfg, "convtasnet", tmp_path, TINY_CONVTASNET)
    assert resumed is not None and resumed["resumed"] and resumed["steps"] == 6


def test_outputs_model_metrics_and_curves(prepared: Path, tmp_path: Path) -> None:
    metrics = train(_cfg(prepared, max_epochs=1), "convtasnet", tmp_path, TINY_CONVTASNET)
    on_disk = json.loads((tmp_path / "train_metrics.json").read_text())
    assert on_disk == metrics
    assert metrics["steps"] == 3 and metrics["stopped_by"] == "max_epochs"
    assert np.isfinite(metrics["best_val_loss"]) and metrics["exported"] == "best"
    model = load_model(tmp_path / "model.pt")
    assert sum(p.numel() for p in model.parameters()) == metrics["params"]
    best = torch.load(tmp_path / "checkpoints/best.ckpt", weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, best[f"model.{key}"]), key
    live = json.loads((tmp_path / "dvclive/metrics.json").read_text())
    assert "loss" in live["val"]
    # curves are indexed by optimizer steps done: a loss per step, one validation (epoch end)
    curve = dict(train="train/loss", val="val/loss")
    steps = {k: pd.read_csv(tmp_path / "dvclive/plots/metrics" / f"{v}.tsv", sep="\t")["step"]
             for k, v in curve.items()}
    assert list(steps["train"]) == [1, 2, 3] and list(steps["val"]) == [3]
    again = train(_cfg(prepared, max_epochs=1), "convtasnet", tmp_path, TINY_CONVTASNET)
    assert again["resumed"] and again["steps"] == 3  # a finished run does no more steps
    lowered = train(_cfg(prepared, max_epochs=1, max_steps=2), "convtasnet", tmp_path,
                    TINY_CONVTASNET)
    assert not lowered["resumed"] and lowered["steps"] == 2  # a smaller budget trains afresh
    raised = train(_cfg(prepared, max_epochs=2, max_steps=4), "convtasnet", tmp_path,
                   TINY_CONVTASNET)
    assert raised["resumed"] and raised["steps"] > 2  # a larger one goes on
    other = train(_cfg(prepared, max_epochs=1), "convtasnet", tmp_path, {"n_filters": 8})
    assert not other["resumed"] and other["steps"] == 3  # other settings train afresh
    assert (tmp_path / "checkpoints.stale" / "last.ckpt").is_file()


def test_compiled_training_matches_eager_and_exports_plain_weights(
        prepared: Path, tmp_path: Path) -> None:
    from torch._dynamo.utils import counters

    eager = train(_cfg(prepared, max_epochs=1), "convtasnet", tmp_path / "eager", TINY_CONVTASNET)
    counters.clear()
    compiled = train(_cfg(prepared, max_epochs=1, compile=True), "convtasnet",
                     tmp_path / "compiled", TINY_CONVTASNET)
    assert counters["stats"]["unique_graphs"] > 0  # the model ran through dynamo
    assert compiled["steps"] == eager["steps"] == 3
    plain, fast = (load_model(tmp_path / run / "model.pt").state_dict()
                   for run in ("eager", "compiled"))
    assert plain.keys() == fast.keys()  # no `_orig_mod.` prefixes in checkpoints or exports
    for key in plain:  # the same run up to float rounding (inductor reorders sums)
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-3, atol=1e-4, msg=key)
    with pytest.raises(ConfigError, match="train.compile"):
        train(_cfg(prepared, compile="yes"), "convtasnet", tmp_path / "bad", TINY_CONVTASNET)


def test_ddp_two_processes_end_with_the_same_weights(prepared: Path, tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["profiles"]["smoke"]["data"]["out_dir"] = str(prepared)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    overrides = [f"{k}={v}" for k, v in TINY_CONVTASNET.items()] + [
        f"train.{k}={'null' if v is None else v}" for k, v in TINY_TRAIN.items()]
    overrides += ["train.max_epochs=3", "train.accelerator=cpu", "train.devices=2",
                  "train.strategy=ddp_find_unused_parameters_true", "threads=1"]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-m", "experiments.stages.train", "--model", "convtasnet", "--out",
         str(tmp_path / "run"), "--params", str(tmp_path / "params.yaml"),
         "--override", *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    metrics = json.loads((tmp_path / "run/train_metrics.json").read_text())
    assert metrics["world_size"] == 2
    digests = metrics["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert metrics["steps"] == 3  # 6 utterances / 2 ranks / batch 2 = 1 step per epoch
    load_model(tmp_path / "run/model.pt")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
        prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_loss = trainer_module.build_loss
    calls = {"train": 0}

    def poisoned(name: str) -> torch.nn.Module:
        loss = real_loss(name)

        def forward(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
            value = loss(est, ref)
            if torch.is_grad_enabled():
                calls["train"] += 1
                if calls["train"] == 5:
                    return value * float("nan")
            return value
        return forward  # type: ignore[return-value]

    monkeypatch.setattr(trainer_module, "build_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="training loss is nan at step 4.*kept at"):
        train(_cfg(prepared, max_epochs=3, val_check_interval=2), "convtasnet", tmp_path,
              TINY_CONVTASNET)
    kept = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert kept["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values())
    assert not (tmp_path / "model.pt").exists()


def test_segment_longer_than_every_utterance_is_an_error(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"train split .*segment_s=60"):
        train(_cfg(prepared, segment_s=60.0), "convtasnet", tmp_path, TINY_CONVTASNET)
    assert not (tmp_path / "checkpoints").exists()


def test_sample_rate_mismatch_is_an_error(prepared: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    from experiments.data import make_dataset

    first = make_dataset(_cfg(data)["data"], "train", 0.5).df.iloc[0]["mixture_path"]
    wav, rate = sf.read(first)
    sf.write(first, wav, rate * 2)  # same samples, header says 16 kHz
    with pytest.raises(ValueError, match="16000 Hz but the model runs at 8000 Hz"):
        train(_cfg(data), "convtasnet", tmp_path / "run", TINY_CONVTASNET)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_overrides_split_settings_from_model_arguments() -> None:
    cfg = load_profile(REPO / "params.yaml", "smoke")
    new, model = parse_overrides(["train.lr=0.5", "num_scales=3", "ssm=s4d", "seed=7"], cfg)
    assert new["train"]["lr"] == 0.5 and new["seed"] == 7 and cfg["train"]["lr"] != 0.5
    assert model == {"num_scales": 3, "ssm": "s4d"}
    # exponent floats without a dot are floats (YAML 1.1 alone reads them as strings)
    new, model = parse_overrides(["train.lr=3e-3", "train.grad_clip=1E1", "ssm=s4d"], cfg)
    assert new["train"]["lr"] == 0.003 and new["train"]["grad_clip"] == 10.0
    with pytest.raises(ConfigError, match="no such setting"):
        parse_overrides(["data.no_such_key=1"], cfg)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"], cfg)
    with pytest.raises(ConfigError, match="train.loss"):
        train(dict(cfg, train=dict(cfg["train"], loss="l1")), "convtasnet", "unused")


def test_validation_logs_si_sdr_improvement_whatever_the_training_loss(monkeypatch) -> None:
    """`val_sisdri` (the curves, the results' time-to-5-dB) is the SI-SDRi of the estimates:
    under neg_snr its old form (the mixture's loss minus the estimate's) was an SNR gain, which a
    model earns by halving the mixture (+3 dB) without separating anything."""
    from asteroid.losses import PITLossWrapper
    from torch.optim.lr_scheduler import LambdaLR

    from experiments.evaluation.metrics import si_sdr
    from experiments.registry import build_model
    from experiments.training.system import SeparationSystem

    torch.manual_seed(0)
    model = build_model("convtasnet", sample_rate=8000, **TINY_CONVTASNET).eval()
    sources = torch.randn(2, 2, 4000)
    mixture = sources.sum(1)
    logged: dict[tuple[str, str], float] = {}
    for name in ("neg_sisdr", "neg_snr"):
        optimizer = torch.optim.Adam(model.parameters())
        system = SeparationSystem(model, optimizer,
                                  PITLossWrapper(trainer_module.LOSSES[name], pit_from="pw_mtx"),
                                  [], [], LambdaLR(optimizer, lambda step: 1.0), {})
        monkeypatch.setattr(system, "log", lambda key, value, name=name, **_: logged.__setitem__(
            (name, key), float(value)))
        with torch.no_grad():
            system.validation_step((mixture, sources), 0)
    with torch.no_grad():
        estimates = model(mixture)
    # the best permutation's SI-SDR gain over the mixture, averaged over the batch
    gains = [max(si_sdr(estimates[b, list(order)], sources[b]).mean() for order in ((0, 1), (1, 0)))
             - si_sdr(mixture[b].expand(2, -1), sources[b]).mean() for b in range(2)]
    expected = float(sum(gains) / 2)
    assert logged[("neg_sisdr", "val_sisdri")] == pytest.approx(expected, abs=1e-3)
    assert logged[("neg_snr", "val_sisdri")] == pytest.approx(expected, abs=1e-3)
    assert logged[("neg_snr", "val_loss")] != pytest.approx(logged[("neg_sisdr", "val_loss")])
