#!/usr/bin/env bash
# Architecture variants on BCCD (train -> val), tiny backbone, same 15-minute CPU training budget each.
# Usage: bash benchmarks/bccd_variants.sh [OUT_DIR [VARIANT ...]]
#   (about 17 minutes per variant on 2 CPU cores; run nothing else meanwhile)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/bench_bccd}
D=../shared/datasets/bccd
COMMON=(--dino_model tiny --image_size 384 --batch_size 8 --lr 5e-4 --epochs 1000 --eval_every 0
        --checkpoint_every 0 --time_budget_min 15 --seed 42
        --train_images $D/JPEGImages --train_annotations $D/coco/instances_train.json
        --val_images $D/JPEGImages --val_annotations $D/coco/instances_val.json)
OUT_ARGS=("$@"); WANT=("${OUT_ARGS[@]:1}")
run() { name=$1; shift
        if [ ${#WANT[@]} -gt 0 ] && [[ ! " ${WANT[*]} " =~ " $name " ]]; then return; fi
        echo "== $name: $*"; .venv/bin/python -m dino_detector.train "${COMMON[@]}" "$@" \
          --output_dir "$OUT/$name" 2>&1 | grep -E "INFO (training|final|time budget)|^AP "; }
run single_scale --num_feature_levels 1 --encoder_layers 1
MULTI=(--num_feature_levels 4 --backbone_feature_layers 3 --decoder_shared_values)
run multi_scale "${MULTI[@]}" --encoder_layers 0
run multi_scale_encoder_two_stage "${MULTI[@]}" --encoder_layers 1 --two_stage
.venv/bin/python - "$OUT" <<'PY'
import json, sys, pathlib
for d in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    if not (d / "val_metrics_final.json").exists():
        continue
    m = json.loads((d / "val_metrics_final.json").read_text())
    print(f"{d.name:32s} AP {m['AP']:.3f} AP50 {m['AP50']:.3f} AP75 {m['AP75']:.3f} APs {m['APs']:.3f} "
          f"APm {m['APm']:.3f} APl {m['APl']:.3f} epochs {m['epoch']}")
PY
