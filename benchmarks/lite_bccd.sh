#!/usr/bin/env bash
# Issue 24: the two-stage-lite preset (two-stage on the flexible-lite encoder: --dino_model flexible-lite
# --fine_level stem --backbone_feature_layers 1) against two-stage, 12 minutes each on BCCD from random weights, one
# run after another (about 50 min on 2 CPU cores for two seeds). Nothing else may run beside it: the budget
# is wall time, so a second job costs the runs steps.
# Usage: bash benchmarks/lite_bccd.sh [OUT_DIR] [SEEDS...]    (default outputs/lite_bccd, seeds 1 2)
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
D=../shared/datasets/bccd
O=${1:-outputs/lite_bccd}; shift || true
SEEDS=("${@:-1 2}"); mkdir -p "$O"
DET=(--image_size 384 --epochs 1000 --eval_every 0 --checkpoint_every 0 --time_budget_min 12
     --train_images $D/JPEGImages --train_annotations $D/coco/instances_train.json
     --val_images $D/JPEGImages --val_annotations $D/coco/instances_val.json)
for s in ${SEEDS[@]}; do
  echo "start lite s$s $(date)"
  $py -m dino_detector.train --preset two-stage-lite "${DET[@]}" --seed $s --output_dir $O/lite_s$s > $O/lite_s$s.log 2>&1
  echo "start preset s$s $(date)"
  $py -m dino_detector.train --preset two-stage "${DET[@]}" --seed $s --output_dir $O/preset_s$s > $O/preset_s$s.log 2>&1
done
echo "done $(date)"
