#!/usr/bin/env bash
# The study of docs/study.md, end to end: pretraining, both BatchNorm sweeps, export, the
# distilled mobile students, test-time augmentation, the one holdout pass (floors, bench run,
# bench report) and the arm64 check. Every step is resumable: rerun the script after a stop
# and finished work is skipped. Run it again with SIZE=128 (another WORK) for native resolution.
#
# Usage: docs/study.sh [WORK]      (default WORK=work/study; run from the repository root)
# Environment:
#   DATA       the SDSS DR16 128 px set with dev/ and holdout/ and labels.csv
#              (default ../shared/data/sdss-dr16-128)
#   LARGE      the disjoint 18,000-image set for pretraining (default ../shared/data/sdss-dr16-128-large)
#   WEIGHTS    imagenet, or empty to pretrain in-domain here (default empty: pretrain)
#   SIZE       image side in px (default 64); EPOCHS sweep epochs (default 8)
#   BACKBONES  default mobilenetv2,densenet121,mobilenetv3small,efficientnetb0,resnet50
#   SEEDS      fine-tuning seeds of every sweep run (default 0,1,2)
#   BNS        the BatchNorm settings swept (default "frozen study")
#   STUDENTS   mobile backbones distilled from the frozen study's most accurate model
#              (default mobilenetv2,mobilenetv3small)
#   STEPS      which steps run (default "pretrain sweep export distill tta holdout arm64"); the
#              holdout step reads the holdout images, so leave it out of any partial run
set -euo pipefail

WORK=${1:-work/study}
DATA=${DATA:-../shared/data/sdss-dr16-128}
LARGE=${LARGE:-../shared/data/sdss-dr16-128-large}
WEIGHTS=${WEIGHTS:-}
SIZE=${SIZE:-64}
EPOCHS=${EPOCHS:-8}
BACKBONES=${BACKBONES:-mobilenetv2,densenet121,mobilenetv3small,efficientnetb0,resnet50}
SEEDS=${SEEDS:-0,1,2}
BNS=${BNS:-frozen study}
STUDENTS=${STUDENTS:-mobilenetv2,mobilenetv3small}
STEPS=${STEPS:-pretrain sweep export distill tta holdout arm64}
PY=${PY:-.venv/bin/python}
BENCH=${BENCH:-.venv/bin/bench}
mkdir -p "$WORK/logs" "$WORK/results"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$WORK/logs/study.log"; }
step() { [[ " $STEPS " == *" $1 "* ]]; }

# 1. in-domain pretraining, unless ImageNet weights are used
if [ -z "$WEIGHTS" ] && step pretrain; then
    [ -f "$WORK/large/manifest.csv" ] || $PY -m train.data index "$LARGE" --out "$WORK/large" --val 0.1 --test 0.1
    for b in ${BACKBONES//,/ }; do
        [ -f "$WORK/weights/$b.h5" ] && continue
        say "pretrain $b"
        $PY -m train.pretrain --data "$WORK/large" --backbone "$b" --epochs 12 --img-size "$SIZE" \
            --batch-size 64 --out "$WORK/weights/" 2>&1 | tee -a "$WORK/logs/pretrain-$b.log"
    done
fi
[ -n "$WEIGHTS" ] || WEIGHTS="$WORK/weights/"

# 2. the sweep on the dev set at every level of the study's schedule, both BatchNorm settings
for bn in $BNS; do
    step sweep || continue
    say "sweep --bn $bn"
    $PY -m train.sweep --data "$DATA" --backbones "$BACKBONES" --levels paper --epochs "$EPOCHS" --seeds "$SEEDS" \
        --img-size "$SIZE" --weights "$WEIGHTS" --bn "$bn" --out "$WORK/sweeps/$bn" 2>&1 | tee -a "$WORK/logs/sweep-$bn.log"
done

# 3. each backbone's best level (chosen on validation images), fp32 and int8
for bn in $BNS; do
    step export || continue
    say "export $bn"
    $PY -m export.tflite --runs "$WORK/sweeps/$bn" --out "$WORK/exports/$bn" --select best \
        --variants fp32,int8 2>&1 | tee -a "$WORK/logs/export-$bn.log"
done

# 4. distillation: each mobile student, at its best level of the frozen sweep, learns from the
#    frozen study's most accurate fp32 model (chosen on validation images), then is exported
if step distill; then
    for s in ${STUDENTS//,/ }; do
        say "distill $s"
        $PY -m train.distill --data "$DATA" --teacher "$WORK/exports/frozen" --student "$s" --level best \
            --sweep "$WORK/sweeps/frozen" --weights "$WEIGHTS" --seeds "$SEEDS" --epochs "$EPOCHS" --img-size "$SIZE" \
            --out "$WORK/distill" 2>&1 | tee -a "$WORK/logs/distill.log"
    done
    $PY -m export.tflite --runs "$WORK/distill" --out "$WORK/exports/distill" --select best --variants fp32,int8 \
        2>&1 | tee -a "$WORK/logs/export-distill.log"
fi

# 5. test-time augmentation: the frozen study's best runs again, averaged over the 8 views in the graph
if step tta; then
    say "tta"
    $PY -m export.tflite --runs "$WORK/sweeps/frozen" --out "$WORK/exports/frozen" --select best --variants tta \
        2>&1 | tee -a "$WORK/logs/export-tta.log"
fi

# 6. the holdout, once: indexed as all-test, the floors on it, every artifact scored on it
if step holdout; then
[ -f "$WORK/holdout/manifest.csv" ] || $PY -m train.data index "$DATA" --subset holdout --val 0 --test 1 --out "$WORK/holdout"
[ -f "$WORK/results/holdout-floors.json" ] || $BENCH floors --data "$WORK/holdout" --train "$DATA" \
    --out "$WORK/results/holdout-floors.json"
[ -d "$WORK/exports/distill" ] && FOLDERS="$BNS distill" || FOLDERS="$BNS"
for bn in $FOLDERS; do
    runs="$WORK/sweeps/$bn"; [ "$bn" = distill ] && runs="$WORK/distill"
    say "bench $bn"
    $BENCH run --models "$WORK/exports/$bn" --data "$WORK/holdout" --split test --threads 1,2 \
        --device-name "$(hostname)" --resume --out "$WORK/results/holdout-$bn.jsonl" || [ $? -eq 3 ]
    $BENCH report --runs "$runs" --exports "$WORK/exports/$bn" --results "$WORK/results/holdout-$bn.jsonl" \
        --floors "$WORK/results/holdout-floors.json" --out "$WORK/reports/$bn"
done
fi

# 7. the same models under arm64 emulation (needs qemu-user-static and mmdebstrap; see docs/arm64.md)
if step arm64 && command -v qemu-aarch64-static >/dev/null && command -v mmdebstrap >/dev/null; then
    say "arm64 check"
    SKYEDGE_ARM64_WORK="$WORK/arm64" device/arm64_check.sh "$WORK/exports/frozen" 2>&1 | tee -a "$WORK/logs/arm64.log"
fi
say "done: $WORK/reports/frozen/report.md, $WORK/reports/study/report.md"
