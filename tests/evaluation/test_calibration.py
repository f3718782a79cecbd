"""The occlusion head's calibration against true visible fractions: hand-computed values and edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from oaml.evaluation.calibration import calibration_metrics, head_calibration


def _example() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    true = np.ones((1, 7, 7), np.float32)
    true[0, 5, 3], true[0, 5, 4] = 0.0, 0.25  # two cells less than half visible
    masked = np.full((1, 7, 7), 0.8, np.float32)
    masked[0, 5, 3], masked[0, 5, 4] = 0.1, 0.3
    return masked, np.full((1, 7, 7), 0.9, np.float32), true


def test_head_calibration_matches_hand_computed_values() -> None:
    masked, clean, true = _example()
    stats = head_calibration(masked, true, clean)
    assert stats["inside"] == pytest.approx(0.2)
    assert stats["outside"] == pytest.approx(0.8)
    assert stats["clean_same_cells"] == pytest.approx(0.9) and stats["clean_all"] == pytest.approx(0.9)
    assert stats["mae"] == pytest.approx((0.1 + 0.05 + 47 * 0.2) / 49)
    assert stats["mse"] == pytest.approx((0.01 + 0.0025 + 47 * 0.04) / 49)
    assert stats["mse_all_visible"] == pytest.approx((1.0 + 0.5625) / 49)
    assert stats["auc"] == pytest.approx(1.0)
    assert (stats["cells"], stats["occluded_cells"]) == (49, 2)
    flat = head_calibration(np.ones_like(masked), true)  # a collapsed head: every cell "visible"
    assert flat["auc"] == pytest.approx(0.5) and flat["inside"] == flat["outside"] == 1.0
    assert "clean_all" not in flat


def test_undefined_entries_are_nan_and_shapes_are_checked() -> None:
    masked, clean, _ = _example()
    stats = head_calibration(masked, np.ones_like(masked), clean)
    assert np.isnan(stats["auc"]) and np.isnan(stats["inside"]) and np.isnan(stats["clean_same_cells"])
    assert stats["mae"] == pytest.approx(float(np.abs(masked - 1).mean())) and stats["occluded_cells"] == 0
    with pytest.raises(ValueError, match="shape"):
        head_calibration(masked, np.ones((2, 7, 7)))
    with pytest.raises(ValueError, match="predicted_clean"):
        head_calibration(masked, masked, clean[:, :3])


def test_validation_keys() -> None:
    masked, _, true = _example()
    metrics = calibration_metrics(masked, true, "occ_sunglasses_")
    assert set(metrics) == {f"occ_sunglasses_head_{k}" for k in ("auc", "mae", "inside", "outside")}
    assert metrics["occ_sunglasses_head_auc"] == pytest.approx(1.0)
