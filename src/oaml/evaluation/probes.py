"""Probe images of 1:N identification: a labelled identity folder or an unlabelled list file (SPEC §13.4).

- **Folder** ``probes/<identity>/.../<image>``: labelled, identity = the first folder level
  (:func:`oaml.data.images.labelled_images`); probes whose identity is not enrolled in the gallery are the
  non-enrolled (open-set) ones.
- **List file**: one image path per line; relative paths are taken from the list's folder, blank lines and lines
  starting with ``#`` are skipped. Such probes are unlabelled and get no metrics.

Sizes are checked from the file headers before any model work (:func:`~oaml.evaluation.eval_data.check_image_sizes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from oaml.data.images import labelled_images
from oaml.errors import DataError
from oaml.evaluation.eval_data import EvalImages, check_image_sizes

__all__ = ["ProbeSet", "load_probes"]

_SHOW = 5  # missing files named in one message


@dataclass(frozen=True)
class ProbeSet:
    """Probe images and, for a labelled folder, their identities.

    Attributes:
        images: The images (paths).
        identities: Identity per probe, or None (unlabelled list).
        source: The folder or list file.
        kind: ``"folder"`` or ``"list"``.
    """

    images: EvalImages
    identities: tuple[str, ...] | None
    source: str
    kind: str

    def __len__(self) -> int:
        return len(self.images)

    def counts(self, enrolled: tuple[str, ...]) -> dict[str, object]:
        """``source``, ``kind``, ``num_probes``, ``labelled`` and, for labelled probes, ``n_enrolled`` and
        ``n_non_enrolled`` against the gallery identities ``enrolled``."""
        out: dict[str, object] = {"source": self.source, "kind": self.kind, "num_probes": len(self),
                                  "labelled": self.identities is not None}
        if self.identities is not None:
            known = set(enrolled)
            out["n_enrolled"] = sum(name in known for name in self.identities)
            out["n_non_enrolled"] = len(self.identities) - out["n_enrolled"]  # type: ignore[operator]
        return out


def _read_list(path: Path) -> list[Path]:
    lines = path.read_text(encoding="utf-8").splitlines()
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise DataError(f"{path}: the probe list names no image")
    files = [p if p.is_absolute() else path.parent / p for p in map(Path, entries)]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise DataError(f"{path}: {len(missing)} listed probe images do not exist: {', '.join(missing[:_SHOW])}"
                        f"{' ...' if len(missing) > _SHOW else ''}")
    return files


def load_probes(source: str | os.PathLike[str], size: int, resize: bool = False) -> ProbeSet:
    """A labelled identity folder or an unlabelled list file of probe images (module docstring); sizes are checked.

    Args:
        source: The folder or list file.
        size: The model's input side.
        resize: Resize images of another size instead of refusing them.

    Raises:
        FileNotFoundError: If ``source`` does not exist.
        DataError: On a folder without images in identity folders, an empty list, missing listed files or images
            of the wrong size.
    """
    path = Path(source)
    if path.is_dir():
        files, names = labelled_images(path)
        identities: tuple[str, ...] | None = tuple(names)
        kind = "folder"
    elif path.is_file():
        files, identities, kind = _read_list(path), None, "list"
    else:
        raise FileNotFoundError(f"probe folder or list not found: {path}")
    images = EvalImages(names=[str(p) for p in files], paths=[str(p) for p in files], size=size, resize=resize)
    check_image_sizes(images)
    return ProbeSet(images=images, identities=identities, source=str(path), kind=kind)
