"""Top-k identity search over gallery rows: exact (torch, blocked) and faiss (``IndexFlatIP``) backends (SPEC §13.4).

Both backends return, per probe, the k best identities by a per-identity score and are exact: faiss uses a flat
inner-product index, so it computes the same cosines (to float32 rounding, ~1e-6) and only the order of tied scores
may differ. The final lists of both are sorted by score (descending), then identity index (ascending), so ties
are ordered alike; which of several identities tied at the k-th place is kept is unspecified.

**Per-identity score.** ``rows`` holds one or more unit rows per identity and ``labels`` the identity of each row;
the identity's score is the maximum cosine over its rows. With one row per identity (the mean templates of
``per_identity="mean"``) this is the plain cosine.

**Exact backend, memory.** The rows are visited in identity order, in blocks that end at identity boundaries (an
identity is never split, so its maximum is complete inside one block). A block is converted to float32 once
(``block x D``) and scored against the probes in chunks (``probe_chunk x block`` similarities); the per-identity
maximum is a ``scatter_reduce`` and a running ``P x k`` top-k is merged after each block. Extra memory is therefore
about ``max_block_bytes`` plus ``P x k``, whatever the gallery size (a single identity larger than a block is still
one block). Stored rows are used as they are (float16 rows are unit vectors to ~1e-3).

**faiss backend.** The index holds a float32 copy of the rows (``N x D x 4`` bytes, built once and cached by the
caller). Per probe it retrieves the ``(k - 1) m + 1`` best rows, m being the largest number of rows of one
identity: these always contain the k best identities, which are then kept in order of first appearance. faiss is
an optional extra, imported lazily (``pip install "oaml[faiss]"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["FAISS_HINT", "RowIndex", "SearchResult", "build_faiss_index", "exact_search", "faiss_search",
           "identity_templates", "import_faiss", "sort_ties"]

FAISS_HINT = 'the faiss backend needs faiss: pip install "oaml[faiss]" (or pip install faiss-cpu)'
_FAISS_ADD_ROWS = 1 << 16  # rows converted to float32 at a time while filling a faiss index
_DEFAULT_BLOCK_BYTES = 128 * 2**20


@dataclass(frozen=True)
class SearchResult:
    """Top-k identities of each probe, best first.

    Attributes:
        indices: ``P x k`` int64 indices into ``identity_names``.
        scores: ``P x k`` float32 per-identity cosines (non-increasing along each row).
        identity_names: The gallery's identities.
        per_identity: ``"max"`` or ``"mean"``.
        backend: ``"exact"`` or ``"faiss"``.
    """

    indices: np.ndarray
    scores: np.ndarray
    identity_names: tuple[str, ...]
    per_identity: str
    backend: str

    @property
    def num_probes(self) -> int:
        """P."""
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        """List length (the requested k, capped at the number of identities)."""
        return int(self.indices.shape[1])

    def names(self) -> np.ndarray:
        """``P x k`` object array of identity names."""
        return np.asarray(self.identity_names, dtype=object)[self.indices]


@dataclass(frozen=True)
class RowIndex:
    """Gallery rows grouped by identity: ``order`` sorts rows by identity, ``bounds`` delimits each identity.

    Attributes:
        order: ``N`` row permutation (stable sort by label), or None when the rows are already sorted.
        bounds: ``I + 1`` offsets: identity i owns sorted rows ``bounds[i]:bounds[i + 1]``.
        labels_sorted: ``N`` identity index of each sorted row (int64).
    """

    order: np.ndarray | None
    bounds: np.ndarray
    labels_sorted: np.ndarray

    @classmethod
    def from_labels(cls, labels: np.ndarray, num_identities: int) -> RowIndex:
        """Group ``labels`` (``N`` ints in ``[0, num_identities)``); every identity must own at least one row.

        Raises:
            ValueError: If an identity has no row or a label is out of range.
        """
        lab = np.asarray(labels, np.int64)
        counts = np.bincount(lab, minlength=num_identities)
        if lab.size and (lab.min() < 0 or counts.shape[0] != num_identities):
            raise ValueError(f"labels must lie in [0, {num_identities})")
        if (counts == 0).any():
            raise ValueError(f"{int((counts == 0).sum())} identities have no gallery image")
        order = None if np.all(lab[1:] >= lab[:-1]) else np.argsort(lab, kind="stable")
        bounds = np.r_[0, np.cumsum(counts)].astype(np.int64)
        return cls(order=order, bounds=bounds, labels_sorted=lab if order is None else lab[order])

    @property
    def num_identities(self) -> int:
        """I."""
        return int(self.bounds.shape[0] - 1)

    @property
    def max_rows(self) -> int:
        """The largest number of rows of one identity."""
        return int(np.diff(self.bounds).max())

    def rows_of(self, identity: int) -> np.ndarray:
        """Original row indices of one identity."""
        a, b = int(self.bounds[identity]), int(self.bounds[identity + 1])
        return np.arange(a, b) if self.order is None else self.order[a:b]


def _blocks(bounds: np.ndarray, block_rows: int) -> list[tuple[int, int]]:
    """Identity ranges ``[ia, ib)`` whose rows fit ``block_rows`` (at least one identity per block)."""
    out, ia, n_ids = [], 0, bounds.shape[0] - 1
    while ia < n_ids:
        ib = int(np.searchsorted(bounds, bounds[ia] + block_rows, side="right")) - 1
        ib = min(max(ib, ia + 1), n_ids)
        out.append((ia, ib))
        ia = ib
    return out


def identity_templates(rows: np.ndarray, index: RowIndex, block_rows: int = 1 << 16) -> np.ndarray:
    """``I x D`` templates: each identity's mean row, normalised, in the dtype of ``rows`` (float32 sums by block)."""
    out = np.empty((index.num_identities, rows.shape[1]), rows.dtype)
    for ia, ib in _blocks(index.bounds, block_rows):
        ra, rb = int(index.bounds[ia]), int(index.bounds[ib])
        block = (rows[ra:rb] if index.order is None else rows[index.order[ra:rb]]).astype(np.float32)
        sums = np.add.reduceat(block, index.bounds[ia:ib] - ra, axis=0)
        out[ia:ib] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return out


