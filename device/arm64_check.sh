#!/usr/bin/env bash
# The Raspberry Pi steps of docs/raspberry-pi.md, literally, on 64-bit ARM Linux by emulation
# on an x86 host (a Pi 4/5 with 64-bit Raspberry Pi OS is Debian bookworm, Python 3.11):
#
#   1. an arm64 Debian bookworm root (mmdebstrap, extract variant: nothing is emulated while
#      building it) with bash, tar, Python 3.11 and python3-venv;
#   2. qemu-aarch64 registered with binfmt_misc, so the root runs as a chroot in which every
#      aarch64 program (bash, python, pip, bench's workers) starts as on a Pi;
#   3. on the host, as the docs say for a Pi without network:
#        bench bundle --exports EXPORTS --data DATA --out pi-bundle.tar.gz --offline
#   4. in the chroot, the docs' commands: tar xzf, `bash setup_pi.sh` (a fresh venv, the
#      bundle's wheel and its device extra from the bundle's wheels/, no index), `bench run
#      --models .`, `skyedge classify --model . data`, and a per-image prediction pass;
#   5. the same on the host, then device/compare_predictions.py: fp32 probabilities within
#      1e-4, int8 classes identical, the same classes in both `bench run` files, and the same
#      class for every image from `skyedge classify` on both.
#
# Emulated latency is meaningless (qemu translates every instruction): the arm64 lines are
# marked `emulated` and must never be reported as device latency.
#
# Usage: device/arm64_check.sh [EXPORTS]
#   EXPORTS                a folder with manifest.json (default: tiny models made here, needs
#                          TensorFlow on the host: tests/test_arm64.py:build_tiny_exports)
# Environment:
#   SKYEDGE_ARM64_CACHE    the root, kept between runs (default ~/.cache/skyedge-arm64)
#   SKYEDGE_ARM64_WORK     results of this run (default a new folder under /tmp)
#   SKYEDGE_ARM64_CPU      qemu CPU model (default cortex-a72, the Pi 4's; cortex-a76 for a Pi 5)
#   SKYEDGE_ARM64_SPLIT    split of EXPORTS' data bundled and predicted (default test; val for the tiny models)
#   SKYEDGE_ARM64_IMAGES   images in the bundle (bench bundle --max-images; default all of the split)
#   PYTHON                 host Python with the project installed (default .venv/bin/python)
# Needs root (chroot, mounts, binfmt_misc), `apt-get install qemu-user-static mmdebstrap`, the
# Debian mirror the host's apt uses, and a package index (PyPI) once for --offline's wheels.
# Exit status: 0 when predictions agree, 1 when they differ, 3 when a tool or a permission is
# missing, other non-zero when a step fails.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SKYEDGE_ARM64_CACHE:-$HOME/.cache/skyedge-arm64}
WORK=${SKYEDGE_ARM64_WORK:-$(mktemp -d /tmp/skyedge-arm64.XXXXXX)}
CPU=${SKYEDGE_ARM64_CPU:-cortex-a72}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
ROOT=$CACHE/root-bookworm-pi
QUICK=(--warmup 2 --runs 10 --min-secs 0)
START=$SECONDS

say() { printf '[arm64-check %4ds] %s\n' "$((SECONDS - START))" "$*"; }
missing() { echo "error: $*" >&2; exit 3; }

for tool in qemu-aarch64-static mmdebstrap chroot mount; do
    command -v "$tool" >/dev/null \
        || missing "$tool not found; install it with: apt-get update && apt-get install -y qemu-user-static mmdebstrap"
done
[ "$(id -u)" = 0 ] || missing "needs root (chroot, mounts and binfmt_misc)"
mkdir -p "$CACHE" "$WORK"
WORK=$(cd "$WORK" && pwd)

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

# 1. the arm64 root: what Raspberry Pi OS has that the docs' steps use. libstdc++ is not
# pulled in by python3 but numpy's and the runtimes' wheels link against it.
t0=$SECONDS
if [ ! -x "$ROOT/usr/bin/python3.11" ] || [ ! -x "$ROOT/bin/bash" ]; then
    MIRROR=$(mirror)
    say "building the arm64 bookworm root from $MIRROR"
    rm -rf "$ROOT.tmp"
    mmdebstrap --quiet --variant=extract --architectures=arm64 \
        --include=bash,coreutils,tar,gzip,grep,sed,libc-bin,python3,python3-venv,libstdc++6,libgcc-s1 \
        bookworm "$ROOT.tmp" "$MIRROR"
    mv "$ROOT.tmp" "$ROOT"
