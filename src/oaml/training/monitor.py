"""What a user watches during a run (arcface_torch-style monitoring): throughput, ETA, ``train.log``, ``loss.png``.

- :class:`ThroughputMonitor`: images per second (over the whole global batch) and the run's ETA, in the progress
  bar, in ``metrics.csv`` (``train/images_per_s``) and as one log line every ``log_every_n_steps`` steps.
- :class:`OamlProgressBar`: Lightning's tqdm bar with the throughput and the ETA of the whole run.
- :class:`LossCurves`: ``loss.png`` (the loss components and the validation accuracies against the step), redrawn
  from ``metrics.csv`` after every validation and at the end.
- :func:`run_log`: copies the console log of a run into ``train.log`` in its folder (progress-bar redraws are not
  log records, so they stay out), captures Python warnings into it, and keeps Lightning's own console handler from
  printing every line twice.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import logging
import logging.handlers
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from oaml.training.objective import LOSS_NAMES

__all__ = ["LOG_FORMAT", "LossCurves", "OamlProgressBar", "ThroughputMonitor", "format_duration", "plot_loss_curves",
           "quiet_lightning", "read_metrics", "run_log"]

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_NOISE = ("litlogger", "isinstance(treespec, LeafSpec)", "Experiment logs directory")
_LOSS_COLUMNS = tuple(f"train/{name}_step" for name in LOSS_NAMES)


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (``1:02:03``)."""
    return str(_dt.timedelta(seconds=round(max(0.0, seconds))))


