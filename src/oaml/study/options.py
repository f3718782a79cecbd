"""What a study runs: its options, the variants of the ablation and the scored methods (used by the runs and the
report alike)."""

from __future__ import annotations

import dataclasses
import os
import shlex
from typing import Any

from oaml.config import LossConfig
from oaml.errors import ConfigError

__all__ = ["BENCHMARK_PROTOCOLS", "CALIBRATED_OCCLUDERS", "FAR", "IMAGES_PER_IDENTITY", "METHODS", "PROTOCOLS",
           "StudyOptions", "VARIANTS", "Variant", "threads_per_run"]

FAR = 1e-2
"""The FAR of the reported TAR."""

METHODS = ("adaface", "qaconv", "combined", "combined_vis")
"""``combined`` is the evaluator's label-free fusion; ``combined_vis`` the visibility-aware fusion
(:mod:`oaml.evaluation.fusion`), each fold fitted on the other nine folds only."""
PROTOCOLS: dict[str, tuple[str | None, str | None]] = {
    "clean": (None, None), "masked": (None, "mask"), "complementary": ("mask", "sunglasses"),
    "sunglasses": (None, "sunglasses"), "hand_mouth": (None, "hand_mouth")}
"""Held-out protocols: (occluder of the first image, of the second image) of every pair (SPEC §13.1: the
one-sided medical mask barely hurts a mask-trained model; complementary and unseen occluders do)."""
BENCHMARK_PROTOCOLS = {f"view2_{name}": PROTOCOLS[name] for name in ("clean", "masked", "complementary")}
"""The LFW View-2 pairs of people unseen in training, under these protocols."""
CALIBRATED_OCCLUDERS = ("mask", "sunglasses", "hand_mouth")
"""Occluders whose true maps score the occlusion head on the held-out images."""
IMAGES_PER_IDENTITY = LossConfig().instances_per_identity
"""K of the PK batches (the study does not change it)."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One training configuration of the ablation: flat config overrides on top of the study's settings."""

    key: str
    title: str
    overrides: dict[str, Any]

    @property
    def trains_occlusion(self) -> bool:
        return self.overrides.get("occlusion_loss_weight", 1.0) > 0


_NO_OCCLUSION = {"occlusion_loss_weight": 0.0, "occlusion_method": "none"}
VARIANTS: dict[str, Variant] = {v.key: v for v in (
    # AdaFace alone is trained with its own loss weight 1 (its original recipe): with the full objective's 0.1 and
    # the same learning rate the baseline would take ten times smaller steps.
    Variant("a", "AdaFace only", {"adaface_loss_weight": 1.0, "qaconv_loss_weight": 0.0, **_NO_OCCLUSION,
                                  "mask_prob": 0.0}),
    Variant("b", "AdaFace + synthetic masks", {"adaface_loss_weight": 1.0, "qaconv_loss_weight": 0.0,
                                               **_NO_OCCLUSION}),
    Variant("c", "+ QAConv losses", dict(_NO_OCCLUSION)),
    Variant("d", "full, the seed's coupling: the QAConv losses also train the occlusion head",
            {"occlusion_detach": False}),
    Variant("e", "full objective (defaults): occlusion head, occlusion-weighted QAConv, maps detached in QAConv",
            {"occlusion_detach": True}),
)}
"""(a) AdaFace only; (b) + synthetic masks (p 0.5); (c) + QAConv pairwise/triplet/class-memory losses (default
weights 0.1 AdaFace, 0.7 QAConv); (d) + occlusion-head MSE (0.3) with the predicted maps weighting QAConv, the
QAConv losses' gradient reaching the head through the maps (the seed's default, which saturates the head); (e) the
same with the maps detached where they weight QAConv, so that only the MSE trains the head (the default)."""


@dataclasses.dataclass(frozen=True)
class StudyOptions:
    """Settings of one study (the flags of ``oaml study``); every run uses all of them.

    Attributes:
        roots: Aligned identity folders; empty means :func:`~oaml.study.data.default_roots`.
        seeds: Training seeds (initialisation, sampling, augmentation).
        splits: Identity-split seeds; the held-out pairs depend on the split only.
        variants: Keys of :data:`VARIANTS` to train.
        test_fraction: Fraction of every dataset's identities held out.
        arch: Backbone.
        width: Width multiplier of the backbone.
        epochs: Training epochs (a PK epoch shows every training identity once, K images each).
        batch_size: P x K training batch.
        lr: Peak SGD learning rate (warm-up over the first 5% of the epochs, x0.1 at 5/8 and 7/8 of them).
        mask_seed: Seed of the deterministic occluders on the held-out probes.
        benchmark: A benchmark folder with an LFW ``pairs.txt`` (its pairs of people unseen in training are scored
            too, by the runs of the first seed); ``"auto"`` uses ``../shared/data/lfw_view2_arcface112`` when
            the study runs on the default data and it exists; ``""`` scores none.
        jobs: Runs trained side by side.
        output_dir: Where ``results.md``, ``results.json`` and ``figures/`` go: the work folder by default;
            ``--output-dir docs`` regenerates the repository's ``docs/results.md``.
        work_dir: Where the runs go.
    """

    roots: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    splits: tuple[int, ...] = (0,)
    variants: tuple[str, ...] = ("c", "e")
    test_fraction: float = 0.3
    arch: str = "ir_18"
    width: float = 0.125
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.1
    mask_seed: int = 0
    benchmark: str = "auto"
    jobs: int = 2
    output_dir: str = "experiments/study"
    work_dir: str = "experiments/study"

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        checks = [("--variants", self.variants, not unknown and len(set(self.variants)) == len(self.variants)
                   and bool(self.variants), f"choose distinct keys of {', '.join(VARIANTS)}"),
                  ("--seeds", self.seeds, bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
                   "expected distinct integers"),
                  ("--splits", self.splits, bool(self.splits) and len(set(self.splits)) == len(self.splits),
                   "expected distinct integers"),
                  ("--epochs", self.epochs, self.epochs >= 1, "expected >= 1"),
                  ("--batch-size", self.batch_size,
                   self.batch_size >= IMAGES_PER_IDENTITY and self.batch_size % IMAGES_PER_IDENTITY == 0,
                   f"expected a positive multiple of {IMAGES_PER_IDENTITY} (images per identity)"),
                  ("--jobs", self.jobs, self.jobs >= 1, "expected >= 1")]
        for flag, value, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{flag}: {value!r} is invalid; {expected}")

    def command(self) -> str:
        """The ``oaml study`` command line that reproduces these options (flags only where not the default)."""
        words = ["oaml", "study", *self.roots]
        default = StudyOptions()
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "roots" or value == getattr(default, item.name):
                continue
            values = value if isinstance(value, tuple) else (value,)
            words += [f"--{item.name.replace('_', '-')}", *map(str, values)]
        return shlex.join(words)


def threads_per_run(jobs: int) -> int:
    """Torch threads of each of ``jobs`` runs trained side by side: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // jobs)
