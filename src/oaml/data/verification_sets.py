"""Verification sets: ``.bin`` loading, one-time conversion to uint8 memfiles, and the five-set dataset (SPEC §9).

A ``.bin`` (lfw, agedb_30, cfp_fp, cplfw, calfw) is an untrusted Python-2 pickle of ``(2N encoded images,
N bools)``; pair k is images 2k and 2k+1. :func:`convert_bin` decodes it once into

- ``<name>.u8``: a raw uint8 memmap ``[2N, 112, 112, 3]`` in the requested channel order (4x smaller than the
  predecessor's float32),
- ``<name>_issame.npy``: ``N`` bools,
- ``<name>.json``: the sidecar with shape, dtype, channel order and the source's sha256.

The three files are written under temporary names, fsynced and renamed (sidecar last), so an interrupted
conversion never leaves a file that looks complete. A later call with the same source is a no-op.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from oaml.constants import FACE_SIZE, FEATURE_MAP_SIZE, VAL_SET_NAMES, ChannelOrder
from oaml.data.batches import PairSample
from oaml.data.images import decode_image
from oaml.data.masks import visibility_grid
from oaml.data.occluders import MASK_PROTOCOL, OcclusionProtocol
from oaml.data.safe_pickle import safe_load
from oaml.data.transforms import image_to_tensor
from oaml.errors import DataError
from oaml.fileio import publish, sha256_file

__all__ = ["VerificationSets", "convert_bin", "load_bin", "load_memfile", "memfile_paths"]

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 1


def load_bin(bin_path: str | os.PathLike[str]) -> tuple[list[bytes], np.ndarray]:
    """Load a verification ``.bin`` with the restricted unpickler.

    Returns:
        ``(images, issame)``: the 2N encoded images as ``bytes`` and an ``N`` bool array.

    Raises:
        UnsafePickleError: if the pickle references a global that is not allowed.
        DataError: if the content is not ``(2N images, N bools)``.
    """
    content = safe_load(bin_path)
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise DataError(f"{bin_path}: expected a pickled (images, issame) pair, found {type(content).__name__}")
    raw_images, raw_issame = content
    try:
        issame = np.asarray(raw_issame, dtype=bool).reshape(-1)
        images = [bytes(np.asarray(img, dtype=np.uint8).reshape(-1)) if not isinstance(img, (bytes, bytearray))
                  else bytes(img) for img in raw_images]
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an int where image bytes belong
        raise DataError(f"{bin_path}: images must be encoded bytes and issame bools ({exc})") from exc
    if len(images) != 2 * len(issame):
        raise DataError(f"{bin_path}: {len(images)} images for {len(issame)} pairs; expected 2 per pair")
    return images, issame


def memfile_paths(out_dir: str | os.PathLike[str], name: str) -> tuple[Path, Path, Path]:
    """The ``(<name>.u8, <name>_issame.npy, <name>.json)`` paths of a converted set."""
    out = Path(out_dir)
    return out / f"{name}.u8", out / f"{name}_issame.npy", out / f"{name}.json"


def _read_sidecar(path: Path) -> dict[str, object] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_current(out_dir: Path, name: str, sha: str, order: ChannelOrder) -> bool:
    data_path, issame_path, sidecar_path = memfile_paths(out_dir, name)
    meta = _read_sidecar(sidecar_path)
    if not meta or meta.get("source_sha256") != sha or meta.get("channel_order") != order.value:
        return False
    shape = meta.get("shape")
    return (isinstance(shape, list) and data_path.is_file() and issame_path.is_file()
            and data_path.stat().st_size == int(np.prod(shape)))


def convert_bin(bin_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                channel_order: ChannelOrder = ChannelOrder.BGR, name: str | None = None) -> Path:
    """Convert a ``.bin`` to a uint8 memfile, its issame array and a JSON sidecar, once and atomically.

    Args:
        bin_path: the ``.bin`` file.
        out_dir: where to write the three files (created if needed).
        channel_order: channel order of the stored images (cv2 decodes to BGR; RGB reverses the channels).
        name: the set name; defaults to the file stem (``lfw.bin`` -> ``lfw``).

    Returns:
        The path of the ``.u8`` memfile.

    Raises:
        UnsafePickleError: if the ``.bin`` is not a safe pickle.
        DataError: if an image cannot be decoded or is not 112x112.
    """
    bin_path, out_dir = Path(bin_path), Path(out_dir)
    name = name or bin_path.stem
    order = ChannelOrder(channel_order)
    data_path, issame_path, sidecar_path = memfile_paths(out_dir, name)
    sha = sha256_file(bin_path)
    if _is_current(out_dir, name, sha, order):
        logger.debug("%s is already converted in %s", bin_path, out_dir)
        return data_path
    out_dir.mkdir(parents=True, exist_ok=True)
    images, issame = load_bin(bin_path)
    shape = (len(images), FACE_SIZE, FACE_SIZE, 3)
    tmp_data, tmp_issame, tmp_sidecar = (p.with_name(p.name + f".tmp{os.getpid()}")
                                         for p in (data_path, issame_path, sidecar_path))
    try:
        memmap = np.memmap(tmp_data, dtype=np.uint8, mode="w+", shape=shape)
        for i, buf in enumerate(images):
            image = decode_image(buf, f"{bin_path} image {i}")
            memmap[i] = image[:, :, ::-1] if order is ChannelOrder.RGB else image
        memmap.flush()
        del memmap
        with open(tmp_issame, "wb") as handle:
            np.save(handle, issame)
        meta = {"format_version": _FORMAT_VERSION, "name": name, "shape": list(shape), "dtype": "uint8",
                "channel_order": order.value, "num_pairs": int(len(issame)), "source": bin_path.name,
                "source_sha256": sha}
        tmp_sidecar.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        # An old sidecar would vouch for a half-replaced set if the renames below were interrupted; without one
        # the set reads as "not converted" until the new sidecar lands.
        sidecar_path.unlink(missing_ok=True)
        publish(tmp_data, data_path)
        publish(tmp_issame, issame_path)
        publish(tmp_sidecar, sidecar_path)
    finally:
        for tmp in (tmp_data, tmp_issame, tmp_sidecar):
            tmp.unlink(missing_ok=True)
    logger.info("converted %s -> %s (%d pairs, %s)", bin_path, data_path, len(issame), order.value)
    return data_path


def load_memfile(out_dir: str | os.PathLike[str], name: str) -> tuple[np.memmap, np.ndarray, ChannelOrder]:
    """Open a converted set read-only.

    Returns:
        ``(images, issame, channel_order)``: a uint8 memmap ``[2N, 112, 112, 3]``, ``N`` bools and the
        channel order the images are stored in.

    Raises:
        FileNotFoundError: if the sidecar is missing (the set was never converted).
        DataError: if the files disagree with the sidecar.
    """
    data_path, issame_path, sidecar_path = memfile_paths(out_dir, name)
    if not sidecar_path.is_file():
        raise FileNotFoundError(f"no converted verification set {name!r} in {out_dir} (missing {sidecar_path})")
    meta = _read_sidecar(sidecar_path)
    if meta is None or meta.get("dtype") != "uint8" or not isinstance(meta.get("shape"), list):
        raise DataError(f"{sidecar_path}: unreadable sidecar or dtype other than uint8")
    shape = tuple(int(v) for v in meta["shape"])  # type: ignore[union-attr]
    if not data_path.is_file() or data_path.stat().st_size != int(np.prod(shape)):
        raise DataError(f"{data_path}: size does not match the sidecar's shape {shape}; delete "
                        f"{sidecar_path} to convert again")
    images = np.memmap(data_path, dtype=np.uint8, mode="r", shape=shape)
    issame = np.load(issame_path, allow_pickle=False).astype(bool)
    if 2 * len(issame) != shape[0]:
        raise DataError(f"{issame_path}: {len(issame)} pairs for {shape[0]} images")
    return images, issame, ChannelOrder(str(meta.get("channel_order", "bgr")))


class VerificationSets(Dataset):
    """The verification sets present in ``memfile_dir``, concatenated in SPEC order.

    Items are :class:`~oaml.data.batches.PairSample` records: a normalised float tensor ``3 x 112 x 112`` in
    ``channel_order``, the issame flag of the image's pair, the set's position in :attr:`names`, the image's index
    in the concatenation and the 7x7 visible fractions of the occluder drawn on it (all ones for a clean image).
    Sets that are absent are logged once and skipped; with none present the dataset is empty and the caller skips
    validation.

    Args:
        memfile_dir: folder with the converted sets (see :func:`convert_bin`).
        names: set names, in concatenation order.
        channel_order: channel order of the output tensors.
        flip: return the horizontally mirrored image (for a separate flip pass; batch-side ``torch.flip`` is
            usually cheaper).
        masked_second: the masked protocol: a synthetic medical mask on the second image of every pair (the same
            as ``protocol=MASK_PROTOCOL``).
        mask_seed: seed of the occlusion protocol (with the image's global index).
        transform: optional ``uint8 BGR HxWx3 -> tensor`` replacing the default normalisation.
        protocol: an occlusion protocol (:class:`~oaml.data.occluders.OcclusionProtocol`): each image gets its
            side's occluder, deterministically from ``(mask_seed, global_index)``.
    """

    def __init__(self, memfile_dir: str | os.PathLike[str], names: Sequence[str] = VAL_SET_NAMES,
                 channel_order: ChannelOrder = ChannelOrder.BGR, flip: bool = False, masked_second: bool = False,
                 mask_seed: int = 0, transform: Callable[[np.ndarray], torch.Tensor] | None = None,
                 protocol: OcclusionProtocol | None = None) -> None:
        self.memfile_dir = Path(memfile_dir)
        self.channel_order = ChannelOrder(channel_order)
        self.flip, self.mask_seed, self.transform = flip, mask_seed, transform
        self.protocol = MASK_PROTOCOL if masked_second and protocol is None else protocol
        self.names: list[str] = []
        self.offsets: dict[str, int] = {}
        self.pair_counts: dict[str, int] = {}
        self.missing: list[str] = []
        issame_parts: list[np.ndarray] = []
        total = 0
        for name in names:
            try:
                images, issame, _ = load_memfile(self.memfile_dir, name)
            except FileNotFoundError:  # the user simply does not have this set
                self.missing.append(name)
                continue
            self.names.append(name)
            self.offsets[name] = total
            self.pair_counts[name] = len(issame)
            issame_parts.append(issame)
            total += len(images)
            del images
        if self.missing and self.names:
            logger.info("verification sets in %s: %s; absent: %s", self.memfile_dir, ", ".join(self.names),
                        ", ".join(self.missing))
        self.issame = np.concatenate(issame_parts) if issame_parts else np.zeros(0, bool)
        self._length = total
        self._set_of_image = np.repeat(np.arange(len(self.names)), [2 * self.pair_counts[n] for n in self.names])
        self._arrays: list[tuple[np.memmap, ChannelOrder]] | None = None

    @property
    def masked_second(self) -> bool:
        """Whether this is the masked protocol (the medical mask on the second image)."""
        return self.protocol is not None and self.protocol.is_mask

    def __len__(self) -> int:
        return self._length

    def masked(self, mask_seed: int | None = None) -> VerificationSets:
        """A copy that applies the masked protocol (no re-scan of the folder, no repeated log lines)."""
        return self.occluded(MASK_PROTOCOL, mask_seed)

    def occluded(self, protocol: OcclusionProtocol, seed: int | None = None) -> VerificationSets:
        """A copy that applies ``protocol`` with ``seed`` (default: this set's ``mask_seed``), without a re-scan."""
        twin = copy.copy(self)
        twin.protocol, twin._arrays = protocol, None
        twin.mask_seed = self.mask_seed if seed is None else seed
        return twin

    def _open(self) -> list[tuple[np.memmap, ChannelOrder]]:
        if self._arrays is None:
            self._arrays = [load_memfile(self.memfile_dir, name)[::2] for name in self.names]  # type: ignore[misc]
        return self._arrays

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_arrays"] = None  # memmaps re-open in each worker instead of being pickled as copies
        return state

    def __getitem__(self, index: int) -> PairSample:
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} verification images")
        set_index = int(self._set_of_image[index])
        local = index - self.offsets[self.names[set_index]]
        array, stored = self._open()[set_index]
        image = np.asarray(array[local])
        bgr = image[:, :, ::-1] if stored is ChannelOrder.RGB else image
        grid = torch.ones(FEATURE_MAP_SIZE, FEATURE_MAP_SIZE)
        if self.protocol is not None and self.protocol.occluder(local % 2) is not None:
            bgr, visibility = self.protocol.occlude(np.ascontiguousarray(bgr), local % 2, self.mask_seed, index)
            grid = torch.from_numpy(visibility_grid(visibility))
        if self.flip:
            bgr = bgr[:, ::-1]
        tensor = (self.transform(np.ascontiguousarray(bgr)) if self.transform is not None
                  else image_to_tensor(bgr, self.channel_order))
        issame = bool(self.issame[index // 2])  # every set has an even offset, so pairs never straddle sets
        return PairSample(tensor, issame, set_index, index, grid)
