#!/usr/bin/env bash
# Real scenes in one command: synthetic pretraining (objects with a reference view), fine-tuning on
# the training scenes of configs/colmap_scenes.yaml from its last checkpoint, then the test table.
#   bash scripts/train_real.sh                          # 10 + 20 minutes on a 2-core CPU
#   OUT=outputs/real PRETRAIN_TIME=00:00:05:00 FINETUNE_TIME=00:01:00:00 bash scripts/train_real.sh
# Further arguments go to both training runs (e.g. --trainer.accelerator gpu); EVAL_ARGS to the test
# evaluation (e.g. "--limit 20 --device cuda").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-outputs/real}
ROOT=${ROOT:-../shared/data/colmap_scenes}
PY=.venv/bin/python
$PY scripts/train.py fit --config configs/colmap_scenes.yaml --config configs/pretrain_synthetic_bearings.yaml \
    --trainer.default_root_dir "$OUT/pretrain" --trainer.max_time "${PRETRAIN_TIME:-00:00:10:00}" "$@"
$PY scripts/train.py fit --config configs/colmap_scenes.yaml --data.root "$ROOT" \
    --trainer.default_root_dir "$OUT/finetune" --trainer.max_time "${FINETUNE_TIME:-00:00:20:00}" \
    --model.init_from "$OUT/pretrain/checkpoints/last.ckpt" "$@"
# "natural": each query's own outliers (the config's 50 % is lifted for that row).
$PY scripts/evaluate.py --data configs/colmap_scenes.yaml --data.root "$ROOT" --split test \
    --data.outlier_rate_2d null --data.outlier_rate_3d null \
    --ckpt "$OUT/finetune/checkpoints/last.ckpt" --baseline '[retrieved,oracle,random]' \
    --outlier_rates "${OUTLIER_RATES:-natural,0.75,0.5,0.25,0}" --out "$OUT/eval" ${EVAL_ARGS:-}
