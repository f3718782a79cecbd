"""Verification metrics and report writers (SPEC §9): one evaluation path for validation, test and ``oaml eval``."""

from __future__ import annotations

from oaml.evaluation.report import (console_table, markdown_report, plot_roc, plot_score_histogram, to_jsonable,
                                    write_json)
from oaml.evaluation.verification import (DEFAULT_FARS, DISTANCE_THRESHOLDS, KFoldResult, Omitted, RocResult,
                                          TarPoint, combined_ten_fold_accuracy, count_genuine_impostor,
                                          dynamic_weights, fold_bounds, genuine_impostor_pairs, roc, tar_at_far,
                                          ten_fold_accuracy)

__all__ = ["DEFAULT_FARS", "DISTANCE_THRESHOLDS", "KFoldResult", "Omitted", "RocResult", "TarPoint",
           "combined_ten_fold_accuracy", "console_table", "count_genuine_impostor", "dynamic_weights",
           "fold_bounds", "genuine_impostor_pairs", "markdown_report",
           "plot_roc", "plot_score_histogram", "roc", "tar_at_far", "ten_fold_accuracy", "to_jsonable",
           "write_json"]
