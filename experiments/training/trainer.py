"""One trainer for every registry model (asteroid `System` on Lightning).

Settings come from params.yaml (`train`, `data`, `seed`, `threads`). Outputs under `out_dir`:
`checkpoints/{last,best}.ckpt`, `dvclive/` (metrics JSON and curves, rank 0), `model.pt`
(registry `save_model`, best or last weights per `train.export`) and `train_metrics.json`. A run
started again in the same folder resumes from `checkpoints/last.ckpt`. Data order and crops
depend only on (seed, epoch, index) and the RNG states travel in the checkpoints, so on CPU a
resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import soundfile as sf
import torch
from asteroid.engine.system import System
from asteroid.losses import PITLossWrapper, pairwise_neg_sisdr, pairwise_neg_snr
from asteroid.utils import flatten_dict
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau
from torch.utils.data import DataLoader, Dataset, Sampler

from experiments.atomic import atomic_path, write_json
from experiments.config import ConfigError, apply_overrides, parse_override, require

LOSSES = {"neg_sisdr": pairwise_neg_sisdr, "neg_snr": pairwise_neg_snr}
SCHEDULES = ("plateau", "cosine")
TRAIN_KEYS = (
    "segment_s", "batch_size", "max_steps", "max_epochs", "max_time_s", "lr", "loss",
    "weight_decay", "ssm_lr", "grad_clip", "schedule", "warmup_steps", "lr_factor",
    "lr_patience", "early_stop_patience",
    "val_check_interval", "limit_val_batches", "log_every_n_steps", "export", "accelerator",
    "devices", "num_nodes", "strategy", "num_workers", "precision", "progress_bar", "compile",
)
CKPT_DIR, LAST, BEST = "checkpoints", "last.ckpt", "best.ckpt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stops and keeps its last good checkpoint."""


# ---------------------------------------------------------------------------------- data order
class SeededItems(Dataset):
    """Wraps an asteroid dataset so that each item's random crop comes from the seed its key
    carries (asteroid draws crops from the global `random` / `np.random`, whose state would
    otherwise depend on everything drawn before: workers, restarts, other ranks)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, item_seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(item_seed)
        np.random.seed(item_seed % 2**32)
        try:
            mixture, sources = self.dataset[index][:2]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        return mixture, sources


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (index, item seed): a permutation fixed by (seed, epoch), sharded over ranks with
    equal counts, and able to skip the batches a resumed run already trained on."""

    def __init__(self, size: int, seed: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        self.size, self.seed, self.batch_size = size, seed, batch_size
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.per_rank = size // world_size
        self.epoch = 0
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches already done)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch if self.shuffle else 0
        order = torch.arange(self.size)
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(
                self.seed * 1_000_003 + epoch))
        order = order[: self.per_rank * self.world_size][self.rank :: self.world_size].tolist()
        skip = 0
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            skip = self.resume_at[1] * self.batch_size
        self.resume_at = None
        for index in order[skip:]:
            yield index, (self.seed * 1_000_003 + epoch) * 100_003 + index


