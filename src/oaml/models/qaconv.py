"""QAConv matcher: query-adaptive local matching of feature maps, with occlusion weighting (SPEC §5).

Papers: Liao and Shao, "Interpretable and Generalizable Person Re-Identification with Query-Adaptive
Convolution and Temporal Lifting" (ECCV 2020) and "Graph Sampling Based Deep Metric Learning for
Generalizable Person Re-Identification" (CVPR 2022; QAConv 2.1 is its matcher).

For a probe p and a gallery image g, every pair of locations (gallery r, probe s) gets the cosine
S[p,g,r,s] of their L2-normalised C-vectors. With visibility maps, S'[p,g,r,s] = S · O_gal[g,r] ·
O_prob[p,s]: each map weights its own image's locations. Because the weights are per-location scalars,
this equals the cosine of visibility-scaled vectors, so the weighting is folded into the normalised
features before the matrix product and costs nothing extra. Then a[p,g,s] = max_r S' and
b[p,g,r] = max_s S', ``bn`` (BatchNorm1d(1)) normalises all those values together, the shared ``fc``
(Linear(hw -> 1)) scores each direction, the two are summed and ``logit_bn`` gives the logit.

That is the seed's ``scaling`` weighting. A hidden location still takes part: its similarity becomes 0, which the
max-pooling and ``fc`` read as a (weak) mismatch of every pair, genuine or not, and a visible location of the other
image whose counterpart is hidden is still matched (to the wrong place). ``visibility="normalised"`` removes both:

- S~[p,g,r,s] = O_prob[p,s] · O_gal[g,r] · (S + 1) - 1: a hidden location's similarities drop to -1, the lowest
  cosine, so it is never the best match of anything (the max runs over visible locations only);
- each direction's score is a weighted mean over locations with weights J[p,g,l] = O_prob[p,l] · O_gal[g,l]
  (visible in *both* images; faces are aligned, so location l is the same part of both faces), normalised to sum
  to hw: fc(J / mean(J) · bn(a)) instead of fc(bn(a)). A location hidden in either image adds nothing, neither a
  match nor a mismatch, and the remaining ones keep the score on the same scale.

With all-ones maps both reduce to the plain QAConv 2.1 matcher (to rounding: (S + 1) - 1). The weights cost one
extra P·G·hw tensor beside the pooled values; the S blocks and the chunking are unchanged.

Memory and chunking: S has P·G·hw² entries. It is computed block by block as one (pc·hw x C) @
(C x gc·hw) matrix product followed by two max reductions, and only the max-pooled values (hw times fewer)
leave a block. Chunking never changes results: S and the pooling are independent per pair, and
the normalisations see exactly the same values as an unchunked pass. In eval mode ``bn``/``logit_bn`` use
their running statistics, i.e. they are fixed affine maps, so each block is scored at once and the extra
memory is one S block plus the normalised inputs. In training mode they use batch statistics over all
pooled values, so the pooled values of all pairs (P·G·2·hw) are gathered before scoring; training batches
are small, and only S (the large part) is chunked. Max pooling uses ``max(dim)``, whose backward keeps
the arg-max indices rather than S, so a chunk's S is freed as soon as it has been pooled.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["QAConv", "VISIBILITY_MODES"]

VISIBILITY_MODES = ("scaling", "normalised")
"""How visibility maps enter the matching: the seed's similarity scaling, or visibility-normalised matching."""

_NORM_EPS = 1e-6  # floor of a location vector's norm (an all-zero location gets similarity 0)
_S_BYTES = 4  # bytes per similarity, fp32 (bf16/fp16 under autocast need half of that)


