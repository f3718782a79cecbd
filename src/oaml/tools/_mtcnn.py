"""A small MTCNN face and five-landmark detector that needs torch only (no torchvision).

Zhang, Zhang, Li and Qiao, "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional
Networks", IEEE SPL 2016. Three cascaded networks:

1. **P-Net** (fully convolutional, 12 x 12 receptive field, stride 2) runs on an image pyramid whose scales
   start at ``12 / min_face_size`` and shrink by ``factor``; every cell whose face probability reaches the
   first threshold proposes a 12 x 12 window, which is mapped back to the image, de-duplicated by NMS (per
   scale, then over all scales) and refined by the predicted box offsets.
2. **R-Net** scores 24 x 24 crops of the squared candidates, keeps those above the second threshold, applies
   NMS and its own box offsets.
3. **O-Net** scores 48 x 48 crops, regresses the boxes once more and predicts the five landmarks (eye
   centres, nose tip, mouth corners) relative to its input box; a final NMS uses the intersection over the
   smaller box.

Numerical conventions. Boxes are kept in the 1-based, inclusive coordinates of the authors' released code
(a 12 x 12 window at 0-based (c, r) of the scaled image maps to ``floor((2c + 1) / scale)`` ..
``floor((2c + 12) / scale)``; R-Net and O-Net offsets are in units of ``x2 - x1 + 1``). The remaining free
choices follow facenet-pytorch 2.6.0, whose detections made the reference crops in
``../shared/data/lfw_subset10_arcface112``, so that this detector reproduces its landmarks (to 0.01 px on
those 100 images) without its code: pyramid levels of ``floor(side * scale) + 1`` pixels, resized with area
interpolation; box arithmetic in float32 with fractional boxes, truncated to whole pixels only to cut crops;
crops clipped to the image (not zero-padded) and resized with area interpolation; stage NMS by
intersection over union of continuous areas, the final one by intersection over the smaller inclusive box.
Landmarks and boxes are returned in 0-based pixel coordinates.

The weights are the Caffe-trained originals as shipped (``data/{pnet,rnet,onet}.pt``, MIT) inside the
``facenet-pytorch`` wheel. That package's own detector imports torchvision, which this project must not
install; so only its weight files are read: the package is located without being imported, and its state
dicts are loaded strictly into the modules below, whose parameter names match them.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Detections", "MTCNN", "MTCNN_INSTALL_HINT", "ONet", "PNet", "RNet", "mtcnn_weights_dir"]

logger = logging.getLogger(__name__)

MTCNN_INSTALL_HINT = ('face detection needs the MTCNN weights of the "mtcnn" extra: '
                      'pip install --no-deps facenet-pytorch  (or: pip install --no-deps "oaml[mtcnn]"); '
                      "--no-deps keeps it from replacing torch and installing torchvision")
"""How to install the optional ``mtcnn`` extra (facenet-pytorch pins old torch versions, hence --no-deps)."""

_PIXEL_MEAN = 127.5
_PIXEL_SCALE = 0.0078125  # 1/128: the networks were trained on (x - 127.5) / 128
_STAGE_NMS = (0.5, 0.7, 0.7)  # P-Net per scale, P-Net over all scales, R-Net (IoU)
_FINAL_NMS = 0.7  # O-Net, intersection over the smaller box
_MAX_BATCH = 256  # crops per R-Net/O-Net forward pass


class PNet(nn.Module):
    """Proposal network: B x 3 x H x W -> (B x 2 x h x w face probabilities, B x 4 x h x w box offsets)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)  # Caffe pools round up
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_1(x).softmax(dim=1), self.conv4_2(x)


def _flatten_caffe(x: Tensor) -> Tensor:
    """Flatten B x C x H x W in the (W, H, C) order the converted fully connected weights expect."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement network: B x 3 x 24 x 24 -> (B x 2 probabilities, B x 4 box offsets)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_caffe(self.prelu3(self.conv3(x)))))
        return self.dense5_1(x).softmax(dim=1), self.dense5_2(x)


class ONet(nn.Module):
    """Output network: B x 3 x 48 x 48 -> (B x 2 probabilities, B x 4 box offsets, B x 10 landmarks)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_caffe(self.prelu4(self.conv4(x)))))
        return self.dense6_1(x).softmax(dim=1), self.dense6_2(x), self.dense6_3(x)


def mtcnn_weights_dir() -> Path:
    """The ``data`` folder of the installed facenet-pytorch package (located, not imported).

    Raises:
        ImportError: naming the ``mtcnn`` extra if the package or its weight files are missing.
    """
    spec = importlib.util.find_spec("facenet_pytorch")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "data"
        if all((folder / f"{name}.pt").is_file() for name in ("pnet", "rnet", "onet")):
            return folder
    found = f" (found the package in {locations[0]}, but not data/pnet.pt, rnet.pt, onet.pt)" if locations else ""
    raise ImportError(MTCNN_INSTALL_HINT + found)


