"""Data side of the real-face study: identities from aligned folders, identity splits and held-out pairs.

Every identity is ``<dataset>/<identity folder>``, so two datasets may use the same folder name. A split is drawn
per dataset (stratified), so that every dataset contributes held-out identities; the held-out pairs are all genuine
pairs of the held-out identities plus as many impostor pairs, drawn and shuffled with the split seed only, so that
every configuration and training seed is scored on exactly the same pairs.

Settings are chosen on a *validation split of the training identities* (:func:`validation_split`): training
identities are split again, the models train on the rest and are scored on the validation identities; the
held-out identities are not touched until the settings are fixed. :func:`benchmark_pairs` adds the official LFW
View-2 pairs whose two people are both unseen in training.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oaml.data.images import identity_images
from oaml.errors import ConfigError, DataError

__all__ = ["DEFAULT_DATASETS", "VIEW2_DATASET", "BenchmarkPairs", "HeldOutPairs", "Identity", "Split",
           "benchmark_pairs", "default_roots", "discover_identities", "held_out_pairs", "link_train_folder",
           "shared_data", "split_identities", "validation_split"]

logger = logging.getLogger(__name__)

DEFAULT_DATASETS = ("att_faces_arcface112", "dlib_johns_arcface112", "lfw_min10_arcface112")
"""Aligned identity folders of ``../shared/data`` the study uses by default (those present). ``lfw_subset10`` is not
among them: its 10 people are all in ``lfw_min10`` (its SOURCE.txt)."""

VIEW2_DATASET = "lfw_view2_arcface112"
"""The official LFW View-2 benchmark, aligned (6,000 pairs); it shares people with ``lfw_min10``."""

_SHARED_ENV = "OAML_SHARED_DATA"


@dataclass(frozen=True)
class Identity:
    """One person: the dataset (root folder name), the identity folder and its image files (absolute paths)."""

    dataset: str
    name: str
    folder: str
    images: tuple[str, ...]

    @property
    def key(self) -> str:
        """``dataset/name``, unique over all roots."""
        return f"{self.dataset}/{self.name}"


@dataclass(frozen=True)
class Split:
    """Identities to train on and held-out identities to test on."""

    seed: int
    train: tuple[Identity, ...]
    test: tuple[Identity, ...]


@dataclass(frozen=True)
class HeldOutPairs:
    """Images of the held-out identities and the pairs scored on them (``first[k]``, ``second[k]`` index ``paths``).

    Attributes:
        paths: Image files, identity by identity.
        labels: Identity index per image.
        first: First image of each pair.
        second: Second image of each pair (the masked one in the masked-vs-clean protocol).
        issame: Ground truth per pair.
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    first: np.ndarray
    second: np.ndarray
    issame: np.ndarray

    @property
    def num_genuine(self) -> int:
        return int(np.count_nonzero(self.issame))

    @property
    def num_impostor(self) -> int:
        return int(self.issame.shape[0] - self.num_genuine)


def shared_data() -> Path:
    """``$OAML_SHARED_DATA``, default ``../shared/data``."""
    return Path(os.environ.get(_SHARED_ENV, Path("..") / "shared" / "data"))


def default_roots() -> list[Path]:
    """The default datasets under :func:`shared_data` that exist."""
    return [shared_data() / name for name in DEFAULT_DATASETS if (shared_data() / name).is_dir()]


def discover_identities(roots: list[Path]) -> list[Identity]:
    """Identity folders with at least two images under each root (identities with one image cannot form pairs).

    Raises:
        FileNotFoundError: If a root is not a folder.
        DataError: If two roots share a folder name, or no root holds an identity with two images.
    """
    identities: list[Identity] = []
    seen: dict[str, Path] = {}
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"study data folder not found: {root}")
        if root.name in seen:
            raise DataError(f"{root} and {seen[root.name]} have the same folder name; identities are named "
                            f"'<folder>/<identity>', so each dataset needs its own folder name")
        seen[root.name] = root
        for name, paths in identity_images(root):
            folder = root / name
            files = [str(p.resolve()) for p in paths]
            if len(files) < 2:
                logger.warning("%s: %d image(s); an identity needs >= 2 for pairs, skipped", folder, len(files))
                continue
            identities.append(Identity(root.name, folder.name, str(folder.resolve()), tuple(files)))
    if not identities:
        raise DataError(f"no identity folder with >= 2 images under {', '.join(map(str, roots))}")
    return identities


