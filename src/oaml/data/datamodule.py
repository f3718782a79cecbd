"""``FaceDataModule``: training data with PK batches and the five verification sets (SPEC §7-§9).

The only module of :mod:`oaml.data` that imports Lightning. It takes plain typed arguments; the builders
in ``oaml.training.build`` map the config onto them.

Loaders:

- ``train_dataloader``: :class:`~oaml.data.samplers.PKSampler` batches, or with ``graph_sampler``
  :class:`~oaml.data.samplers.GraphSampler` batches (QAConv-GS) over the class graph the training system hands over
  every epoch (:meth:`FaceDataModule.set_class_graph`); :class:`~oaml.data.batches.TrainBatch` records
  ``(images B x 3 x 112 x 112, labels, visibility B x 1 x 112 x 112, skipped)``; rank and world size come from the
  attached Trainer. Build the Trainer with ``use_distributed_sampler=False`` (the sampler already shards by rank).
- ``val_dataloader``/``test_dataloader``: a **list** of loaders, index 0 the clean sets and index 1, 2, ... the
  occlusion protocols of :attr:`VerificationData.protocols`, in order (by default the masked protocol alone: a
  synthetic mask on the second image of each pair). Batches are :class:`~oaml.data.batches.PairBatch` records
  ``(images, issame, set_index, global_index, visibility)``. The list is empty when no verification set is present,
  which makes Lightning skip validation.

Checkpoints: :meth:`FaceDataModule.state_dict` stores the sampler's epoch and the number of batches the loop
has processed (and the graph sampler's graph); on a mid-epoch resume the rebuilt sampler skips exactly those, so
the run continues with the batches the interrupted one would have seen (Lightning still warns that the
*DataLoader* is not resumable).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
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
from oaml.data.occluders import OcclusionProtocol
from oaml.data.samplers import GraphSampler, PairShardSampler, PKSampler
from oaml.data.verification_sets import VerificationSets, convert_bin

__all__ = ["FaceDataModule", "TrainData", "VerificationData", "build_train_dataset", "seed_worker"]

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


@dataclass(frozen=True)
class TrainData:
    """What the training loader reads and how it batches.

    Attributes:
        path: a ``.rec`` file, a folder holding ``train.rec``/``train.idx``, or an identity-folder root.
        transform: the built training transform (``uint8 BGR image -> (tensor, visibility)``).
        batch_size: training batch size **per device** (P x K; the caller divides a global batch).
        k: images per identity in a batch.
        seed: seed of the sampler and of the main-process transform.
        max_bad_fraction: abort when more than this fraction of the images is unreadable (at least one is allowed).
        subset_index: file of record keys / relative paths to train on (MS1MV2 subset).
        resize: resize non-112 training images instead of raising.
        replace_on_error: replace unreadable training images by another of the same identity.
        label_cache_dir: label cache location instead of the default ones.
        graph_sampler: batches from a seed class and its nearest classes in the class graph (QAConv-GS) instead of
            PK batches.
    """

    path: Path
    transform: Any
    batch_size: int
    k: int
    seed: int
    max_bad_fraction: float
    subset_index: Path | None = None
    resize: bool = False
    replace_on_error: bool = True
    label_cache_dir: Path | None = None
    graph_sampler: bool = False

    def __post_init__(self) -> None:
        if self.k < 1 or self.batch_size % self.k:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of k ({self.k})")


@dataclass(frozen=True)
class VerificationData:
    """Where the verification sets are and how they are scored (SPEC §9).

    Attributes:
        folder: folder with ``<name>.bin`` files and/or converted memfiles.
        memfile_dir: where :meth:`FaceDataModule.prepare_data` writes the memfiles.
        channel_order: channel order the model expects.
        batch_size: images per verification batch (even: pairs stay together).
        protocols: the occlusion protocols validated besides the clean pairs, one loader each, in order
            (``(MASK_PROTOCOL,)``: the masked protocol, a synthetic mask on the second image of each pair).
        mask_seed: seed of the protocols (with each image's global index).
        names: verification sets, in concatenation order.
    """

    folder: Path
    memfile_dir: Path
    channel_order: ChannelOrder
    batch_size: int
    protocols: tuple[OcclusionProtocol, ...]
    mask_seed: int
    names: tuple[str, ...] = VAL_SET_NAMES


def build_train_dataset(train: TrainData) -> RecordDataset | FolderDataset:
    """A :class:`RecordDataset` for a ``.rec`` file or a folder with ``train.rec``, else a :class:`FolderDataset`.

    Raises:
        FileNotFoundError: if the path does not exist.
    """
    path = Path(train.path)
    if not path.exists():
        raise FileNotFoundError(f"training data not found: {path}")
    common = dict(resize=train.resize, replace_on_error=train.replace_on_error,
                  max_bad_fraction=train.max_bad_fraction)
    if path.suffix == ".rec" or resolve_record_path(path).is_file():
        return RecordDataset(path, train.transform, train.subset_index, cache_dir=train.label_cache_dir, **common)
    return FolderDataset(path, train.transform, train.subset_index, **common)


class FaceDataModule(LightningDataModule):
    """Training and verification data for oaml, from built parts (:func:`oaml.training.build.build_datamodule`).

    Args:
        train: the training data; None for a datamodule that only validates.
        verification: the verification sets; None disables validation.
        num_workers: DataLoader workers (0 loads in the main process).
        pin_memory: pin batches in page-locked memory (for GPU training).
    """

    def __init__(self, train: TrainData | None, verification: VerificationData | None = None, *,
                 num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.train, self.verification = train, verification
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.train_dataset: RecordDataset | FolderDataset | None = None
        self.val_datasets: list[VerificationSets] = []
        self.train_sampler: PKSampler | GraphSampler | None = None
        self._pending_sampler_state: dict[str, Any] | None = None
        self._class_graph: np.ndarray | None = None

    @property
    def train_path(self) -> Path | None:
        """The training data's path."""
        return None if self.train is None else self.train.path

    # ---------------------------------------------------------------- set-up
    def prepare_data(self) -> None:
        """Convert every ``<name>.bin`` of the verification folder to a uint8 memfile (once, atomically; rank 0)."""
        sets = self.verification
        if sets is None:
            return
        for name in sets.names:
            bin_path = sets.folder / f"{name}.bin"
            if bin_path.is_file():
                convert_bin(bin_path, sets.memfile_dir, sets.channel_order, name)

    def setup(self, stage: str | None = None) -> None:
        """Build the training dataset (``fit``) and the verification datasets (every stage)."""
        if stage in (None, "fit") and self.train is not None and self.train_dataset is None:
            self.train_dataset = build_train_dataset(self.train)
            logger.info("training data %s: %d images, %d identities", self.train.path, len(self.train_dataset),
                        self.train_dataset.num_classes)
        sets = self.verification
        if not self.val_datasets and sets is not None:
            clean = VerificationSets(sets.memfile_dir, sets.names, sets.channel_order)
            if len(clean) == 0:
                logger.info("no verification set found in %s; validation is skipped", sets.memfile_dir)
                return
            self.val_datasets = [clean] + [clean.occluded(protocol, sets.mask_seed) for protocol in sets.protocols]

    def _dataset(self) -> RecordDataset | FolderDataset:
        if self.train_dataset is None:
            self.setup("fit")
        if self.train_dataset is None:
            raise ValueError("FaceDataModule was built without training data")
        return self.train_dataset

    @property
    def num_classes(self) -> int:
        """Number of training identities (reads labels only, building the dataset if needed)."""
        return self._dataset().num_classes

    @property
    def class_names(self) -> list[str]:
        """Training identity names (folder names, or the label ids of a ``.rec``)."""
        return list(self._dataset().class_names)

    @property
    def uses_class_graph(self) -> bool:
        """Whether the training batches follow the class graph (hand it over with :meth:`set_class_graph`)."""
        return self.train is not None and self.train.graph_sampler

    def set_class_graph(self, graph: Any) -> None:
        """The class graph (num_classes x k class ids, -1 in empty slots; a tensor or an array) for the graph
        sampler's next epoch."""
        self._class_graph = np.asarray(graph.cpu() if isinstance(graph, torch.Tensor) else graph)
        if isinstance(self.train_sampler, GraphSampler):
            self.train_sampler.set_graph(self._class_graph)

    # ---------------------------------------------------------------- loaders
    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        """PK- or graph-sampled :class:`~oaml.data.batches.TrainBatch` batches."""
        dataset, train = self._dataset(), self.train
        assert train is not None  # _dataset() raised otherwise
        rank, world = self._rank_and_world()
        if hasattr(train.transform, "reseed"):  # main-process loading (num_workers=0) must still differ by rank
            train.transform.reseed([train.seed, rank])
        if train.graph_sampler:
            graph = self._class_graph if self._class_graph is not None else np.empty((dataset.num_classes, 0))
            self.train_sampler = GraphSampler(dataset.labels, graph, train.batch_size, train.k, world, rank, train.seed)
        else:
            self.train_sampler = PKSampler(dataset.labels, train.batch_size, train.k, world, rank, train.seed)
        if self._pending_sampler_state is not None:
            self.train_sampler.load_state_dict(self._pending_sampler_state)
            self._pending_sampler_state = None
        return DataLoader(dataset, batch_sampler=self.train_sampler, num_workers=self.num_workers,
                          collate_fn=collate_train, worker_init_fn=functools.partial(seed_worker, rank=rank),
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def _val_loaders(self) -> list[DataLoader]:
        if not self.val_datasets:
            self.setup("validate")
        if self.verification is None:
            return []
        rank, world = self._rank_and_world()
        return [DataLoader(ds, batch_size=self.verification.batch_size, sampler=PairShardSampler(len(ds), world, rank),
                           num_workers=self.num_workers, collate_fn=collate_pairs, worker_init_fn=seed_worker,
                           pin_memory=self.pin_memory)
                for ds in self.val_datasets]

    def val_dataloader(self) -> list[DataLoader]:
        """``[clean, <protocol>, ...]`` verification loaders; ``[]`` when no set is present."""
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