class QAConv(nn.Module):
    """QAConv 2.1 matcher with occlusion weighting (SPEC §5).

    Args:
        num_features: channels C of the feature maps (512 at full width).
        height: feature-map height (7).
        width: feature-map width (7).
        max_chunk_bytes: budget of one block of similarities S (fp32 bytes); blocks of probes and
            gallery images are sized so that pc·gc·hw²·4 <= max_chunk_bytes. The default 256 MiB keeps a
            2000 x 2000 all-pairs match of 512 x 7 x 7 maps well under 2 GB of extra memory in eval mode.
        visibility: how visibility maps weight the matching, one of :data:`VISIBILITY_MODES` (module docstring).

    Attributes:
        bn: BatchNorm1d(1) over all max-pooled similarities.
        fc: Linear(hw -> 1) shared by both matching directions; weight initialised to 1 / hw.
        logit_bn: BatchNorm1d(1) over the scores.
    """

    def __init__(self, num_features: int, height: int, width: int, max_chunk_bytes: int = 256 * 2**20,
                 visibility: str = "scaling") -> None:
        super().__init__()
        if min(num_features, height, width) < 1:
            raise ValueError(f"num_features, height and width must be positive, got {num_features}, {height}, {width}")
        if max_chunk_bytes < 1:
            raise ValueError(f"max_chunk_bytes must be positive, got {max_chunk_bytes}")
        if visibility not in VISIBILITY_MODES:
            raise ValueError(f"visibility must be one of {VISIBILITY_MODES}, got {visibility!r}")
        self.visibility = visibility
        self.num_features = num_features
        self.height = height
        self.width = width
        self.hw = height * width
        self.max_chunk_bytes = max_chunk_bytes
        self.bn = nn.BatchNorm1d(1)
        self.fc = nn.Linear(self.hw, 1)
        self.logit_bn = nn.BatchNorm1d(1)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Reset the running statistics of ``bn`` and ``logit_bn``."""
        self.bn.reset_running_stats()
        self.logit_bn.reset_running_stats()

    def reset_parameters(self) -> None:
        """BN affine to 1/0, ``fc`` weight to 1 / hw (an average at first); the bias keeps its default init."""
        self.bn.reset_parameters()
        self.logit_bn.reset_parameters()
        with torch.no_grad():
            self.fc.weight.fill_(1.0 / self.hw)

    def block_sizes(self, num_probe: int, num_gallery: int, chunk_size: int | None = None) -> tuple[int, int]:
        """Probe and gallery block sizes (pc, gc) of the all-pairs match.

        Args:
            num_probe: P.
            num_gallery: G.
            chunk_size: explicit block side for both; None derives the blocks from ``max_chunk_bytes``.

        Returns:
            (pc, gc) with pc <= P, gc <= G and, without ``chunk_size``, pc·gc·hw²·4 <= max_chunk_bytes
            (or pc = gc = 1 if a single pair exceeds the budget).
        """
        if chunk_size is not None:
            if chunk_size < 1:
                raise ValueError(f"chunk_size must be positive, got {chunk_size}")
            return max(1, min(num_probe, chunk_size)), max(1, min(num_gallery, chunk_size))
        pairs = max(1, self.max_chunk_bytes // (self.hw * self.hw * _S_BYTES))
        pc = max(1, min(num_probe, math.isqrt(pairs)))
        gc = max(1, min(num_gallery, pairs // pc))
        return pc, gc

    def forward(
        self,
        probe: Tensor,
        gallery: Tensor,
        probe_occ: Tensor | None = None,
        gallery_occ: Tensor | None = None,
        chunk_size: int | None = None,
    ) -> Tensor:
        """All-pairs matching.

        Args:
            probe: P x C x H x W feature maps.
            gallery: G x C x H x W feature maps.
            probe_occ: P x 1 x H x W visibility of the probe locations, or None (all visible).
            gallery_occ: G x 1 x H x W visibility of the gallery locations, or None.
            chunk_size: block side over probes and gallery images; None uses ``max_chunk_bytes``.

        Returns:
            P x G logits, higher = more similar. Swapping probe and gallery (with their maps) transposes it.
            In training mode the BNs use batch statistics, so P·G must be at least 2.
        """
        num_probe, num_gallery = probe.shape[0], gallery.shape[0]
        vis_p, vis_g = self._normalised_visibility(probe, gallery, probe_occ, gallery_occ)
        # C x N·hw columns: a block of S is one 2-D product of column slices (no per-block copies). On CPU
        # this operand layout measured 2-4x faster than N·hw x C rows in the backward pass.
        prob = self._columns(self._prepare(probe, probe_occ, "probe"), vis_p)
        gal = self._columns(self._prepare(gallery, gallery_occ, "gallery"), vis_g)
        pc, gc = self.block_sizes(num_probe, num_gallery, chunk_size)
        batch_stats = self.bn.training or self.logit_bn.training
        hw = self.hw
        rows, weight_rows = [], []
        for i in range(0, num_probe, pc):
            row, weight_row = [], []
            for j in range(0, num_gallery, gc):
                pooled = self._pool_block(prob[:, i * hw : (i + pc) * hw], gal[:, j * hw : (j + gc) * hw])
                weights = None if vis_p is None else _joint_weights(vis_p[i : i + pc, None], vis_g[None, j : j + gc])
                if vis_p is not None:
                    pooled = pooled - 1.0  # the columns carry O_p O_g (S + 1): max(x) - 1 = max(x - 1)
                # Eval: the BNs are fixed affine maps, so a block can be scored on its own.
                row.append(pooled if batch_stats else self.score(pooled, weights))
                weight_row.append(weights)
            rows.append(torch.cat(row, dim=1))
            weight_rows.append(None if vis_p is None else torch.cat(weight_row, dim=1))
        out = torch.cat(rows, dim=0)
        if not batch_stats:
            return out
        return self.score(out, None if vis_p is None else torch.cat(weight_rows, dim=0))

    def match_groups(
        self,
        probe: Tensor,
        gallery: Tensor,
        probe_occ: Tensor | None = None,
        gallery_occ: Tensor | None = None,
        valid: Tensor | None = None,
        chunk_size: int | None = None,
    ) -> Tensor:
        """Match each probe with its own group of K gallery maps (no B x B x K work).

        Used for class-memory logits (K candidate classes per sample) and, with K = 1, paired matching.

        Args:
            probe: B x C x H x W.
            gallery: B x K x C x H x W; row i is matched only with probe i.
            probe_occ: B x 1 x H x W or None.
            gallery_occ: B x K x 1 x H x W or None.
            valid: B x K bool; only valid pairs are scored and enter the batch statistics of the
                BNs in training mode. None means all valid.
            chunk_size: probes per block; None derives it from ``max_chunk_bytes``.

        Returns:
            B x K logits; invalid entries are 0 and must be masked by the caller.
        """
        pooled, weights = self.pool_groups(probe, gallery, probe_occ, gallery_occ, chunk_size)
        return self.score(pooled, weights) if valid is None else self._score_valid(pooled, weights, valid)

    def pool_groups(
        self,
        probe: Tensor,
        gallery: Tensor,
        probe_occ: Tensor | None = None,
        gallery_occ: Tensor | None = None,
        chunk_size: int | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """The matching half of :meth:`match_groups`, before any normalisation: score the result with :meth:`score`.

        Args: as :meth:`match_groups`.

        Returns:
            (pooled, weights): B x K x 2 x hw max-pooled similarities (a, then b), and the B x K x hw location
            weights of ``visibility="normalised"`` matching (None in ``scaling`` mode or without maps).
        """
        if gallery.dim() != 5 or gallery.shape[0] != probe.shape[0]:
            raise ValueError(f"gallery must be B x K x C x H x W with B={probe.shape[0]}, got {tuple(gallery.shape)}")
        num, groups = gallery.shape[:2]
        # Here S (B·K·hw²) is ~2C/hw times smaller than the features, so the scales multiply S instead
        # of the features: the features are read by the product and the norms only, never rewritten.
        prob, prob_scale = self._location_scale(probe, probe_occ, "probe")
        flat_occ = None if gallery_occ is None else gallery_occ.reshape(num * groups, *gallery_occ.shape[2:])
        flat_gallery = gallery.reshape(num * groups, *gallery.shape[2:])
        gal, gal_scale = self._location_scale(flat_gallery, flat_occ, "gallery")
        vis_p, vis_g = self._normalised_visibility(probe, flat_gallery, probe_occ, flat_occ)
        if vis_g is not None:
            vis_g = vis_g.reshape(num, groups * self.hw)
        # B x C x K·hw (a view when K = 1, the paired case)
        gal = gal.reshape(num, groups, self.num_features, self.hw).transpose(1, 2).reshape(num, self.num_features, -1)
        gal_scale = gal_scale.reshape(num, groups * self.hw)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        per_probe = groups * self.hw * self.hw * _S_BYTES
        step = chunk_size if chunk_size is not None else max(1, self.max_chunk_bytes // per_probe)
        blocks = [
            self._pool_group(prob[i : i + step], gal[i : i + step], prob_scale[i : i + step], gal_scale[i : i + step],
                             None if vis_p is None else (vis_p[i : i + step], vis_g[i : i + step]))
            for i in range(0, num, step)
        ]
        pooled = torch.cat(blocks, dim=0)  # B x K x 2 x hw
        weights = None if vis_p is None else _joint_weights(vis_p[:, None], vis_g.reshape(num, groups, self.hw))
        return pooled, weights

    def _score_valid(self, pooled: Tensor, weights: Tensor | None, valid: Tensor) -> Tensor:
        """Score only the valid entries of B x K pooled similarities (and weights); 0 elsewhere."""
        if valid.shape != pooled.shape[:2]:
            raise ValueError(f"valid must have shape {tuple(pooled.shape[:2])}, got {tuple(valid.shape)}")
        valid = valid.to(device=pooled.device, dtype=torch.bool)
        if not bool(valid.any()):
            return pooled.new_zeros(valid.shape)
        scores = self.score(pooled[valid].unsqueeze(1), None if weights is None else weights[valid].unsqueeze(1))
        out = torch.zeros(valid.shape, dtype=scores.dtype, device=scores.device)
        return out.masked_scatter(valid, scores.squeeze(1))

    def match_pairs(
        self,
        a: Tensor,
        b: Tensor,
        occ_a: Tensor | None = None,
        occ_b: Tensor | None = None,
        chunk_size: int | None = None,
    ) -> Tensor:
        """Paired matching: score a[i] against b[i] only (validation; no N x N matrix).

        In eval mode this equals the diagonal of ``forward(a, b, occ_a, occ_b)``; in training mode the BN
        batch statistics come from the N pairs instead of all N² pairs.

        Args:
            a: N x C x H x W.
            b: N x C x H x W.
            occ_a: N x 1 x H x W visibility of ``a`` or None.
            occ_b: N x 1 x H x W visibility of ``b`` or None.
            chunk_size: pairs per block; None derives it from ``max_chunk_bytes``.

        Returns:
            N scores.
        """
        occ_b = None if occ_b is None else occ_b.unsqueeze(1)
        return self.match_groups(a, b.unsqueeze(1), occ_a, occ_b, chunk_size=chunk_size).squeeze(1)

    def _location_scale(self, x: Tensor, occ: Tensor | None, name: str) -> tuple[Tensor, Tensor]:
        """N x C x H x W -> (N x C x hw view, N x hw scale = visibility / L2 norm of each location)."""
        if x.dim() != 4 or x.shape[1:] != (self.num_features, self.height, self.width):
            expected = f"N x {self.num_features} x {self.height} x {self.width}"
            raise ValueError(f"{name} features must be {expected}, got {tuple(x.shape)}")
        num = x.shape[0]
        flat = x.reshape(num, self.num_features, self.hw)
        scale = 1.0 / torch.linalg.vector_norm(flat, dim=1).clamp_min(_NORM_EPS)
        if occ is not None:
            if occ.shape[0] != num or occ.numel() != num * self.hw:
                raise ValueError(f"{name} visibility must be {num} x 1 x {self.height} x {self.width}, "
                                 f"got {tuple(occ.shape)}")
            scale = scale * occ.reshape(num, self.hw).to(scale.dtype)
        return flat, scale

    def _normalised_visibility(self, probe: Tensor, gallery: Tensor, probe_occ: Tensor | None,
                               gallery_occ: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """N x hw visibility of both sides for ``visibility="normalised"`` (ones where a side has no map); (None,
        None) in ``scaling`` mode or without any map, where the plain or scaled matcher applies."""
        if self.visibility != "normalised" or (probe_occ is None and gallery_occ is None):
            return None, None

        def flat(occ: Tensor | None, x: Tensor) -> Tensor:
            if occ is None:
                return x.new_ones(x.shape[0], self.hw)
            return occ.reshape(x.shape[0], self.hw).to(x.dtype)

        return flat(probe_occ, probe), flat(gallery_occ, gallery)

    def _prepare(self, x: Tensor, occ: Tensor | None, name: str) -> Tensor:
        """N x C x H x W -> N x C x hw, each location L2-normalised and scaled by its own visibility."""
        flat, scale = self._location_scale(x, occ, name)
        return flat * scale.unsqueeze(1)

    def _columns(self, x: Tensor, visibility: Tensor | None = None) -> Tensor:
        """N x C x hw -> C x N·hw (one copy, O(N·C·hw)); with ``visibility`` (N x hw) one more row holding it, so
        that the product of two such column blocks is O_p O_g (S + 1) (visibility-normalised matching)."""
        columns = x.transpose(0, 1).reshape(self.num_features, -1)
        return columns if visibility is None else torch.cat((columns, visibility.reshape(1, -1)), dim=0)

    def _pool_block(self, prob: Tensor, gal: Tensor) -> Tensor:
        """C x pc·hw and C x gc·hw -> pc x gc x 2 x hw max-pooled similarities (a, then b)."""
        hw = self.hw
        pc, gc = prob.shape[1] // hw, gal.shape[1] // hw
        sim = torch.mm(prob.t(), gal).reshape(pc, hw, gc, hw)  # [p, s, g, r]
        a = sim.max(dim=3).values.permute(0, 2, 1)  # [p, g, s]: best gallery location per probe location
        b = sim.max(dim=1).values  # [p, g, r]: best probe location per gallery location
        return torch.stack((a, b), dim=2)

    def _pool_group(self, prob: Tensor, gal: Tensor, prob_scale: Tensor, gal_scale: Tensor,
                    visibility: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """bc x C x hw and bc x C x K·hw raw features with their bc x hw and bc x K·hw location scales
        -> bc x K x 2 x hw max-pooled similarities. ``visibility`` (bc x hw, bc x K·hw) turns the scaled
        similarity O_p O_g S into the normalised O_p O_g (S + 1) - 1."""
        bc, hw = prob.shape[0], self.hw
        sim = torch.bmm(prob.transpose(1, 2), gal) * (prob_scale.unsqueeze(2) * gal_scale.unsqueeze(1))
        if visibility is not None:
            sim = sim + visibility[0].unsqueeze(2) * visibility[1].unsqueeze(1)
        sim = sim.reshape(bc, hw, -1, hw)  # [i, s, k, r]
        a = sim.max(dim=3).values.permute(0, 2, 1)
        b = sim.max(dim=1).values
        pooled = torch.stack((a, b), dim=2)
        return pooled if visibility is None else pooled - 1.0

    def score(self, pooled: Tensor, weights: Tensor | None = None,
              batch_norm: Callable[[nn.BatchNorm1d, Tensor], Tensor] | None = None) -> Tensor:
        """... x 2 x hw pooled similarities -> ... logits: bn, shared fc, sum of directions, logit_bn.

        Args:
            pooled: ... x 2 x hw max-pooled similarities (:meth:`pool_groups`).
            weights: ... x hw location weights (visibility-normalised matching), applied to both directions after
                ``bn``; None for none.
            batch_norm: ``batch_norm(module, x)`` replaces ``module(x)`` for ``bn`` and ``logit_bn`` (the sharded
                class memory normalises with the moments of every rank's pairs); None calls the modules.
        """
        norm = batch_norm or (lambda module, x: module(x))
        lead = pooled.shape[:-2]
        x = pooled.reshape(-1, 1, self.hw).to(self.fc.weight.dtype)
        x = norm(self.bn, x).reshape(-1, 2, self.hw)
        if weights is not None:
            x = x * weights.reshape(-1, 1, self.hw).to(x.dtype)
        score = self.fc(x.reshape(-1, self.hw)).reshape(-1, 2).sum(dim=1, keepdim=True)
        return norm(self.logit_bn, score).reshape(lead)


def _joint_weights(vis_p: Tensor, vis_g: Tensor) -> Tensor:
    """Per-location weights J / mean(J) of visibility-normalised matching, J = O_p · O_g (broadcast ... x hw);
    a pair without any location visible in both images gets all-zero weights (its score is the bias)."""
    joint = vis_p * vis_g
    return joint * (joint.shape[-1] / joint.sum(dim=-1, keepdim=True).clamp_min(_NORM_EPS))
