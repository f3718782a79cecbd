"""The one scoring path (src/oaml/evaluation/scoring.py): flip fusion, distances, validation summaries (DDP
repeats counted once), the dynamic fusion rule, and validation's scores equal to ``oaml eval``'s."""

from __future__ import annotations

import math

import numpy as np
import pytest

import torch

from oaml.evaluation.scoring import PairScores, fuse_flip, fused_ten_fold, squared_distances, summarise_pairs
from oaml.evaluation.verification import combined_ten_fold_accuracy, ten_fold_accuracy


def _pairs(n_per_set: int, sets: int, rng: np.random.Generator) -> PairScores:
    n = n_per_set * sets
    issame = np.tile(np.repeat([True, False], n_per_set // 2), sets)
    dist = np.where(issame, rng.uniform(0.2, 1.0, n), rng.uniform(0.8, 2.0, n))
    qa = np.where(issame, 1.0, -1.0) + rng.normal(0, 0.1, n)
    return PairScores(np.arange(n), np.repeat(np.arange(sets), n_per_set), issame, dist, qa)


def test_separable_sets_score_one_and_average_over_present_sets() -> None:
    scores = _pairs(200, 2, np.random.default_rng(0))
    scores.dist_adaface = np.where(scores.issame, 0.5, 1.5)
    metrics = summarise_pairs(scores, ["lfw", "calfw"])
    for key in ("lfw_adaface_acc", "lfw_qaconv_acc", "lfw_combined_acc", "avg_combined_acc"):
        assert metrics[key] == pytest.approx(1.0)
    assert "cplfw_adaface_acc" not in metrics


def test_repeated_pairs_from_ddp_padding_count_once() -> None:
    scores = _pairs(100, 1, np.random.default_rng(1))
    padded = PairScores(*(np.concatenate([a, a[:7]]) for a in (scores.pair_index, scores.set_index, scores.issame,
                                                               scores.dist_adaface, scores.score_qaconv)))
    shuffled = np.random.default_rng(2).permutation(len(padded.pair_index))
    padded = PairScores(*(a[shuffled] for a in (padded.pair_index, padded.set_index, padded.issame,
                                                 padded.dist_adaface, padded.score_qaconv)))
    expected = ten_fold_accuracy(scores.dist_adaface, scores.issame, higher_is_same=False).accuracy
    assert summarise_pairs(padded, ["lfw"])["lfw_adaface_acc"] == pytest.approx(expected)


def test_without_qaconv_combined_is_adaface_and_qaconv_is_nan() -> None:
    scores = _pairs(100, 1, np.random.default_rng(3))
    scores.score_qaconv = None
    metrics = summarise_pairs(scores, ["agedb_30"], prefix="masked_")
    assert metrics["masked_agedb_30_combined_acc"] == metrics["masked_agedb_30_adaface_acc"]
    assert math.isnan(metrics["masked_agedb_30_qaconv_acc"])


def test_flip_fusion_and_distances() -> None:
    rng = np.random.default_rng(7)
    raw1, raw2 = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    n1, n2 = np.linalg.norm(raw1, axis=1), np.linalg.norm(raw2, axis=1)
    e1, e2 = raw1 / n1[:, None], raw2 / n2[:, None]
    fused = fuse_flip(*(torch.from_numpy(a) for a in (e1, n1, e2, n2[:, None]))).numpy()
    expected = (raw1 + raw2) / np.linalg.norm(raw1 + raw2, axis=1, keepdims=True)  # n e = the raw vector
    np.testing.assert_allclose(fused, expected, rtol=1e-6)
    d = squared_distances(torch.from_numpy(fused), torch.from_numpy(e1)).numpy()
    np.testing.assert_allclose(d, [np.sum((f - e) ** 2) for f, e in zip(fused, e1)], rtol=1e-6)
    assert ((d >= 0) & (d <= 4)).all()


def test_dynamic_rule_is_an_explicit_argument() -> None:
    rng = np.random.default_rng(4)
    issame = np.repeat([True, False], 50)
    dist = np.where(issame, rng.uniform(0.2, 1.2, 100), rng.uniform(0.8, 2.0, 100))
    bad_qaconv = np.where(issame, -1.0, 1.0) + rng.normal(0, 0.3, 100)  # below chance: higher score = impostor
    result, weights = fused_ten_fold(dist, bad_qaconv, issame, (0.5, 0.5), dynamic=True)
    assert weights == (0.8, 0.2)
    assert result.accuracy == combined_ten_fold_accuracy(dist, bad_qaconv, issame, 0.8, 0.2).accuracy
    assert fused_ten_fold(dist, bad_qaconv, issame, (0.5, 0.5), dynamic=False)[1] == (0.5, 0.5)


# --- one scoring path: validation during training == oaml eval, on the same .bin and checkpoint -----------------

def _validation_scores(checkpoint, data_root, batch: int):  # type: ignore[no-untyped-def]
    """Score the .bin the way validation does: the training system's validation_step over the datamodule's
    clean loader, then the logged summary."""
    from oaml.config import config_from_dict
    from oaml.training.build import build_datamodule, build_system
    from oaml.training.weights import load_start_weights

    config = config_from_dict(flat={"data_root": str(data_root), "train_data_path": "none", "val_data_path": "sets",
                                    "arch": "ir_18", "width": 0.125, "val_batch_size": batch, "num_workers": 0,
                                    "masked_protocol": False, "evaluate": True})
    datamodule = build_datamodule(config)
    datamodule.prepare_data()
    datamodule.setup("validate")
    system = build_system(config, num_classes=7, val_set_names=datamodule.val_datasets[0].names)
    load_start_weights(system, checkpoint)
    system.eval()
    system.on_validation_epoch_start()
    for k, pair_batch in enumerate(datamodule.val_dataloader()[0]):
        system.validation_step(pair_batch, k)
    scores = PairScores.concatenate(system._pair_scores[0]).deduplicated()
    return scores, summarise_pairs(scores, ["lfw"], system.eval_weights)


def test_validation_scores_equal_oaml_eval_scores(oaml_ckpt, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from eval_helpers import write_bin_of_faces

    from oaml.evaluation.api import load_model
    from oaml.evaluation.embed import extract_features
    from oaml.evaluation.eval_data import load_eval_set
    from oaml.evaluation.evaluate import evaluate, score_protocol
    from oaml.evaluation.options import EvalOptions

    bin_path = write_bin_of_faces(tmp_path / "sets" / "lfw.bin", pairs=40)
    batch = 20  # images per forward pass, the same on both sides
    validation, metrics = _validation_scores(oaml_ckpt, tmp_path, batch)

    options = EvalOptions(batch_size=batch, progress=False, plots=False, dynamic_weights=True)
    recognizer = load_model(oaml_ckpt, batch_size=batch)
    data = load_eval_set(bin_path)
    features = extract_features(recognizer, data.images, progress=False)
    protocol = score_protocol(recognizer, features, features, data.pair_i, data.pair_j, data.issame, options)
    dist = squared_distances(features.embedding[torch.as_tensor(data.pair_i)],
                             features.embedding[torch.as_tensor(data.pair_j)]).numpy()
    assert np.array_equal(validation.dist_adaface, dist)  # bit for bit, not approximately
    assert np.array_equal(validation.score_qaconv.astype(np.float64), protocol.scores["qaconv"])
    assert np.array_equal(validation.issame, data.issame)

    results = evaluate(oaml_ckpt, bin_path, tmp_path / "eval", options=options).results["methods"]
    for method in ("adaface", "qaconv", "combined"):
        assert results[method]["ten_fold"]["accuracy"] == metrics[f"lfw_{method}_acc"], method