def split_identities(identities: list[Identity], test_fraction: float, seed: int) -> Split:
    """Hold out ``round(test_fraction * n)`` identities of every dataset (at least one, and never all).

    Raises:
        ConfigError: If ``test_fraction`` is not in (0, 1), or the split leaves fewer than 4 training or 2 held-out
            identities.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"--test-fraction: {test_fraction} is not in (0, 1)")
    rng = np.random.default_rng(seed)
    train: list[Identity] = []
    test: list[Identity] = []
    for dataset in sorted({i.dataset for i in identities}):
        members = [i for i in identities if i.dataset == dataset]
        order = rng.permutation(len(members))
        n_test = min(max(1, round(test_fraction * len(members))), len(members) - 1) if len(members) > 1 else 0
        test += [members[k] for k in sorted(order[:n_test])]
        train += [members[k] for k in sorted(order[n_test:])]
    if len(train) < 4 or len(test) < 2:
        raise ConfigError(f"split {seed}: {len(train)} training and {len(test)} held-out identities; the study "
                          f"needs >= 4 and >= 2 (add data or change --test-fraction {test_fraction})")
    return Split(seed, tuple(train), tuple(test))


def validation_split(split: Split, fraction: float) -> Split:
    """Split the *training* identities of ``split`` again: train on the rest, choose settings on the validation
    identities (returned as ``test``). Seeded by the split's seed, so it is fixed per split."""
    inner = split_identities(list(split.train), fraction, split.seed + 1_000_003)
    return Split(split.seed, inner.train, inner.test)


def held_out_pairs(test: tuple[Identity, ...], seed: int) -> HeldOutPairs:
    """All genuine pairs ``i < j`` of the held-out identities and an equal number of distinct impostor pairs.

    The impostor pairs are drawn without replacement (all of them when there are fewer), and the pair order is
    shuffled, so that each of the 10 folds mixes datasets and identities.
    """
    paths = tuple(p for identity in test for p in identity.images)
    labels = np.repeat(np.arange(len(test)), [len(identity.images) for identity in test])
    i, j = np.triu_indices(len(paths), k=1)
    same = labels[i] == labels[j]
    genuine, impostor = np.flatnonzero(same), np.flatnonzero(~same)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(impostor, size=min(genuine.size, impostor.size), replace=False)
    keep = rng.permutation(np.concatenate([genuine, chosen]))
    return HeldOutPairs(paths, labels, i[keep], j[keep], same[keep])


def link_train_folder(train: tuple[Identity, ...], folder: Path) -> Path:
    """A training root of symbolic links ``<dataset>__<identity>`` to the training identities (made afresh).

    The images stay where they are; nothing is copied.
    """
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for identity in train:
        (folder / f"{identity.dataset}__{identity.name}").symlink_to(identity.folder, target_is_directory=True)
    return folder


@dataclass(frozen=True)
class BenchmarkPairs:
    """The pairs of a published benchmark that the study can score as held-out pairs.

    Attributes:
        name: the benchmark folder's name.
        pairs: the kept pairs, in file order.
        total: pairs in the benchmark's list.
        dropped: pairs left out because one of their people is a training identity.
    """

    name: str
    pairs: HeldOutPairs
    total: int
    dropped: int


def benchmark_pairs(root: Path, train: tuple[Identity, ...]) -> BenchmarkPairs:
    """The pairs of ``root/pairs.txt`` (LFW format) whose two people are both unseen in training.

    A person is seen when an LFW-derived training identity has its name (folder names are the people's names in
    every LFW-derived set), so the kept pairs are held out by identity, not only by image.

    Raises:
        DataError: if the list names missing images, or no pair is left.
    """
    from oaml.data.pairs import parse_pairs, resolve_pairs

    listed = resolve_pairs(parse_pairs(root / "pairs.txt"), root)
    seen = {identity.name for identity in train if identity.dataset.startswith("lfw")}
    kept = [p for p in listed if Path(p.path_a).parent.name not in seen and Path(p.path_b).parent.name not in seen]
    if not kept:
        raise DataError(f"{root}: every pair of pairs.txt shows a training identity; nothing is held out")
    paths = tuple(dict.fromkeys(path for p in kept for path in (p.path_a, p.path_b)))
    row = {path: k for k, path in enumerate(paths)}
    people = {name: k for k, name in enumerate(dict.fromkeys(Path(path).parent.name for path in paths))}
    labels = np.array([people[Path(path).parent.name] for path in paths], np.int64)
    first = np.array([row[p.path_a] for p in kept], np.int64)
    second = np.array([row[p.path_b] for p in kept], np.int64)
    pairs = HeldOutPairs(paths, labels, first, second, np.array([p.same for p in kept], bool))
    return BenchmarkPairs(root.name, pairs, len(listed), len(listed) - len(kept))
