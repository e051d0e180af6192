"""The Lightning system every registry model trains in (asteroid `System`), its resumable
data order and its atomic checkpoints (`experiments.training.trainer` drives it)."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from asteroid.engine.system import System
from asteroid.losses import PITLossWrapper, pairwise_neg_sisdr
from asteroid.utils import flatten_dict
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau
from torch.utils.data import DataLoader, Dataset, Sampler

from experiments.atomic import atomic_path

CKPT_DIR, LAST, BEST = "checkpoints", "last.ckpt", "best.ckpt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stops and keeps its last good checkpoint."""


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


class SeparationSystem(System):
    """asteroid `System` with sharded, resumable loaders; the lr schedule of `train.schedule`
    (plateau: after each validation, at any validation interval; cosine: after each step); a
    stop on non-finite losses. Each validation also logs `val_sisdri` (the estimate's PIT SI-SDR
    minus the mixture's, whatever the training loss) and the training wall seconds so far
    (`wall_s`, summed over resumptions)."""

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
        self.neg_sisdr = PITLossWrapper(pairwise_neg_sisdr, pit_from="pw_mtx")

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
        inputs, targets = batch
        estimates = self(inputs)
        with torch.autocast(estimates.device.type, enabled=False):
            estimates, targets = estimates.float(), targets.float()
            loss = self.loss_func(estimates, targets)
            mixture_as_estimates = inputs.unsqueeze(1).expand_as(targets).float()
            sisdri = self.neg_sisdr(mixture_as_estimates, targets) - self.neg_sisdr(estimates,
                                                                                    targets)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val_sisdri", sisdri, on_epoch=True, sync_dist=True)

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
