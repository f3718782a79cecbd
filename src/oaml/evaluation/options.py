"""Settings of one ``oaml eval`` or ``oaml identify`` run, torch-free so that the command line can show their
defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from oaml.constants import PAIRS_FORMATS
from oaml.evaluation.identification import DEFAULT_FPIRS
from oaml.evaluation.verification import DEFAULT_FARS

__all__ = ["PER_IDENTITY", "SEARCH_BACKENDS", "EvalOptions", "IdentifyOptions"]

PER_IDENTITY = ("max", "mean")
"""Per-identity scores of a gallery search: the best image's cosine, or the cosine to the mean template."""
SEARCH_BACKENDS = ("exact", "faiss")
"""Search backends: exact torch (default) or the optional faiss extra (same results)."""


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


_EVAL = EvalOptions()


@dataclass(frozen=True)
class IdentifyOptions:
    """Settings of one identification run (the flags of ``oaml identify``).

    Attributes:
        k: Identities listed per probe.
        per_identity: ``"max"`` (best image) or ``"mean"`` (template), see :data:`PER_IDENTITY`.
        backend: ``"exact"`` or ``"faiss"``, see :data:`SEARCH_BACKENDS`.
        rerank_n: Re-rank this many top candidates with QAConv; 0 turns re-ranking off.
        adaface_weight: Weight of the standardised global (AdaFace cosine) score in the re-ranking fusion (the
            evaluator's default).
        qaconv_weight: Weight of the standardised QAConv score in the re-ranking fusion.
        mask_probes: Also identify the probes with a synthetic medical mask (protocol ``masked``).
        mask_seed: Seed of the masks (with the probe's index).
        fpirs: FPIR targets of the open-set metrics.
        probe_chunk: Probes whose features exist at once.
        num_workers: DataLoader workers that decode (and occlude) the probes.
        progress: tqdm bars on stderr.
        plots: Write ``cmc.png`` and ``det.png``.
    """

    k: int = 10
    per_identity: str = "max"
    backend: str = "exact"
    rerank_n: int = 0
    adaface_weight: float = _EVAL.adaface_weight
    qaconv_weight: float = _EVAL.qaconv_weight
    mask_probes: bool = False
    mask_seed: int = _EVAL.mask_seed
    fpirs: tuple[float, ...] = DEFAULT_FPIRS
    probe_chunk: int = 1024
    num_workers: int = 0
    progress: bool = True
    plots: bool = True

    def __post_init__(self) -> None:
        if self.k < 1 or self.rerank_n < 0 or self.probe_chunk < 1 or self.num_workers < 0:
            raise ValueError(f"need k >= 1, rerank_n >= 0, probe_chunk >= 1 and num_workers >= 0; got k={self.k}, "
                             f"rerank_n={self.rerank_n}, probe_chunk={self.probe_chunk}, "
                             f"num_workers={self.num_workers}")
        if self.rerank_n > self.k:
            raise ValueError(f"rerank_n ({self.rerank_n}) cannot exceed k ({self.k}): only the top k are re-ranked")
        if self.per_identity not in PER_IDENTITY or self.backend not in SEARCH_BACKENDS:
            raise ValueError(f"per_identity must be one of {PER_IDENTITY} and backend one of {SEARCH_BACKENDS}, got "
                             f"{self.per_identity!r} and {self.backend!r}")
        if min(self.adaface_weight, self.qaconv_weight) < 0 or self.adaface_weight + self.qaconv_weight == 0:
            raise ValueError(f"weights must be >= 0 and not both 0, got adaface {self.adaface_weight}, "
                             f"qaconv {self.qaconv_weight}")
        if not self.fpirs or not all(0.0 < f <= 1.0 for f in self.fpirs):
            raise ValueError(f"fpirs must lie in (0, 1], got {self.fpirs}")

    @property
    def weights(self) -> tuple[float, float]:
        """``(w_global, w_qaconv)`` of the re-ranking fusion."""
        return self.adaface_weight, self.qaconv_weight
