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
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import soundfile as sf
import torch
from asteroid.losses import PITLossWrapper, pairwise_neg_sisdr, pairwise_neg_snr
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau
from torch.utils.data import Dataset

from experiments.atomic import write_json
from experiments.config import ConfigError, apply_overrides, parse_override, require
from experiments.training.system import (
    BEST,
    CKPT_DIR,
    LAST,
    AtomicCheckpointIO,
    SeparationSystem,
)

LOSSES = {"neg_sisdr": pairwise_neg_sisdr, "neg_snr": pairwise_neg_snr}
SCHEDULES = ("plateau", "cosine")
TRAIN_KEYS = (
    "segment_s", "batch_size", "max_steps", "max_epochs", "max_time_s", "lr", "loss",
    "weight_decay", "ssm_lr", "grad_clip", "schedule", "warmup_steps", "lr_factor",
    "lr_patience", "early_stop_patience",
    "val_check_interval", "limit_val_batches", "log_every_n_steps", "export", "accelerator",
    "devices", "num_nodes", "strategy", "num_workers", "precision", "progress_bar", "compile",
)


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
        try:
            trainer.fit(system, ckpt_path=str(last) if resume else None, weights_only=True)
        except SystemExit as stop:  # Lightning ends a fit on SIGTERM with exit status 0
            if trainer.received_sigterm:
                raise KeyboardInterrupt(f"train: stopped by SIGTERM; run again to resume from "
                                        f"{last}") from stop
            raise
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
