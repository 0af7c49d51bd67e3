#!/usr/bin/env bash
# Issue 23, ninth session: a self-training round of box pretraining (--proposals_from), then full fine-tuning
# (must-show 3) from it against random weights, seeds 1-3, one run after another (about 100 min on 2 CPU cores).
# Needs the eighth session's encoder and box detector: bash benchmarks/results/2026-12-05-objboxes/commands.sh P
# (or bash benchmarks/pretrain_bccd.sh P pretrain boxes, then P/obj = P/pretrain, P/objboxes = P/boxes).
# Usage: bash commands.sh P [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/../../.."  # the repository root (this session ran it from a frozen git worktree)
py=.venv/bin/python
D=../shared/datasets/bccd
P=$1
O=${2:-outputs/selftrain}; mkdir -p "$O"
DET=(--preset two-stage --image_size 384 --epochs 1000 --eval_every 0 --checkpoint_every 0
     --train_images $D/JPEGImages --train_annotations $D/coco/instances_train.json
     --val_images $D/JPEGImages --val_annotations $D/coco/instances_val.json)
echo "start round2 $(date)"
$py -m dino_detector.train --preset two-stage --image_size 384 --epochs 1000 --checkpoint_every 0 --time_budget_min 19.5 \
  --seed 0 --train_images $D/JPEGImages --proposals --proposals_from $P/objboxes --dino_model $P/obj --lr_backbone 3.5e-4 \
  --init_from $P/objboxes/dino_detector_final.pth --output_dir $O/round2 > $O/round2.log 2>&1
for s in 1 2 3; do
  echo "start ft obj s$s $(date)"
  $py -m dino_detector.train "${DET[@]}" --time_budget_min 12 --seed $s --init_from $O/round2/dino_detector_final.pth \
    --output_dir $O/ft_obj_s$s > $O/ft_obj_s$s.log 2>&1
  echo "start ft random s$s $(date)"
  $py -m dino_detector.train "${DET[@]}" --time_budget_min 12 --seed $s --dino_model flexible-tiny \
    --output_dir $O/ft_random_s$s > $O/ft_random_s$s.log 2>&1
done
echo "done $(date)"
