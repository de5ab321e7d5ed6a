#!/usr/bin/env bash
# The int8 check of docs/export.md: does full-integer quantization hold on competent models of
# each backbone, and what does the automatic rescue do where it does not? For each backbone:
# a short in-domain pretraining on the large set, one fine-tuning run at LEVEL on the dev set,
# then export twice, once with `--int8-rescue off` (the plain recipe) and once with the default
# rescue, and a table of both. Validation and test images only: the holdout is never read.
# Every step is resumable: rerun the script after a stop and finished work is skipped.
#
# Usage: docs/int8_check.sh [WORK]      (default WORK=work/int8-check; run from the repository root)
# Environment:
#   DATA       the SDSS DR16 128 px set with dev/ (default ../shared/data/sdss-dr16-128)
#   LARGE      the disjoint 18,000-image set for pretraining (default ../shared/data/sdss-dr16-128-large)
#   BACKBONES  default resnet50,mobilenetv2,mobilenetv3small,efficientnetb0,densenet121
#   SIZE       image side in px (default 64); LEVEL the fine-tuning level (default 5)
#   PRE_EPOCHS pretraining epochs (default 4; the study uses 12); EPOCHS fine-tuning epochs (default 8)
#   STEPS      default "pretrain sweep before after table"
set -euo pipefail

WORK=${1:-work/int8-check}
DATA=${DATA:-../shared/data/sdss-dr16-128}
LARGE=${LARGE:-../shared/data/sdss-dr16-128-large}
BACKBONES=${BACKBONES:-resnet50,mobilenetv2,mobilenetv3small,efficientnetb0,densenet121}
SIZE=${SIZE:-64}
LEVEL=${LEVEL:-5}
PRE_EPOCHS=${PRE_EPOCHS:-4}
EPOCHS=${EPOCHS:-8}
STEPS=${STEPS:-pretrain sweep before after table}
PY=${PY:-.venv/bin/python}
mkdir -p "$WORK/logs"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$WORK/logs/int8-check.log"; }
step() { [[ " $STEPS " == *" $1 "* ]]; }

if step pretrain; then
    [ -f "$WORK/large/manifest.csv" ] || $PY -m train.data index "$LARGE" --out "$WORK/large" --val 0.1 --test 0.1
    for b in ${BACKBONES//,/ }; do
        [ -f "$WORK/weights/$b.h5" ] && continue
        say "pretrain $b ($PRE_EPOCHS epochs, $SIZE px)"
        $PY -m train.pretrain --data "$WORK/large" --backbone "$b" --epochs "$PRE_EPOCHS" --img-size "$SIZE" \
            --batch-size 64 --out "$WORK/weights/" 2>&1 | tee -a "$WORK/logs/pretrain-$b.log"
    done
fi

if step sweep; then
    say "sweep at level $LEVEL"
    $PY -m train.sweep --data "$DATA" --backbones "$BACKBONES" --levels "$LEVEL" --epochs "$EPOCHS" \
        --img-size "$SIZE" --weights "$WORK/weights/" --bn frozen --out "$WORK/sweep" 2>&1 | tee -a "$WORK/logs/sweep.log"
fi

if step before; then
    say "export without rescue"
    $PY -m export.tflite --runs "$WORK/sweep" --out "$WORK/exports-plain" --select best --variants fp32,int8 \
        --int8-rescue off 2>&1 | tee -a "$WORK/logs/export-plain.log"
fi

if step after; then
    say "export with the default rescue"
    $PY -m export.tflite --runs "$WORK/sweep" --out "$WORK/exports" --select best --variants fp32,int8 \
        2>&1 | tee -a "$WORK/logs/export.log"
fi

if step table; then
    $PY -m export.rescue_table "$WORK/exports-plain" "$WORK/exports" | tee "$WORK/int8-check.md"
fi
say "done: $WORK/int8-check.md"