else
    say "arm64 root cached at $ROOT"
fi
ROOT_S=$((SECONDS - t0))

# 2. binfmt_misc: aarch64 programs start through qemu (Debian's entry has the F flag: the
# interpreter is opened now, so it works inside the chroot without a copy there). qemu's default CPU ("max") gives wrong int8
# results with LiteRT, so QEMU_CPU names a real Pi core.
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e "$BINFMT/register" ]; then
    mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null \
        || missing "cannot mount binfmt_misc at $BINFMT (a container without that permission)"
fi
if [ ! -e "$BINFMT/qemu-aarch64" ]; then
    conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -f "$conf" ] || missing "$conf not found (qemu-user-static's binfmt entry)"
    cat "$conf" > "$BINFMT/register" 2>/dev/null \
        || missing "cannot register qemu-aarch64 with binfmt_misc"
fi
grep -q enabled "$BINFMT/qemu-aarch64" || missing "qemu-aarch64 is registered but disabled in $BINFMT"

# 3. the models and the bundle, made on the host as docs/raspberry-pi.md says
EXPORTS=${1:-}
SPLIT=${SKYEDGE_ARM64_SPLIT:-test}
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
DATA=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["artifacts"][0]["data"])' "$EXPORTS/manifest.json")
LIMIT=()
if [ -n "${SKYEDGE_ARM64_IMAGES:-}" ]; then LIMIT=(--max-images "$SKYEDGE_ARM64_IMAGES"); fi
t0=$SECONDS
say "bench bundle --offline (the device extra's aarch64 wheels into the bundle)"
(cd "$REPO" && "$PYTHON" -m bench.cli bundle --exports "$EXPORTS" --data "$DATA" --split "$SPLIT" "${LIMIT[@]}" \
    --offline --out "$WORK/pi-bundle.tar.gz")
BUNDLE_S=$((SECONDS - t0))

# 4. on the "Pi": the docs' commands in the chroot. /proc is mounted with an aarch64 cpuinfo
# over the host's x86 one (onnxruntime's CPU detection crashes on that); its "Model" line is
# what the fingerprint reads as cpu_model on a Pi, so the records name the emulation.
PI=$ROOT/home/pi
rm -rf "$PI" && mkdir -p "$PI"
cp "$WORK/pi-bundle.tar.gz" "$PI/"
{
    for i in $(seq 0 $(($(nproc) - 1))); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
    done
    printf 'Model\t\t: qemu-aarch64 emulated %s\n' "$CPU"
} > "$ROOT/cpuinfo-arm64"
{
    echo 'set -euo pipefail'
    echo 'step() { echo "== step: $1 took $((SECONDS - T)) s"; T=$SECONDS; }; T=$SECONDS'
    echo 'cd /home/pi && tar xzf pi-bundle.tar.gz && cd pi-bundle && step "tar xzf"'
    echo 'bash setup_pi.sh /home/pi/skyedge-venv && step "bash setup_pi.sh"'
    echo 'source /home/pi/skyedge-venv/bin/activate'
    echo "{ bench run --models . --out /home/pi/arm64.jsonl --device-name arm64-qemu-$CPU ${QUICK[*]} --split $SPLIT || [ \$? -eq 3 ]; } && step 'bench run'"
    echo 'skyedge classify --model . data --out /home/pi/labels.csv && step "skyedge classify"'
    echo "python -m device.compare_predictions predict --models . --split $SPLIT --out /home/pi/arm64-probs.json && step 'prediction pass'"
} > "$PI/steps.sh"
MOUNTED=()
cleanup() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount "${MOUNTED[$i]}" 2>/dev/null || umount -l "${MOUNTED[$i]}" || true; done
    MOUNTED=()
}
trap cleanup EXIT
mkdir -p "$ROOT/proc" "$ROOT/dev" "$ROOT/tmp"
mount -t proc proc "$ROOT/proc" && MOUNTED+=("$ROOT/proc")
mount --bind "$ROOT/cpuinfo-arm64" "$ROOT/proc/cpuinfo" && MOUNTED+=("$ROOT/proc/cpuinfo")
mount --bind /dev "$ROOT/dev" && MOUNTED+=("$ROOT/dev")
t0=$SECONDS
say "in the arm64 chroot (qemu $CPU): tar, setup_pi.sh, bench run, skyedge classify"
if ! env -i HOME=/home/pi PATH=/usr/local/bin:/usr/bin:/bin QEMU_CPU="$CPU" LANG=C.UTF-8 \
        "$(command -v chroot)" "$ROOT" /bin/bash /home/pi/steps.sh > "$WORK/arm64-steps.log" 2>&1; then
    tail -n 30 "$WORK/arm64-steps.log" >&2
    echo "error: a step failed in the arm64 chroot (log: $WORK/arm64-steps.log)" >&2
    exit 5
