"""1:N identification of probe images against a gallery, clean and occluded, with optional QAConv re-ranking
(SPEC §13.4); behind ``oaml identify``.

:func:`identify` embeds the probes (:mod:`oaml.evaluation.probes`), searches the gallery
(:meth:`oaml.evaluation.gallery.Gallery.search`), optionally re-ranks the top N with QAConv
(:mod:`oaml.evaluation.rerank`) and writes into the output folder:

- ``identify.csv``: the ranked identities of every clean probe, and ``identify_<protocol>.csv`` for each occluded
  protocol (:func:`oaml.evaluation.identify_report.write_identify_csv`);
- ``results.json``: settings, gallery and model provenance, probe counts, timings and, for labelled probes, the
  metrics of :mod:`oaml.evaluation.identification` per protocol and method (``metrics.<protocol>.global`` for the
  search, ``metrics.<protocol>.rerank`` for the re-ranked lists): rank-1/rank-5 and the CMC over the enrolled
  probes, DIR at FPIR = 1e-1, 1e-2 over all probes (only where the non-enrolled probes resolve the FPIR);
- ``cmc.png`` (enrolled probes) and ``det.png`` (open set), one line per protocol and method.

**Protocols.** ``clean`` identifies the probes as they are. Each occluder adds a protocol in which every probe is
first occluded (the gallery stays clean): ``masked`` (``mask_probes``) draws the synthetic medical mask seeded by
``(mask_seed, probe index)`` (:class:`~oaml.evaluation.embed.SeededOccluder`); the ``occluders`` argument plugs in any
other :data:`~oaml.evaluation.embed.ImageOccluder` under a name of its own. The model predicts the probes' visibility
maps itself; the occluder's ground-truth visibility is not used.

**Memory.** Probes are processed in chunks of ``probe_chunk`` images (features, search and QAConv scores per
chunk); only their top-k lists and candidate scores are kept, so the fusion statistics of re-ranking still cover all
re-scored candidates of the protocol (:data:`oaml.evaluation.rerank.RERANK_FUSION_NOTE`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oaml.errors import ConfigError
from oaml.evaluation.api import FaceRecognizer
from oaml.evaluation.embed import ImageOccluder, SeededOccluder
from oaml.evaluation.gallery import Gallery
from oaml.evaluation.gallery_features import describe_model, stored_features
from oaml.evaluation.gallery_search import SearchResult
from oaml.evaluation.identification import IdentificationResult, identification_metrics
from oaml.evaluation.identify_report import write_identify_csv, write_plots
from oaml.evaluation.options import IdentifyOptions
from oaml.evaluation.probes import ProbeSet, load_probes
from oaml.evaluation.report import write_json
from oaml.evaluation.rerank import (RERANK_FUSION_NOTE, RerankResult, fuse_candidates, qaconv_identity_scores,
                                   ranked_identities)

__all__ = ["CLEAN", "IdentifyOutcome", "ProtocolRun", "identify", "probe_protocols"]

logger = logging.getLogger(__name__)

CLEAN = "clean"
"""The protocol of unoccluded probes."""
_PROTOCOL_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass
class ProtocolRun:
    """The lists of one protocol.

    Attributes:
        search: The global search of every probe.
        reranked: The re-ranked candidates, or None.
        seconds: Wall seconds of ``features``, ``search`` and ``rerank`` (QAConv and fusion).
    """

    search: SearchResult
    reranked: RerankResult | None
    seconds: dict[str, float] = field(default_factory=dict)

    def lists(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Method name (``global``, ``rerank``) to its ``P x k`` identity indices and ``P`` rank-1 scores; the
        re-ranked lists continue with the search's ranks beyond ``rerank_n``
        (:func:`~oaml.evaluation.rerank.ranked_identities`)."""
        out = {"global": (self.search.indices, self.search.scores[:, 0])}
        if self.reranked is not None:
            out["rerank"] = (ranked_identities(self.search, self.reranked), self.reranked.scores[:, 0])
        return out