def _merge(best_s: torch.Tensor, best_i: torch.Tensor, s: torch.Tensor, i: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    both_s, both_i = torch.cat([best_s, s], dim=1), torch.cat([best_i, i], dim=1)
    top_s, pos = both_s.topk(best_s.shape[1], dim=1)
    return top_s, both_i.gather(1, pos)


def _float_block(rows: np.ndarray, index: RowIndex, ra: int, rb: int) -> torch.Tensor:
    """Sorted rows ``ra:rb`` as a float32 tensor (a view of float32 rows that are already sorted)."""
    block = rows[ra:rb] if index.order is None else rows[index.order[ra:rb]]
    return torch.from_numpy(np.ascontiguousarray(block)).float()


def _search_block(block: torch.Tensor, local: torch.Tensor | None, first: int, n_ids: int, probes: torch.Tensor,
                  best_s: torch.Tensor, best_i: torch.Tensor, chunk: int) -> None:
    """Score one float32 block (identities ``first .. first + n_ids``) and merge it into the running top-k."""
    k = best_s.shape[1]
    for pa in range(0, probes.shape[0], chunk):
        sims = probes[pa:pa + chunk] @ block.T
        if local is not None:
            per = sims.new_full((sims.shape[0], n_ids), -torch.inf)
            sims = per.scatter_reduce_(1, local.expand(sims.shape[0], -1), sims, reduce="amax")
        s, j = sims.topk(min(k, n_ids), dim=1)
        rows = slice(pa, pa + chunk)
        best_s[rows], best_i[rows] = _merge(best_s[rows], best_i[rows], s, j + first)


def exact_search(rows: np.ndarray, index: RowIndex, probes: torch.Tensor, k: int, *, probe_chunk: int = 256,
                 max_block_bytes: int = _DEFAULT_BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k identities by max cosine over each identity's rows (blocked; see the module docstring).

    Args:
        rows: ``N x D`` unit rows (float16 or float32).
        index: Their grouping by identity.
        probes: ``P x D`` float32 unit rows.
        k: List length (capped at the identity count).
        probe_chunk: Probes scored against a block at once.
        max_block_bytes: Budget of one float32 block plus its ``probe_chunk x block`` similarities.

    Returns:
        ``(indices, scores)``: ``P x k`` int64 identity indices and float32 scores, sorted (see module docstring).
    """
    num_probes, dim = probes.shape
    k = min(k, index.num_identities)
    chunk = max(1, min(probe_chunk, num_probes))
    block_rows = max(1, max_block_bytes // (4 * (dim + 2 * chunk)))  # block, similarities, maxima
    best_s = torch.full((num_probes, k), -torch.inf)
    best_i = torch.full((num_probes, k), -1, dtype=torch.int64)
    for ia, ib in _blocks(index.bounds, block_rows):
        ra, rb = int(index.bounds[ia]), int(index.bounds[ib])
        # several rows of one identity in the block: reduce to per-identity maxima
        local = None if rb - ra == ib - ia else torch.from_numpy(index.labels_sorted[ra:rb] - ia)
        # a temporary: each block is freed before the next one is converted
        _search_block(_float_block(rows, index, ra, rb), local, ia, ib - ia, probes, best_s, best_i, chunk)
    return sort_ties(best_i.numpy(), best_s.numpy())


def sort_ties(indices: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each row by score (descending), then identity index (ascending)."""
    order = np.lexsort((indices, -scores.astype(np.float64)), axis=-1)
    return (np.take_along_axis(indices, order, axis=1).astype(np.int64),
            np.take_along_axis(scores, order, axis=1).astype(np.float32))


def import_faiss() -> Any:
    """Import faiss lazily.

    Raises:
        ImportError: Naming the extra to install.
    """
    try:
        import faiss
    except ImportError as error:
        raise ImportError(FAISS_HINT) from error
    return faiss


def build_faiss_index(rows: np.ndarray) -> Any:
    """A ``faiss.IndexFlatIP`` holding ``rows`` as float32, filled in slices (no second full-size copy)."""
    faiss = import_faiss()
    index = faiss.IndexFlatIP(int(rows.shape[1]))
    for start in range(0, rows.shape[0], _FAISS_ADD_ROWS):
        index.add(np.ascontiguousarray(rows[start:start + _FAISS_ADD_ROWS], dtype=np.float32))
    return index


def _first_identities(labels: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first k distinct labels in order of appearance, with their (first, i.e. best) scores."""
    rows = np.arange(labels.shape[0])[:, None]
    order = np.argsort(labels, axis=1, kind="stable")
    sorted_labels = np.take_along_axis(labels, order, axis=1)
    first = np.ones_like(labels, dtype=bool)
    first[:, 1:] = sorted_labels[:, 1:] != sorted_labels[:, :-1]
    is_first = np.zeros_like(first)
    is_first[rows, order] = first
    keep = np.argsort(~is_first, axis=1, kind="stable")[:, :k]  # positions of the first k first occurrences
    return np.take_along_axis(labels, keep, axis=1), np.take_along_axis(scores, keep, axis=1)


def faiss_search(faiss_index: Any, row_labels: np.ndarray, max_rows: int, num_identities: int, probes: np.ndarray,
                 k: int, probe_chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-k identities by max cosine with a flat faiss index over the rows (see the module docstring).

    Args:
        faiss_index: ``IndexFlatIP`` over the ``N`` rows (:func:`build_faiss_index`).
        row_labels: ``N`` identity index of each row, in index order.
        max_rows: The largest number of rows of one identity.
        num_identities: I.
        probes: ``P x D`` float32 unit rows.
        k: List length (capped at I).
        probe_chunk: Probes per faiss call.

    Returns:
        ``(indices, scores)`` as :func:`exact_search`.
    """
    k = min(k, num_identities)
    depth = min(int(faiss_index.ntotal), (k - 1) * max_rows + 1)
    parts_i, parts_s = [], []
    for start in range(0, probes.shape[0], probe_chunk):
        scores, rows = faiss_index.search(np.ascontiguousarray(probes[start:start + probe_chunk], np.float32), depth)
        labels, best = _first_identities(np.asarray(row_labels, np.int64)[rows], scores, k)
        parts_i.append(labels)
        parts_s.append(best)
    return sort_ties(np.concatenate(parts_i), np.concatenate(parts_s))
