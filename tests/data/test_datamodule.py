"""FaceDataModule: memfile preparation, loaders, worker seeding, resume state and a Lightning smoke run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from oaml.constants import ChannelOrder
from oaml.data.datamodule import FaceDataModule, TrainData, VerificationData, seed_worker
from oaml.data.datasets import FolderDataset, RecordDataset
from oaml.data.occluders import MASK_PROTOCOL
from oaml.data.transforms import TrainTransform

LABELS = [c for c in range(6) for _ in range(4 + c % 3)]


def module_for(train: Path, val: Path | None = None, *, batch_size: int = 8, k: int = 4, seed: int = 42,
               masked: bool = True) -> FaceDataModule:
    """A main-process datamodule with a mask-only training transform and the given verification folder."""
    data = TrainData(train, TrainTransform(mask_prob=0.5, flip_prob=0.5, seed=seed), batch_size, k, seed,
                     max_bad_fraction=0.001)
    protocols = (MASK_PROTOCOL,) if masked else ()
    sets = None if val is None else VerificationData(val, val, ChannelOrder.BGR, batch_size, protocols, seed)
    return FaceDataModule(data, sets, num_workers=0)


@pytest.fixture
def data_dirs(tmp_path: Path, make_rec: Callable[..., Path], bin_writer: Callable[..., Path],
              image_factory: Callable[..., np.ndarray]) -> tuple[Path, Path]:
    train = make_rec(LABELS, folder=tmp_path / "train").parent
    val = tmp_path / "val"
    val.mkdir()
    bin_writer(val / "lfw.bin", [image_factory(500 + i) for i in range(4)], [True, False])
    bin_writer(val / "calfw.bin", [image_factory(600 + i) for i in range(2)], [True])
    return train, val


def test_prepare_setup_and_loaders(data_dirs: tuple[Path, Path]) -> None:
    train, val = data_dirs
    module = module_for(train, val, seed=1)
    module.prepare_data()
    assert (val / "lfw.u8").is_file() and (val / "calfw.json").is_file()
    module.setup("fit")
    assert isinstance(module.train_dataset, RecordDataset)
    assert module.num_classes == 6 and module.class_names == [str(c) for c in range(6)]
    loader = module.train_dataloader()
    assert len(loader) == 3  # 6 identities, P = 8 / 4 = 2 per batch
    images, labels, visibility, skipped = next(iter(loader))
    assert images.shape == (8, 3, 112, 112) and images.dtype == torch.float32
    assert labels.shape == (8,) and labels.dtype == torch.int64
    assert visibility.shape == (8, 1, 112, 112) and visibility.min() >= 0
    assert (labels.view(-1, 4) == labels.view(-1, 4)[:, :1]).all()
    assert skipped == ()  # no unreadable image in this batch
    loaders = module.val_dataloader()
    assert len(loaders) == 2  # clean, masked
    clean, masked = (next(iter(dl)) for dl in loaders)
    assert clean[0].shape == (6, 3, 112, 112) and clean[2].tolist() == [0, 0, 0, 0, 1, 1]  # lfw then calfw
    assert clean[1].tolist() == [True, True, False, False, True, True]
    assert torch.equal(clean[0][0::2], masked[0][0::2]) and not torch.equal(clean[0][1::2], masked[0][1::2])
    assert len(module.test_dataloader()) == 2


def test_folder_root_and_no_validation(make_folder: Callable[..., Path]) -> None:
    root = make_folder({"ann": 4, "bob": 5, "cid": 4, "dan": 6})
    module = module_for(root, None, masked=False)
    module.prepare_data()
    assert isinstance(module._dataset(), FolderDataset) and module.class_names == ["ann", "bob", "cid", "dan"]
    assert module.val_dataloader() == []
    assert next(iter(module.train_dataloader()))[0].shape == (8, 3, 112, 112)


def test_missing_bins_give_no_loaders(data_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    train, _ = data_dirs
    empty = tmp_path / "empty"
    empty.mkdir()
    module = module_for(train, empty)
    module.prepare_data()
    module.setup("validate")
    assert module.val_dataloader() == []


def test_resume_state_round_trip(data_dirs: tuple[Path, Path]) -> None:
    train, _ = data_dirs
    big = module_for(train, batch_size=4, k=2, seed=3)
    loader = big.train_dataloader()
    reference = list(loader.batch_sampler)
    iterator = iter(loader.batch_sampler)
    next(iterator), next(iterator)
    state = big.state_dict()
    assert state["train_sampler"]["batches_yielded"] == 2
    resumed = module_for(train, batch_size=4, k=2, seed=3)
    resumed.load_state_dict(state)
    assert list(resumed.train_dataloader().batch_sampler) == reference[2:]


class _SameImage(Dataset):
    """Every item is the same image through the transform: differences come from the RNG only."""

    def __init__(self, image: np.ndarray) -> None:
        self.image, self.transform = image, TrainTransform(mask_prob=1.0, flip_prob=0.5, seed=0)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.image)[1]


def test_workers_are_seeded_differently_and_reproducibly(image_factory: Callable[..., np.ndarray]) -> None:
    dataset = _SameImage(image_factory(0))

    def run() -> torch.Tensor:
        torch.manual_seed(123)
        loader = DataLoader(dataset, batch_size=4, num_workers=2, worker_init_fn=seed_worker)
        return torch.cat(list(loader))

    first, second = run(), run()
    assert torch.equal(first, second)  # reproducible under a fixed torch seed
    assert not torch.equal(first[:4], first[4:])  # worker 0 and worker 1 draw different masks
    assert len({tuple(v.flatten()[::97].tolist()) for v in first}) == 8


class _Recorder:
    """A tiny LightningModule factory that records the labels of every training batch."""

    @staticmethod
    def build() -> Any:
        import lightning.pytorch as pl

        class Tiny(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = torch.nn.Linear(3, 6)
                self.seen: list[list[int]] = []
                self.val_batches: list[int] = []

            def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
                images, labels = batch.images, batch.labels
                self.seen.append(labels.tolist())
                return torch.nn.functional.cross_entropy(self.net(images.mean(dim=(2, 3))), labels)

            def validation_step(self, batch: list[torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
                self.val_batches.append(dataloader_idx)

            def configure_optimizers(self) -> torch.optim.Optimizer:
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Tiny()


def _trainer(tmp_path: Path, **kwargs: Any) -> Any:
    import lightning.pytorch as pl

    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, use_distributed_sampler=False, default_root_dir=tmp_path,
                      num_sanity_val_steps=0, **kwargs)


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*", "ignore:Be aware that when using `ckpt_path`",
                            "ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_lightning_fit_and_mid_epoch_resume(data_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    train, val = data_dirs
    reference_model = _Recorder.build()
    module = module_for(train, val)
    trainer = _trainer(tmp_path / "full", max_epochs=2, enable_checkpointing=False)
    trainer.fit(reference_model, datamodule=module)
    assert trainer.global_step == 6 and module.train_sampler is not None and module.train_sampler.epoch == 1
    assert sorted(set(reference_model.val_batches)) == [0, 1]  # clean and masked loaders
    assert reference_model.seen[:3] != reference_model.seen[3:]  # epochs differ

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    first = _Recorder.build()
    _trainer(tmp_path / "a", max_steps=4, callbacks=[checkpoint]).fit(
        first, datamodule=module_for(train, val))
    saved = sorted((tmp_path / "ckpt").glob("*step=4*.ckpt"))
    assert first.seen == reference_model.seen[:4] and len(saved) == 1
    resumed = _Recorder.build()
    _trainer(tmp_path / "b", max_epochs=2, enable_checkpointing=False).fit(
        resumed, datamodule=module_for(train, val), ckpt_path=saved[0])
    assert resumed.seen == reference_model.seen[4:]  # the interrupted epoch continues where it stopped
