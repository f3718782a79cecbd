#!/usr/bin/env bash
# 1:N identification on real faces (README "1:N identification"): train a small model on people that are neither
# enrolled nor probed, enrol part of ../shared/data/lfw_min10_arcface112, identify the rest, clean and masked,
# with the global search and with QAConv re-ranking.
#
# Usage: scripts/identify_lfw_min10.sh OUT [EPOCHS]
#   OUT     a folder for everything written (symlinked data, the run, the gallery, the identify outputs);
#           never inside the repository
#   EPOCHS  training epochs (default 50: 300 steps of 64 images, about 10 CPU-minutes)
# Environment: OAML (default "python -m oaml"), SHARED_DATA (default <repo>/../shared/data).
#
# Split of the 158 lfw_min10 people, deterministic (sorted names, index i):
#   i % 8 in {0, 1, 2} -> training (60 people), together with att_faces_arcface112 and dlib_johns_arcface112;
#   i % 8 == 3         -> not enrolled: every image is an open-set probe (20 people);
#   otherwise          -> enrolled (78 people): the first 5 images (sorted) in the gallery, the others are probes.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:?usage: $0 OUT [EPOCHS]}"
EPOCHS="${2:-50}"
DATA="${SHARED_DATA:-$REPO/../shared/data}"
OAML="${OAML:-python -m oaml}"
LFW="$DATA/lfw_min10_arcface112"
ENROL_IMAGES=5
for folder in "$LFW" "$DATA/att_faces_arcface112" "$DATA/dlib_johns_arcface112"; do
  [ -d "$folder" ] || { echo "missing data folder: $folder" >&2; exit 2; }
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
case "$OUT/" in "$REPO"/*) echo "OUT must lie outside the repository: $OUT" >&2; exit 2;; esac

# ---------------------------------------------------------------------------------------------- the split
rm -rf "$OUT/train" "$OUT/enrol" "$OUT/probes"
mkdir -p "$OUT/train" "$OUT/enrol" "$OUT/probes"
for person in "$DATA"/att_faces_arcface112/*/ "$DATA"/dlib_johns_arcface112/*/; do
  ln -s "${person%/}" "$OUT/train/$(basename "$(dirname "$person")")__$(basename "$person")"
done
i=0
for person in $(cd "$LFW" && ls -d */ | sed 's#/$##' | LC_ALL=C sort); do
  case $((i % 8)) in
    0|1|2) ln -s "$LFW/$person" "$OUT/train/lfw__$person" ;;
    3) ln -s "$LFW/$person" "$OUT/probes/$person" ;;
    *) mkdir -p "$OUT/enrol/$person" "$OUT/probes/$person"
       n=0
       for image in $(cd "$LFW/$person" && ls | LC_ALL=C sort); do
         if [ $n -lt $ENROL_IMAGES ]; then target="$OUT/enrol/$person"; else target="$OUT/probes/$person"; fi
         ln -s "$LFW/$person/$image" "$target/$image"
         n=$((n + 1))
       done ;;
  esac
  i=$((i + 1))
done
echo "split: $(ls "$OUT/train" | wc -l) training people, $(ls "$OUT/enrol" | wc -l) enrolled," \
     "$(($(ls "$OUT/probes" | wc -l) - $(ls "$OUT/enrol" | wc -l))) not enrolled"

# ---------------------------------------------------------------------------------------------- training
# The packaged CPU recipe (ir_18 at width 0.125, fp32), no validation set: the probes are scored once, afterwards.
if [ ! -f "$OUT/model.ckpt" ]; then
  $OAML train --config tiny_cpu --data_root "$OUT" --train_data_path train --val_data_path no_validation \
    --epochs "$EPOCHS" --lr_milestones "$((EPOCHS * 5 / 8)),$((EPOCHS * 7 / 8))" --warmup_epochs 2 \
    --num_workers 0 --output_dir "$OUT/runs" --prefix identify --seed 0
  cp "$(ls -t "$OUT"/runs/*/checkpoints/last.ckpt | head -n 1)" "$OUT/model.ckpt"
fi

# ---------------------------------------------------------------------------------------------- gallery and probes
# Gallery: float16 embeddings plus the QAConv and visibility maps that --rerank needs. Probes: clean and with the
# synthetic medical mask (seed 0), with sunglasses and with a hand over the mouth (occluders of `oaml occlude`),
# global search (best image per identity) and the top 10 re-ranked with QAConv.
$OAML gallery build --model-path "$OUT/model.ckpt" --data-path "$OUT/enrol" --output "$OUT/gallery.npz" \
  --with-maps --overwrite --no-progress
$OAML identify --gallery "$OUT/gallery.npz" --probes "$OUT/probes" --top-k 10 --rerank 10 --mask-probes \
  --occluders sunglasses,hand_mouth --output-dir "$OUT/identify" --overwrite --no-progress
# The same with the mean template per identity instead of the best image.
$OAML identify --gallery "$OUT/gallery.npz" --probes "$OUT/probes" --top-k 10 --rerank 10 --mask-probes \
  --per-identity mean --output-dir "$OUT/identify_mean" --overwrite --no-progress
