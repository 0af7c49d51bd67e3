#!/usr/bin/env bash
# Issue 24, must-show 4: does sliced inference raise APs on BCCD val for a model trained at 384 px?
# 1. two-stage, 12 minutes on BCCD from random weights (skipped when BASE, a checkpoint, is given);
# 2. 8 minutes of slicing-aided fine-tuning from it: random crops of 50-100 % of the image side resized to
#    384 px (--crop_prob 0.5), so the model learns objects at the scale a 480-px tile shows them;
# 3. analyze --run_eval on BCCD val (onnxruntime): no slicing, 480-px tiles merged by NMS, and 480-px tiles
#    preferring the whole image's boxes, for the base and the fine-tuned model.
# About 35 min on 2 CPU cores (25 with BASE). Nothing else may run beside it: the budgets are wall time.
# Usage: bash benchmarks/slice_bccd.sh [OUT_DIR] [BASE_CHECKPOINT]     (default outputs/slice_bccd)
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
D=../shared/datasets/bccd
O=${1:-outputs/slice_bccd}; BASE=${2:-}; mkdir -p "$O"
DATA=(--image_size 384 --epochs 1000 --eval_every 0 --checkpoint_every 0
      --train_images $D/JPEGImages --train_annotations $D/coco/instances_train.json
      --val_images $D/JPEGImages --val_annotations $D/coco/instances_val.json)
if [ -z "$BASE" ]; then
  echo "start base $(date)"
  $py -m dino_detector.train --preset two-stage "${DATA[@]}" --time_budget_min 12 --seed 1 --output_dir $O/base > $O/base.log 2>&1
  BASE=$O/base/dino_detector_final.pth
fi
echo "start fine-tune $(date)"
$py -m dino_detector.train --preset two-stage "${DATA[@]}" --init_from $BASE --time_budget_min 8 --seed 1 \
  --crop_prob 0.5 --crop_min_fraction 0.5 --mosaic_prob 0 --strong_aug_start_epoch 0 --strong_aug_off_fraction 0.15 \
  --output_dir $O/crops > $O/crops.log 2>&1
for m in base crops; do
  ckpt=$O/crops/dino_detector_final.pth; [ $m = base ] && ckpt=$BASE
  EVAL=(--run_eval --model_path $ckpt --backend onnxruntime --val_images $D/JPEGImages
        --val_annotations $D/coco/instances_val.json)
  echo "start analyze $m $(date)"
  $py -m dino_detector.analyze "${EVAL[@]}" --output_dir $O/${m}_whole > $O/${m}_whole.log 2>&1
  $py -m dino_detector.analyze "${EVAL[@]}" --slice 480 --output_dir $O/${m}_slice480_nms > $O/${m}_slice480_nms.log 2>&1
  $py -m dino_detector.analyze "${EVAL[@]}" --slice 480 --slice_prefer_whole --output_dir $O/${m}_slice480_whole \
    > $O/${m}_slice480_whole.log 2>&1
done
grep -H "Average Precision  (AP) @\[ IoU=0.50:0.95 | area=   all\|area= small" $O/*_whole.log $O/*_slice480_*.log
echo "done $(date)"