fi
EMU_S=$((SECONDS - t0))
cleanup
cp "$PI/arm64.jsonl" "$PI/labels.csv" "$PI/arm64-probs.json" "$WORK/"
grep -E '^(== |ai_edge_litert|onnxruntime|classify: )' "$WORK/arm64-steps.log" | sed 's/^/  [pi] /' || true

# 5. the host, on the same extracted bundle
t0=$SECONDS
say "the same on the host ($(uname -m))"
rm -rf "$WORK/host" && mkdir -p "$WORK/host" && tar xzf "$WORK/pi-bundle.tar.gz" -C "$WORK/host"
HOSTB=$WORK/host/pi-bundle
export PYTHONPATH=$REPO
(cd "$HOSTB" && "$PYTHON" -m bench.cli run --models . --out "$WORK/x86.jsonl" --device-name "$(hostname)-x86" \
    "${QUICK[@]}" --split "$SPLIT" || [ $? -eq 3 ])
(cd "$HOSTB" && "$PYTHON" -m device.classify --model . data --out "$WORK/host-labels.csv" 2>>"$WORK/host.log")
(cd "$HOSTB" && "$PYTHON" -m device.compare_predictions predict --models . --split "$SPLIT" --out "$WORK/x86-probs.json")
HOST_S=$((SECONDS - t0))

# Mark every emulated line, so no report takes its latency for a device's.
"$PYTHON" - "$WORK/arm64.jsonl" "$CPU" <<'PYEOF'
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
PYEOF

say "x86 vs arm64 predictions"
status=0
"$PYTHON" -m device.compare_predictions compare "$WORK/x86-probs.json" "$WORK/arm64-probs.json" \
    --lines "$WORK/x86.jsonl" "$WORK/arm64.jsonl" --out "$WORK/comparison.json" || status=$?
"$PYTHON" - "$WORK/host-labels.csv" "$WORK/labels.csv" <<'PYEOF' || status=1
import csv, sys
rows = [{r["path"]: r for r in csv.DictReader(open(p, newline="", encoding="utf-8"))} for p in sys.argv[1:]]
same = [p for p in rows[0] if p in rows[1] and rows[0][p]["class"] == rows[1][p]["class"]]
diff = max((abs(float(rows[0][p][k]) - float(rows[1][p][k])) for p in same for k in rows[0][p] if k.startswith("p_")),
           default=0.0)
print(f"skyedge classify: {len(same)} of {len(rows[0])} images get the same class on x86 and arm64 "
      f"(largest probability difference {diff:.2e})")
sys.exit(0 if len(same) == len(rows[0]) == len(rows[1]) else 1)
PYEOF

"$PYTHON" - "$WORK/x86.jsonl" "$WORK/arm64.jsonl" <<'PYEOF'
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
PYEOF
TOTAL_S=$((SECONDS - START))
printf 'root %d s, bundle %d s, arm64 chroot steps %d s, host steps %d s, total %d s\n' \
    "$ROOT_S" "$BUNDLE_S" "$EMU_S" "$HOST_S" "$TOTAL_S" | tee "$WORK/timings.txt"
say "results in $WORK"
exit "$status"
