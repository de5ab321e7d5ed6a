#!/usr/bin/env bash
# Prove that the device install and `bench run` work on 64-bit ARM Linux (as on a Raspberry
# Pi 4/5 with 64-bit Raspberry Pi OS / Debian bookworm), by emulation on an x86 host:
#
#   1. an arm64 Debian bookworm root with its Python 3.11 (mmdebstrap, extract variant: no
#      package scripts run, so nothing is emulated while building it);
#   2. the device extra's aarch64 wheels (numpy, pillow, ai-edge-litert, onnxruntime, at the
#      host's runtime versions) installed from the host with pip --platform;
#   3. `bench run` on the host and under qemu-aarch64-static, on the same models and images;
#   4. device/compare_predictions.py: fp32 probabilities within 1e-4, int8 classes identical,
#      and the same predicted classes in both `bench run` result files.
#
# Emulated latency is meaningless (qemu translates every instruction): the arm64 lines are
# marked `emulated` and must never be reported as device latency.
#
# Usage: device/arm64_check.sh [EXPORTS]
#   EXPORTS                a folder with manifest.json (default: tiny models made here, needs
#                          TensorFlow on the host: tests/test_arm64.py:build_tiny_exports)
# Environment:
#   SKYEDGE_ARM64_CACHE    root and wheels, kept between runs (default ~/.cache/skyedge-arm64)
#   SKYEDGE_ARM64_WORK     results of this run (default a new folder under /tmp)
#   SKYEDGE_ARM64_CPU      qemu CPU model (default cortex-a72, the Pi 4's; cortex-a76 for a Pi 5)
#   SKYEDGE_ARM64_SPLIT    split of EXPORTS' data both machines predict (default test; val for the tiny models)
#   PYTHON                 host Python with the project's device extra (default .venv/bin/python)
# Needs: apt-get install qemu-user-static mmdebstrap (Debian/Ubuntu host), and the Debian
# mirror the host's apt uses. Exit status: 0 when predictions agree, 1 when they differ,
# 3 when a tool is missing, other non-zero when a step fails.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SKYEDGE_ARM64_CACHE:-$HOME/.cache/skyedge-arm64}
WORK=${SKYEDGE_ARM64_WORK:-$(mktemp -d /tmp/skyedge-arm64.XXXXXX)}
CPU=${SKYEDGE_ARM64_CPU:-cortex-a72}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
ROOT=$CACHE/root-bookworm
SITE=$CACHE/site-py311
QUICK=(--warmup 2 --runs 10 --min-secs 0)
START=$SECONDS

say() { printf '[arm64-check %4ds] %s\n' "$((SECONDS - START))" "$*"; }

for tool in qemu-aarch64-static mmdebstrap; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: $tool not found; install it with: apt-get update && apt-get install -y qemu-user-static mmdebstrap" >&2
        exit 3
    fi
done
mkdir -p "$CACHE" "$WORK"