class _DropNoise(logging.Filter):
    """Drops Lightning's adverts and known harmless deprecation notices (they say nothing about the run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _NOISE)


def quiet_lightning() -> None:
    """Route Lightning's log lines through the root logger once, without its adverts.

    ``import lightning`` gives the ``lightning`` logger its own console handler, which prints every line a second
    time when the root logger has one too (the command line configures one).
    """
    root = logging.getLogger()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        log = logging.getLogger(name)
        if root.handlers:
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True
        if not any(isinstance(f, _DropNoise) for f in log.filters):
            log.addFilter(_DropNoise())
    for handler in root.handlers:
        if not any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


@contextlib.contextmanager
def run_log(enabled: bool = True) -> Iterator[Callable[[Path], None]]:
    """Copy every log record (and Python warning) of the block into the run's ``train.log`` (rank 0: ``enabled``).

    Records are buffered until the run folder exists; the block calls the yielded function with the log's path
    once it does, so that ``train.log`` also holds what happened before (data preparation, checks).
    """
    quiet_lightning()
    root = logging.getLogger()
    buffer = logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1, target=None)
    handlers: list[logging.Handler] = [buffer] if enabled else []
    previous_level = root.level
    if enabled:
        root.addHandler(buffer)
        if root.level > logging.INFO or root.level == logging.NOTSET:  # INFO records reach the file only
            root.setLevel(logging.INFO)
        logging.captureWarnings(True)

    def attach(path: Path) -> None:
        if not enabled:
            return
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        handler.addFilter(_DropNoise())
        buffer.setTarget(handler)
        buffer.flush()
        root.removeHandler(buffer)
        root.addHandler(handler)
        handlers.append(handler)

    try:
        yield attach
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        if enabled:
            logging.captureWarnings(False)
            root.setLevel(previous_level)


class ThroughputMonitor(Callback):
    """Images per second and the run's ETA.

    The rate counts the images of all ranks over the steps since the last log line; the ETA is the remaining
    optimizer steps times the mean step time of this fit so far. Validation time is excluded from both.

    Args:
        log_every_n_steps: steps between two log lines.
    """

    def __init__(self, log_every_n_steps: int = 50) -> None:
        self.log_every_n_steps = max(1, log_every_n_steps)
        self.images_per_second: float | None = None
        self.eta_seconds: float | None = None
        self._start = self._window_start = self._validation_start = 0.0
        self._validation_seconds = 0.0
        self._window_images = 0
        self._start_step = self._logged_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._window_start = time.perf_counter()
        self._start_step = trainer.global_step

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            spent = time.perf_counter() - self._validation_start
            self._validation_seconds += spent
            self._window_start += spent

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        self._window_images += int(batch.images.shape[0]) * trainer.world_size
        done = trainer.global_step - self._start_step
        if done <= 0 or now <= self._window_start:
            return
        total = int(trainer.estimated_stepping_batches)
        self.images_per_second = self._window_images / (now - self._window_start)
        per_step = (now - self._start - self._validation_seconds) / done
        self.eta_seconds = max(0, total - trainer.global_step) * per_step
        pl_module.log("train/images_per_s", self.images_per_second, on_step=True, on_epoch=False)
        if trainer.global_step % self.log_every_n_steps == 0 and trainer.global_step != self._logged_step:
            self._logged_step = trainer.global_step
            if trainer.is_global_zero:
                loss = trainer.callback_metrics.get("loss")
                logger.info("epoch %d/%d, step %d/%d: loss %s, %.1f images/s, ETA %s", trainer.current_epoch + 1,
                            trainer.max_epochs, trainer.global_step, total,
                            "-" if loss is None else f"{float(loss):.4f}", self.images_per_second,
                            format_duration(self.eta_seconds))
            self._window_start, self._window_images = now, 0


class OamlProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar plus ``img/s`` and the ETA of the whole run (from the :class:`ThroughputMonitor`)."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, int | str | float]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        monitor = next((cb for cb in trainer.callbacks if isinstance(cb, ThroughputMonitor)), None)
        if monitor is not None and monitor.images_per_second is not None:
            items["img/s"] = f"{monitor.images_per_second:.0f}"
            items["run ETA"] = format_duration(monitor.eta_seconds or 0.0)
        return items


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a Lightning ``metrics.csv`` as dicts of floats (empty cells left out)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def plot_loss_curves(metrics_csv: Path, path: Path) -> Path | None:
    """Draw ``loss.png``: the logged loss components (left) and the validation accuracies (right) against the step.

    Returns:
        ``path``, or None when ``metrics.csv`` holds no step yet.
    """
    from oaml.evaluation.report import new_figure, save_figure

    rows = [r for r in read_metrics(metrics_csv) if "step" in r]
    if not rows:
        return None
    fig = new_figure((11, 4))
    losses, accuracies = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for column in _LOSS_COLUMNS:
        points = [(r["step"], r[column]) for r in rows if column in r]
        if points:
            losses.plot(*zip(*points), label=column.removeprefix("train/").removesuffix("_step"), linewidth=1)
    val = sorted({k for r in rows for k in r if k.startswith("val/avg_") and k.endswith("_acc")} | {"val_acc"})
    for column in val:
        points = [(r["step"], r[column]) for r in rows if column in r]
        if points:
            accuracies.plot(*zip(*points), marker="o", label=column.removeprefix("val/"), linewidth=1)
    losses.set(xlabel="step", ylabel="loss", title="training losses")
    accuracies.set(xlabel="step", ylabel="accuracy", title="validation")
    for axis in (losses, accuracies):
        if axis.lines:
            axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    return save_figure(fig, path)


class LossCurves(Callback):
    """Redraw ``loss.png`` from ``metrics.csv`` after every validation of a fit and at the end (rank 0).

    Args:
        experiment_dir: the run folder (holds ``metrics.csv``).
    """

    def __init__(self, experiment_dir: Path) -> None:
        self.experiment_dir = Path(experiment_dir)
        self.path = self.experiment_dir / "loss.png"

    def _draw(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        for logger_ in trainer.loggers:
            logger_.save()  # the CSV logger buffers rows; flush them before reading the file
        plot_loss_curves(self.experiment_dir / "metrics.csv", self.path)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._draw(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw(trainer)
