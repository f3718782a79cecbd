"""``FaceDataModule``: training data with PK batches and the five verification sets (SPEC §7-§9).

The only module of :mod:`oaml.data` that imports Lightning. It takes plain typed arguments; the builders
in ``oaml.training.build`` map the config onto them.

Loaders:

- ``train_dataloader``: :class:`~oaml.data.samplers.PKSampler` batches, :class:`~oaml.data.batches.TrainBatch`
  records ``(images B x 3 x 112 x 112, labels, visibility B x 1 x 112 x 112, skipped)``; rank and world size
  come from the attached Trainer. Build the Trainer with ``use_distributed_sampler=False`` (the sampler already
  shards by rank).
- ``val_dataloader``/``test_dataloader``: a **list** of loaders, index 0 the clean sets and index 1 (when
  ``val_masked``) the masked protocol (synthetic mask on the second image of each pair). Batches are
  :class:`~oaml.data.batches.PairBatch` records ``(images, issame, set_index, global_index)``. The list is empty
  when no verification set is present, which makes Lightning skip validation.

Checkpoints: :meth:`FaceDataModule.state_dict` stores the sampler's epoch and the number of batches the loop
has processed; on a mid-epoch resume the rebuilt sampler skips exactly those, so the run continues with the
batches the interrupted one would have seen (Lightning still warns that the *DataLoader* is not resumable).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, get_worker_info

from oaml.constants import VAL_SET_NAMES, ChannelOrder
from oaml.data.batches import collate_pairs, collate_train
from oaml.data.datasets import FolderDataset, RecordDataset, resolve_record_path
from oaml.data.samplers import PairShardSampler, PKSampler
from oaml.data.transforms import TrainTransform
from oaml.data.verification_sets import VerificationSets, convert_bin

__all__ = ["FaceDataModule", "build_train_dataset", "seed_worker"]

logger = logging.getLogger(__name__)


def seed_worker(worker_id: int, rank: int = 0) -> None:
    """DataLoader ``worker_init_fn``: per-worker seeds for numpy, OpenCV and the dataset's transform.

    The seed mixes torch's per-worker seed (the loader's base seed + ``worker_id``; it changes every epoch for
    non-persistent workers and is reproducible under a fixed global seed) with the DDP ``rank`` (bind it with
    ``functools.partial``), because every rank draws the same base seed after ``seed_everything``. OpenCV's
    own thread pool is disabled inside workers (the workers are the parallelism).
    """
    base = torch.initial_seed() % 2 ** 32
    seed = int(np.random.SeedSequence([base, rank]).generate_state(1)[0])
    np.random.seed(seed)
    cv2.setRNGSeed(seed % 2 ** 31)
    cv2.setNumThreads(0)
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "reseed"):
        transform.reseed([base, rank, worker_id])


def build_train_dataset(train_path: str | os.PathLike[str], transform: Any = None,
                        subset_index: str | os.PathLike[str] | None = None, resize: bool = False,
                        replace_on_error: bool = True, max_bad_fraction: float = 0.001,
                        cache_dir: str | os.PathLike[str] | None = None) -> RecordDataset | FolderDataset:
    """A :class:`RecordDataset` for a ``.rec`` file or a folder with ``train.rec``, else a :class:`FolderDataset`.

    Raises:
        FileNotFoundError: if ``train_path`` does not exist.
    """
    path = Path(train_path)
    if not path.exists():
        raise FileNotFoundError(f"training data not found: {path}")
    if path.suffix == ".rec" or resolve_record_path(path).is_file():
        return RecordDataset(path, transform, subset_index, cache_dir=cache_dir, resize=resize,
                             replace_on_error=replace_on_error, max_bad_fraction=max_bad_fraction)
    return FolderDataset(path, transform, subset_index, resize=resize, replace_on_error=replace_on_error,
                         max_bad_fraction=max_bad_fraction)


class FaceDataModule(LightningDataModule):
    """Training and verification data for oaml.

    Args:
        train_path: a ``.rec`` file, a folder holding ``train.rec``/``train.idx``, or an identity-folder root.
        val_dir: folder with ``<name>.bin`` files and/or converted memfiles; ``None`` disables validation.
        val_memfile_dir: where :meth:`prepare_data` writes memfiles; defaults to ``val_dir``.
        batch_size: training batch size **per device** (P x K; the caller divides a global batch).
        k: images per identity in a batch.
        num_workers: DataLoader workers (0 loads in the main process).
        mask_prob: probability of a synthetic medical mask.
        flip_prob: probability of a horizontal flip.
        crop_prob: probability of the in-place crop augmentation.
        low_res_prob: probability of the low-resolution augmentation.
        photometric_prob: probability of the photometric augmentation.
        channel_order: channel order the model expects.
        seed: seed of the sampler and of the main-process transform.
        subset_index: file of record keys / relative paths to train on (MS1MV2 subset).
        val_masked: also validate on the masked protocol.
        val_names: verification sets, in concatenation order.
        val_batch_size: verification batch size; defaults to ``batch_size``.
        resize: resize non-112 training images instead of raising.
        replace_on_error: replace unreadable training images by another of the same identity.
        max_bad_fraction: abort when more than this fraction of training images is unreadable.
        pin_memory: pin batches in page-locked memory (for GPU training).
        label_cache_dir: label cache location when the data folder is read-only.
    """

    def __init__(self, train_path: str | os.PathLike[str] | None = None,
                 val_dir: str | os.PathLike[str] | None = None, *,
                 val_memfile_dir: str | os.PathLike[str] | None = None, batch_size: int = 128, k: int = 4,
                 num_workers: int = 4, mask_prob: float = 0.5, flip_prob: float = 0.5, crop_prob: float = 0.0,
                 low_res_prob: float = 0.0, photometric_prob: float = 0.0,
                 channel_order: ChannelOrder = ChannelOrder.BGR, seed: int = 42,
                 subset_index: str | os.PathLike[str] | None = None, val_masked: bool = True,
                 val_names: Sequence[str] = VAL_SET_NAMES, val_batch_size: int | None = None,
                 resize: bool = False, replace_on_error: bool = True, max_bad_fraction: float = 0.001,
                 pin_memory: bool = False, label_cache_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        if batch_size % k:
            raise ValueError(f"batch_size ({batch_size}) must be a multiple of k ({k})")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.train_path = Path(train_path) if train_path is not None else None
        self.val_dir = Path(val_dir) if val_dir is not None else None
        self.val_memfile_dir = Path(val_memfile_dir) if val_memfile_dir is not None else self.val_dir
        self.batch_size, self.k, self.num_workers, self.seed = batch_size, k, num_workers, seed
        self.channel_order = ChannelOrder(channel_order)
        self.train_transform = TrainTransform(mask_prob, flip_prob, crop_prob, low_res_prob, photometric_prob,
                                              self.channel_order, seed)
        self.subset_index, self.val_masked, self.val_names = subset_index, val_masked, tuple(val_names)
        self.val_batch_size = val_batch_size or batch_size
        self.resize, self.replace_on_error, self.max_bad_fraction = resize, replace_on_error, max_bad_fraction
        self.pin_memory, self.label_cache_dir = pin_memory, label_cache_dir
        self.train_dataset: RecordDataset | FolderDataset | None = None
        self.val_datasets: list[VerificationSets] = []
        self.train_sampler: PKSampler | None = None
        self._pending_sampler_state: dict[str, int] | None = None

    # ---------------------------------------------------------------- set-up
    def prepare_data(self) -> None:
        """Convert every ``<name>.bin`` in ``val_dir`` to a uint8 memfile (once, atomically; rank 0 only)."""
        if self.val_dir is None or self.val_memfile_dir is None:
            return
        for name in self.val_names:
            bin_path = self.val_dir / f"{name}.bin"
            if bin_path.is_file():
                convert_bin(bin_path, self.val_memfile_dir, self.channel_order, name)

    def setup(self, stage: str | None = None) -> None:
        """Build the training dataset (``fit``) and the verification datasets (every stage)."""
        if stage in (None, "fit") and self.train_path is not None and self.train_dataset is None:
            self.train_dataset = build_train_dataset(self.train_path, self.train_transform, self.subset_index,
                                                     self.resize, self.replace_on_error, self.max_bad_fraction,
                                                     self.label_cache_dir)
            logger.info("training data %s: %d images, %d identities", self.train_path, len(self.train_dataset),
                        self.train_dataset.num_classes)
        if not self.val_datasets and self.val_memfile_dir is not None:
            clean = VerificationSets(self.val_memfile_dir, self.val_names, self.channel_order)
            if len(clean) == 0:
                logger.info("no verification set found in %s; validation is skipped", self.val_memfile_dir)
                return
            self.val_datasets = [clean]
            if self.val_masked:
                self.val_datasets.append(clean.masked(mask_seed=self.seed))

    def _dataset(self) -> RecordDataset | FolderDataset:
        if self.train_dataset is None:
            self.setup("fit")
        if self.train_dataset is None:
            raise ValueError("FaceDataModule was built without train_path; there is no training data")
        return self.train_dataset

    @property
    def num_classes(self) -> int:
        """Number of training identities (reads labels only, building the dataset if needed)."""
        return self._dataset().num_classes

    @property
    def class_names(self) -> list[str]:
        """Training identity names (folder names, or the label ids of a ``.rec``)."""
        return list(self._dataset().class_names)

    # ---------------------------------------------------------------- loaders
    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        """PK-sampled training batches ``(image, label, visibility)``."""
        dataset = self._dataset()
        rank, world = self._rank_and_world()
        # Main-process loading (num_workers=0) must still differ between ranks.
        self.train_transform.reseed([self.seed, rank])
        self.train_sampler = PKSampler(dataset.labels, self.batch_size, self.k, world, rank, self.seed)
        if self._pending_sampler_state is not None:
            self.train_sampler.load_state_dict(self._pending_sampler_state)
            self._pending_sampler_state = None
        return DataLoader(dataset, batch_sampler=self.train_sampler, num_workers=self.num_workers,
                          collate_fn=collate_train, worker_init_fn=functools.partial(seed_worker, rank=rank),
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def _val_loaders(self) -> list[DataLoader]:
        if not self.val_datasets:
            self.setup("validate")
        rank, world = self._rank_and_world()
        return [DataLoader(ds, batch_size=self.val_batch_size, sampler=PairShardSampler(len(ds), world, rank),
                           num_workers=self.num_workers, collate_fn=collate_pairs, worker_init_fn=seed_worker,
                           pin_memory=self.pin_memory)
                for ds in self.val_datasets]

    def val_dataloader(self) -> list[DataLoader]:
        """``[clean]`` or ``[clean, masked]`` verification loaders; ``[]`` when no set is present."""
        return self._val_loaders()

    def test_dataloader(self) -> list[DataLoader]:
        """The same loaders as :meth:`val_dataloader`."""
        return self._val_loaders()

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The sampler position, saved by Lightning in every checkpoint.

        ``batches_yielded`` counts batches the training loop has *processed* (workers prefetch ahead of it).
        """
        if self.train_sampler is None:
            return {}
        state = self.train_sampler.state_dict()
        try:
            progress = self.trainer.fit_loop.epoch_loop.batch_progress.current  # type: ignore[union-attr]
            state["batches_yielded"] = int(progress.processed)
        except AttributeError:
            pass
        return {"train_sampler": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the sampler position; applied when the training loader is (re)built."""
        self._pending_sampler_state = state_dict.get("train_sampler")