# The Debian mirror this host's apt already uses (deb822 or one-line sources), so the root
# comes from the same place as the host's packages.
mirror() {
    local uri
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
          | grep -v security | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
              | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' | grep -v security | head -n1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# 1. the arm64 root. libstdc++ is not pulled in by python3 but numpy's and the runtimes'
# wheels link against it.
t0=$SECONDS
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
    MIRROR=$(mirror)
    say "building the arm64 bookworm root from $MIRROR"
    rm -rf "$ROOT.tmp"
    mmdebstrap --quiet --variant=extract --architectures=arm64 --include=python3,libstdc++6,libgcc-s1 \
        bookworm "$ROOT.tmp" "$MIRROR"
    mv "$ROOT.tmp" "$ROOT"
else
    say "arm64 root cached at $ROOT"
fi
# qemu -L looks a path up in the root first: an aarch64 /proc/cpuinfo there hides the host's
# x86 one, which onnxruntime's CPU detection crashes on. "Model" is what the fingerprint
# reads as cpu_model on a Pi, so the records name the emulation.
mkdir -p "$ROOT/proc"
{
    for i in $(seq 0 $(($(nproc) - 1))); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
    done
    printf 'Model\t\t: qemu-aarch64 emulated %s\n' "$CPU"
} > "$ROOT/proc/cpuinfo"
ROOT_S=$((SECONDS - t0))

# 2. wheels, at the host's versions of the runtimes so both sides run the same release.
t0=$SECONDS
VERSIONS=$("$PYTHON" - <<'EOF'
from importlib.metadata import version, PackageNotFoundError
out = []
for name in ("numpy", "pillow", "ai-edge-litert", "onnxruntime"):
    try:
        out.append(f"{name}=={version(name)}")
    except PackageNotFoundError:
        out.append(name)
print(" ".join(out))
EOF
)
if [ "$(cat "$SITE/.requirements" 2>/dev/null)" != "$VERSIONS" ]; then
    say "installing aarch64 wheels: $VERSIONS"
    rm -rf "$SITE.tmp"
    # wheels for glibc <= 2.36 (bookworm); pip takes the newest tag that the package has
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
        --implementation cp --python-version 3.11 --platform manylinux_2_28_aarch64 \
        --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
        --target "$SITE.tmp" $VERSIONS
    echo "$VERSIONS" > "$SITE.tmp/.requirements"
    rm -rf "$SITE"
    mv "$SITE.tmp" "$SITE"
else
    say "aarch64 wheels cached at $SITE ($VERSIONS)"
fi
WHEELS_S=$((SECONDS - t0))

# The emulated Python. qemu's default CPU ("max") gives wrong int8 results with LiteRT, so
# the CPU is a real Pi core. An emulated process cannot exec an aarch64 binary without
# binfmt_misc, so `bench run` starts its workers through this wrapper too.
ARM64_PY=$WORK/python-arm64
cat > "$ARM64_PY" <<EOF
#!/bin/sh
export QEMU_CPU=$CPU PYTHONPATH=$SITE:$REPO PYTHONDONTWRITEBYTECODE=1
exec qemu-aarch64-static -L $ROOT $ROOT/usr/bin/python3.11 "\$@"
EOF
chmod +x "$ARM64_PY"
say "emulated Python: $("$ARM64_PY" -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])')"

# 3. the models
EXPORTS=${1:-}
SPLIT=${SKYEDGE_ARM64_SPLIT:-test}   # the images both machines predict
if [ -z "$EXPORTS" ]; then
    EXPORTS=$WORK/tiny/exports
    SPLIT=val   # the tiny set has train and val images only
    if [ ! -f "$EXPORTS/manifest.json" ]; then
        say "making tiny models (TensorFlow on the host)"
        rm -rf "$WORK/tiny" && mkdir -p "$WORK/tiny"
        (cd "$REPO" && TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES="" "$PYTHON" -c \
            "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; import test_arm64; test_arm64.build_tiny_exports(Path(sys.argv[1]))" \
            "$WORK/tiny" >"$WORK/tiny.log" 2>&1) || { tail -n 20 "$WORK/tiny.log" >&2; exit 4; }
    fi
fi
[ -f "$EXPORTS/manifest.json" ] || { echo "error: $EXPORTS/manifest.json not found" >&2; exit 2; }

# 4. bench run on both, then the per-image predictions on both
cd "$REPO"
rm -f "$WORK/x86.jsonl" "$WORK/arm64.jsonl"
t0=$SECONDS
say "bench run on the host ($(uname -m))"
# exit status 3 (some jobs failed) still leaves lines to compare: their errors show in the table
"$PYTHON" -m bench.cli run --models "$EXPORTS" --out "$WORK/x86.jsonl" --device-name "$(hostname)-x86" "${QUICK[@]}" --split "$SPLIT" \
    || [ $? -eq 3 ]
"$PYTHON" -m device.compare_predictions predict --models "$EXPORTS" --split "$SPLIT" --out "$WORK/x86-probs.json"
HOST_S=$((SECONDS - t0))

t0=$SECONDS
say "bench run under qemu-aarch64 ($CPU)"
"$ARM64_PY" -c "import sys; sys.executable = sys.argv.pop(1); from bench.cli import main; sys.exit(main(sys.argv[1:]))" \
    "$ARM64_PY" run --models "$EXPORTS" --out "$WORK/arm64.jsonl" --device-name "arm64-qemu-$CPU" "${QUICK[@]}" --split "$SPLIT" \
    || [ $? -eq 3 ]
"$ARM64_PY" -m device.compare_predictions predict --models "$EXPORTS" --split "$SPLIT" --out "$WORK/arm64-probs.json"
EMU_S=$((SECONDS - t0))

# Mark every emulated line, so no report takes its latency for a device's.
"$PYTHON" - "$WORK/arm64.jsonl" "$CPU" <<'EOF'
import json, sys
from device.atomic import read_jsonl, write_text
path, cpu = sys.argv[1], sys.argv[2]
note = f"emulated: qemu-aarch64 {cpu}; latency not meaningful"
lines = read_jsonl(path)
for line in lines:
    line["emulated"] = True
    if note not in line.setdefault("notes", []):
        line["notes"].insert(0, note)
write_text(path, "".join(json.dumps(line) + "\n" for line in lines))
EOF

say "x86 vs arm64 predictions"
status=0
"$PYTHON" -m device.compare_predictions compare "$WORK/x86-probs.json" "$WORK/arm64-probs.json" \
    --lines "$WORK/x86.jsonl" "$WORK/arm64.jsonl" --out "$WORK/comparison.json" || status=$?

"$PYTHON" - "$WORK/x86.jsonl" "$WORK/arm64.jsonl" <<'EOF'
import sys
from device.atomic import read_jsonl
print("| Artifact | x86 accuracy | arm64 accuracy | x86 p50 ms | emulated arm64 p50 ms (not a device latency) | arm64 error |")
print("|---|---|---|---|---|---|")
x86 = {l["artifact_id"]: l for l in read_jsonl(sys.argv[1])}
for line in read_jsonl(sys.argv[2]):
    h = x86.get(line["artifact_id"], {})
    fmt = lambda v, f: "n/a" if v is None else format(v, f)
    print(f"| {line['artifact_id']} | {fmt(h.get('accuracy'), '.3f')} | {fmt(line.get('accuracy'), '.3f')} | "
          f"{fmt(h.get('latency_ms_p50'), '.3f')} | {fmt(line.get('latency_ms_p50'), '.3f')} | {line.get('error', '')} |")
EOF
TOTAL_S=$((SECONDS - START))
printf 'root %d s, wheels %d s, host runs %d s, emulated runs %d s, total %d s\n' \
    "$ROOT_S" "$WHEELS_S" "$HOST_S" "$EMU_S" "$TOTAL_S" | tee "$WORK/timings.txt"
say "results in $WORK"
exit "$status"
