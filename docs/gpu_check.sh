#!/usr/bin/env bash
# The GPU check: the study's seven backbones at the study's scale on one GPU, the plain
# training path against mixed precision, XLA and frozen-feature caching.
#
#   docs/gpu_check.sh [OUT]          (default OUT: out/gpu-check)
#
# Steps, each with its own folder under OUT:
#   1. speed/  python -m train.speed_benchmark: images/s of a training step per backbone and
#              mode (float32, mixed_float16, mixed_float16+xla by default), ratio to float32
#   2. cache/  python -m train.cache_benchmark: a sweep with and without caching, the speed-up
#              and whether the two give the same validation accuracies and probabilities
#   3. study.txt: the study sweep's wall time at STUDY_SIZE px extrapolated from step 1 (every
#              level timed as a fully trainable step, so an upper bound; the time per image
#              scaled by the pixel count)
#
# Settings (environment): SIZE (224), BACKBONES (the study's seven), MODES, BATCH (32),
# STEPS (20), WEIGHTS (none: offline; imagenet where downloads work), CACHE_BACKBONES
# (mobilenetv2,densenet121), LEVELS (paper), N (300 simulated images), EPOCHS (10), STUDY_SIZE (512),
# STUDY_TRAIN_IMAGES (3600), STUDY_EPOCHS (10), PY (python). tests/test_gpu_check.py runs it
# on a CPU at 32 px with two backbones.
set -euo pipefail
OUT=${1:-out/gpu-check}
SIZE=${SIZE:-224}
BACKBONES=${BACKBONES:-resnet50,vgg16,densenet121,xception,efficientnetb2,mobilenetv2,nasnetmobile}
MODES=${MODES:-float32,mixed_float16,mixed_float16+xla}
BATCH=${BATCH:-32}
STEPS=${STEPS:-20}
WEIGHTS=${WEIGHTS:-none}
CACHE_BACKBONES=${CACHE_BACKBONES:-mobilenetv2,densenet121}
LEVELS=${LEVELS:-paper}
N=${N:-300}
EPOCHS=${EPOCHS:-10}
STUDY_SIZE=${STUDY_SIZE:-512}
STUDY_TRAIN_IMAGES=${STUDY_TRAIN_IMAGES:-3600}
STUDY_EPOCHS=${STUDY_EPOCHS:-10}
PY=${PY:-python}
mkdir -p "$OUT"
say() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
else
    say "no nvidia-smi: running on the CPU" | tee "$OUT/gpu.txt"
fi

say "1/3 training step speed: $BACKBONES at $SIZE px, modes $MODES"
$PY -m train.speed_benchmark --backbones "$BACKBONES" --modes "$MODES" --img-size "$SIZE" \
    --batch-size "$BATCH" --steps "$STEPS" --out "$OUT/speed"

say "2/3 frozen-feature caching against plain training: $CACHE_BACKBONES at $SIZE px, $N images"
$PY -m train.cache_benchmark --backbones "$CACHE_BACKBONES" --img-size "$SIZE" --n "$N" --epochs "$EPOCHS" \
    --levels "$LEVELS" --weights "$WEIGHTS" --out "$OUT/cache"

say "3/3 the study sweep at $STUDY_SIZE px, extrapolated"
$PY - "$OUT" "$SIZE" "$STUDY_SIZE" "$STUDY_TRAIN_IMAGES" "$STUDY_EPOCHS" <<'PYEOF' | tee "$OUT/study.txt"
import json, sys
from pathlib import Path
from device.backbones import get

out, size, study_size, images, epochs = Path(sys.argv[1]), *map(int, sys.argv[2:])
speed = json.loads((out / "speed" / "speed_benchmark.json").read_text())
scale = (study_size / size) ** 2
print(f"study sweep at {study_size} px: {images} training images, {epochs} epochs per level, the study's levels; "
      f"time per image scaled by ({study_size}/{size})^2 = {scale:.2f} from the {size} px step speeds")
totals = {}
for row in speed["rows"]:
    levels = len(get(row["backbone"]).paper_levels)
    hours = levels * epochs * images * scale / row["bare_images_per_s"] / 3600
    totals[row["mode"]] = totals.get(row["mode"], 0.0) + hours
    print(f"  {row['backbone']:<16} {row['mode']:<20} {levels:3d} levels  {hours:8.2f} h")
for mode, hours in totals.items():
    print(f"  all backbones, {mode}: {hours:.1f} h (upper bound: every level timed as fully trainable)")
PYEOF
say "done: $OUT"
