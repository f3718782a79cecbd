"""Training mixtures of occluders: ``"mask:0.5,sunglasses:0.2,eyes:0.1"`` (SPEC §13.1, §13.2).

Each image gets at most one occluder: one ``rng.random()`` draw ``r`` picks the first entry (in the order
given) whose cumulative probability exceeds ``r``; when the probabilities sum to less than 1 the rest is "no
occluder". The chosen occluder then draws from the same generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from oaml.data.occluders._api import Occluder, build_occluder

__all__ = ["OccluderMixture", "parse_occluder_mixture"]

_SUM_TOLERANCE = 1e-9


def parse_occluder_mixture(text: str) -> dict[str, float]:
    """Parse ``"name:probability,..."`` into ``{name: probability}`` (in the order given).

    An empty (or all-blank) text is the empty mixture: no occluder.

    Raises:
        TypeError: if ``text`` is not a string.
        ValueError: one line naming the bad entry: no ``:``, an unknown occluder, a probability that is not a
            number in [0, 1], a repeated name, or probabilities summing to more than 1.
    """
    if not isinstance(text, str):
        raise TypeError(f"occluder mixture must be a string like 'mask:0.5,eyes:0.1', got {type(text).__name__}")
    mixture: dict[str, float] = {}
    if not text.strip():
        return mixture
    for entry in text.split(","):
        name, sep, value = (part.strip() for part in entry.partition(":"))
        if not sep or not name:
            raise ValueError(f"occluder mixture entry {entry.strip()!r}: expected name:probability "
                             f"(e.g. 'mask:0.5,sunglasses:0.2')")
        try:
            probability = float(value)
        except ValueError:
            raise ValueError(f"occluder mixture entry {entry.strip()!r}: probability {value!r} "
                             f"is not a number") from None
        if name in mixture:
            raise ValueError(f"occluder mixture entry {entry.strip()!r}: {name!r} is given twice")
        mixture[name] = probability
    _check(mixture)
    return mixture


def _check(probabilities: Mapping[str, float]) -> None:
    """Validate names and probabilities (one-line ``ValueError`` naming the entry)."""
    for name, probability in probabilities.items():
        if not isinstance(probability, (int, float)) or not math.isfinite(probability) or not 0 <= probability <= 1:
            raise ValueError(f"occluder mixture entry '{name}:{probability}': probability must be in [0, 1]")
        try:
            build_occluder(name)
        except ValueError as exc:
            raise ValueError(f"occluder mixture entry '{name}:{probability}': {exc}") from None
    total = float(sum(probabilities.values()))
    if total > 1 + _SUM_TOLERANCE:
        entries = ",".join(f"{n}:{p}" for n, p in probabilities.items())
        raise ValueError(f"occluder mixture '{entries}': probabilities sum to {total:g} > 1")


class OccluderMixture:
    """Draws at most one occluder per image with the given probabilities.

    Args:
        probabilities: ``{occluder name: probability}``, each in [0, 1], summing to at most 1; the order is
            the order of the cumulative draw.

    Raises:
        ValueError: as :func:`parse_occluder_mixture`.
    """

    def __init__(self, probabilities: Mapping[str, float]) -> None:
        _check(probabilities)
        self.probabilities = dict(probabilities)
        self._occluders: dict[str, Occluder] = {name: build_occluder(name) for name in self.probabilities}
        self._names = list(self.probabilities)
        self._cumulative = np.cumsum([self.probabilities[n] for n in self._names]).tolist()

    @classmethod
    def from_text(cls, text: str) -> OccluderMixture:
        """The mixture of :func:`parse_occluder_mixture` (``text``)."""
        return cls(parse_occluder_mixture(text))

    def choose(self, draw: float) -> str | None:
        """The occluder a uniform ``draw`` in [0, 1) selects, or ``None`` for no occluder."""
        for name, bound in zip(self._names, self._cumulative):
            if draw < bound:
                return name
        return None

    def __call__(self, image: np.ndarray, rng: np.random.Generator,
                 landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(image, visibility)``: one ``rng.random()`` for the choice, then the occluder's own draws.

        Without an occluder the result is a copy of ``image`` and an all-ones map.
        """
        name = self.choose(float(rng.random()))
        if name is None:
            return image.copy(), np.ones(image.shape[:2], np.float32)
        return self._occluders[name](image, landmarks, rng)

    def __repr__(self) -> str:
        return f"OccluderMixture({self.probabilities!r})"
