"""Training callbacks: a resumable checkpoint on SIGTERM/SIGINT, a preview of the first training batch, and an
epoch-end summary of the unreadable training images that were skipped."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from oaml.constants import ChannelOrder
from oaml.data.datasets import allowed_bad_images
from oaml.data.preview import save_preview
from oaml.errors import DataError

__all__ = ["BatchPreview", "SignalCheckpoint", "SkippedImagesSummary"]

logger = logging.getLogger(__name__)


class SignalCheckpoint(Callback):
    """Save ``last.ckpt`` (resumable, mid-epoch) when the run is asked to stop.

    SIGTERM is Lightning's: it finishes the current batch and raises ``SIGTERMException``, on which this
    callback saves. SIGINT (Ctrl+C) is taken over during ``fit`` so that it too only sets a flag: the current
    optimizer step completes, the checkpoint is written atomically, and training stops. A second SIGINT
    falls back to the default behaviour.

    Args:
        checkpoint_dir: where ``last.ckpt`` goes.
    """

    def __init__(self, checkpoint_dir: str | Path) -> None:
        self.path = Path(checkpoint_dir) / "last.ckpt"
        self.requested: int | None = None
        self.stopped_by: str | None = None  # "SIGINT" or "SIGTERM" once the resumable checkpoint is saved
        self._previous: Any = None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signum
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
        logger.warning("SIGINT received: finishing the current step, then saving %s", self.path)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.requested is not None and self.stopped_by is None:
            self._save(trainer, signal.Signals(self.requested).name)
            trainer.should_stop = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.stopped_by is None:
            self._save(trainer, "SIGTERM")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _save(self, trainer: pl.Trainer, reason: str) -> None:
        # weights_only=False: the full training state (optimizer, loops), said explicitly so that Lightning does not
        # log that it "defaults to weights_only=False", which reads like unsafe loading.
        trainer.save_checkpoint(self.path, weights_only=False)
        self.stopped_by = reason
        logger.warning("%s: saved a resumable checkpoint to %s (resume with --resume_from_checkpoint %s)",
                       reason, self.path, self.path)


class BatchPreview(Callback):
    """Save the first augmented training batch, with the mask outlines, as a PNG (rank 0 only).

    Lets a user check at a glance that the masks sit on the faces and the colours are right.

    Args:
        path: the PNG to write.
        channel_order: channel order of the batch tensors.
    """

    def __init__(self, path: str | Path, channel_order: ChannelOrder = ChannelOrder.BGR) -> None:
        self.path = Path(path)
        self.channel_order = channel_order
        self.saved = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.saved or not trainer.is_global_zero:
            return
        save_preview(batch.images.detach().float().cpu(), batch.visibility.detach().float().cpu(), self.path,
                     self.channel_order)
        self.saved = True
        logger.info("preview of the first training batch: %s", self.path)


class SkippedImagesSummary(Callback):
    """Count the unreadable training images that were skipped, in every DataLoader worker; summarise and abort.

    The training datasets skip an undecodable image, log it and return another image of the same identity
    (``replace_on_error``); each sample reports its skips in the batch (:attr:`TrainBatch.skipped`), so this
    callback, in the main process, sees the skips of all workers. It logs a per-epoch summary and raises
    :class:`~oaml.errors.DataError` once more distinct images than :func:`~oaml.data.datasets.allowed_bad_images`
    are unreadable (each worker also stops on its own share).

    Args:
        max_bad_fraction: the configured tolerance (``--max_bad_fraction``).
        max_listed: at most this many image keys/paths are listed per summary.
    """

    def __init__(self, max_bad_fraction: float = 0.001, max_listed: int = 20) -> None:
        self.max_bad_fraction = max_bad_fraction
        self.max_listed = max_listed
        self.skipped: dict[str, None] = {}  # insertion-ordered set of "<where>: <reason>"
        self.reported = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not batch.skipped:
            return
        self.skipped.update(dict.fromkeys(batch.skipped))
        total = len(getattr(trainer.datamodule, "train_dataset", None) or ())
        allowed = allowed_bad_images(total, self.max_bad_fraction)
        if len(self.skipped) > allowed:
            raise DataError(f"{len(self.skipped)} of {total} training images are unreadable, more than the {allowed} "
                            f"allowed (max(1, max_bad_fraction {self.max_bad_fraction:g} x {total})); aborting. "
                            f"Last: {batch.skipped[-1]}. Fix or remove the files, or raise --max_bad_fraction")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        entries = list(self.skipped)
        new = entries[self.reported:]
        if not new:
            return
        self.reported = len(entries)
        listed = "; ".join(new[:self.max_listed]) + (" ..." if len(new) > self.max_listed else "")
        total = len(getattr(trainer.datamodule, "train_dataset", None) or ())
        logger.warning("epoch %d: %d unreadable training image(s) skipped and replaced by another image of the same "
                       "identity (%d in total, of %d): %s", trainer.current_epoch, len(new), len(entries), total,
                       listed)