# ---------------------------------------------------------------------------------- the system
class SeparationSystem(System):
    """asteroid `System` with sharded, resumable loaders; the lr schedule of `train.schedule`
    (plateau: after each validation, at any validation interval; cosine: after each step); a
    stop on non-finite losses. Each validation also logs the mixture's own loss, so that
    `val_sisdri` (the estimate's SI-SDR minus the mixture's, under neg_sisdr) is exact, and the
    training wall seconds so far (`wall_s`, summed over resumptions)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_func: torch.nn.Module, train_set: Dataset, val_set: Dataset,
                 scheduler: ReduceLROnPlateau | LambdaLR, config: dict[str, Any]) -> None:
        super().__init__(model, optimizer, loss_func, train_loader=None, config=config)
        self.train_set, self.val_set = SeededItems(train_set), SeededItems(val_set)
        self.plateau = scheduler if isinstance(scheduler, ReduceLROnPlateau) else None
        self.per_step = None if self.plateau else scheduler
        self.resume_at: tuple[int, int] | None = None
        # batches done in this epoch (resumed ones included): global_step - epoch_start_step,
        # one optimizer step per batch (no gradient accumulation)
        self.epoch_start_step = 0
        self.resumed_epoch: int | None = None
        self.rank_digests: list[str] = []
        self.wall_before, self.fit_started = 0.0, time.monotonic()

    @staticmethod
    def config_to_hparams(dic: dict[str, Any]) -> dict[str, Any]:
        """Flat, logger-friendly copy (asteroid's turns lists into tensors, failing on strings)."""
        return {k: v if isinstance(v, int | float | str | bool) else json.dumps(v)
                for k, v in flatten_dict(dic).items()}

    def _loader(self, dataset: SeededItems, shuffle: bool) -> DataLoader:
        train = self.config["train"]
        sampler = EpochSampler(len(dataset), self.config["seed"], train["batch_size"],
                               self.trainer.global_rank, self.trainer.world_size, shuffle)
        if shuffle:
            sampler.resume_at, self.resume_at = self.resume_at, None
        workers = train["num_workers"]
        return DataLoader(dataset, batch_size=train["batch_size"], sampler=sampler,
                          drop_last=shuffle, num_workers=workers, persistent_workers=workers > 0,
                          generator=torch.Generator().manual_seed(self.config["seed"]))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def configure_optimizers(self) -> Any:
        if self.per_step is None:
            return self.optimizer
        return {"optimizer": self.optimizer,
                "lr_scheduler": {"scheduler": self.per_step, "interval": "step"}}

    def on_train_start(self) -> None:
        self.fit_started = time.monotonic()

    def wall_s(self) -> float:
        """Training wall seconds so far, over every resumption of this run."""
        return self.wall_before + time.monotonic() - self.fit_started

    def common_step(self, batch: Any, batch_nb: int, train: bool = True) -> torch.Tensor:
        """asteroid's step with the loss in float32 under mixed precision: SI-SDR's energy
        ratios and PIT's permutation reduction (a GEMM) lose their digits in half precision."""
        inputs, targets = batch
        est_targets = self(inputs)
        with torch.autocast(est_targets.device.type, enabled=False):
            return self.loss_func(est_targets.float(), targets.float())

    def training_step(self, batch: Any, batch_nb: int) -> torch.Tensor:
        loss = self.common_step(batch, batch_nb, train=True)
        finite = bool(torch.isfinite(loss.detach()).item())
        if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            self._stop(f"training loss is {loss.item()} at step {self.global_step}")
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch: Any, batch_nb: int) -> None:
        loss = self.common_step(batch, batch_nb, train=False)
        inputs, targets = batch
        mixture_as_estimates = inputs.unsqueeze(1).expand_as(targets).float()
        mixture_loss = self.loss_func(mixture_as_estimates, targets.float())
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val_sisdri", mixture_loss - loss, on_epoch=True, sync_dist=True)

    def on_train_epoch_start(self) -> None:
        if self.resumed_epoch != self.current_epoch:
            self.epoch_start_step = self.global_step
        self.resumed_epoch = None

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        val_loss = self.trainer.callback_metrics["val_loss"]
        if not torch.isfinite(val_loss):
            self._stop(f"validation loss is {val_loss.item()} at step {self.global_step}")
        if self.plateau is not None:
            self.plateau.step(val_loss.item())
        self.log("lr", self.optimizer.param_groups[0]["lr"], sync_dist=False)
        self.log("wall_s", self.wall_s(), sync_dist=False)

    def _stop(self, what: str) -> None:
        ckpt = Path(self.config["out_dir"]) / CKPT_DIR / LAST
        kept = f"last good checkpoint kept at {ckpt}" if ckpt.is_file() else "no checkpoint yet"
        raise NonFiniteLossError(
            f"train: {what} (model {self.config['model']}); stopped. {kept}. Lower train.lr "
            "or train.grad_clip, or check the data for NaN/silent files."
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        np_state = np.random.get_state()
        checkpoint["resume"] = {
            "epoch": self.trainer.current_epoch,
            "batches_done": self.global_step - self.epoch_start_step,
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
            "wall_s": self.wall_s(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                          *np_state[2:]],
            "python_rng": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["resume"]
        self.resume_at = (state["epoch"], state["batches_done"])
        self.resumed_epoch = state["epoch"]
        self.epoch_start_step = checkpoint["global_step"] - state["batches_done"]
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
        self.wall_before = float(state.get("wall_s", 0.0))
        torch.set_rng_state(state["torch_rng"])
        kind, keys, *rest = state["numpy_rng"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
        random.setstate(_as_tuples(state["python_rng"]))

    def on_train_end(self) -> None:
        digest = torch.frombuffer(bytearray(weights_digest(self.model)), dtype=torch.uint8)
        gathered = self.trainer.strategy.all_gather(digest).reshape(-1, digest.numel())
        self.rank_digests = [bytes(row.tolist()).hex() for row in gathered]


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def weights_digest(model: torch.nn.Module) -> bytes:
    """sha256 over every parameter and buffer, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary name first: a run killed mid-write keeps the old file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


# ---------------------------------------------------------------------------------- config
def parse_overrides(items: list[str], cfg: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """`a.b=v` (and `seed=v`, `threads=v`) -> copy of cfg with that existing setting replaced;
    `k=v` -> model override."""
    settings, model_overrides = [], {}
    for item in items:
        key, value = parse_override(item, "--override")
        if "." not in key and key not in ("seed", "threads"):
            model_overrides[key] = value
        else:
            settings.append(item)
    return apply_overrides(cfg, settings, "--override"), model_overrides


def train_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    train = {key: require(cfg, f"train.{key}") for key in TRAIN_KEYS}
    if train["loss"] not in LOSSES:
        raise ConfigError(f"params.yaml: train.loss={train['loss']!r}; use one of {list(LOSSES)}")
    if train["export"] not in ("best", "last"):
        raise ConfigError(f"params.yaml: train.export={train['export']!r}; use best or last")
    for key in ("batch_size", "max_epochs", "num_nodes"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ConfigError(f"params.yaml: train.{key} must be a positive integer")
    if not (isinstance(train["segment_s"], int | float) and train["segment_s"] > 0):
        raise ConfigError("params.yaml: train.segment_s must be a positive number of seconds")
    if train["schedule"] not in SCHEDULES:
        raise ConfigError(f"params.yaml: train.schedule={train['schedule']!r}; use one of "
                          f"{list(SCHEDULES)}")
    if not isinstance(train["warmup_steps"], int) or train["warmup_steps"] < 0:
        raise ConfigError("params.yaml: train.warmup_steps must be a non-negative integer")
    patience = train["early_stop_patience"]
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ConfigError("params.yaml: train.early_stop_patience must be a positive integer "
                          "or null (no early stopping)")
    if not isinstance(train["compile"], bool):
        raise ConfigError(f"params.yaml: train.compile={train['compile']!r}; use true or false")
    return train


# ---------------------------------------------------------------------------------- data checks
def _dataset_location(dataset: Any) -> str:
    return str(getattr(dataset, "csv_dir", None) or getattr(dataset, "json_dir", None) or dataset)


def _first_mixture_path(dataset: Any) -> str:
    if hasattr(dataset, "df"):  # asteroid LibriMix
        return str(dataset.df.iloc[0]["mixture_path"])
    if hasattr(dataset, "mix"):  # asteroid WhamDataset: [path, length] rows
        return str(dataset.mix[0][0])
    raise ValueError(f"train: cannot find the audio files of dataset {type(dataset).__name__}")


def _longest_s(dataset: Any, sample_rate: int) -> float:
    if hasattr(dataset, "df"):
        return float(dataset.df["length"].max()) / sample_rate
    return max(length for _, length in dataset.mix) / sample_rate


def load_split(data_cfg: dict[str, Any], split: str, segment_s: float,
               model_rate: int) -> Dataset:
    """make_dataset's split, checked: utterances at least one segment long, files at the
    model's sample rate. Clear ValueError otherwise, before any training."""
    from experiments.data import make_dataset

    dataset = make_dataset(data_cfg, split, segment_s)
    where = _dataset_location(dataset)
    if len(dataset) == 0:
        full = make_dataset(data_cfg, split, None)
        longest = _longest_s(full, data_cfg["sample_rate"]) if len(full) else 0.0
        raise ValueError(
            f"{split} split ({where}): no utterance is at least train.segment_s={segment_s} s "
            f"long (longest: {longest:.2f} s); lower train.segment_s or use longer data"
        )
    path = _first_mixture_path(dataset)
    file_rate = sf.info(path).samplerate
    for what, rate in (("file " + path, file_rate), ("data.sample_rate", data_cfg["sample_rate"])):
        if rate != model_rate:
            raise ValueError(
                f"{split} split ({where}): {what} is at {rate} Hz but the model runs at "
                f"{model_rate} Hz; prepare the data at the model's rate or set data.sample_rate"
            )
    return dataset


# ---------------------------------------------------------------------------------- training
def build_loss(name: str) -> torch.nn.Module:
    return PITLossWrapper(LOSSES[name], pit_from="pw_mtx")


def lr_schedule(optimizer: torch.optim.Optimizer,
                train: dict[str, Any]) -> ReduceLROnPlateau | LambdaLR:
    """`train.schedule` plateau: the lr times lr_factor after lr_patience validations without
    improvement. cosine: a linear warm-up over warmup_steps, then a half cosine from the peak
    lr to 0 at max_steps (a fixed step budget is then required)."""
    if train["schedule"] == "plateau":
        return ReduceLROnPlateau(optimizer, mode="min", factor=train["lr_factor"],
                                 patience=train["lr_patience"])
    total, warmup = train["max_steps"], train["warmup_steps"]
    if not isinstance(total, int) or total < 1:
        raise ConfigError("params.yaml: train.schedule cosine needs a step budget "
                          f"(train.max_steps or budget mode macs), got max_steps={total}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def param_groups(model: torch.nn.Module, train: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's own groups where it defines `param_groups(lr, weight_decay, ssm_lr)` (S4M:
    SSM params without weight decay, with their own lr), else one group."""
    own = getattr(model, "param_groups", None)
    if callable(own):
        return own(train["lr"], train["weight_decay"], train["ssm_lr"])
    return [{"params": [p for p in model.parameters() if p.requires_grad],
             "weight_decay": train["weight_decay"]}]


def _exported_state(out_dir: Path, export: str, system: SeparationSystem) -> dict[str, Any]:
    best = out_dir / CKPT_DIR / BEST
    if export == "best" and best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    return system.model.state_dict()


def _stopped_by(trainer: pl.Trainer, train: dict[str, Any],
                stopper: EarlyStopping | None) -> str:
    if stopper and (stopper.stopped_epoch > 0 or stopper.wait_count >= stopper.patience):
        return "early_stopping"
    if train["max_steps"] not in (None, -1) and trainer.global_step >= train["max_steps"]:
        return "max_steps"
    if trainer.current_epoch >= train["max_epochs"]:
        return "max_epochs"
    return "max_time" if train["max_time_s"] else "unknown"


def train(cfg: dict[str, Any], model_name: str, out_dir: str | Path,
          model_overrides: dict[str, Any] | None = None,
          budget: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Trains `model_name` on the prepared data; returns train_metrics (None on ranks > 0).
    `budget` (experiments.training.budget.resolve_budget) is recorded in the metrics, with the
    training MACs it implies when it knows the MACs per step."""
    from experiments.registry import build_model, save_model

    started = time.monotonic()
    out_dir, model_overrides = Path(out_dir), dict(model_overrides or {})
    train_cfg, data_cfg = train_settings(cfg), require(cfg, "data")
    seed, threads = int(require(cfg, "seed")), int(require(cfg, "threads"))
    torch.set_num_threads(threads)
    pl.seed_everything(seed, workers=True, verbose=False)

    model = build_model(model_name, sample_rate=require(cfg, "data.sample_rate"),
                        **model_overrides)
    model_rate = int(getattr(model, "sample_rate", data_cfg["sample_rate"]))
    if train_cfg["compile"]:
        model.compile()  # in place: the state dict, checkpoints and export keep their keys
    train_set = load_split(data_cfg, "train", train_cfg["segment_s"], model_rate)
    val_set = load_split(data_cfg, "dev", train_cfg["segment_s"], model_rate)

    optimizer = torch.optim.Adam(param_groups(model, train_cfg), lr=train_cfg["lr"])
    run_config = {"model": model_name, "model_overrides": model_overrides, "seed": seed,
                  "train": train_cfg, "data": data_cfg, "out_dir": str(out_dir)}
    system = SeparationSystem(model, optimizer, build_loss(train_cfg["loss"]), train_set,
                              val_set, lr_schedule(optimizer, train_cfg), run_config)

    ckpt_dir = out_dir / CKPT_DIR
    last = ckpt_dir / LAST
    resume = last.is_file() and _same_run(last, run_config)
    best_ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename=BEST.removesuffix(".ckpt"),
                                monitor="val_loss", mode="min", save_top_k=1, save_last=True,
                                auto_insert_metric_name=False, enable_version_counter=False)
    # checked after each validation only: a run that stops mid-epoch (max_steps) has no
    # val_loss at the end of that epoch
    patience = train_cfg["early_stop_patience"]
    stopper = None if patience is None else EarlyStopping(
        monitor="val_loss", mode="min", check_on_train_epoch_end=False, patience=patience)
    interval, steps = train_cfg["val_check_interval"], train_cfg["max_steps"]
    if interval and steps is not None and steps > 0:
        interval = min(interval, steps)  # a budget shorter than the interval still validates
    max_time = train_cfg["max_time_s"]
    trainer = pl.Trainer(
        accelerator=train_cfg["accelerator"], devices=train_cfg["devices"],
        num_nodes=train_cfg["num_nodes"], strategy=train_cfg["strategy"],
        precision=train_cfg["precision"],
        max_steps=train_cfg["max_steps"] if train_cfg["max_steps"] is not None else -1,
        max_epochs=train_cfg["max_epochs"],
        max_time=dt.timedelta(seconds=max_time) if max_time else None,
        val_check_interval=interval, check_val_every_n_epoch=None if interval else 1,
        limit_val_batches=train_cfg["limit_val_batches"],
        gradient_clip_val=train_cfg["grad_clip"], gradient_clip_algorithm="norm",
        callbacks=[best_ckpt] + ([stopper] if stopper else []), plugins=[AtomicCheckpointIO()],
        logger=steps_done_logger(out_dir / "dvclive", resume),
        log_every_n_steps=train_cfg["log_every_n_steps"],
        enable_progress_bar=train_cfg["progress_bar"], enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False,
        default_root_dir=str(out_dir),
    )
    with warnings.catch_warnings():
        # EpochSampler resumes mid-epoch itself; Lightning cannot see that and warns otherwise
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        fit_started = time.monotonic()
        trainer.fit(system, ckpt_path=str(last) if resume else None, weights_only=True)
        fit_time = time.monotonic() - fit_started
        train_wall = system.wall_s()
    if trainer.interrupted:
        raise KeyboardInterrupt(f"train: interrupted; run again to resume from {last}")
    trainer.save_checkpoint(last, weights_only=False)  # the final state: a rerun stops at once
    if trainer.global_rank != 0:
        return None

    final_model = build_model(model_name, sample_rate=model_rate, **model_overrides)
    final_model.load_state_dict(_exported_state(out_dir, train_cfg["export"], system))
    save_model(final_model, out_dir / "model.pt")
    best_score = best_ckpt.best_model_score
    metrics = {
        "model": model_name, "model_overrides": model_overrides, "profile": cfg.get("profile"),
        "steps": trainer.global_step, "epochs": trainer.current_epoch,
        "wall_time_s": round(time.monotonic() - started, 2),
        "fit_time_s": round(fit_time, 2),
        "train_wall_s": round(train_wall, 2),  # fitting, summed over resumptions
        "best_val_loss": None if best_score is None else float(best_score),
        "loss": train_cfg["loss"], "stopped_by": _stopped_by(trainer, train_cfg, stopper),
        "resumed": resume, "exported": "best" if (ckpt_dir / BEST).is_file()
        and train_cfg["export"] == "best" else "last",
        "threads": threads, "world_size": trainer.world_size,
        "params": sum(p.numel() for p in final_model.parameters()),
        "rank_weight_digests": system.rank_digests,
    }
    if budget is not None:
        metrics["budget"] = budget
        if "gmacs_per_step" in budget:
            metrics["train_gmacs"] = trainer.global_step * budget["gmacs_per_step"]
    write_json(out_dir / "train_metrics.json", metrics)
    return metrics


# Settings that may change between a run and its resumption: budgets may grow (e.g. a longer
# max_time_s); the progress bar and compiling change no result.
BUDGET_KEYS = ("max_steps", "max_epochs", "max_time_s", "progress_bar", "compile")
LIMITS = ("max_steps", "max_epochs", "max_time_s")  # None or -1: no limit


def steps_done_logger(directory: Path, resume: bool) -> Any:
    """DVCLive's Lightning logger with every metric logged at the optimizer steps done.

    Lightning logs the k-th step's training loss, and the validation after it, at step k - 1;
    DVCLive 3.x's logger reads step 0 as "no step" and writes it at its previous step + 1, which
    put the first validation after the second step's loss. Shifted by one, the steps are exact
    and never 0."""
    from dvclive.lightning import DVCLiveLogger

    class StepsDoneLogger(DVCLiveLogger):
        def log_metrics(self, metrics: Any, step: int | None = None, sync: bool = False) -> None:
            super().log_metrics(metrics, None if step is None else step + 1, sync)

    return StepsDoneLogger(dir=str(directory), resume=resume, save_dvc_exp=False, dvcyaml=None)


def _same_run(last: Path, run_config: dict[str, Any]) -> bool:
    """Whether `last` belongs to this run: same model, seed, data and training settings, and
    a budget no smaller than the one it was trained under. Otherwise it is moved aside and
    training starts afresh: a changed setting (a `dvc exp run -S ...`) must not fail or
    resume the wrong run, and a lowered budget must not keep a model trained for longer than
    the settings say."""
    saved = torch.load(last, map_location="cpu", weights_only=True).get("training_config", {})

    def key(config: dict[str, Any]) -> dict[str, Any]:
        train = {k: v for k, v in config.get("train", {}).items() if k not in BUDGET_KEYS}
        return {k: config.get(k) for k in ("model", "model_overrides", "seed", "data")} | {
            "train": train}

    def limit(value: Any) -> float:
        return math.inf if value in (None, -1) else float(value)

    old, new = saved.get("train", {}), run_config["train"]
    lowered = [f"train.{k} {old.get(k)} -> {new[k]}" for k in LIMITS
               if limit(new[k]) < limit(old.get(k))]
    if key(saved) == key(run_config) and not lowered:
        return True
    stale = last.parent.with_name(last.parent.name + ".stale")
    if stale.exists():
        shutil.rmtree(stale)
    os.replace(last.parent, stale)
    why = f"was trained with a larger budget ({', '.join(lowered)})" if lowered else (
        "is a checkpoint of other settings")
    print(f"train: {last} {why}; moved to {stale}, starting afresh", file=sys.stderr)
    return False