@dataclass(frozen=True)
class Detections:
    """Faces found in one image, sorted by decreasing probability.

    Attributes:
        boxes: N x 4 float boxes ``x1, y1, x2, y2`` in 0-based pixel coordinates.
        probs: N face probabilities.
        landmarks: N x 5 x 2 (x, y) landmarks: left eye, right eye, nose tip, left and right mouth corner
            (image left and right), in 0-based pixel coordinates.
    """

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.probs)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, over_min: bool = False) -> np.ndarray:
    """Greedy non-maximum suppression; returns the kept indices, best first.

    With ``over_min`` the overlap is the intersection over the smaller box, with inclusive pixel areas
    (``x2 - x1 + 1``), and of equal scores (O-Net saturates at 1.0) the later candidate wins; otherwise
    the overlap is the intersection over union of continuous areas (``x2 - x1``) and the earlier one wins.
    """
    extra = 1.0 if over_min else 0.0
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = (x2 - x1 + extra) * (y2 - y1 + extra)
    order = np.argsort(scores, kind="stable")[::-1] if over_min else np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + extra)
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + extra)
        inter = inter_w * inter_h
        denom = np.minimum(area[best], area[rest]) if over_min else area[best] + area[rest] - inter
        order = rest[~(inter > threshold * denom)]
    return np.asarray(keep, dtype=np.int64)


