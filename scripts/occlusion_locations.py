"""Where QAConv's evidence comes from on masked probes: per-location similarity inside vs outside the mask.

For pairs (clean first image, medical mask on the second), each location ``i`` of the masked image gets its pooled
similarity ``max_j S_ij`` to the clean image (direction b of QAConv, SPEC §5) and its contribution to the score,
``fc_i * bn(max_j S_ij)``. Locations are split by the true visible fraction of their 7x7 cell (inside the mask:
< 0.5). Printed per group: mean pooled similarity of genuine and impostor pairs, the genuine-vs-impostor AUC of
the pooled similarity, the mean fc weight, and the group's share of the genuine-minus-impostor score gap.

It answers "why does visibility weighting not help?": a masked location whose similarity is already as high for
impostors as for genuine pairs (AUC near 0.5), or whose fc weight is small, carries no evidence for weighting to
remove.

Usage (pairs of the validation split of the study's training identities, never the held-out ones)::

    python scripts/occlusion_locations.py CHECKPOINT [--pairs 1000] [--seed 0] [--occluder mask]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from oaml.evaluation.api import load_model
from oaml.evaluation.embed import extract_occluded
from oaml.evaluation.eval_data import EvalImages
from oaml.study.data import default_roots, discover_identities, held_out_pairs, split_identities


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(positive.size), np.zeros(negative.size)], np.r_[positive, negative]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--pairs", type=int, default=1000, help="pairs drawn (half genuine, half impostor)")
    parser.add_argument("--seed", type=int, default=0, help="identity split seed (as the study's split)")
    parser.add_argument("--occluder", default="mask", help="occluder of the second image (oaml occlude's names)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    outer = split_identities(discover_identities(default_roots()), 0.3, args.seed)
    inner = split_identities(list(outer.train), 0.25, args.seed + 100)  # validation split of training identities
    pairs = held_out_pairs(inner.test, args.seed + 100)
    rng = np.random.default_rng(args.seed)
    pick = np.r_[rng.choice(np.flatnonzero(pairs.issame), args.pairs // 2, replace=False),
                 rng.choice(np.flatnonzero(~pairs.issame), args.pairs // 2, replace=False)]
    model = load_model(args.checkpoint)
    images = EvalImages(names=list(pairs.paths), paths=list(pairs.paths))
    used = np.unique(np.r_[pairs.first[pick], pairs.second[pick]])
    clean, _ = extract_occluded(model, images, used, progress=False)
    masked, grids = extract_occluded(model, images, used, occluder=args.occluder, progress=False)
    row = {int(image): k for k, image in enumerate(used)}
    a = torch.tensor([row[int(i)] for i in pairs.first[pick]])
    b = torch.tensor([row[int(i)] for i in pairs.second[pick]])
    probe = F.normalize(masked.maps[b].flatten(2), dim=1)  # P x C x 49, the masked images
    gallery = F.normalize(clean.maps[a].flatten(2), dim=1)
    pooled = torch.einsum("pci,pcj->pij", probe, gallery).max(dim=2).values  # P x 49: best clean match
    qaconv = model.qaconv
    with torch.no_grad():
        normed = qaconv.bn(pooled.reshape(-1, 1, pooled.shape[1])).reshape(pooled.shape)
        contribution = (normed * qaconv.fc.weight.reshape(1, -1)).numpy()
    weights = qaconv.fc.weight.detach().reshape(-1).numpy()
    inside = grids[np.asarray(b)].reshape(len(pick), -1) < 0.5
    same = pairs.issame[pick]
    gap = contribution[same].sum(1).mean() - contribution[~same].sum(1).mean()
    print(f"{len(pick)} pairs ({same.sum()} genuine), {args.occluder} on the second image; {args.checkpoint}")
    print("| locations | cells per image | pooled sim genuine | pooled sim impostor | AUC | mean fc weight | "
          "share of the occluded side's score gap |")
    print("|---|---|---|---|---|---|---|")
    sims = pooled.numpy()
    for name, cells in (("inside the occluder", inside), ("outside the occluder", ~inside)):
        genuine, impostor = sims[same][cells[same]], sims[~same][cells[~same]]
        share = (np.where(cells, contribution, 0)[same].sum(1).mean()
                 - np.where(cells, contribution, 0)[~same].sum(1).mean()) / gap
        mean_weight = float((weights[None] * cells).sum() / cells.sum())
        print(f"| {name} | {cells.sum(1).mean():.1f} | {genuine.mean():.3f} | {impostor.mean():.3f} | "
              f"{_auc(genuine, impostor):.3f} | {mean_weight:.4f} | {share:.2f} |")


if __name__ == "__main__":
    main()
