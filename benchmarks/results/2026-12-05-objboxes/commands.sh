#!/usr/bin/env bash
# Issue 23, eighth session: object-view pretraining -> box pretraining -> light probes, then random probes,
# one after another. Usage: bash commands.sh [OUT_DIR]   (about 90 min on 2 CPU cores)
set -uo pipefail
cd "$(dirname "$0")/../../.."  # the repository root (this session ran it from a frozen git worktree)
py=.venv/bin/python
D=../shared/datasets/bccd
O=${1:-outputs/objboxes}; mkdir -p "$O"
DET=(--preset two-stage --image_size 384 --epochs 1000 --eval_every 0 --checkpoint_every 0
     --train_images $D/JPEGImages --train_annotations $D/coco/instances_train.json
     --val_images $D/JPEGImages --val_annotations $D/coco/instances_val.json)
PROBE=(--backbone_mode frozen --backbone_feature_layers 1 --num_feature_levels 1 --encoder_layers 0 --decoder_layers 1)
echo "start obj $(date)"
$py -m dino_detector.pretrain --images $D/JPEGImages --arch flexible-tiny --time_budget_min 19.5 --epochs 200 \
  --color_jitter 0.4 0.4 0.2 0.0 --grayscale_p 0 --seed 0 --object_views --object_context 2.0 --object_boxes 40 \
  --global_scale 0.4 1.0 --local_scale 0.05 0.3 \
  --mim_weight 1.0 --mask_probability 1.0 --mask_ratio 0.2 0.6 --output_dir $O/obj > $O/obj.log 2>&1
echo "start boxes $(date)"
$py -m dino_detector.train --preset two-stage --image_size 384 --epochs 1000 --checkpoint_every 0 --time_budget_min 19.5 \
  --seed 0 --train_images $D/JPEGImages --proposals --dino_model $O/obj --lr_backbone 3.5e-4 \
  --output_dir $O/objboxes > $O/objboxes.log 2>&1
for s in 1 2; do
  echo "start probe objboxes s$s $(date)"
  $py -m dino_detector.train "${DET[@]}" "${PROBE[@]}" --time_budget_min 10 --seed $s --dino_model $O/objboxes \
    --output_dir $O/frozen_objboxes_s$s > $O/frozen_objboxes_s$s.log 2>&1
done
for s in 1 2; do
  echo "start probe random s$s $(date)"
  $py -m dino_detector.train "${DET[@]}" "${PROBE[@]}" --time_budget_min 10 --seed $s --dino_model flexible-tiny \
    --output_dir $O/frozen_random_s$s > $O/frozen_random_s$s.log 2>&1
done
KNN=(--eval_knn --images $D/JPEGImages --annotations $D/coco/instances_train.json --val_annotations $D/coco/instances_val.json --seed 0)
for e in obj objboxes; do
  $py -m dino_detector.pretrain "${KNN[@]}" --encoder $O/$e/encoder_final.pth --output_dir $O/knn_$e > $O/knn_$e.log 2>&1
done
# must-show 3, seed 1: the whole box-pretrained detector, then random weights, back to back
$py -m dino_detector.train "${DET[@]}" --time_budget_min 12 --seed 1 --init_from $O/objboxes/dino_detector_final.pth \
  --output_dir $O/finetune_objboxes_s1 > $O/finetune_objboxes_s1.log 2>&1
$py -m dino_detector.train "${DET[@]}" --time_budget_min 12 --seed 1 --dino_model flexible-tiny \
  --output_dir $O/finetune_random_s1 > $O/finetune_random_s1.log 2>&1
echo "done $(date)"
