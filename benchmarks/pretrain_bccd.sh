#!/usr/bin/env bash
# Self-supervised pretraining on BCCD (train + val JPEGs, labels unused), then
#   1. k-NN balanced accuracy of BCCD object crops (train crops -> val crops): random vs pretrained encoder;
#   2. detection on BCCD (train -> val), same detector and 15-minute budget: random vs pretrained encoder.
# Usage: bash benchmarks/pretrain_bccd.sh [OUT_DIR [STEP ...]]   STEP: knn_random pretrain knn_pretrained
#        det_random det_pretrained (default: all). About 70 minutes on 2 CPU cores; run nothing else meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/bench_pretrain}
ARGS=("$@"); WANT=("${ARGS[@]:1}")
D=../shared/datasets/bccd
want() { [ ${#WANT[@]} -eq 0 ] || [[ " ${WANT[*]} " =~ " $1 " ]]; }
KNN=(--eval_knn --images $D/JPEGImages --annotations $D/coco/instances_train.json
     --val_annotations $D/coco/instances_val.json --seed 0)
# Colour carries the classes in stained smears: no hue jitter, no grayscale views. Crops at the scale of
# single cells (local: 0.2-2 % of the image area, global: 2-20 %): with the wider default scales the k-NN
# accuracy did not move (BENCHMARKS.md).
PRETRAIN=(--images $D/JPEGImages --arch flexible-tiny --time_budget_min 19.5 --epochs 200
          --color_jitter 0.4 0.4 0.2 0.0 --grayscale_p 0 --global_scale 0.02 0.2 --local_scale 0.002 0.02
          --lr 2e-4 --seed 0)  # the scales and lr are also the defaults now
DET=(--image_size 384 --batch_size 8 --lr 5e-4 --lr_backbone 5e-4 --epochs 1000 --eval_every 0
     --checkpoint_every 0 --time_budget_min 15 --seed 42 --num_feature_levels 4 --backbone_feature_layers 3
     --decoder_shared_values --encoder_layers 1 --two_stage
     --train_images $D/JPEGImages --train_annotations $D/coco/instances_train.json
     --val_images $D/JPEGImages --val_annotations $D/coco/instances_val.json)
py=.venv/bin/python
if want knn_random; then $py -m dino_detector.pretrain "${KNN[@]}" --arch flexible-tiny --output_dir "$OUT/knn_random"; fi
if want pretrain; then $py -m dino_detector.pretrain "${PRETRAIN[@]}" --output_dir "$OUT/pretrain" 2>&1 \
    | grep -E "INFO (pretraining|encoder)|error"; fi
if want knn_pretrained; then $py -m dino_detector.pretrain "${KNN[@]}" --encoder "$OUT/pretrain/encoder_final.pth" \
    --output_dir "$OUT/knn_pretrained"; fi
if want det_random; then $py -m dino_detector.train "${DET[@]}" --dino_model flexible-tiny \
    --output_dir "$OUT/det_random" 2>&1 | grep -E "INFO (training|final|time budget)|^AP "; fi
if want det_pretrained; then $py -m dino_detector.train "${DET[@]}" --dino_model "$OUT/pretrain/encoder_final.pth" \
    --output_dir "$OUT/det_pretrained" 2>&1 | grep -E "INFO (training|final|time budget)|^AP "; fi
