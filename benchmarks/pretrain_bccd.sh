#!/usr/bin/env bash
# Does self-supervised pretraining pay? BCCD, labels unused for pretraining (its 292 train + val JPEGs):
#   pretrain        the encoder (flexible-tiny, 19.5 CPU minutes), pretrain_curves.png in its folder;
#   knn_*           k-NN balanced accuracy of BCCD object crops (train crops -> val crops), random / pretrained;
#   frozen_*        detection with the encoder FROZEN through a light probe head (10 minutes, seeds 1 2): a
#                   feature-quality measure beside the k-NN. The probe reads only the last ViT block at
#                   stride 16, with no encoder layer and one decoder layer, so its boxes and classes are
#                   nearly linear in the frozen features (the full two-stage head learns 0.46 AP on random
#                   frozen features on BCCD, BENCHMARKS.md);
#   finetune_*      full fine-tuning, the two-stage preset, 12 minutes, seeds 1 2 3.
#   boxes           detection pretraining on unsupervised box proposals of the same unlabelled images (train
#                   --proposals, 19.5 CPU minutes), started from the `pretrain` step's encoder at the full
#                   backbone lr (BOXES_EXTRA="--dino_model flexible-tiny": from random weights), then
#                   knn_boxes, frozen_boxes (its encoder under the light probe: 2.03x random, the best so far)
#                   and finetune_boxes (the whole detector through --init_from; its class rows start from
#                   the box detector's objectness);
#   boxes2          a self-training round (19.5 CPU minutes): the `boxes` detector trained on to its own boxes
#                   scoring >= 0.3 (--proposals_from), then knn_boxes2, frozen_boxes2, finetune_boxes2;
#   report          the table of every run's AP (BCCD val) with means and spreads.
# Usage: bash benchmarks/pretrain_bccd.sh [OUT_DIR [STEP ...]]   (default: all steps, about 5 h 20 min on
# 2 CPU cores; run nothing else meanwhile). The detection budgets do not include the pretraining time.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/bench_pretrain}
ARGS=("$@"); WANT=("${ARGS[@]:1}")
D=../shared/datasets/bccd
want() { [ ${#WANT[@]} -eq 0 ] || [[ " ${WANT[*]} " =~ " $1 " ]]; }
py=.venv/bin/python
ENCODER="$OUT/pretrain/encoder_final.pth"
KNN=(--eval_knn --images $D/JPEGImages --annotations $D/coco/instances_train.json
     --val_annotations $D/coco/instances_val.json --seed 0)
# Colour carries the classes in stained smears: no hue jitter, no grayscale views. Every view of an image is
# drawn from a window around one of its unsupervised box proposals (twice the box's side), with masked-pixel
# reconstruction on every global view: the object-view encoder of BENCHMARKS.md (issue 23), the best crop
# k-NN so far and, through the box step below, the best frozen probe (PRETRAIN_EXTRA="--no_object_views
# --view_region 0.1 --global_scale 0.07 0.09 --local_scale 0.015 0.03": encoder B, views at the detector's
# scale). Everything else at the defaults (256 prototypes, batch-standardised head).
PRETRAIN=(--images $D/JPEGImages --arch flexible-tiny --time_budget_min 19.5 --epochs 200
          --color_jitter 0.4 0.4 0.2 0.0 --grayscale_p 0 --seed 0
          --object_views --object_context 2.0 --object_boxes 40 --global_scale 0.4 1.0 --local_scale 0.05 0.3
          --mim_weight 1.0 --mask_probability 1.0 --mask_ratio 0.2 0.6 ${PRETRAIN_EXTRA:-})
DATA=(--train_images $D/JPEGImages --train_annotations $D/coco/instances_train.json
      --val_images $D/JPEGImages --val_annotations $D/coco/instances_val.json)
# the same detector for both encoders, each with the backbone lr a user gets by default (lr for random
# weights, lr x 0.1 for pretrained ones, so that fine-tuning keeps what pretraining learnt; BENCHMARKS.md,
# issue 23, has both)
# (batch and lr: the preset's, 4 and 3.5e-4, since issue 25; the issue-23 tables before it ran batch 8, lr 5e-4)
DET=(--preset two-stage --image_size 384 --epochs 1000 --eval_every 0 --checkpoint_every 0 "${DATA[@]}")
PROBE=(--backbone_mode frozen --backbone_feature_layers 1 --num_feature_levels 1 --encoder_layers 0
       --decoder_layers 1)
BOXES=(--preset two-stage --image_size 384 --epochs 1000 --checkpoint_every 0 --time_budget_min 19.5 --seed 0
       --train_images $D/JPEGImages --proposals --dino_model "$OUT/pretrain" --lr_backbone 3.5e-4
       --output_dir "$OUT/boxes" ${BOXES_EXTRA:-})
BOXES2=(--preset two-stage --image_size 384 --epochs 1000 --checkpoint_every 0 --time_budget_min 19.5 --seed 0
        --train_images $D/JPEGImages --proposals --proposals_from "$OUT/boxes" --dino_model "$OUT/pretrain"
        --init_from "$OUT/boxes/dino_detector_final.pth" --lr_backbone 3.5e-4 --output_dir "$OUT/boxes2")
encoder_of() { case $1 in random) echo flexible-tiny;; boxes*) echo "$OUT/$1";; *) echo "$ENCODER";; esac; }
show() { grep -E "INFO (training|pretraining|encoder|pretrained encoder|unsupervised|val final|time budget)|^AP |error" || true; }