@dataclass
class IdentifyOutcome:
    """What :func:`identify` produced.

    Attributes:
        results: The content of ``results.json``.
        files: Output name to path.
        runs: Protocol name (``clean`` first) to its lists.
    """

    results: dict[str, Any]
    files: dict[str, Path]
    runs: dict[str, ProtocolRun]

    @property
    def search(self) -> SearchResult:
        """The global search of the clean probes."""
        return self.runs[CLEAN].search

    @property
    def reranked(self) -> RerankResult | None:
        """The re-ranked lists of the clean probes, or None."""
        return self.runs[CLEAN].reranked


def probe_protocols(options: IdentifyOptions, occluders: Mapping[str, ImageOccluder] | None = None
                    ) -> dict[str, ImageOccluder | None]:
    """``clean`` (no occluder), ``masked`` with ``options.mask_probes``, then ``occluders`` in their order.

    Raises:
        ConfigError: If an occluder's name is taken or is not lower-case letters, digits and ``_`` (it names a file).
    """
    protocols: dict[str, ImageOccluder | None] = {CLEAN: None}
    if options.mask_probes:
        protocols["masked"] = SeededOccluder("mask", options.mask_seed)
    for name, occluder in (occluders or {}).items():
        if not _PROTOCOL_NAME.fullmatch(name) or name in protocols:
            raise ConfigError(f"occluder name {name!r} must be new (not {', '.join(protocols)}) and match "
                              f"{_PROTOCOL_NAME.pattern}")
        protocols[name] = occluder
    return protocols


def _run(model: FaceRecognizer, gallery: Gallery, probes: ProbeSet, options: IdentifyOptions,
         occluder: ImageOccluder | None) -> ProtocolRun:
    """Features, search and QAConv candidate scores per probe chunk; fusion over all candidates at the end."""
    n, rerank = len(probes), options.rerank_n > 0
    found_i, found_s, qaconv = [], [], []
    seconds = dict.fromkeys(("features", "search", "rerank"), 0.0)
    for start in range(0, n, options.probe_chunk):
        clock = time.perf_counter()
        feats = stored_features(model, probes.images, indices=np.arange(start, min(start + options.probe_chunk, n)),
                                with_maps=rerank, dtype="float32", occluder=occluder,
                                num_workers=options.num_workers, progress=options.progress)
        seconds["features"] += time.perf_counter() - clock
        clock = time.perf_counter()
        top = gallery.search(feats.embedding, k=options.k, per_identity=options.per_identity,
                             backend=options.backend)
        seconds["search"] += time.perf_counter() - clock
        found_i.append(top.indices)
        found_s.append(top.scores)
        if rerank:
            clock = time.perf_counter()
            qaconv.append(qaconv_identity_scores(gallery, feats, top.indices[:, :options.rerank_n], model))
            seconds["rerank"] += time.perf_counter() - clock
    search = SearchResult(indices=np.concatenate(found_i), scores=np.concatenate(found_s),
                          identity_names=gallery.identity_names, per_identity=options.per_identity,
                          backend=options.backend)
    if not rerank:
        return ProtocolRun(search, None, seconds)
    clock, m = time.perf_counter(), options.rerank_n
    reranked = fuse_candidates(search.indices[:, :m], search.scores[:, :m], np.concatenate(qaconv),
                               gallery.identity_names, options.weights)
    seconds["rerank"] += time.perf_counter() - clock
    return ProtocolRun(search, reranked, seconds)


def _metrics(probes: ProbeSet, gallery: Gallery, run: ProtocolRun,
             fpirs: tuple[float, ...]) -> dict[str, IdentificationResult]:
    truth = np.asarray(probes.identities, object)
    enrolled = np.asarray(gallery.identity_names, object)
    return {method: identification_metrics(enrolled[indices], top1, truth, enrolled, fpirs)
            for method, (indices, top1) in run.lists().items()}


def _check(model: FaceRecognizer, gallery: Gallery, options: IdentifyOptions) -> None:
    gallery.check_model(model)
    if options.rerank_n and model.qaconv is None:
        raise ConfigError(f"re-ranking needs a QAConv matcher; {model.info.path} has none "
                          f"({model.info.qaconv_unavailable})")
    if options.rerank_n and not gallery.has_maps:
        raise ConfigError(f"gallery {gallery.source or '(not saved)'} holds no QAConv maps; rebuild it with maps "
                          f"(oaml gallery build --with-maps) to re-rank, or turn re-ranking off")


