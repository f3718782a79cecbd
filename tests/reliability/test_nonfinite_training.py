"""SPEC §6 non-finite policy in a real (tiny) run: a NaN loss skips its optimizer step, is logged with the batch
and the components, and training continues; a persistent NaN aborts after ``max_nonfinite_steps``.

The NaN is injected by wrapping ``CombinedLoss.forward``: the occlusion component and the total of chosen calls
become NaN (the total keeps its autograd graph, as a real NaN would). Parameters are snapshotted at the start of
every ``training_step``, so the snapshot of step k+1 shows what the optimizer did with step k.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from reliability_helpers import tiny_config

from oaml.errors import NonFiniteLossError
from oaml.losses import CombinedLoss
from oaml.losses.combined import CombinedResult
from oaml.training.run import run_training
from oaml.training.system import OamlSystem


class Probe:
    """Records a copy of all parameters at the start of every training step, and the system itself."""

    def __init__(self) -> None:
        self.params: list[dict[str, torch.Tensor]] = []
        self.system: OamlSystem | None = None


def _instrument(monkeypatch: pytest.MonkeyPatch, nan_at: Callable[[int], bool]) -> Probe:
    probe = Probe()
    real_step, real_forward = OamlSystem.training_step, CombinedLoss.forward
    calls = {"n": 0}

    def training_step(self: OamlSystem, batch: object, batch_idx: int) -> object:
        probe.system = self
        probe.params.append({n: p.detach().clone() for n, p in self.named_parameters()})
        return real_step(self, batch, batch_idx)

    def forward(self: CombinedLoss, *args: object, **kwargs: object) -> CombinedResult:
        total, parts = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if not nan_at(calls["n"] - 1):
            return CombinedResult(total, parts)
        nan_total = total * float("nan")
        return CombinedResult(nan_total, parts | {"occlusion": torch.tensor(float("nan")), "total": nan_total.detach()})

    monkeypatch.setattr(OamlSystem, "training_step", training_step)
    monkeypatch.setattr(CombinedLoss, "forward", forward)
    return probe


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    return [name for name in before if not torch.equal(before[name], after[name])]


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`")  # that is how a step is skipped
def test_a_nan_step_is_skipped_logged_and_training_continues(synthetic: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    bad_step = 2  # epoch 0, batch 2 (four batches per epoch)
    probe = _instrument(monkeypatch, lambda step: step == bad_step)
    config = tiny_config(synthetic.parent, synthetic.name, tmp_path / "runs", epochs=2)
    with caplog.at_level(logging.WARNING, logger="oaml"):
        result = run_training(config)
    assert len(probe.params) == 8 and result.last_checkpoint is not None  # both epochs ran to the end
    assert probe.system is not None and probe.system.nonfinite_total == 1 and probe.system.nonfinite_streak == 0
    # The skipped step changed no parameter; the steps around it changed them.
    assert _changed(probe.params[bad_step], probe.params[bad_step + 1]) == []
    for step in (bad_step - 1, bad_step + 1):
        assert _changed(probe.params[step], probe.params[step + 1]), f"step {step} did not train"
    (record,) = [r for r in caplog.records if "non-finite loss" in r.getMessage()]
    message = record.getMessage()
    assert "epoch 0 batch 2" in message and "non-finite: occlusion_loss, loss" in message
    assert "occlusion_loss=nan" in message


def test_persistent_nan_aborts_after_max_nonfinite_steps(synthetic: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    probe = _instrument(monkeypatch, lambda step: True)
    config = tiny_config(synthetic.parent, synthetic.name, tmp_path / "runs", epochs=2, max_nonfinite_steps=3)
    with pytest.raises(NonFiniteLossError) as info:
        run_training(config)
    message = str(info.value)
    assert "3 consecutive training steps" in message and "non-finite component(s): occlusion_loss, loss" in message
    assert "batch 2" in message and "--max_nonfinite_steps" in message
    assert len(probe.params) == 3 and _changed(probe.params[0], probe.params[-1]) == []