def _apply_offsets(boxes: np.ndarray, offsets: np.ndarray, inclusive: bool = True) -> np.ndarray:
    """Shift box corners by offsets given in units of the box size (``x2 - x1``, ``+ 1`` if ``inclusive``)."""
    size = boxes[:, 2:4] - boxes[:, 0:2] + np.float32(1.0 if inclusive else 0.0)
    out = boxes.copy()
    out[:, 0:2] += offsets[:, 0:2] * size
    out[:, 2:4] += offsets[:, 2:4] * size
    return out


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square of side max(w, h) about the same centre."""
    size = boxes[:, 2:4] - boxes[:, 0:2]
    side = size.max(axis=1, keepdims=True)
    out = boxes.copy()
    out[:, 0:2] = boxes[:, 0:2] + np.float32(0.5) * size - np.float32(0.5) * side
    out[:, 2:4] = out[:, 0:2] + side
    return out


def _empty() -> Detections:
    return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))


class MTCNN:
    """Three-stage MTCNN detector (see the module docstring).

    Args:
        min_face_size: smallest face side searched, in pixels.
        thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
        factor: ratio of consecutive pyramid scales.
        weights_dir: folder with ``pnet.pt``, ``rnet.pt``, ``onet.pt``; default: the installed facenet-pytorch.

    Raises:
        ImportError: naming the ``mtcnn`` extra when the weights cannot be found.
    """

    def __init__(self, min_face_size: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, weights_dir: str | Path | None = None) -> None:
        if min_face_size < 12 or not 0.0 < factor < 1.0:
            raise ValueError(f"min_face_size must be >= 12 and 0 < factor < 1, got {min_face_size} and {factor}")
        folder = Path(weights_dir) if weights_dir is not None else mtcnn_weights_dir()
        self.min_face_size, self.thresholds, self.factor = min_face_size, tuple(thresholds), factor
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for name, net in (("pnet", self.pnet), ("rnet", self.rnet), ("onet", self.onet)):
            state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
            net.eval()
        logger.debug("loaded the MTCNN weights from %s", folder)

    def _scales(self, height: int, width: int) -> list[float]:
        scale = 12.0 / self.min_face_size
        side = min(height, width) * scale
        scales = []
        while side >= 12.0:
            scales.append(scale)
            scale *= self.factor
            side *= self.factor
        return scales

    def _propose(self, image: Tensor) -> np.ndarray:
        """Stage 1: K x 5 float32 candidates (x1, y1, x2, y2, prob), regressed and squared."""
        height, width = image.shape[-2:]
        found = []
        for scale in self._scales(height, width):
            size = (int(height * scale) + 1, int(width * scale) + 1)
            probs, offsets = self.pnet(F.interpolate(image, size=size, mode="area"))
            prob, offsets = probs[0, 1].numpy(), offsets[0].numpy()
            rows, cols = np.nonzero(prob >= self.thresholds[0])
            if rows.size == 0:
                continue
            # Cell (row, col) sees the scaled 12 x 12 window at (2 col, 2 row); 1-based inclusive corners.
            corner = np.stack([cols, rows], axis=1).astype(np.float32) * np.float32(2.0)
            boxes = np.floor(np.concatenate([corner + 1.0, corner + 12.0], axis=1) / np.float32(scale))
            cand = np.concatenate([boxes, prob[rows, cols, None], offsets[:, rows, cols].T], axis=1)
            found.append(cand[_nms(cand[:, :4], cand[:, 4], _STAGE_NMS[0])])
        if not found:
            return np.zeros((0, 5), np.float32)
        cand = np.concatenate(found).astype(np.float32)
        cand = cand[_nms(cand[:, :4], cand[:, 4], _STAGE_NMS[1])]
        boxes = _square(_apply_offsets(cand[:, :4], cand[:, 5:9], inclusive=False))
        return np.concatenate([boxes, cand[:, 4:5]], axis=1)

    @staticmethod
    def _crops(image: Tensor, boxes: np.ndarray, side: int) -> tuple[Tensor, np.ndarray]:
        """Crops of 1-based ``boxes`` (truncated to whole pixels and clipped to the image), resized to ``side``.

        Returns:
            N' x 3 x side x side crops and the indices of the N' boxes that overlap the image.
        """
        height, width = image.shape[-2:]
        ints = np.trunc(boxes[:, :4]).astype(np.int64)
        x1, y1 = np.maximum(ints[:, 0], 1) - 1, np.maximum(ints[:, 1], 1) - 1
        x2, y2 = np.minimum(ints[:, 2], width), np.minimum(ints[:, 3], height)
        valid = np.flatnonzero((x2 > x1) & (y2 > y1))
        crops = [F.interpolate(image[..., y1[i]:y2[i], x1[i]:x2[i]], size=(side, side), mode="area") for i in valid]
        return (torch.cat(crops) if crops else image.new_zeros((0, 3, side, side))), valid

    @staticmethod
    def _run(net: nn.Module, crops: Tensor) -> list[np.ndarray]:
        outputs = [net(crops[i:i + _MAX_BATCH]) for i in range(0, len(crops), _MAX_BATCH)]
        return [torch.cat(parts).numpy() for parts in zip(*outputs)]

    def _refine(self, image: Tensor, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-Net filtering, NMS, regression and squaring of stage-1 boxes."""
        crops, valid = self._crops(image, boxes, 24)
        if len(valid) == 0:
            return boxes[:0]
        probs, offsets = self._run(self.rnet, crops)
        keep = probs[:, 1] > self.thresholds[1]
        boxes = np.concatenate([boxes[valid[keep], :4], probs[keep, 1:2]], axis=1)
        order = _nms(boxes[:, :4], boxes[:, 4], _STAGE_NMS[2])
        boxes, offsets = boxes[order], offsets[keep][order]
        return np.concatenate([_square(_apply_offsets(boxes[:, :4], offsets)), boxes[:, 4:5]], axis=1)

    def _output(self, image: Tensor, boxes: np.ndarray) -> Detections:
        """Stage 3: O-Net scores, landmarks and final boxes."""
        crops, valid = self._crops(image, boxes, 48)
        if len(valid) == 0:
            return _empty()
        probs, offsets, points = self._run(self.onet, crops)
        keep = probs[:, 1] > self.thresholds[2]
        boxes, probs, offsets, points = boxes[valid[keep], :4], probs[keep, 1], offsets[keep], points[keep]
        size = boxes[:, 2:4] - boxes[:, 0:2] + np.float32(1.0)
        # O-Net gives the five x offsets, then the five y offsets, as fractions of its input box;
        # "- 1" turns the 1-based box corner into 0-based pixel coordinates.
        landmarks = np.stack([points[:, :5], points[:, 5:]], axis=2) * size[:, None, :] + boxes[:, None, 0:2] - 1.0
        boxes = _apply_offsets(boxes, offsets)
        order = _nms(boxes, probs, _FINAL_NMS, over_min=True)
        return Detections(boxes[order].astype(np.float64) - 1.0, probs[order].astype(np.float64),
                          landmarks[order].astype(np.float64))

    @torch.inference_mode()
    def detect(self, rgb: np.ndarray) -> Detections:
        """Detect faces and their five landmarks.

        Args:
            rgb: H x W x 3 uint8 image in **RGB** order (the networks were trained on RGB).

        Returns:
            The detections, best first (empty when there is no face).
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 image, got shape {rgb.shape}")
        image = (torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() - _PIXEL_MEAN)
        image = image * _PIXEL_SCALE
        boxes = self._propose(image)
        if len(boxes):
            boxes = self._refine(image, boxes)
        return self._output(image, boxes) if len(boxes) else _empty()
