"""Fixtures of the data tests: tiny synthetic images, .rec files, identity folders and .bin files."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from oaml.data.recordio import IRHeader, RecordWriter, pack_record


def make_image(seed: int, size: int = 112) -> np.ndarray:
    """A smooth, recognisably distinct uint8 BGR image (a colour gradient plus a disc)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(40, 215, size=3)
    slope = rng.uniform(-40, 40, size=(2, 3))
    image = base + xs[..., None] * slope[0] + ys[..., None] * slope[1]
    cx, cy = rng.uniform(0.3, 0.7, size=2) * size
    cv2.circle(image, (int(cx), int(cy)), size // 6, rng.uniform(0, 255, size=3).tolist(), -1)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, ext: str = ".jpg") -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


@pytest.fixture
def make_rec(tmp_path: Path) -> Callable[..., Path]:
    """``make_rec(labels, meta=True, name="train", payloads=None)`` -> path of a written ``.rec``.

    With ``meta`` the file has insightface's layout: record 0 = ``[A, B]``, images at keys 1..A-1 and one
    identity record per class after them. Image ``i`` is ``make_image(i)`` as JPEG unless ``payloads`` gives
    its bytes.
    """

    def _make(labels: Sequence[int], meta: bool = True, name: str = "train", folder: Path | None = None,
              payloads: dict[int, bytes] | None = None, extra_label: bool = False) -> Path:
        folder = folder or tmp_path / "rec"
        folder.mkdir(parents=True, exist_ok=True)
        rec = folder / f"{name}.rec"
        classes = sorted(set(labels))
        with RecordWriter(rec) as writer:
            first = 1 if meta else 0
            if meta:
                end = first + len(labels)
                writer.write(0, pack_record(IRHeader(2, (float(end), float(end + len(classes))))))
            for i, label in enumerate(labels):
                payload = (payloads or {}).get(i, encode(make_image(i)))
                header = (IRHeader(2, (float(label), 7.0), i + first) if extra_label
                          else IRHeader(0, float(label), i + first))
                writer.write(i + first, pack_record(header, payload))
            if meta:
                for j, cls in enumerate(classes):
                    members = [i + first for i, lab in enumerate(labels) if lab == cls]
                    writer.write(end + j, pack_record(IRHeader(2, (float(members[0]), float(members[-1] + 1)))))
        return rec

    return _make


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[..., Path]:
    """``make_folder({identity: count})`` -> root of ``root/<identity>/<i>.png`` with distinct images."""

    def _make(counts: dict[str, int], root: Path | None = None, ext: str = ".png") -> Path:
        root = root or tmp_path / "faces"
        seed = 0
        for identity, count in counts.items():
            (root / identity).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                seed += 1
                (root / identity / f"{i:03d}{ext}").write_bytes(encode(make_image(1000 + seed), ext))
        return root

    return _make


def write_bin(path: Path, images: Sequence[np.ndarray], issame: Sequence[bool], ext: str = ".png") -> Path:
    """A verification ``.bin`` as insightface writes it: pickle of (encoded images, issame)."""
    payload = ([encode(img, ext) for img in images], [bool(s) for s in issame])
    path.write_bytes(pickle.dumps(payload, protocol=2))
    return path


@pytest.fixture
def bin_writer() -> Callable[..., Path]:
    """``bin_writer(path, images, issame, ext=".png")``."""
    return write_bin


@pytest.fixture
def image_factory() -> Callable[..., np.ndarray]:
    """``image_factory(seed, size=112)`` -> a distinct uint8 BGR image."""
    return make_image


@pytest.fixture
def encoder() -> Callable[..., bytes]:
    """``encoder(image, ext=".jpg")`` -> encoded bytes."""
    return encode
