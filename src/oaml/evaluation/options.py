"""Settings of one ``oaml eval`` run, torch-free so that the command line can show their defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from oaml.constants import PAIRS_FORMATS
from oaml.evaluation.verification import DEFAULT_FARS

__all__ = ["EvalOptions"]


@dataclass(frozen=True)
class EvalOptions:
    """Settings of one evaluation (the CLI flags of ``oaml eval``).

    Attributes:
        batch_size: Images per forward pass.
        adaface_weight: Weight of the standardised AdaFace score in ``combined``.
        qaconv_weight: Weight of the standardised QAConv score in ``combined``.
        resize: Resize faces that are not aligned 112x112 crops instead of refusing them.
        mask_probes: Also run the masked-vs-clean protocol (the protocol ``mask`` of ``occluders``).
        mask_seed: Seed of the synthetic masks and of every other occluder (with the image index).
        arch: Backbone override; None reads the checkpoint.
        device: Torch device.
        num_workers: DataLoader workers for decoding (and masking).
        progress: tqdm bars on stderr.
        fars: FAR operating points.
        qaconv_block_rows: Probe rows per all-pairs QAConv block.
        max_pairs: Refuse an all-pairs folder with more pairs than this (use a pairs file instead).
        plots: Write ``roc.png`` and the score histograms (matplotlib is the slowest part on small sets).
        skip_bad: Leave out unreadable images and the pairs that use them (listed in the outputs) instead of
            stopping at the first one.
        dynamic_weights: Apply the seed's dynamic rule to the 10-fold combined accuracy, as validation does:
            weights (0.8, 0.2) while QAConv's own accuracy is below 0.5.
        pairs_format: Format of the pairs file: ``auto`` (detected), ``lfw`` or ``list`` ("path_a path_b label").
        occluders: Occlusion protocols to run besides the clean one: ``NAME`` (the occluder on the second image)
            or ``FIRST+SECOND`` (:class:`oaml.data.occluders.OcclusionProtocol`), each reported on its own.
        landmarks: Place the occluders on the landmarks of a folder's ``landmarks.tsv`` (``oaml align``'s) when it
            has one; False uses the ArcFace template for every image.
    """

    batch_size: int = 64
    adaface_weight: float = 0.5
    qaconv_weight: float = 0.5
    resize: bool = False
    mask_probes: bool = False
    mask_seed: int = 0
    arch: str | None = None
    device: str = "cpu"
    num_workers: int = 0
    progress: bool = True
    fars: tuple[float, ...] = DEFAULT_FARS
    qaconv_block_rows: int = 128
    max_pairs: int = 50_000_000
    plots: bool = True
    skip_bad: bool = False
    dynamic_weights: bool = False
    pairs_format: str = "auto"
    occluders: tuple[str, ...] = ()
    landmarks: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0 or self.qaconv_block_rows < 1:
            raise ValueError(f"batch_size and qaconv_block_rows must be >= 1 and num_workers >= 0, got "
                             f"{self.batch_size}, {self.qaconv_block_rows}, {self.num_workers}")
        if min(self.adaface_weight, self.qaconv_weight) < 0 or self.adaface_weight + self.qaconv_weight == 0:
            raise ValueError(f"weights must be >= 0 and not both 0, got adaface {self.adaface_weight}, "
                             f"qaconv {self.qaconv_weight}")
        if self.pairs_format not in PAIRS_FORMATS:
            raise ValueError(f"pairs_format must be one of {', '.join(PAIRS_FORMATS)}, got {self.pairs_format!r}")