if want knn_random; then $py -m dino_detector.pretrain "${KNN[@]}" --arch flexible-tiny --output_dir "$OUT/knn_random"; fi
if want pretrain; then $py -m dino_detector.pretrain "${PRETRAIN[@]}" --output_dir "$OUT/pretrain" 2>&1 | show; fi
if want knn_pretrained; then $py -m dino_detector.pretrain "${KNN[@]}" --encoder "$ENCODER" \
    --output_dir "$OUT/knn_pretrained"; fi
if want boxes; then $py -m dino_detector.train "${BOXES[@]}" 2>&1 | show; fi
if want boxes2; then $py -m dino_detector.train "${BOXES2[@]}" 2>&1 | show; fi
for which in boxes boxes2; do
  if want knn_$which; then $py -m dino_detector.pretrain "${KNN[@]}" --encoder "$OUT/$which/encoder_final.pth" \
      --output_dir "$OUT/knn_$which"; fi
done
for which in random pretrained boxes boxes2; do
  if want frozen_$which; then for seed in 1 2; do
    $py -m dino_detector.train "${DET[@]}" "${PROBE[@]}" --time_budget_min 10 --seed $seed \
      --dino_model "$(encoder_of $which)" --output_dir "$OUT/frozen_${which}_s$seed" 2>&1 | show
  done; fi
done
for which in random pretrained boxes boxes2; do
  # the box-pretrained runs carry their whole detector (--init_from), the others their encoder
  if [[ $which == boxes* ]]; then START=(--init_from "$OUT/$which/dino_detector_final.pth")
  else START=(--dino_model "$(encoder_of $which)"); fi
  if want finetune_$which; then for seed in 1 2 3; do
    $py -m dino_detector.train "${DET[@]}" --time_budget_min 12 --seed $seed \
      "${START[@]}" --output_dir "$OUT/finetune_${which}_s$seed" 2>&1 | show
  done; fi
done
if want report; then $py - "$OUT" <<'EOF'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
for kind in ("knn_random", "knn_pretrained", "knn_boxes", "knn_boxes2"):
    f = out / kind / "knn_metrics.json"
    if f.is_file():
        print(f"{kind}: balanced accuracy {json.loads(f.read_text())['balanced_accuracy']:.4f}")
for mode in ("frozen", "finetune"):
    means = {}
    for which in ("random", "pretrained", "boxes", "boxes2"):
        aps = [json.loads(f.read_text())["AP"] for f in sorted(out.glob(f"{mode}_{which}_s*/val_metrics_final.json"))]
        if aps:
            means[which] = statistics.mean(aps)
            spread = f" +- {statistics.stdev(aps):.4f}" if len(aps) > 1 else ""
            print(f"{mode} {which}: AP {means[which]:.4f}{spread}  seeds {[round(a, 4) for a in aps]}")
    for which in ("pretrained", "boxes", "boxes2"):  # the must-shows: frozen as a ratio, fine-tuning as a gain
        if which in means and means.get("random", 0) > 0:
            print(f"{mode}: {which} / random {means[which] / means['random']:.2f}, "
                  f"{which} - random {means[which] - means['random']:+.4f}")
EOF
fi
