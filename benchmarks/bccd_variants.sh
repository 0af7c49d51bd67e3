#!/usr/bin/env bash
# Architecture variants on BCCD (train -> val), tiny backbone, same 15-minute CPU training budget each.
# Usage: [MINUTES=15] bash benchmarks/bccd_variants.sh [OUT_DIR [VARIANT ...]]
#   (about MINUTES + 2 minutes per variant on 2 CPU cores; run nothing else meanwhile)
# The convergence A/B of issue 9 (recipe_* below, against multi_scale_encoder_two_stage) runs only when named:
#   MINUTES=7 bash benchmarks/bccd_variants.sh OUT multi_scale_encoder_two_stage recipe_batch4 \
#     recipe_batch4_decoder3 recipe_one_to_many3
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/bench_bccd}
D=../shared/datasets/bccd
COMMON=(--dino_model tiny --image_size 384 --batch_size 8 --lr 5e-4 --epochs 1000 --eval_every 0
        --checkpoint_every 0 --time_budget_min ${MINUTES:-15} --seed 42
        --train_images $D/JPEGImages --train_annotations $D/coco/instances_train.json
        --val_images $D/JPEGImages --val_annotations $D/coco/instances_val.json)
OUT_ARGS=("$@"); WANT=("${OUT_ARGS[@]:1}")
wanted() { [[ " ${WANT[*]} " =~ " $1 " ]]; }
run() { name=$1; shift
        if [ ${#WANT[@]} -gt 0 ] && ! wanted "$name"; then return; fi
        echo "== $name: $*"; .venv/bin/python -m dino_detector.train "${COMMON[@]}" "$@" \
          --output_dir "$OUT/$name" 2>&1 | grep -E "INFO (training|final|time budget)|^AP "; }
only_named() { if wanted "$1"; then run "$@"; fi; }
run single_scale --num_feature_levels 1 --encoder_layers 1
MULTI=(--num_feature_levels 4 --backbone_feature_layers 3 --decoder_shared_values)
run multi_scale "${MULTI[@]}" --encoder_layers 0
RECIPE=("${MULTI[@]}" --encoder_layers 1 --two_stage)  # the benchmark suite's tiny recipe
run multi_scale_encoder_two_stage "${RECIPE[@]}"
# issue 9: the recipe against batch 4, 3 decoder layers, one-to-many matching
only_named recipe_batch4 "${RECIPE[@]}" --batch_size 4
only_named recipe_batch4_decoder3 "${RECIPE[@]}" --batch_size 4 --decoder_layers 3
only_named recipe_one_to_many3 "${RECIPE[@]}" --one_to_many 3
.venv/bin/python - "$OUT" <<'PY'
import json, sys, pathlib
for d in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    if not (d / "val_metrics_final.json").exists():
        continue
    m = json.loads((d / "val_metrics_final.json").read_text())
    print(f"{d.name:32s} AP {m['AP']:.3f} AP50 {m['AP50']:.3f} AP75 {m['AP75']:.3f} APs {m['APs']:.3f} "
          f"APm {m['APm']:.3f} APl {m['APl']:.3f} epochs {m['epoch']}")
PY