def identify(model: FaceRecognizer, gallery: Gallery | str | os.PathLike[str],
             probes: ProbeSet | str | os.PathLike[str], output_dir: str | os.PathLike[str],
             options: IdentifyOptions | None = None,
             occluders: Mapping[str, ImageOccluder] | None = None) -> IdentifyOutcome:
    """Identify every probe against the gallery, per protocol, and write the outputs of the module docstring.

    Args:
        model: The model that built the gallery.
        gallery: A :class:`Gallery` or its file.
        probes: A :class:`~oaml.evaluation.probes.ProbeSet`, a labelled identity folder or a list file.
        output_dir: Output folder (created if needed).
        options: Settings.
        occluders: More occluded protocols, name to :data:`~oaml.evaluation.embed.ImageOccluder` (see
            :func:`probe_protocols`).

    Returns:
        An :class:`IdentifyOutcome`.

    Raises:
        FileNotFoundError: If an input does not exist.
        DataError: If the gallery was built with another model, or on unusable probes or gallery files.
        ConfigError: On re-ranking without QAConv or without maps in the gallery, or a bad occluder name.
    """
    options = options or IdentifyOptions()
    start, started_at = time.perf_counter(), _dt.datetime.now(_dt.timezone.utc)
    gallery = gallery if isinstance(gallery, Gallery) else Gallery.load(gallery)
    _check(model, gallery, options)
    protocols = probe_protocols(options, occluders)
    probes = probes if isinstance(probes, ProbeSet) else load_probes(probes, model.info.input_size, model.resize)
    runs = {name: _run(model, gallery, probes, options, occluder) for name, occluder in protocols.items()}
    metrics = None
    if probes.identities is not None:
        metrics = {name: _metrics(probes, gallery, run, options.fpirs) for name, run in runs.items()}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {f"identify_{name}": write_identify_csv(out / ("identify.csv" if name == CLEAN else
                                                           f"identify_{name}.csv"), probes.images.names,
                                                    run.search, run.reranked)
             for name, run in runs.items()}
    if metrics and options.plots:
        files.update(write_plots(metrics, out))
    results = _results(model, gallery, probes, options, protocols, metrics, runs, started_at)
    results["timings"]["wall_time_s"] = time.perf_counter() - start
    results["files"] = {name: path.name for name, path in {**files, "results": out / "results.json"}.items()}
    files["results"] = write_json(out / "results.json", results)
    logger.info("identified %d probes (%s) against %d identities; wrote %s", len(probes), ", ".join(runs),
                gallery.num_identities, out)
    return IdentifyOutcome(results=results, files=files, runs=runs)


def _results(model: FaceRecognizer, gallery: Gallery, probes: ProbeSet, options: IdentifyOptions,
             protocols: Mapping[str, ImageOccluder | None], metrics: dict[str, dict[str, IdentificationResult]] | None,
             runs: Mapping[str, ProtocolRun], started_at: _dt.datetime) -> dict[str, Any]:
    from oaml import __version__

    fusion = None
    if options.rerank_n:
        fusion = {"note": RERANK_FUSION_NOTE, "weights": {"global": options.adaface_weight,
                                                           "qaconv": options.qaconv_weight},
                  "params": {name: run.reranked.fusion for name, run in runs.items() if run.reranked is not None}}
    return {
        "command": "identify", "oaml_version": __version__, "date": started_at.isoformat(timespec="seconds"),
        "settings": asdict(options), "gallery": gallery.describe(), "model": describe_model(model),
        "probes": probes.counts(gallery.identity_names),
        "protocols": {name: {"occluder": None if occ is None else repr(occ)} for name, occ in protocols.items()},
        "metrics": None if metrics is None else {name: {method: m.to_dict() for method, m in per.items()}
                                                 for name, per in metrics.items()},
        "metrics_note": ("rank-k/CMC over the enrolled probes; DIR@FPIR over all probes, thresholding the rank-1 score "
                         "(the cosine for global, the fused score for rerank; SPEC §13.4); the re-ranked lists are "
                         "the rerank_n re-ranked candidates followed by the search's ranks rerank_n + 1 .. k"
                         if metrics is not None else "unlabelled probes (a list file): no metrics"),
        "fusion": fusion,
        "timings": {"per_protocol_s": {name: run.seconds for name, run in runs.items()}},
    }
